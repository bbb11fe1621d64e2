"""Retrieval's cost on a GPU: the held-out questions with and without the top k training pairs in the prompt.

    python benchmarks/bench_retrieval_gpu.py --model /tmp/r1-random --out results.json [--k 3] [--new-tokens 256]

The R1-1.5B architecture in 4-bit (random weights: every answer runs to the limit), the 73 held-out questions in
one call of semifinetune.generate at the GPU's default batch, each row sampled at temperature 0.6, top_p 0.95:
prompt tokens, generated tokens/s and peak GPU memory, without notes and with k notes.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from record import record  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=256)
    args = parser.parse_args()

    import torch

    from semifinetune.config import make_config
    from semifinetune.data import read_examples
    from semifinetune.env import environment_report
    from semifinetune.formats import chat_prompt
    from semifinetune.batch_plan import default_batch_size
    from semifinetune.generate import SamplingSettings, generate
    from semifinetune.models import load_model
    from semifinetune.notes import notes_for
    from semifinetune.retrieval import with_notes

    cfg = make_config("t4", {"model_name": args.model})
    report = environment_report()
    model, tokenizer = load_model(cfg, report)
    questions = [row["input"] for row in read_examples(cfg.eval_file, "eval")]
    settings = SamplingSettings(0.6, 0.95, args.new_tokens)
    generate(model, tokenizer, questions[:4], SamplingSettings(0.6, 0.95, 8), progress=False)  # warm-up
    results = {}
    for k in (0, args.k):
        notes = notes_for(cfg, questions, k) or [[] for _ in questions]
        prompts = [with_notes(q, n) for q, n in zip(questions, notes)]
        lengths = [len(tokenizer(chat_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]) for p in prompts]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        rows = generate(model, tokenizer, prompts, settings, progress=False)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        tokens = sum(r.new_tokens for r in rows)
        results[f"k{k}"] = {
            "prompt_tokens_mean": round(sum(lengths) / len(lengths), 1), "prompt_tokens_max": max(lengths),
            "answers": len(rows), "tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        }
        print(f"k={k}", results[f"k{k}"], flush=True)
    entry = {
        "benchmark": "retrieval_gpu", "date": datetime.date.today().isoformat(), "card": report["gpu_name"],
        "versions": report["versions"], "batch": default_batch_size(model),
        "workload": f"{len(questions)} held-out questions x {args.new_tokens} new tokens, temperature 0.6, top_p 0.95",
        **results,
    }
    record(args.out, entry, ", ".join(f"{name}: prompts {r['prompt_tokens_mean']} tokens, {r['tokens_per_s']} tokens/s, "
                                      f"{r['peak_allocated_gib']} GiB" for name, r in results.items()))


if __name__ == "__main__":
    main()
