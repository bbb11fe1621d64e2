"""Data-parallel training throughput: the same run on 1 and on N GPUs through `accelerate launch`.

    python benchmarks/bench_multigpu.py --model /tmp/r1-random --gpus 2 --out results.json

Each run: the guide's 20 examples in the guide format on the R1-1.5B architecture (4-bit, LoRA r16 on q/k/v/o),
`per_device_train_batch_size` rows per GPU, so the global batch grows with the GPU count (stated in each record).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from record import record  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--out", required=True)
    parser.add_argument("--profile", default="t4")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()

    from semifinetune.config import parse_assignments
    from semifinetune.data import prepare_data
    from semifinetune.pipeline import setup
    from semifinetune.train import read_train_log

    overrides = {
        "model_name": args.model,
        "train_file": "data/semiconductor_guide.jsonl",
        "format": "guide",
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "max_steps": 30,
        "eval_steps": 30,
        "save_steps": 30,
        **parse_assignments(args.set),
    }
    records = []
    for processes in sorted({1, args.gpus}):
        run_dir = Path(f"/tmp/bench-ddp-{processes}")
        cfg, report = setup(run_dir, args.profile, overrides, overwrite=True)
        prepare_data(run_dir)
        multi = ["--multi_gpu"] if processes > 1 else []
        command = ["accelerate", "launch", *multi, "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no",
                   "-m", "semifinetune", "train", "--run-dir", str(run_dir), "--overwrite"]
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT)
        stats = read_train_log(run_dir)["stats"]
        records.append({
            "benchmark": "data_parallel_train",
            "date": datetime.date.today().isoformat(),
            "card": report["gpu_name"],
            "processes": processes,
            "global_batch": cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * processes,
            "steps": stats["global_step"],
            "train_s": stats["train_runtime_s"],
            "samples_per_s": stats["samples_per_s"],
            "tokens_per_s": stats["tokens_per_s"],
            "final_train_loss": stats["final_train_loss"],
            "launch_to_exit_s": round(time.perf_counter() - start, 1),
        })
        print(json.dumps(records[-1]), flush=True)
    for entry in records:
        record(args.out, entry, f"{entry['processes']} GPU(s), global batch {entry['global_batch']}: "
               f"{entry['samples_per_s']} samples/s, {entry['tokens_per_s']} tokens/s")


if __name__ == "__main__":
    main()
