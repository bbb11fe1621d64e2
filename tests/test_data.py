"""Data validation: every problem one `file:line: problem` line; harmless quirks accepted; the real files clean."""

from __future__ import annotations

import difflib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from semifinetune.config import make_config
from semifinetune.data import DataError, format_and_tokenize, load_prepared, prepare_data, read_examples, validate_files

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
GOOD = {"input": "What is TSMC?", "output": "The largest dedicated foundry."}


def write(path: Path, lines: list) -> Path:
    """Each item a JSONL line: dicts are dumped, str/bytes written as they are."""
    raw = b"".join((json.dumps(x).encode() if isinstance(x, dict) else x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    path.write_bytes(raw)
    return path


def problems(path: Path, kind: str = "train") -> list[str]:
    with pytest.raises(DataError) as err:
        read_examples(path, kind)
    return str(err.value).splitlines()


@pytest.mark.parametrize(
    "line, expected",
    [
        ('{"input": "q", "output": }', "invalid JSON (Expecting value at column 26)"),
        ({"input": "q"}, "missing field 'output'"),
        ({"input": "q", "output": "  "}, "field 'output' is empty"),
        ({"input": 5, "output": "a"}, "field 'input' must be a string, got int"),
        ({"input": "q", "output": None}, "field 'output' is empty (null)"),
        (b'{"input": "caf\xe9", "output": "a"}', "invalid UTF-8 at byte 15 of the line"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_each_bad_line_is_named_by_file_and_line(tmp_path, line, expected):
    path = write(tmp_path / "d.jsonl", [GOOD, line])
    (problem,) = problems(path)
    assert problem.startswith(f"{path}:2: ") and expected in problem


@pytest.mark.parametrize("token", ["<|end_of_text|>", "<|im_start|>", "<｜end▁of▁sentence｜>", "<think>", "</think>", "<|eot_id|>"])
def test_special_token_strings_are_refused(tmp_path, token):
    path = write(tmp_path / "d.jsonl", [{"input": "q", "output": f"An answer.{token}"}])
    (problem,) = problems(path)
    assert problem == (
        f"{path}:1: field 'output' contains the special-token string {token!r}: remove it; "
        "the formatter adds the tokenizer's real special tokens"
    )


def test_ordinary_angle_brackets_are_fine(tmp_path):
    path = write(tmp_path / "d.jsonl", [{"input": "Is 3 nm < 5 nm?", "output": "Yes: a | b, <b>bold</b>"}])
    assert len(read_examples(path, "train")) == 1


def test_empty_file_and_csv(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\n\n")
    assert problems(empty) == [f"{empty}:1: the file is empty; it needs one JSON object per line, e.g. {{\"input\": ..., \"output\": ...}}"]
    csv = tmp_path / "d.jsonl"  # CSV text under a JSONL name: the name decides how a file is read
    csv.write_text("input,output\nWhat is TSMC?,A foundry\n")
    (problem,) = problems(csv)
    assert problem.startswith(f"{csv}:1: not a JSONL file (this looks like CSV: name the file .csv or .tsv")


def test_duplicates_name_both_lines(tmp_path):
    path = write(tmp_path / "d.jsonl", [GOOD, {"input": "Who founded TSMC?", "output": "Morris Chang"}, {"input": "  what IS  tsmc? ", "output": "x"}])
    assert problems(path) == [f"{path}:3: duplicate of {path}:1 (same input, ignoring case and spaces); remove one of the two"]


def test_all_problems_are_reported_in_file_order(tmp_path):
    path = write(tmp_path / "d.jsonl", [{"input": "q"}, "not json", GOOD, {"input": "", "output": "a"}, GOOD])
    found = problems(path)
    assert [re.match(r".*:(\d+): ", p).group(1) for p in found] == ["1", "2", "4", "5"]


@pytest.mark.parametrize(
    "keywords, expected",
    [
        ([], "field 'keywords' must be a non-empty list of keyword groups"),
        ("TSMC", "field 'keywords' must be a non-empty list of keyword groups"),
        ([["TSMC"], []], "field 'keywords' group 2 must be a non-empty list of strings"),
        ([["TSMC", ""]], "field 'keywords' group 1 holds an empty or non-string keyword"),
        ([["TSMC", 1987]], "field 'keywords' group 1 holds an empty or non-string keyword"),
    ],
)
def test_eval_keywords_shape(tmp_path, keywords, expected):
    example = {**GOOD, "keywords": keywords}
    (problem,) = problems(write(tmp_path / "e.jsonl", [example]), "eval")
    assert problem.startswith(f"{tmp_path / 'e.jsonl'}:1: {expected}")


def test_harmless_quirks_are_accepted(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({**GOOD, "topic": "tsmc", "extra": [1]}), "", json.dumps({"input": "Who founded TSMC?", "output": "Morris Chang"}), "  "]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    examples = read_examples(path, "train")
    assert [e["input"] for e in examples] == ["What is TSMC?", "Who founded TSMC?"]


def test_json_array_is_accepted_and_items_are_named(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([GOOD, {"input": "Who founded TSMC?", "output": "Morris Chang"}], indent=2))
    assert len(read_examples(path, "train")) == 2
    path.write_text(json.dumps([GOOD, {"input": "q"}]))
    assert problems(path) == [f"{path}:item 2: missing field 'output'"]
    path.write_text(json.dumps(GOOD) + "\n")  # JSON lines in a .json file
    assert len(read_examples(path, "train")) == 1
    path.write_bytes(b'[{"input": "caf\xe9", "output": "a"}]')
    assert problems(path) == [f"{path}:1: invalid UTF-8 at byte 16 of the file; save the file as UTF-8"]


def test_too_long_gives_token_count_and_limit(tmp_path, tiny_tokenizer):
    cfg = make_config("tiny", {"max_seq_length": 30})
    long = {"input": "Tell me about TSMC.", "output": "TSMC is the largest dedicated foundry, " * 5}
    path = write(tmp_path / "d.jsonl", [GOOD, long])
    n_tokens = len(format_and_tokenize(tiny_tokenizer, long, cfg)["input_ids"])
    with pytest.raises(DataError) as err:
        validate_files([path], cfg, ["train"], tokenizer=tiny_tokenizer)
    assert str(err.value) == (
        f"{path}:2: {n_tokens} tokens after formatting, over max_seq_length 30; shorten the answer or raise max_seq_length"
    )
    assert n_tokens > 30


def test_eval_question_also_in_training_is_refused(tmp_path, tiny_tokenizer, tiny_cfg):
    train = write(tmp_path / "train.jsonl", [GOOD])
    held_out = write(tmp_path / "eval.jsonl", [{"input": "what is tsmc?", "output": "a foundry", "keywords": [["foundry"]]}])
    with pytest.raises(DataError) as err:
        validate_files([train, held_out], tiny_cfg, tokenizer=tiny_tokenizer)
    assert str(err.value) == f"{held_out}:1: the same question as {train}:1; held-out questions must not be in the training file"


# --- the real data files ---

REAL = [(DATA / "semiconductor_train.jsonl", "train"), (DATA / "semiconductor_guide.jsonl", "train"), (DATA / "semiconductor_eval.jsonl", "eval")]
needs_data = pytest.mark.skipif(not all(p.exists() for p, _ in REAL), reason="data/*.jsonl not written yet")


@needs_data
def test_real_data_files_validate_clean_under_cpu_profile(cpu_cfg, smol_tokenizer):
    summary = validate_files([p for p, _ in REAL], cpu_cfg, [k for _, k in REAL], tokenizer=smol_tokenizer)
    counts = {Path(path).name: s["examples"] for path, s in summary.items()}
    assert counts["semiconductor_guide.jsonl"] == 20
    assert counts["semiconductor_train.jsonl"] >= 200 and counts["semiconductor_eval.jsonl"] >= 40
    assert all(s["tokens"]["over_limit"] == 0 for s in summary.values())


def _words(text: str) -> str:
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def _near_duplicates(path: Path) -> list[tuple]:
    """(question, training question, ratio, jaccard) for each question of path too close to a training question."""
    train = [" ".join(_words(e["input"])) for e in read_examples(REAL[0][0], "train") + read_examples(REAL[1][0], "train")]
    close = []
    for example in read_examples(path, "eval"):
        question = " ".join(_words(example["input"]))
        for seen in train:
            ratio = difflib.SequenceMatcher(None, question, seen).ratio()
            a, b = set(question.split()), set(seen.split())
            jaccard = len(a & b) / len(a | b)
            if ratio >= 0.75 or jaccard >= 0.6:
                close.append((example["input"], seen, round(ratio, 2), round(jaccard, 2)))
    return close


@needs_data
def test_no_eval_question_is_a_near_duplicate_of_a_training_question():
    assert _near_duplicates(REAL[2][0]) == []


@needs_data
def test_training_rows_name_their_form():
    """The original pairs, then rewordings and reverse questions written from them, each keeping its pair's topic and source."""
    train = read_examples(REAL[0][0], "train")
    assert {e.get("form") for e in train} == {"original", "rewording", "reverse"}
    originals = {(e["topic"], e["source"]) for e in train if e["form"] == "original"}
    assert sum(e["form"] == "original" for e in train) == 255
    assert all((e["topic"], e["source"]) in originals for e in train)


VAL = DATA / "semiconductor_val.jsonl"


@needs_data
@pytest.mark.skipif(not VAL.exists(), reason="data/semiconductor_val.jsonl not written yet")
def test_validation_file_is_one_new_wording_per_topic():
    """The checkpoint-choosing questions: eval-shaped, one per training topic, none a near-duplicate of a training question."""
    val = read_examples(VAL, "eval")
    train_topics = {e["topic"] for e in read_examples(REAL[0][0], "train")}
    assert sorted(e["topic"] for e in val) == sorted(train_topics)
    assert all(all(any(k.lower() in e["output"].lower() for k in group) for group in e["keywords"]) for e in val)
    assert _near_duplicates(VAL) == []


# --- the command line: no traceback, ever ---


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "semifinetune", *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_validate_data_cli_lists_problems_and_exits_1(tmp_path):
    bad = write(tmp_path / "bad.jsonl", [GOOD, '{"input": "q"', {"input": "q", "output": "x<|end_of_text|>"}, b"\xff\xfe"])
    csv = tmp_path / "d.jsonl"
    csv.write_text("input,output\nq,a\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = run_cli("validate-data", str(bad), str(csv), str(empty), "--profile", "tiny")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [f"{bad}:2", f"{bad}:3", f"{bad}:4", f"{csv}:1", f"{empty}:1"]


def test_validate_data_cli_ok_line(tmp_path):
    good = write(tmp_path / "good.jsonl", [GOOD, {"input": "Who founded TSMC?", "output": "Morris Chang"}])
    result = run_cli("validate-data", str(good), "--profile", "tiny")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"OK: {good}: 2 train examples (input-output format), tokens ")


def test_prepare_data_cli_without_setup_is_one_line(tmp_path):
    result = run_cli("prepare-data", "--run-dir", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "config.json does not exist" in result.stderr


# --- prepare_data: the run directory's formatted sets ---


@needs_data
def test_prepare_data_writes_what_the_trainer_reads(tmp_path, tiny_tokenizer, tiny_cfg):
    from semifinetune.config import save_config
    from semifinetune.plots import token_length_histogram

    run_dir = tmp_path / "run"
    save_config(tiny_cfg, run_dir)
    summary = prepare_data(run_dir, tokenizer=tiny_tokenizer)
    train_examples = read_examples(REAL[0][0], "train")
    assert summary["train"]["examples"] == len(train_examples)
    assert summary["eval"]["examples"] == len(read_examples(REAL[2][0], "eval"))
    stats = summary["train"]["tokens"]
    assert stats["min"] <= stats["mean"] <= stats["p95"] <= stats["max"] <= 512
    dataset = load_prepared(run_dir, "train")
    assert dataset.column_names == ["input_ids", "completion_mask"] and len(dataset) == len(train_examples)
    assert dataset[0] == {k: v for k, v in format_and_tokenize(tiny_tokenizer, train_examples[0], tiny_cfg).items() if k in dataset[0]}
    rows = [json.loads(line) for line in (run_dir / "data" / "eval.jsonl").read_text().splitlines()]
    assert rows[0]["prompt"] and rows[0]["completion"] and rows[0]["keywords"]
    token_length_histogram(run_dir)
    assert (run_dir / "data" / "token_lengths.png").stat().st_size > 5000
