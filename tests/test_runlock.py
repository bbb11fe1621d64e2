"""One process at a time per run directory: a second is refused with the holder's PID, a killed holder leaves no
lock, processes working for the holder get through, and a run_dir that cannot hold a run stops in words."""

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
from semifinetune.config import ConfigError
from semifinetune.runlock import LOCK_FILE, RunDirBusyError, run_lock

ROOT = Path(__file__).resolve().parent.parent

# Holds run_dir's lock as `train` does, says so on stdout, then waits to be killed; with a child command, runs it while
# holding (the way papermill's kernels run under `notebooks`) and prints its exit status.
HOLDER = """
import subprocess, sys, time
from semifinetune.runlock import run_lock
with run_lock(sys.argv[1], "train"):
    print("held", flush=True)
    if len(sys.argv) > 2:
        print(subprocess.run([sys.executable, "-c", sys.argv[2], sys.argv[1]]).returncode, flush=True)
    time.sleep(600)
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def holder(tmp_path):
    """Start a process holding tmp_path/run; yields (run_dir, process) and kills it afterwards."""
    started = []

    def start(child: str = ""):
        run_dir = tmp_path / "run"
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), *([child] if child else [])],
                                stdout=subprocess.PIPE, text=True, env=_env())
        assert proc.stdout.readline().strip() == "held"
        started.append(proc)
        return run_dir, proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()


def test_a_second_process_is_refused_with_the_holders_pid_and_nothing_is_written(holder, capsys):
    from semifinetune.cli import main

    run_dir, proc = holder()
    before = sorted(p.name for p in run_dir.iterdir())
    for argv in (["setup", "--run-dir", str(run_dir), "--profile", "tiny", "--overwrite"],
                 ["run", "--run-dir", str(run_dir), "--profile", "tiny", "--overwrite"],
                 ["train", "--run-dir", str(run_dir), "--resume"],
                 ["prepare-data", "--run-dir", str(run_dir)],
                 ["evaluate", "--run-dir", str(run_dir)],
                 ["sweep", "--run-dir", str(run_dir)],
                 ["export", "--run-dir", str(run_dir), "--format", "adapter"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"is in use by process {proc.pid} (train: " in err and f"kill {proc.pid}" in err, err
        assert "resume=True" not in err and "--resume`" not in err  # no advice that sends it into the running one
    assert sorted(p.name for p in run_dir.iterdir()) == before == [LOCK_FILE]


def test_a_killed_holder_leaves_no_lock(holder):
    run_dir, proc = holder()
    with pytest.raises(RunDirBusyError):
        with run_lock(run_dir, "evaluate"):
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with run_lock(run_dir, "evaluate") as path:  # the kernel dropped the lock with the process: nothing to delete
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_processes_started_by_the_holder_work_under_its_lock(holder):
    """papermill's kernels under `notebooks` are the holder's descendants: they pass; the holder still holds."""
    child = "import sys; from semifinetune.runlock import run_lock\nwith run_lock(sys.argv[1], 'setup'): pass"
    run_dir, proc = holder(child)
    assert proc.stdout.readline().strip() == "0"
    with pytest.raises(RunDirBusyError, match=f"process {proc.pid}"):
        with run_lock(run_dir, "setup"):
            pass


def test_steps_inside_a_step_share_its_lock(tmp_path):
    import fcntl

    with run_lock(tmp_path / "run", "run") as path:
        with run_lock(tmp_path / "run", "train"):  # run -> setup -> train in one process: no refusal
            pass
        with open(path) as other, pytest.raises(BlockingIOError):  # still held after the inner step ends
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(path) as other:  # released on the way out
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_concurrent_run_leaves_the_running_ones_config_alone(tmp_path):
    """The refused `run --overwrite` arrives while `train` runs: config.json stays the one the adapter trains under."""
    from semifinetune.cli import main
    from semifinetune.data import prepare_data
    from semifinetune.pipeline import setup

    run_dir = tmp_path / "run"
    setup(run_dir, "tiny", {"max_steps": 400, "save_steps": 100, "eval_steps": 100})
    prepare_data(run_dir)
    config = (run_dir / runs.CONFIG).read_text()
    proc = subprocess.Popen([sys.executable, "-m", "semifinetune", "train", "--run-dir", str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(), cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while not (run_dir / runs.CHECKPOINTS).exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert main(["run", "--run-dir", str(run_dir), "--profile", "tiny", "--overwrite", "--set", "learning_rate=0.002"]) == 2
        assert main(["train", "--run-dir", str(run_dir), "--resume"]) == 2
        assert (run_dir / runs.CONFIG).read_text() == config
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()


def test_a_run_dir_that_is_a_file_stops_in_words(tmp_path, capsys):
    from semifinetune.cli import main

    path = tmp_path / "notes.txt"
    path.write_text("not a run")
    assert main(["setup", "--run-dir", str(path), "--profile", "tiny"]) == 2
    assert f"run_dir {path} is a file, not a folder" in capsys.readouterr().err
    assert path.read_text() == "not a run"


def test_a_run_dir_that_cannot_be_written_stops_in_words(tmp_path, monkeypatch, capsys):
    """As the OS refuses a read-only folder (EROFS, or EACCES for a user without write permission)."""
    import errno

    from semifinetune.cli import main

    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(LOCK_FILE):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    assert main(["setup", "--run-dir", str(tmp_path / "run"), "--profile", "tiny"]) == 2
    err = capsys.readouterr().err
    assert f"run_dir {tmp_path / 'run'} is not writable (Read-only file system" in err and "choose a folder" in err
    assert not (tmp_path / "run" / runs.CONFIG).exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders; the test above "
                    "gives the OS's refusal on every machine")
def test_a_read_only_run_dir_stops_before_evaluate_generates(tiny_run, tmp_path, capsys):
    import shutil

    from semifinetune.cli import main

    run_dir = tmp_path / "ro"
    shutil.copytree(tiny_run, run_dir)
    (run_dir / LOCK_FILE).unlink(missing_ok=True)
    run_dir.chmod(0o555)
    try:
        assert main(["evaluate", "--run-dir", str(run_dir)]) == 2
        assert "is not writable (Permission denied" in capsys.readouterr().err
    finally:
        run_dir.chmod(0o755)


def test_a_missing_run_dir_is_not_created_by_a_later_step(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        from semifinetune.evaluate import compare_base_tuned

        compare_base_tuned(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()
