"""Shared fixtures: configs and tokenizers built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # tests/test_sample_kernel.py runs the GPU draw in Triton's interpreter. It must be on before anything imports
    # Triton (transformers does, through torch._dynamo): Triton's own functions are made compiled-only otherwise.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session", autouse=True)
def remembered_run_file(tmp_path_factory):
    """setup() remembers its run directory for notebooks 02-06 (runs.last_run_file, runs/.last_run in the project):
    the suite's runs, and the kernels and commands it starts, remember theirs in a temporary file instead."""
    import os

    from semifinetune.runs import LAST_RUN_ENV

    saved = os.environ.get(LAST_RUN_ENV)
    os.environ[LAST_RUN_ENV] = str(tmp_path_factory.mktemp("remembered") / ".last_run")
    yield Path(os.environ[LAST_RUN_ENV])
    if saved is None:
        os.environ.pop(LAST_RUN_ENV, None)
    else:
        os.environ[LAST_RUN_ENV] = saved


@pytest.fixture(scope="session")
def tiny_cfg():
    from semifinetune.config import make_config

    return make_config("tiny")


@pytest.fixture(scope="session")
def cpu_cfg():
    from semifinetune.config import make_config

    return make_config("cpu")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_cfg):
    """The tiny model's tokenizer: R1-Distill specials and chat template, trained on data/ (~1 s the first time)."""
    from semifinetune.models import load_tokenizer

    return load_tokenizer(tiny_cfg)


@pytest.fixture(scope="session")
def smol_tokenizer(cpu_cfg):
    """The embedded SmolLM2-135M tokenizer (the cpu profile's), no weights loaded once its cache exists."""
    from semifinetune.models import load_tokenizer

    return load_tokenizer(cpu_cfg)


@pytest.fixture(scope="session")
def tiny(tiny_cfg):
    """(model, tokenizer) of the tiny profile, shared read-only: tests that train load their own."""
    from semifinetune.models import load_model

    return load_model(tiny_cfg)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_cfg):
    """A tiny-profile run directory with a LoRA adapter in adapter/ (B weights perturbed, so tuned != base), via peft directly."""
    import torch

    from semifinetune.lora import add_lora
    from semifinetune.models import load_model
    from semifinetune.pipeline import setup

    run_dir = tmp_path_factory.mktemp("tiny_run")
    eval_file = run_dir / "eval6.jsonl"  # the first 6 held-out questions: enough for every code path, seconds to run
    lines = (Path(__file__).parent.parent / "data" / "semiconductor_eval.jsonl").read_text(encoding="utf-8").splitlines()
    eval_file.write_text("\n".join(lines[:6]) + "\n", encoding="utf-8")
    setup(run_dir, "tiny", {"eval_file": str(eval_file)})
    model, tokenizer = load_model(tiny_cfg)
    model = add_lora(model, tiny_cfg)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B starts at zero (adapter = no-op); a trained adapter has moved it
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.save_pretrained(run_dir / "adapter")
    tokenizer.save_pretrained(run_dir / "adapter")
    return run_dir
