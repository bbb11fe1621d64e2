"""Bad data and bad settings fail cleanly before any model loads; results are never overwritten silently; training
out of memory says what to lower; pickle weights and remote code are refused; disk space is checked before training."""

from __future__ import annotations

import ast
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from semifinetune import runs
from semifinetune.config import ConfigError, make_config
from semifinetune.data import DataError, read_examples, validate_files

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
PACKAGE = ROOT / "semifinetune"
GOOD = {"input": "What is TSMC?", "output": "The largest dedicated foundry."}
GOOD_EVAL = {"input": "Who founded TSMC?", "output": "Morris Chang.", "keywords": [["Morris Chang"]]}


def env_with_project() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def cli(args: list[str], cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "semifinetune", *args], capture_output=True, text=True,
                          env=env_with_project(), cwd=cwd, timeout=timeout)


def write_lines(path: Path, lines: list) -> Path:
    raw = b"".join((json.dumps(x).encode() if isinstance(x, dict) else x if isinstance(x, bytes) else x.encode()) + b"\n"
                   for x in lines)
    path.write_bytes(raw)
    return path


def refuse_model_loads(monkeypatch) -> None:
    """Any model load from here on fails the test: what is checked must fail before it."""
    from semifinetune import models

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_model", no_load)


# --- 1. bad data: `file:line: problem`, exit 1 from validate-data, the same line everywhere ---

LONG_ANSWER = " ".join(["lithography"] * 900)  # ~900+ tokens after formatting: over the tiny profile's 512
BAD_DATA = {
    "invalid JSON": ("train", [GOOD, '{"input": "q", "output": }'], 2, "invalid JSON"),
    "missing field": ("train", [GOOD, {"input": "Why?"}], 2, "missing field 'output'"),
    "empty field": ("train", [GOOD, {"input": "Why?", "output": " "}], 2, "field 'output' is empty"),
    "wrong type": ("train", [GOOD, {"input": 7, "output": "a"}], 2, "field 'input' must be a string"),
    "special token": ("train", [{"input": "Why?", "output": "ok<|im_end|>"}, GOOD], 1, "special-token string"),
    "duplicate": ("train", [GOOD, {"input": "what is  TSMC?", "output": "x"}], 2, "duplicate of"),
    "invalid UTF-8": ("train", [GOOD, b'{"input": "caf\xe9", "output": "a"}'], 2, "invalid UTF-8"),
    "not an object": ("train", [GOOD, "[1, 2]"], 2, "expected a JSON object"),
    "too long": ("train", [GOOD, {"input": "Why?", "output": LONG_ANSWER}], 2, "over max_seq_length 512"),
    "keywords shape": ("eval", [GOOD_EVAL, {"input": "Who?", "output": "x", "keywords": ["TSMC"]}], 2, "field 'keywords' group 1"),
    "chat role": ("train", [{"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}], 1,
                  "messages message 1: role 'tool' is not system, user or assistant"),
    "empty file": ("train", [""], 1, "the file is empty"),
    "CSV": ("train", ["input,output", "q,a"], 1, "not a JSONL file (this looks like CSV: name the file .csv or .tsv"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_validate_data_names_file_and_line_and_exits_1(case, tmp_path, capsys):
    from semifinetune.cli import main

    kind, lines, line, expected = BAD_DATA[case]
    path = write_lines(tmp_path / f"{kind}.jsonl", lines)
    assert main(["validate-data", str(path), "--profile", "tiny", "--kind", kind]) == 1
    out = capsys.readouterr()
    problems = out.err.strip().splitlines()
    assert len(problems) == 1 and out.out == ""
    assert problems[0].startswith(f"{path}:{line}: ") and expected in problems[0], problems[0]


def test_held_out_question_in_training_file_exits_1(tmp_path, capsys):
    from semifinetune.cli import main

    train = write_lines(tmp_path / "train.jsonl", [GOOD, {"input": "Who founded TSMC?", "output": "Morris Chang."}])
    held_out = write_lines(tmp_path / "eval.jsonl", [GOOD_EVAL])
    assert main(["validate-data", str(train), str(held_out), "--profile", "tiny"]) == 1
    (problem,) = capsys.readouterr().err.strip().splitlines()
    assert problem == f"{held_out}:1: the same question as {train}:2; held-out questions must not be in the training file"


@pytest.fixture
def bad_run(tmp_path):
    """A tiny run whose train_file has a bad line 2: (run_dir, the problem line)."""
    from semifinetune.pipeline import setup

    bad = write_lines(tmp_path / "bad.jsonl", [GOOD, {"input": "Who?", "output": "TSMC"}, {"input": "When?", "output": "1987"}])
    run_dir = tmp_path / "run"
    setup(run_dir, "tiny", {"train_file": str(bad)})  # its held-out and validation questions: a saved sample
    write_lines(bad, [GOOD, {"input": "Why?"}])  # broken after 01, which would have refused it
    return run_dir, f"{bad}:2: missing field 'output'"


def test_prepare_data_and_train_stop_with_the_same_line(bad_run, capsys, monkeypatch):
    """prepare-data prints the validator's line and exits 1; train then says to run notebook 04, both before any model."""
    from semifinetune.cli import main

    refuse_model_loads(monkeypatch)
    run_dir, problem = bad_run
    assert main(["prepare-data", "--run-dir", str(run_dir)]) == 1
    assert capsys.readouterr().err.strip() == problem
    assert main(["train", "--run-dir", str(run_dir)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "does not exist. Run notebook 04_format" in line


def test_run_stops_on_bad_data_before_any_model_loads(tmp_path):
    """`run` in a subprocess: exit 2, one line, no traceback; the data step comes before the baseline model loads."""
    bad = write_lines(tmp_path / "bad.jsonl", [GOOD, {"input": "Why?"}])
    result = cli(["run", "--profile", "tiny", "--run-dir", str(tmp_path / "run"), "--set", f"train_file={bad}"], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {bad}:2: missing field 'output'"]
    assert not (tmp_path / "run" / runs.BASELINE).exists()  # notebook 02's step never ran


def test_notebook_shows_the_validators_line(bad_run):
    """Notebook 04 on the bad run: the failing cell's error is the same `file:line: problem`."""
    from semifinetune import notebooks as nbrun

    run_dir, problem = bad_run
    path = nbrun.NOTEBOOK_DIR / "04_format.ipynb"
    with pytest.raises(nbrun.NotebookFailed) as err:
        nbrun.execute(path, run_dir / "notebooks" / path.name, {"run_dir": str(run_dir)}, ROOT, progress=False)
    assert f"DataError: {problem}" in str(err.value)
    assert problem in nbrun.failed_copy(run_dir / "notebooks" / path.name).read_text(encoding="utf-8")


# Corruptions of the real data files, each a function of (bytes, random) -> bytes.
def _flip_bytes(raw, rng):
    raw = bytearray(raw)
    for _ in range(rng.randint(1, 5)):
        raw[rng.randrange(len(raw))] = rng.randrange(256)
    return bytes(raw)


def _truncate(raw, rng):
    return raw[: rng.randrange(len(raw))]


def _delete_quote(raw, rng):
    quotes = [i for i, b in enumerate(raw) if b == ord('"')]
    i = rng.choice(quotes)
    return raw[:i] + raw[i + 1 :]


def _duplicate_line(raw, rng):
    lines = raw.split(b"\n")
    i = rng.randrange(len(lines))
    return b"\n".join(lines[: i + 1] + [lines[i]] + lines[i + 1 :])


def _invalid_utf8(raw, rng):
    i = rng.randrange(len(raw))
    return raw[:i] + rng.choice([b"\xff", b"\xc3\x28", b"\xe9", b"\xed\xa0\x80"]) + raw[i:]


def _swap_fields(raw, rng):
    lines = raw.split(b"\n")
    i = rng.randrange(len(lines) - 1)
    row = json.loads(lines[i])
    a, b = rng.sample(sorted(row), 2)
    row[a], row[b] = row[b], row[a]
    lines[i] = json.dumps(row, ensure_ascii=False).encode()
    return b"\n".join(lines)


def _join_lines(raw, rng):
    i = rng.choice([k for k, b in enumerate(raw[:-1]) if b == ord("\n")])
    return raw[:i] + raw[i + 1 :]


def _drop_field(raw, rng):
    lines = raw.split(b"\n")
    i = rng.randrange(len(lines) - 1)
    row = json.loads(lines[i])
    row.pop(rng.choice(sorted(row)))
    lines[i] = json.dumps(row).encode()
    return b"\n".join(lines)


CORRUPTIONS = [_flip_bytes, _truncate, _delete_quote, _duplicate_line, _invalid_utf8, _swap_fields, _join_lines, _drop_field]
LOCATION = r"(?:\d+|item \d+)"


def _corrupted_copies(tmp_path, count: int, lines: int = 0):
    """(path, kind, corruption name) for `count` corrupted copies of the real train and eval files, seed 0."""
    rng = random.Random(0)
    sources = {"train": (DATA / "semiconductor_train.jsonl").read_bytes(), "eval": (DATA / "semiconductor_eval.jsonl").read_bytes()}
    for n in range(count):
        kind = rng.choice(sorted(sources))
        raw = sources[kind]
        if lines:  # a random excerpt: keeps the tokenizer's work small
            rows = raw.split(b"\n")
            start = rng.randrange(len(rows) - lines)
            raw = b"\n".join(rows[start : start + lines]) + b"\n"
        corrupt = rng.choice(CORRUPTIONS)
        path = tmp_path / f"{n:03d}_{kind}.jsonl"
        path.write_bytes(corrupt(raw, rng))
        yield path, kind, corrupt.__name__


def _assert_clean_problems(err: DataError, path: Path) -> None:
    for line in str(err).splitlines():
        assert re.match(rf"{re.escape(str(path))}:{LOCATION}: \S", line), line


def test_fuzzed_data_files_give_a_clean_error_or_pass(tmp_path):
    """100 corrupted copies of the real files through read_examples: DataError with located lines, or acceptance."""
    outcomes = {"error": 0, "accepted": 0}
    for path, kind, name in _corrupted_copies(tmp_path, 100):
        try:
            rows = read_examples(path, kind)
        except DataError as err:
            _assert_clean_problems(err, path)
            outcomes["error"] += 1
        else:  # accepted: every example has what training needs
            assert rows and all(isinstance(r["input"], str) and isinstance(r["output"], str) for r in rows), name
            outcomes["accepted"] += 1
    assert outcomes["error"] >= 50 and outcomes["accepted"] >= 5, outcomes  # both outcomes were exercised


def test_fuzzed_excerpts_through_the_tokenizer(tmp_path, tiny_tokenizer, tiny_cfg):
    """30 corrupted 12-line excerpts through validate_files (formatting and token counts too): DataError or a summary."""
    for path, kind, name in _corrupted_copies(tmp_path, 30, lines=12):
        try:
            summary = validate_files([str(path)], tiny_cfg, [kind], tokenizer=tiny_tokenizer)
        except DataError as err:
            _assert_clean_problems(err, path)
        else:
            assert summary[str(path)]["examples"] > 0, name


def test_fuzzed_file_through_the_cli(tmp_path, capsys):
    """A handful through `validate-data` itself: exit 0 or 1, never an exception."""
    from semifinetune.cli import main

    for path, kind, _ in list(_corrupted_copies(tmp_path, 4, lines=8)):
        code = main(["validate-data", str(path), "--profile", "tiny", "--kind", kind])
        err = capsys.readouterr().err
        assert code in (0, 1) and (code == 0) == (err == "")


# --- 2. bad settings: one line naming the key and its range, exit 2, nothing written, no model loaded ---

BAD_SETTINGS = [
    ("learning_rate=-1e-4", "'learning_rate' = -0.0001 is out of range: it must be in (0, 1)"),
    ("learning_rate=0", "'learning_rate' = 0.0 is out of range: it must be in (0, 1)"),
    ("lora_r=0", "'lora_r' = 0 is out of range: it must be a positive integer"),
    ("temperature=-0.5", "'temperature' = -0.5 is out of range: it must be 0 or more"),
    ("top_p=0", "'top_p' = 0.0 is out of range: it must be in (0, 1]"),
    ("top_p=1.2", "'top_p' = 1.2 is out of range: it must be in (0, 1]"),
    ("max_steps=0", "'max_steps' = 0 is out of range: it must be a positive number"),
    ("load_in_4bit=true", "load_in_4bit=True needs a CUDA GPU"),
    ("backend=unsloth", "backend='unsloth'"),
    ("precision=fp16", "precision='fp16' needs a CUDA GPU; on a CPU use precision='fp32'"),
    ("train_file=data/missing.jsonl", "train_file 'data/missing.jsonl': no such file"),
    ("profile=cpu", "'profile' is not an override: choose it with the profile parameter"),
    ("run_dir=elsewhere", "'run_dir' is a notebook parameter, not a config key"),
    # settings transformers, peft or numpy would refuse only once the model has loaded
    ("optim=adamw_bogus", "'optim' = 'adamw_bogus' is not one transformers knows. Valid: adamw_torch, "),
    ("lr_scheduler_type=bogus", "'lr_scheduler_type' = 'bogus' is not one transformers knows. Valid: linear, cosine"),
    ("target_modules=qq_proj", "target_modules ['qq_proj'] name no layer of tiny:random-qwen2: LoRA can target q_proj"),
    ("seed=-1", "'seed' = -1 is out of range: it must be in [0, 4294967295]"),
    ("temperature=inf", "'temperature' = inf is not a finite number"),
    ("sweep_temperatures=0.3,inf", "'sweep_temperatures' = [0.3, inf] is not a finite number"),
    ("model_name=./models/no-such-model", "model_name './models/no-such-model' is no folder on this machine"),
]


def test_setup_checks_the_data_files_before_any_model_loads(tmp_path, capsys, monkeypatch):
    """A missing or broken data file fails at 01 (setup), not at 04 after 02 and 03 have each loaded the model."""
    from semifinetune.cli import main

    refuse_model_loads(monkeypatch)
    run_dir = tmp_path / "run"
    assert main(["setup", "--profile", "tiny", "--run-dir", str(run_dir), "--set", "train_file=data/missing.jsonl"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: train_file 'data/missing.jsonl': no such file") and "--set train_file=PATH" in line
    bad = write_lines(tmp_path / "bad_eval.jsonl", [{"input": "Who?"}])  # no reference answer
    assert main(["setup", "--profile", "tiny", "--run-dir", str(run_dir), "--set", f"eval_file={bad}"]) == 2
    assert f"{bad}:1: missing field 'output'" in capsys.readouterr().err
    assert not run_dir.exists()


def test_bad_settings_fail_in_one_line_before_anything_is_written(tmp_path):
    """`run --profile tiny --set ...` per bad setting, all in parallel, plus an unknown profile."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("the 4-bit and fp16 cases are valid on a CUDA machine")
    cases = [(["--profile", "tiny", "--set", setting], expected) for setting, expected in BAD_SETTINGS]
    cases.append((["--profile", "colab"], "Unknown profile 'colab'. Valid profiles: auto (t4 on a CUDA GPU, cpu elsewhere), t4, cpu, tiny"))
    procs = []
    for n, (args, expected) in enumerate(cases):
        run_dir = tmp_path / f"run{n}"
        cmd = [sys.executable, "-m", "semifinetune", "run", "--run-dir", str(run_dir), *args]
        procs.append((run_dir, expected, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                                          env=env_with_project(), cwd=tmp_path)))
    for run_dir, expected, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (expected, err)
        assert "Traceback" not in err and out == ""
        (line,) = err.strip().splitlines()
        assert line.startswith("error: ") and expected in line, line
        assert not run_dir.exists()  # no config.json, no env.json: setup stopped before writing


def test_unsloth_missing_is_named(monkeypatch):
    """Where Unsloth is installed but there is no GPU the CLI case above says 'needs a CUDA GPU'; here, not installed."""
    from semifinetune.models import check_loadable

    report = {"cuda_available": True, "bf16_supported": True, "unsloth_importable": False, "gpu_name": "A100"}
    with pytest.raises(ConfigError, match=r"backend='unsloth' but Unsloth is not installed\. pip install unsloth"):
        check_loadable(make_config("tiny", {"backend": "unsloth"}), report)


def test_cli_catches_every_config_and_model_error(capsys, monkeypatch, tmp_path):
    """Every command goes through main's handler: ConfigError subclasses and ModelLoadError print one line, exit 2."""
    from semifinetune import cli
    from semifinetune.models import ModelLoadError

    commands = {"run": "cmd_run", "prepare-data": "cmd_prepare_data", "train": "cmd_train", "evaluate": "cmd_evaluate",
                "sweep": "cmd_sweep", "export": "cmd_export", "notebooks": "cmd_notebooks"}
    for error in (ConfigError("bad setting"), DataError("f.jsonl:3: bad"), ModelLoadError("hub not reachable")):
        for command, function in commands.items():
            def raising(args, error=error):
                raise error

            monkeypatch.setattr(cli, function, raising)  # build_parser binds the module's function at call time
            argv = [command, "--run-dir", str(tmp_path / "r")] + (["--format", "adapter"] if command == "export" else [])
            assert cli.main(argv) == 2
            assert capsys.readouterr().err == f"error: {error}\n"


def test_cli_error_never_shows_a_token(capsys, monkeypatch):
    from semifinetune.cli import main

    monkeypatch.setenv("HF_TOKEN", "hf_FAKEsecret123456")
    monkeypatch.setattr("semifinetune.runs.open_run", lambda run_dir: (_ for _ in ()).throw(
        ConfigError("upload refused for token hf_FAKEsecret123456")))
    assert main(["train", "--run-dir", "r"]) == 2
    err = capsys.readouterr().err
    assert "hf_FAKEsecret123456" not in err and "***" in err


# --- 4. out of memory while training ---


def _fake_trainer(error):
    def train(resume_from_checkpoint=None):
        raise error

    return SimpleNamespace(args=SimpleNamespace(world_size=1), is_world_process_zero=lambda: True, train=train)


@pytest.mark.parametrize("cuda", [True, False], ids=["gpu", "cpu"])
def test_training_out_of_memory_names_memory_and_settings(cuda, tmp_path, monkeypatch):
    import torch

    from semifinetune import train as train_module

    cfg = make_config("t4", {"recipe": "guide"})
    report = {"cuda_available": cuda, "bf16_supported": False, "gpu_name": "Tesla T4", "gpu_memory_gib": 14.7,
              "ram_gib": 12.7, "cpu_count": 2}
    monkeypatch.setattr(train_module, "build_trainer", lambda *a, **k: _fake_trainer(torch.OutOfMemoryError("CUDA out of memory")))
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a: int(14.2 * 2**30))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    with pytest.raises(train_module.TrainingMemoryError) as err:
        train_module.fit(torch.nn.Linear(4, 4), None, cfg, tmp_path, report=report)
    message = str(err.value)
    if cuda:
        assert "Tesla T4: 14.7 GiB total, 14.2 GiB peak reserved" in message
    else:
        assert "no CUDA GPU; 12.7 GiB RAM" in message
    assert "per_device_train_batch_size=4, max_seq_length=1024, gradient_checkpointing=True" in message
    assert "Lower per_device_train_batch_size" in message and "or max_seq_length" in message
    assert isinstance(err.value, ConfigError)  # the CLI prints it as one line


def test_other_training_errors_are_not_dressed_as_memory(tmp_path, monkeypatch):
    import torch

    from semifinetune import train as train_module

    monkeypatch.setattr(train_module, "build_trainer", lambda *a, **k: _fake_trainer(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        train_module.fit(torch.nn.Linear(4, 4), None, make_config("tiny"), tmp_path,
                         report={"cuda_available": False, "bf16_supported": False})


# --- 5. results are never overwritten silently ---


def _with_adapter(run_dir: Path) -> Path:
    from semifinetune.pipeline import setup

    setup(run_dir, "tiny")
    adapter = runs.run_path(run_dir, runs.ADAPTER)
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    return adapter


def test_second_train_refuses_without_resume_or_overwrite(tmp_path, capsys, monkeypatch):
    from semifinetune.cli import main

    refuse_model_loads(monkeypatch)
    adapter = _with_adapter(tmp_path / "run")
    assert main(["train", "--run-dir", str(tmp_path / "run")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"{adapter} already hold(s) a training run" in line and "--resume" in line and "--overwrite" in line
    assert (adapter / "adapter_model.safetensors").read_bytes() == b"weights"


def test_train_overwrite_and_resume_get_past_the_refusal(tmp_path, monkeypatch):
    from semifinetune import train as train_module

    _with_adapter(tmp_path / "run")
    train_module.refuse_to_overwrite(tmp_path / "run", resume=False, overwrite=True)
    train_module.refuse_to_overwrite(tmp_path / "run", resume=True, overwrite=False)
    train_module.refuse_to_overwrite(tmp_path / "fresh", resume=False, overwrite=False)


def test_run_again_refuses_before_loading_and_overwrite_clears(tmp_path, capsys, monkeypatch):
    """Same config, results present: `run` stops at once; --overwrite clears the old results before the new run."""
    from semifinetune.cli import main
    from semifinetune.pipeline import setup

    refuse_model_loads(monkeypatch)
    run_dir = tmp_path / "run"
    adapter = _with_adapter(run_dir)
    (run_dir / runs.TRAIN_LOG).write_text("{}")
    assert main(["run", "--profile", "tiny", "--run-dir", str(run_dir)]) == 2
    assert "already hold(s) a training run" in capsys.readouterr().err
    assert adapter.exists() and not (run_dir / runs.BASELINE).exists()
    with pytest.raises(ConfigError, match="from another config"):  # another config: refused by setup itself
        setup(run_dir, "tiny", {"lora_r": 8})
    setup(run_dir, "tiny", {"lora_r": 8}, overwrite=True)
    assert runs.existing_results(run_dir) == [] and json.loads((run_dir / runs.CONFIG).read_text())["lora_r"] == 8


def test_export_refuses_an_existing_export(tiny_run, tmp_path):
    from semifinetune.export import ExportError, export_run

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    export_run(run_dir, "adapter")
    with pytest.raises(ExportError, match="already exists. Pass --overwrite"):
        export_run(run_dir, "adapter")


# --- 7. no remote code, safetensors only, pickle adapters refused ---


def _from_pretrained_calls():
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained":
                yield path.name, node, ast.unparse(node.func.value)


def test_trust_remote_code_is_never_on():
    calls = list(_from_pretrained_calls())
    assert len(calls) >= 8
    for name, node, owner in calls:
        for keyword in node.keywords:
            if keyword.arg == "trust_remote_code":
                assert isinstance(keyword.value, ast.Constant) and keyword.value.value is False, (name, ast.unparse(node))
    source = "\n".join(p.read_text(encoding="utf-8") for p in PACKAGE.glob("*.py"))
    assert not re.search(r"trust_remote_code[\"']?\s*[=:]\s*True", source)


def test_models_load_safetensors_only(monkeypatch, tiny_cfg):
    """Every model load in models.py asks for safetensors (the embedded GGUF conversion reads GGUF, not pickle)."""
    for name, node, owner in _from_pretrained_calls():
        if name != "models.py" or owner in ("AutoTokenizer", "AutoConfig"):  # JSON and tokenizer files, no weights
            continue
        keywords = {k.arg: k.value for k in node.keywords}
        if "gguf_file" in keywords:
            continue
        if None in keywords:  # **kwargs: the dict built just above the call
            continue
        assert ast.unparse(keywords["use_safetensors"]) == "True", ast.unparse(node)
    from transformers import AutoModelForCausalLM

    from semifinetune import models

    seen = {}
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    models.load_model(tiny_cfg)
    assert seen["use_safetensors"] is True and seen["trust_remote_code"] is False


@pytest.mark.parametrize("pickle_file", ["adapter_model.bin", "optimizer.pt", "weights.pkl"])
def test_pickle_adapter_is_refused_wherever_it_is_loaded(pickle_file, tiny_run, tmp_path, capsys, monkeypatch):
    from semifinetune.cli import main
    from semifinetune.evaluate import load_base_and_tuned
    from semifinetune.export import export_run
    from semifinetune.pipeline import open_run
    from semifinetune.safety import UnsafeWeightsError

    refuse_model_loads(monkeypatch)
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    (run_dir / runs.ADAPTER / pickle_file).write_bytes(b"\x80\x04K\x01.")  # pickle of the int 1
    message = rf"holds pickle weight files \({re.escape(pickle_file)}\).*refused.*adapter_model\.safetensors"
    with pytest.raises(UnsafeWeightsError, match=message):
        load_base_and_tuned(open_run(run_dir), run_dir)
    for fmt in ("adapter", "merged16"):
        with pytest.raises(UnsafeWeightsError, match=message):
            export_run(run_dir, fmt)
    assert not (run_dir / "export").exists()
    for command in ("evaluate", "sweep"):
        assert main([command, "--run-dir", str(run_dir)]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("error: ") and pickle_file in line


def test_adapter_without_safetensors_is_refused(tmp_path):
    from semifinetune.safety import UnsafeWeightsError, refuse_pickle_weights

    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(UnsafeWeightsError, match="has no adapter_model.safetensors"):
        refuse_pickle_weights(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    refuse_pickle_weights(tmp_path)  # safetensors only: accepted


# --- 8. disk space before training ---


def test_training_disk_estimate_for_r1():
    """R1-1.5B, r=16 on q/k/v/o: 4,358,144 trainable x 12 bytes x 3 checkpoints + the adapter, plus tokenizer files."""
    from semifinetune.train import FOLDER_OVERHEAD_BYTES, training_disk_bytes

    assert training_disk_bytes(4_358_144) == 3 * (4_358_144 * 12 + FOLDER_OVERHEAD_BYTES) + 4_358_144 * 4 + FOLDER_OVERHEAD_BYTES
    assert 0.25 < training_disk_bytes(4_358_144) / 2**30 < 0.3  # about 0.27 GiB


def test_training_stops_before_writing_when_the_disk_is_full(tmp_path, monkeypatch):
    import torch

    from semifinetune import train as train_module
    from semifinetune.safety import DiskSpaceError

    def no_trainer(*args, **kwargs):
        raise AssertionError("the trainer was built")

    monkeypatch.setattr(train_module, "build_trainer", no_trainer)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 2**20, 2**20))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    model = torch.nn.Linear(1000, 1000)  # 1,001,000 trainable parameters
    with pytest.raises(DiskSpaceError) as err:
        train_module.fit(model, None, make_config("tiny"), run_dir, report={"cuda_available": False, "bf16_supported": False})
    message = str(err.value)
    assert "training checkpoints and the adapter (1,001,000 trainable parameters x 12 bytes x 3 checkpoints)" in message
    assert "1.00 MiB is free" in message and "Free some space" in message
    assert [p.name for p in run_dir.iterdir()] == ["run.lock"]  # nothing written but the run directory's lock
