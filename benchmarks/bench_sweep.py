"""Sweep benchmark: 20 prompts x 2 temperatures x 150 new tokens, one generate() per prompt vs semifinetune.generate.

    python benchmarks/bench_sweep.py --model /tmp/r1-random --out results.json [--set backend=unsloth] [--ways a,b]

Ways: one_prompt_at_a_time (the guide's), batched_per_temperature (one batched transformers generate() per
temperature), grid (both temperatures' rows in one semifinetune.generate call, each row its own temperature,
static KV cache and CUDA-graphed decoding step, the 4-bit layers computing from a dequantized copy), grid_4bit
(the same without the copy).

Both ways sample with the same settings (temperature, top_p 0.95, no top-k cut) and no early stop: random weights
rarely emit EOS, so every answer runs the full 150 tokens and tokens/s compare like for like.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from record import record  # noqa: E402

TEMPERATURES = (0.6, 0.3)
NEW_TOKENS = 150


def one_at_a_time(model, tokenizer, questions, settings) -> tuple[int, float]:
    """The guide's way: one prompt, one generate() call."""
    import torch

    from semifinetune.formats import chat_prompt
    from semifinetune.generate import sampling_kwargs

    tokens, start = 0, time.perf_counter()
    with torch.inference_mode():
        for question in questions:
            inputs = tokenizer(chat_prompt(tokenizer, question), return_tensors="pt", add_special_tokens=False).to(model.device)
            out = model.generate(**inputs, **sampling_kwargs(settings), pad_token_id=tokenizer.pad_token_id)
            tokens += out.shape[1] - inputs["input_ids"].shape[1]
    return tokens, time.perf_counter() - start


def batched_per_temperature(model, tokenizer, questions, settings) -> tuple[int, float]:
    """One batched transformers generate() per setting: the project's way before grid batching."""
    from semifinetune.generate import generate

    start = time.perf_counter()
    rows = generate(model, tokenizer, questions, settings, batch_size=len(questions), progress=False, cuda_graphs=False)
    return sum(r.new_tokens for r in rows), time.perf_counter() - start


def grid(model, tokenizer, questions, settings_list) -> tuple[int, float]:
    """Every setting's rows in one semifinetune.generate call (the sweep's way), CUDA-graphed where it applies."""
    from semifinetune.generate import generate

    per_row = [s for s in settings_list for _ in questions]
    start = time.perf_counter()
    rows = generate(model, tokenizer, questions * len(settings_list), per_row, batch_size=len(per_row), progress=False)
    return sum(r.new_tokens for r in rows), time.perf_counter() - start


def grid_4bit(model, tokenizer, questions, settings_list) -> tuple[int, float]:
    """grid with the 4-bit layers computing as they are (bitsandbytes' fused kernel), without the dequantized copy."""
    from contextlib import contextmanager

    from semifinetune import dense_weights

    @contextmanager
    def no_copy(model):
        yield False

    copy, dense_weights.dequantized_weights = dense_weights.dequantized_weights, no_copy
    try:
        return grid(model, tokenizer, questions, settings_list)
    finally:
        dense_weights.dequantized_weights = copy


WAYS = {"one_prompt_at_a_time": one_at_a_time, "batched_per_temperature": batched_per_temperature}
GRIDS = {"grid": grid, "grid_4bit": grid_4bit}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--ways", default="one_prompt_at_a_time,batched_per_temperature,grid")
    args = parser.parse_args()

    from semifinetune.config import make_config, parse_assignments
    from semifinetune.data import read_examples
    from semifinetune.env import environment_report
    from semifinetune.generate import SamplingSettings
    from semifinetune.models import load_model

    cfg = make_config("t4", {"model_name": args.model, **parse_assignments(args.set)})
    report = environment_report()
    model, tokenizer = load_model(cfg, report)
    questions = [row["input"] for row in read_examples("data/semiconductor_guide.jsonl", "train")][:20]
    results = {}
    for name in args.ways.split(","):
        try:
            if name in GRIDS:
                way = GRIDS[name]
                way(model, tokenizer, questions[:2], [SamplingSettings(0.6, 0.95, 8)])  # warm-up: kernels, allocator
                tokens, seconds = way(model, tokenizer, questions, [SamplingSettings(t, 0.95, NEW_TOKENS) for t in TEMPERATURES])
            else:
                way = WAYS[name]
                way(model, tokenizer, questions[:2], SamplingSettings(0.6, 0.95, 8))
                tokens = seconds = 0.0
                for temperature in TEMPERATURES:
                    t, s = way(model, tokenizer, questions, SamplingSettings(temperature, 0.95, NEW_TOKENS))
                    tokens, seconds = tokens + t, seconds + s
        except Exception as error:  # noqa: BLE001 - one way failing must not lose the others' figures
            import traceback

            traceback.print_exc()
            results[name] = {"error": f"{type(error).__name__}: {error}"[:300]}
            continue
        results[name] = {"tokens": int(tokens), "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}
        print(name, results[name], flush=True)
    entry = {
        "benchmark": "sweep",
        "date": datetime.date.today().isoformat(),
        "card": report["gpu_name"],
        "backend": model.semifinetune_backend,
        "versions": report["versions"],
        "workload": f"{len(questions)} prompts x {len(TEMPERATURES)} temperatures x {NEW_TOKENS} new tokens, top_p 0.95",
        **results,
    }
    speeds = {name: r["tokens_per_s"] for name, r in results.items() if "tokens_per_s" in r}
    record(args.out, entry, f"{entry['workload']}, {entry['backend']}: " + ", ".join(f"{n} {v} tokens/s" for n, v in speeds.items()))


if __name__ == "__main__":
    main()
