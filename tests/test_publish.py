"""Notebook 06's export and push on the tiny run: the Colab secret read in this process, huggingface_hub's upload
stubbed, and the token in no output and no file."""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import pytest

from semifinetune.export import PushError, export_path
from semifinetune.publish import export_and_push, export_formats

SECRET = "hf_COLABsecret_0987654321"  # the Colab secret's value
OTHER = "hf_ENVIRONMENT_1234567890"  # an HF_TOKEN in the environment, which the secret wins over on Colab


@pytest.fixture
def run_dir(tiny_run, tmp_path):
    """A private copy of the tiny run (its adapter), without what other tests wrote into the shared one."""
    target = tmp_path / "run"
    shutil.copytree(tiny_run, target, ignore=shutil.ignore_patterns("evaluation.csv", "sweep*", "recommended_settings.json", "export"))
    return target


class SecretNotFoundError(Exception):
    """What google.colab.userdata.get raises for a secret that does not exist."""


def fake_colab(monkeypatch, secrets: dict) -> list:
    """This process on simulated Colab: google.colab.userdata.get serves `secrets`; the names asked for."""
    asked = []

    def get(key):
        asked.append(key)
        if key not in secrets:
            raise SecretNotFoundError(key)
        return secrets[key]

    userdata = types.ModuleType("google.colab.userdata")
    userdata.get = get
    userdata.SecretNotFoundError = SecretNotFoundError
    package = types.ModuleType("google.colab")
    package.userdata = userdata
    monkeypatch.setitem(sys.modules, "google.colab", package)
    monkeypatch.setitem(sys.modules, "google.colab.userdata", userdata)
    return asked


@pytest.fixture
def uploads(monkeypatch):
    """huggingface_hub's HfApi with create_repo and upload_folder stubbed: each call's token and arguments."""
    from huggingface_hub import HfApi

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", self.token, repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", self.token, kwargs["repo_id"], kwargs))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def files_holding(folder: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(p.relative_to(folder)) for p in sorted(folder.rglob("*")) if p.is_file() and needle in p.read_bytes()]


def test_on_colab_the_secret_is_the_token_and_it_shows_nowhere(run_dir, monkeypatch, uploads, capsys):
    asked = fake_colab(monkeypatch, {"HF_TOKEN": SECRET})
    monkeypatch.setenv("HF_TOKEN", OTHER)
    table = export_and_push(run_dir, ["adapter"], "me/semi")
    assert asked == ["HF_TOKEN"]
    assert [(name, token, repo) for name, token, repo, _ in uploads] == [("create_repo", SECRET, "me/semi"),
                                                                         ("upload_folder", SECRET, "me/semi")]
    upload = uploads[1][3]
    assert Path(upload["folder_path"]) == export_path(run_dir, "adapter") and upload["path_in_repo"] is None  # the root
    assert uploads[0][3]["private"] is True
    assert table.loc["adapter", "pushed to"] == "https://huggingface.co/me/semi"
    assert table.loc["adapter", "size"].endswith(" MB") and table.loc["adapter", "files"] >= 3
    shown = capsys.readouterr()
    for text in (shown.out, shown.err, table.to_string(), table.to_html()):
        assert SECRET not in text and OTHER not in text
    assert files_holding(run_dir, SECRET) == []


def test_several_formats_go_to_their_own_folders_of_the_repo(run_dir, monkeypatch, uploads):
    monkeypatch.setenv("HF_TOKEN", OTHER)  # off Colab: the environment's token
    table = export_and_push(run_dir, "adapter, merged16", "me/semi")  # papermill's -p passes text
    folders = [(kwargs["path_in_repo"], Path(kwargs["folder_path"]).name) for name, token, _, kwargs in uploads
               if name == "upload_folder" and token == OTHER]
    assert folders == [("adapter", "adapter"), ("merged16", "merged16")]
    assert list(table.index) == ["adapter", "merged16"]
    assert table.loc["merged16", "pushed to"] == "https://huggingface.co/me/semi/tree/main/merged16"
    assert (export_path(run_dir, "merged16") / "model.safetensors").is_file()
    export_and_push(run_dir, ["adapter"])  # a re-run replaces its export; no repo: no push
    assert len(uploads) == 4


def test_no_token_on_colab_says_how_to_add_the_secret_before_exporting(run_dir, monkeypatch, uploads):
    import huggingface_hub

    fake_colab(monkeypatch, {})
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(PushError) as err:
        export_and_push(run_dir, ["adapter"], "me/semi")
    message = str(err.value)
    assert "\n" not in message
    assert "add a Colab secret (the key icon in the left sidebar > Add new secret) named HF_TOKEN" in message
    assert "notebook access" in message
    assert uploads == [] and not export_path(run_dir, "adapter").exists()  # failed before a long export


def test_no_token_elsewhere_names_hf_token_and_login(run_dir, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(PushError, match=r"No Hugging Face token: set HF_TOKEN .*`hf auth login`"):
        export_and_push(run_dir, ["adapter"], "me/semi")


def test_formats_are_checked_and_none_means_no_export(run_dir, capsys):
    assert export_formats("gguf,adapter,gguf") == ["gguf", "adapter"] and export_formats([]) == []
    with pytest.raises(Exception, match=r"Unknown export format\(s\) lora in export_formats\. Valid: adapter, merged16, gguf"):
        export_formats(["adapter", "lora"])
    assert export_and_push(run_dir, []) is None
    assert capsys.readouterr().out.startswith("No export: export_formats is empty")
    assert not (run_dir / "export").exists()


def test_notebook_06_exports_through_one_call_and_takes_no_token():
    import nbformat

    from semifinetune.notebooks import NOTEBOOK_DIR, declared_parameters

    path = NOTEBOOK_DIR / "06_inference_sweep.ipynb"
    declared = declared_parameters(path)
    assert declared["export_formats"] == '["adapter"]' and declared["push_to_hub_repo"] == '""'
    cells = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert cells[-1].splitlines()[-1] == "export_and_push(run_dir, export_formats, push_to_hub_repo, gguf_quantization)"
    assert not [c for c in cells if "userdata" in c or "os.environ" in c or "token =" in c]
