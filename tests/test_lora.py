"""LoRA: the parameter report, exact on the R1-1.5B architecture and right for 4-bit packed weights."""

from __future__ import annotations

import pytest

from semifinetune.lora import add_lora, lora_parameter_report, r1_lora_report, stored_param_count


def test_r1_distill_guide_recipe_counts_on_meta_device():
    report = r1_lora_report()  # r=16 on q/k/v/o: 28 x (49,152 + 28,672 + 28,672 + 49,152)
    assert report["trainable_params"] == 4_358_144
    assert report["base_params"] == 1_777_088_000
    assert report["trainable_percent"] == 0.245
    assert report["adapted_modules"] == ["q_proj x 28", "k_proj x 28", "v_proj x 28", "o_proj x 28"]
    assert report["adapter_mb"] == 17.4  # 4,358,144 x 4 bytes


def test_all_linear_is_the_seven_projections_of_r1():
    """peft's "all-linear" (every linear layer but the output head) on R1-1.5B is q/k/v/o plus the MLP's three."""
    from semifinetune.config import make_config

    named = r1_lora_report(make_config("t4", {"target_modules": ["all-linear"]}))
    explicit = r1_lora_report(make_config("t4", {"target_modules": [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}))
    assert named == explicit
    assert named["trainable_params"] == 18_464_768  # + 28 x 16 x (3 x (1,536 + 8,960)) over the guide's 4,358,144


def test_all_linear_stands_alone():
    from semifinetune.config import ConfigError, make_config

    with pytest.raises(ConfigError, match="all-linear alone"):
        make_config("t4", {"target_modules": ["all-linear", "q_proj"]})


def _four_bit_linear(in_features: int, out_features: int):
    import bitsandbytes as bnb
    import torch

    layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(torch.randn(out_features, in_features), requires_grad=False, quant_type="nf4")._quantize("cpu")
    return layer


def test_four_bit_packed_weight_counts_twice_its_numel():
    pytest.importorskip("bitsandbytes")
    layer = _four_bit_linear(64, 32)
    assert layer.weight.numel() == 1024  # two 4-bit values per stored byte
    assert stored_param_count(layer.weight) == 64 * 32
    layer.weight.quant_state = None  # packed but detached from its state: still 2 values a byte
    assert stored_param_count(layer.weight) == 64 * 32


def test_report_on_a_model_with_4bit_layers():
    pytest.importorskip("bitsandbytes")
    import torch

    model = torch.nn.Sequential(torch.nn.Embedding(10, 64), _four_bit_linear(64, 32), torch.nn.Linear(32, 8))
    for param in model.parameters():
        param.requires_grad = False
    model[2].weight.requires_grad = True
    report = lora_parameter_report(model)
    assert report["base_params"] == 640 + 2048 + 256 + 8
    assert report["naive_base_params"] == 640 + 1024 + 256 + 8
    assert report["trainable_params"] == 256


def test_add_lora_on_tiny_model(tiny_cfg):
    from semifinetune.models import load_model

    model, _ = load_model(tiny_cfg)
    report = lora_parameter_report(add_lora(model, tiny_cfg))
    # hidden 64, 2 of 4 heads for k/v (32 wide): r=16 x (128 + 96 + 96 + 128) per layer, 2 layers
    assert report["trainable_params"] == 2 * 16 * (128 + 96 + 96 + 128)
    assert report["adapted_modules"] == ["q_proj x 2", "k_proj x 2", "v_proj x 2", "o_proj x 2"]
    assert report["base_params"] == sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
