"""Training on the tiny profile: TRL's current API, loss history, stats, adapter round trip, resume, golden losses."""

from __future__ import annotations

import json
import re

import pytest

from semifinetune import runs
from semifinetune.config import ConfigError, make_config

# Losses of the tiny profile's 6-step run (seed 42): train loss at steps 1-6, validation loss at steps 0, 3, 6
# (random weights: ~ln(2048 tokens) = 7.62; the validation loss falls). They change when data/*.jsonl changes (the
# tiny tokenizer is trained on it), or the tiny model, formats or training settings do. To regenerate, set both to
# None, run `pytest tests/test_train.py -k golden` and copy the values printed in the failure messages.
GOLDEN_TRAIN_LOSS = [7.6, 7.5992, 7.6435, 7.6065, 7.6221, 7.6107]
GOLDEN_VALIDATION_LOSS = [7.6147, 7.6019, 7.5934]


def _prepared_run(run_dir, profile: str = "tiny"):
    from semifinetune.data import prepare_data
    from semifinetune.pipeline import setup

    cfg, report = setup(run_dir, profile)
    prepare_data(run_dir)
    return cfg, report


def _lora_model(cfg, report):
    from semifinetune.lora import add_lora
    from semifinetune.models import load_model
    from semifinetune.seeding import seed_everything

    seed_everything(cfg.seed)
    model, tokenizer = load_model(cfg, report)
    return add_lora(model, cfg), tokenizer


def _fresh_run(run_dir, callbacks=None, resume=False):
    """(model, tokenizer, stats) of a tiny run trained in run_dir, the model kept in memory."""
    from semifinetune.env import environment_report
    from semifinetune.pipeline import open_run
    from semifinetune.train import fit

    if not runs.run_path(run_dir, runs.CONFIG).exists():
        _prepared_run(run_dir)
    cfg, report = open_run(run_dir), environment_report()
    model, tokenizer = _lora_model(cfg, report)
    stats = fit(model, tokenizer, cfg, run_dir, resume=resume, callbacks=callbacks, report=report)
    return model, tokenizer, stats


def _stop_at(step: int):
    """A callback that ends training after `step` optimizer steps, the schedule still planned for max_steps."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= step:
                control.should_training_stop = True

    return StopAt()


def _lora_state(model) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One uninterrupted 6-step tiny run: (run_dir, model, tokenizer, stats)."""
    run_dir = tmp_path_factory.mktemp("train") / "run"
    model, tokenizer, stats = _fresh_run(run_dir)
    return run_dir, model, tokenizer, stats


def test_log_holds_train_and_held_out_losses_and_stats(trained):
    run_dir, _, _, stats = trained
    log = json.loads(runs.run_path(run_dir, runs.TRAIN_LOG).read_text())
    cfg = make_config("tiny")
    assert [e["step"] for e in log["train_loss"]] == list(range(1, cfg.max_steps + 1))  # logging_steps 1
    assert [e["step"] for e in log["validation_loss"]] == [0, 3, 6]  # before training, then every eval_steps
    assert log["eval_loss"] == [{"step": stats["kept_step"], "loss": stats["held_out_loss"]}]  # once, of the kept weights
    assert log["stats"] == stats
    assert stats["global_step"] == cfg.max_steps and stats["session_steps"] == cfg.max_steps
    assert stats["device"].startswith("CPU") and stats["precision"] == "fp32"
    # 6 steps x batch 2 = 12 samples; tokens are the real (non-pad) ones, so at most 12 x the longest example
    # train_runtime_s is rounded to 0.01 s and samples_per_s to 0.001: the bounds that rounding allows
    runtime = stats["train_runtime_s"]
    assert 12 / (runtime + 0.005) - 0.0005 <= stats["samples_per_s"] <= 12 / max(runtime - 0.005, 1e-9) + 0.0005
    assert 12 * 20 < stats["tokens_seen"] < 12 * cfg.max_seq_length
    assert stats["peak_process_rss_gib"] > 0.1
    assert stats["first_eval_loss"] == log["validation_loss"][0]["loss"]
    assert runs.run_path(run_dir, runs.LOSS_PLOT).stat().st_size > 5_000


def test_adapter_is_the_step_with_the_best_validation_recall(trained):
    from safetensors.torch import load_file

    run_dir, _, _, stats = trained
    log = json.loads(runs.run_path(run_dir, runs.TRAIN_LOG).read_text())
    assert [e["step"] for e in log["validation_loss"]] == [0, 3, 6]
    recall = {e["step"]: e["recall"] for e in log["validation_recall"]}
    loss = {e["step"]: e["loss"] for e in log["validation_loss"]}
    assert sorted(recall) == [3, 6] and all(0 <= r <= 1 for r in recall.values())  # not at step 0: no checkpoint there
    best = max(recall, key=lambda step: (recall[step], -loss[step]))  # a tie goes to the lower validation loss
    assert stats["kept_step"] == best and stats["best_validation_recall"] == recall[best]
    assert stats["stopped_early"] is False
    checkpoint = load_file(runs.run_path(run_dir, runs.CHECKPOINTS) / f"checkpoint-{stats['kept_step']}" / "adapter_model.safetensors")
    adapter = load_file(runs.run_path(run_dir, runs.ADAPTER) / "adapter_model.safetensors")
    assert checkpoint.keys() == adapter.keys() and all((checkpoint[k] == adapter[k]).all() for k in adapter)


def test_the_kept_step_follows_the_validation_recall(tmp_path, monkeypatch):
    """With recall rising at step 3 and falling at step 6, the adapter is step 3's, whatever the loss does."""
    from safetensors.torch import load_file

    from semifinetune import validation

    scores = iter([0.5, 0.25])

    def fake_score(answers, rows):
        import pandas as pd

        value = next(scores)
        return pd.DataFrame({"recall": [value] * len(rows), "correct": [value == 1.0] * len(rows)})

    monkeypatch.setattr("semifinetune.evaluate.score_generations", fake_score)
    _, _, stats = _fresh_run(tmp_path / "run")
    assert stats["kept_step"] == 3 and stats["best_validation_recall"] == 0.5
    checkpoint = load_file(runs.run_path(tmp_path / "run", runs.CHECKPOINTS) / "checkpoint-3" / "adapter_model.safetensors")
    adapter = load_file(runs.run_path(tmp_path / "run", runs.ADAPTER) / "adapter_model.safetensors")
    assert all((checkpoint[k] == adapter[k]).all() for k in adapter)
    assert validation.VALIDATION_METRIC == "eval_validation_score"


def test_early_stopping_is_wired_to_the_validation_loss(tmp_path):
    from transformers import EarlyStoppingCallback

    from semifinetune.env import environment_report
    from semifinetune.data import read_prepared
    from semifinetune.train import build_trainer
    from semifinetune.validation import VALIDATION_METRIC

    cfg, report = _prepared_run(tmp_path / "run")
    cfg = make_config("tiny", {"early_stopping_patience": 2})
    model, tokenizer = _lora_model(cfg, report)
    trainer = build_trainer(model, tokenizer, cfg, tmp_path / "run", environment_report())
    (stopping,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)]
    assert stopping.early_stopping_patience == 2
    assert trainer.args.metric_for_best_model == VALIDATION_METRIC and trainer.args.load_best_model_at_end
    assert trainer.args.greater_is_better
    assert trainer.eval_dataset.num_rows == len(read_prepared(tmp_path / "run", "validation"))  # never the held-out set


def test_golden_losses(trained):
    run_dir = trained[0]
    log = json.loads(runs.run_path(run_dir, runs.TRAIN_LOG).read_text())
    train = [round(e["loss"], 4) for e in log["train_loss"]]
    validation = [round(e["loss"], 4) for e in log["validation_loss"]]
    assert train == pytest.approx(GOLDEN_TRAIN_LOSS, abs=2e-3), f"train losses now {train}"
    assert validation == pytest.approx(GOLDEN_VALIDATION_LOSS, abs=2e-3), f"validation losses now {validation}"


def test_model_ready_for_generation_and_adapter_fp32(trained):
    import torch

    _, model, _, _ = trained
    assert model.config.use_cache is True  # generation ~18x slower without the KV cache
    lora = [p for name, p in model.named_parameters() if "lora_" in name]
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora)


def test_saved_adapter_on_fresh_base_gives_the_same_logits(trained):
    import torch
    from peft import PeftModel

    from semifinetune.models import load_model

    run_dir, model, tokenizer, _ = trained
    adapter = runs.run_path(run_dir, runs.ADAPTER)
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json"} <= {p.name for p in adapter.iterdir()}
    assert not adapter.with_name("adapter.partial").exists()
    base, _ = load_model(make_config("tiny"))
    reloaded = PeftModel.from_pretrained(base, adapter).eval()
    batch = tokenizer(["What is TSMC?", "Which company makes EUV lithography machines?"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model.eval()(**batch).logits
        got = reloaded(**batch).logits
        untouched = load_model(make_config("tiny"))[0](**batch).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(untouched, expected, atol=1e-5)  # the adapter changed something


def test_interrupted_then_resumed_equals_uninterrupted(trained, tmp_path):
    """Stopped after step 3 of 6 (schedule still planned for 6), resumed by the CLI: same losses, same adapter."""
    import torch
    from safetensors.torch import load_file

    from semifinetune.cli import main

    run_dir = tmp_path / "run"
    _fresh_run(run_dir, callbacks=[_stop_at(3)])  # save_steps 3: checkpoint-3 is the last one written
    assert json.loads(runs.run_path(run_dir, runs.TRAIN_LOG).read_text())["stats"]["global_step"] == 3
    assert main(["train", "--run-dir", str(run_dir), "--resume"]) == 0
    resumed_log = json.loads(runs.run_path(run_dir, runs.TRAIN_LOG).read_text())
    assert resumed_log["stats"]["resumed_from"].endswith("checkpoint-3")
    assert resumed_log["stats"]["session_steps"] == 3 and resumed_log["stats"]["global_step"] == 6

    full_dir = trained[0]
    full_log = json.loads(runs.run_path(full_dir, runs.TRAIN_LOG).read_text())
    for key in ("train_loss", "eval_loss", "validation_loss"):
        assert [e["step"] for e in resumed_log[key]] == [e["step"] for e in full_log[key]]
        assert [e["loss"] for e in resumed_log[key]] == pytest.approx([e["loss"] for e in full_log[key]], abs=1e-5)
    weights = "adapter_model.safetensors"
    full = load_file(runs.run_path(full_dir, runs.ADAPTER) / weights)
    resumed = load_file(runs.run_path(run_dir, runs.ADAPTER) / weights)
    assert full.keys() == resumed.keys() and len(full) > 0
    assert all(torch.allclose(resumed[name], full[name], atol=1e-6) for name in full)
    assert main(["train", "--run-dir", str(run_dir), "--resume"]) == 2  # finished: nothing left to resume


def test_a_finished_run_says_so_and_the_command_it_gives_trains_it_further(trained, tmp_path, capsys):
    """Resume after a finished 6-step run: one line saying it is finished, with commands that work: setup raising
    max_steps (the results kept), then train --resume, which trains steps 7-12 from checkpoint-6."""
    import shlex
    import shutil

    from semifinetune.cli import main

    run_dir = tmp_path / "run"
    shutil.copytree(trained[0], run_dir)
    assert main(["train", "--run-dir", str(run_dir), "--resume"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"The training run in {run_dir} is finished: 6 of max_steps 6 steps, nothing to resume." in line
    assert "overrides={'max_steps': 12}" in line and "--overwrite" in line
    assert main(["train", "--run-dir", str(run_dir)]) == 2  # without resume: refused, and told the same
    assert "already hold(s) a finished training run (6 steps)" in capsys.readouterr().err
    setup_command, train_command = re.findall(r"`python -m semifinetune ([^`]+)`", line)
    assert main(shlex.split(setup_command)) == 0
    assert "max_steps 6 -> 12; the results are kept" in capsys.readouterr().out
    assert (run_dir / runs.ADAPTER).is_dir() and json.loads((run_dir / "config.json").read_text())["max_steps"] == 12
    assert main(shlex.split(train_command)) == 0
    log = json.loads(runs.run_path(run_dir, runs.TRAIN_LOG).read_text())
    assert log["stats"]["global_step"] == 12 and log["stats"]["resumed_from"].endswith("checkpoint-6")
    assert [e["step"] for e in log["train_loss"]] == list(range(1, 13))


def test_setup_refuses_other_changes_naming_them(trained, tmp_path):
    import shutil

    from semifinetune.pipeline import setup

    run_dir = tmp_path / "run"
    shutil.copytree(trained[0], run_dir)
    with pytest.raises(ConfigError, match=r"from another config \(lora_r 16 -> 8, max_steps 6 -> 12\).*overwrite=True"):
        setup(run_dir, "tiny", {"lora_r": 8, "max_steps": 12})
    with pytest.raises(ConfigError, match=r"max_steps 6 -> 3"):  # fewer steps than trained: not a continuation
        setup(run_dir, "tiny", {"max_steps": 3})


def test_resume_without_checkpoint_says_what_to_do(tmp_path):
    from semifinetune.train import fit

    with pytest.raises(ConfigError, match="no checkpoint-N folder"):
        fit(None, None, make_config("tiny"), tmp_path, resume=True)


def test_latest_checkpoint_is_numeric(tmp_path):
    from semifinetune.train import CHECKPOINT_FILES, latest_checkpoint

    assert latest_checkpoint(tmp_path) is None
    for name in ("checkpoint-9", "checkpoint-10", "checkpoint-2", "runs"):
        folder = tmp_path / runs.CHECKPOINTS / name
        folder.mkdir(parents=True)
        for file in CHECKPOINT_FILES:  # complete: an incomplete one is skipped (tests/test_interruption.py)
            (folder / file).write_text('{"global_step": 1}')
    assert latest_checkpoint(tmp_path).name == "checkpoint-10"


def test_quantized_base_keeps_fp32_adapter(tmp_path, monkeypatch):
    """TRL 1.15 casts a 4-bit base's LoRA weights to bf16 in SFTTrainer.__init__; build_trainer undoes it."""
    import torch

    from semifinetune import train as train_module

    run_dir = tmp_path / "run"
    cfg, report = _prepared_run(run_dir)

    def lora_dtypes(keep_fp32: bool) -> set:
        model, tokenizer = _lora_model(cfg, report)
        model.get_base_model().is_loaded_in_4bit = True  # what TRL reads to decide it is a QLoRA run
        if not keep_fp32:
            monkeypatch.setattr(train_module, "keep_adapter_fp32", lambda model: 0)
        trainer = train_module.build_trainer(model, tokenizer, cfg, run_dir, report)
        return {p.dtype for name, p in trainer.model.named_parameters() if "lora_" in name}

    assert lora_dtypes(keep_fp32=True) == {torch.float32}
    # TRL's cast, which the fix exists for: when this fails, TRL keeps fp32 adapters itself and keep_adapter_fp32 can go
    import trl

    assert lora_dtypes(keep_fp32=False) == {torch.bfloat16}, (
        f"TRL {trl.__version__}'s SFTTrainer no longer casts a quantized base's LoRA weights to bf16: "
        "train.keep_adapter_fp32, its call in build_trainer and this test's second half can go.")


def test_trl_loss_kernel_only_where_it_runs(monkeypatch):
    """SFTTrainer's own loss (TRL's Triton kernel) on CUDA with Triton installed; elsewhere the model's own loss."""
    import importlib.util

    from trl import SFTTrainer

    from semifinetune.train import trainer_class

    real_find_spec = importlib.util.find_spec
    for cuda, triton, expected in ((True, True, "SFTTrainer"), (True, False, "PlainLossSFTTrainer"),
                                   (False, True, "PlainLossSFTTrainer")):
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: (object() if triton else None) if name == "triton" else real_find_spec(name, *a))
        cls = trainer_class({"cuda_available": cuda})
        assert cls.__name__ == expected and issubclass(cls, SFTTrainer), (cuda, triton)


@pytest.mark.parametrize(
    "cuda, bf16, expected",
    [(True, False, (True, False)), (True, True, (False, True)), (False, False, (False, False))],
    ids=["t4-fp16", "ampere-bf16", "cpu-fp32"],
)
def test_precision_follows_the_machine(cuda, bf16, expected, tmp_path):
    from semifinetune.train import sft_arguments

    report = {"cuda_available": cuda, "bf16_supported": bf16}
    args = sft_arguments(make_config("t4"), tmp_path, report)
    assert (args["fp16"], args["bf16"]) == expected
    assert args["max_length"] == 1024 and args["gradient_checkpointing"] is True and args["optim"] == "adamw_torch_fused"
    assert args["output_dir"] == str(tmp_path / runs.CHECKPOINTS)
    assert args["dataloader_pin_memory"] is cuda


def test_cpu_sft_config_turns_off_trl_defaults(tmp_path):
    from semifinetune.train import sft_config

    args = sft_config(make_config("cpu"), tmp_path, {"cuda_available": False, "bf16_supported": False})
    assert args.bf16 is False and args.fp16 is False  # SFTConfig would turn bf16 on
    assert args.gradient_checkpointing is False  # SFTConfig defaults it on; ~60% slower steps on CPU
    assert args.max_length == 256 and args.completion_only_loss is True
    assert args.eval_strategy == "steps" and args.eval_steps == 20 and args.report_to == []
    assert args.train_sampling_strategy == "group_by_length"  # the cpu profile's length-grouped batches


def test_cli_train_without_setup_is_one_line(tmp_path, capsys):
    from semifinetune.cli import main

    assert main(["train", "--run-dir", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "notebook 01" in err and "Traceback" not in err


@pytest.mark.parametrize("fmt, answer_only", [("chat", True), ("guide", False)])
def test_loss_on_the_answer_only_for_chat_on_everything_for_guide(fmt, answer_only, tmp_path):
    """The labels the trainer builds: -100 exactly where the prepared completion_mask is 0 (the chat prompt)."""
    from semifinetune.data import prepare_data, read_prepared
    from semifinetune.env import environment_report
    from semifinetune.pipeline import setup
    from semifinetune.train import build_trainer

    cfg, _ = setup(tmp_path, "tiny", {"format": fmt})
    prepare_data(tmp_path)
    report = environment_report()
    model, tokenizer = _lora_model(cfg, report)
    trainer = build_trainer(model, tokenizer, cfg, tmp_path, report)
    prepared = read_prepared(tmp_path, "train")
    for row, built in zip(prepared[:20], trainer.train_dataset):
        assert built["input_ids"] == row["input_ids"]
        assert built["labels"] == [t if keep else -100 for t, keep in zip(row["input_ids"], row["completion_mask"])]
        masked = built["labels"].count(-100)
        assert (masked > 0) is answer_only
        assert built["labels"][-1] == tokenizer.eos_token_id  # the stop token is learned in both formats


def test_tensorboard_logs_the_runs_losses_in_the_run_directory(tmp_path):
    """report_to=["tensorboard"]: event files in run_dir/tensorboard holding the losses train_log.json holds."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from semifinetune.data import prepare_data
    from semifinetune.pipeline import setup
    from semifinetune.train import train

    run_dir = tmp_path / "run"
    cfg, _ = setup(run_dir, "tiny", {"report_to": ["tensorboard"], "max_steps": 3, "eval_steps": 3})
    prepare_data(run_dir)
    train(cfg, run_dir)
    events = EventAccumulator(str(run_dir / runs.TENSORBOARD))
    events.Reload()
    logged = [round(e.value, 4) for e in events.Scalars("train/loss")]
    log = json.loads(runs.run_path(run_dir, runs.TRAIN_LOG).read_text())
    assert logged == [round(e["loss"], 4) for e in log["train_loss"]] and len(logged) == 3
    assert not (run_dir / runs.CHECKPOINTS / "runs").exists()  # not transformers' default place


def test_a_tracker_that_is_not_installed_fails_at_setup(tmp_path, monkeypatch):
    import importlib.util

    from semifinetune.pipeline import setup

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="wandb is not installed: pip install wandb"):
        setup(tmp_path / "run", "tiny", {"report_to": ["wandb"]})
    with pytest.raises(ConfigError, match="report_to"):
        make_config("tiny", {"report_to": ["tensorbored"]})
