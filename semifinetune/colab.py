"""Colab: each notebook gets its own runtime, so the run directory and the model cache live on Google Drive.

The install cell of every notebook calls `prepare_colab()` on Colab only: Google Drive is mounted, the working
directory becomes MyDrive/semifinetune, so a relative `run_dir` such as "runs/demo" is the same folder for notebooks
01-06 whatever runtime each runs in, and missing packages are installed (the runtime's torch kept,
semifinetune/install.py), their wheels kept on Drive so that the next runtime installs in seconds; models are cached
there too and downloaded once. Elsewhere nothing here runs.
Standard library only: the install cell imports it before the dependencies are installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .runs import LAST_RUN_ENV

MOUNT = "/content/drive"  # google.colab.drive's usual mount point; SEMIFINETUNE_DRIVE moves it (tests), "off" skips it
HOME = Path("MyDrive") / "semifinetune"  # under the mount: run directories (runs/...) and cache/
CACHE = "cache"
WHEELS = "wheels"  # under cache/: the wheels the install cell installed, for the next runtime's install
GPU_HINT = "On Colab: Runtime > Change runtime type > T4 GPU, then run the notebooks again from 01."


def on_colab() -> bool:
    """This kernel runs on Colab (Colab imports google.colab into every notebook's kernel)."""
    return "google.colab" in sys.modules


def drive_mount() -> str | None:
    """Where Google Drive is mounted: SEMIFINETUNE_DRIVE, else /content/drive; None when set to 'off'."""
    mount = os.environ.get("SEMIFINETUNE_DRIVE", MOUNT)
    return None if mount.lower() in ("off", "0", "none", "") else mount


def prepare_colab(unsloth: bool = False) -> Path | None:
    """The install cell on Colab: Drive for the run's files, then missing packages installed (torch untouched), from
    the wheels an earlier runtime kept on Drive where it installed the same (seconds instead of minutes)."""
    from .install import install, missing

    home = use_drive()
    lacking = missing(unsloth=unsloth)
    if lacking:
        install(unsloth=unsloth, wheels=home / CACHE / WHEELS if home else None)
    else:
        print("[install] every package is installed already.")
    return home


def drive_home() -> Path | None:
    """MyDrive/semifinetune under the mount, on Colab with Drive in use; None elsewhere."""
    mount = drive_mount()
    return Path(mount) / HOME if on_colab() and mount is not None else None


def use_drive() -> Path | None:
    """On Colab: mount Drive, work in MyDrive/semifinetune and cache models there; its path, or None elsewhere."""
    mount = drive_mount()
    if drive_home() is None:  # not Colab, or Drive turned off
        return None
    from google.colab import drive

    try:
        drive.mount(mount)
    except Exception as err:  # refused or timed out: Colab raises its own types, with a message worth keeping
        raise RuntimeError(
            f"Google Drive could not be mounted at {mount} ({err}). The notebooks keep run_dir and the model cache on "
            "Drive so that 02-06, each in its own runtime, find what 01 wrote: run this cell again and allow the access. "
            "(To work without Drive, run `import os; os.environ['SEMIFINETUNE_DRIVE'] = 'off'` first; run_dir then "
            "lives in this runtime only.)"
        ) from None
    home = Path(mount) / HOME
    cache = home / CACHE
    cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SEMIFINETUNE_CACHE", str(cache))  # the embedded and tiny models (models.cache_dir)
    os.environ.setdefault("HF_HOME", str(cache / "huggingface"))  # hub downloads: the t4 model, once for all notebooks
    # Drive's file system has no symlinks, so the hub cache keeps plain copies there; its warning about it is noise.
    os.environ.setdefault("HF_HUB_DISABLE_SYMLINKS_WARNING", "1")
    os.environ.setdefault(LAST_RUN_ENV, str(home / "runs" / ".last_run"))  # 02-06 open the run 01 wrote last
    os.chdir(home)  # a relative run_dir (and your own data files) resolve on Drive
    print(f"Google Drive mounted: a relative run_dir such as 'runs/demo' is in {home}, models are cached in "
          f"{os.environ['SEMIFINETUNE_CACHE']}, so notebooks in separate runtimes share them.")
    return home


def check_files_on_drive(cfg) -> None:
    """Notebook 01 on Colab: every data file of the run is on Drive or ships with the project; else why it must move.

    A file uploaded to /content (or into the project's clone) lives on the runtime's own disk, which Colab deletes with
    the runtime: it passes 01's checks, then notebook 04 in a fresh runtime cannot find it."""
    from dataclasses import fields

    from .config import ConfigError
    from .sources import split_source
    from .splits import locate

    if drive_home() is None:
        return
    drive = Path(drive_mount())
    local = {}  # key -> the file or folder it names; "auto" (sampled questions) and Hub ids live nowhere here
    for key in (f.name for f in fields(cfg) if f.name.endswith("_file")):
        path = Path(split_source(locate(getattr(cfg, key)))[0])
        if getattr(cfg, key) and path.exists():
            local[key] = path.resolve()
    problems = [_off_drive(key, getattr(cfg, key), path, drive) for key, path in local.items()]
    problems = [problem for problem in problems if problem]
    if problems:
        raise ConfigError("\n".join(problems))


def _off_drive(key: str, given: str, path: Path, drive: Path) -> str:
    """Why `key`'s file would be gone in the next runtime, or '' where it stays (anywhere on Drive, or shipped)."""
    if path.is_relative_to(drive.resolve()) or _shipped(path):
        return ""
    return (f"{key} {given!r} is {path}, on this runtime's own disk, which Colab deletes when the runtime ends: "
            f"notebooks 02-06 in their own runtimes would not find it. Move it to Google Drive (Files panel: "
            f"drive/MyDrive/semifinetune/) and set overrides={{'{key}': '{path.name}'}} in this notebook.")


def _shipped(path: Path) -> bool:
    """A file of the project's own checkout (tracked by git): every runtime's clone has it again."""
    import subprocess

    from .runs import PROJECT_ROOT

    if not path.is_relative_to(PROJECT_ROOT):
        return False
    try:
        tracked = subprocess.run(["git", "-C", str(PROJECT_ROOT), "ls-files", "--error-unmatch", str(path)],
                                 capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return True  # no git to ask: a file inside the project is taken as the project's own
    return tracked.returncode == 0 or "not a git repository" in tracked.stderr


def secret(name: str) -> str | None:
    """A Colab secret's value, read in this kernel (google.colab.userdata); None off Colab, when unset or refused.

    Only the notebook's own kernel can ask: a `!python ...` subprocess cannot, so the notebooks read secrets here."""
    if not on_colab():
        return None
    from google.colab import userdata

    try:
        return userdata.get(name) or None
    except Exception:  # SecretNotFoundError, NotebookAccessError (access refused), a timeout: no value from here
        return None


def gpu_hint() -> str:
    """What to do on a runtime without a GPU, where there is something to do (Colab); else empty."""
    return f" {GPU_HINT}" if on_colab() else ""
