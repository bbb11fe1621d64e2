"""Finishing a run whose training steps all ran but which was stopped before its adapter and log were written.

A kill during the held-out loss or the adapter's save leaves checkpoints that end training and no adapter. Resuming
the trainer from such a checkpoint trains one step past it (transformers checks max_steps only after a step), so
`train --resume` restores the trainer from it instead: its state, and the weights the run keeps, then goes on
with the held-out loss, the adapter and the log exactly as the uninterrupted run did.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import ConfigError, RunConfig

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def training_ended(checkpoint: Path, cfg: RunConfig) -> bool:
    """The checkpoint was saved as training ended under this config: at max_steps, or as early stopping stopped it
    with the same max_steps and patience (a run whose max_steps was raised since trains on)."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    if state["global_step"] >= cfg.max_steps:
        return True
    stopping = state.get("stateful_callbacks", {}).get("EarlyStoppingCallback", {})
    patience = stopping.get("args", {}).get("early_stopping_patience")
    counter = stopping.get("attributes", {}).get("early_stopping_patience_counter", 0)
    return (bool(patience) and patience == cfg.early_stopping_patience and counter >= patience
            and state.get("max_steps") == cfg.max_steps)


def restore_ended_training(trainer, checkpoint: Path, checkpoints: Path, session) -> dict:
    """Put the trainer where it stood when training ended: the state saved in `checkpoint` and the weights the run
    keeps (the best checkpoint's where it chooses by validation, else these). `session` (the stats callback) starts
    there. Returns trainer.train()'s metrics for a session of no steps."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState

    state = trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    kept = Path(checkpoint)
    if trainer.args.load_best_model_at_end and state.best_model_checkpoint:
        kept = Path(checkpoints) / Path(state.best_model_checkpoint).name  # saved as a path from the cwd of the time
    if not (kept / ADAPTER_WEIGHTS).is_file():
        raise ConfigError(f"{kept}, the checkpoint whose weights this run keeps, is missing or incomplete: train again "
                          "from scratch with overwrite=True (--overwrite).")
    loaded = set_peft_model_state_dict(trainer.model, load_file(kept / ADAPTER_WEIGHTS))
    if loaded.unexpected_keys:
        raise ConfigError(f"{kept / ADAPTER_WEIGHTS} does not fit this model's LoRA layers ({loaded.unexpected_keys[:3]}...).")
    session.start_step, session.start_tokens, session.start_log = (
        state.global_step, state.num_input_tokens_seen, len(state.log_history))
    print(f"{checkpoint} ended training at step {state.global_step}: the run is finished from it (held-out loss, "
          f"adapter of step {state.best_global_step or state.global_step}, log); no step is trained again.", flush=True)
    return {"train_runtime": 0.0}
