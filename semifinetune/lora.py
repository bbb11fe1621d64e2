"""Attach LoRA through the loader's backend (Unsloth or peft)."""

from __future__ import annotations

from .config import RunConfig


def add_lora(model, cfg: RunConfig):
    """The model with LoRA adapters on cfg.target_modules; gradient checkpointing as configured."""
    if getattr(model, "semifinetune_backend", "transformers") == "unsloth":
        from unsloth import FastLanguageModel

        return FastLanguageModel.get_peft_model(
            model,
            r=cfg.lora_r,
            target_modules=list(cfg.target_modules),
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            bias="none",
            use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False,
            random_state=cfg.seed,
        )
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()  # checkpointed inputs need grads for LoRA's backward pass
    lora_config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    from .seeding import seed_everything

    seed_everything(cfg.seed)  # LoRA A matrices are random: same seed, same start
    return get_peft_model(model, lora_config)
