"""Which decoding engine the sweep should use: the hand-written static-cache loop or transformers' own.

    python benchmarks/bench_decode.py --model /tmp/r1-random --out results.json

The sweep workload of bench_sweep.py (20 prompts x 2 temperatures x 150 new tokens, each row its own temperature,
top_p 0.95, one batch of 40 rows), from a cold start of each engine, so the first call includes its graph capture
or compilation:
- loop: `semifinetune.generate` (static KV cache, the decoding step replayed as a CUDA graph, 4-bit layers computing
  from a dequantized copy);
- library: transformers' `generate(cache_implementation="static")`, which compiles the decoding step
  (torch.compile, mode "reduce-overhead") on a model it may compile: bitsandbytes' 4-bit layers are not
  compileable, so the model is dequantized first (`model.dequantize()`), per-row settings through a logits processor.
Each engine's greedy answers (20 prompts x 32 tokens) are compared with plain `generate()` (dynamic cache) on the
same weights: identical answers and the mean share of tokens before the first difference.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "gpu"))

from gpu_helpers import prefix_agreement  # noqa: E402 - the GPU suite's measure of how far two answers agree
from record import record  # noqa: E402

TEMPERATURES = (0.6, 0.3)
NEW_TOKENS = 150
GREEDY_TOKENS = 32


def encode(tokenizer, questions, device):
    from semifinetune.formats import chat_prompt

    tokenizer.padding_side = "left"
    return tokenizer([chat_prompt(tokenizer, q) for q in questions], return_tensors="pt", padding=True,
                     add_special_tokens=False).to(device)


def library_generate(model, tokenizer, questions, temperatures, max_new_tokens, static: bool):
    """transformers' generate(), per-row temperature (top_p 0.95) through semifinetune's row processor; new ids."""
    import torch

    from semifinetune.decode import row_sampling_processor
    from semifinetune.generate import eos_token_ids

    encoded = encode(tokenizer, questions, model.device)
    kwargs = dict(cache_implementation="static") if static else {}
    if all(t == 0 for t in temperatures):
        kwargs.update(do_sample=False)
    else:
        kwargs.update(do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                      logits_processor=[row_sampling_processor(list(temperatures), [0.95] * len(questions))])
    with torch.inference_mode():
        out = model.generate(**encoded, max_new_tokens=max_new_tokens, eos_token_id=sorted(eos_token_ids(model, tokenizer)),
                             pad_token_id=tokenizer.pad_token_id, **kwargs)
    return out[:, encoded["input_ids"].shape[1]:].tolist()


def trimmed(rows, eos):
    out = []
    for ids in rows:
        stop = next((k for k, token in enumerate(ids) if token in eos), None)
        out.append(ids if stop is None else ids[: stop + 1])
    return out


def timed_call(fn):
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch

    from semifinetune.config import make_config
    from semifinetune.data import read_examples
    from semifinetune.decode import static_decode
    from semifinetune.dense_weights import dequantized_weights
    from semifinetune.env import environment_report
    from semifinetune.generate import SamplingSettings, eos_token_ids, generate
    from semifinetune.models import load_model

    report = environment_report()
    model, tokenizer = load_model(make_config("t4", {"model_name": args.model}), report)
    model.eval()
    questions = [row["input"] for row in read_examples("data/semiconductor_guide.jsonl", "train")][:20]
    rows = questions * len(TEMPERATURES)
    temperatures = [t for t in TEMPERATURES for _ in questions]
    eos = eos_token_ids(model, tokenizer)
    results = {}

    def sweep_loop():
        settings = [SamplingSettings(t, 0.95, NEW_TOKENS) for t in temperatures]
        return sum(g.new_tokens for g in generate(model, tokenizer, rows, settings, batch_size=len(rows), progress=False))

    def greedy_loop():
        encoded = encode(tokenizer, questions, model.device)
        with torch.inference_mode(), dequantized_weights(model):
            n = len(questions)
            return static_decode(model, encoded["input_ids"], encoded["attention_mask"], [0.0] * n, [1.0] * n,
                                 GREEDY_TOKENS, eos, tokenizer.pad_token_id).tolist()

    def engine(name, sweep, greedy, reference):
        torch.cuda.reset_peak_memory_stats()
        tokens, first = timed_call(sweep)
        tokens, second = timed_call(sweep)
        same = trimmed(greedy(), eos)
        results[name] = {
            "first_call_s": round(first, 2), "second_call_s": round(second, 2), "tokens": int(tokens),
            "tokens_per_s_first": round(tokens / first, 1), "tokens_per_s_second": round(tokens / second, 1),
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "greedy_identical_of_20": sum(a == b for a, b in zip(reference, same)),
            "greedy_mean_prefix_agreement": round(sum(prefix_agreement(a, b) for a, b in zip(reference, same)) / len(same), 3),
        }
        print(name, results[name], flush=True)

    reference_4bit = trimmed(library_generate(model, tokenizer, questions, [0.0] * 20, GREEDY_TOKENS, static=False), eos)
    try:
        engine("loop", sweep_loop, greedy_loop, reference_4bit)
    except Exception as error:  # noqa: BLE001 - one engine failing must not lose the other's figures
        results["loop"] = {"error": f"{type(error).__name__}: {error}"[:300]}

    model = model.dequantize()  # bitsandbytes' 4-bit layers are not compileable
    reference_dense = trimmed(library_generate(model, tokenizer, questions, [0.0] * 20, GREEDY_TOKENS, static=False), eos)

    def sweep_library():
        ids = library_generate(model, tokenizer, rows, temperatures, NEW_TOKENS, static=True)
        return sum(len(r) for r in trimmed(ids, eos))

    try:
        engine("library_static_compiled", sweep_library,
               lambda: library_generate(model, tokenizer, questions, [0.0] * 20, GREEDY_TOKENS, static=True), reference_dense)
    except Exception as error:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        results["library_static_compiled"] = {"error": f"{type(error).__name__}: {error}"[:300]}
    entry = {
        "benchmark": "decode_engines",
        "date": datetime.date.today().isoformat(),
        "card": report["gpu_name"],
        "versions": report["versions"],
        "workload": f"{len(questions)} prompts x {len(TEMPERATURES)} temperatures x {NEW_TOKENS} new tokens, top_p 0.95, one batch",
        **results,
    }
    summary = ", ".join(f"{n}: first call {r.get('first_call_s')} s, then {r.get('tokens_per_s_second')} tokens/s, "
                        f"greedy {r.get('greedy_identical_of_20')}/20 as generate()" for n, r in results.items())
    record(args.out, entry, summary)


if __name__ == "__main__":
    main()
