"""A full disk stops a step with a message naming the folder and the space, the earlier results as they were and no
temporary file left. First through the write helpers with the OS's error injected (any machine), then on a real file
system filled to the last byte (a small tmpfs: root only)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from semifinetune import atomic, runs
from semifinetune.atomic import DiskFullError
from semifinetune.safety import DiskSpaceError


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob("*") if p.name.endswith((".tmp", ".partial")))


def test_a_set_of_results_is_replaced_all_or_none(tmp_path, monkeypatch):
    """The disk fills at the third of four files: none of the four is replaced, no temporary file stays."""
    old = {tmp_path / name: f"old {name}".encode() for name in ("sweep.csv", "summary.csv", "recommended.json", "h.png")}
    for path, data in old.items():
        path.write_bytes(data)
    real_fsync, calls = os.fsync, []

    def filling(fd):  # the third file's bytes reach the disk when it is flushed: there it fills
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", filling)
    with pytest.raises(DiskFullError) as err:
        atomic.write_files_atomic({path: b"new " * 1000 for path in old}, "the sweep's tables")
    assert f"The disk holding {tmp_path} filled while writing the sweep's tables: it needs about 0.02 MiB" in str(err.value)
    assert "earlier results are as they were" in str(err.value)
    assert {path: path.read_bytes() for path in old} == old and _leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    Exception("Error while serializing: I/O error: No space left on device (os error 28)"),  # safetensors' own type
])
def test_a_folder_written_by_a_library_stops_in_words_when_the_disk_fills(error, tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "adapter_model.safetensors").write_bytes(b"old weights")
    with pytest.raises(DiskFullError, match=f"The disk holding {tmp_path} filled while writing adapter: it filled after"):
        with atomic.staged(target) as staging:
            (staging / "README.md").write_text("model card")
            raise error
    assert (target / "adapter_model.safetensors").read_bytes() == b"old weights" and _leftovers(tmp_path) == []


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(ValueError, match="not a disk"):
        with atomic.staged(tmp_path / "adapter"):
            raise ValueError("not a disk problem")


def test_evaluate_checks_the_space_for_its_answers_before_any_model_loads(tiny_run, tmp_path, monkeypatch):
    from semifinetune import evaluate

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(evaluate, "load_base_and_tuned", no_model)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 2**19, 2**19))
    with pytest.raises(DiskSpaceError, match=r"evaluation.csv \(12 answers of up to 16 tokens\).*0.50 MiB is free"):
        evaluate.compare_base_tuned(tiny_run)


# --- a real file system, filled ---


@pytest.fixture
def small_disk(tmp_path):
    """A 192 MiB tmpfs at tmp_path/disk (training checks for 4 x 32 MiB of checkpoint room first), unmounted
    afterwards; fill(keep) leaves `keep` bytes free on it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.name != "posix" or os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=192m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("filling a real disk needs a small file system: mounting a tmpfs needs root (the tests above "
                    "inject the OS's error on any machine)")

    def fill(keep: int = 0) -> Path:
        filler = mount / "filler"
        with open(filler, "ab") as file:
            free = shutil.disk_usage(mount).free
            if free > keep:
                file.write(b"\0" * (free - keep))
        return filler

    try:
        yield mount, fill
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_evaluate_on_a_full_disk_keeps_the_earlier_table(small_disk, tiny_run, monkeypatch, capsys):
    from semifinetune import evaluate
    from semifinetune.cli import main

    mount, fill = small_disk
    run_dir = mount / "run"
    shutil.copytree(tiny_run, run_dir)
    earlier = "model,question_id,recall\ntuned,0,1.0\n"
    (run_dir / runs.EVALUATION).write_text(earlier)
    real_write = atomic._write_temporary

    def filled_meanwhile(path, data):  # another process fills the disk between the checks and the write
        fill(keep=0)
        return real_write(path, data)

    monkeypatch.setattr(atomic, "_write_temporary", filled_meanwhile)
    with pytest.raises(DiskFullError, match=f"The disk holding {run_dir} filled while writing evaluation.csv: it needs "
                                            "about 0.0"):
        evaluate.compare_base_tuned(run_dir, progress=False)
    assert (run_dir / runs.EVALUATION).read_text() == earlier and _leftovers(run_dir) == []
    monkeypatch.undo()
    assert main(["evaluate", "--run-dir", str(run_dir)]) == 2  # full now: the check before generating says so
    assert f"Not enough disk space for evaluation.csv (12 answers of up to 16 tokens) in {run_dir}" in capsys.readouterr().err
    assert (run_dir / runs.EVALUATION).read_text() == earlier


def test_training_on_a_disk_that_fills_at_a_checkpoint_resumes_once_there_is_space(small_disk, capsys):
    """The disk fills after checkpoint-3: the save of checkpoint-6 stops in words, the cut-off checkpoint is removed,
    and once space is freed `train --resume` finishes from checkpoint-3."""
    from transformers import TrainerCallback

    from semifinetune import train as train_module
    from semifinetune.data import prepare_data
    from semifinetune.pipeline import setup

    mount, fill = small_disk
    run_dir = mount / "run"
    cfg, _ = setup(run_dir, "tiny", {"max_steps": 6, "save_steps": 3, "eval_steps": 3})
    prepare_data(run_dir)
    filled = []

    class FillAfterFirstCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 3:
                filled.append(fill(keep=0))

    with pytest.raises(DiskFullError) as err:
        train_module.train(cfg, run_dir, callbacks=[FillAfterFirstCheckpoint()])
    message = str(err.value)
    assert f"The disk holding {run_dir / runs.CHECKPOINTS} filled while training saved a checkpoint" in message
    assert "--resume` continues from checkpoint-3" in message
    assert [p.name for p in train_module.checkpoint_folders(run_dir)] == ["checkpoint-3"]
    filled[0].unlink()
    stats = train_module.train(cfg, run_dir, resume=True)
    assert stats["global_step"] == 6 and stats["resumed_from"].endswith("checkpoint-3")
    assert json.loads((run_dir / runs.TRAIN_LOG).read_text())["stats"]["global_step"] == 6
    assert _leftovers(run_dir) == []


def test_training_again_on_a_full_disk_keeps_the_old_checkpoints(tmp_path, monkeypatch):
    """A fresh run (overwrite) checks the space before clearing the old checkpoints, counting theirs as free."""
    import torch

    from semifinetune import train as train_module
    from semifinetune.config import make_config

    monkeypatch.setattr(train_module, "build_trainer", lambda *a, **k: pytest.fail("the trainer was built"))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 2**20, 2**20))
    old = tmp_path / runs.CHECKPOINTS / "checkpoint-3"
    old.mkdir(parents=True)
    (old / "optimizer.pt").write_bytes(b"\0" * 2**20)  # 1 MiB to be freed: 128 - 1 MiB needed, 1 MiB free
    with pytest.raises(DiskSpaceError, match=r"needs about 127\.00 MiB and 1\.00 MiB is free"):
        train_module.fit(torch.nn.Linear(10, 10), None, make_config("tiny"), tmp_path, overwrite=True,
                         report={"cuda_available": False, "bf16_supported": False})
    assert (old / "optimizer.pt").stat().st_size == 2**20
