"""A user's own data: every format read into the same examples, located errors, sampled questions, the guard."""

import json
from pathlib import Path

import pytest

from semifinetune.config import ConfigError, make_config, training_steps
from semifinetune.data import DataError, read_examples, read_source, read_splits, split_examples
from semifinetune.splits import data_name, sample_sizes

EXAMPLES = Path(__file__).resolve().parent.parent / "data" / "examples"
FORMATS = {  # the same 28 fictional facts in every format a user may bring
    "quorvane.jsonl": "input-output",
    "quorvane_messages.jsonl": "messages",
    "quorvane_prompt_completion.jsonl": "prompt-completion",
    "quorvane_alpaca.json": "alpaca",
    "quorvane_sharegpt.jsonl": "sharegpt",
    "quorvane.csv": "columns",
}


def pairs(path, **options) -> list[tuple[str, str]]:
    return [(r.value["input"], r.value["output"]) for r in read_source(path, **options).records]


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("name, fmt", FORMATS.items())
def test_every_format_reads_as_the_same_examples(name, fmt):
    source = read_source(EXAMPLES / name)
    assert source.problems == [] and source.format == fmt
    assert pairs(EXAMPLES / name) == pairs(EXAMPLES / "quorvane.jsonl") and len(source.records) == 28


def test_tsv_parquet_and_a_saved_dataset_read_through_datasets(tmp_path):
    from datasets import Dataset, DatasetDict

    table = Dataset.from_csv(str(EXAMPLES / "quorvane.csv"))
    table.to_csv(str(tmp_path / "q.tsv"), sep="\t", index=False)
    table.to_parquet(str(tmp_path / "q.parquet"))
    expected = pairs(EXAMPLES / "quorvane.jsonl")
    assert pairs(tmp_path / "q.tsv") == expected and pairs(tmp_path / "q.parquet") == expected
    DatasetDict({"train": table, "test": table.select(range(3))}).save_to_disk(str(tmp_path / "saved"))
    assert pairs(tmp_path / "saved") == expected and pairs(f"{tmp_path / 'saved'}:test") == expected[:3]
    (problem,) = read_source(f"{tmp_path / 'saved'}:dev").problems
    assert "no split 'dev'" in problem and "train, test" in problem


def test_a_hub_style_folder_is_read_by_load_dataset_with_split_and_config(tmp_path):
    """The path a Hub id takes (load_dataset(id, name=config, split=split)), on a local repo laid out as the Hub's."""
    repo = tmp_path / "acme" / "faq"
    (repo / "data").mkdir(parents=True)
    write_lines(repo / "data" / "train.jsonl", [{"question": "What is Acme?", "answer": "A ferry firm."}])
    write_lines(repo / "data" / "test.jsonl", [{"question": "Who runs Acme?", "answer": "Ada."}])
    assert pairs(repo) == [("What is Acme?", "A ferry firm.")]
    assert pairs(f"{repo}:test") == [("Who runs Acme?", "Ada.")]
    (problem,) = read_source(f"{repo}:validation").problems
    assert problem.startswith(f"{repo}[validation]: ") and "Name the split as" in problem


def test_an_unreachable_hub_id_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (problem,) = read_source("nobody-here/no-such-dataset").problems
    assert problem.startswith("nobody-here/no-such-dataset[train]: could not load the Hub dataset")
    assert "save the data as a .jsonl/.csv file" in problem


def test_multi_turn_rows_train_each_assistant_turn_with_the_turns_before_as_context():
    first, second = (r for r in read_source(EXAMPLES / "quorvane_messages.jsonl").records[:2])
    system = {"role": "system", "content": "You answer questions about Quorvane Ferries."}
    assert first.where.endswith("quorvane_messages.jsonl:1 turn 1") and first.value["context"] == [system]
    assert second.where.endswith(":1 turn 2")
    assert second.value["context"] == [system, {"role": "user", "content": first.value["input"]},
                                       {"role": "assistant", "content": first.value["output"]}]


def test_multi_turn_context_reaches_the_prompt_and_only_the_answer_carries_loss(tiny_tokenizer):
    from semifinetune.data import format_and_tokenize

    record = read_source(EXAMPLES / "quorvane_messages.jsonl").records[1]
    row = format_and_tokenize(tiny_tokenizer, record.value, make_config("tiny"))
    assert "You answer questions about Quorvane Ferries." in row["prompt"] and "Who founded Quorvane" in row["prompt"]
    answer_ids = tiny_tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
    assert sum(row["completion_mask"]) == len(answer_ids) and row["completion_mask"][-len(answer_ids):] == [1] * len(answer_ids)


def test_alpaca_input_is_context_below_the_instruction_and_think_blocks_become_reasoning(tmp_path):
    alpaca = tmp_path / "a.json"
    alpaca.write_text(json.dumps([{"instruction": "Summarise the note.", "input": "Ships: 14.", "output": "14 ships."}]))
    assert pairs(alpaca) == [("Summarise the note.\n\nShips: 14.", "14 ships.")]
    chat = write_lines(tmp_path / "m.jsonl", [
        {"messages": [{"role": "user", "content": "Q1?"}, {"role": "assistant", "content": "<think>\nrecall the fleet\n</think>\n\nA1."}]},
        {"messages": [{"role": "user", "content": "Q2?"}, {"role": "assistant", "content": "A2.", "reasoning_content": "why"}]},
    ])
    first, second = (r.value for r in read_source(chat).records)
    assert (first["output"], first["reasoning"]) == ("A1.", "recall the fleet") and second["reasoning"] == "why"


def test_bad_rows_are_named_by_line_with_the_fix(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", [
        {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]},
        {"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "A."}]},
        {"messages": [{"role": "assistant", "content": "A."}]},
        {"messages": [{"role": "user", "content": "Q3?"}, {"role": "assistant", "content": ""}]},
    ])
    assert read_source(path).problems == [
        f"{path}:2: messages message 1: role 'tool' is not system, user or assistant",
        f"{path}:3: messages message 1: an assistant turn must follow a user turn",
        f"{path}:4: messages message 2: the assistant message is empty",
    ]
    csv = tmp_path / "t.csv"
    csv.write_text("question,answer\nWhat?,This.\nWhere?,\n")
    assert read_source(csv).problems == [f"{csv}:row 2: field 'answer' is empty (null)"]


def test_unknown_fields_list_the_formats_and_named_columns_fix_it(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"frage": "Wer?", "antwort": "Ada."}])
    (problem,) = read_source(path).problems
    assert problem.startswith(f"{path}:1: no known data format in its fields ('frage', 'antwort')")
    assert "question_column and answer_column" in problem and '"messages"' in problem
    assert pairs(path, columns=("frage", "antwort")) == [("Wer?", "Ada.")]


def test_a_flood_of_one_problem_is_summarised(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"input": f"q{n}", "output": ""} for n in range(40)])
    with pytest.raises(DataError) as err:
        read_examples(path, "train")
    lines = str(err.value).splitlines()
    assert len(lines) == 7 and lines[5] == "... and 35 more with the same problem: field 'output' is empty"
    assert lines[-1] == "(40 problems in all)"


def test_sampled_questions_are_disjoint_seeded_and_stay_in_training(tmp_path):
    cfg = make_config("tiny", {"train_file": str(EXAMPLES / "quorvane.csv")})
    found = read_splits(cfg)
    held_out, validation = (found[s].records for s in ("eval", "validation"))
    assert (len(held_out), len(validation)) == sample_sizes(28) == (22, 6)
    questions = {r.value["input"] for r in found["train"].records}
    assert len(found["train"].records) == 28  # nothing is taken out of training
    assert {r.value["input"] for r in held_out} <= questions and not {r.value["input"] for r in held_out} & {r.value["input"] for r in validation}
    again = read_splits(make_config("tiny", {"train_file": str(EXAMPLES / "quorvane.csv")}))
    assert [r.value["input"] for r in again["eval"].records] == [r.value["input"] for r in held_out]
    other_seed = read_splits(make_config("tiny", {"train_file": str(EXAMPLES / "quorvane.csv"), "seed": 7}))
    assert [r.value["input"] for r in other_seed["eval"].records] != [r.value["input"] for r in held_out]
    assert all(r.value["key_terms"] for r in held_out)  # scored without keywords


def test_multi_turn_data_samples_only_questions_that_stand_alone():
    cfg = make_config("tiny", {"train_file": str(EXAMPLES / "quorvane_messages.jsonl")})
    found = read_splits(cfg)
    assert "In what year was Quorvane Ferries founded?" not in {r.value["input"] for s in ("eval", "validation") for r in found[s].records}
    assert sample_sizes(27) == (22, 5) and len(found["eval"].records) == 22


def test_setup_saves_the_sample_and_later_steps_read_it(tmp_path):
    from semifinetune.pipeline import setup

    run_dir = tmp_path / "run"
    setup(run_dir, "tiny", {"train_file": str(EXAMPLES / "quorvane_alpaca.json")})
    saved = [json.loads(line)["input"] for line in (run_dir / "data" / "sampled_eval.jsonl").read_text().splitlines()]
    cfg = make_config("tiny", {"train_file": str(EXAMPLES / "quorvane_alpaca.json")})
    assert [row["input"] for row in split_examples(cfg, "eval", run_dir)] == saved
    # the saved sample is what later steps score, even once the rule that drew it would draw others
    (run_dir / "data" / "sampled_eval.jsonl").write_text(json.dumps({"input": saved[0], "output": "Another answer."}) + "\n")
    assert [row["output"] for row in split_examples(cfg, "eval", run_dir)] == ["Another answer."]


def test_a_users_training_file_beside_a_shipped_question_file_stops_at_setup(tmp_path):
    from semifinetune.pipeline import setup

    for key, shipped in (("eval_file", "data/semiconductor_eval.jsonl"), ("validation_file", "data/semiconductor_val.jsonl")):
        with pytest.raises(ConfigError) as err:
            setup(tmp_path / key, "tiny", {"train_file": str(EXAMPLES / "quorvane.jsonl"), key: shipped})
        message = str(err.value)
        assert "quorvane.jsonl" in message and shipped in message and f"{key}='auto'" in message and "--set" in message
        assert not (tmp_path / key).exists()  # stopped before anything was written
    shipped_run = read_splits(make_config("tiny"))
    assert len(shipped_run["eval"].records) == 73 and shipped_run["eval"].format == "input-output"


def test_own_question_files_are_used_as_given_and_scored_by_key_terms(tmp_path):
    cfg = make_config("tiny", {"train_file": str(EXAMPLES / "quorvane.jsonl"), "eval_file": str(EXAMPLES / "quorvane_reworded.jsonl")})
    rows = split_examples(cfg, "eval", None)
    assert len(rows) == 28 and rows[0]["input"] == "Which person started the Quorvane ferry company?"
    assert rows[0]["key_terms"] == ["2009", "okafor", "maren"]  # the number, the name, then the rare word


def test_epochs_set_the_steps_within_the_recipes_bounds():
    cpu = make_config("cpu")
    assert (cpu.num_train_epochs, cpu.min_steps, cpu.max_steps) == (6.0, 10, 40)
    assert training_steps(cpu, 766) == 40  # the shipped file: capped where the recipe was measured
    assert training_steps(cpu, 28) == 21  # 6 epochs of 28 at batch 8: ceil(168 / 8)
    assert training_steps(cpu, 5) == 10  # raised to min_steps
    assert training_steps(make_config("cpu", {"max_steps": 25}), 28) == 25  # steps asked for are the steps trained
    assert training_steps(make_config("t4"), 766) == 200 and training_steps(make_config("t4"), 100) == 75


def test_notebook_05_says_the_steps_in_epochs_of_the_data():
    import dataclasses

    from semifinetune.config import length_note

    cpu = make_config("cpu")
    resolved = lambda rows: dataclasses.replace(cpu, max_steps=training_steps(cpu, rows))  # what setup saves  # noqa: E731
    assert length_note(resolved(28), 28) == "21 steps at batch 8 over 28 training examples: 6.0 epochs (num_train_epochs 6)."
    assert length_note(resolved(766), 766) == ("40 steps at batch 8 over 766 training examples: 0.4 epochs "
                                               "(num_train_epochs 6, capped at max_steps 40).")
    assert length_note(resolved(5), 5).endswith("16.0 epochs (num_train_epochs 6, raised to min_steps 10).")


def test_the_data_name_comes_from_the_training_file():
    assert data_name(make_config("tiny")) == "semiconductor"
    assert data_name(make_config("tiny", {"train_file": "my data/acme_faq.csv"})) == "acme-faq"
    assert data_name(make_config("tiny", {"train_file": "rajpurkar/squad:train"})) == "squad"


@pytest.mark.parametrize("name, fmt", [*FORMATS.items(), ("hub-style folder", "columns"), ("quorvane.parquet", "columns")])
def test_run_tiny_end_to_end_on_each_format(tmp_path, name, fmt):
    """The whole pipeline (01-06 as `run` does them) with the user's file as the only data."""
    import pandas as pd

    from semifinetune.pipeline import run_pipeline

    source = EXAMPLES / name
    if name == "hub-style folder":  # the layout load_dataset reads for a Hub id, here on disk
        (tmp_path / "repo" / "data").mkdir(parents=True)
        pd.read_csv(EXAMPLES / "quorvane.csv").to_json(tmp_path / "repo" / "data" / "train.jsonl", orient="records", lines=True)
        source = tmp_path / "repo"
    elif name.endswith(".parquet"):
        source = tmp_path / name
        pd.read_csv(EXAMPLES / "quorvane.csv").to_parquet(source)
    run_dir = tmp_path / "run"
    result = run_pipeline(run_dir, "tiny", {"train_file": str(source), "retrieval_compare_questions": 2, "sweep_questions": 2})
    summary = json.loads((run_dir / "data" / "summary.json").read_text())
    assert summary["data_format"] == fmt and summary["train"]["examples"] == 28
    assert (summary["eval"]["source"], summary["eval"]["examples"], summary["validation"]["examples"]) == ("sample", 22, 6 if fmt != "messages" else 5)
    evaluation = pd.read_csv(run_dir / "evaluation.csv")
    assert len(evaluation) == 2 * summary["eval"]["examples"] and set(evaluation["verdict_by"]) == {"key terms"}
    assert evaluation["token_f1"].between(0, 1).all() and result["evaluation"]["questions"] == summary["eval"]["examples"]
    assert (run_dir / "adapter" / "adapter_config.json").exists()
