"""Shared guards: free disk space before large writes, pickle weights refused, secrets kept out of messages."""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import runs
from .atomic import free_bytes, size_text  # noqa: F401 - callers import them from here
from .config import ConfigError

# Weight files that unpickle when loaded: torch.load of a crafted file runs arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Environment variables that hold credentials: their values are masked in any message shown or saved.
SECRET_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "WANDB_API_KEY")
HF_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{8,}")


class DiskSpaceError(ConfigError):
    """Not enough free disk space for what is about to be written; the message gives both figures."""


class UnsafeWeightsError(ConfigError):
    """A weights folder holds pickle files (or no safetensors file); the message says how to convert it."""


def check_disk_space(folder: str | os.PathLike, needed_bytes: float, what: str, fix: str = "") -> None:
    """Fail before writing when the disk holding `folder` has less free space than `needed_bytes`."""
    free = free_bytes(folder)
    if free < needed_bytes:
        raise DiskSpaceError(
            f"Not enough disk space for {what} in {folder}: it needs about {size_text(needed_bytes)} "
            f"and {size_text(free)} is free. {fix or 'Free some space and try again.'}"
        )


# Bytes a row of an answers table can take: the answer (about 4 characters a token, up to 6 with CSV quoting of
# non-ASCII text), the question, reference keywords and the metric columns.
ANSWER_BYTES_PER_TOKEN = 6
ANSWER_ROW_BYTES = 2048
PLOT_BYTES = 2**20


def check_answers_space(run_dir: str | os.PathLike, answers: int, max_new_tokens: int, what: str) -> None:
    """Before generating: the disk holding run_dir has room for the table of `answers` rows (and its plots), so a
    full disk stops the step before the generation, not after it."""
    needed = answers * (max_new_tokens * ANSWER_BYTES_PER_TOKEN + ANSWER_ROW_BYTES) + PLOT_BYTES
    check_disk_space(run_dir, needed, f"{what} ({answers:,} answers of up to {max_new_tokens} tokens)",
                     "Free some space (old runs' checkpoints/ folders, exports) or choose a run_dir on another disk.")


def refuse_pickle_weights(folder: str | os.PathLike) -> None:
    """An adapter folder is loaded only from adapter_model.safetensors; pickle weight files are refused."""
    folder = Path(folder)
    pickles = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeWeightsError(
            f"{folder} holds pickle weight files ({', '.join(pickles)}): loading them can run arbitrary code, so they "
            f"are refused. Keep only {ADAPTER_WEIGHTS}: load the adapter where you trust it and save it again with "
            "save_pretrained(..., safe_serialization=True), or retrain it here."
        )
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise UnsafeWeightsError(
            f"{folder} has no {ADAPTER_WEIGHTS}: an adapter is loaded only from safetensors weights. "
            "Train it again (notebook 05 or `python -m semifinetune train`)."
        )


def secret_values() -> list[str]:
    """The credential values set in this process's environment (long enough to be real)."""
    return [value for name in SECRET_VARIABLES if len(value := os.environ.get(name, "")) >= 8]


def scrub(text: str, secrets: list[str] | None = None) -> str:
    """The text with credential values (environment tokens, `secrets`, anything shaped like hf_...) masked."""
    for secret in [*secret_values(), *(secrets or [])]:
        if secret:
            text = text.replace(secret, "***")
    return HF_TOKEN_PATTERN.sub("hf_***", text)


def trained_adapter_dir(run_dir: str | os.PathLike) -> Path:
    """run_dir/adapter, checked to hold a trained adapter in safetensors, before any model loads."""
    folder = runs.run_path(run_dir, runs.ADAPTER)
    checkpoints = runs.run_path(run_dir, runs.CHECKPOINTS)
    if not (folder / "adapter_config.json").exists() and any(checkpoints.glob("checkpoint-*")):
        raise ConfigError(
            f"{folder} does not exist: training in this run stopped before it saved the adapter (its checkpoints are "
            f"in {checkpoints}). Finish it with notebook 05's resume=True or `python -m semifinetune train --run-dir "
            f"{run_dir} --resume`."
        )
    if not (folder / "adapter_config.json").exists():
        raise ConfigError(
            f"{folder}/adapter_config.json does not exist: there is no trained adapter in this run. "
            f"Run notebook 05_train or `python -m semifinetune train --run-dir {run_dir}` first."
        )
    refuse_pickle_weights(folder)
    return folder
