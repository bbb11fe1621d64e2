"""The run's notes: the index over its training file, holding what retrieval_index says, and the top k for questions.

Apart from retrieval.py (the index itself, the prompt layout), which reads no run and no file, so that formatting the
training data (raft.py) can index its examples without importing the reader that calls it.
"""

from __future__ import annotations

from pathlib import Path

from .config import ConfigError, RunConfig
from .retrieval import NoteIndex, check_k, index_entries, index_pairs, retrieve


def index_training_pairs(cfg: RunConfig) -> NoteIndex:
    """The index over cfg.train_file (validated), the only file retrieval may read notes from, holding what
    cfg.retrieval_index says."""
    from .data import training_examples
    from .splits import locate

    files = {str(Path(locate(name)).resolve()) for name in (cfg.eval_file, cfg.general_eval_file) if Path(locate(name)).is_file()}
    if Path(locate(cfg.train_file)).is_file() and str(Path(locate(cfg.train_file)).resolve()) in files:
        raise ConfigError(f"train_file {cfg.train_file} is also an evaluation file: retrieval would read the answers of the questions it is scored on.")
    return index_pairs(index_entries(training_examples(cfg), cfg.retrieval_index), cfg.train_file)


def notes_for(cfg: RunConfig, questions: list[str], k: int, run_dir=None) -> list[list[dict]] | None:
    """The top k training pairs for each question, none where the best scores under the run's floor (score_floor);
    None when k is 0 (retrieval off, nothing indexed)."""
    check_k(k)
    if k == 0:
        return None
    index = index_training_pairs(cfg)
    return above_floor(retrieve(index, questions, k), score_floor(cfg, index, run_dir))


def score_floor(cfg: RunConfig, index: NoteIndex, run_dir=None) -> float:
    """The BM25 score a question's best note needs for the notes to be given: cfg.retrieval_floor times the lowest
    best-note score among the validation questions; 0 where the floor is off or the run has no validation questions.

    The scale of BM25 scores depends on the index, so the floor is read off questions known to be in the domain, and
    only those: the held-out and general questions choose nothing. On the shipped data the validation questions' best
    notes score 4.2 and more, the general questions' 3.9 and less, the held-out questions' 2.1 and more.
    """
    from .data import split_examples

    if not cfg.retrieval_floor or not cfg.validation_file:
        return 0.0
    rows = split_examples(cfg, "validation", run_dir)
    best = retrieve(index, [row["input"] for row in rows], 1)
    return cfg.retrieval_floor * min(notes[0]["score"] for notes in best)


def above_floor(notes: list[list[dict]], floor: float) -> list[list[dict]]:
    """Each question's notes where its best note scores at least floor, else none."""
    return [given if given and given[0]["score"] >= floor else [] for given in notes]
