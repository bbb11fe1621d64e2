"""Reading a user's data wherever it is: a JSONL/JSON/CSV/TSV/Parquet file, a local folder, or a Hub dataset id.

Each row comes back with where it was (`file:line`, `file:row N`, `owner/name[split]:row N`) so that every later
problem names it. JSON files are read line by line here, since a parse error must name its line; CSV, TSV,
Parquet, folders and Hub ids are read by `datasets.load_dataset` (or `load_from_disk` for a folder that
`Dataset.save_to_disk` wrote). Which fields mean what is `rowformats.py`'s concern.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
TABLE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}  # suffix -> datasets' builder
DEFAULT_SPLIT = "train"


@dataclasses.dataclass
class Record:
    where: str  # "file:line", "file:item N" for a .json array, "file:row N" for a table
    value: object


def split_source(source: str) -> tuple[str, str]:
    """(source, split): a folder or Hub id may end in `:split` ("owner/name:test"); a path that exists is taken
    whole, so a file name holding a colon still works."""
    if Path(source).exists() or ":" not in source:
        return source, DEFAULT_SPLIT
    head, _, split = source.rpartition(":")
    return head, split or DEFAULT_SPLIT


def is_hub_id(source: str) -> bool:
    """`owner/name` (one slash, no file suffix) that is not a local path: a dataset on the Hugging Face Hub."""
    name, _ = split_source(source)
    parts = name.split("/")
    return (len(parts) == 2 and all(parts) and not Path(name).exists() and not name.startswith((".", "/", "~"))
            and Path(name).suffix.lower() not in JSON_SUFFIXES + tuple(TABLE_BUILDERS))


def read_rows(path: Path | str, label: str, dataset_config: str = "") -> tuple[list[Record], list[str]]:
    """Every row of a data source with its location, and the problems met reading it."""
    source, split = split_source(str(path))
    local = Path(source)
    if source != str(path):
        label = label.removesuffix(str(path)[len(source):])  # the split is named in the location instead
    if local.is_dir():
        return _read_dataset(source, label, split, dataset_config, folder=True)
    if not local.is_file():
        if is_hub_id(source):
            return _read_dataset(source, label, split, dataset_config, folder=False)
        return [], [f"{label}: no such file, folder or Hub dataset id"]
    builder = TABLE_BUILDERS.get(local.suffix.lower())
    if builder:
        return _read_table(local, label, builder)
    return _read_json(local, label)


# --- JSON: located to the line ---


def _read_json(path: Path, label: str) -> tuple[list[Record], list[str]]:
    """Parsed JSON values with their locations, and the problems met (bad UTF-8, bad JSON, not JSONL)."""
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM (Windows editors) is harmless
    if not raw.strip():
        return [], [f"{label}:1: the file is empty; it needs one JSON object per line, e.g. {{\"input\": ..., \"output\": ...}}"]
    if raw.lstrip().startswith(b"["):  # a .json array; a .json file of JSON lines reads as JSONL
        return _read_json_array(raw, label)
    records, problems, lines = [], [], raw.split(b"\n")
    nonblank = [line.strip() for line in lines if line.strip()]
    if not any(line.startswith(b"{") for line in nonblank):
        looks = " (this looks like CSV: name the file .csv or .tsv and it is read as a table)" if b"," in nonblank[0] or b"\t" in nonblank[0] else ""
        return [], [f"{label}:1: not a JSONL file{looks}: each line must be one JSON object such as "
                    '{"input": "...", "output": "..."}']
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


def _read_json_array(raw: bytes, label: str) -> tuple[list[Record], list[str]]:
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


# --- tables, folders and the Hub: datasets reads them ---


def _read_table(path: Path, label: str, builder: str) -> tuple[list[Record], list[str]]:
    """A CSV/TSV/Parquet file through datasets; `row N` counts data rows from 1 (a CSV's line is N + 1)."""
    options = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    if builder == "csv" and not path.read_bytes().strip():
        return [], [f"{label}:1: the file is empty; it needs a header line (e.g. question,answer) and one row per example"]
    try:
        dataset = _load(builder, data_files=str(path), split="train", **options)
    except Exception as err:  # datasets wraps pyarrow's and pandas' parse errors in several types
        return [], [f"{label}: could not be read as {path.suffix.lstrip('.').upper()} ({_first_line(err)}); "
                    "check the header line, the delimiter and the quoting"]
    return _rows(dataset, label), [] if len(dataset) else [f"{label}: the table has no rows"]


def _read_dataset(source: str, label: str, split: str, config: str, folder: bool) -> tuple[list[Record], list[str]]:
    """A local folder (datasets' folder layout, or what save_to_disk wrote) or a Hub dataset id, one split."""
    where = f"{label}[{split}]"
    try:
        if folder and any((Path(source) / name).exists() for name in ("state.json", "dataset_dict.json")):
            from datasets import DatasetDict, load_from_disk

            dataset = load_from_disk(source)
            if isinstance(dataset, DatasetDict):
                if split not in dataset:
                    return [], [f"{where}: no split {split!r}; the folder holds {', '.join(dataset)}: name one as "
                                f"'{source}:SPLIT'"]
                dataset = dataset[split]
        else:
            dataset = _load(source, name=config or None, split=split)
    except ValueError as err:  # an unknown split or config: datasets names the ones that exist
        return [], [f"{where}: {_first_line(err)}. Name the split as '{source}:SPLIT' and the config with dataset_config"]
    except Exception as err:  # offline, a mistyped id, a private dataset without a token
        kind = "folder" if folder else "Hub dataset"
        return [], [f"{where}: could not load the {kind} ({type(err).__name__}: {_first_line(err)}). Check the "
                    f"{'path' if folder else 'id, the network and, for a private dataset, HF_TOKEN'}; or save the data "
                    "as a .jsonl/.csv file and point to it"]
    if not len(dataset):
        return [], [f"{where}: the split has no rows"]
    return _rows(dataset, where), []


def _load(path: str, **options):
    from datasets import load_dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # one line of result matters here, not datasets' bars
    return load_dataset(path, **options)


def _rows(dataset, label: str) -> list[Record]:
    return [Record(f"{label}:row {n}", row) for n, row in enumerate(dataset, start=1)]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def exists(source: str | os.PathLike) -> bool:
    """A local file or folder, or something that reads as a Hub id (only loading tells whether it exists there)."""
    name, _ = split_source(str(source))
    return Path(name).exists() or is_hub_id(str(source))
