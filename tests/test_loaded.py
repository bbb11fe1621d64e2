"""The model loaded once: notebook 06's parts share one load, a new adapter or another run loads afresh, and the held
model answers as a fresh load does."""

from __future__ import annotations

import gc
import os
import shutil
import weakref
from pathlib import Path

import pandas as pd
import pytest

from semifinetune import loaded, models, runs
from semifinetune.compare import compare_retrieval
from semifinetune.evaluate import as_model, compare_base_tuned, load_base_and_tuned, read_evaluation
from semifinetune.runs import PROJECT_ROOT, open_run
from semifinetune.sweep import run_sweep

ANSWER_COLUMNS = ["model", "question", "text", "answer", "finish_reason", "new_tokens", "recall", "correct"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny run trained by train() (6 steps) on 3 held-out questions, the 2 x 2 on 2 questions a set: the three
    notebook-06 parts in seconds each."""
    from semifinetune.data import prepare_data
    from semifinetune.pipeline import setup
    from semifinetune.train import train

    run_dir = tmp_path_factory.mktemp("loaded") / "run"
    eval_file = run_dir.parent / "eval3.jsonl"
    lines = (PROJECT_ROOT / "data" / "semiconductor_eval.jsonl").read_text(encoding="utf-8").splitlines()
    eval_file.write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    overrides = {"eval_file": str(eval_file), "retrieval_compare_questions": 2, "sweep_questions": 2, "max_new_tokens": 8}
    cfg, _ = setup(run_dir, "tiny", overrides)
    prepare_data(run_dir)
    train(cfg, run_dir)
    return run_dir


@pytest.fixture(autouse=True)
def nothing_held():
    """Each test starts and ends with no model held, so its load counts are its own."""
    loaded.forget()
    yield
    loaded.forget()


@pytest.fixture
def loads(monkeypatch):
    """The list of configs models.load_model was called with, from here on."""
    calls = []
    real = models.load_model

    def counting(cfg, *args, **kwargs):
        calls.append(cfg)
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(models, "load_model", counting)
    return calls


def answers(run_dir: Path) -> pd.DataFrame:
    return read_evaluation(run_dir)[ANSWER_COLUMNS]


def perturb_adapter(run_dir: Path, seed: int) -> None:
    """Rewrite the adapter's weights in place, same names and shapes (so the same file size), other values."""
    import torch
    from safetensors.torch import load_file, save_file

    path = runs.run_path(run_dir, runs.ADAPTER) / "adapter_model.safetensors"
    weights = load_file(path)
    generator = torch.Generator().manual_seed(seed)
    changed = {name: torch.randn(w.shape, generator=generator, dtype=w.dtype) * 0.5 if "lora_B" in name else w
               for name, w in weights.items()}
    size = path.stat().st_size
    save_file(changed, path, metadata={"format": "pt"})
    assert path.stat().st_size == size  # only the mtime can tell the new file from the old


def test_notebook_06_loads_the_model_once(trained_run, loads):
    compare_base_tuned(trained_run, progress=False)
    compare_retrieval(trained_run, progress=False, reuse_evaluation=True)
    run_sweep(trained_run, progress=False)
    assert len(loads) == 1
    model, _ = load_base_and_tuned(open_run(trained_run), trained_run)  # the playground's call: the same object
    assert len(loads) == 1 and loaded.held_key()[0] == str((trained_run / runs.ADAPTER).resolve())
    assert loaded.forget() is True and loaded.held_key() is None and loaded.forget() is False
    again, _ = load_base_and_tuned(open_run(trained_run), trained_run)
    assert len(loads) == 2 and again is not model


def test_the_held_model_answers_as_a_fresh_load_does(trained_run, tmp_path, loads):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    perturb_adapter(run_dir, seed=0)  # 6 tiny steps barely move the answers; these weights do
    compare_base_tuned(run_dir, progress=False)  # a fresh load
    fresh = answers(run_dir)
    run_sweep(run_dir, progress=False)  # the held model used in between, both models, other settings
    compare_retrieval(run_dir, progress=False)
    compare_base_tuned(run_dir, progress=False)
    assert len(loads) == 1
    pd.testing.assert_frame_equal(answers(run_dir), fresh)
    base, tuned = (fresh[fresh["model"] == which]["text"].fillna("").to_numpy() for which in ("base", "tuned"))
    assert (base != tuned).any()  # the adapter changes answers: a held model stuck without it would show


def test_the_held_model_comes_back_as_loaded(trained_run, loads):
    cfg = open_run(trained_run)
    model, tokenizer = load_base_and_tuned(cfg, trained_run)
    model.train()
    tokenizer.padding_side = "left"
    same, tokenizer = load_base_and_tuned(cfg, trained_run)
    assert same is model and not model.training and tokenizer.padding_side == "right" and len(loads) == 1
    with as_model(model, "base"):  # asked for while its adapter is off: a fresh load, not the base model as "tuned"
        other, _ = load_base_and_tuned(cfg, trained_run)
    assert other is not model and len(loads) == 2 and other.get_model_status().enabled is True
    other.merge_adapter()  # merged weights are no longer base + adapter: never handed out again
    third, _ = load_base_and_tuned(cfg, trained_run)
    assert third is not other and len(loads) == 3
    third.merge_and_unload()  # the adapter folded in and its layers taken out: the same
    assert load_base_and_tuned(cfg, trained_run)[0] is not third and len(loads) == 4


def test_a_changed_adapter_loads_afresh(trained_run, tmp_path, loads):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    compare_base_tuned(run_dir, progress=False)
    before = answers(run_dir)
    perturb_adapter(run_dir, seed=1)  # same size: only its mtime_ns differs
    compare_base_tuned(run_dir, progress=False)
    assert len(loads) == 2
    after = answers(run_dir)
    assert (after["text"] != before["text"])[after["model"] == "tuned"].any()  # the new weights answered
    pd.testing.assert_frame_equal(after[after["model"] == "base"], before[before["model"] == "base"])
    config = runs.run_path(run_dir, runs.ADAPTER) / "adapter_config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # edited by hand, say: loaded again
    compare_base_tuned(run_dir, progress=False)
    assert len(loads) == 3


def test_retraining_loads_afresh(trained_run, tmp_path, loads):
    from semifinetune.train import train

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    perturb_adapter(run_dir, seed=2)  # the adapter retraining replaces answers otherwise than the trained one
    compare_base_tuned(run_dir, progress=False)
    perturbed = answers(run_dir)
    train(open_run(run_dir), run_dir, overwrite=True)
    assert loaded.held_key() is None  # training dropped the held model before loading its own
    compare_base_tuned(run_dir, progress=False)
    assert len(loads) == 3  # evaluate, train, evaluate
    retrained = answers(run_dir)
    compare_base_tuned(trained_run, progress=False)  # the same training in the shared run: the same answers
    pd.testing.assert_frame_equal(retrained, answers(trained_run))
    assert (retrained["text"] != perturbed["text"]).any()


def test_another_run_loads_afresh_and_drops_the_old_model(trained_run, tmp_path, loads):
    copy, run_dir = tmp_path / "copy", tmp_path / "run"
    shutil.copytree(trained_run, copy)  # copy2: the same sizes and mtimes, only the folder differs
    shutil.copytree(trained_run, run_dir)
    perturb_adapter(run_dir, seed=3)
    old = weakref.ref(load_base_and_tuned(open_run(trained_run), trained_run)[0])
    load_base_and_tuned(open_run(copy), copy)
    assert len(loads) == 2 and loaded.held_key()[0] == str((copy / runs.ADAPTER).resolve())
    gc.collect()
    assert old() is None  # nothing of the first run's model is left holding memory
    compare_base_tuned(run_dir, progress=False)
    assert len(loads) == 3 and loaded.held_key()[0] == str((run_dir / runs.ADAPTER).resolve())
    compare_base_tuned(trained_run, progress=False)
    assert len(loads) == 4
