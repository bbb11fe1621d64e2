"""An exported GGUF read back with transformers (which reads GGUF for Qwen2 and Llama) and set against the merged model.

Used by the tests (tiny model) and benchmarks/check_gguf_export.py (the embedded model). Greedy answers are decoded
one prompt at a time, without padding, so the merged model and the GGUF see the same shapes.
"""

from __future__ import annotations

from pathlib import Path

Q8_0_BLOCK = 32  # weights per Q8_0 block, each with one f16 scale = block max / 127


def load_gguf_model(path: Path):
    """The GGUF's weights, dequantized into a float32 transformers model."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)


def prompt_ids(tokenizer, questions: list[str]) -> list[list[int]]:
    """Each question through the chat template with the generation prompt, as token ids."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True,
                                          return_dict=True)["input_ids"] for q in questions]


def greedy_answers(model, prompts: list[list[int]], max_new_tokens: int, eos_token_id: int) -> list[list[int]]:
    """The greedy continuation of each prompt, up to and including eos."""
    import torch

    answers = []
    with torch.no_grad():
        for ids in prompts:
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                                 pad_token_id=eos_token_id)
            answers.append(out[0, len(ids):].tolist())
    return answers


def teacher_forced_agreement(model, prompts: list[list[int]], answers: list[list[int]]) -> tuple[int, int]:
    """(answer tokens that are the model's own top-1 given the reference answer so far, answer tokens)."""
    import torch

    agree = total = 0
    with torch.no_grad():
        for ids, answer in zip(prompts, answers):
            if not answer:
                continue
            logits = model(torch.tensor([ids + answer])).logits[0, len(ids) - 1: len(ids) + len(answer) - 1]
            agree += int((logits.argmax(-1) == torch.tensor(answer)).sum())
            total += len(answer)
    return agree, total


def state_dicts(gguf_model, merged) -> list[tuple[str, object, object]]:
    """(name, GGUF weight, merged weight in float32) for every weight both models have."""
    mine, theirs = gguf_model.state_dict(), merged.state_dict()
    return [(name, mine[name], theirs[name].float()) for name in theirs if name in mine]


def cast_mismatches(gguf_model, merged, dtype) -> list[str]:
    """Weights of the GGUF that are not exactly the merged weights rounded to dtype (f16, bf16) and back."""
    return [name for name, got, want in state_dicts(gguf_model, merged) if got.ndim > 1 and not (got == want.to(dtype).float()).all()]


def q8_0_step_ratio(gguf_model, merged) -> float:
    """Largest |GGUF - merged| over half a Q8_0 step (block max / 254), over the weights in blocks of 32.

    At most 1 + 254/2048 where every block is rounded right: the integers are rounded against the exact scale,
    which is then stored in f16 (relative error up to 2^-11, times up to 127). f32 and f16 weights stay far below.
    """
    worst = 0.0
    for _, got, want in state_dicts(gguf_model, merged):
        if want.ndim < 2 or want.shape[-1] % Q8_0_BLOCK:
            continue
        blocks = want.reshape(-1, Q8_0_BLOCK)
        half_step = blocks.abs().amax(-1, keepdim=True) / 254
        error = (got.reshape(-1, Q8_0_BLOCK) - blocks).abs()
        ratio = (error / half_step.clamp_min(1e-30)).max().item()
        worst = max(worst, ratio)
    return worst


def compare_answers(gguf_model, prompts: list[list[int]], reference: list[list[int]], max_new_tokens: int,
                    eos_token_id: int, answers: list[list[int]] | None = None) -> dict:
    """The GGUF's greedy answers against the merged model's: how many equal, and token agreement under teacher forcing.

    `answers`: the GGUF's greedy answers where already decoded."""
    if answers is None:
        answers = greedy_answers(gguf_model, prompts, max_new_tokens, eos_token_id)
    agree, total = teacher_forced_agreement(gguf_model, prompts, reference)
    return {
        "answers": len(reference),
        "answers_identical": sum(a == b for a, b in zip(answers, reference)),
        "tokens_teacher_forced": total,
        "tokens_agreeing": agree,
        "token_agreement": round(agree / total, 4) if total else None,
    }
