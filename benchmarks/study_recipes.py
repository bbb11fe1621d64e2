"""Which recipe teaches the embedded model the facts? Each candidate trained and scored the same way.

    python benchmarks/study_recipes.py --out benchmarks/results/recipes_cpu.json [--only NAME ...] [--jobs N]
        [--set key=value ...]   # applied to every candidate (e.g. a quick check: --profile tiny --set max_steps=4)

Per candidate: a fresh run of the `cpu` profile with the candidate's settings (setup, prepare, train; the adapter
is the checkpoint with the lowest validation loss), then the tuned model on the 73 held-out questions and the 30
general ones at the profile's sampling settings. The base model is scored once. Reported: training time, held-out
correct / keyword recall / EOS-stop rate, held-out loss at the kept step, the kept step, and general-knowledge
retention (tuned correct / base correct on the general questions). The validation file chooses the step; the
held-out and general questions are only reported.

--jobs N runs N candidates at once, each pinned to its own --cores-per-job CPU cores (a machine with more cores);
the default runs them one after another on every core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from semifinetune.config import ALL_LINEAR, ATTENTION_MODULES  # noqa: E402

STUDY_PROFILE = "cpu"
GUIDE = {"recipe": "guide"}
# The `facts` recipe's starting point: r16/alpha32 on every linear layer, lr 1e-3, batch 8 (the profile's recipe
# before the study); each candidate moves one or two levers from it.
BASE = {"recipe": "guide", "lora_alpha": 32, "target_modules": [ALL_LINEAR], "per_device_train_batch_size": 8,
        "learning_rate": 1e-3, "warmup_steps": 5, "logging_steps": 5, "save_steps": 20, "eval_steps": 20}
# rank 64 (alpha 2r) at lr 2e-3, each the better side of one lever above; evaluated every 40 steps
WIDE = {**BASE, "lora_r": 64, "lora_alpha": 128, "learning_rate": 2e-3, "save_steps": 40, "eval_steps": 40}
FORMS = {"original": ("original",), "reworded": ("original", "rewording"), "all": ("original", "rewording", "reverse")}


def candidates() -> dict[str, dict]:
    """name -> overrides of the cpu profile. `data` picks the training rows by form (see FORMS). The first group
    ran with checkpoints chosen by the validation loss (BENCHMARKS.md's round 1); run today, they are chosen by the
    validation answers, as every run is."""
    return {
        "guide": {**GUIDE},  # lr 5e-5, r16/alpha16 on q/k/v/o, 100 steps at batch 4
        "attention-only": {**BASE, "target_modules": list(ATTENTION_MODULES), "max_steps": 120},
        "base-120": {**BASE, "max_steps": 120},
        "base-200": {**BASE, "max_steps": 200},
        "lr2e-3-120": {**BASE, "learning_rate": 2e-3, "max_steps": 120},
        "r64-120": {**BASE, "lora_r": 64, "lora_alpha": 128, "max_steps": 120},
        "batch4-200": {**BASE, "per_device_train_batch_size": 4, "max_steps": 200},
        # data levers (rewordings, reverse questions) at the best LoRA settings of the runs above
        "r64-lr2e-3-all-200": {**WIDE, "max_steps": 200, "data": "all"},
        # half the steps, without and with the new wordings (the same compute each)
        "r64-lr2e-3-original-100": {**WIDE, "max_steps": 100, "save_steps": 50, "eval_steps": 50},
        "r64-lr2e-3-all-100": {**WIDE, "max_steps": 100, "save_steps": 50, "eval_steps": 50, "data": "all"},
    }


def training_file(form: str, folder: Path) -> str:
    """The training rows whose `form` is in FORMS[form], written to folder (rows without a form are originals)."""
    source = ROOT / "data" / "semiconductor_train.jsonl"
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [row for row in rows if row.get("form", "original") in FORMS[form]]
    path = folder / f"train_{form}.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept), encoding="utf-8")
    return str(path)


def score(frame) -> dict:
    return {
        "correct": int(frame["correct"].sum()),
        "questions": len(frame),
        "recall": round(float(frame["recall"].mean()), 3),
        "eos_rate": round(float(frame["eos_stop"].mean()), 3),
    }


def answer_sets(cfg, model, tokenizer) -> dict:
    """The model as it is on the held-out and the general questions at the run's settings."""
    from semifinetune.compare import question_sets
    from semifinetune.evaluate import evaluate_model, settings_from_config

    return {
        name: score(evaluate_model(model, tokenizer, rows, settings_from_config(cfg), cfg.seed, progress=False, cuda_graphs=False))
        for name, rows in question_sets(cfg).items()
    }


def run_candidate(name: str, overrides: dict, folder: Path, profile: str = STUDY_PROFILE) -> dict:
    """Train one candidate in folder/name and score it; its figures."""
    from semifinetune.data import prepare_data
    from semifinetune.evaluate import load_base_and_tuned
    from semifinetune.pipeline import setup
    from semifinetune.train import read_train_log, train

    overrides = dict(overrides)
    form = overrides.pop("data", "original")
    overrides["train_file"] = training_file(form, folder)
    run_dir = folder / name
    started = time.perf_counter()
    cfg, _ = setup(run_dir, profile, overrides, overwrite=True)
    data = prepare_data(run_dir)
    stats = train(cfg, run_dir, overwrite=True)
    log = read_train_log(run_dir)
    model, tokenizer = load_base_and_tuned(cfg, run_dir)
    tuned = answer_sets(cfg, model, tokenizer)  # the adapter on
    return {
        "name": name,
        "overrides": {**overrides, "data": form, "train_file": Path(overrides["train_file"]).name},
        "train_rows": data["train"]["examples"],
        "epochs": round(stats["global_step"] * cfg.per_device_train_batch_size / data["train"]["examples"], 2),
        "trainable_parameters": stats["trainable_parameters"],
        "train_seconds": stats["train_runtime_s"],
        "global_step": stats["global_step"],
        "kept_step": stats["kept_step"],
        "stopped_early": stats["stopped_early"],
        "best_validation_recall": stats["best_validation_recall"],
        "validation_recall": log["validation_recall"],
        "held_out_loss": stats["held_out_loss"],
        "validation_loss": log["validation_loss"],
        "held_out": tuned["held-out"],
        "general": tuned["general"],
        "total_seconds": round(time.perf_counter() - started, 1),
    }


def run_base(profile: str = STUDY_PROFILE) -> dict:
    """The base model on the same questions, once."""
    from semifinetune.config import make_config
    from semifinetune.models import load_model

    cfg = make_config(profile)
    model, tokenizer = load_model(cfg)
    results = answer_sets(cfg, model, tokenizer)
    return {"name": "base model", "held_out": results["held-out"], "general": results["general"]}


def child(name: str, folder: Path, profile: str, extra: dict) -> None:
    """One candidate (or the base model) in this process; its JSON into folder/NAME.json."""
    folder.mkdir(parents=True, exist_ok=True)
    result = run_base(profile) if name == "base" else run_candidate(name, {**candidates()[name], **extra}, folder, profile)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")


def launch(names: list[str], folder: Path, jobs: int, cores_per_job: int, passed: list[str], script: str = __file__) -> None:
    """Run each name in its own process (`script --child NAME`), `jobs` at a time, each pinned to its own cores."""
    pending, running = list(names), {}
    free = [list(range(i * cores_per_job, (i + 1) * cores_per_job)) for i in range(jobs)]
    while pending or running:
        while pending and free:
            name, cores = pending.pop(0), free.pop(0)
            env = {**os.environ, "OMP_NUM_THREADS": str(len(cores)), "MKL_NUM_THREADS": str(len(cores))}
            log = open(folder / f"{name}.log", "w")
            command = [sys.executable, script, "--child", name, "--folder", str(folder), *passed]
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       preexec_fn=(lambda c=cores: os.sched_setaffinity(0, c)) if jobs > 1 else None)
            running[process] = (name, cores, log)
        time.sleep(2)
        for process in [p for p in running if p.poll() is not None]:
            name, cores, log = running.pop(process)
            log.close()
            free.append(cores)
            print(f"{name}: exit {process.returncode}", flush=True)


def table(results: list[dict], base: dict | None) -> str:
    """The study as a Markdown table."""
    lines = [
        "| candidate | data rows | epochs | train s | kept step | held-out correct of 73 | recall | EOS-stop | held-out loss | general correct | retention |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if base:
        lines.append(f"| base model | | | | | {base['held_out']['correct']} | {base['held_out']['recall']} | "
                     f"{base['held_out']['eos_rate']} | | {base['general']['correct']} of {base['general']['questions']} | 1.00 |")
    for r in results:
        retention = r["general"]["correct"] / base["general"]["correct"] if base and base["general"]["correct"] else float("nan")
        stop = " (early stop)" if r["stopped_early"] else ""
        lines.append(
            f"| {r['name']} | {r['train_rows']} | {r['epochs']} | {r['train_seconds']:.0f} | {r['kept_step']} of "
            f"{r['global_step']}{stop} | {r['held_out']['correct']} | {r['held_out']['recall']} | {r['held_out']['eos_rate']} | "
            f"{r['held_out_loss']} | {r['general']['correct']} of {r['general']['questions']} | {retention:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON record of every candidate's figures (a row in BENCHMARKS.md's recorded runs)")
    parser.add_argument("--only", nargs="*", help="these candidates (default: all); 'base' is the base model")
    parser.add_argument("--folder", default="runs/recipes", help="run directories and per-candidate JSON")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--cores-per-job", type=int, default=2)
    parser.add_argument("--profile", default=STUDY_PROFILE)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(args.folder).resolve()
    from semifinetune.config import parse_assignments

    extra = parse_assignments(args.set)
    if args.child:
        child(args.child, folder, args.profile, extra)
        return
    folder.mkdir(parents=True, exist_ok=True)
    names = args.only or ["base", *candidates()]
    unknown = [n for n in names if n != "base" and n not in candidates()]
    if unknown:
        sys.exit(f"unknown candidates {unknown}; known: base, {', '.join(candidates())}")
    passed = ["--profile", args.profile, *(f"--set={item}" for item in args.set)]
    launch(names, folder, args.jobs, args.cores_per_job, passed)
    found = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    base = found.pop("base", None)
    results = [found[n] for n in candidates() if n in found]
    text = table(results, base)
    print(text)
    if args.out:
        import datetime

        from record import record

        entry = {"benchmark": "recipe_study", "date": datetime.date.today().isoformat(), "machine": machine(),
                 "jobs": args.jobs, "cores_per_job": args.cores_per_job, "base": base, "candidates": results}
        best = max(results, key=lambda r: r["held_out"]["correct"])
        record(args.out, entry, f"{len(results)} candidates; best {best['name']}: {best['held_out']['correct']} of 73 held-out "
               f"(base {base['held_out']['correct'] if base else '?'}), general {best['general']['correct']} of 30")


def machine() -> str:
    import platform

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{model}, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
