"""Colab's install cell timed in three fresh runtimes: without the wheel cache, the first with it, and a later one.

    python benchmarks/bench_colab_reinstall.py --out benchmarks/results/colab_reinstall.json [--torch 2.9.0]

Each runtime is a fresh venv (Python 3.12, as on Colab) holding torch's whole stack as metadata, as a Colab runtime
has it installed (check_colab_install.make_runtime), plus `packaging`; its own empty pip cache (a new runtime has
none); and a stand-in google.colab whose drive.mount makes a folder, the Drive stand-in that the runtimes share.
In each, the install cell's own call, `prepare_colab()`, runs and is timed:
  1. Drive off (SEMIFINETUNE_DRIVE=off): every package from PyPI, nothing kept: the install cell before the cache;
  2. Drive on, its wheel cache empty: from PyPI, the wheels kept on the Drive stand-in;
  3. a fresh runtime, Drive on: from the kept wheels alone.
The runtimes lack the packages a real Colab runtime brings (numpy, pandas, matplotlib, ...), so each installs more
than on Colab; the Drive stand-in is local disk, faster to read than Drive. Needs PyPI; this machine's pip
configuration is left out (check_colab_install.pip_env).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from check_colab_install import PYTHON, make_runtime, pip_env  # noqa: E402

STAND_IN = {
    "google/colab/__init__.py": "from . import drive\n",
    "google/colab/drive.py": "import os\n\n\ndef mount(mountpoint, **kwargs):\n"
                             "    os.makedirs(os.path.join(mountpoint, 'MyDrive'), exist_ok=True)\n",
}
RUNTIMES = {"no_cache": False, "first_with_cache": True, "later_runtime": True}  # name: Drive on
CELL = ("import sys; sys.path[:0] = sys.argv[1:3]; import google.colab; "
        "from semifinetune.colab import prepare_colab; prepare_colab()")


def stand_in(folder: Path) -> Path:
    """A folder for sys.path holding the stand-in google.colab (drive.mount makes MyDrive under the mount point)."""
    for name, text in STAND_IN.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def runtime_install(folder: Path, torch_version: str, fake: Path, drive: str) -> dict:
    """A fresh runtime, then the install cell's call in it, timed; its output's [install] lines."""
    venv_python, stack = make_runtime(folder / "venv", torch_version)
    env = {**pip_env(), "SEMIFINETUNE_DRIVE": drive, "PIP_CACHE_DIR": str(folder / "pip-cache")}
    subprocess.run([str(venv_python), "-m", "pip", "install", "-q", "packaging"], check=True, env=env)
    start, used = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([str(venv_python), "-c", CELL, str(fake), str(ROOT)], capture_output=True, text=True,
                            env=env, cwd=folder)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the install's processes: on a machine shared with other work, nearer its time on an idle one
    cpu = (after.ru_utime - used.ru_utime) + (after.ru_stime - used.ru_stime)
    if result.returncode:
        raise RuntimeError(f"the install cell failed:\n{(result.stdout + result.stderr)[-3000:]}")
    installed = subprocess.run([str(venv_python), "-m", "pip", "list", "--format", "json"], capture_output=True,
                               text=True, env=env, check=True)
    return {"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "torch": stack["torch"], "distributions": len(json.loads(installed.stdout)),
            "lines": [line for line in result.stdout.splitlines() if line.startswith("[install]")]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--torch", default="2.9.0", help="the runtime's torch (default 2.9.0, Colab's in late 2025)")
    parser.add_argument("--drive", type=Path, help="keep the Drive stand-in here (default: a temporary folder)")
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES), help="which runtimes to time")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="colab-reinstall-") as scratch:
        scratch = Path(scratch)
        fake, mount = stand_in(scratch / "fake"), args.drive or scratch / "drive"
        for name in args.runtimes:
            rows[name] = runtime_install(scratch / name, args.torch, fake, str(mount) if RUNTIMES[name] else "off")
            rows[name]["load_average"] = round(__import__("os").getloadavg()[0], 1)
            print(f"{name}: {rows[name]['seconds']} s ({rows[name]['cpu_seconds']} s of CPU)", flush=True)
        wheels = mount / "MyDrive" / "semifinetune" / "cache" / "wheels"
        kept = sorted(wheels.glob("*.whl"), key=lambda p: -p.stat().st_size)
        cache = {"wheels": len(kept), "mb": round(sum(p.stat().st_size for p in kept) / 1e6, 1),
                 "largest": [f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in kept[:8]]}
    python = PYTHON if Path(PYTHON).exists() else sys.executable
    result = {"benchmark": "colab_reinstall", "python": subprocess.run([python, "--version"], capture_output=True,
                                                                       text=True).stdout.strip(),
              "date": time.strftime("%Y-%m-%d"), "cores": __import__("os").cpu_count(), "wheel_cache": cache, **rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v["seconds"] if isinstance(v, dict) and "seconds" in v else v for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
