"""The CUDA-graphed step's forward and loss (run eagerly here) against the model's own loss and gradients."""

from __future__ import annotations

import pytest


def test_chunked_loss_matches_cross_entropy_and_its_gradient():
    import torch

    from semifinetune.graphed import chunked_lm_loss

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=generator, requires_grad=True)
    weight = torch.randn(50, 16, generator=generator)
    labels = torch.randint(0, 50, (37,), generator=generator)
    labels[::3] = -100
    expected = torch.nn.functional.cross_entropy(hidden @ weight.t(), labels, ignore_index=-100, reduction="sum")
    (expected_grad,) = torch.autograd.grad(expected, hidden)
    got = chunked_lm_loss(hidden, weight, labels, chunk_rows=8)  # 5 chunks, the last one short
    (got_grad,) = torch.autograd.grad(got * 2.0, hidden)
    assert torch.allclose(got, expected, rtol=1e-5)
    assert torch.allclose(got_grad, expected_grad * 2.0, atol=1e-6)


@pytest.fixture(scope="module")
def lora_tiny(tiny_cfg):
    from semifinetune.config import make_config
    from semifinetune.lora import add_lora
    from semifinetune.models import load_model

    cfg = make_config("tiny", {"lora_dropout": 0.0})
    model, tokenizer = load_model(cfg)
    return add_lora(model, cfg), tokenizer


def _right_padded_batch(tokenizer, texts, prompt_tokens):
    """input_ids, attention_mask and labels as TRL's collator builds them: right padding, prompt and pads -100."""
    import torch

    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :prompt_tokens] = -100
    return ids, mask, labels


def test_static_step_loss_equals_the_models_own_loss_and_gradients(lora_tiny):
    """No attention mask and extra right padding (the graph's static length) change neither loss nor gradients."""
    import torch

    from semifinetune.graphed import static_step_loss

    model, tokenizer = lora_tiny
    model.train()
    ids, mask, labels = _right_padded_batch(
        tokenizer, ["Silicon wafers are sliced from ingots.", "EUV lithography uses 13.5 nm light in vacuum."], 3
    )
    params = [p for p in model.parameters() if p.requires_grad]

    expected = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
    expected_grads = torch.autograd.grad(expected, params)

    pad = 7  # the static buffers are longer than this batch
    static_ids = torch.nn.functional.pad(ids, (0, pad), value=tokenizer.pad_token_id)
    static_labels = torch.nn.functional.pad(labels, (0, pad), value=-100)
    got = static_step_loss(model, static_ids, static_labels)
    got_grads = torch.autograd.grad(got, params)

    assert torch.allclose(got, expected, atol=1e-5)
    for a, b in zip(got_grads, expected_grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in got_grads)


def test_graphed_step_is_skipped_where_it_does_not_apply():
    from types import SimpleNamespace

    from semifinetune.graphed import why_not_graphed

    trainer = SimpleNamespace(args=SimpleNamespace(gradient_accumulation_steps=1, world_size=1), model=object())
    assert why_not_graphed(trainer) == "no CUDA GPU"  # CI has none; the GPU path is measured in BENCHMARKS.md
