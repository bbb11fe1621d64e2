"""The run directory: where each step reads and writes. Notebooks talk through these files only."""

from __future__ import annotations

import os
from pathlib import Path

CONFIG = "config.json"
ENV = "env.json"
BASELINE = "baseline_answer.json"
DATA = "data"
ADAPTER = "adapter"
CHECKPOINTS = "checkpoints"
TRAIN_LOG = "train_log.json"
TENSORBOARD = "tensorboard"  # training logs, where report_to includes tensorboard
LOSS_PLOT = "loss_curve.png"
EVALUATION = "evaluation.csv"
RETRIEVAL = "retrieval.csv"  # the base/tuned x without/with retrieval 2 x 2, one row per answer
SWEEP = "sweep.csv"
RECOMMENDED = "recommended_settings.json"


def run_path(run_dir: str | os.PathLike, name: str) -> Path:
    return Path(run_dir) / name


def open_run(run_dir: str | os.PathLike):
    """Notebooks 02-06: the run's RunConfig as notebook 01 wrote it."""
    from .config import load_config

    return load_config(run_dir)


def ensure_run_dir(run_dir: str | os.PathLike) -> Path:
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


PROJECT_ROOT = Path(__file__).resolve().parent.parent
# semifinetune runs from a clone of its repository: the package reads the data, notebooks and requirements files
# beside it. An installed wheel holds the package alone (its dependencies declared in pyproject.toml), so a step
# that needs those files says so instead of failing on a missing path.
CLONE_FILES = ("data", "notebooks")


def in_a_clone() -> bool:
    """The package sits in a clone of the repository (data/ and notebooks/ beside it), not installed on its own."""
    return all((PROJECT_ROOT / name).is_dir() for name in CLONE_FILES)


def clone_message(needed: str) -> str:
    return (f"{needed} is part of the repository, and this semifinetune is installed without it "
            f"({Path(__file__).resolve().parent}). semifinetune runs from a clone: git clone the repository, then "
            "./install.sh (or, on Colab, notebook 01's install cell) and run it there.")


def resolve_data_path(path: str | os.PathLike) -> Path:
    """A data path from the config: as given if it exists (absolute or from the cwd), else from the project root;
    outside a clone, a relative path that is not here is one of the repository's files, which are not there."""
    from .config import ConfigError

    given = Path(path)
    if given.is_absolute() or given.exists():
        return given
    if not in_a_clone():
        raise ConfigError(clone_message(f"{given} (a path relative to the project)") + " Or give paths of your own: "
                          "--set train_file=PATH --set eval_file=PATH --set validation_file=PATH ('': none).")
    return PROJECT_ROOT / given


RESULTS = (ADAPTER, CHECKPOINTS, TRAIN_LOG, TENSORBOARD, SWEEP, EVALUATION, RETRIEVAL)


def existing_results(run_dir: str | os.PathLike) -> list[str]:
    """Names of results already in run_dir (what a new run would overwrite)."""
    return [name for name in RESULTS if (Path(run_dir) / name).exists()]
