"""Where each split's examples come from: the training file, and held-out and validation questions that are either
files of their own or seeded samples of the training questions.

`eval_file` and `validation_file` default to "auto": with the shipped training data, the shipped held-out and
validation files; with a user's training file, samples of its own questions. Every fact a user gives must be
learned, so sampled questions stay in training: they measure recall of trained facts, asked as trained. A file of
reworded questions is the stronger test. The samples are drawn once (notebook 01, seeded) and saved in the run
directory, so every notebook and every re-run scores the same questions.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
from pathlib import Path

from . import runs
from .config import ConfigError, RunConfig

AUTO = "auto"
SHIPPED_TRAIN = ("data/semiconductor_train.jsonl", "data/semiconductor_guide.jsonl")
SHIPPED_QUESTIONS = {"eval_file": "data/semiconductor_eval.jsonl", "validation_file": "data/semiconductor_val.jsonl"}
SPLIT_KEYS = {"train": "train_file", "eval": "eval_file", "validation": "validation_file"}
SAMPLE_FILES = {"eval": "sampled_eval.jsonl", "validation": "sampled_validation.jsonl"}  # under run_dir/data/
# Sample sizes: validation a fifth of the rows (at most 30: it is answered at every check), held-out the rest up to
# 100 (answered by both models, with and without notes), so a 28-row file gives 6 and 22, a 766-row one 30 and 100.
VALIDATION_SHARE, VALIDATION_MAX, HELD_OUT_MAX = 0.2, 30, 100


def locate(given: str) -> str:
    """A data setting as a readable source: a path as given where it exists, else from the project root where it
    exists there, else as given (a Hub dataset id, or a missing file that the check names). Outside a clone, a
    relative path to one of the repository's files says that the project runs from a clone."""
    from .sources import is_hub_id, split_source

    if given in (AUTO, ""):
        return given
    name, _ = split_source(given)
    suffix = given[len(name):]  # ":split", where one was named
    if Path(name).is_absolute() or Path(name).exists():
        return given
    if (runs.PROJECT_ROOT / name).exists():
        return str(runs.PROJECT_ROOT / name) + suffix
    if not is_hub_id(given) and not runs.in_a_clone():
        runs.resolve_data_path(name)  # raises: the repository's files are not beside this installed package
    return given


def is_shipped(given: str, shipped) -> bool:
    """The setting names one of the project's own data files."""
    path = Path(locate(given))
    return path.is_file() and any(path.resolve() == (runs.PROJECT_ROOT / name).resolve() for name in shipped)


def plan(cfg: RunConfig) -> dict[str, str]:
    """split -> the source it reads, or "sample" for questions drawn from the training file; validation is absent
    when validation_file is ''. A user's training file beside a shipped question file stops here."""
    shipped_train = is_shipped(cfg.train_file, SHIPPED_TRAIN)
    chosen = {"train": cfg.train_file}
    for split in ("eval", "validation"):
        key = SPLIT_KEYS[split]
        given = getattr(cfg, key)
        if given == AUTO:
            chosen[split] = SHIPPED_QUESTIONS[key] if shipped_train else "sample"
        elif given:
            if not shipped_train and is_shipped(given, SHIPPED_QUESTIONS.values()):
                raise ConfigError(
                    f"train_file {cfg.train_file!r} is your data, but {key} {given!r} is the shipped semiconductor "
                    f"question file: the run would be scored on questions about something else. Either set {key}='auto' "
                    "(questions sampled from your training file), or give a file of your own questions "
                    f"(overrides={{'{key}': 'my_questions.jsonl'}} in notebook 01, --set {key}=PATH)."
                )
            chosen[split] = given
    return chosen


def sample_sizes(rows: int) -> tuple[int, int]:
    """(held-out, validation) sample sizes for a training file of `rows` standalone questions."""
    if rows < 2:
        raise ConfigError(f"The training file has {rows} question(s) that stand alone; sampling held-out and validation "
                          "questions from it needs at least 2. Add examples, or give eval_file and validation_file.")
    validation = min(VALIDATION_MAX, max(1, round(rows * VALIDATION_SHARE)))
    return min(HELD_OUT_MAX, rows - validation), validation


def draw_samples(records: list, seed: int, splits: list[str]) -> dict[str, list]:
    """Disjoint seeded samples of the training records for the splits that sample. Only questions that stand alone
    (no earlier turns) are drawn, since evaluation asks each question on its own."""
    alone = [r for r in records if not any(m["role"] != "system" for m in r.value.get("context", []))]
    held_out, validation = sample_sizes(len(alone))
    order = random.Random(seed).sample(range(len(alone)), len(alone))
    picked = {"validation": order[:validation], "eval": order[validation : validation + held_out]}
    copy = lambda record: dataclasses.replace(record, value=dict(record.value))  # noqa: E731 - scoring adds key terms
    return {split: [copy(alone[i]) for i in sorted(picked[split])] for split in splits}


def sample_path(run_dir: str | os.PathLike, split: str) -> Path:
    return runs.run_path(run_dir, runs.DATA) / SAMPLE_FILES[split]


def describe(chosen: dict[str, str], counts: dict[str, int]) -> str:
    """One line per split, where its examples come from and how many; what sampled questions measure, once."""
    names = {"train": "training examples", "eval": "held-out questions", "validation": "validation questions"}
    lines = [f"{counts.get(split, 0)} {names[split]}: {'sampled from the training file' if source == 'sample' else source}"
             for split, source in chosen.items()]
    if "sample" in chosen.values():
        lines.append("Sampled questions stay in training (every fact is learned), so they measure recall of trained facts "
                     "asked as trained; a file of reworded questions (eval_file) is the stronger test.")
    return "\n".join(lines)


def data_name(cfg: RunConfig) -> str:
    """A short name for the run's data, from its training file's name: "semiconductor" for
    data/semiconductor_train.jsonl, "acme-faq" for acme_faq.csv, "squad" for "rajpurkar/squad"."""
    from .sources import split_source

    name, _ = split_source(cfg.train_file)
    stem = Path(name.rstrip("/")).name
    stem = stem.split(".")[0] if "." in stem else stem
    words = [w for w in re.split(r"[^0-9A-Za-z]+", stem.lower()) if w and w not in ("train", "training", "data", "dataset")]
    return "-".join(words) or "custom"

