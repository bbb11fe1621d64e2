"""A training process killed mid-run resumes from its last complete checkpoint and finishes; writes are atomic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from semifinetune import runs
from semifinetune.atomic import write_json_atomic

ROOT = Path(__file__).resolve().parent.parent

# `train` with each optimizer step slowed to 0.25 s (the tiny model's steps take ~5 ms, too fast to kill mid-run).
SLOW_TRAIN = """
import sys, time
from transformers import TrainerCallback
from semifinetune import train as train_module
from semifinetune.cli import main

class SlowSteps(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(0.25)

build = train_module.build_trainer
def slow_build(*args, **kwargs):
    trainer = build(*args, **kwargs)
    trainer.add_callback(SlowSteps())
    return trainer
train_module.build_trainer = slow_build
sys.exit(main(sys.argv[1:]))
"""


def env_with_project() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def test_sigkill_mid_run_then_resume_finishes(tmp_path):
    """max_steps 12, a checkpoint every 3: killed after checkpoint-3, a half-written checkpoint-6 left behind
    (as a kill during a save leaves it); `train --resume` skips it, continues from checkpoint-3 and reaches step 12."""
    from semifinetune.data import prepare_data
    from semifinetune.pipeline import setup
    from semifinetune.train import checkpoint_complete, latest_checkpoint

    run_dir = tmp_path / "run"
    setup(run_dir, "tiny", {"max_steps": 12, "save_steps": 3, "eval_steps": 3})
    prepare_data(run_dir)
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, "train", "--run-dir", str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env_with_project(), cwd=tmp_path)
    first = run_dir / runs.CHECKPOINTS / "checkpoint-3"
    deadline = time.time() + 120
    while not (first / "trainer_state.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read()[-2000:]  # still training: the kill lands mid-run
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not runs.run_path(run_dir, runs.ADAPTER).exists() and not runs.run_path(run_dir, runs.TRAIN_LOG).exists()
    assert latest_checkpoint(run_dir) == first

    partial = run_dir / runs.CHECKPOINTS / "checkpoint-6"  # a save cut off: weights half written, no trainer state
    partial.mkdir(exist_ok=True)
    (partial / "adapter_model.safetensors").write_bytes((first / "adapter_model.safetensors").read_bytes()[:100])
    (partial / "trainer_state.json").unlink(missing_ok=True)
    assert latest_checkpoint(run_dir) == first

    result = subprocess.run([sys.executable, "-m", "semifinetune", "train", "--run-dir", str(run_dir), "--resume"],
                            capture_output=True, text=True, env=env_with_project(), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoint-6 is incomplete (interrupted while saving): removed" in result.stdout
    stats = json.loads(runs.run_path(run_dir, runs.TRAIN_LOG).read_text())["stats"]
    assert stats["global_step"] == 12 and stats["session_steps"] == 9 and stats["resumed_from"] == str(first)
    assert (runs.run_path(run_dir, runs.ADAPTER) / "adapter_model.safetensors").stat().st_size > 1000
    assert checkpoint_complete(run_dir / runs.CHECKPOINTS / "checkpoint-12")


@pytest.mark.parametrize("missing", ["trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "truncated state"])
def test_incomplete_checkpoint_is_never_resumed_from(missing, tmp_path):
    from semifinetune.train import CHECKPOINT_FILES, discard_incomplete_checkpoints, latest_checkpoint

    folders = {}
    for step in (3, 6):
        folder = folders[step] = tmp_path / runs.CHECKPOINTS / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        for name in CHECKPOINT_FILES:
            (folder / name).write_text(json.dumps({"global_step": step}))
    assert latest_checkpoint(tmp_path) == folders[6]
    if missing == "truncated state":
        (folders[6] / "trainer_state.json").write_text('{"global_step": 6, "log_hi')
    else:
        (folders[6] / missing).unlink()
    assert latest_checkpoint(tmp_path) == folders[3]
    assert discard_incomplete_checkpoints(tmp_path) == ["checkpoint-6"]
    assert not folders[6].exists() and folders[3].exists()


def test_json_write_interrupted_keeps_the_old_file(tmp_path):
    path = tmp_path / "config.json"
    write_json_atomic(path, {"lora_r": 16})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"lora_r": 8, "bad": object()})  # fails half way through json.dump
    assert json.loads(path.read_text()) == {"lora_r": 16}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no stray temporary file


def test_adapter_save_interrupted_keeps_the_old_adapter(tmp_path):
    from semifinetune.train import save_adapter

    adapter = runs.run_path(tmp_path, runs.ADAPTER)
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"old weights")

    class Crashing:
        def save_pretrained(self, folder):
            Path(folder).mkdir(parents=True, exist_ok=True)  # as save_pretrained does
            (Path(folder) / "adapter_model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_adapter(Crashing(), None, tmp_path)
    assert (adapter / "adapter_model.safetensors").read_bytes() == b"old weights"
