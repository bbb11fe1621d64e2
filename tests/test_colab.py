"""Colab, simulated: a stand-in google.colab whose drive.mount makes a folder under a temporary directory, in this
process or in every notebook kernel. The install cell, the Drive defaults, profile auto, and the whole flow as a
Colab user runs it: each notebook in its own kernel, only the Drive folder shared."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

from semifinetune import colab
from semifinetune.config import ConfigError
from semifinetune.notebooks import NOTEBOOK_DIR, NOTEBOOKS, QUIET
from semifinetune.runs import PROJECT_ROOT

BADGE = re.compile(r"colab\.research\.google\.com/github/([^/]+)/([^/]+)/blob/")

# The stand-in, as files for kernels: google/ stays a namespace package (protobuf shares it), and sitecustomize
# imports google.colab at start-up, as Colab's kernels have it imported.
FAKE_DRIVE = '''"""Stand-in for google.colab.drive: mount() makes MyDrive under the mount point and logs the call."""
import os


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    os.makedirs(os.path.join(mountpoint, "MyDrive"), exist_ok=True)
    with open(os.path.join(mountpoint, "mounts.log"), "a") as log:
        log.write(mountpoint + "\\n")
    print("Mounted at " + mountpoint)
'''


def fake_colab_path(folder: Path) -> Path:
    """A folder for PYTHONPATH holding google/colab/ (with drive) and a sitecustomize that imports it."""
    package = folder / "google" / "colab"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""Stand-in for Colab\'s google.colab (tests)."""\nfrom . import drive\n')
    (package / "drive.py").write_text(FAKE_DRIVE)
    (folder / "sitecustomize.py").write_text("import google.colab  # Colab's kernels start with it imported\n")
    return folder


def isolate_env(monkeypatch, *names: str) -> None:
    """Unset names for one test and restore them after it, whatever the code under test sets."""
    for name in names:
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)


@pytest.fixture
def on_colab(tmp_path, monkeypatch):
    """This process on simulated Colab: google.colab imported, Drive mounted under tmp_path/drive; the mount log."""
    mounts = []

    def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
        os.makedirs(os.path.join(mountpoint, "MyDrive"), exist_ok=True)
        mounts.append(mountpoint)

    drive = types.ModuleType("google.colab.drive")
    drive.mount = mount
    package = types.ModuleType("google.colab")
    package.drive = drive
    monkeypatch.setitem(sys.modules, "google.colab", package)
    monkeypatch.setitem(sys.modules, "google.colab.drive", drive)
    monkeypatch.setenv("SEMIFINETUNE_DRIVE", str(tmp_path / "drive"))
    isolate_env(monkeypatch, "SEMIFINETUNE_CACHE", "HF_HOME", "HF_HUB_DISABLE_SYMLINKS_WARNING")
    monkeypatch.chdir(tmp_path)  # restored after the test: use_drive changes the working directory
    return mounts


def install_cell(name: str) -> str:
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and "google.colab" in c.source]
    return cell.source


# --- Drive and the default paths ---


def test_off_colab_nothing_changes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = (os.getcwd(), os.environ.get("SEMIFINETUNE_CACHE"), os.environ.get("HF_HOME"))
    assert "google.colab" not in sys.modules and not colab.on_colab()
    assert colab.use_drive() is None
    assert (os.getcwd(), os.environ.get("SEMIFINETUNE_CACHE"), os.environ.get("HF_HOME")) == before
    assert colab.gpu_hint() == ""


def test_on_colab_the_run_dir_and_the_model_cache_are_on_drive(on_colab, tmp_path, capsys):
    from semifinetune.models import cache_dir

    home = colab.use_drive()
    drive = tmp_path / "drive" / "MyDrive" / "semifinetune"
    assert home == drive and on_colab == [str(tmp_path / "drive")]
    assert Path("runs/demo").resolve() == drive / "runs" / "demo"  # the notebooks' default run_dir
    assert cache_dir() == drive / "cache" and os.environ["HF_HOME"] == str(drive / "cache" / "huggingface")
    (line,) = capsys.readouterr().out.strip().splitlines()  # one line says so
    assert "Google Drive mounted" in line and str(drive) in line and "runs/demo" in line


def test_drive_can_be_turned_off(on_colab, monkeypatch):
    monkeypatch.setenv("SEMIFINETUNE_DRIVE", "off")  # what the papermill runner's kernels get
    assert colab.use_drive() is None and on_colab == []


def test_profile_auto_follows_the_machine():
    from semifinetune.config import make_config
    from semifinetune.env import choose_profile

    assert choose_profile({"cuda_available": True}) == "t4"
    assert choose_profile({"cuda_available": False}) == "cpu"
    assert choose_profile({"cuda_available": True}, "tiny") == "tiny"
    with pytest.raises(ConfigError, match=r"Unknown profile 'colab'\. Valid profiles: auto \(t4 on a CUDA GPU, cpu elsewhere\), t4, cpu, tiny"):
        choose_profile({"cuda_available": False}, "colab")
    with pytest.raises(ConfigError, match="Unknown profile 'auto'"):  # make_config stays strict: setup resolves auto
        make_config("auto")


def test_colab_without_a_gpu_runs_cpu_and_says_pick_a_t4(on_colab, tmp_path, capsys):
    from semifinetune.pipeline import setup

    cfg, report = setup(tmp_path / "run", "auto")
    assert not report["cuda_available"] and cfg.profile == "cpu"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["profile"] == "cpu"  # 02-06 read the resolved one
    out = capsys.readouterr().out
    assert "profile auto -> cpu" in out and "Runtime > Change runtime type > T4 GPU" in out
    with pytest.raises(ConfigError, match=r"needs a CUDA GPU.*Runtime > Change runtime type > T4 GPU"):
        setup(tmp_path / "t4", "t4")


# --- the install cell ---


def test_one_install_cell_in_every_notebook_cloning_the_badges_repository():
    cells = {name: install_cell(name) for name in NOTEBOOKS}
    assert len(set(cells.values())) == 1, "the install cells differ: keep them the same in all six notebooks"
    (url,) = re.findall(r'^REPO_URL = "([^"]+)"', cells[NOTEBOOKS[0]], re.M)
    for name in NOTEBOOKS:
        text = (NOTEBOOK_DIR / f"{name}.ipynb").read_text(encoding="utf-8")
        badges = {f"https://github.com/{owner}/{repo}" for owner, repo in BADGE.findall(text)}
        assert badges == {url}, f"{name}: the badge links and REPO_URL name different repositories"
    magics = [line for line in cells[NOTEBOOKS[0]].splitlines() if line.lstrip().startswith(("!", "%"))]
    assert magics == []  # `!git clone`, `%pip` and `%cd` do not raise when they fail: plain Python does


def test_install_cell_does_nothing_off_colab(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    exec(compile(install_cell("01_setup"), "install cell", "exec"), {})
    assert calls == []


def test_install_cell_stops_when_the_clone_fails(on_colab, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "semifinetune" else real(name, *a))
    failed = subprocess.CompletedProcess([], 128, "", "fatal: repository 'https://github.com/x/y/' not found")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(RuntimeError, match=r"git clone https://github\.com/semifinetune/semifinetune failed: fatal: "
                                           r"repository .* not found Check REPO_URL in this cell"):
        exec(compile(install_cell("01_setup"), "install cell", "exec"), {})


def test_install_cell_installs_what_is_missing_then_mounts_drive(on_colab, tmp_path, monkeypatch, capsys):
    from semifinetune import install

    asked = []
    monkeypatch.setattr(install, "missing", lambda unsloth=False: ["transformers==5.17.0"])
    monkeypatch.setattr(install, "install", lambda unsloth=False: asked.append(unsloth))
    exec(compile(install_cell("01_setup").replace("UNSLOTH = False", "UNSLOTH = True"), "install cell", "exec"), {})
    assert asked == [True] and on_colab == [str(tmp_path / "drive")]
    assert Path.cwd() == tmp_path / "drive" / "MyDrive" / "semifinetune"


# --- the whole flow, as a Colab user runs it ---


def test_six_notebooks_in_six_runtimes_share_only_drive(tmp_path, monkeypatch):
    """Each notebook in a fresh kernel and a fresh working folder (a new Colab runtime), Colab simulated, tiny model,
    no run_dir passed: 01 writes to Drive, 02-06 find it there; the model cache is on Drive too (~1.5 min)."""
    import papermill

    fake = fake_colab_path(tmp_path / "fake")
    mount = tmp_path / "drive"
    drive = mount / "MyDrive" / "semifinetune"
    drive.mkdir(parents=True)
    lines = (PROJECT_ROOT / "data" / "semiconductor_eval.jsonl").read_text(encoding="utf-8").splitlines()
    (drive / "eval4.jsonl").write_text("\n".join(lines[:4]) + "\n", encoding="utf-8")  # the user's own file on Drive
    for key, value in QUIET.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(fake), str(PROJECT_ROOT)]))  # the kernels inherit these
    monkeypatch.setenv("SEMIFINETUNE_DRIVE", str(mount))
    isolate_env(monkeypatch, "SEMIFINETUNE_CACHE", "HF_HOME")
    parameters = {"01_setup": {"profile": "tiny", "overrides": {"eval_file": "eval4.jsonl"}},
                  "06_inference_sweep": {"interactive": False}}
    outputs = {}
    for n, name in enumerate(NOTEBOOKS):
        runtime = tmp_path / f"runtime{n}"  # a new runtime's local disk: nothing of the others is here
        runtime.mkdir()
        papermill.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(runtime / f"{name}.ipynb"),
                                   parameters=parameters.get(name, {}), kernel_name="python3", cwd=str(runtime),
                                   progress_bar=False)
        outputs[name] = (runtime / f"{name}.ipynb").read_text(encoding="utf-8")
    run = drive / "runs" / "demo"
    config = json.loads((run / "config.json").read_text())
    assert config["profile"] == "tiny" and config["eval_file"] == "eval4.jsonl"
    for name in ("adapter/adapter_model.safetensors", "train_log.json", "evaluation.csv", "sweep.csv", "recommended_settings.json"):
        assert (run / name).is_file(), name
    assert len(json.loads((run / "train_log.json").read_text())["train_loss"]) == 6
    assert (mount / "mounts.log").read_text().splitlines() == [str(mount)] * 6  # every runtime mounted Drive
    assert list((drive / "cache").glob("tiny-qwen2-*/model.safetensors")), "the model cache is not on Drive"
    assert not any((tmp_path / f"runtime{n}" / "runs").exists() for n in range(6))
    assert "Google Drive mounted" in outputs["01_setup"] and "every package is installed already" in outputs["01_setup"]

    # The same notebook 02 in a runtime without Colab (no Drive): it cannot see 01's files. What Drive fixes.
    monkeypatch.setenv("PYTHONPATH", str(PROJECT_ROOT))
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(papermill.PapermillExecutionError, match=r"runs/demo/config\.json does not exist"):
        papermill.execute_notebook(str(NOTEBOOK_DIR / "02_load_4bit.ipynb"), str(bare / "02.ipynb"), kernel_name="python3",
                                   cwd=str(bare), progress_bar=False)
