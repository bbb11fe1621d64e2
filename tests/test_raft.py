"""The raft recipe: notes in the training prompts, the fact's own among distractors in a set share of them."""

from __future__ import annotations

import json

import pytest

from semifinetune.config import make_config
from semifinetune.data import _tokenized, _with_notes, read_examples, read_prepared, read_splits
from semifinetune.raft import source_entry, training_notes
from semifinetune.retrieval import NOTES_HEADER, QUESTION_LEAD, index_entries, index_pairs
from semifinetune.runs import PROJECT_ROOT

TRAIN = read_examples(PROJECT_ROOT / "data" / "semiconductor_train.jsonl", "train")


@pytest.fixture(scope="module")
def facts_index():
    return index_pairs(index_entries(TRAIN, "facts"))


def test_a_rewording_comes_from_the_fact_of_its_topic(facts_index):
    original = next(row for row in TRAIN if row["form"] == "original")
    assert facts_index.pairs[source_entry(facts_index, original)] == original  # a fact is its own source
    for row in [row for row in TRAIN if row["form"] != "original"][:40]:
        assert facts_index.pairs[source_entry(facts_index, row)]["topic"] == row["topic"]


def test_the_share_with_the_own_fact_is_exact_and_seeded(facts_index):
    examples = TRAIN[:200]
    notes = training_notes(facts_index, examples, 3, 0.8, seed=7)
    own = [facts_index.pairs[source_entry(facts_index, example)] for example in examples]
    holding = [mine in given for mine, given in zip(own, notes)]
    assert sum(holding) == 160 and all(len(given) == 3 for given in notes)
    assert all(len({note["input"] for note in given}) == 3 for given in notes)  # three different notes
    assert notes == training_notes(facts_index, examples, 3, 0.8, seed=7)
    assert notes != training_notes(facts_index, examples, 3, 0.8, seed=8)
    places = {given.index(mine) for mine, given in zip(own, notes) if mine in given}
    assert places == {0, 1, 2}  # the own fact is not always first
    alone = training_notes(facts_index, examples, 1, 0.0, seed=7)
    assert not any(mine in given for mine, given in zip(own, alone))  # share 0: distractors only


def test_prepared_data_carries_the_notes_in_every_split(tmp_path):
    from semifinetune.data import prepare_data
    from semifinetune.pipeline import setup

    run_dir = tmp_path / "run"
    setup(run_dir, "tiny", {"recipe": "raft"})
    prepare_data(run_dir)
    for split in ("train", "validation", "eval"):
        rows = read_prepared(run_dir, split)
        assert all(row["input"].startswith(NOTES_HEADER) and row["input"].endswith(f"{QUESTION_LEAD} {row['question']}")
                   for row in rows), split
        assert all(row["input"].count("\nA: ") == 3 for row in rows)  # raft_notes 3
    config = json.loads((run_dir / "config.json").read_text())
    assert config["raft_notes"] == 3 and config["retrieval_k"] == 3


def test_without_raft_the_prompts_are_the_questions(tiny_cfg):
    found = read_splits(tiny_cfg, None)
    assert _with_notes(tiny_cfg, found) == found


def test_the_cpu_raft_prompts_fit_its_sequence_length(smol_tokenizer):
    cfg = make_config("cpu", {"recipe": "raft"})
    _, too_long = _tokenized(_with_notes(cfg, read_splits(cfg, None)), cfg, smol_tokenizer)
    assert too_long == []
