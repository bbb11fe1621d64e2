"""The GPU suite: each CUDA-only fast path against its slow reference, on the hardware it runs on.

Skipped where there is no CUDA GPU (CI). On a GPU machine, from the project root:

    source benchmarks/gpu_env.sh && python -m pytest -m gpu tests/gpu -q

Models: the `tiny` profile moved to the GPU, and DeepSeek-R1-Distill-Qwen-1.5B's architecture with random weights
(benchmarks/r1_arch.py; same shapes, kernels, speed and memory as the real checkpoint), built once per session.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m gpu` selects by marker
def pytest_collection_modifyitems(config, items):
    import torch

    skip = pytest.mark.skip(reason="needs a CUDA GPU (the GPU suite: tests/gpu)")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(skip)


@pytest.fixture(scope="session")
def r1_random(tmp_path_factory) -> Path:
    """A bf16 checkpoint of the R1-1.5B architecture with random weights and the tiny R1-style tokenizer."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from r1_arch import build_r1_random

    return build_r1_random(tmp_path_factory.mktemp("r1") / "r1-random")


@pytest.fixture(scope="session")
def r1_prequantized(r1_random, tmp_path_factory) -> Path:
    """r1_random quantized and saved as the hub's `-bnb-4bit` uploads are made: nf4, double quantization, bf16
    compute dtype, the quantization_config stored in config.json."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    target = tmp_path_factory.mktemp("r1") / "r1-bnb-4bit"
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16
    )
    model = AutoModelForCausalLM.from_pretrained(r1_random, quantization_config=quantization, dtype=torch.bfloat16, device_map={"": 0})
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(r1_random).save_pretrained(target)
    del model
    torch.cuda.empty_cache()
    return target


@pytest.fixture
def small_eval(tmp_path) -> str:
    """The first 8 held-out questions: held-out loss passes in a second."""
    lines = (ROOT / "data" / "semiconductor_eval.jsonl").read_text(encoding="utf-8").splitlines()
    path = tmp_path / "eval8.jsonl"
    path.write_text("\n".join(lines[:8]) + "\n", encoding="utf-8")
    return str(path)
