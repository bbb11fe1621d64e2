"""The papermill runner: parameter routing, grids and their table, failures without tracebacks, and nbval's golden notebooks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from semifinetune import notebooks as nbrun
from semifinetune.config import ConfigError
from semifinetune.runs import PROJECT_ROOT

GOLDEN = PROJECT_ROOT / "tests" / "nbval"
REGENERATE = "python -m semifinetune notebooks --profile tiny --run-dir runs/nbval --golden tests/nbval"


def env_with_project() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}


# --- parameters ---


def test_parameters_reach_the_notebooks_that_declare_them():
    routed = nbrun.route_parameters(nbrun.notebook_paths(), "/r", "tiny", {"resume": True, "max_steps": "3"}, {"lora_r": 8})
    assert routed["01_setup"] == {"run_dir": "/r", "profile": "tiny", "overrides": {"lora_r": 8, "max_steps": 3}}
    assert routed["05_train"] == {"run_dir": "/r", "resume": True}  # only 05 declares resume
    assert routed["03_lora"] == {"run_dir": "/r"}
    assert routed["06_inference_sweep"]["interactive"] is False  # no widgets waiting headless


def test_unknown_parameter_names_the_declared_ones():
    with pytest.raises(ConfigError, match=r"-p lora_rank: no notebook declares it.*example_index"):
        nbrun.route_parameters(nbrun.notebook_paths(), "/r", "tiny", {"lora_rank": 8})


def test_literal_values_like_papermill():
    assert nbrun.literal("{'max_steps': 3}") == {"max_steps": 3}
    assert nbrun.literal("1e-3") == 0.001 and nbrun.literal("True") is True
    assert nbrun.literal("runs/x") == "runs/x"


# --- grid ---


def test_grid_values_take_the_config_type():
    assert nbrun.parse_grid("learning_rate=1e-4, 1e-3") == ("learning_rate", [1e-4, 1e-3])
    assert nbrun.parse_grid("max_steps=2,4") == ("max_steps", [2, 4])
    with pytest.raises(ConfigError, match="must be int"):
        nbrun.parse_grid("max_steps=2,x")
    with pytest.raises(ConfigError, match="Unknown config key 'lr'"):
        nbrun.parse_grid("lr=1e-4")
    with pytest.raises(ConfigError, match="key=v1,v2"):
        nbrun.parse_grid("learning_rate")


def fake_run(run_dir: Path, train_loss: float, eval_loss: float, tuned_correct: list[bool]) -> None:
    """train_log.json and evaluation.csv as train() and compare_base_tuned() write them."""
    run_dir.mkdir(parents=True, exist_ok=True)
    stats = {"final_train_loss": train_loss, "final_eval_loss": eval_loss}
    (run_dir / "train_log.json").write_text(json.dumps({"train_loss": [], "eval_loss": [], "stats": stats}))
    rows = ["model,question,recall,correct"]
    rows += [f"base,{i},0.0,False" for i in range(len(tuned_correct))]
    rows += [f"tuned,{i},{1.0 if ok else 0.5},{ok}" for i, ok in enumerate(tuned_correct)]
    (run_dir / "evaluation.csv").write_text("\n".join(rows) + "\n")


def test_grid_runs_each_value_and_tabulates(tmp_path, monkeypatch):
    calls = []

    def run_notebooks(run_dir, profile, params, overrides, progress=True, log=print, overwrite=False):
        calls.append((Path(run_dir).name, profile, overrides))
        lr = overrides["learning_rate"]
        fake_run(Path(run_dir), 2.0 - lr * 100, 2.5 - lr * 100, [True, lr > 5e-3])
        return [{"notebook": "01_setup", "seconds": 1.5}, {"notebook": "05_train", "seconds": 10.0}]

    monkeypatch.setattr(nbrun, "run_notebooks", run_notebooks)
    table = nbrun.run_grid(tmp_path, "tiny", "learning_rate", [1e-3, 1e-2], overrides={"max_steps": 3}, log=lambda _: None)
    assert calls == [
        ("learning_rate=0.001", "tiny", {"max_steps": 3, "learning_rate": 1e-3}),
        ("learning_rate=0.01", "tiny", {"max_steps": 3, "learning_rate": 1e-2}),
    ]
    saved = __import__("pandas").read_csv(tmp_path / "grid.csv")
    assert list(saved["learning_rate"]) == [1e-3, 1e-2]
    assert list(saved["final_train_loss"]) == pytest.approx([1.9, 1.0])
    assert list(saved["final_eval_loss"]) == pytest.approx([2.4, 1.5])
    assert list(saved["tuned_recall"]) == pytest.approx([0.75, 1.0])
    assert list(saved["base_recall"]) == [0.0, 0.0]
    assert list(saved["tuned_correct"]) == [1, 2]
    assert list(saved["run_seconds"]) == [11.5, 11.5]
    assert table.shape == saved.shape


def test_summary_of_a_run_without_results_is_nan(tmp_path):
    summary = nbrun.run_summary(tmp_path)
    assert all(value != value for value in summary.values())  # NaN: the table still has a row for a failed run


# --- failures ---


def test_failing_notebook_stops_with_one_line_and_keeps_earlier_files(tmp_path):
    """max_steps=0 fails in 01's setup cell: the CLI names notebook, cell and error, exits 2, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "semifinetune", "notebooks", "--profile", "tiny", "--run-dir", str(tmp_path / "run"), "-p", "max_steps", "0"],
        capture_output=True, text=True, env=env_with_project(), cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1
    assert re.search(r"01_setup\.ipynb failed at cell \d+ \(In \[\d+\]: `from semifinetune.pipeline import setup`\): "
                     r"ConfigError: Config key 'max_steps' = 0 is out of range", error[0])
    failed = tmp_path / "run" / "notebooks" / "01_setup.failed.ipynb"
    assert f"The executed copy with the full traceback is {failed}" in error[0]
    assert failed.exists() and not (tmp_path / "run" / "notebooks" / "02_load_4bit.ipynb").exists()
    assert not (tmp_path / "run" / "notebooks" / "01_setup.ipynb").exists()  # only a run that succeeded gets that name
    assert "ConfigError" in failed.read_text()  # the full traceback stays in the executed copy


def test_a_failed_rerun_never_overwrites_the_good_executed_notebook(tmp_path):
    """01 runs, then fails on a bad setting into the same place: the good copy is kept, the failed one beside it;
    the next good run replaces both."""
    path = nbrun.NOTEBOOK_DIR / "01_setup.ipynb"
    dst = tmp_path / "run" / "notebooks" / path.name
    good = {"run_dir": str(tmp_path / "run"), "profile": "tiny"}
    nbrun.execute(path, dst, good, PROJECT_ROOT, progress=False)
    before = dst.read_bytes()
    with pytest.raises(nbrun.NotebookFailed) as err:
        nbrun.execute(path, dst, {**good, "overrides": {"max_steps": 0}}, PROJECT_ROOT, progress=False)
    failed = nbrun.failed_copy(dst)
    assert dst.read_bytes() == before and "'max_steps' = 0 is out of range" in failed.read_text()
    assert f"{failed}" in str(err.value) and f"The earlier good copy {dst} is unchanged" in str(err.value)
    nbrun.execute(path, dst, good, PROJECT_ROOT, progress=False)
    assert not failed.exists() and not list(dst.parent.glob("*.running.ipynb"))


def test_overwrite_reaches_01_and_05():
    routed = nbrun.route_parameters(nbrun.notebook_paths(), "/r", "tiny", overwrite=True)
    assert {name for name, params in routed.items() if params.get("overwrite")} == {"01_setup", "05_train"}
    assert nbrun.route_parameters(nbrun.notebook_paths(), "/r", "tiny")["05_train"] == {"run_dir": "/r"}
    from semifinetune.cli import build_parser

    assert build_parser().parse_args(["notebooks", "--run-dir", "r", "--overwrite"]).overwrite is True


def test_a_second_run_into_a_trained_run_dir_stops_before_01(tmp_path, capsys):
    """What the refusal says works: --overwrite passes it, -p resume True passes it; nothing is executed."""
    from semifinetune.cli import main

    run_dir = tmp_path / "run"
    (run_dir / "adapter").mkdir(parents=True)
    (run_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    assert main(["notebooks", "--profile", "tiny", "--run-dir", str(run_dir)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "already holds a training run" in line and "--overwrite" in line and "-p resume True" in line
    assert not (run_dir / "notebooks").exists()
    nbrun.refuse_rerun(run_dir, {}, overwrite=True)
    nbrun.refuse_rerun(run_dir, {"resume": True}, overwrite=False)


def test_overrides_as_text_reach_01():
    """-p overrides as JSON or YAML text, as papermill's own CLI passes it, becomes 01's dict."""
    paths = nbrun.notebook_paths()
    for text in ('{"max_steps": 3}', "{'max_steps': 3}", "max_steps: 3"):
        assert nbrun.route_parameters(paths, "/r", "tiny", {"overrides": nbrun.literal(text)})["01_setup"]["overrides"] == {"max_steps": 3}
    with pytest.raises(ConfigError, match="'profile' is not an override"):
        nbrun.route_parameters(paths, "/r", "tiny", {"overrides": "profile: cpu"})


def test_plain_papermill_passes_overrides_as_text(tmp_path):
    """`papermill 01_setup.ipynb out.ipynb -p overrides "{'max_steps': 3}"`: papermill hands the text over as it is."""
    result = subprocess.run(
        [sys.executable, "-m", "papermill", str(nbrun.NOTEBOOK_DIR / "01_setup.ipynb"), str(tmp_path / "out.ipynb"),
         "-p", "profile", "tiny", "-p", "run_dir", str(tmp_path / "run"), "-p", "overrides", "{'max_steps': 3}",
         "--no-progress-bar"],
        capture_output=True, text=True, env={**env_with_project(), **nbrun.QUIET}, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["max_steps"] == 3


# --- nbval golden notebooks ---


def code_sources(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]


@pytest.mark.parametrize("name", nbrun.NOTEBOOKS)
def test_golden_notebooks_match_the_notebooks(name):
    """A notebook edited without regenerating its golden copy fails here, before nbval runs."""
    golden = nbformat.read(GOLDEN / f"{name}.ipynb", as_version=4)
    source = nbformat.read(nbrun.NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    assert code_sources(golden) == code_sources(source), f"tests/nbval/{name}.ipynb is stale: run `{REGENERATE}`"
    (injected,) = [c for c in golden.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert 'run_dir = "../../runs/nbval"' in injected.source  # nbval starts the kernel in tests/nbval/
    assert ("overwrite = True" in injected.source) == (name == "01_setup")
    assert all(c.execution_count for c in golden.cells if c.cell_type == "code")  # nbval skips unrun cells


def test_nbval_fails_when_a_checked_value_changes(tmp_path):
    """Golden 01 and 03 re-run by nbval: untouched they pass; with 03's LoRA count edited to rank 8's, that cell fails."""
    run_dir, edited = tmp_path / "run", None
    for name in ("01_setup", "03_lora"):
        nb = nbformat.read(GOLDEN / f"{name}.ipynb", as_version=4)
        for cell in nb.cells:
            if "injected-parameters" in cell.metadata.get("tags", []):
                cell.source = cell.source.replace('"../../runs/nbval"', repr(str(run_dir)))
            for output in cell.get("outputs", []):
                text = output.get("data", {}).get("text/plain", "")
                if "trainable parameters" in text and "14,336 (" in text:  # r=16 on q/k/v/o of the tiny model; r=8 trains half
                    output["data"]["text/plain"] = text.replace("14,336 (", "7,168 (")
                    edited = cell.source
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", str(tmp_path), "--nbval-sanitize-with", str(GOLDEN / "sanitize.cfg"),
         "-p", "no:cacheprovider", "-q", "--rootdir", str(tmp_path), "-c", os.devnull],
        capture_output=True, text=True, env={**env_with_project(), **nbrun.QUIET}, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 1, result.stdout[-3000:]
    failed = re.findall(r"^FAILED (\S+)", result.stdout, re.M)
    assert len(failed) == 1 and "03_lora.ipynb::Cell" in failed[0], result.stdout[-3000:]
    assert edited is not None and "lora_parameter_report(model)" in edited and "Cell outputs differ" in result.stdout
    assert "14,336" in result.stdout and "7,168" in result.stdout
    assert re.search(r"1 failed, \d+ passed", result.stdout)


# --- the main job and the notebooks agree ---


def test_run_command_and_notebooks_give_the_same_results(tmp_path):
    """`run` (the package) and `notebooks` (papermill) on tiny, same config and seed: same losses, adapter, answers (~1.5 min)."""
    import pandas as pd
    from safetensors.torch import load_file

    eval_file = tmp_path / "eval4.jsonl"  # 4 held-out questions: every step runs, in a fraction of the time
    lines = (PROJECT_ROOT / "data" / "semiconductor_eval.jsonl").read_text(encoding="utf-8").splitlines()
    eval_file.write_text("\n".join(lines[:4]) + "\n", encoding="utf-8")
    env = {**env_with_project(), **nbrun.QUIET}
    for command, run_dir in (("run", "main"), ("notebooks", "papermill")):
        result = subprocess.run(
            [sys.executable, "-m", "semifinetune", command, "--profile", "tiny", "--run-dir", str(tmp_path / run_dir), "--set", f"eval_file={eval_file}"],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        if command == "run":  # its summary line carries the 2 x 2 (base/tuned x none/notes/distractors), both sets
            summary, best = result.stdout.strip().splitlines()[-2:]
            cells = r"base \d+, base \+ top 1 \d+, base \+ 1 distractor \d+, tuned \d+, tuned \+ top 1 \d+, tuned \+ 1 distractor \d+"
            assert re.search(rf"with retrieval, correct: held-out {cells} of 4; general {cells} of 30;", summary), summary
            assert best.startswith("Most held-out answers right: the ") and " of 4 (" in best, best
    main, papermill = tmp_path / "main", tmp_path / "papermill"
    assert json.loads((main / "config.json").read_text()) == json.loads((papermill / "config.json").read_text())
    logs = [json.loads((d / "train_log.json").read_text()) for d in (main, papermill)]
    assert len(logs[0]["train_loss"]) == 6  # tiny: 6 steps, a loss each
    for key in ("train_loss", "eval_loss", "validation_loss"):
        assert [e["loss"] for e in logs[0][key]] == pytest.approx([e["loss"] for e in logs[1][key]], abs=1e-6)
    weights = [load_file(d / "adapter" / "adapter_model.safetensors") for d in (main, papermill)]
    assert weights[0].keys() == weights[1].keys() and len(weights[0]) > 0
    for name in weights[0]:
        assert (weights[0][name] - weights[1][name]).abs().max() < 1e-6, name
    columns = ["model", "question", "answer", "recall", "correct", "finish_reason"]
    evaluations = [pd.read_csv(d / "evaluation.csv", keep_default_na=False)[columns] for d in (main, papermill)]
    assert len(evaluations[0]) == 8  # 4 questions x base and tuned
    pd.testing.assert_frame_equal(evaluations[0], evaluations[1])
    recommended = [json.loads((d / "recommended_settings.json").read_text()) for d in (main, papermill)]
    same = ("temperature", "top_p", "repetition_penalty", "max_new_tokens", "recall", "eos_rate", "answers")
    assert {k: recommended[0][k] for k in same} == {k: recommended[1][k] for k in same}
