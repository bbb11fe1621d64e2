"""Retrieval beside fine-tuning: the BM25 index, the prompt with notes, the 2 x 2 and what it says, the CLI, the playground."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from semifinetune.compare import (
    TABLE_COLUMNS,
    compare_retrieval,
    correct_counts,
    counts_line,
    mcnemar_p,
    read_retrieval,
    retrieval_statement,
    retrieval_table,
)
from semifinetune.config import ConfigError, make_config, parse_assignments
from semifinetune.data import read_examples, validate_files
from semifinetune.formats import chat_prompt, opens_think_block
from semifinetune.generate import SamplingSettings
from semifinetune.notes import index_training_pairs, notes_for
from semifinetune.retrieval import NOTES_HEADER, index_entries, index_kind, index_pairs, note_text, retrieve, with_notes
from semifinetune.runs import PROJECT_ROOT

DATA = PROJECT_ROOT / "data"
GREEDY = SamplingSettings(temperature=0.0, max_new_tokens=8)


@pytest.fixture(scope="module")
def index(tiny_cfg):
    return index_training_pairs(tiny_cfg)


# --- the index ---


def test_a_training_question_retrieves_its_own_pair(index):
    questions = [pair["input"] for pair in index.pairs]
    notes = retrieve(index, questions, 10)
    rows = read_examples(DATA / "semiconductor_train.jsonl", "train")
    assert index.pairs == [row for row in rows if row["form"] == "original"]  # "auto": the source facts alone
    ranks = [[note["input"] for note in given].index(question) if question in [note["input"] for note in given] else None
             for question, given in zip(questions, notes)]
    # Each fact is in several wordings, which compete for the first places: a one-word question such as
    # "What is TSMC?" matches every short TSMC pair about as well as its own.
    assert None not in ranks and sum(rank < 3 for rank in ranks) >= 0.98 * len(ranks)
    assert all(len(given) == 10 and all(a["score"] >= b["score"] for a, b in zip(given, given[1:])) for given in notes)
    (top,) = retrieve(index, ["Who founded TSMC and in which year?"], 1)[0]
    assert "TSMC" in top["input"] + top["output"]


def test_the_index_holds_rows_facts_or_topics():
    rows = [{"input": "q1", "output": "a1", "topic": "t", "form": "original"},
            {"input": "q1 again", "output": "a1 again", "topic": "t", "form": "rewording"},
            {"input": "q2", "output": "a2", "topic": "t", "form": "original"},
            {"input": "q3", "output": "a3", "topic": "u", "form": "original"}]
    assert index_entries(rows, "rows") == rows and index_entries(rows) == index_entries(rows, "facts") == [rows[0], rows[2], rows[3]]
    topics = index_entries(rows, "topics")
    assert [entry["topic"] for entry in topics] == ["t", "u"] and note_text(topics[0]) == "Q: q1\nA: a1\nQ: q2\nA: a2"
    plain = [{"input": "q", "output": "a"}]
    assert index_entries(plain) == plain and index_kind(plain) == "rows"  # no `form` field: every row is a fact


def test_the_floor_gives_notes_to_questions_in_the_domain_only(index, tiny_cfg):
    import dataclasses

    from semifinetune.notes import above_floor, score_floor

    assert score_floor(tiny_cfg, index) == 0.0  # off by default: every question gets its notes
    cfg = dataclasses.replace(tiny_cfg, retrieval_floor=0.5)
    validation = read_examples(DATA / "semiconductor_val.jsonl", "eval")
    lowest = min(notes[0]["score"] for notes in retrieve(index, [row["input"] for row in validation], 1))
    assert score_floor(cfg, index) == pytest.approx(0.5 * lowest)
    questions = ["What is the capital of France?", "Which company is the largest contract chipmaker?"]
    general, domain = notes_for(cfg, questions, 2)
    assert general == [] and len(domain) == 2  # outside the domain: the bare question
    assert above_floor([[{"score": 1.0}], [{"score": 3.0}], []], 2.0) == [[], [{"score": 3.0}], []]
    assert score_floor(dataclasses.replace(cfg, validation_file=""), index) == 0.0  # nothing to read the scale off


def test_the_index_holds_training_pairs_only(index, tiny_cfg):
    indexed = {pair["input"] for pair in index.pairs}
    for name in ("semiconductor_eval.jsonl", "general_eval.jsonl"):
        assert not indexed & {row["input"] for row in read_examples(DATA / name, "eval")}
    with pytest.raises(ConfigError, match="also an evaluation file"):
        index_training_pairs(make_config("tiny", {"train_file": "data/semiconductor_eval.jsonl", "eval_file": "data/semiconductor_eval.jsonl"}))


def test_k_zero_is_off_and_bad_k_is_rejected(index, tiny_cfg):
    assert retrieve(index, ["What is TSMC?"], 0) == [[]]
    assert notes_for(tiny_cfg, ["What is TSMC?"], 0) is None  # off: nothing indexed
    with pytest.raises(ConfigError, match="index holds 2 training pairs"):
        retrieve(index_pairs([{"input": "wafer size", "output": "300 mm"}, {"input": "fab cost", "output": "billions"}]), ["wafer"], 3)
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="0 \\(off\\) or a positive integer"):
            retrieve(index, ["q"], bad)
    for key in ("retrieval_k", "retrieval_compare_k"):
        with pytest.raises(ConfigError, match=f"'{key}' = -1 is out of range"):
            make_config("tiny", {key: -1})
        with pytest.raises(ConfigError, match=f"'{key}' must be int"):
            make_config("tiny", {key: "3"})
        with pytest.raises(ConfigError, match=f"'{key}' must be int"):
            parse_assignments([f"{key}=three"])
    with pytest.raises(ConfigError, match="out of range"):
        make_config("tiny", {"retrieval_k": 21})
    assert make_config("tiny").retrieval_k == 0 and make_config("cpu").retrieval_compare_k == 1


# --- the prompt ---


def test_notes_go_in_the_user_turn_and_r1_still_opens_its_think_block(index, tiny_tokenizer):
    question = "Which company is the largest contract chipmaker?"
    (notes,) = retrieve(index, [question], 2)
    text = with_notes(question, notes)
    assert with_notes(question, []) == question  # no notes: the prompt of the model alone
    assert text.startswith(NOTES_HEADER) and text.endswith(question)
    assert all(note["input"] in text and note["output"] in text for note in notes)
    plain, noted = chat_prompt(tiny_tokenizer, question), chat_prompt(tiny_tokenizer, text)
    assert noted.endswith("<｜Assistant｜><think>\n") and opens_think_block(noted)
    assert noted == plain.replace(question, text)  # only the user turn changed: no system turn, same generation prompt
    user_turn = noted.split("<｜User｜>", 1)[1].split("<｜Assistant｜>", 1)[0]
    assert user_turn == text


def test_notes_in_smollm2s_user_turn(smol_tokenizer):
    notes = [{"input": "What is TSMC?", "output": "A foundry in Hsinchu."}]
    prompt = chat_prompt(smol_tokenizer, with_notes("Where is TSMC?", notes))
    user = prompt.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    assert user == f"{NOTES_HEADER}\n\nQ: What is TSMC?\nA: A foundry in Hsinchu.\n\nQuestion: Where is TSMC?"
    assert prompt.endswith("<|im_start|>assistant\n")


# --- the general questions ---


def test_general_questions_validate_and_lie_outside_the_domain(cpu_cfg, smol_tokenizer):
    train, general = DATA / "semiconductor_train.jsonl", DATA / "general_eval.jsonl"
    summary = validate_files([str(train), str(general)], cpu_cfg, tokenizer=smol_tokenizer)  # leak check included
    assert summary[str(general)]["kind"] == "eval" and summary[str(general)]["examples"] == 30
    rows = read_examples(general, "eval")
    assert {"input", "output", "keywords", "topic"} <= set(rows[0])
    assert not any(word in row["input"].lower() for row in rows for word in ("chip", "semiconductor", "tsmc", "nvidia"))
    assert make_config("cpu").general_eval_file == "data/general_eval.jsonl"


# --- the 2 x 2 ---


@pytest.fixture(scope="module")
def rag_run(tiny_run, tmp_path_factory):
    """tiny_run with 4 general questions: every cell of the 2 x 2 in seconds."""
    run_dir = tmp_path_factory.mktemp("rag") / "run"
    shutil.copytree(tiny_run, run_dir)
    general = run_dir / "general4.jsonl"
    general.write_text("".join((DATA / "general_eval.jsonl").read_text(encoding="utf-8").splitlines(True)[:4]), encoding="utf-8")
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "general_eval_file": str(general)}))
    return run_dir


@pytest.fixture(scope="module")
def rag(rag_run):
    return compare_retrieval(rag_run, k=2, settings=GREEDY, progress=False)


def test_the_2x2_has_three_rows_per_model_and_set_with_the_right_columns(rag, rag_run):
    table = retrieval_table(rag)
    assert list(table.index) == [
        (s, m, r) for s in ("held-out", "general") for m in ("base", "tuned") for r in ("off", "top 2", "2 distractors")
    ]
    assert list(table.columns) == TABLE_COLUMNS
    assert list(table["questions"]) == [6] * 6 + [4] * 6
    missed = table.xs("2 distractors", level="retrieval")
    assert (missed["notes_hold_answer"] == 0).all()  # the third column's notes never hold the answer
    for key, row in table.iterrows():
        cell = rag[(rag["set"] == key[0]) & (rag["model"] == key[1]) & (rag["retrieval"] == key[2])]
        assert row["correct"] == cell["correct"].sum() and 0 <= row["eos_rate"] <= 1
    off, on = table.xs("off", level="retrieval"), table.xs("top 2", level="retrieval")
    assert (on["prompt_tokens"] > off["prompt_tokens"] + 40).all()  # two notes of 20+ words each
    assert off["notes_hold_answer"].isna().all() and on["notes_hold_answer"].between(0, 1).all()
    assert set(rag.loc[rag["retrieval"] == "top 2", "notes_k"]) == {2} and set(rag.loc[rag["retrieval"] == "off", "notes_k"]) == {0}
    back = read_retrieval(rag_run)
    assert len(back) == len(rag) == 6 * (6 + 4) and list(back["answer"].fillna("")) == list(rag["answer"].fillna(""))


def test_without_notes_the_2x2_answers_as_evaluate_does(rag, rag_run):
    from semifinetune.evaluate import compare_base_tuned, read_evaluation

    compare_base_tuned(rag_run, GREEDY, progress=False)
    alone = read_evaluation(rag_run)
    off = rag[(rag["set"] == "held-out") & (rag["retrieval"] == "off")]
    assert list(off["text"].fillna("")) == list(alone["text"].fillna(""))
    noted = rag[(rag["set"] == "held-out") & (rag["retrieval"] == "top 2")]
    assert (noted["text"].fillna("").to_numpy() != off["text"].fillna("").to_numpy()).any()  # the notes change answers


def test_reused_evaluation_gives_the_same_2x2(rag, rag_run, tmp_path):
    from semifinetune.compare import _evaluation_reused, question_sets
    from semifinetune.evaluate import compare_base_tuned, read_evaluation
    from semifinetune.runs import open_run

    run_dir = _with_settings(rag_run, tmp_path)
    compare_base_tuned(run_dir, GREEDY, progress=False)
    again = compare_retrieval(run_dir, k=2, settings=GREEDY, progress=False, reuse_evaluation=True)
    held_off = (again["set"] == "held-out") & (again["retrieval"] == "off")
    assert list(again.loc[held_off, "seconds"]) == list(read_evaluation(run_dir)["seconds"])  # copied, not generated
    columns = ["questions", "correct", "recall", "eos_rate", "answer_words", "new_tokens", "prompt_tokens", "notes_hold_answer"]
    pd.testing.assert_frame_equal(retrieval_table(again)[columns], retrieval_table(rag)[columns])
    cfg = open_run(run_dir)
    held_out = question_sets(cfg)["held-out"]
    first = _evaluation_reused(run_dir, cfg, held_out[:3], 2)  # retrieval_compare_questions 3: the first 3 reused
    assert list(first["question"]) == [row["input"] for row in held_out[:3]] * 2
    assert _evaluation_reused(run_dir, cfg, held_out[1:4], 2) is None  # other questions: generated afresh
    assert [len(rows) for rows in question_sets(cfg, 3).values()] == [3, 3]
    noted = _with_settings(run_dir, tmp_path / "noted", retrieval_k=1)
    assert _evaluation_reused(noted, open_run(noted), held_out, 2) is None  # written without notes, read with them


def test_an_evaluation_with_the_same_notes_fills_the_notes_cell(rag, rag_run, tmp_path):
    from semifinetune.evaluate import compare_base_tuned, read_evaluation

    run_dir = _with_settings(rag_run, tmp_path, retrieval_k=2)
    compare_base_tuned(run_dir, GREEDY, progress=False)  # notes in every prompt: the run's answering mode
    again = compare_retrieval(run_dir, k=2, settings=GREEDY, progress=False, reuse_evaluation=True)
    held_noted = (again["set"] == "held-out") & (again["retrieval"] == "top 2")
    assert list(again.loc[held_noted, "seconds"]) == list(read_evaluation(run_dir)["seconds"])  # copied
    columns = ["questions", "correct", "recall", "eos_rate", "answer_words", "new_tokens", "prompt_tokens", "notes_hold_answer"]
    pd.testing.assert_frame_equal(retrieval_table(again)[columns], retrieval_table(rag)[columns])


def _hand_table(held: dict, general: dict, k: int = 1) -> pd.DataFrame:
    """A compare_retrieval-shaped table from {(model, with_notes): [correct per question]} per set."""
    rows = []
    for name, cells in (("held-out", held), ("general", general)):
        for (model, noted), correct in cells.items():
            for q, ok in enumerate(correct):
                rows.append({"set": name, "model": model, "retrieval": f"top {k}" if noted else "off",
                             "notes_k": k if noted else 0, "question_id": q, "correct": ok})
    return pd.DataFrame(rows)


def test_mcnemar_exact_values():
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(5, 0) == pytest.approx(2 / 32) and mcnemar_p(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_p(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)


def test_statement_follows_the_numbers():
    n = 20
    held = {("base", False): [False] * n, ("base", True): [True] * 16 + [False] * 4,
            ("tuned", False): [True] * 3 + [False] * 17, ("tuned", True): [True] * 17 + [False] * 3}
    general = {("base", False): [True] * 10, ("base", True): [True] * 10,
               ("tuned", False): [True] * 6 + [False] * 4, ("tuned", True): [True] * 9 + [False]}
    text = retrieval_statement(_hand_table(held, general))
    assert text.startswith("On the 20 held-out questions the base model answers 0, with the top 1 training pair in its "
                           "prompt 16, fine-tuned 3 and fine-tuned with the notes 17: retrieval beats the fine-tune (16 vs 3, p = 0.00024")
    assert "changes nothing beyond the noise (17 vs 16" in text
    assert "on the 10 general questions the fine-tune costs 4 (6 vs 10, p = 0.12, within the noise), retrieval keeps (10 vs 10" in text
    assert text.count(".") >= 1 and "\n" not in text  # one sentence
    flipped = {**held, ("base", True): [True] * 3 + [False] * 17, ("tuned", False): [True] * 16 + [False] * 4}
    assert "the fine-tune beats retrieval (3 vs 16" in retrieval_statement(_hand_table(flipped, general))
    close = {**held, ("tuned", False): [True] * 15 + [False] * 5}
    assert "cannot be told apart (16 vs 15" in retrieval_statement(_hand_table(close, general))


def test_counts_line_for_runs_summary():
    held = {("base", False): [False, True], ("base", True): [True, True], ("tuned", False): [False, False], ("tuned", True): [True, False]}
    general = {("base", False): [True], ("base", True): [True], ("tuned", False): [False], ("tuned", True): [True]}
    table = _hand_table(held, general, k=3)
    assert correct_counts(table)["held-out"] == {"questions": 2, "base": 1, "base + top 3": 2, "tuned": 0, "tuned + top 3": 1}
    assert counts_line(table) == ("held-out base 1, base + top 3 2, tuned 0, tuned + top 3 1 of 2; "
                                  "general base 1, base + top 3 1, tuned 0, tuned + top 3 1 of 1")


def test_the_2x2_needs_notes(rag_run):
    with pytest.raises(ConfigError, match="retrieval_compare_k"):
        compare_retrieval(rag_run, k=0)


# --- retrieval mode of evaluate and the sweep ---


def _with_settings(run_dir: Path, tmp_path: Path, **values) -> Path:
    """A copy of run_dir whose config.json has these values."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, **values}))
    return copy


def test_evaluate_and_sweep_in_retrieval_mode(rag_run, tmp_path):
    from semifinetune.evaluate import compare_base_tuned, read_evaluation
    from semifinetune.sweep import run_sweep

    run_dir = _with_settings(rag_run, tmp_path, retrieval_k=2, sweep_questions=2)
    result = compare_base_tuned(run_dir, GREEDY, progress=False)
    assert result["retrieval_k"] == 2
    table = read_evaluation(run_dir)
    assert set(table["notes_k"]) == {2} and (table["prompt_tokens"] > 60).all()
    first = json.loads(table.loc[0, "notes"])
    assert len(first) == 2 and first == [n["input"] for n in retrieve(index_training_pairs(make_config("tiny")), [table.loc[0, "question"]], 2)[0]]
    swept = run_sweep(run_dir, progress=False)
    assert set(swept["notes_k"]) == {2} and len(swept) == 2 * 2 * 2  # 2 temperatures x 2 questions x 2 models


# --- CLI and playground ---


def test_cli_evaluate_retrieval(rag_run, tmp_path, capsys):
    from semifinetune.cli import main

    run_dir = _with_settings(rag_run, tmp_path, max_new_tokens=4)
    assert main(["evaluate", "--run-dir", str(run_dir), "--retrieval", "2"]) == 0
    out = capsys.readouterr().out
    assert "top 2" in out and "held-out" in out and "general" in out and "On the 6 held-out questions" in out
    assert (run_dir / "retrieval.csv").exists()
    assert main(["evaluate", "--run-dir", str(run_dir), "--retrieval"]) == 0  # retrieval_compare_k: 1
    assert "top 1" in capsys.readouterr().out
    assert main(["evaluate", "--run-dir", str(run_dir), "--retrieval", "0"]) == 2
    assert "--retrieval takes a number of notes of 1 or more" in capsys.readouterr().err


def test_run_summary_line_holds_the_2x2(monkeypatch, capsys, tmp_path):
    from semifinetune import cli

    result = {
        "train": {"global_step": 6, "train_runtime_s": 3.0},
        "evaluation": {"base_correct": 1, "tuned_correct": 2, "questions": 6},
        "retrieval": "held-out base 1, base + top 1 4, tuned 2, tuned + top 1 5 of 6; general base 3, base + top 1 3, tuned 2, tuned + top 1 3 of 4",
        "recommended": {"temperature": 0.3, "top_p": 1.0},
    }
    monkeypatch.setattr("semifinetune.pipeline.run_pipeline", lambda *args, **kwargs: result)
    assert cli.main(["run", "--profile", "tiny", "--run-dir", str(tmp_path / "r")]) == 0  # the lock makes the folder
    out = capsys.readouterr().out
    assert "held-out correct: base 1, tuned 2 of 6; with retrieval, correct: held-out base 1, base + top 1 4" in out


def test_playground_lists_the_retrieved_notes(index, tiny_run):
    from semifinetune.playground import describe_notes, starting_settings
    from semifinetune.runs import open_run

    (notes,) = retrieve(index, ["Who founded TSMC?"], 2)
    text = describe_notes(notes)
    assert text.splitlines()[0].startswith("2 retrieved notes") and f"1. [score {notes[0]['score']:.2f}] Q: {notes[0]['input']}" in text
    assert describe_notes([]).endswith(": the prompt is the question alone")
    start = starting_settings(tiny_run, open_run(tiny_run))
    assert (start["retrieval"], start["notes_k"]) == (False, 1)  # off as configured, ready at retrieval_compare_k


def test_playground_click_with_and_without_retrieval(index, rag_run):
    from semifinetune.evaluate import load_base_and_tuned
    from semifinetune.playground import answer_both
    from semifinetune.runs import open_run

    cfg = open_run(rag_run)
    model, tokenizer = load_base_and_tuned(cfg, rag_run)
    question = "Who founded TSMC?"
    notes, answers = answer_both(model, tokenizer, index, question, GREEDY, 2, cfg)
    assert [n["input"] for n in notes] == [n["input"] for n in retrieve(index, [question], 2)[0]]
    assert set(answers) == {"base", "tuned"} and all(NOTES_HEADER in a.prompt and a.prompt.endswith("<think>\n") for a in answers.values())
    none, plain = answer_both(model, tokenizer, index, question, GREEDY, 0, cfg)
    assert none == [] and plain["base"].prompt == chat_prompt(tokenizer, question)


def test_playground_streams_both_answers_after_showing_the_notes(index, rag_run):
    from semifinetune.evaluate import load_base_and_tuned
    from semifinetune.playground import answer_both
    from semifinetune.runs import open_run

    cfg = open_run(rag_run)
    model, tokenizer = load_base_and_tuned(cfg, rag_run)
    events = []
    settings = SamplingSettings(temperature=0.0, max_new_tokens=24)
    notes, answers = answer_both(model, tokenizer, index, "Who founded TSMC?", settings, 2, cfg,
                                 on_notes=lambda notes: events.append(("notes", notes)),
                                 on_text=lambda which, piece: events.append((which, piece)))
    assert events[0] == ("notes", notes) and [which for which, _ in events[1:]] == sorted(w for w, _ in events[1:])
    for which in ("base", "tuned"):
        assert "".join(piece for w, piece in events if w == which) == answers[which].text
    _, quiet = answer_both(model, tokenizer, index, "Who founded TSMC?", settings, 2, cfg)
    assert {w: a.text for w, a in quiet.items()} == {w: a.text for w, a in answers.items()}  # streaming changes nothing
    assert answers["base"].text != answers["tuned"].text


def test_retrieval_never_starts_jax_and_leaves_it_importable(tmp_path):
    """bm25s runs a JAX op at import where JAX is installed, which on a GPU starts JAX there with 75% of the card's
    memory. A stand-in `jax` package that records being imported and run: retrieval imports neither, and the
    package still imports after."""
    import subprocess
    import sys

    fake = tmp_path / "jax"
    fake.mkdir()
    (fake / "__init__.py").write_text("import os\nopen(os.environ['JAX_MARKS'], 'a').write('imported\\n')\n")
    (fake / "lax.py").write_text("import os\ndef top_k(x, k):\n    open(os.environ['JAX_MARKS'], 'a').write('ran\\n')\n")
    marks = tmp_path / "marks.txt"
    script = (
        "from semifinetune.retrieval import index_pairs, retrieve\n"
        "index = index_pairs([{'input': 'Who founded TSMC?', 'output': 'Morris Chang.'},"
        " {'input': 'What is EUV?', 'output': 'Extreme ultraviolet lithography.'}])\n"
        "assert retrieve(index, ['Who started TSMC?'], 1)[0][0]['output'] == 'Morris Chang.'\n"
        "import os; assert not os.path.exists(os.environ['JAX_MARKS'])\n"
        "import jax\n"
    )
    env = {**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{PROJECT_ROOT}", "JAX_MARKS": str(marks)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr
    assert marks.read_text() == "imported\n"
