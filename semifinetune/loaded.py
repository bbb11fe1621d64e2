"""The base model with a run's LoRA adapter, loaded once per process and kept for the next caller.

Notebook 06 and `python -m semifinetune run` evaluate, compare retrieval, sweep and open the playground on the same
run; each loaded the model again, several seconds apiece for R1-1.5B in 4-bit on a GPU. At most one pair is held:
another key (another adapter, a retrained one, other loading settings) drops it before loading, so this module never
holds two models on the GPU. Callers only generate with it; whatever would change its weights (a merge, training)
loads its own model, and train(), load_baseline() and the merging exports call forget() first to free the GPU for it.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

from .config import RunConfig
from .safety import ADAPTER_WEIGHTS, trained_adapter_dir

# The RunConfig fields models.load_model reads (check_loadable, _load_transformers, _load_unsloth): another value
# loads another model. max_seq_length matters to Unsloth only, and is kept for every backend: a needless reload
# costs seconds, a wrong model wrong answers. The LoRA shape fields are not here: adapter_config.json gives it.
LOAD_FIELDS = ("model_name", "backend", "precision", "load_in_4bit", "max_seq_length")
# A retrain rewrites both; their size and mtime_ns tell a new adapter from the one held without reading it.
ADAPTER_FILES = (ADAPTER_WEIGHTS, "adapter_config.json")

_held: dict = {}  # key, model, tokenizer, padding_side: the one loaded pair, or empty


def load_key(cfg: RunConfig, run_dir: str | os.PathLike) -> tuple:
    """What decides the pair load_base_and_tuned returns: the adapter folder (checked by trained_adapter_dir, on every
    call), its files' size and mtime_ns, the LOAD_FIELDS, and the folder a local model_name resolves to."""
    adapter = trained_adapter_dir(run_dir).resolve()
    stats = {name: (adapter / name).stat() for name in ADAPTER_FILES}
    files = tuple((name, stat.st_size, stat.st_mtime_ns) for name, stat in stats.items())
    local = Path(cfg.model_name).expanduser()
    where = str(local.resolve()) if local.is_dir() else ""  # a relative path names another folder after a chdir
    return str(adapter), files, tuple(getattr(cfg, field) for field in LOAD_FIELDS), where


def base_and_tuned(cfg: RunConfig, run_dir: str | os.PathLike):
    """(PeftModel, tokenizer) for this run: the held pair where its key matches and it is as loaded, else a new load."""
    key = load_key(cfg, run_dir)  # before any model loads: a missing or pickled adapter fails here
    if _held.get("key") == key and as_loaded(_held["model"]):
        _held["tokenizer"].padding_side = _held["padding_side"]
        return _held["model"], _held["tokenizer"]
    forget()  # the old pair's GPU memory is freed before the new one is allocated
    model, tokenizer = _load(cfg, Path(key[0]))  # key[0]: the adapter folder, resolved
    _held.update(key=key, model=model, tokenizer=tokenizer, padding_side=tokenizer.padding_side)
    return model, tokenizer


def as_loaded(model) -> bool:
    """The held model in the state a fresh load gives (eval mode, the one adapter active and enabled, not merged):
    True after putting it in eval mode; False where a caller left it otherwise, and it is loaded afresh."""
    try:
        status = model.get_model_status()
    except ValueError:  # peft finds no LoRA layer: merge_and_unload() or unload() took them out
        return False
    if status.merged_adapters or status.enabled is not True or status.available_adapters != ["default"] \
            or status.active_adapters != ["default"]:
        return False  # merged, or inside disable_adapter() right now, or another adapter added: not as loaded
    model.eval()  # as PeftModel.from_pretrained(is_trainable=False) leaves it; generate() restores what it finds
    return True


def forget() -> bool:
    """Drop the held pair and free its GPU memory; returns whether one was held. A caller's own reference stays valid."""
    if not _held:
        return False
    _held.clear()
    gc.collect()  # any reference cycle through the model's modules is broken now, not at some later collection
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # back to the driver: the next load, or another process, can have it
    return True


def held_key() -> tuple | None:
    """The key of the pair held now, or None: what tests and a curious user can check."""
    return _held.get("key")


def _load(cfg: RunConfig, adapter: Path):
    from peft import PeftModel

    from .models import load_model

    model, tokenizer = load_model(cfg)
    backend = model.semifinetune_backend
    # One copy of the base weights serves both models (the 1.5B model twice would double GPU memory).
    tuned = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    tuned.semifinetune_backend = backend
    return tuned, tokenizer
