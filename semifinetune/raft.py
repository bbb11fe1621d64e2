"""Retrieval-augmented fine-tuning (the `raft` recipe): training prompts that hold notes, as questions will at use.

Zhang et al. (2403.10131) train with the document that holds the answer among distractors in a share P of the
examples and distractors only in the rest (P 0.8 in their main runs), so that the model learns to read the right note
and to answer from what it learned where no note holds the answer. Here the notes come from the same BM25 index and go
into the same prompt layout (retrieval.with_notes) as at question time; the answer is the training answer.

A training row's own note is the index entry it came from: the row itself, or, where the index holds facts or topics,
the fact of the same topic closest to the row's question and answer (a rewording's or reverse question's source). The
distractors are the index's best-ranked other entries for the question: the near misses retrieval gives at use.
The validation and held-out prompts get the top raft_notes notes, as evaluation gives them.
"""

from __future__ import annotations

import random

from .config import RunConfig
from .retrieval import NoteIndex, _tokens, index_entries, index_pairs, retrieve, with_notes

EXTRA = 10  # ranked entries looked at beyond the ones needed: room to skip the row's own fact and its wordings


def source_entry(index: NoteIndex, example: dict) -> int:
    """The position in the index of the entry the training example came from."""
    for position, entry in enumerate(index.pairs):
        if entry.get("input") == example["input"] and entry.get("output") == example["output"]:
            return position
        if "pairs" in entry and any(pair["input"] == example["input"] for pair in entry["pairs"]):
            return position
    topic = example.get("topic")
    ranked = _ranked(index, f"{example['input']} {example['output']}", len(index.pairs) if topic else 1)
    same_topic = [position for position in ranked if topic and index.pairs[position].get("topic") == topic]
    return (same_topic or ranked)[0]


def _ranked(index: NoteIndex, query: str, k: int) -> list[int]:
    """Index positions of the top k entries for the query, best first."""
    documents, _ = index.retriever.retrieve(_tokens([query]), k=min(k, len(index.pairs)), show_progress=False)
    return [int(doc) for doc in documents[0]]


def training_notes(index: NoteIndex, examples: list[dict], n: int, oracle_share: float, seed: int) -> list[list[dict]]:
    """n notes for each training example: its own entry among n - 1 distractors for a seeded oracle_share of them
    (exactly round(share x rows)), n distractors for the others; the own entry's place among the notes is random."""
    rng = random.Random(seed)
    with_oracle = set(rng.sample(range(len(examples)), round(oracle_share * len(examples))))
    notes = []
    for position, example in enumerate(examples):
        own = source_entry(index, example)
        ranked = [p for p in _ranked(index, example["input"], n + EXTRA) if p != own
                  and index.pairs[p].get("output") != index.pairs[own].get("output")]
        chosen = ranked[: n - 1] + [own] if position in with_oracle else ranked[:n]
        rng.shuffle(chosen)
        notes.append([index.pairs[p] for p in chosen])
    return notes


def with_training_notes(cfg: RunConfig, examples_by_split: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Each split's examples with notes in the question, where cfg.raft_notes is set: the training split as
    training_notes gives them, the others with the top raft_notes notes of the index; the bare question is kept
    under `question`. Unchanged where raft_notes is 0."""
    if not cfg.raft_notes:
        return examples_by_split
    index = index_pairs(index_entries(examples_by_split["train"], cfg.retrieval_index), cfg.train_file)
    out = {}
    for split, examples in examples_by_split.items():
        if split == "train":
            notes = training_notes(index, examples, cfg.raft_notes, cfg.raft_oracle_share, cfg.seed)
        else:
            notes = retrieve(index, [example["input"] for example in examples], min(cfg.raft_notes, len(index.pairs)))
        out[split] = [{**example, "question": example["input"], "input": with_notes(example["input"], given)}
                      for example, given in zip(examples, notes)]
    return out
