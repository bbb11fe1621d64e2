"""Training through `accelerate launch`, the way data-parallel runs start, in one process on one GPU.

It covers what a data-parallel run adds before the gradients meet: the launcher's environment (LOCAL_RANK picks the
GPU the 4-bit model loads onto), the effective batch printed across processes, the first process writing the run's
files, and a checkpoint resumed through the same command. Gradient averaging across GPUs needs a second GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _launch(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "semifinetune", "train", "--run-dir", str(run_dir), *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def test_accelerate_launch_trains_writes_the_run_and_resumes(r1_random, tmp_path, small_eval):
    from semifinetune import runs
    from semifinetune.config import save_config
    from semifinetune.data import prepare_data
    from semifinetune.pipeline import setup

    run_dir = tmp_path / "run"
    cfg, _ = setup(run_dir, "t4", {"model_name": str(r1_random), "max_steps": 4, "save_steps": 4, "eval_steps": 4,
                                   "logging_steps": 1, "eval_file": small_eval})
    prepare_data(run_dir)
    first = _launch(run_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    per_device, accumulation = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
    assert (f"effective batch {per_device} per device x {accumulation} accumulation x 1 process(es) = "
            f"{per_device * accumulation}") in first.stdout
    assert (run_dir / runs.ADAPTER / "adapter_model.safetensors").exists()
    assert (run_dir / runs.CHECKPOINTS / "checkpoint-4" / "trainer_state.json").exists()

    cfg.max_steps = 6  # train on from the checkpoint
    save_config(cfg, run_dir)
    resumed = _launch(run_dir, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = json.loads(runs.run_path(run_dir, runs.TRAIN_LOG).read_text())
    assert log["stats"]["global_step"] == 6 and log["stats"]["session_steps"] == 2
    assert log["stats"]["resumed_from"].endswith("checkpoint-4")
    assert [e["step"] for e in log["train_loss"]] == [1, 2, 3, 4, 5, 6]
