"""Helpers shared by the GPU tests and benchmarks: a short training run, the R1 architecture with a trained-looking
adapter, greedy token ids three ways, how far two answers agree."""

from __future__ import annotations

import json
from pathlib import Path

QUESTIONS = [json.loads(line)["input"] for line in
             (Path(__file__).resolve().parents[2] / "data" / "semiconductor_eval.jsonl").read_text(encoding="utf-8").splitlines()]


def trained_run(run_dir: Path, profile: str, overrides: dict) -> dict:
    """setup (01), prepare_data (04) and train (05) into run_dir; the train log (losses and stats)."""
    from semifinetune import runs
    from semifinetune.data import prepare_data
    from semifinetune.pipeline import setup
    from semifinetune.train import train

    cfg, _ = setup(run_dir, profile, overrides)
    prepare_data(run_dir)
    train(cfg, run_dir)
    return json.loads(runs.run_path(run_dir, runs.TRAIN_LOG).read_text(encoding="utf-8"))


def r1_with_random_adapter(model_path) -> tuple:
    """(model, tokenizer): the checkpoint at model_path in 4-bit (the t4 profile) with a LoRA adapter whose B weights
    are random instead of zero, so that the adapter changes the answers as a trained one does."""
    import torch

    from semifinetune.config import make_config
    from semifinetune.lora import add_lora
    from semifinetune.models import load_model

    cfg = make_config("t4", {"model_name": str(model_path)})
    model, tokenizer = load_model(cfg)
    model = add_lora(model, cfg)
    generator = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, device=param.device, generator=generator) * 0.05)
    return model, tokenizer


def prefix_agreement(a: list[int], b: list[int]) -> float:
    """The share of `a`'s tokens that `b` repeats before the two first differ (1.0: identical)."""
    same = 0
    for x, y in zip(a, b):
        if x != y:
            break
        same += 1
    return same / max(len(a), len(b), 1)


def greedy_ids(model, tokenizer, questions: list[str], max_new_tokens: int, way: str) -> list[list[int]]:
    """Greedy new token ids per question, up to and including the end-of-sequence token.

    way: "generate" (transformers' generate(), dynamic cache: the reference), "eager" (the static-cache loop,
    step by step) or "graphed" (the same loop with its step replayed as a CUDA graph).
    """
    import torch

    from semifinetune.decode import static_decode
    from semifinetune.formats import chat_prompt
    from semifinetune.generate import eos_token_ids

    model.eval()
    tokenizer.padding_side = "left"
    encoded = tokenizer([chat_prompt(tokenizer, q) for q in questions], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(model.device)
    eos = eos_token_ids(model, tokenizer)
    n = len(questions)
    with torch.inference_mode():
        if way == "generate":
            out = model.generate(**encoded, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=sorted(eos),
                                 pad_token_id=tokenizer.pad_token_id)[:, encoded["input_ids"].shape[1]:]
        else:
            out = static_decode(model, encoded["input_ids"], encoded["attention_mask"], [0.0] * n, [1.0] * n,
                                max_new_tokens, eos, tokenizer.pad_token_id, cuda_graph=way == "graphed")
    rows = []
    for ids in out.tolist():
        stop = next((k for k, token in enumerate(ids) if token in eos), None)
        rows.append(ids if stop is None else ids[: stop + 1])
    return rows


def mean_agreement(reference: list[list[int]], other: list[list[int]]) -> float:
    """Mean over answers of prefix_agreement."""
    return sum(prefix_agreement(a, b) for a, b in zip(reference, other)) / len(reference)


def fp32_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """The reference: attention over the mask's slots with every input and operation in float32."""
    import torch

    group = query.shape[1] // key.shape[1]
    length = attention_mask.shape[-1]
    key, value = (t[:, :, :length].float().repeat_interleave(group, dim=1) for t in (key, value))
    scores = query.float() @ key.transpose(-1, -2) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    weights = (scores + attention_mask.float()).softmax(dim=-1)
    return (weights @ value).transpose(1, 2).to(query.dtype), None


def attention_variants() -> dict:
    """name -> attention function (transformers' interface) for one decoding step: the fp32 reference, transformers'
    own SDPA over the whole cache (keys copied per query head), SDPA over grouped heads and keys cut at the bucket,
    and the loop's (attention_kernel where it supports the model)."""
    import functools

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from semifinetune.decode_attention import grouped_attention

    def transformers_sdpa(module, query, key, value, attention_mask, **kwargs):
        full = attention_mask.new_full((*attention_mask.shape[:-1], key.shape[2]), attention_mask.min())
        full[..., : attention_mask.shape[-1]] = attention_mask
        return sdpa_attention_forward(module, query, key, value, full, **kwargs)

    return {"fp32": fp32_attention, "transformers_sdpa": transformers_sdpa, "grouped_sdpa": grouped_attention,
            "loop": functools.partial(grouped_attention, kernel=True)}


def attention_errors(decoder, length: int) -> dict:
    """One decoding step of `decoder` (prefilled, its cache_position set) run eagerly with each attention variant:
    {variant: (attention output's relative error against fp32 on the same inputs, averaged over layers; the step's
    relative logit error against the step with fp32 attention in every layer)}. Every layer's input comes from the
    fp32 reference, so each variant meets the same inputs."""
    import torch
    from transformers import AttentionInterface

    from semifinetune.decode_attention import NAME

    variants = attention_variants()
    errors = {name: [] for name in variants}

    def compared(module, query, key, value, attention_mask, **kwargs):
        reference = fp32_attention(module, query, key, value, attention_mask, **kwargs)[0].float()
        for name, function in variants.items():
            out = function(module, query, key, value, attention_mask, **dict(kwargs))[0].float()
            errors[name].append(((out - reference).norm() / reference.norm()).item())
        return reference.to(query.dtype), None

    def logits_with(function):
        AttentionInterface.register(NAME, function)
        return decoder._step(length).float()

    AttentionInterface.register(NAME, compared)
    decoder._step(length)
    reference = logits_with(fp32_attention)
    centred = (reference - reference.mean(dim=-1, keepdim=True)).norm()
    found = {}
    for name, function in variants.items():
        logits = logits_with(function)
        found[name] = (sum(errors[name]) / len(errors[name]), ((logits - reference).norm() / centred).item())
    return found
