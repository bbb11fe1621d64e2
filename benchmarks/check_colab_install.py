"""Prove that Colab's install cell never replaces the runtime's torch: pip dry runs against each torch Colab has shipped.

    python benchmarks/check_colab_install.py --out benchmarks/results/colab_install.json [--versions 2.9.1 2.15.0]

For each torch release from 2.9 to the newest on PyPI: a throwaway venv (Python 3.12, as on Colab) whose
site-packages holds that torch's whole stack as a runtime has it installed (torch, torchvision and torchaudio with
Colab's +cu126 label, its nvidia-* CUDA wheels, triton, numpy, ...: the set pip resolves for it, as fake dist-info
folders carrying the real metadata; no 2 GB download); then semifinetune.install.install() runs in that venv exactly as the install cell runs it, every
pip step with `--dry-run --report`, once as the default install and once with Unsloth. A step passes when its report
installs no torch, torchvision, torchaudio, triton or nvidia-* wheel and pip found no conflict. As a control, the
install cell's former command (`pip install -r requirements-gpu.txt`, Unsloth with its dependencies) runs in the same
venv: where it swaps torch, the check sees it. Needs PyPI (network); this machine's pip configuration (its local
indexes and torch cap) is left out, so pip sees what Colab's pip sees.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from semifinetune.install import normal, runtime_wheel  # noqa: E402

PYTHON = "/root/.pyenv/versions/3.12.1/bin/python3.12"  # Colab's Python; sys.executable where it is absent
FIRST = (2, 9)  # the oldest torch line checked: Colab's runtime in late 2025
CUDA_LABEL = "+cu126"  # Colab's torch carries a local version label; constraints must match it
# The install cell's former command: `%pip install -r requirements-gpu.txt -e .` (requirements-gpu.txt before
# requirements-colab.txt replaced it), Unsloth with all its dependencies.
FORMER_CELL = [
    "unsloth==2026.10.9", "transformers==5.17.0", "trl==1.15.0", "peft==0.21.0", "datasets==4.8.5",
    "accelerate==1.15.0", "bitsandbytes==0.50.2", "gguf==0.19.0", "psutil>=5.9", "pandas>=2.2", "matplotlib>=3.8",
    "ipywidgets>=8.1", "papermill>=2.6",
]


DEFAULT_STEPS = ("packages", "embedded-model")  # install()'s steps without Unsloth, as their reports are named


def runtime_wheels(report: dict) -> list[str]:
    """`name version` of each runtime wheel a pip --report would install."""
    return [f"{item['metadata']['name']} {item['metadata']['version']}" for item in report.get("install", [])
            if runtime_wheel(item["metadata"]["name"])]


def stack_requirements(torch_version: str) -> list[str]:
    """torch with the torchvision and torchaudio a runtime pairs with it (torchvision 0.(minor+15), torchaudio = torch)."""
    minor = int(torch_version.split(".")[1])
    return [f"torch=={torch_version}", f"torchvision==0.{minor + 15}.*", f"torchaudio=={torch_version}"]


def resolve_stack(venv_python: Path, torch_version: str, folder: Path) -> list[dict]:
    """The wheels a runtime holds for this torch (its CUDA libraries, triton, numpy, ...), as pip resolves them from
    metadata alone; torchaudio or torchvision are left out for a torch that has none on PyPI."""
    wanted = stack_requirements(torch_version)
    for attempt in (wanted, wanted[:2], wanted[:1]):
        report = folder / "stack.json"
        result = subprocess.run([str(venv_python), "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
                                 "--report", str(report), *attempt], capture_output=True, text=True, env=pip_env())
        if result.returncode == 0:
            return [item["metadata"] for item in json.loads(report.read_text(encoding="utf-8"))["install"]]
    raise RuntimeError(f"pip cannot resolve torch {torch_version}: {tail(result)}")


def fake_dist_info(site: Path, name: str, version: str, requires: list[str] = ()) -> Path:
    """A dist-info folder that makes pip and importlib.metadata see `name version` installed (no files)."""
    folder = site / f"{re.sub(r'[-.]+', '_', name)}-{version}.dist-info"  # the name part takes no hyphens
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
    (folder / "METADATA").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "INSTALLER").write_text("pip\n", encoding="utf-8")
    (folder / "RECORD").write_text("", encoding="utf-8")
    return folder


def make_runtime(folder: Path, torch_version: str) -> tuple[Path, dict[str, str]]:
    """A venv holding this torch's whole stack as metadata, as a Colab runtime holds it; its python and the versions."""
    python = PYTHON if Path(PYTHON).exists() else sys.executable
    subprocess.run([python, "-m", "venv", str(folder)], check=True)
    venv_python = folder / "bin" / "python"
    site = Path(subprocess.run([str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    versions = {}
    for meta in resolve_stack(venv_python, torch_version, folder):
        # the torch family carries Colab's CUDA label (2.9.1+cu126): constraints must match such versions
        version = meta["version"] + (CUDA_LABEL if normal(meta["name"]) in ("torch", "torchvision", "torchaudio") else "")
        fake_dist_info(site, meta["name"], version, meta.get("requires_dist") or [])
        versions[normal(meta["name"])] = version
    return venv_python, versions


def pip_env() -> dict:
    """This machine's pip settings dropped (local indexes, a torch cap): pip sees PyPI as Colab's pip does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONPATH": ""}


def cell_install(venv_python: Path, reports: Path, unsloth: bool) -> dict:
    """install() in the venv, as the cell calls it, each step a dry run; per step: ok, runtime wheels, count."""
    reports.mkdir(parents=True, exist_ok=True)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from semifinetune.install import install; "
            "install(sys.argv[1], unsloth=sys.argv[2] == '1', dry_run_reports=sys.argv[3])")
    result = subprocess.run([str(venv_python), "-c", code, str(ROOT), "1" if unsloth else "0", str(reports)],
                            capture_output=True, text=True, env=pip_env())
    steps = {}
    for path in sorted(reports.glob("*.json")):
        report = json.loads(path.read_text(encoding="utf-8"))
        steps[path.stem] = {"installs": len(report.get("install", [])), "runtime_wheels": runtime_wheels(report)}
    return {"exit": result.returncode, "steps": steps, "error": tail(result) if result.returncode else "",
            "torch_kept": result.returncode == 0 and all(not s["runtime_wheels"] for s in steps.values())}


def former_install(venv_python: Path, reports: Path) -> dict:
    """The former cell's command, unconstrained, as a dry run: which runtime wheels pip would swap in."""
    report_path = reports / "former.json"
    result = subprocess.run([str(venv_python), "-m", "pip", "install", "--dry-run", "--report", str(report_path), "-q",
                             *FORMER_CELL], capture_output=True, text=True, env=pip_env())
    if result.returncode:
        return {"exit": result.returncode, "runtime_wheels": [], "error": tail(result)}
    report = json.loads(report_path.read_text(encoding="utf-8"))
    return {"exit": 0, "installs": len(report.get("install", [])), "runtime_wheels": runtime_wheels(report),
            "torch_kept": not runtime_wheels(report)}


def tail(result: subprocess.CompletedProcess, lines: int = 8) -> str:
    return "\n".join((result.stdout + result.stderr).strip().splitlines()[-lines:])


def torch_releases() -> list[str]:
    """torch releases on PyPI from FIRST on, oldest first (pip index versions, this machine's pip settings dropped)."""
    result = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "torch"], capture_output=True, text=True,
                            env=pip_env(), check=True)
    listed = re.search(r"Available versions: (.*)", result.stdout).group(1).split(", ")
    releases = {v for v in listed if re.fullmatch(r"\d+\.\d+\.\d+", v) and tuple(map(int, v.split(".")[:2])) >= FIRST}
    return sorted(releases, key=lambda v: tuple(map(int, v.split("."))))


def check(version: str, former: bool) -> dict:
    """Every check for one torch version, in a fresh venv."""
    with tempfile.TemporaryDirectory(prefix=f"colab-torch-{version}-") as folder:
        venv_python, stack = make_runtime(Path(folder) / "venv", version)
        pip_version = subprocess.run([str(venv_python), "-m", "pip", "--version"], capture_output=True, text=True).stdout.split()[1]
        # One run with Unsloth: the default install's steps are its first two, the same commands.
        unsloth = cell_install(venv_python, Path(folder) / "unsloth", unsloth=True)
        default_steps = {name: unsloth["steps"][name] for name in DEFAULT_STEPS if name in unsloth["steps"]}
        default = {"exit": unsloth["exit"] if len(default_steps) < len(DEFAULT_STEPS) else 0, "steps": default_steps,
                   "torch_kept": len(default_steps) == len(DEFAULT_STEPS) and all(not s["runtime_wheels"] for s in default_steps.values())}
        row = {"torch": stack["torch"], "torchvision": stack.get("torchvision", "none on PyPI"),
               "torchaudio": stack.get("torchaudio", "none on PyPI"), "triton": stack.get("triton", "none"),
               "runtime_wheels_installed": sum(runtime_wheel(name) for name in stack), "pip": pip_version,
               "default": default, "unsloth": unsloth}
        if former:
            row["former_cell"] = former_install(venv_python, Path(folder))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--versions", nargs="*", help="torch versions (default: every release from 2.9 on PyPI)")
    parser.add_argument("--former", nargs="*", default=None, metavar="VERSION",
                        help="torch versions to also run the former cell's command on (default: the oldest and newest)")
    args = parser.parse_args()
    versions = args.versions or torch_releases()
    start, rows = time.time(), []
    former = set(args.former) if args.former is not None else {versions[0], versions[-1]}
    for version in versions:
        row = check(version, former=version in former)
        rows.append(row)
        control = row.get("former_cell", {})
        print(f"torch {row['torch']}: default install keeps torch: {row['default']['torch_kept']}; with Unsloth: "
              f"{row['unsloth']['torch_kept']}; former cell: "
              f"{'keeps torch' if control.get('torch_kept') else ', '.join(control.get('runtime_wheels', [])[:3]) or control.get('error', 'not run')[-200:]}",
              flush=True)
    python = PYTHON if Path(PYTHON).exists() else sys.executable
    python_version = subprocess.run([python, "--version"], capture_output=True, text=True).stdout.strip()
    result = {"benchmark": "colab_install", "python": python_version, "seconds": round(time.time() - start), "runs": rows,
              "all_kept": all(r["default"]["torch_kept"] and r["unsloth"]["torch_kept"] for r in rows)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(ROOT / "semifinetune.egg-info", ignore_errors=True)  # left by pip's editable build of the project
    return 0 if result["all_kept"] else 1


if __name__ == "__main__":
    sys.exit(main())
