"""Attach LoRA through the loader's backend (Unsloth or peft)."""

from __future__ import annotations

from .config import ALL_LINEAR, RunConfig


def peft_target_modules(cfg: RunConfig) -> list[str] | str:
    """cfg.target_modules as peft (and Unsloth) take it: ["all-linear"] becomes peft's own "all-linear" (every
    linear layer but the output head), else the module names."""
    return ALL_LINEAR if list(cfg.target_modules) == [ALL_LINEAR] else list(cfg.target_modules)


def add_lora(model, cfg: RunConfig):
    """The model with LoRA adapters on cfg.target_modules; gradient checkpointing as configured."""
    if getattr(model, "semifinetune_backend", "transformers") == "unsloth":
        from unsloth import FastLanguageModel

        return FastLanguageModel.get_peft_model(
            model,
            r=cfg.lora_r,
            target_modules=peft_target_modules(cfg),
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            bias="none",
            use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False,
            random_state=cfg.seed,
        )
    from peft import LoraConfig, get_peft_model

    # peft's prepare_model_for_kbit_training would also cast the frozen embeddings, LM head and norms to fp32: on
    # R1-1.5B that is 1.9 GiB more (3.4 instead of 1.5 allocated) and a cast of the 152k x 1536 head on every use.
    # They stay in the model's bf16/fp16, as on Unsloth; the adapters are fp32 (train.keep_adapter_fp32).
    for param in model.parameters():
        param.requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # checkpointed inputs need grads for LoRA's backward pass
    lora_config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=peft_target_modules(cfg),
        bias="none",
        task_type="CAUSAL_LM",
    )
    from .seeding import seed_everything

    seed_everything(cfg.seed)  # LoRA A matrices are random: same seed, same start
    return get_peft_model(model, lora_config)


def stored_param_count(param) -> int:
    """Parameters a tensor stands for: a bitsandbytes 4-bit weight packs 2 values per byte, so numel halves them."""
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        import math

        return math.prod(quant_state.shape)  # the weight's shape before packing
    if type(param).__name__ == "Params4bit" and param.dtype.itemsize == 1:
        return param.numel() * 2  # packed, quant_state not attached: 2 four-bit values per uint8
    return param.numel()


def lora_parameter_report(model) -> dict:
    """Trainable LoRA parameters against the base model's, right for 4-bit packed weights; adapted modules; adapter MB."""
    from collections import Counter

    trainable = base = naive_base = 0
    for name, param in model.named_parameters():
        count = stored_param_count(param)
        if param.requires_grad:
            trainable += count
        if "lora_" not in name:
            base += count
            naive_base += param.numel()
    adapted = Counter(name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A"))
    return {
        "trainable_params": trainable,
        "base_params": base,
        "naive_base_params": naive_base,  # numel() alone: 4-bit layers counted at half their size
        "trainable_percent": round(100 * trainable / base, 3),
        "adapted_modules": [f"{name} x {count}" for name, count in adapted.items()],  # in model order
        "adapter_mb": round(trainable * 4 / 1e6, 1),  # saved in fp32: 4 bytes a parameter, MB = 10^6 bytes
    }


def r1_lora_report(cfg: RunConfig | None = None) -> dict:
    """The report for DeepSeek-R1-Distill-Qwen-1.5B with cfg's LoRA (default: the guide's r=16 on q/k/v/o), on the meta device: no weights, no GPU."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2ForCausalLM

    from .config import make_config
    from .models import r1_distill_config

    cfg = cfg or make_config("t4", {"recipe": "guide"})
    lora_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=peft_target_modules(cfg), bias="none", task_type="CAUSAL_LM")
    with torch.device("meta"):  # shapes only: 1.78B parameters cost no memory
        model = get_peft_model(Qwen2ForCausalLM(r1_distill_config()), lora_config)
    return lora_parameter_report(model)
