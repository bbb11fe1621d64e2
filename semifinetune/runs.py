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
    """Notebooks 02-06: the run's RunConfig as notebook 01 wrote it; a folder without one names the run that exists."""
    from .config import ConfigError, load_config

    if not run_path(run_dir, CONFIG).is_file():
        raise ConfigError(no_run_message(run_dir))
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


# --- the run directory set up last: notebooks 02-06's default run_dir ---

DEFAULT_RUN = "runs/demo"  # notebook 01's default run_dir
# Off Colab the file lives in the project, not the working directory: Jupyter starts kernels in notebooks/, the
# `notebooks` command in the project root, and both should find the same run. On Colab colab.use_drive points it
# at MyDrive/semifinetune/runs/.last_run, so that a notebook in a fresh runtime finds what 01 wrote.
LAST_RUN_ENV = "SEMIFINETUNE_LAST_RUN"


def last_run_file() -> Path:
    """Where the run directory set up last is remembered: $SEMIFINETUNE_LAST_RUN, else runs/.last_run in the project."""
    return Path(os.environ.get(LAST_RUN_ENV) or PROJECT_ROOT / "runs" / ".last_run")


def remember_run(run_dir: str | os.PathLike) -> None:
    """Notebook 01 (setup): record run_dir, absolute, as the run notebooks 02-06 open by default."""
    from .atomic import write_text_atomic

    write_text_atomic(last_run_file(), f"{Path(run_dir).resolve()}\n")


def remembered_run() -> Path | None:
    """The run directory set up last, where one is remembered and still holds a run."""
    try:
        path = Path(last_run_file().read_text(encoding="utf-8").strip())
    except OSError:
        return None
    return path if path.is_absolute() and (path / CONFIG).is_file() else None


def last_run_dir(default: str = DEFAULT_RUN) -> str:
    """Notebooks 02-06's run_dir: the run notebook 01 wrote last (relative to here where it lies below), or default."""
    path = remembered_run()
    return shown_path(path) if path else default


def shown_path(path: Path) -> str:
    """path relative to the working directory where it lies below it (on Colab: runs/demo on Drive), else absolute."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def no_run_message(run_dir: str | os.PathLike) -> str:
    """What a run_dir without config.json is, and which run directory holds a run."""
    message = f"{run_path(run_dir, CONFIG)} does not exist: {run_dir} holds no run."
    last = remembered_run()
    if last and last != Path(run_dir).resolve():
        last = shown_path(last)
        return f"{message} The run notebook 01 wrote last is {last!r}: set run_dir = {last!r} or run 01 with this one."
    return f"{message} Run notebook 01_setup (or `python -m semifinetune run`) with this run_dir first."
