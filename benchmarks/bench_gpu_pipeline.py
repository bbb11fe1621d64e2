"""The whole `t4`-profile pipeline (notebooks 01-06) on a GPU, timed step by step, with notebook 06's token rate.

    python benchmarks/bench_gpu_pipeline.py --model /tmp/r1-random --out benchmarks/results/gpu_pipeline.json \
        [--set key=value ...]

Runs `python -m semifinetune run --profile t4 --set model_name=MODEL` in a fresh process and reads the run's own
files: the answers notebook 06 generated (evaluation, the 2 x 2, the sweep) and their tokens, over the time of its
steps. With the R1 architecture's random weights nearly every answer runs to max_new_tokens: the worst case.
Peak GPU memory: nvidia-smi's, sampled every half second (what the process holds, PyTorch's cache included), and
PyTorch's peaks over the sweep (allocated and reserved) from recommended_settings.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_cpu_pipeline import step_seconds  # noqa: E402
from record import record  # noqa: E402

ANSWER_FILES = ("evaluation.csv", "retrieval.csv", "sweep.csv")


class PeakMemory(threading.Thread):
    """GPU memory nvidia-smi reports in use, in GiB, sampled every half second while the block runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples, self.done = [], threading.Event()  # (perf_counter time, GiB)

    def run(self):
        while not self.done.wait(0.5):
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout.split()
            if out:
                self.samples.append((time.perf_counter(), float(out[0]) / 1024))

    def peak(self, begin: float = 0.0, end: float = float("inf")) -> float:
        return round(max((used for t, used in self.samples if begin <= t < end), default=0.0), 2)

    def peaks_by_step(self, start: float, steps: dict) -> dict:
        """The peak within each step, steps being step_seconds' durations from `start` on."""
        peaks = {}
        for name, seconds in steps.items():
            peaks[name] = self.peak(start, start + seconds)
            start += seconds
        return peaks


def generated(run: Path, name: str):
    """The answers a file holds that notebook 06 generated: the 2 x 2 takes the held-out ones without notes from the
    evaluation."""
    import pandas as pd

    frame = pd.read_csv(run / name)
    if name == "retrieval.csv":
        frame = frame[~((frame["set"] == "held-out") & (frame["notes_k"] == 0))]
    return frame


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--run-dir", default="/tmp/bench-gpu-pipeline")
    parser.add_argument("--set", action="append", default=[], help="key=value over the t4 profile")
    args = parser.parse_args()

    shutil.rmtree(args.run_dir, ignore_errors=True)
    overrides = [item for assignment in [f"model_name={args.model}", *args.set] for item in ("--set", assignment)]
    memory = PeakMemory()
    memory.start()
    start = time.perf_counter()
    steps = step_seconds([sys.executable, "-m", "semifinetune", "run", "--profile", "t4", "--run-dir", args.run_dir,
                          *overrides], start)
    total = time.perf_counter() - start
    memory.done.set()
    run = Path(args.run_dir)
    answers = [generated(run, name) for name in ANSWER_FILES if (run / name).exists()]
    tokens = int(sum(frame["new_tokens"].sum() for frame in answers))
    rows = int(sum(len(frame) for frame in answers))
    notebook06 = sum(seconds for name, seconds in steps.items() if name.startswith("06"))
    from semifinetune.env import environment_report

    report = environment_report()
    entry = {
        "benchmark": "gpu_pipeline",
        "date": datetime.date.today().isoformat(),
        "card": report["gpu_name"],
        "versions": report["versions"],
        "settings": json.loads((run / "config.json").read_text()),
        "total_s": round(total, 1),
        "step_s": steps,
        "train_s": json.loads((run / "train_log.json").read_text())["stats"]["train_runtime_s"],
        "notebook06_s": round(notebook06, 1),
        "notebook06_answers": rows,
        "notebook06_new_tokens": tokens,
        "notebook06_tokens_per_s": round(tokens / notebook06, 1),
        "answers_at_the_limit": round(float(sum((f["finish_reason"] == "length").sum() for f in answers)) / max(rows, 1), 3),
        "peak_gpu_memory_gib": memory.peak(),
        "peak_gpu_memory_gib_by_step": memory.peaks_by_step(start, steps),
        "sweep_memory": json.loads((run / "recommended_settings.json").read_text()).get("sweep_memory", {}),
    }
    print(json.dumps(entry, indent=1))
    record(args.out, entry, f"t4 pipeline on {entry['card']}: {entry['total_s']:.0f} s in all, notebook 06 "
           f"{notebook06:.0f} s for {rows} answers ({tokens:,} new tokens, {entry['notebook06_tokens_per_s']:,.0f} tokens/s)")


if __name__ == "__main__":
    main()
