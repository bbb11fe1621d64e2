"""Shared fixtures: configs and tokenizers built once per test session."""

from __future__ import annotations

import pytest


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
