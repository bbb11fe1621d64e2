"""Read and validate the run's data (any source and format: sources.py, rowformats.py, splits.py), and write the
formatted, tokenized sets into the run directory."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from .atomic import write_text_atomic
from .config import ConfigError, RunConfig
from .rowformats import detect_format, to_examples, unknown_format
from .runlock import holds_run_dir
from .sources import Record, read_rows
from . import splits

TEXT_FIELDS = ("input", "output", "reasoning")  # the fields that reach the formatted text
PREPARED_FILES = {"train": "train.jsonl", "eval": "eval.jsonl", "validation": "validation.jsonl"}  # under run_dir/data/
SUMMARY_FILE = "summary.json"
HISTOGRAM_FILE = "token_lengths.png"
KINDS = ("train", "eval")  # eval: held-out or validation questions, whose keyword groups (optional) are checked too
SAME_PROBLEM_SHOWN = 5  # a problem met on more lines than this is listed this often, then counted
LOCATION = r":(?:item |row )?(\d+)(?: turn \d+)?: "  # the line, item or row a problem names, after the file

# Chat-template markers (`<|im_start|>`, `<|end_of_text|>`), R1's full-width ones (`<｜end▁of▁sentence｜>`)
# and the think tags: typed into the data they either become real special tokens or split into junk pieces.
SPECIAL_TOKEN = re.compile(r"<\|[^<>|\s]{1,40}\|>|<｜[^<>｜]{1,40}｜>|</?think>")
KEYWORDS_SHAPE = 'a non-empty list of keyword groups, each a non-empty list of strings, e.g. [["TSMC"], ["1987"]]'


class DataError(ConfigError):
    """A data file has problems; the message holds one `file:line: problem` line per problem."""


def data_error(problems: list[str]) -> DataError:
    """Every problem, one a line; a problem met on many lines (a too-low max_seq_length) is shown a few times, then
    counted, so the cause stays on screen."""
    by_text: dict[str, list[str]] = {}
    for problem in problems:
        by_text.setdefault(_without_location(problem), []).append(problem)
    lines = []
    for text, group in by_text.items():
        lines += group[:SAME_PROBLEM_SHOWN]
        if len(group) > SAME_PROBLEM_SHOWN:
            lines.append(f"... and {len(group) - SAME_PROBLEM_SHOWN} more with the same problem: {text}")
    return DataError("\n".join(lines) + (f"\n({len(problems)} problems in all)" if len(problems) > SAME_PROBLEM_SHOWN else ""))


def _without_location(problem: str) -> str:
    """The problem's text after its `file:line: ` prefix, with numbers of tokens masked (they differ by line)."""
    text = re.sub(r"^.*?" + LOCATION, "", problem, count=1)
    return re.sub(r"^\d+ tokens", "N tokens", text)


# --- reading: sources.py finds the rows, rowformats.py turns them into examples ---


def _example_problems(example: dict) -> list[str]:
    """What the libraries do not check: special-token strings in the text, the keyword groups' shape."""
    problems = []
    if "keywords" in example:
        problems += _keyword_problems(example["keywords"])
    if "reasoning" in example and not isinstance(example["reasoning"], str):
        problems.append(f"field 'reasoning' must be a string, got {type(example['reasoning']).__name__}")
    texts = [(name, example.get(name)) for name in TEXT_FIELDS]
    texts += [("context", message["content"]) for message in example.get("context", [])]
    for name, value in texts:
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


def question_key(example: dict) -> str:
    """Two examples are the same question when their earlier turns and their question read the same."""
    turns = [message["content"] for message in example.get("context", []) if message["role"] != "system"]
    return normalize_question(" | ".join(turns + [example["input"]]))


def _duplicate_problems(records: list[Record]) -> list[str]:
    first: dict[str, str] = {}
    problems = []
    for record in records:
        key = question_key(record.value)
        if key in first:
            problems.append(
                f"{record.where}: duplicate of {first[key]} (same input, ignoring case and spaces); remove one of the two"
            )
        else:
            first[key] = record.where
    return problems


@dataclasses.dataclass
class Source:
    """What a data file held: its examples (located), every problem, and the row format found."""
    records: list[Record]
    problems: list[str]
    format: str | None


def read_source(path: str | os.PathLike, kind: str = "train", columns: tuple[str, str] = ("", ""),
                dataset_config: str = "") -> Source:
    """Examples that pass every check, and every problem in the file, sorted by location."""
    if kind not in KINDS:
        raise ConfigError(f"Unknown data kind {kind!r}: use 'train' or 'eval'")
    label = str(path)
    rows, problems = read_rows(path, label, dataset_config)
    fmt = next((found for row in rows if (found := detect_format(row.value, columns))), None)
    if rows and fmt is None:
        return Source([], problems + [unknown_format(rows[0].value, rows[0].where)], None)
    good = []
    for row in rows:
        examples, found = to_examples(row.value, fmt, columns)
        problems += [f"{row.where}: {problem}" for problem in found]
        for turn, example in enumerate(examples, start=1):
            where = f"{row.where} turn {turn}" if len(examples) > 1 else row.where
            example_problems = _example_problems(example)
            problems += [f"{where}: {problem}" for problem in example_problems]
            if not example_problems and not found:
                good.append(Record(where, example))
    problems += _duplicate_problems(good)
    return Source(good, sorted(problems, key=_line_number), fmt)


def _line_number(problem: str) -> int:
    """The line (item, row) number a problem names, to list problems in file order."""
    match = re.search(LOCATION, problem)
    return int(match.group(1)) if match else 0


def read_examples(path: str | os.PathLike, kind: str) -> list[dict]:
    """The examples of one data file; raises DataError listing every `file:line: problem`."""
    source = read_source(path, kind)
    if source.problems:
        raise data_error(source.problems)
    return [record.value for record in source.records]


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


def split_kind(split: str) -> str:
    """Validation questions are checked like held-out ones (question, reference answer, optional keywords)."""
    return "train" if split == "train" else "eval"


def _options(cfg: RunConfig) -> dict:
    return {"columns": (cfg.question_column, cfg.answer_column), "dataset_config": cfg.dataset_config}


def _missing(key: str, given: str) -> str:
    from .runs import PROJECT_ROOT

    where = "" if Path(given).is_absolute() else f" (looked from {Path.cwd()} and from the project, {PROJECT_ROOT})"
    return (f"{key} {given!r}: no such file, folder or Hub dataset id{where}. Fix the path: overrides={{'{key}': "
            f"'path/to/file.jsonl'}} in notebook 01, or --set {key}=PATH.")


def read_splits(cfg: RunConfig, run_dir: str | os.PathLike | None = None) -> dict[str, Source]:
    """Every split of the run, checked short of tokenizing: train, held-out, validation. Sampled questions come from
    run_dir where notebook 01 saved them, or are drawn (seeded) when run_dir is None or holds none yet."""
    from .sources import exists

    chosen = splits.plan(cfg)
    problems, found = [], {}
    for split, given in chosen.items():
        sample = given == "sample"
        if sample and run_dir is not None and splits.sample_path(run_dir, split).exists():
            given = str(splits.sample_path(run_dir, split))
        elif sample:
            continue
        located = splits.locate(given)
        if not exists(located):
            problems.append(_missing(splits.SPLIT_KEYS[split], given))
            continue
        found[split] = read_source(located, split_kind(split), **_options(cfg))
        problems += found[split].problems
    drawn = [split for split, given in chosen.items() if given == "sample" and split not in found]
    if not problems and drawn:
        samples = splits.draw_samples(found["train"].records, cfg.seed, drawn)
        found.update({split: Source(records, [], "sample") for split, records in samples.items()})
    if not problems:
        problems += _leak_checks(found, chosen)
    if problems:
        raise data_error(problems)
    return _with_key_terms(found)


def _with_key_terms(found: dict[str, Source]) -> dict[str, Source]:
    """Held-out and validation questions get their reference answers' key terms (the scoring for questions without
    keyword groups), rarity counted over every answer of the data set."""
    from .refscore import with_key_terms

    corpus = [record.value["output"] for source in found.values() for record in source.records]
    for split in ("eval", "validation"):
        if split in found:
            records = found[split].records
            for record, row in zip(records, with_key_terms([r.value for r in records], corpus)):
                record.value = row
    return found


def _leak_checks(found: dict[str, Source], chosen: dict[str, str]) -> list[str]:
    """A held-out question that is also a training question measures memory, unless sampling made it so on purpose."""
    problems = []
    for split in ("eval", "validation"):
        if split in found and chosen[split] != "sample":
            problems += _leak_problems(found["train"].records, found[split].records)
    if "eval" in found and "validation" in found:
        # choosing the checkpoint on a reported question would report a chosen score
        problems += _leak_problems(found["eval"].records, found["validation"].records, "validation questions must not be held-out ones")
    return problems


def save_samples(run_dir: str | os.PathLike, found: dict[str, Source]) -> None:
    """Sampled questions into run_dir/data/sampled_*.jsonl, so that every notebook and re-run scores the same ones."""
    for split, source in found.items():
        if source.format == "sample":
            write_jsonl_atomic(splits.sample_path(run_dir, split), [record.value for record in source.records])


def describe_data(cfg: RunConfig, found: dict[str, Source]) -> str:
    """What notebook 01 says of the data: each split's source and size, and the format found."""
    chosen = splits.plan(cfg)
    counts = {split: len(source.records) for split, source in found.items()}
    return f"data format: {found['train'].format}\n" + splits.describe(chosen, counts)


def training_examples(cfg: RunConfig) -> list[dict]:
    """The training file's examples alone (retrieval's notes), without reading or sampling the question files."""
    from .sources import exists

    given = splits.locate(cfg.train_file)
    if not exists(given):
        raise data_error([_missing("train_file", cfg.train_file)])
    source = read_source(given, "train", **_options(cfg))
    if source.problems:
        raise data_error(source.problems)
    return [record.value for record in source.records]


def split_examples(cfg: RunConfig, split: str, run_dir: str | os.PathLike | None) -> list[dict]:
    """The examples of one split ('train', 'eval', 'validation') as the run uses them."""
    found = read_splits(cfg, run_dir)
    if split not in found:
        raise ConfigError(f"This run has no {split} split (validation_file is '').")
    return [record.value for record in found[split].records]


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
    seen = {question_key(r.value): r.where for r in train}
    return [f"{r.where}: the same question as {seen[key]}; {rule}" for r in held_out if (key := question_key(r.value)) in seen]


def _tokenized(found: dict[str, Source], cfg: RunConfig, tokenizer) -> tuple[dict[str, list[dict]], list[str]]:
    """Each split's rows as the trainer sees them, and every example over max_seq_length."""
    rows, problems = {}, []
    for split, source in found.items():
        rows[split] = [format_and_tokenize(tokenizer, record.value, cfg) for record in source.records]
        problems += _length_problems(rows[split], source.records, cfg)
    return rows, sorted(problems, key=_line_number)


def validate_files(paths: list[str], cfg: RunConfig, kinds: list[str] | None = None, tokenizer=None) -> dict:
    """Check data files as cfg would format them; a summary per file, or DataError with every problem."""
    if tokenizer is None:
        from .models import load_tokenizer

        tokenizer = load_tokenizer(cfg)
    kinds = kinds or [guess_kind(path) for path in paths]
    found = {str(path): read_source(path, kind, **_options(cfg)) for path, kind in zip(paths, kinds)}
    problems = [problem for source in found.values() for problem in source.problems]
    train = [record for (path, source), kind in zip(found.items(), kinds) if kind == "train" for record in source.records]
    problems += [p for (path, source), kind in zip(found.items(), kinds) if kind == "eval" for p in _leak_problems(train, source.records)]
    rows, too_long = _tokenized(found, cfg, tokenizer)
    if problems or too_long:
        raise data_error(problems + too_long)
    return {
        path: {"kind": kind, "format": found[path].format, "examples": len(rows[path]),
               "tokens": token_length_stats([len(r["input_ids"]) for r in rows[path]], cfg.max_seq_length)}
        for path, kind in zip(found, kinds)
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
        f"{path}: {s['examples']} {s['kind']} examples ({s['format']} format), tokens {s['tokens']['min']}-{s['tokens']['max']} "
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


@holds_run_dir("prepare-data")
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
    found, chosen = _with_notes(cfg, read_splits(cfg, run_dir)), splits.plan(cfg)
    rows, too_long = _tokenized(found, cfg, tokenizer)
    if too_long:
        raise data_error(too_long)
    summary = {"format": cfg.format, "loss_on_completion_only": loss_on_completion_only(cfg), "max_seq_length": cfg.max_seq_length,
               "data_format": found["train"].format}
    for split, source in found.items():
        written = [{**record.value, **row, "source_line": record.where} for record, row in zip(source.records, rows[split])]
        write_jsonl_atomic(prepared_path(run_dir, split), written)
        summary[split] = {
            "file": getattr(cfg, splits.SPLIT_KEYS[split]),
            "source": "sample" if chosen[split] == "sample" else "file",
            "examples": len(rows[split]),
            "tokens": token_length_stats([len(r["input_ids"]) for r in rows[split]], cfg.max_seq_length),
            "loss_tokens": sum(sum(r["completion_mask"]) for r in rows[split]),
        }
    write_json_atomic(runs.run_path(run_dir, runs.DATA) / SUMMARY_FILE, summary)
    return summary


def _with_notes(cfg: RunConfig, found: dict[str, Source]) -> dict[str, Source]:
    """The splits with notes in their questions where the recipe trains with them (raft.py), records still located."""
    from .raft import with_training_notes

    if not cfg.raft_notes:
        return found
    noted = with_training_notes(cfg, {split: [record.value for record in source.records] for split, source in found.items()})
    return {split: dataclasses.replace(source, records=[dataclasses.replace(record, value=value)
                                                        for record, value in zip(source.records, noted[split])])
            for split, source in found.items()}


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
