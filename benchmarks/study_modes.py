"""Fine-tune, retrieve, or both: each recipe over several seeds, each model without notes, with notes, with distractors.

    python benchmarks/study_modes.py --out benchmarks/results/modes.json [--seeds 1 2 3] [--only NAME ...]
        [--jobs N] [--cores-per-job C] [--profile cpu] [--set key=value ...]
    python benchmarks/study_modes.py --hits      # the index study alone: BM25 hit rates, no model (seconds)

Per recipe and seed: a fresh run of the profile (setup, prepare, train; the adapter is the step whose validation
answers score best), then the tuned model on all 73 held-out and 30 general questions at the profile's sampling
settings (seeded), without notes, with the top 1 and top 3 notes, and with 3 notes that lack the answer. Per seed the
base model is scored the same way, over each kind of index (rows, facts, topics). The held-out and general questions
choose nothing: the validation questions choose each run's checkpoint.

--jobs N runs N jobs at once, each pinned to its own C cores; on a GPU machine they share the GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from study_recipes import launch, machine  # noqa: E402

FULL = {"max_steps": 200, "save_steps": 40, "eval_steps": 40}  # the facts recipe's measured full length on this model
RECIPES = {
    "guide": {"recipe": "guide"},  # its own 100 steps at batch 4
    "facts": {"recipe": "facts", **FULL},
    "raft": {"recipe": "raft", **FULL},
    "raft-share-0.5": {"recipe": "raft", "raft_oracle_share": 0.5, **FULL},
    "raft-1-note": {"recipe": "raft", "raft_notes": 1, **FULL},
}
INDEXES = ("rows", "facts", "topics")


def modes(k_values=(1, 3)) -> list[tuple[str, int, str]]:
    """(label, k, which notes): without notes, the top k, the top note above the floor (notes.score_floor at
    retrieval_floor 0.5), and 3 notes that lack the answer."""
    return ([("off", 0, "")] + [(f"top {k}", k, "top") for k in k_values] + [("top 1 above the floor", 1, "floor"),
            ("3 distractors", 3, "distractors")])


def answer_modes(cfg, model, tokenizer, index_kinds: tuple[str, ...] = ()) -> dict:
    """{set: {mode label: [correct per question]}}: every mode of every set in one generate() call; over each kind of
    index in index_kinds (labels then name the kind), else over the run's own (cfg.retrieval_index)."""
    import dataclasses

    from semifinetune.compare import distractor_notes, question_sets
    from semifinetune.evaluate import evaluate_model, settings_from_config
    from semifinetune.notes import above_floor, index_training_pairs, score_floor
    from semifinetune.retrieval import retrieve

    index_kinds = index_kinds or (cfg.retrieval_index,)
    sets = question_sets(cfg)
    cells = []
    for kind in index_kinds:
        index = index_training_pairs(dataclasses.replace(cfg, retrieval_index=kind))
        floor = score_floor(dataclasses.replace(cfg, retrieval_floor=0.5), index)
        for label, k, which in modes():
            if label == "off" and kind != index_kinds[0]:
                continue  # the same prompts whatever the index
            name = label if len(index_kinds) == 1 or label == "off" else f"{label} {kind}"
            for set_name, rows in sets.items():
                questions = [row["input"] for row in rows]
                given = (distractor_notes(index, rows, k) if which == "distractors" else
                         above_floor(retrieve(index, questions, k), floor) if which == "floor" else
                         retrieve(index, questions, k) if k else [[] for _ in rows])
                cells.append((set_name, name, rows, given))
    frame = evaluate_model(model, tokenizer, [row for cell in cells for row in cell[2]], settings_from_config(cfg),
                           cfg.seed, progress=False, cuda_graphs=cfg.cuda_graphs, notes=[n for cell in cells for n in cell[3]])
    found, start = {}, 0
    for set_name, name, rows, _ in cells:
        part = frame.iloc[start : start + len(rows)]
        found.setdefault(set_name, {})[name] = [bool(v) for v in part["correct"]]
        start += len(rows)
    return found


def run_recipe(name: str, seed: int, folder: Path, profile: str, extra: dict, all_indexes: bool = False) -> dict:
    from semifinetune.data import prepare_data
    from semifinetune.evaluate import as_model, load_base_and_tuned
    from semifinetune.pipeline import setup
    from semifinetune.train import read_train_log, train

    run_dir = folder / f"{name}-s{seed}"
    started = time.perf_counter()
    cfg, _ = setup(run_dir, profile, {**RECIPES[name], "seed": seed, **extra}, overwrite=True)
    data = prepare_data(run_dir)
    stats = train(cfg, run_dir, overwrite=True)
    log = read_train_log(run_dir)
    model, tokenizer = load_base_and_tuned(cfg, run_dir)
    with as_model(model, "tuned"):
        answers = answer_modes(cfg, model, tokenizer, INDEXES if all_indexes else ())
    return {"name": name, "seed": seed, "overrides": {**RECIPES[name], **extra}, "train_rows": data["train"]["examples"],
            "train_seconds": stats["train_runtime_s"], "global_step": stats["global_step"], "kept_step": stats["kept_step"],
            "validation_recall": log["validation_recall"], "answers": answers,
            "total_seconds": round(time.perf_counter() - started, 1)}


def run_base(seed: int, profile: str, extra: dict) -> dict:
    from semifinetune.config import make_config
    from semifinetune.models import load_model

    cfg = make_config(profile, {"seed": seed, **extra})
    model, tokenizer = load_model(cfg)
    return {"name": "base", "seed": seed, "answers": answer_modes(cfg, model, tokenizer, INDEXES)}


def child(job: str, folder: Path, profile: str, extra: dict, all_indexes: bool) -> None:
    name, seed = job.rsplit("-s", 1)
    result = (run_base(int(seed), profile, extra) if name == "base" else
              run_recipe(name, int(seed), folder, profile, extra, all_indexes))
    (folder / f"{job}.json").write_text(json.dumps(result), encoding="utf-8")


def spread(values: list[int]) -> str:
    """mean +- sample standard deviation (over seeds), with the values."""
    if len(values) == 1:
        return f"{values[0]}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f} ({', '.join(map(str, values))})"


def summary(results: list[dict]) -> dict:
    """{(name, set, mode): [correct count per seed]}."""
    table: dict[tuple, list[int]] = {}
    for result in sorted(results, key=lambda r: r["seed"]):
        for set_name, by_mode in result["answers"].items():
            for mode, correct in by_mode.items():
                table.setdefault((result["name"], set_name, mode), []).append(sum(correct))
    return table


def markdown(results: list[dict]) -> str:
    counts = summary(results)
    names = list(dict.fromkeys(r["name"] for r in sorted(results, key=lambda r: (r["name"] != "base",))))
    lines = ["| model | mode | held-out correct of 73 | general correct of 30 | seeds |", "|---|---|---|---|---|"]
    for name in names:
        for mode in dict.fromkeys(m for (n, s, m) in counts if n == name and s == "held-out"):
            held, general = counts[(name, "held-out", mode)], counts.get((name, "general", mode), [])
            lines.append(f"| {name} | {mode} | {spread(held)} | {spread(general) if general else ''} | {len(held)} |")
    return "\n".join(lines)


def hit_rates(profile: str = "cpu") -> str:
    """How often the top 1 and top 3 notes hold the answer (evaluate.notes_hold_answer), per kind of index, on the
    held-out and validation questions; with the notes' mean length in the embedded model's tokens."""
    import dataclasses

    from semifinetune.compare import question_sets
    from semifinetune.config import make_config
    from semifinetune.data import split_examples
    from semifinetune.evaluate import notes_hold_answer
    from semifinetune.models import load_tokenizer
    from semifinetune.notes import index_training_pairs
    from semifinetune.retrieval import note_text, retrieve

    cfg = make_config(profile)
    tokenizer = load_tokenizer(cfg)
    questions = {"held-out": question_sets(cfg)["held-out"], "validation": split_examples(cfg, "validation", None)}
    lines = ["| index | notes | tokens per note | held-out top 1 | top 3 | validation top 1 | top 3 |", "|---|---|---|---|---|---|---|"]
    for kind in INDEXES:
        index = index_training_pairs(dataclasses.replace(cfg, retrieval_index=kind))
        tokens = statistics.mean(len(tokenizer(note_text(entry))["input_ids"]) for entry in index.pairs)
        cells = []
        for rows in questions.values():
            given = retrieve(index, [row["input"] for row in rows], 3)
            for k in (1, 3):
                cells.append(f"{sum(notes_hold_answer(notes[:k], row) for notes, row in zip(given, rows))} of {len(rows)}")
        lines.append(f"| {kind} | {len(index.pairs)} | {tokens:.0f} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON record of every job's answers")
    parser.add_argument("--only", nargs="*", help="these recipes (default: all); 'base' is the base model")
    parser.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3])
    parser.add_argument("--folder", default="runs/modes")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--cores-per-job", type=int, default=2)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--hits", action="store_true", help="the index study alone")
    parser.add_argument("--collect", nargs="*", metavar="DIR",
                        help="train nothing: summarise (and with --out record) the job files in these folders")
    parser.add_argument("--card", default="", help="with --collect: the GPU the jobs ran on")
    parser.add_argument("--machine", default="", help="with --collect: the machine the jobs ran on")
    parser.add_argument("--all-indexes", action="store_true", help="score the tuned models over every kind of index")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hits:
        print(hit_rates(args.profile))
        return
    from semifinetune.config import parse_assignments

    folder = Path(args.folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    extra = parse_assignments(args.set)
    if args.child:
        child(args.child, folder, args.profile, extra, args.all_indexes)
        return
    names = args.only or ["base", *RECIPES]
    unknown = [n for n in names if n != "base" and n not in RECIPES]
    if unknown:
        sys.exit(f"unknown recipes {unknown}; known: base, {', '.join(RECIPES)}")
    jobs = [f"{name}-s{seed}" for seed in args.seeds for name in names]
    started = time.perf_counter()
    if args.collect is None:
        passed = ["--profile", args.profile, *(f"--set={item}" for item in args.set), *(["--all-indexes"] if args.all_indexes else [])]
        launch(jobs, folder, args.jobs, args.cores_per_job, passed, __file__)
        results = [json.loads((folder / f"{job}.json").read_text()) for job in jobs if (folder / f"{job}.json").exists()]
    else:
        results = [json.loads(path.read_text()) for where in args.collect for path in sorted(Path(where).glob("*-s*.json"))]
    print(markdown(results))
    if args.out:
        import datetime

        from record import record

        from semifinetune.env import environment_report

        card = args.card or environment_report().get("gpu_name", "")
        entry = {"benchmark": "modes_study", "date": datetime.date.today().isoformat(), "machine": args.machine or machine(), "card": card,
                 "profile": args.profile, "seeds": args.seeds, "jobs": args.jobs, "extra": extra,
                 "seconds": round(time.perf_counter() - started), "results": results}
        counts = summary(results)
        best = max((key for key in counts if key[1] == "held-out"), key=lambda key: statistics.mean(counts[key]))
        record(args.out, entry, f"{len(results)} jobs, seeds {args.seeds}; most held-out answers: {best[0]} {best[2]}, "
               f"{spread(counts[best])} of 73")


if __name__ == "__main__":
    main()
