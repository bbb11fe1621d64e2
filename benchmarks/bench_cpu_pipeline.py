"""The whole `cpu`-profile pipeline (embedded SmolLM2-135M) on this machine's CPU, timed step by step.

    python benchmarks/bench_cpu_pipeline.py --out benchmarks/results/cpu_pipeline.json

Runs `python -m semifinetune run --profile cpu` in a fresh process (the embedded model's cache already built),
then reads the run's own files: training time, held-out correct base vs tuned, the sweep's time; and the time of
each step, from the pipeline's `== step` lines.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from record import record  # noqa: E402


def step_seconds(command: list[str], start: float) -> dict:
    """Run the pipeline, passing its output through; the seconds from each `== step` line to the next, and "exit"
    from the run's closing summary (`trained N steps ...`) to the process's end (its interpreter's and CUDA's
    teardown)."""
    marks = [("setup", start)]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, bufsize=1) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            if line.startswith("== "):
                marks.append((line[3:].strip(), time.perf_counter()))
            elif line.startswith("trained "):
                marks.append(("exit", time.perf_counter()))
    if process.returncode:
        sys.exit(f"the pipeline failed (exit {process.returncode})")
    ends = [t for _, t in marks[1:]] + [time.perf_counter()]
    return {name: round(end - begin, 1) for (name, begin), end in zip(marks, ends)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--run-dir", default="/tmp/bench-cpu-pipeline")
    parser.add_argument("--set", action="append", default=[], help="key=value over the cpu profile")
    args = parser.parse_args()

    from semifinetune.models import embedded_model_dir

    embedded_model_dir()  # the one-time GGUF conversion is not part of the pipeline's time
    shutil.rmtree(args.run_dir, ignore_errors=True)
    start = time.perf_counter()
    overrides = [item for assignment in args.set for item in ("--set", assignment)]
    steps = step_seconds([sys.executable, "-m", "semifinetune", "run", "--profile", "cpu", "--run-dir", args.run_dir, *overrides], start)
    total = time.perf_counter() - start
    run = Path(args.run_dir)
    stats = json.loads((run / "train_log.json").read_text())["stats"]
    sweep = json.loads((run / "recommended_settings.json").read_text())
    import pandas as pd

    evaluation = pd.read_csv(run / "evaluation.csv")
    correct = evaluation.groupby("model")["correct"].sum()
    entry = {
        "benchmark": "cpu_pipeline",
        "date": datetime.date.today().isoformat(),
        "machine": f"CPU, {os.cpu_count()} cores",
        "settings": json.loads((run / "config.json").read_text()),
        "total_s": round(total, 1),
        "step_s": steps,
        "train_s": stats["train_runtime_s"],
        "steps": stats["global_step"],
        "held_out_questions": int(len(evaluation) / 2),
        "base_correct": int(correct.get("base", 0)),
        "tuned_correct": int(correct.get("tuned", 0)),
        "sweep_s": sweep["sweep_seconds"],
        "sweep_answers": sweep["sweep_answers"],
        "recommended": {k: sweep[k] for k in ("temperature", "top_p")},
    }
    print(json.dumps(entry, indent=1))
    record(args.out, entry, f"whole pipeline {entry['total_s']:.0f} s (train {entry['train_s']:.0f} s, sweep "
           f"{entry['sweep_s']:.0f} s); held-out correct base {entry['base_correct']} vs tuned {entry['tuned_correct']} "
           f"of {entry['held_out_questions']}")


if __name__ == "__main__":
    main()
