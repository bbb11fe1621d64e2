"""Colab, simulated: a stand-in google.colab whose drive.mount makes a folder under a temporary directory, in this
process or in every notebook kernel. The install cell, the Drive defaults, profile auto, and the whole flow as a
Colab user runs it: each notebook in its own kernel, only the Drive folder shared."""

from __future__ import annotations

import importlib.machinery
import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

from semifinetune import colab
from semifinetune.config import ConfigError
from semifinetune.notebooks import NOTEBOOK_DIR, NOTEBOOKS, QUIET
from semifinetune.runs import LAST_RUN_ENV, PROJECT_ROOT

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
    # Specs as real imports have them: accelerate's find_spec("google.colab") raises on a module without one.
    package.__spec__ = importlib.machinery.ModuleSpec("google.colab", None, is_package=True)
    drive.__spec__ = importlib.machinery.ModuleSpec("google.colab.drive", None)
    monkeypatch.setitem(sys.modules, "google.colab", package)
    monkeypatch.setitem(sys.modules, "google.colab.drive", drive)
    monkeypatch.setenv("SEMIFINETUNE_DRIVE", str(tmp_path / "drive"))
    isolate_env(monkeypatch, "SEMIFINETUNE_CACHE", "HF_HOME", "HF_HUB_DISABLE_SYMLINKS_WARNING", LAST_RUN_ENV)
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


def test_a_refused_drive_says_why_it_matters(on_colab, monkeypatch):
    def refuse(mountpoint, **kwargs):
        raise ValueError("mount failed")

    monkeypatch.setattr(sys.modules["google.colab.drive"], "mount", refuse)
    with pytest.raises(RuntimeError, match=r"could not be mounted .*\(mount failed\).*02-06, each in its own runtime.*allow the access"):
        colab.use_drive()


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


def test_install_cell_mounts_drive_then_installs_what_is_missing_through_its_wheel_cache(on_colab, tmp_path, monkeypatch):
    from semifinetune import install

    asked = []
    monkeypatch.setattr(install, "missing", lambda unsloth=False: ["transformers==5.17.0"])
    monkeypatch.setattr(install, "install", lambda unsloth=False, wheels=None: asked.append((unsloth, wheels, on_colab[:])))
    exec(compile(install_cell("01_setup").replace("UNSLOTH = False", "UNSLOTH = True"), "install cell", "exec"), {})
    drive = tmp_path / "drive" / "MyDrive" / "semifinetune"
    assert asked == [(True, drive / "cache" / "wheels", [str(tmp_path / "drive")])]  # Drive first: the cache is there
    assert Path.cwd() == drive


# --- the whole flow, as a Colab user runs it ---


def simulated_colab(tmp_path: Path, monkeypatch, env: dict = QUIET) -> tuple[Path, Path]:
    """Kernels started from here run on simulated Colab (google.colab imported, Drive mounted under tmp_path/drive)
    with a 4-question held-out file of the user's on Drive; (mount point, MyDrive/semifinetune)."""
    fake = fake_colab_path(tmp_path / "fake")
    mount = tmp_path / "drive"
    drive = mount / "MyDrive" / "semifinetune"
    drive.mkdir(parents=True)
    lines = (PROJECT_ROOT / "data" / "semiconductor_eval.jsonl").read_text(encoding="utf-8").splitlines()
    (drive / "eval4.jsonl").write_text("\n".join(lines[:4]) + "\n", encoding="utf-8")  # the user's own file on Drive
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(fake), str(PROJECT_ROOT)]))  # the kernels inherit these
    monkeypatch.setenv("SEMIFINETUNE_DRIVE", str(mount))
    isolate_env(monkeypatch, "SEMIFINETUNE_CACHE", "HF_HOME", LAST_RUN_ENV)
    return mount, drive


def test_six_notebooks_in_six_runtimes_share_only_drive(tmp_path, monkeypatch):
    """Each notebook in a fresh kernel and a fresh working folder (a new Colab runtime), Colab simulated, tiny model:
    01 writes runs/mine on Drive, 02-06 (no run_dir passed) open the run 01 wrote last; the model cache is on Drive
    too (~1.5 min)."""
    import papermill

    mount, drive = simulated_colab(tmp_path, monkeypatch)
    parameters = {"01_setup": {"profile": "tiny", "run_dir": "runs/mine", "overrides": {"eval_file": "eval4.jsonl"}},
                  "06_inference_sweep": {"interactive": False}}
    outputs = {}
    for n, name in enumerate(NOTEBOOKS):
        runtime = tmp_path / f"runtime{n}"  # a new runtime's local disk: nothing of the others is here
        runtime.mkdir()
        papermill.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(runtime / f"{name}.ipynb"),
                                   parameters=parameters.get(name, {}), kernel_name="python3", cwd=str(runtime),
                                   progress_bar=False)
        outputs[name] = (runtime / f"{name}.ipynb").read_text(encoding="utf-8")
    run = drive / "runs" / "mine"
    config = json.loads((run / "config.json").read_text())
    assert config["profile"] == "tiny" and config["eval_file"] == "eval4.jsonl"
    assert (drive / "runs" / ".last_run").read_text().strip() == str(run) and not (drive / "runs" / "demo").exists()
    for name in ("adapter/adapter_model.safetensors", "train_log.json", "evaluation.csv", "sweep.csv", "recommended_settings.json"):
        assert (run / name).is_file(), name
    assert len(json.loads((run / "train_log.json").read_text())["train_loss"]) == 6
    assert (mount / "mounts.log").read_text().splitlines() == [str(mount)] * 6  # every runtime mounted Drive
    assert list((drive / "cache").glob("tiny-qwen2-*/model.safetensors")), "the model cache is not on Drive"
    assert not any((tmp_path / f"runtime{n}" / "runs").exists() for n in range(6))
    assert "Google Drive mounted" in outputs["01_setup"] and "every package is installed already" in outputs["01_setup"]

    # The same notebook 02 in a runtime without Colab (no Drive): it cannot see 01's files. What Drive fixes.
    monkeypatch.setenv("PYTHONPATH", str(PROJECT_ROOT))
    monkeypatch.setenv(LAST_RUN_ENV, str(tmp_path / "bare" / ".last_run"))  # this machine's own memory: none yet
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(papermill.PapermillExecutionError, match=r"runs/demo/config\.json does not exist: runs/demo holds "
                                                                r"no run\. Run notebook 01_setup"):
        papermill.execute_notebook(str(NOTEBOOK_DIR / "02_load_4bit.ipynb"), str(bare / "02.ipynb"), kernel_name="python3",
                                   cwd=str(bare), progress_bar=False)


def test_one_runtime_01_runs_02_to_06_with_one_install_and_one_drive_mount(tmp_path, monkeypatch):
    """Notebook 01 on simulated Colab with run_02_to_06 = True: its last cell runs 02-06 in the same runtime (each in a
    fresh kernel, as the notebooks command does), executed copies next to the run on Drive, a progress bar and one
    result line per notebook in 01's output; Drive mounted once, packages checked once, the model cached once (~1.5 min)."""
    import nbformat
    import papermill

    quiet_but_bars = {key: value for key, value in QUIET.items() if key != "TQDM_DISABLE"}  # 01's own bar: as on Colab
    mount, drive = simulated_colab(tmp_path, monkeypatch, quiet_but_bars)
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    papermill.execute_notebook(str(NOTEBOOK_DIR / "01_setup.ipynb"), str(runtime / "01_setup.ipynb"), kernel_name="python3",
                               parameters={"profile": "tiny", "overrides": {"eval_file": "eval4.jsonl"}, "run_02_to_06": True},
                               cwd=str(runtime), progress_bar=False)
    run = drive / "runs" / "demo"
    executed = sorted(p.stem for p in (run / "notebooks").glob("*.ipynb"))
    assert executed == list(NOTEBOOKS[1:])  # next to the run, on Drive
    assert (mount / "mounts.log").read_text().splitlines() == [str(mount)]  # one Drive consent
    assert len(list((drive / "cache").glob("tiny-qwen2-*/model.safetensors"))) == 1  # one model download, on Drive
    nb = nbformat.read(runtime / "01_setup.ipynb", as_version=4)
    cell = nb.cells[-2]  # the run_rest cell
    assert "run_rest(run_dir, run_02_to_06)" in cell.source
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")
    bars = [o for o in cell.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
            or (o.output_type == "stream" and o.name == "stderr" and "Executing" in o.text)]
    assert len(bars) >= 5, "no progress bar per notebook"  # tqdm.auto: a widget in a kernel, text elsewhere
    assert re.search(r"\[02_load_4bit\] done in \d+ s: tiny:random-qwen2 loaded in [\d.]+ s \(transformers\); its "
                     r"answer before fine-tuning: 16 tokens, cut at max_new_tokens", text), text
    assert re.search(r"\[03_lora\] done in \d+ s: LoRA: 14,336 trainable parameters, 4\.261% of the base model's 336,448", text)
    assert re.search(r"\[04_format\] done in \d+ s: data: \d+ train, 4 held-out, \d+ validation examples", text), text
    assert re.search(r"\[05_train\] done in \d+ s: trained 6 steps in \d+ s, final training loss [\d.]+; adapter: ", text)
    assert re.search(r"\[06_inference_sweep\] done in \d+ s: held-out correct: base \d, tuned \d of 4; recommended "
                     r"temperature", text), text
    assert re.search(r"02-06 done in \d+ s; the executed notebooks are in " + re.escape(str(run / "notebooks")), text), text
    assert not [o for o in cell.outputs if o.output_type == "execute_result"]  # the lines are the cell's result
    children = {name: (run / "notebooks" / f"{name}.ipynb").read_text(encoding="utf-8") for name in NOTEBOOKS[1:]}
    assert all("every package is installed already" in t and "Google Drive mounted" not in t for t in children.values())
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and (run / "recommended_settings.json").is_file()


def test_run_rest_off_says_what_comes_next_and_a_trained_run_stops_it(tmp_path, capsys):
    from semifinetune.notebooks import run_rest

    assert run_rest(tmp_path, False) is None
    said = capsys.readouterr().out
    assert "02 and 03 only show the model and its LoRA, and can be skipped" in said and "run_02_to_06 = True" in said
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    with pytest.raises(ConfigError, match=r"already holds a training run .* set overwrite = True in the parameters cell"):
        run_rest(tmp_path, True)
    assert not (tmp_path / "notebooks").exists()  # nothing ran


def test_the_notebooks_command_refuses_run_02_to_06():
    from semifinetune.notebooks import notebook_paths, route_parameters

    with pytest.raises(ConfigError, match="-p run_02_to_06: this command runs 02-06 itself"):
        route_parameters(notebook_paths(), "/r", "tiny", {"run_02_to_06": True})


# --- the run notebook 01 wrote last, and files that would not outlive the runtime ---


def test_02_to_06_default_to_the_run_01_wrote_last(tmp_path, monkeypatch):
    from semifinetune.pipeline import setup
    from semifinetune.runs import last_run_dir, open_run

    monkeypatch.setenv(LAST_RUN_ENV, str(tmp_path / "memory" / ".last_run"))
    monkeypatch.chdir(tmp_path)
    assert last_run_dir() == "runs/demo"  # nothing remembered: 01's default
    setup("runs/first", "tiny")
    setup("runs/second", "tiny")
    assert last_run_dir() == "runs/second" and open_run(last_run_dir()).profile == "tiny"
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")  # a kernel started elsewhere (Jupyter starts them in notebooks/)
    assert last_run_dir() == str(tmp_path / "runs" / "second")
    shutil.rmtree(tmp_path / "runs" / "second")  # a remembered run that is gone is not offered
    assert last_run_dir() == "runs/demo"


def test_a_run_dir_without_a_run_names_the_one_that_has_it(tmp_path, monkeypatch):
    from semifinetune.pipeline import setup
    from semifinetune.runs import open_run

    monkeypatch.setenv(LAST_RUN_ENV, str(tmp_path / ".last_run"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"runs/demo/config\.json does not exist: runs/demo holds no run\. Run notebook "
                                          r"01_setup \(or `python -m semifinetune run`\) with this run_dir first\."):
        open_run("runs/demo")
    setup("runs/mine", "tiny")
    with pytest.raises(ConfigError, match=r"runs/demo holds no run\. The run notebook 01 wrote last is 'runs/mine': "
                                          r"set run_dir = 'runs/mine' or run 01 with this one\."):
        open_run("runs/demo")


def test_a_data_file_off_drive_is_caught_at_01_with_the_reason(on_colab, tmp_path, monkeypatch):
    """On Colab: a file uploaded to /content passes every data check but is gone in 04's runtime; 01 says so. Files
    on Drive and the project's own (tracked) files pass; an untracked file in the project's clone does not."""
    from semifinetune.pipeline import setup

    home = colab.use_drive()
    eval_lines = (PROJECT_ROOT / "data" / "semiconductor_eval.jsonl").read_text(encoding="utf-8").splitlines()[:4]
    uploaded = tmp_path / "content" / "eval4.jsonl"
    for folder in (uploaded.parent, home):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "eval4.jsonl").write_text("\n".join(eval_lines) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"eval_file '{re.escape(str(uploaded))}' is {re.escape(str(uploaded))}, on this "
                                          r"runtime's own disk, which Colab deletes when the runtime ends: notebooks 02-06 in "
                                          r"their own runtimes would not find it\. Move it to Google Drive .* "
                                          r"overrides=\{'eval_file': 'eval4\.jsonl'\}"):
        setup("runs/demo", "tiny", {"eval_file": str(uploaded)})
    assert not (home / "runs" / "demo").exists()  # nothing written
    cfg, _ = setup("runs/demo", "tiny", {"eval_file": "eval4.jsonl"})  # on Drive, and the shipped train file
    assert cfg.eval_file == "eval4.jsonl" and (home / "runs" / "demo" / "config.json").is_file()

    clone = tmp_path / "clone"  # the project's checkout, as Colab's install cell clones it
    (clone / "data").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(clone)], check=True)
    for name in ("shipped.jsonl", "dropped.jsonl"):
        (clone / "data" / name).write_text("\n".join(eval_lines) + "\n", encoding="utf-8")
    subprocess.run(["git", "-C", str(clone), "add", "data/shipped.jsonl"], check=True)
    monkeypatch.setattr("semifinetune.runs.PROJECT_ROOT", clone)
    mount = tmp_path / "drive"
    assert colab._off_drive("eval_file", "data/shipped.jsonl", clone / "data" / "shipped.jsonl", mount) == ""
    assert "on this runtime's own disk" in colab._off_drive("eval_file", "x", clone / "data" / "dropped.jsonl", mount)
    assert colab._off_drive("eval_file", "x", mount / "MyDrive" / "elsewhere" / "e.jsonl", mount) == ""  # Drive, not ours


def test_off_colab_any_data_path_is_fine(tmp_path, monkeypatch):
    from semifinetune.config import make_config

    monkeypatch.setenv("SEMIFINETUNE_DRIVE", str(tmp_path / "drive"))
    colab.check_files_on_drive(make_config("tiny", {"eval_file": str(tmp_path / "anywhere.jsonl")}))  # no Colab: no check


# --- one notebook leads to the next ---


def test_each_notebook_ends_with_a_badge_to_the_next():
    """The last cell opens what comes next in Colab: 01 offers 02 and 04 (02 and 03 can be skipped), 06 a new run."""
    expected = {"01_setup": ["02_load_4bit", "04_format"], "02_load_4bit": ["03_lora", "04_format"], "03_lora": ["04_format"],
                "04_format": ["05_train"], "05_train": ["06_inference_sweep"], "06_inference_sweep": ["01_setup"]}
    for name in NOTEBOOKS:
        nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
        last = nb.cells[-1]
        linked = re.findall(r"colab\.research\.google\.com/github/[^/]+/[^/]+/blob/main/notebooks/(\w+)\.ipynb", last.source)
        assert last.cell_type == "markdown" and linked == expected[name], (name, last.source)
    for name in ("02_load_4bit", "03_lora"):
        nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
        (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert "can be skipped" in params.source, name


def test_02_to_06_take_the_remembered_run_dir_and_01_names_its_own():
    import papermill

    for name in NOTEBOOKS:
        default = papermill.inspect_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"))["run_dir"]["default"]
        assert default == ('"runs/demo"' if name == "01_setup" else "last_run_dir()"), (name, default)


# --- the install: torch pinned, or --no-deps ---


def dry_run_script():
    """benchmarks/check_colab_install.py as a module (its helpers; the dry runs themselves need PyPI)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_colab_install", PROJECT_ROOT / "benchmarks" / "check_colab_install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_constraints_pin_the_runtimes_torch_stack(tmp_path):
    """A runtime as the dry runs fake it (metadata only): every torch, CUDA and triton wheel pinned at its version."""
    from semifinetune.install import InstallError, constraint_lines, pinned_distributions

    script = dry_run_script()
    for name, version in [("torch", "2.9.1+cu126"), ("torchvision", "0.24.1+cu126"), ("nvidia-cublas-cu12", "12.8.4.1"),
                          ("triton", "3.5.1"), ("numpy", "2.0.2"), ("Jinja2", "3.1.6")]:
        script.fake_dist_info(tmp_path, name, version)
    pins = pinned_distributions([str(tmp_path)])
    assert constraint_lines(pins) == ["nvidia-cublas-cu12==12.8.4.1", "torch==2.9.1+cu126", "torchvision==0.24.1+cu126",
                                      "triton==3.5.1"]
    with pytest.raises(InstallError, match=r"This Python has no torch.*pytorch\.org"):
        constraint_lines({"numpy": "2.0.2"})


def test_every_pip_step_is_constrained_or_takes_no_dependencies():
    from semifinetune.install import pip_steps

    steps = pip_steps(PROJECT_ROOT, Path("runtime-torch.txt"), unsloth=True)
    assert [name for name, _ in steps] == ["packages", "embedded model", "unsloth dependencies", "unsloth"]
    for name, args in steps:
        assert ("--constraint" in args) != ("--no-deps" in args), name
    assert [name for name, _ in pip_steps(PROJECT_ROOT, Path("c.txt"))] == ["packages", "embedded model"]  # Unsloth: asked


def test_the_colab_requirements_never_name_the_runtimes_wheels():
    from packaging.requirements import Requirement

    from semifinetune.install import REQUIREMENTS, UNSLOTH, UNSLOTH_REQUIREMENTS, requirement_lines, runtime_wheel

    names = [Requirement(line).name for f in (REQUIREMENTS, UNSLOTH_REQUIREMENTS) for line in requirement_lines(PROJECT_ROOT / f)]
    assert "transformers" in names and "cut_cross_entropy" in names
    assert not [name for name in names + [Requirement(u).name for u in UNSLOTH] if runtime_wheel(name)]


def test_missing_lists_what_this_python_lacks(tmp_path):
    from semifinetune.install import REQUIREMENTS, missing

    (tmp_path / REQUIREMENTS).write_text("# a comment\npytest>=1.0\npytest<1.0  # too old to exist\nno-such-dist-here==1.0\n")
    assert missing(tmp_path) == ["pytest<1.0", "no-such-dist-here==1.0"]


def test_a_failing_pip_step_stops_with_what_to_do(tmp_path, monkeypatch, capsys):
    """Offline, a step pip cannot complete: the install stops, naming the step and saying what to do."""
    from semifinetune.install import REQUIREMENTS, InstallError, install

    (tmp_path / REQUIREMENTS).write_text("no-such-dist-here==1.0\n")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(InstallError, match=r"pip failed at the 'packages' step.*run the cell again"):
        install(tmp_path, dry_run_reports=tmp_path)
    assert "[install] packages:" in capsys.readouterr().out  # what ran, shown before pip's own message


def test_the_dry_run_check_sees_a_swapped_torch():
    script = dry_run_script()
    report = {"install": [{"metadata": {"name": "torch", "version": "2.14.1"}},
                          {"metadata": {"name": "nvidia-cudnn-cu13", "version": "9.24.0.43"}},
                          {"metadata": {"name": "transformers", "version": "5.17.0"}}]}
    assert script.runtime_wheels(report) == ["torch 2.14.1", "nvidia-cudnn-cu13 9.24.0.43"]
    assert script.stack_requirements("2.12.1") == ["torch==2.12.1", "torchvision==0.27.*", "torchaudio==2.12.1"]


def test_the_recorded_dry_runs_kept_torch_on_every_version():
    """benchmarks/results/colab_install.json (the dry runs need PyPI, so they are recorded, not re-run here): torch
    2.9.0 to 2.15.0, the install cell with and without Unsloth, no runtime wheel in any step; the former cell's
    command swapped torch on 2.9, which shows the check can see a swap."""
    result = json.loads((PROJECT_ROOT / "benchmarks" / "results" / "colab_install.json").read_text())
    versions = [row["torch"] for row in result["runs"]]
    assert versions[0] == "2.9.0+cu126" and versions[-1] == "2.15.0+cu126" and len(versions) == 10
    for row in result["runs"]:
        assert set(row["default"]["steps"]) == {"packages", "embedded-model"}
        assert set(row["unsloth"]["steps"]) == {"packages", "embedded-model", "unsloth-dependencies", "unsloth"}
        for install in ("default", "unsloth"):
            assert row[install]["torch_kept"], (row["torch"], install)
            assert [s["runtime_wheels"] for s in row[install]["steps"].values()] == [[]] * len(row[install]["steps"])
    swapped = {row["torch"] for row in result["runs"] if not row["former_cell"]["torch_kept"]}
    assert swapped == {"2.9.0+cu126", "2.9.1+cu126", "2.15.0+cu126"}


def make_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel (one module saying its version), as pip builds them."""
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}.py": f"VERSION = {version!r}\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, text in files.items():
            wheel.writestr(member, text)
    return path


def make_index(folder: Path, name: str, versions: list[str]) -> None:
    """A package index in a folder (PEP 503 simple pages, as pip reads PyPI) serving `name` at these versions."""
    page = folder / "simple" / name
    page.mkdir(parents=True, exist_ok=True)
    links = [f'<a href="../../{make_wheel(folder, name, v).name}">{name}-{v}</a>' for v in versions]
    (page / "index.html").write_text("<html><body>" + "".join(links) + "</body></html>\n")


def test_a_later_runtime_installs_from_the_kept_wheels_without_the_index(tmp_path, monkeypatch, capsys):
    """One step through the wheel cache, the package index a local folder: the first install keeps the wheel and
    records the step; with the index gone, a fresh target installs from the cache alone; a cache that lost a wheel
    falls back to the index, saying so; a changed step is not taken from the cache."""
    from semifinetune.install import cached_step

    index, wheels, scratch = tmp_path / "index", tmp_path / "drive-wheels", tmp_path / "scratch"
    make_index(index, "sftcachetest", ["1.0"])
    scratch.mkdir()
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("sftcachetest==1.0\n")
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # this machine's pip settings (other indexes) left out
    monkeypatch.setenv("PIP_INDEX_URL", (index / "simple").as_uri())

    site = tmp_path / "site-packages"  # each runtime's own: the same path, empty at the start

    def step():
        shutil.rmtree(site, ignore_errors=True)
        command = [sys.executable, "-m", "pip", "install", "--target", str(site), "-r", str(requirements), "-q"]
        return cached_step("packages", command, wheels, scratch, "2.9.0+cu126")

    first = step()
    assert "--report" in first and (site / "sftcachetest.py").is_file()
    assert [p.name for p in wheels.glob("*.whl")] == ["sftcachetest-1.0-py3-none-any.whl"]
    assert json.loads((wheels / "packages.step.json").read_text())["wheels"] == 1
    assert "1 wheels kept in" in capsys.readouterr().out

    shutil.rmtree(index)  # a new runtime; the index out of reach: only the cache can serve it
    second = step()
    assert second[-3:] == ["--no-index", "--find-links", str(wheels)]
    assert (site / "sftcachetest.py").read_text() == "VERSION = '1.0'\n"
    assert "packages: from the wheels kept in" in capsys.readouterr().out

    make_index(index, "sftcachetest", ["1.0"])  # the index is back; the cache lost its wheel
    (wheels / "sftcachetest-1.0-py3-none-any.whl").unlink()
    third = step()
    assert "--report" in third and (site / "sftcachetest.py").is_file()
    out = capsys.readouterr().out
    assert "did not cover this step; from the package index instead" in out and "ERROR" not in out

    make_index(index, "sftcachetest", ["1.0", "2.0"])
    requirements.write_text("sftcachetest==2.0\n")  # another step: the cache's record does not match it
    assert "--report" in step()
    assert (site / "sftcachetest.py").read_text() == "VERSION = '2.0'\n"
    assert sorted(p.name for p in wheels.glob("*.whl")) == ["sftcachetest-1.0-py3-none-any.whl", "sftcachetest-2.0-py3-none-any.whl"]


def test_the_step_key_follows_what_the_step_installs(tmp_path):
    from semifinetune.install import step_key

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("a==1\n")
    command = ["/usr/bin/python3", "-m", "pip", "install", "-r", str(requirements)]
    key = step_key(command)
    assert step_key(["/elsewhere/python3", *command[1:]]) == key  # another runtime's interpreter path: the same step
    moved = tmp_path / "moved.txt"
    moved.write_text("a==1\n")
    assert step_key([*command[:-1], str(moved)]) == key  # a temporary constraints file: its content counts
    requirements.write_text("a==2\n")
    assert step_key(command) != key


def test_unsloth_outside_its_torch_range_is_named(monkeypatch, capsys):
    import importlib.metadata

    from semifinetune import install

    monkeypatch.setattr(importlib.metadata, "requires", lambda name: ["torch<2.15.0,>=2.4.0", "xformers>=0.0.27"])
    install._say_if_unsloth_declines("2.14.1+cu126")
    assert capsys.readouterr().out == ""
    install._say_if_unsloth_declines("2.15.0+cu126")
    assert "Unsloth declares torch<2.15.0,>=2.4.0; this runtime has torch 2.15.0+cu126" in capsys.readouterr().out
