"""Read and validate the JSONL data files, and write the formatted, tokenized sets into the run directory."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from .atomic import write_text_atomic
from .config import ConfigError, RunConfig

REQUIRED_FIELDS = {"train": ("input", "output"), "eval": ("input", "output", "keywords")}
TEXT_FIELDS = ("input", "output", "reasoning")  # the fields that reach the formatted text
PREPARED_FILES = {"train": "train.jsonl", "eval": "eval.jsonl", "validation": "validation.jsonl"}  # under run_dir/data/
DATA_FILES = (("train_file", "train"), ("eval_file", "eval"), ("validation_file", "validation"))  # config key, split
SUMMARY_FILE = "summary.json"
HISTOGRAM_FILE = "token_lengths.png"

# Chat-template markers (`<|im_start|>`, `<|end_of_text|>`), R1's full-width ones (`<｜end▁of▁sentence｜>`)
# and the think tags: typed into the data they either become real special tokens or split into junk pieces.
SPECIAL_TOKEN = re.compile(r"<\|[^<>|\s]{1,40}\|>|<｜[^<>｜]{1,40}｜>|</?think>")
KEYWORDS_SHAPE = 'a non-empty list of keyword groups, each a non-empty list of strings, e.g. [["TSMC"], ["1987"]]'


class DataError(ConfigError):
    """A data file has problems; the message holds one `file:line: problem` line per problem."""


@dataclasses.dataclass
class Record:
    where: str  # "file:line" or "file:item N" for a .json array
    value: object


# --- reading ---


def _split_records(path: Path, label: str) -> tuple[list[Record], list[str]]:
    """Parsed JSON values with their locations, and the problems met (bad UTF-8, bad JSON, not JSONL)."""
    raw = path.read_bytes()
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM (Windows editors) is harmless
    if not raw.strip():
        return [], [f"{label}:1: the file is empty; it needs one JSON object per line, e.g. {{\"input\": ..., \"output\": ...}}"]
    if raw.lstrip().startswith(b"["):  # a .json array; a .json file of JSON lines reads as JSONL
        return _split_array(raw, label)
    records, problems, lines = [], [], raw.split(b"\n")
    nonblank = [line.strip() for line in lines if line.strip()]
    if not any(line.startswith(b"{") for line in nonblank):
        looks = " (this looks like CSV)" if b"," in nonblank[0] or b"\t" in nonblank[0] else ""
        return [], [f"{label}:1: not a JSONL file{looks}: each line must be one JSON object such as "
                    '{"input": "...", "output": "..."}; convert it, e.g. with pandas read_csv(...).to_json(lines=True, orient="records")']
    for number, line in enumerate(lines, start=1):
        line = line.rstrip(b"\r")  # CRLF line ends are fine
        if not line.strip():
            continue  # blank lines are fine
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            problems.append(f"{label}:{number}: invalid UTF-8 at byte {err.start + 1} of the line; save the file as UTF-8")
            continue
        try:
            records.append(Record(f"{label}:{number}", json.loads(text)))
        except json.JSONDecodeError as err:
            problems.append(f"{label}:{number}: invalid JSON ({err.msg} at column {err.colno}); each line must be one complete JSON object")
    return records, problems


def _split_array(raw: bytes, label: str) -> tuple[list[Record], list[str]]:
    """A `.json` file holding one array of objects; locations are `item N` (1-based)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        return [], [f"{label}:{line}: invalid UTF-8 at byte {err.start + 1} of the file; save the file as UTF-8"]
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        return [], [f"{label}:{err.lineno}: invalid JSON ({err.msg} at column {err.colno})"]
    if not isinstance(value, list):
        return [], [f"{label}:1: a .json data file must hold an array of objects [{{\"input\": ..., \"output\": ...}}, ...]"]
    if not value:
        return [], [f"{label}:1: the array is empty; it needs at least one example"]
    return [Record(f"{label}:item {n}", item) for n, item in enumerate(value, start=1)], []


# --- checks on one record ---


def _field_problems(example, kind: str) -> list[str]:
    if not isinstance(example, dict):
        return [f"expected a JSON object {{\"input\": ..., \"output\": ...}}, got {type(example).__name__}"]
    problems = []
    for name in REQUIRED_FIELDS[kind]:
        if name not in example:
            problems.append(f"missing field {name!r}")
        elif name == "keywords":
            problems += _keyword_problems(example[name])
        elif not isinstance(example[name], str):
            problems.append(f"field {name!r} must be a string, got {type(example[name]).__name__}")
        elif not example[name].strip():
            problems.append(f"field {name!r} is empty")
    if "reasoning" in example and not isinstance(example["reasoning"], str):
        problems.append(f"field 'reasoning' must be a string, got {type(example['reasoning']).__name__}")
    for name in TEXT_FIELDS:
        value = example.get(name)
        found = SPECIAL_TOKEN.findall(value) if isinstance(value, str) else []
        if found:
            problems.append(
                f"field {name!r} contains the special-token string {found[0]!r}: remove it; "
                "the formatter adds the tokenizer's real special tokens"
            )
    return problems


def _keyword_problems(groups) -> list[str]:
    if not isinstance(groups, list) or not groups:
        return [f"field 'keywords' must be {KEYWORDS_SHAPE}"]
    for n, group in enumerate(groups, start=1):
        if not isinstance(group, list) or not group:
            return [f"field 'keywords' group {n} must be a non-empty list of strings; keywords must be {KEYWORDS_SHAPE}"]
        if not all(isinstance(word, str) and word.strip() for word in group):
            return [f"field 'keywords' group {n} holds an empty or non-string keyword: {group!r}"]
    return []


def normalize_question(text: str) -> str:
    """The duplicate key: lower case, runs of whitespace as one space."""
    return " ".join(text.lower().split())


def _duplicate_problems(records: list[Record]) -> list[str]:
    first: dict[str, str] = {}
    problems = []
    for record in records:
        key = normalize_question(record.value["input"])
        if key in first:
            problems.append(
                f"{record.where}: duplicate of {first[key]} (same input, ignoring case and spaces); remove one of the two"
            )
        else:
            first[key] = record.where
    return problems


def _read(path: str | os.PathLike, kind: str) -> tuple[list[Record], list[str]]:
    """Records that pass the field checks, and every problem in the file."""
    if kind not in REQUIRED_FIELDS:
        raise ConfigError(f"Unknown data kind {kind!r}: use 'train' or 'eval'")
    path = Path(path)
    label = str(path)
    if not path.is_file():
        return [], [f"{label}: no such file; check the path (train_file / eval_file in the config)"]
    records, problems = _split_records(path, label)
    good = []
    for record in records:
        found = _field_problems(record.value, kind)
        problems += [f"{record.where}: {problem}" for problem in found]
        if not found:
            good.append(record)
    problems += _duplicate_problems(good)
    return good, sorted(problems, key=lambda problem: _line_number(problem, label))


def _line_number(problem: str, label: str) -> int:
    """The line (or item) number a problem names, to list problems in file order."""
    match = re.match(r"(?:item )?(\d+):", problem[len(label) + 1 :])
    return int(match.group(1)) if match else 0


def read_examples(path: str | os.PathLike, kind: str) -> list[dict]:
    """The examples of one data file; raises DataError listing every `file:line: problem`."""
    records, problems = _read(path, kind)
    if problems:
        raise DataError("\n".join(problems))
    return [record.value for record in records]


def guess_kind(path: str | os.PathLike) -> str:
    """'eval' for a file whose name or first example mentions keywords/eval, else 'train'."""
    path = Path(path)
    if "eval" in path.name.lower():
        return "eval"
    try:
        with path.open(encoding="utf-8-sig", errors="replace") as handle:
            return "eval" if '"keywords"' in handle.readline() else "train"
    except OSError:
        return "train"


def data_files(cfg: RunConfig) -> list[tuple[str, str]]:
    """(config key, split) of the run's data files: train, held-out eval, and validation where one is set."""
    return [(key, split) for key, split in DATA_FILES if getattr(cfg, key)]


def split_kind(split: str) -> str:
    """Validation questions are checked like held-out ones (question, reference answer, keywords)."""
    return "train" if split == "train" else "eval"


def check_data_files(cfg: RunConfig) -> dict[str, int]:
    """Notebook 01: the train, eval and validation files exist and pass every check short of tokenizing; examples
    per key. Token lengths need the model's tokenizer and are checked by prepare_data (notebook 04).
    """
    from .runs import PROJECT_ROOT, resolve_data_path

    problems, counts, records = [], {}, {}
    for key, split in data_files(cfg):
        kind = split_kind(split)
        given = getattr(cfg, key)
        path = resolve_data_path(given)
        if not path.is_file():
            where = "" if Path(given).is_absolute() else f" (looked from {Path.cwd()} and from the project, {PROJECT_ROOT})"
            problems.append(
                f"{key} {given!r}: no such file{where}. Fix the path: overrides={{'{key}': 'path/to/file.jsonl'}} "
                f"in notebook 01, or --set {key}=PATH."
            )
            continue
        records[split], found = _read(path, kind)
        problems += found
        counts[key] = len(records[split])
    if not problems and "train" in records:
        for split in ("eval", "validation"):
            problems += _leak_problems(records["train"], records.get(split, []))
    if not problems and "eval" in records and "validation" in records:
        # choosing the checkpoint on a reported question would report a chosen score
        problems += _leak_problems(records["eval"], records["validation"], "validation questions must not be held-out ones")
    if problems:
        raise DataError("\n".join(problems))
    return counts


# --- checks that need the tokenizer ---


def format_and_tokenize(tokenizer, example: dict, cfg: RunConfig) -> dict:
    """The example as the trainer sees it: prompt/completion text, input_ids, completion_mask."""
    from .formats import format_example, loss_on_completion_only, tokenize_example

    formatted = format_example(tokenizer, example, cfg)
    return {**formatted, **tokenize_example(tokenizer, formatted, loss_on_completion_only(cfg))}


def _length_problems(rows: list[dict], records: list[Record], cfg: RunConfig) -> list[str]:
    return [
        f"{record.where}: {len(row['input_ids'])} tokens after formatting, over max_seq_length "
        f"{cfg.max_seq_length}; shorten the answer or raise max_seq_length"
        for row, record in zip(rows, records)
        if len(row["input_ids"]) > cfg.max_seq_length
    ]


def _leak_problems(
    train: list[Record], held_out: list[Record], rule: str = "held-out questions must not be in the training file"
) -> list[str]:
    """A held-out question that is also a training question measures memory, not learning."""
    seen = {normalize_question(r.value["input"]): r.where for r in train}
    return [
        f"{r.where}: the same question as {seen[key]}; {rule}"
        for r in held_out
        if (key := normalize_question(r.value["input"])) in seen
    ]


def _check_files(files: list[tuple[str, str]], cfg: RunConfig, tokenizer) -> tuple[dict, list[str]]:
    """{path: (records, rows)} for (path, kind) pairs, and every problem across them."""
    results, problems = {}, []
    for path, kind in files:
        records, found = _read(path, kind)
        rows = [format_and_tokenize(tokenizer, r.value, cfg) for r in records]
        problems += sorted(found + _length_problems(rows, records, cfg), key=lambda problem: _line_number(problem, path))
        results[path] = (kind, records, rows)
    train = [r for kind, records, _ in results.values() if kind == "train" for r in records]
    for kind, records, _ in results.values():
        if kind == "eval":
            problems += _leak_problems(train, records)
    return results, problems


def validate_files(paths: list[str], cfg: RunConfig, kinds: list[str] | None = None, tokenizer=None) -> dict:
    """Check data files as cfg would format them; a summary per file, or DataError with every problem."""
    if tokenizer is None:
        from .models import load_tokenizer

        tokenizer = load_tokenizer(cfg)
    kinds = kinds or [guess_kind(path) for path in paths]
    results, problems = _check_files(list(zip(map(str, paths), kinds)), cfg, tokenizer)
    if problems:
        raise DataError("\n".join(problems))
    return {
        path: {"kind": kind, "examples": len(rows), "tokens": token_length_stats([len(r["input_ids"]) for r in rows], cfg.max_seq_length)}
        for path, (kind, _, rows) in results.items()
    }


def token_length_stats(lengths: list[int], max_seq_length: int) -> dict:
    """min/mean/p95/max token counts against the limit."""
    if not lengths:
        return {"count": 0, "max_seq_length": max_seq_length}
    ordered = sorted(lengths)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]  # nearest rank
    return {
        "count": len(ordered),
        "min": ordered[0],
        "mean": round(sum(ordered) / len(ordered), 1),
        "p95": p95,
        "max": ordered[-1],
        "max_seq_length": max_seq_length,
        "over_limit": sum(n > max_seq_length for n in ordered),
    }


def summary_line(summary: dict) -> str:
    """One line per validate_files summary: `OK: file: 255 train examples, tokens 38-120 (p95 97) of 256`."""
    parts = [
        f"{path}: {s['examples']} {s['kind']} examples, tokens {s['tokens']['min']}-{s['tokens']['max']} "
        f"(p95 {s['tokens']['p95']}) of max_seq_length {s['tokens']['max_seq_length']}"
        for path, s in summary.items()
    ]
    return "OK: " + "; ".join(parts)


# --- the prepared sets in run_dir/data/ ---


def prepared_path(run_dir: str | os.PathLike, split: str) -> Path:
    from . import runs

    if split not in PREPARED_FILES:
        raise ConfigError(f"Unknown split {split!r}: use one of {', '.join(PREPARED_FILES)}")
    return runs.run_path(run_dir, runs.DATA) / PREPARED_FILES[split]


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    """One JSON object a line, through a temporary file and a rename."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def prepare_data(run_dir: str | os.PathLike, tokenizer=None) -> dict:
    """Notebook 04: validate the run's train, eval and validation files, format and tokenize them into run_dir/data/."""
    from . import runs
    from .atomic import write_json_atomic
    from .formats import loss_on_completion_only
    from .runs import open_run

    cfg = open_run(run_dir)
    if tokenizer is None:
        from .models import load_tokenizer

        tokenizer = load_tokenizer(cfg)
    files = {split: str(runs.resolve_data_path(getattr(cfg, key))) for key, split in data_files(cfg)}
    results, problems = _check_files([(path, split_kind(split)) for split, path in files.items()], cfg, tokenizer)
    if problems:
        raise DataError("\n".join(problems))
    summary = {"format": cfg.format, "loss_on_completion_only": loss_on_completion_only(cfg), "max_seq_length": cfg.max_seq_length}
    for split, path in files.items():
        _, records, rows = results[path]
        written = [{**record.value, **row, "source_line": record.where} for record, row in zip(records, rows)]
        write_jsonl_atomic(prepared_path(run_dir, split), written)
        summary[split] = {
            "file": path,
            "examples": len(rows),
            "tokens": token_length_stats([len(r["input_ids"]) for r in rows], cfg.max_seq_length),
            "loss_tokens": sum(sum(r["completion_mask"]) for r in rows),
        }
    write_json_atomic(runs.run_path(run_dir, runs.DATA) / SUMMARY_FILE, summary)
    return summary


def read_prepared(run_dir: str | os.PathLike, split: str) -> list[dict]:
    """The rows prepare_data wrote for one split."""
    path = prepared_path(run_dir, split)
    if not path.exists():
        raise ConfigError(f"{path} does not exist. Run notebook 04_format or `python -m semifinetune prepare-data --run-dir {run_dir}` first.")
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_prepared(run_dir: str | os.PathLike, split: str):
    """The tokenized split as a datasets.Dataset with columns input_ids and completion_mask."""
    from datasets import Dataset

    rows = read_prepared(run_dir, split)
    return Dataset.from_dict({
        "input_ids": [row["input_ids"] for row in rows],
        "completion_mask": [row["completion_mask"] for row in rows],
    })
