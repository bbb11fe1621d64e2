"""Sweep benchmark: 20 prompts x 2 temperatures x 150 new tokens, one generate() per prompt vs semifinetune.generate.

    python benchmarks/bench_sweep.py --model /tmp/r1-random --out results.json [--set backend=unsloth]

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


def batched(model, tokenizer, questions, settings) -> tuple[int, float]:
    from semifinetune.generate import generate

    start = time.perf_counter()
    rows = generate(model, tokenizer, questions, settings, batch_size=len(questions), progress=False)
    return sum(r.new_tokens for r in rows), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", action="append", default=[])
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
    for name, way in (("one_prompt_at_a_time", one_at_a_time), ("semifinetune_generate", batched)):
        way(model, tokenizer, questions[:2], SamplingSettings(0.6, 0.95, 8))  # warm-up: kernels, allocator
        tokens = seconds = 0.0
        for temperature in TEMPERATURES:
            t, s = way(model, tokenizer, questions, SamplingSettings(temperature, 0.95, NEW_TOKENS))
            tokens, seconds = tokens + t, seconds + s
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
        "speedup": round(results["semifinetune_generate"]["tokens_per_s"] / results["one_prompt_at_a_time"]["tokens_per_s"], 1),
    }
    one, batched_ = entry["one_prompt_at_a_time"], entry["semifinetune_generate"]
    record(args.out, entry, f"{entry['workload']}, {entry['backend']}: one prompt at a time {one['tokens_per_s']} "
           f"tokens/s, generate() {batched_['tokens_per_s']} tokens/s ({entry['speedup']}x)")


if __name__ == "__main__":
    main()
