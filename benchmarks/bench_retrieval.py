"""Fine-tune or retrieve: the base/tuned x without/with retrieval 2 x 2 on a trained run, for each k asked.

    python -m semifinetune run --profile cpu --run-dir /tmp/rag_cpu
    python benchmarks/bench_retrieval.py --run-dir /tmp/rag_cpu --k 1,3 --out benchmarks/results/retrieval_cpu.json

Each k is one `compare_retrieval` (what `python -m semifinetune evaluate --retrieval K` runs), at the run's sampling
settings, reusing the run's evaluation.csv for the held-out answers without notes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from record import record  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", required=True, help="a run directory with a trained adapter and evaluation.csv")
    parser.add_argument("--k", default="1", help="numbers of notes, comma-separated")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from semifinetune.compare import compare_retrieval, correct_counts, retrieval_statement, retrieval_table
    from semifinetune.runs import open_run

    cfg = open_run(args.run_dir)
    for k in [int(part) for part in args.k.split(",")]:
        start = time.perf_counter()
        table = compare_retrieval(args.run_dir, k, progress=False, reuse_evaluation=True)
        seconds = time.perf_counter() - start
        (Path(args.run_dir) / f"retrieval_k{k}.csv").write_text((Path(args.run_dir) / "retrieval.csv").read_text())
        summary = retrieval_table(table)
        print(summary.round(3).to_string())
        statement = retrieval_statement(table)
        print(statement)
        counts = correct_counts(table)
        entry = {
            "benchmark": "retrieval_2x2",
            "date": datetime.date.today().isoformat(),
            "machine": f"CPU, {os.cpu_count()} cores",
            "run_dir": args.run_dir,
            "model": cfg.model_name,
            "k": k,
            "settings": {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens},
            "seconds": round(seconds, 1),
            "correct": counts,
            "table": json.loads(summary.reset_index().to_json(orient="records")),
            "statement": statement,
        }
        held, general = counts["held-out"], counts["general"]
        top = f"top {k}"
        record(args.out, entry, (
            f"k={k}, held-out correct of {held['questions']}: base {held['base']}, base + notes {held[f'base + {top}']}, "
            f"tuned {held['tuned']}, tuned + notes {held[f'tuned + {top}']}; general of {general['questions']}: "
            f"base {general['base']}, base + notes {general[f'base + {top}']}, tuned {general['tuned']}, "
            f"tuned + notes {general[f'tuned + {top}']} ({seconds:.0f} s)"
        ))


if __name__ == "__main__":
    main()
