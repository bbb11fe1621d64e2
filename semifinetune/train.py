"""Notebook 05: LoRA fine-tuning with TRL's current API (SFTConfig + SFTTrainer), loss history, stats, resume."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from . import runs
from .atomic import DiskFullError, is_disk_full, write_json_atomic
from .config import ConfigError, RunConfig
from .finish import restore_ended_training, training_ended
from .runlock import holds_run_dir
from .safety import DiskSpaceError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
SAVE_TOTAL_LIMIT = 2  # the latest checkpoint to resume from, and the one before it
# A checkpoint is complete once the trainer wrote its state last (transformers writes trainer_state.json after the
# weights, optimizer and scheduler); a folder without these files was cut off mid-write and is never resumed from.
CHECKPOINT_FILES = ("trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt")
# Per saved folder beyond the weights: tokenizer files (R1's tokenizer.json is 7 MB), trainer state, RNG state.
FOLDER_OVERHEAD_BYTES = 32 * 2**20


class TrainingMemoryError(ConfigError):
    """Training ran out of GPU memory; the message gives the memory figures and the settings to lower."""


@holds_run_dir("train")
def train(
    cfg: RunConfig, run_dir: str | os.PathLike, resume: bool = False, callbacks: list | None = None, overwrite: bool = False
) -> dict:
    """Load the model, attach LoRA, train on the run's data, save the adapter; returns the run's stats."""
    from .env import environment_report
    from .loaded import forget
    from .lora import add_lora
    from .models import load_model
    from .seeding import seed_everything

    refuse_to_overwrite(run_dir, resume, overwrite, cfg)  # before the model loads: a refusal costs nothing
    if resume:
        resume_checkpoint(cfg, run_dir)
    check_trackers(cfg)
    training_datasets(run_dir, cfg)  # notebook 04's sets are there (else one line saying so), before the model loads
    seed_everything(cfg.seed)
    report = environment_report()
    forget()  # an evaluated model held from before (another run, or this one's last adapter) frees the GPU for training
    model, tokenizer = load_model(cfg, report)
    model = add_lora(model, cfg)
    return fit(model, tokenizer, cfg, run_dir, resume=resume, callbacks=callbacks, report=report, overwrite=overwrite)


@holds_run_dir("train")
def fit(
    model,
    tokenizer,
    cfg: RunConfig,
    run_dir: str | os.PathLike,
    resume: bool = False,
    callbacks: list | None = None,
    report: dict | None = None,
    overwrite: bool = False,
) -> dict:
    """Train a LoRA model in place: checkpoints, held-out loss, adapter in run_dir/adapter, log in train_log.json."""
    import torch

    from .env import environment_report
    from .measure import memory_snapshot, reset_peak_memory

    refuse_to_overwrite(run_dir, resume, overwrite, cfg)
    report = report or environment_report()
    if resume:
        discard_incomplete_checkpoints(run_dir)  # cut off mid-write by a crash: resume from the one before
    checkpoint = resume_checkpoint(cfg, run_dir) if resume else None
    # checked before a fresh run clears the old checkpoints, counting their space as free: a disk too small keeps them
    stale = 0 if resume else sum(p.stat().st_size for p in checkpoints_dir(run_dir).rglob("*") if p.is_file())
    check_training_disk_space(model, run_dir, stale)
    if not resume:
        shutil.rmtree(checkpoints_dir(run_dir), ignore_errors=True)  # a fresh run never resumes a stale one
    stats_callback = _StatsCallback()
    trainer = build_trainer(model, tokenizer, cfg, run_dir, report, [stats_callback, *(callbacks or [])], resume)
    world = trainer.args.world_size
    if trainer.is_world_process_zero():
        print(
            f"effective batch {cfg.per_device_train_batch_size} per device x {cfg.gradient_accumulation_steps} "
            f"accumulation x {world} process(es) = {cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world}",
            flush=True,
        )
    reset_peak_memory()
    before = memory_snapshot()
    if checkpoint is not None and training_ended(checkpoint, cfg):  # stopped after its last step: finish, train no more
        metrics = restore_ended_training(trainer, checkpoint, checkpoints_dir(run_dir), stats_callback)
    else:
        try:
            metrics = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None).metrics
        except torch.OutOfMemoryError:
            raise TrainingMemoryError(out_of_memory_message(cfg, report, run_dir)) from None
        except Exception as err:  # the trainer writes checkpoints itself: a full disk surfaces here, in any type
            if not is_disk_full(err, checkpoints_dir(run_dir)):
                raise
            raise checkpoint_disk_full(model, run_dir) from None
    after = memory_snapshot()
    try:
        held_out_loss = final_held_out_loss(trainer, cfg, run_dir)
        model.config.use_cache = True  # training turns the KV cache off; generation is ~18x slower without it
        stats = run_stats(cfg, report, trainer, metrics, stats_callback, before, after, held_out_loss)
        stats.update(adapter_dir=str(runs.run_path(run_dir, runs.ADAPTER)), resumed_from=str(checkpoint) if checkpoint else None)
        if trainer.is_world_process_zero():  # data-parallel runs: one process writes the run's files
            print(kept_checkpoint_line(stats), flush=True)
            save_adapter(trainer.model, tokenizer, run_dir)  # after load_best_model_at_end: the best step's weights
            history = loss_history(trainer.state.log_history, bool(cfg.validation_file), stats)
            write_json_atomic(runs.run_path(run_dir, runs.TRAIN_LOG), {**history, "stats": stats})
            plot_loss_curve(run_dir)
    except (DiskSpaceError, DiskFullError) as err:  # the steps are done and checkpointed: adapter and log are missing
        raise DiskSpaceError(f"{err} The training steps are done: then `python -m semifinetune train --run-dir "
                             f"{run_dir} --resume` (notebook 05 with resume=True) finishes the run without "
                             "training again.") from None
    return stats


@contextmanager
def dataset_bars_off():
    """No datasets progress bars while TRL prepares the sets: six passes (labels, truncation, masked rows, for train
    and eval) of well under a second each over data 04 has tokenized, whose bars read as six steps of work."""
    from datasets.utils import logging as datasets_logging

    was_on = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            datasets_logging.enable_progress_bar()


def build_trainer(model, tokenizer, cfg: RunConfig, run_dir, report: dict, callbacks: list | None = None, resume: bool = False):
    """SFTTrainer over the run's tokenized train set, evaluating on the validation set (else the held-out set), LoRA
    weights kept in fp32."""
    from transformers import EarlyStoppingCallback

    from .validation import validation_callback

    train_set, eval_set = training_datasets(run_dir, cfg)
    # the validation check first: best-checkpoint choice and early stopping read the metrics it adds
    checks = [validation_callback(cfg, run_dir, tokenizer)] if cfg.validation_file else []
    stopping = [EarlyStoppingCallback(cfg.early_stopping_patience)] if cfg.early_stopping_patience else []
    cls = trainer_class(report)
    if cfg.cuda_graphs and report["cuda_available"]:
        from .graphed import graphed_trainer_class

        longest = max(len(ids) for ids in train_set["input_ids"])
        cls = graphed_trainer_class(cls, min(longest, cfg.max_seq_length), tokenizer.pad_token_id)
    with dataset_bars_off():
        trainer = cls(
            model=model,
            args=sft_config(cfg, run_dir, report, resume),
            train_dataset=train_set,
            eval_dataset=eval_set,
            processing_class=tokenizer,
            callbacks=[*(callbacks or []), *checks, *stopping, *tensorboard_callbacks(cfg, run_dir)],
        )
    keep_adapter_fp32(trainer.model)
    return trainer


def tensorboard_callbacks(cfg: RunConfig, run_dir) -> list:
    """transformers' TensorBoard callback writing to run_dir/tensorboard (its default is inside checkpoints/, which
    a new run clears), where report_to asks for it."""
    if "tensorboard" not in cfg.report_to:
        return []
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback()
    callback.logging_dir = str(runs.run_path(run_dir, runs.TENSORBOARD))
    return [callback]


def check_trackers(cfg: RunConfig) -> None:
    """Each report_to integration's package is installed: a missing one fails here, before the model loads."""
    import importlib.util

    from .config import TRACKERS

    missing = [name for name in cfg.report_to if importlib.util.find_spec(TRACKERS[name]) is None]
    if missing:
        raise ConfigError(
            f"report_to={cfg.report_to} but {', '.join(missing)} is not installed: pip install "
            f"{' '.join(TRACKERS[name] for name in missing)}, or drop it from report_to."
        )


def trainer_class(report: dict):
    """TRL's SFTTrainer on a CUDA GPU with Triton; elsewhere the same trainer with the model's own loss.

    TRL 1.15 computes the SFT loss with a fused LM-head kernel written in Triton (trl/kernels/chunked_logprob.py),
    which runs on CUDA/XPU only: on CPU `compute_loss` fails ('NoneType' object has no attribute 'apply' without
    Triton). TRL's advice is to subclass SFTTrainer and override compute_loss; the model's own forward gives the same
    per-token cross-entropy (summed over loss tokens, divided by num_items_in_batch across accumulation steps).
    """
    import importlib.util

    from transformers import Trainer
    from trl import SFTTrainer

    if report["cuda_available"] and importlib.util.find_spec("triton") is not None:
        return SFTTrainer

    class PlainLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = {**inputs, "use_cache": False}
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return PlainLossSFTTrainer


def sft_config(cfg: RunConfig, run_dir, report: dict, resume: bool = False):
    """SFTConfig from the run's config and this machine: precision, schedule, checkpoints, held-out loss."""
    from trl import SFTConfig

    return SFTConfig(**sft_arguments(cfg, run_dir, report, resume))


def sft_arguments(cfg: RunConfig, run_dir, report: dict, resume: bool = False) -> dict:
    """SFTConfig's arguments (SFTConfig itself refuses fp16/bf16 on a machine without a GPU, so tests read these)."""
    from .env import choose_precision
    from .validation import VALIDATION_METRIC

    precision = choose_precision(report, cfg.precision)
    # The adapter a run keeps is the step whose greedy answers to the validation questions score best (checkpoints
    # fall on evaluations, which check_ranges makes sure of; on a tie, the lower validation loss). The held-out loss is
    # computed once, of the kept weights (final_held_out_loss).
    choose = dict(load_best_model_at_end=True, metric_for_best_model=VALIDATION_METRIC, greater_is_better=True) if cfg.validation_file else {}
    return dict(
        **choose,
        output_dir=str(checkpoints_dir(run_dir)),
        # SFTConfig turns bf16 on unless told otherwise, which fails on a T4 and on CPU: always say both.
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        max_length=cfg.max_seq_length,
        # The datasets are tokenized with a completion_mask that already encodes cfg.loss_on (all ones when the
        # whole text carries loss), so TRL always applies it.
        completion_only_loss=True,
        gradient_checkpointing=cfg.gradient_checkpointing,  # SFTConfig defaults it on; it costs ~60% time on CPU
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        # no gradients or optimizer state in eval, so 8 rows fit wherever one training row does
        per_device_eval_batch_size=max(8, cfg.per_device_train_batch_size),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        train_sampling_strategy="group_by_length" if cfg.length_grouped else "random",
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        weight_decay=cfg.weight_decay,
        optim=cfg.optim,
        seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        eval_on_start=not resume,  # the loss before training: the curve's start (a resumed run has it)
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=SAVE_TOTAL_LIMIT,
        include_num_input_tokens_seen="non_padding",  # tokens/s over real tokens, not padding
        dataloader_pin_memory=bool(report["cuda_available"]),
        # tensorboard goes through our own callback (build_trainer), which writes to run_dir/tensorboard
        report_to=[name for name in cfg.report_to if name != "tensorboard"] or "none",
        # Data-parallel (accelerate launch / torchrun): LoRA leaves most weights frozen; no search for unused ones.
        ddp_find_unused_parameters=False,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )


def keep_adapter_fp32(model) -> int:
    """Cast trainable (LoRA) weights back to fp32; returns how many were not.

    TRL 1.15's SFTTrainer.__init__ casts every trainable parameter of a 4-bit or 8-bit base to bf16 (its
    `if _is_quantized_model:` block, citing the QLoRA paper). bf16 does not exist on a T4, and at lr 5e-5 bf16
    adapters learned visibly slower in our GPU runs. The optimizer is built later, in train(), so it sees fp32.
    """
    import torch

    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast


# --- data ---


def training_datasets(run_dir, cfg: RunConfig):
    """The run's tokenized (input_ids, completion_mask) train set, as notebook 04 wrote it, and the set the trainer
    evaluates every eval_steps: the validation set where the run has one, else the held-out set."""
    from .data import load_prepared

    return load_prepared(run_dir, "train"), load_prepared(run_dir, "validation" if cfg.validation_file else "eval")


def final_held_out_loss(trainer, cfg: RunConfig, run_dir) -> float | None:
    """The held-out loss of the weights the run keeps, where the trainer watched the validation set instead (one
    pass over the held-out questions rather than one per evaluation: on 2 CPU cores each costs seconds)."""
    from .data import load_prepared

    if not cfg.validation_file:
        return None
    metrics = trainer.evaluate(load_prepared(run_dir, "eval"), metric_key_prefix="held_out")
    return metrics["held_out_loss"]


# --- checkpoints and the adapter ---


def checkpoints_dir(run_dir) -> Path:
    return runs.run_path(run_dir, runs.CHECKPOINTS)


def checkpoint_folders(run_dir) -> list[Path]:
    """Every checkpoint-N folder in run_dir/checkpoints, by N."""
    folder = checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found)]


def checkpoint_complete(checkpoint: Path) -> bool:
    """Every file resume needs is there, and trainer_state.json (written last) parses."""
    if not all((checkpoint / name).is_file() for name in CHECKPOINT_FILES):
        return False
    try:
        return isinstance(json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))["global_step"], int)
    except (ValueError, KeyError, TypeError):
        return False


def latest_checkpoint(run_dir) -> Path | None:
    """The complete checkpoint-N folder with the highest N in run_dir/checkpoints, or None."""
    complete = [path for path in checkpoint_folders(run_dir) if checkpoint_complete(path)]
    return complete[-1] if complete else None


def discard_incomplete_checkpoints(run_dir) -> list[str]:
    """Remove checkpoint folders a crash cut off mid-write (the trainer would write into them again); their names."""
    removed = [path for path in checkpoint_folders(run_dir) if not checkpoint_complete(path)]
    for path in removed:
        print(f"{path} is incomplete (interrupted while saving): removed; resuming from the checkpoint before it.")
        shutil.rmtree(path, ignore_errors=True)  # data-parallel ranks may both get here
    return [path.name for path in removed]


OVERWRITE_HOW = "overwrite=True (notebook 05's parameter; --overwrite for `train`, `run` and `notebooks`)"


def trained_results(run_dir) -> list[str]:
    """The adapter and checkpoint folders in run_dir that hold something: what a fresh training run would replace."""
    adapter = runs.run_path(run_dir, runs.ADAPTER)
    return [str(p) for p in (adapter, checkpoints_dir(run_dir)) if p.exists() and any(p.iterdir())]


def finished_step(run_dir) -> int | None:
    """The step the run's last training session ended at (train_log.json, written with the adapter), or None."""
    path = runs.run_path(run_dir, runs.TRAIN_LOG)
    if not runs.run_path(run_dir, runs.ADAPTER).is_dir() or not path.is_file():
        return None
    try:
        step = json.loads(path.read_text(encoding="utf-8"))["stats"]["global_step"]
    except (ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) else None


def refuse_to_overwrite(run_dir, resume: bool, overwrite: bool, cfg: RunConfig | None = None) -> None:
    """A trained adapter or checkpoints in run_dir are never replaced silently: resume, or say overwrite."""
    found = trained_results(run_dir)
    if not found or resume or overwrite:
        return
    step = finished_step(run_dir)
    if cfg is not None and step is not None and step >= cfg.max_steps:
        raise ConfigError(f"{' and '.join(found)} already hold(s) a finished training run ({step} steps). "
                          + further_training(cfg, run_dir, step))
    raise ConfigError(
        f"{' and '.join(found)} already hold(s) a training run. Resume it (resume=True, `train --resume`), or train "
        f"again from scratch with {OVERWRITE_HOW}, or choose a new run_dir."
    )


def resume_checkpoint(cfg: RunConfig, run_dir) -> Path:
    """The checkpoint resume=True continues from; a finished run or a missing checkpoint is an error saying what to do."""
    step = finished_step(run_dir)
    if step is not None and step >= cfg.max_steps:
        raise ConfigError(f"The training run in {run_dir} is finished: {step} of max_steps {cfg.max_steps} steps, "
                          f"nothing to resume. " + further_training(cfg, run_dir, step))
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        instead = f"train again from scratch with {OVERWRITE_HOW}" if trained_results(run_dir) else "train without resume (resume=False, or drop --resume)"
        raise ConfigError(f"resume=True but {checkpoints_dir(run_dir)} holds no checkpoint-N folder: {instead}.")
    if checkpoint_step(checkpoint) > cfg.max_steps:  # max_steps lowered since: the weights went past the config
        raise ConfigError(f"{checkpoint} is past max_steps {cfg.max_steps}: resuming would keep weights trained longer "
                          f"than the config says. Set max_steps to {checkpoint_step(checkpoint)} or more again, or "
                          f"train again from scratch with {OVERWRITE_HOW}.")
    return checkpoint  # at max_steps (training ended, the rest did not happen): fit() finishes the run from it


def further_training(cfg: RunConfig, run_dir, step: int) -> str:
    """What to run to train a finished run longer (raise max_steps, then resume), or again from scratch."""
    from .config import overrides_of, set_arguments

    more = max(cfg.max_steps, step) * 2
    return (
        f"To train it further, raise max_steps and resume: notebook 01 on this run_dir with "
        f"overrides={overrides_of(cfg, max_steps=more)!r}, then notebook 05 with resume=True; on the command line "
        f"`python -m semifinetune setup --run-dir {run_dir} --profile {cfg.profile} {set_arguments(cfg, max_steps=more)}` "
        f"then `python -m semifinetune train --run-dir {run_dir} --resume`. To train again from scratch: {OVERWRITE_HOW}."
    )


def training_disk_bytes(trainable: int) -> int:
    """Disk that training writes at most: SAVE_TOTAL_LIMIT + 1 checkpoints (the trainer saves the next before it
    deletes the oldest), each fp32 LoRA weights (4 bytes) + Adam's two moments (8 bytes), and the final adapter."""
    checkpoint = trainable * (4 + 8) + FOLDER_OVERHEAD_BYTES
    return (SAVE_TOTAL_LIMIT + 1) * checkpoint + trainable * 4 + FOLDER_OVERHEAD_BYTES


def checkpoint_disk_full(model, run_dir) -> DiskFullError:
    """The error for a disk that filled while the trainer saved a checkpoint; the checkpoint it cut off is removed,
    so the run resumes from the one before."""
    from .atomic import free_bytes, size_text

    discard_incomplete_checkpoints(run_dir)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    last = latest_checkpoint(run_dir)
    resume = (f"`python -m semifinetune train --run-dir {run_dir} --resume` continues from {last.name}" if last
              else f"train again (`python -m semifinetune train --run-dir {run_dir} --overwrite`)")
    return DiskFullError(
        f"The disk holding {checkpoints_dir(run_dir)} filled while training saved a checkpoint: training needs about "
        f"{size_text(training_disk_bytes(trainable))} there and {size_text(free_bytes(run_dir))} is free. The checkpoint "
        f"it was writing was removed. Free some space, then {resume}."
    )


def check_training_disk_space(model, run_dir, freed: int = 0) -> None:
    """Fail before the first step when checkpoints and the adapter would not fit on the run directory's disk, with
    `freed` bytes (old checkpoints a fresh run removes) counted as free."""
    from .safety import check_disk_space

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    check_disk_space(
        run_dir, training_disk_bytes(trainable) - freed,
        f"training checkpoints and the adapter ({trainable:,} trainable parameters x 12 bytes x {SAVE_TOTAL_LIMIT + 1} checkpoints)",
        "Free some space (old runs' checkpoints/ folders, exports) or choose a run_dir on another disk.",
    )


def out_of_memory_message(cfg: RunConfig, report: dict, run_dir) -> str:
    """What ran out (GPU total, peak reserved) and which settings lower training memory."""
    import torch

    if report["cuda_available"]:
        peak = torch.cuda.max_memory_reserved() / 2**30
        torch.cuda.empty_cache()
        figures = f"{report.get('gpu_name', 'GPU')}: {report.get('gpu_memory_gib', 0.0):.1f} GiB total, {peak:.1f} GiB peak reserved"
    else:
        figures = f"no CUDA GPU; {report.get('ram_gib', 0.0):.1f} GiB RAM"
    resume = f" Checkpoints so far are in {checkpoints_dir(run_dir)}: resume=True (--resume) continues from them." if latest_checkpoint(run_dir) else ""
    return (
        f"Out of memory while training ({figures}; per_device_train_batch_size={cfg.per_device_train_batch_size}, "
        f"max_seq_length={cfg.max_seq_length}, gradient_checkpointing={cfg.gradient_checkpointing}). Lower "
        f"per_device_train_batch_size (e.g. --set per_device_train_batch_size={max(1, cfg.per_device_train_batch_size // 2)}, "
        "raising gradient_accumulation_steps to keep the effective batch) or max_seq_length, or set "
        "gradient_checkpointing=True; restart the runtime to free GPU memory first." + resume
    )


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step a checkpoint was saved at (its trainer_state.json, else its folder name)."""
    state = Path(checkpoint) / "trainer_state.json"
    if state.exists():
        return int(json.loads(state.read_text(encoding="utf-8"))["global_step"])
    return int(CHECKPOINT_RE.match(Path(checkpoint).name).group(1))


def save_adapter(model, tokenizer, run_dir) -> Path:
    """Adapter weights, adapter config and tokenizer into run_dir/adapter, through adapter.partial and a rename."""
    from .atomic import save_atomically

    target = runs.run_path(run_dir, runs.ADAPTER)
    save_atomically(model, tokenizer, target)
    return target


# --- history and stats ---


def loss_history(log_history: list[dict], validation: bool = False, stats: dict | None = None) -> dict:
    """Train loss per logging step, and the loss per eval step: the validation loss where the run watched a
    validation set (the held-out loss is then one point, of the kept step), else the held-out loss."""
    train = [
        {"step": e["step"], "loss": e["loss"], "learning_rate": e.get("learning_rate"), "grad_norm": e.get("grad_norm")}
        for e in log_history
        if "loss" in e
    ]
    evaluated = [{"step": e["step"], "loss": e["eval_loss"]} for e in log_history if "eval_loss" in e]
    if not validation:
        return {"train_loss": train, "eval_loss": evaluated, "validation_loss": [], "validation_recall": []}
    from .validation import VALIDATION_METRIC

    kept = [{"step": stats["kept_step"], "loss": stats["held_out_loss"]}] if stats and stats.get("held_out_loss") is not None else []
    recall = [
        {"step": e["step"], "recall": e["eval_validation_recall"], "correct": e["eval_validation_correct"]}
        for e in log_history if VALIDATION_METRIC in e
    ]
    return {"train_loss": train, "eval_loss": kept, "validation_loss": evaluated, "validation_recall": recall}


def _StatsCallback():
    """A TrainerCallback that remembers where this session started (step, tokens seen)."""
    from transformers import TrainerCallback

    class StatsCallback(TrainerCallback):
        start_step = 0
        start_tokens = 0
        start_log = 0  # log_history entries before this session (a resumed run carries the earlier ones)

        def on_train_begin(self, args, state, control, **kwargs):
            self.start_step = state.global_step
            self.start_tokens = state.num_input_tokens_seen
            self.start_log = len(state.log_history)

    return StatsCallback()


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**30 if sys.platform == "darwin" else 2**20), 3)


def run_stats(
    cfg: RunConfig, report: dict, trainer, metrics: dict, session, before: dict, after: dict, held_out_loss: float | None = None
) -> dict:
    """Device, precision, runtime, samples/s, tokens/s and peak memory of this training session."""
    from .env import choose_precision

    state = trainer.state
    runtime = metrics["train_runtime"]
    steps = state.global_step - session.start_step
    samples = steps * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * trainer.args.world_size
    tokens = state.num_input_tokens_seen - session.start_tokens
    history = loss_history(state.log_history)  # every eval_loss: the validation loss where the run has a validation file
    stats = {
        "device": report["gpu_name"] if report["cuda_available"] else f"CPU ({report['cpu_count']} cores)",
        "backend": getattr(trainer.model, "semifinetune_backend", "transformers"),
        "precision": choose_precision(report, cfg.precision),
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "adapter_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in trainer.model.parameters() if p.requires_grad}),
        "global_step": state.global_step,
        "session_steps": steps,
        "train_runtime_s": round(runtime, 2),
        # this session's held-out loss passes, inside train_runtime_s
        "eval_runtime_s": round(sum(e.get("eval_runtime", 0.0) for e in state.log_history[session.start_log :]), 2),
        "samples_per_s": round(samples / runtime, 3) if runtime else None,
        "tokens_per_s": round(tokens / runtime, 1) if runtime else None,
        "tokens_seen": int(state.num_input_tokens_seen),
        "final_train_loss": history["train_loss"][-1]["loss"] if history["train_loss"] else None,
        "first_eval_loss": history["eval_loss"][0]["loss"] if history["eval_loss"] else None,
        "final_eval_loss": history["eval_loss"][-1]["loss"] if history["eval_loss"] else None,
        # the step whose weights the adapter holds: the best validation recall, else the last step
        "kept_step": state.best_global_step or state.global_step,
        "best_validation_recall": best_validation_recall(state),
        "held_out_loss": round(held_out_loss, 4) if held_out_loss is not None else history["eval_loss"][-1]["loss"] if history["eval_loss"] else None,
        "stopped_early": state.global_step < cfg.max_steps,
        "peak_process_rss_gib": peak_rss_gib(),
    }
    if "gpu_peak_reserved_gib" in after:
        stats.update(
            gpu_peak_reserved_gib=after["gpu_peak_reserved_gib"],
            gpu_peak_allocated_gib=after["gpu_peak_allocated_gib"],
            # what training added on top of the loaded model (Unsloth's notebooks report the same)
            gpu_training_reserved_gib=round(after["gpu_peak_reserved_gib"] - before["gpu_reserved_gib"], 3),
            gpu_total_gib=report["gpu_memory_gib"],
        )
    return stats


def best_validation_recall(state) -> float | None:
    """The validation recall of the kept step (the trainer's best_metric is the score: recall with its tie-break)."""
    from .validation import VALIDATION_METRIC

    kept = [e for e in state.log_history if VALIDATION_METRIC in e and e["step"] == state.best_global_step]
    return kept[-1]["eval_validation_recall"] if kept else None


def kept_checkpoint_line(stats: dict) -> str:
    """Which step's weights the adapter holds, and why."""
    if stats["best_validation_recall"] is None:
        return f"adapter: the weights after step {stats['global_step']} (no validation file: the last step is kept)"
    stop = f", stopped early at step {stats['global_step']}" if stats["stopped_early"] else ""
    return (f"adapter: the weights of step {stats['kept_step']}, the best validation recall "
            f"({stats['best_validation_recall']:.3f}){stop}")


def read_train_log(run_dir) -> dict:
    """run_dir/train_log.json as train() wrote it."""
    path = runs.run_path(run_dir, runs.TRAIN_LOG)
    if not path.exists():
        raise ConfigError(f"{path} does not exist. Run notebook 05_train (or `python -m semifinetune train`) first.")
    return json.loads(path.read_text(encoding="utf-8"))


def shown(value) -> str:
    """A figure as tables show it: floats to 4 decimals (losses differ in the third), counts with thousands
    separators, lists as comma-separated names, None as "none"."""
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, float):
        return f"{round(value, 4)}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return "none" if value is None else str(value)


def stats_table(stats: dict):
    """The stats as a two-column table, one row per figure, rounded as shown()."""
    import pandas as pd

    return pd.DataFrame({"value": [shown(v) for v in stats.values()]}, index=pd.Index(list(stats), name="stat"))


def eval_loss_table(run_dir):
    """One row per evaluation step from run_dir/train_log.json: the loss on the set the trainer watched (validation,
    else held-out) and, with a validation file, its recall and correct answers, the kept step marked."""
    import pandas as pd

    log = read_train_log(run_dir)
    if not log.get("validation_loss"):
        rows = [(e["step"], round(e["loss"], 4)) for e in log["eval_loss"]]
        return pd.DataFrame(rows, columns=["step", "held-out loss"]).set_index("step")
    recall = {e["step"]: e for e in log.get("validation_recall", [])}
    kept = log["stats"]["kept_step"]
    rows = [
        (e["step"], round(e["loss"], 4), recall.get(e["step"], {}).get("recall"), recall.get(e["step"], {}).get("correct"),
         "kept" if e["step"] == kept else "")
        for e in log["validation_loss"]
    ]
    table = pd.DataFrame(rows, columns=["step", "validation loss", "validation recall", "validation correct", "adapter"])
    return table.astype({"validation correct": "Int64"}).set_index("step")  # a count; empty at step 0 (no check)


def adapter_files(run_dir):
    """What run_dir/adapter holds: one row per file with its size (KB or MB); the folder names the index."""
    import pandas as pd

    folder = runs.run_path(run_dir, runs.ADAPTER)
    if not folder.is_dir():
        raise ConfigError(f"{folder} does not exist. Run notebook 05_train (or `python -m semifinetune train`) first.")
    rows = [(p.name, file_size(p.stat().st_size)) for p in sorted(folder.iterdir()) if p.is_file()]
    return pd.DataFrame(rows, columns=["file", "size"]).set_index("file").rename_axis(f"{folder}/")


def file_size(size: int) -> str:
    """Bytes with a unit: "5.1 KB", "17.4 MB", "1.20 GB" (binary: 1 KB = 1,024 bytes)."""
    if size < 2**20:
        return f"{size / 2**10:.1f} KB"
    if size < 2**30:
        return f"{size / 2**20:.1f} MB"
    return f"{size / 2**30:.2f} GB"


def plot_loss_curve(run_dir):
    """Train and held-out loss from run_dir/train_log.json, saved as run_dir/loss_curve.png; returns the figure."""
    from .plots import plot_losses

    return plot_losses(read_train_log(run_dir), runs.run_path(run_dir, runs.LOSS_PLOT))
