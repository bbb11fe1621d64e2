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


def notes_for(cfg: RunConfig, questions: list[str], k: int) -> list[list[dict]] | None:
    """The top k training pairs for each question; None when k is 0 (retrieval off, nothing indexed)."""
    check_k(k)
    if k == 0:
        return None
    return retrieve(index_training_pairs(cfg), questions, k)
