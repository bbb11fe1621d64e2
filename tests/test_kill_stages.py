"""A training process killed at each stage after its steps began (a checkpoint's save, the held-out loss, the adapter's
save, the log's write) leaves a run that `train --resume` finishes, with the adapter and the figures of a run that
was never interrupted. (A kill between steps: test_interruption.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from semifinetune import runs

ROOT = Path(__file__).resolve().parent.parent

# `train`, paused at one stage (argv[1]) with a line on stdout, so that the test's SIGKILL lands there.
STAGED_TRAIN = """
import sys, time
from transformers import PreTrainedTokenizerBase, Trainer
from semifinetune import train as T
from semifinetune.cli import main

stage = sys.argv[1]

def pause(name):
    if name == stage:
        print("at", name, flush=True)
        time.sleep(600)

def wrap(owner, attribute, name, when=lambda *a: True):
    real = getattr(owner, attribute)
    def paused(*args, **kwargs):
        if when(*args):
            pause(name)
        return real(*args, **kwargs)
    setattr(owner, attribute, paused)

# the last checkpoint's weights written, its optimizer and trainer state not yet
wrap(Trainer, "_save_optimizer_and_scheduler", "checkpoint save", lambda self, folder: folder.endswith("checkpoint-6"))
wrap(T, "final_held_out_loss", "held-out loss")
# the adapter's weights written into adapter.partial, its tokenizer files not yet
wrap(PreTrainedTokenizerBase, "save_pretrained", "adapter save", lambda self, folder, *a: str(folder).endswith("adapter.partial"))
wrap(T, "write_json_atomic", "log write", lambda path, data: str(path).endswith("train_log.json"))
sys.exit(main(sys.argv[2:]))
"""
STAGES = ["checkpoint save", "held-out loss", "adapter save", "log write"]
KEPT = ("global_step", "kept_step", "held_out_loss", "final_train_loss", "best_validation_recall", "tokens_seen")


def _prepared(run_dir):
    from semifinetune.data import prepare_data
    from semifinetune.pipeline import setup

    cfg, _ = setup(run_dir, "tiny", {"max_steps": 6, "save_steps": 3, "eval_steps": 3})
    prepare_data(run_dir)
    return cfg


def _adapter(run_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(runs.run_path(run_dir, runs.ADAPTER) / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The adapter and the figures of the same run trained without a stop."""
    from semifinetune.train import train

    run_dir = tmp_path_factory.mktemp("whole") / "run"
    stats = train(_prepared(run_dir), run_dir)
    return _adapter(run_dir), stats


@pytest.mark.parametrize("stage", STAGES)
def test_a_kill_at_each_stage_leaves_a_run_that_resume_finishes(stage, uninterrupted, tmp_path):
    import torch

    from semifinetune.train import train

    run_dir = tmp_path / "run"
    cfg = _prepared(run_dir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", STAGED_TRAIN, stage, "train", "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp_path)
    try:
        reached = any(line.strip() == f"at {stage}" for line in proc.stdout)  # stops at the line, or at the end
        assert reached, f"train ended without reaching {stage} (exit {proc.poll()})"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert not (runs.run_path(run_dir, runs.TRAIN_LOG)).exists()  # killed before the run was finished

    stats = train(cfg, run_dir, resume=True)

    weights, whole = uninterrupted
    assert {key: stats[key] for key in KEPT} == {key: whole[key] for key in KEPT}
    adapter = _adapter(run_dir)
    assert adapter.keys() == weights.keys() and all(torch.equal(adapter[k], weights[k]) for k in weights)
    log = json.loads(runs.run_path(run_dir, runs.TRAIN_LOG).read_text())
    assert log["stats"]["global_step"] == cfg.max_steps and log["train_loss"][-1]["step"] == cfg.max_steps
    left = [p.name for p in run_dir.rglob("*") if p.name.endswith((".partial", ".tmp"))]
    assert left == []


def test_a_run_stopped_after_its_steps_is_named_where_it_is_read(tmp_path):
    """evaluate, before the adapter exists, says how to finish the run rather than to train it first."""
    from semifinetune.config import ConfigError
    from semifinetune.safety import trained_adapter_dir

    checkpoint = tmp_path / runs.CHECKPOINTS / "checkpoint-6"
    checkpoint.mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"stopped before it saved the adapter.*train --run-dir .* --resume"):
        trained_adapter_dir(tmp_path)


@pytest.mark.parametrize("step, saved_max, counter, cfg_max, patience, ended", [
    (6, 6, 0, 6, 0, True),  # at max_steps
    (4, 6, 2, 6, 2, True),  # early stopping stopped it: patience used up
    (4, 6, 1, 6, 2, False),  # evaluations without improvement, patience left: training goes on
    (3, 6, 0, 6, 0, False),  # stopped otherwise (a callback, a kill before the next save): training goes on
    (6, 6, 0, 12, 0, False),  # max_steps raised since: trains on to 12
    (4, 6, 2, 12, 2, False),  # stopped early under the old max_steps, then raised: trains on
])
def test_which_checkpoints_end_training(step, saved_max, counter, cfg_max, patience, ended, tmp_path):
    import dataclasses

    from semifinetune.config import make_config
    from semifinetune.finish import training_ended

    callbacks = {"TrainerControl": {"args": {"should_training_stop": True}, "attributes": {}}}
    if patience:
        callbacks["EarlyStoppingCallback"] = {"args": {"early_stopping_patience": patience, "early_stopping_threshold": 0.0},
                                              "attributes": {"early_stopping_patience_counter": counter}}
    (tmp_path / "trainer_state.json").write_text(json.dumps(
        {"global_step": step, "max_steps": saved_max, "stateful_callbacks": callbacks, "log_history": []}))
    cfg = dataclasses.replace(make_config("tiny"), max_steps=cfg_max, early_stopping_patience=patience)
    assert training_ended(tmp_path, cfg) is ended
