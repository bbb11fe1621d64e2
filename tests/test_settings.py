"""The names config checks optim, lr_scheduler_type and target_modules against are the libraries' own, and a
local model's family is read from its config.json without loading it."""

import json

import pytest

from semifinetune.config import (DECODER_MODULES, OPTIMIZERS, SCHEDULERS, ConfigError, make_config, model_family)


def test_optimizer_and_scheduler_names_are_the_installed_transformers():
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    assert OPTIMIZERS == tuple(name.value for name in OptimizerNames)
    assert SCHEDULERS == tuple(name.value for name in SchedulerType)


def test_the_decoder_modules_are_the_linear_layers_of_the_projects_models(tiny):
    """The tiny Qwen2 (the R1 family) holds exactly those linear layers; peft finds every one of them."""
    import torch

    model, _ = tiny
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    assert linear == set(DECODER_MODULES)


def test_a_local_models_family_comes_from_its_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert model_family(str(tmp_path)) == "llama"
    assert model_family("someone/some-model") is None  # a Hub model: not known without a download
    with pytest.raises(ConfigError, match=r"target_modules \['qkv'\] name no layer"):
        make_config("tiny", {"model_name": str(tmp_path), "target_modules": ["qkv"]})
    assert make_config("tiny", {"model_name": "someone/some-model", "target_modules": ["qkv"]})  # left to peft
    assert make_config("tiny", {"target_modules": ["self_attn.q_proj", "mlp.down_proj"]})  # peft's suffix match


def test_a_config_json_with_a_bad_setting_is_refused_when_read(tmp_path):
    from semifinetune.config import load_config, save_config

    save_config(make_config("tiny"), tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**values, "optim": "adamw_bogus"}))
    with pytest.raises(ConfigError, match="'optim' = 'adamw_bogus' is not one transformers knows"):
        load_config(tmp_path)
