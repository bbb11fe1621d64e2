"""Training benchmark: the guide's recipe on the R1-1.5B architecture, one variant per process.

    python benchmarks/bench_train.py --model /tmp/r1-random --name guide --out results.json \
        --set backend=transformers --set per_device_train_batch_size=1 --set gradient_accumulation_steps=4

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="a local model folder (benchmarks/r1_arch.py builds one)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--run-dir", default="/tmp/bench-train")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()

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
