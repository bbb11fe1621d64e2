"""Retrieval beside fine-tuning: BM25 (bm25s) over the training pairs, the top k pasted into the question's user turn.

Only `train_file` is indexed, never a held-out file: a held-out question found in the notes would measure lookup
of the answer key, not knowledge. The notes go in the user turn because R1's chat template has no system prompt
(DeepSeek: "avoid adding a system prompt"), and a user turn leaves the template's generation prompt as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ConfigError

NOTES_HEADER = "Notes that may help:"
QUESTION_LEAD = "Question:"


@dataclass
class NoteIndex:
    pairs: list[dict]  # the indexed training pairs, in file order
    retriever: object  # bm25s.BM25 over note_text(pair) of each pair
    source: str  # the file the pairs came from


def note_text(pair: dict) -> str:
    """One training pair as a note: its question and its answer (BM25 scores both, the prompt shows both); a topic's
    note, its pairs one after another."""
    if "pairs" in pair:
        return "\n".join(note_text(one) for one in pair["pairs"])
    return f"Q: {pair['input']}\nA: {pair['output']}"


def _bm25s():
    """bm25s, imported without JAX where JAX is not imported yet.

    bm25s picks its top-k backend at import: where JAX is installed (Colab's images ship it) it imports it and runs a
    JAX op, which starts JAX on the GPU, and JAX takes 75% of the GPU's memory for itself by default. On an H200 the
    process held 116 GB after the retrieval 2 x 2 with PyTorch reserving 8 of them. Hidden from that import, bm25s
    takes the top k with numpy (the same pairs; a few hundred notes). JAX stays importable afterwards.
    """
    import sys

    if "bm25s" in sys.modules or "jax" in sys.modules:
        import bm25s

        return bm25s
    sys.modules["jax"] = None  # makes `import jax` raise ImportError, which bm25s catches
    try:
        import bm25s
    finally:
        if "jax" in sys.modules and sys.modules["jax"] is None:
            del sys.modules["jax"]
    return bm25s


def _tokens(texts: list[str]) -> list[list[str]]:
    bm25s = _bm25s()
    # English stopwords dropped: "what", "which", "the" would otherwise match every question.
    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


def index_pairs(pairs: list[dict], source: str = "") -> NoteIndex:
    """A BM25 index over the pairs' question and answer text."""
    bm25s = _bm25s()
    if not pairs:
        raise ConfigError(f"No training pairs to index{f' in {source}' if source else ''}: retrieval needs train_file's examples.")
    retriever = bm25s.BM25()  # Lucene's BM25 variant, k1 1.5, b 0.75: bm25s' defaults
    retriever.index(_tokens([note_text(p) for p in pairs]), show_progress=False)
    return NoteIndex(pairs=list(pairs), retriever=retriever, source=source)


ORIGINAL = "original"  # the `form` of a source fact's own row; its rewordings and reverse questions have others


def index_kind(examples: list[dict], kind: str = "auto") -> str:
    """What retrieval_index means for these rows: "auto" is "facts" where the rows say which are source facts (a
    `form` field), else "rows"."""
    if kind != "auto":
        return kind
    return "facts" if any(row.get("form") == ORIGINAL for row in examples) else "rows"


def index_entries(examples: list[dict], kind: str = "auto") -> list[dict]:
    """The notes an index holds (retrieval_index): every row, the source facts alone, or one note per topic.

    The shipped training file holds each of its 255 facts in up to four wordings; indexing all 766 rows fills the top
    of the ranking with one fact's wordings. On the shipped questions both find the fact about as often
    (BENCHMARKS.md, "Which notes to index"); one note per fact is a third of the index and of its duplicates.
    """
    kind = index_kind(examples, kind)
    facts = [row for row in examples if row.get("form", ORIGINAL) == ORIGINAL] or list(examples)
    if kind == "rows":
        return list(examples)
    if kind == "facts":
        return facts
    topics: dict[str, list[dict]] = {}
    for row in facts:
        topics.setdefault(str(row.get("topic") or row["input"]), []).append(row)  # a row without a topic: its own
    return [{"input": f"topic {name}", "output": " ".join(pair["output"] for pair in pairs), "topic": name, "pairs": pairs}
            for name, pairs in topics.items()]


def retrieve(index: NoteIndex, questions: list[str], k: int) -> list[list[dict]]:
    """The top k pairs for each question, best first, each with its BM25 `score`; k = 0 gives no notes."""
    check_k(k, len(index.pairs))
    if k == 0 or not questions:
        return [[] for _ in questions]
    documents, scores = index.retriever.retrieve(_tokens(questions), k=k, show_progress=False)
    return [
        [{**index.pairs[int(doc)], "score": round(float(score), 4)} for doc, score in zip(row_docs, row_scores)]
        for row_docs, row_scores in zip(documents, scores)
    ]


def check_k(k: int, available: int | None = None) -> None:
    """k must be 0 (off) or a positive number of notes no larger than the index."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(f"The number of retrieved notes k must be 0 (off) or a positive integer, got {k!r}.")
    if available is not None and k > available:
        raise ConfigError(f"k = {k} notes asked for, but the index holds {available} training pairs: lower retrieval_k.")


def with_notes(question: str, notes: list[dict]) -> str:
    """The user turn: the notes, then the question; no notes gives the question unchanged (the prompt without retrieval)."""
    if not notes:
        return question
    listed = "\n\n".join(note_text(note) for note in notes)
    return f"{NOTES_HEADER}\n\n{listed}\n\n{QUESTION_LEAD} {question}"
