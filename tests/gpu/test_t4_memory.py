"""The `t4` profile's generation as a T4 would run it: the process held to 15 GB, fp16 compute."""

from __future__ import annotations

import pytest
import torch
from gpu_helpers import QUESTIONS

T4_BYTES = 15 * 10**9


@pytest.fixture
def t4_sized(r1_random):
    """The R1 architecture in 4-bit, fp16 compute, with a LoRA adapter, in a process allowed a T4's memory."""
    from semifinetune.config import make_config
    from semifinetune.lora import add_lora
    from semifinetune.models import load_model

    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(T4_BYTES / total)
    cfg = make_config("t4", {"model_name": str(r1_random), "precision": "fp16"})
    model, tokenizer = load_model(cfg)
    model = add_lora(model, cfg)
    try:
        yield model, tokenizer
    finally:
        del model
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(1.0)


def test_the_planned_batch_fits_a_t4_and_a_larger_one_falls_back(t4_sized, capsys):
    """A T4-sized card keeps batch_plan.SMALL_CARD_BATCH rows; batches of twice the rows the memory plan would give
    must fall back by halving, not fail."""
    from semifinetune.batch_plan import available_gpu_bytes, default_batch_size, rows_that_fit
    from semifinetune.formats import chat_prompt
    from semifinetune.generate import SamplingSettings, _longest_row_tokens, generate

    model, tokenizer = t4_sized
    assert available_gpu_bytes() < T4_BYTES  # the limit is seen, not the H200's free memory
    settings = SamplingSettings(temperature=0.6, top_p=0.95, max_new_tokens=512)
    prompts = [chat_prompt(tokenizer, q) for q in QUESTIONS]
    tokens = _longest_row_tokens(tokenizer, prompts, [settings])
    planned = default_batch_size(model, tokens)  # as generate() plans
    by_memory = rows_that_fit(model, tokens)
    questions = (QUESTIONS * 20)[: 2 * by_memory]
    torch.cuda.reset_peak_memory_stats()
    rows = generate(model, tokenizer, questions[:planned], settings, progress=False)
    print(f"T4-sized plan: {planned} rows of 512 new tokens, peak reserved {torch.cuda.max_memory_reserved() / 2**30:.2f} GiB")
    assert "Out of GPU memory" not in capsys.readouterr().out
    assert len(rows) == planned == 64 and torch.cuda.max_memory_reserved() <= T4_BYTES
    rows = generate(model, tokenizer, questions, settings, batch_size=len(questions), progress=False)
    assert "Out of GPU memory at batch size" in capsys.readouterr().out and len(rows) == len(questions)
