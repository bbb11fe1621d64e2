"""Training benchmark: the guide's recipe on the R1-1.5B architecture, one variant per process.

    python benchmarks/bench_train.py --model /tmp/r1-random --side-by-side --out results.json
    python benchmarks/bench_train.py --model /tmp/r1-random --name NAME --out results.json [--set key=value ...]

--side-by-side runs the guide's way (batch 1 x accumulation 4, 8-bit AdamW) and the `t4` profile's default way,
each in a fresh process, and records the speed-up and the loss difference at step 100 between them.

The data is the guide's 20 examples in the guide's format; 100 steps at effective batch 4 = 400 samples.
Appends one JSON record to --out: wall time of trainer.train(), tokens/s, peak memory, losses at steps 10 and
100, backend, precision and every setting, with the card and versions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import time
from pathlib import Path

start = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from record import record  # noqa: E402
from semifinetune.config import parse_assignments  # noqa: E402

GUIDE_RUN = {
    "train_file": "data/semiconductor_guide.jsonl",
    "format": "guide",
    "eval_steps": 100,  # held-out loss at the start and the end only: the benchmark times training
}
GUIDE_WAY = ["per_device_train_batch_size=1", "gradient_accumulation_steps=4", "optim=adamw_8bit"]


def side_by_side(args) -> None:
    """The guide's way, then the default way, each in its own process; one comparison row."""
    import subprocess

    runs = {"guide": GUIDE_WAY, "default": []}
    for name, settings in runs.items():
        sets = [item for assignment in [*settings, *args.set] for item in ("--set", assignment)]
        subprocess.run([sys.executable, __file__, "--model", args.model, "--name", name, "--out", args.out,
                        "--run-dir", args.run_dir, *sets], check=True)
    guide, default = json.loads(Path(args.out).read_text())[-2:]
    entry = {
        "benchmark": "train_side_by_side",
        "date": default["date"],
        "card": default["card"],
        "speedup": round(guide["train_s"] / default["train_s"], 1),
        "speedup_without_eval": round(guide["train_s_without_eval"] / default["train_s_without_eval"], 1),
        "final_loss_difference_pct": round(100 * (_final_loss(default) - _final_loss(guide)) / _final_loss(guide), 3),
        "guide": {k: guide[k] for k in ("train_s", "train_s_without_eval", "peak_memory", "loss_step_100")},
        "default": {k: default[k] for k in ("train_s", "train_s_without_eval", "peak_memory", "loss_step_100")},
    }
    print(json.dumps(entry))
    record(args.out, entry, f"guide's way {guide['train_s']:.1f} s vs default {default['train_s']:.1f} s: {entry['speedup']}x "
           f"({entry['speedup_without_eval']}x without the held-out loss); final loss {entry['final_loss_difference_pct']:+}%")


def _final_loss(entry: dict) -> float:
    """The train loss at the last logged step (step 100 in the recipe)."""
    return entry["losses"][max(entry["losses"], key=int)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="a local model folder (benchmarks/r1_arch.py builds one)")
    parser.add_argument("--name", help="this variant's name (one process, one record)")
    parser.add_argument("--side-by-side", action="store_true", help="the guide's way and the default way, compared")
    parser.add_argument("--out", required=True)
    parser.add_argument("--run-dir", default="/tmp/bench-train")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    if args.side_by_side:
        return side_by_side(args)
    if not args.name:
        parser.error("give --name, or --side-by-side")

    from semifinetune.data import prepare_data
    from semifinetune.pipeline import setup
    from semifinetune.train import read_train_log, train

    run_dir = Path(args.run_dir) / args.name
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = {"model_name": args.model, **GUIDE_RUN, **parse_assignments(args.set)}
    cfg, report = setup(run_dir, "t4", overrides)
    data = prepare_data(run_dir)
    stats = train(cfg, run_dir)
    log = read_train_log(run_dir)
    losses = {entry["step"]: round(entry["loss"], 4) for entry in log["train_loss"]}
    record_ = {
        "benchmark": "train",
        "name": args.name,
        "date": datetime.date.today().isoformat(),
        "card": report["gpu_name"],
        "versions": report["versions"],
        "settings": {k: v for k, v in cfg.to_dict().items() if not k.startswith("sweep")},
        "train_tokens": data["train"]["tokens"],
        "train_s": stats["train_runtime_s"],
        "eval_s": stats["eval_runtime_s"],  # the held-out loss at the start and the end, inside train_s
        "train_s_without_eval": round(stats["train_runtime_s"] - stats["eval_runtime_s"], 2),
        "cuda_graphs": cfg.cuda_graphs,
        "tokens_per_s": stats["tokens_per_s"],
        "samples_per_s": stats["samples_per_s"],
        "peak_memory": {k: v for k, v in stats.items() if "peak" in k},
        "loss_step_10": losses.get(10),
        "loss_step_100": losses.get(100),
        "losses": losses,
        "backend": stats["backend"],
        "adapter_dtypes": stats["adapter_dtypes"],
        "precision": stats["precision"],
        "process_s": round(time.perf_counter() - start, 1),
    }
    memory = record_["peak_memory"].get("gpu_peak_reserved_gib", record_["peak_memory"]["peak_process_rss_gib"])
    record(args.out, record_, f"{args.name}: {record_['backend']} {record_['precision']}, {record_['train_s']:.1f} s "
           f"({record_['train_s_without_eval']:.1f} s without the held-out loss), "
           f"{record_['tokens_per_s']:.0f} tokens/s, peak {memory} GiB, loss@10 {record_['loss_step_10']}, "
           f"loss@100 {record_['loss_step_100']}")
    print(json.dumps({k: record_[k] for k in ("name", "train_s", "eval_s", "train_s_without_eval", "tokens_per_s", "peak_memory", "loss_step_10", "loss_step_100", "precision", "adapter_dtypes")}))


if __name__ == "__main__":
    main()
