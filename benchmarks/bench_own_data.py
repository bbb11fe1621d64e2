"""A user's own data on the embedded model: the example ferry-company facts as the only training file.

    python benchmarks/bench_own_data.py --run-dir runs/own [--eval-file data/examples/quorvane_reworded.jsonl]
        [--out benchmarks/results/own_data_cpu.json]

Runs `run --profile cpu` with data/examples/quorvane.jsonl as train_file (held-out and validation questions sampled
from it, or the reworded file as eval_file), unless the run directory already holds a finished run, and records
the held-out and general counts, base against tuned, with and without the top retrieved pair, and the time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
TRAIN_FILE = "data/examples/quorvane.jsonl"


def summarize(run_dir: Path, seconds: float | None) -> dict:
    import pandas as pd

    from semifinetune.runs import open_run

    cfg = open_run(run_dir)
    evaluation = pd.read_csv(run_dir / "evaluation.csv")
    retrieval = pd.read_csv(run_dir / "retrieval.csv")
    log = json.loads((run_dir / "train_log.json").read_text())
    summary = json.loads((run_dir / "data" / "summary.json").read_text())
    cells = retrieval.groupby(["set", "model", "retrieval"])["correct"].agg(["sum", "count"])
    return {
        "train_file": cfg.train_file, "eval_file": cfg.eval_file, "steps": cfg.max_steps,
        "num_train_epochs": cfg.num_train_epochs, "train_examples": summary["train"]["examples"],
        "held_out": {"source": summary["eval"]["source"], "questions": summary["eval"]["examples"],
                     **{model: int(group["correct"].sum()) for model, group in evaluation.groupby("model")},
                     "token_f1": evaluation.groupby("model")["token_f1"].mean().round(3).to_dict()},
        "two_by_two": {f"{s}, {m}, notes {r}": f"{int(row['sum'])} of {int(row['count'])}" for (s, m, r), row in cells.iterrows()},
        "kept_step": log["stats"].get("kept_step"), "seconds": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--eval-file", default="auto")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    seconds = None
    if not (args.run_dir / "retrieval.csv").exists():
        from semifinetune.pipeline import run_pipeline

        start = time.perf_counter()
        run_pipeline(args.run_dir, "cpu", {"train_file": TRAIN_FILE, "eval_file": args.eval_file})
        seconds = round(time.perf_counter() - start, 1)
    report = summarize(args.run_dir, seconds)
    if args.out:
        runs = json.loads(args.out.read_text()) if args.out.exists() else []
        args.out.write_text(json.dumps(runs + [report], indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
