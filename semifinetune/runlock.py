"""One process at a time in a run directory: an OS lock on run_dir/run.lock, held while a step writes there.

The lock is the kernel's (fcntl.flock): it goes when the process holding it ends, however it ends, so a crash or a
kill leaves nothing to clean up; the file itself stays and only says who held it last. A second process is refused
with the holder's PID and command. Processes working for the holder are let through: the notebooks' kernels that
papermill starts under `notebooks` (descendants of the holder), and the ranks of one data-parallel launch (children
of one launcher). Taking the lock is also where a run_dir that is a file or cannot be written to is caught, before
any model loads.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import json
import os
import shlex
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

from .config import ConfigError

LOCK_FILE = "run.lock"
_held: dict[str, list] = {}  # lock path -> [file descriptor, depth]: steps call steps (run -> setup -> ...)


class RunDirBusyError(ConfigError):
    """Another process is working in this run directory; the message names it."""


def holds_run_dir(step: str, create: bool = False):
    """Decorator: the function (which takes run_dir) runs holding run_dir's lock. create: the step starts a run
    (setup, run, notebooks) and makes run_dir; the other steps leave a missing run_dir to their own message."""

    def wrap(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args, **kwargs):
            run_dir = signature.bind_partial(*args, **kwargs).arguments["run_dir"]
            with run_lock(run_dir, step, create):
                return function(*args, **kwargs)

        return locked

    return wrap


@contextmanager
def run_lock(run_dir: str | os.PathLike, step: str, create: bool = True):
    """Hold run_dir for this process while the block runs; refuse, naming the holder, where another process holds it."""
    if not create and not Path(run_dir).exists():
        yield None  # nothing there to guard: the step says what is missing
        return
    new = not Path(run_dir).exists()
    path = lock_path(run_dir)
    key = str(path)
    if key in _held:
        _held[key][1] += 1
        try:
            yield path
        finally:
            _held[key][1] -= 1
        return
    fd = _acquire(path, run_dir, step)
    _held[key] = [fd, 1]
    try:
        yield path
    except BaseException:
        if new and fd is not None and [p.name for p in path.parent.iterdir()] == [LOCK_FILE]:
            path.unlink()  # a step that failed before writing anything leaves no empty run_dir behind
            path.parent.rmdir()
        raise
    finally:
        del _held[key]
        if fd is not None:
            os.close(fd)  # closing the last descriptor releases the lock


def lock_path(run_dir: str | os.PathLike) -> Path:
    """run_dir/run.lock, run_dir created; a run_dir that is a file or cannot be written to stops here, in words."""
    folder = Path(run_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"run_dir {folder} is a file, not a folder: choose a folder path (a new name is created).")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"run_dir {folder} cannot be created ({err.strerror}): choose a folder you can write to.") from None
    return folder.resolve() / LOCK_FILE


def _acquire(path: Path, run_dir, step: str) -> int | None:
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the run goes on unguarded, and says so
        print(f"note: {run_dir} is not locked on this system: run one step at a time in it.", file=sys.stderr)
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise ConfigError(f"run_dir {run_dir} is not writable ({err.strerror}: {path}): choose a folder you can write "
                          "to, or make this one writable.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_record(fd)
        os.close(fd)
        if _works_for(holder):
            return None  # the holder's own kernel or a rank of its launch: the holder's lock covers it
        raise RunDirBusyError(busy_message(run_dir, step, holder)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(_record(step)) + "\n").encode(), 0)
    return fd


def _record(step: str) -> dict:
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return {
        "pid": os.getpid(),
        "step": step,
        "command": shlex.join(sys.argv)[:300],
        "host": socket.gethostname(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "launcher": os.getppid() if distributed else None,  # ranks of one launch share it
    }


def _read_record(fd: int) -> dict:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        record = {}
    return record if isinstance(record, dict) else {}


def _works_for(holder: dict) -> bool:
    """This process was started by the holder (a kernel under papermill), or is another rank of its launch."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname():
        return False
    import psutil

    try:
        ancestors = {p.pid for p in psutil.Process().parents()}
    except psutil.Error:
        return False
    if pid in ancestors:
        return True
    launcher = holder.get("launcher")
    return launcher is not None and launcher == os.getppid() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def busy_message(run_dir, step: str, holder: dict) -> str:
    """Who holds run_dir, since when, and what to do: wait for it, stop it, or use another run_dir."""
    pid = holder.get("pid")
    if not isinstance(pid, int):
        who = "another process (it has just started and not yet written its name)"
        stop = ""
    else:
        started = f", started {holder['started']}" if holder.get("started") else ""
        host = f" on {holder['host']}" if holder.get("host") not in (None, socket.gethostname()) else ""
        who = f"process {pid}{host} ({holder.get('step', '?')}: `{holder.get('command', '?')}`{started})"
        stop = f", or stop it (kill {pid}) and resume afterwards" if not host else ""
    return (f"{run_dir} is in use by {who}, so {step} was not started. One process at a time works in a run "
            f"directory: wait for that one to finish{stop}, or choose another run_dir. (A process that has ended "
            f"holds no lock: nothing needs deleting.)")
