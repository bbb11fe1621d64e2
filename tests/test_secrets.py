"""A hub token in the environment never reaches executed notebooks, logs, config.json, the adapter or an export."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat

from semifinetune import notebooks as nbrun
from semifinetune import runs

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_FAKE_secret_123456"
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def files_holding(folder: Path, secret: str) -> list[str]:
    """Every file under folder whose bytes contain the secret (plain, or as JSON/ipynb would escape it)."""
    needle = secret.encode()
    return [str(p.relative_to(folder)) for p in sorted(folder.rglob("*")) if p.is_file() and needle in p.read_bytes()]


def test_the_search_finds_a_planted_token(tmp_path):
    """The scan below can fail: a token in any file, nested or binary, is found."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "weights.safetensors").write_bytes(b"\x00\x01" + TOKEN.encode() + b"\xff")
    (tmp_path / "clean.json").write_text("{}")
    assert files_holding(tmp_path, TOKEN) == ["a/b/weights.safetensors"]


def test_notebook_01_takes_no_token_parameter():
    """A token parameter would be written into the executed notebook by papermill: 01 declares none."""
    for path in nbrun.notebook_paths():
        assert not [name for name in nbrun.declared_parameters(path) if "token" in name.lower()], path.name
    nb = nbformat.read(nbrun.NOTEBOOK_DIR / "01_setup.ipynb", as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    assert "HF_TOKEN" in text and "papermill writes parameters into the executed notebook" in text
    assert "os.environ" not in text and "%env" not in text and "!env" not in text


def test_fake_token_appears_in_no_output_file(tmp_path, monkeypatch):
    """Notebooks 01-05 under papermill, the train log of the CLI and an adapter export, with the token set (~1 min)."""
    for name in TOKEN_VARIABLES:
        monkeypatch.setenv(name, TOKEN)  # the kernels and the CLI subprocess inherit it
    run_dir = tmp_path / "run"
    paths = nbrun.notebook_paths()[:5]  # 01..05: everything that writes config, data, logs and the adapter
    routed = nbrun.route_parameters(paths, str(run_dir), "tiny", {"overwrite": True})
    for path in paths:
        nbrun.execute(path, run_dir / nbrun.EXECUTED / path.name, routed[path.stem], ROOT, progress=False)
    result = subprocess.run(
        [sys.executable, "-m", "semifinetune", "export", "--run-dir", str(run_dir), "--format", "adapter"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir / "cli_output.log").write_text(result.stdout + result.stderr)
    written = {p.relative_to(run_dir).parts[0] for p in run_dir.rglob("*") if p.is_file()}
    assert {runs.CONFIG, runs.ENV, runs.DATA, runs.ADAPTER, runs.CHECKPOINTS, runs.TRAIN_LOG, "notebooks", "export"} <= written
    assert len(list((run_dir / nbrun.EXECUTED).glob("*.ipynb"))) == 5
    assert files_holding(run_dir, TOKEN) == []
