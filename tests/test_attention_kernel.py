"""The decoding step's attention kernel (attention_kernel) against float32 attention, run by Triton's interpreter on
the CPU in float32 (the interpreter rounds to bf16 by truncation; the GPU suite holds the compiled bf16 kernel to
an fp32 reference beside SDPA)."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":  # conftest.py turns it on where there is no CUDA GPU
    pytest.skip("the GPU suite runs the attention kernel compiled (tests/gpu)", allow_module_level=True)
pytest.importorskip("triton")

from semifinetune import attention_kernel  # noqa: E402


def _reference(query, key, value, mask, scale):
    group = query.shape[1] // key.shape[1]
    length = mask.shape[-1]
    key, value = (t[:, :, :length].repeat_interleave(group, dim=1) for t in (key, value))
    weights = (query @ key.transpose(-1, -2) * scale + mask).softmax(dim=-1)
    return (weights @ value).transpose(1, 2)


def test_the_kernel_gives_float32_attention_over_the_slots_the_mask_shows():
    """3 rows, 12 query heads over 2 key heads, the query laid out as the model's projection leaves it. Row 0's
    prompt padding hides a whole block of 64 slots (skipped), row 1 sees one slot, row 2 all; the cache is longer
    than the mask (slots past it are never read: they hold NaN here) and the length is no whole number of blocks."""
    generator = torch.Generator().manual_seed(0)
    rows, heads, key_heads, dim, length = 3, 12, 2, 128, 150
    query = torch.randn(rows, 1, heads, dim, generator=generator).transpose(1, 2)
    key, value = (torch.randn(rows, key_heads, 192, dim, generator=generator) for _ in range(2))
    key[:, :, length:], value[:, :, length:] = float("nan"), float("nan")
    seen = torch.ones(rows, length, dtype=torch.bool)
    seen[0, :70] = False
    seen[1] = False
    seen[1, 120] = True
    mask = torch.zeros(rows, 1, 1, length).masked_fill_(~seen[:, None, None, :], torch.finfo(torch.float32).min)
    scale = dim**-0.5
    assert attention_kernel.supported(query, key)
    got = attention_kernel.attend(query, key, value, mask, scale)
    assert got.shape == (rows, 1, heads, dim)
    assert torch.allclose(got, _reference(query, key, value, mask, scale), atol=1e-5, rtol=1e-5)
    assert torch.allclose(got[1, 0], value[1, :, 120].repeat_interleave(6, dim=0), atol=1e-6)


def test_rows_read_their_prompts_slots_from_their_source_row():
    """prompt_rows: rows 2 and 3 repeat rows 0 and 1's prompts (their copies of its 40 slots hold NaN here, so any
    read of them shows); each gives the attention over its source's prompt slots and its own later ones, from the
    first slot given (after 3 of left padding)."""
    generator = torch.Generator().manual_seed(1)
    rows, heads, key_heads, dim, length, shared = 4, 12, 2, 128, 100, 40
    query = torch.randn(rows, 1, heads, dim, generator=generator).transpose(1, 2)
    key, value = (torch.randn(rows, key_heads, 128, dim, generator=generator) for _ in range(2))
    expected_key, expected_value = key.clone(), value.clone()
    for cache, expected in ((key, expected_key), (value, expected_value)):
        expected[2:, :, :shared] = cache[:2, :, :shared]
        cache[2:, :, :shared] = float("nan")
    seen = torch.ones(rows, length, dtype=torch.bool)
    seen[:, :3] = False  # the prompts' left padding
    mask = torch.zeros(rows, 1, 1, length).masked_fill_(~seen[:, None, None, :], torch.finfo(torch.float32).min)
    first, source = torch.full((rows,), 3, dtype=torch.int32), torch.tensor([0, 1, 0, 1], dtype=torch.int32)
    got = attention_kernel.attend(query, key, value, mask, dim**-0.5,
                                  (first, source, torch.tensor([shared], dtype=torch.int32)))
    expected = _reference(query, expected_key, expected_value, mask, dim**-0.5)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_a_step_reads_no_slot_after_its_own():
    """`filled` at slot 77 of a mask 128 slots long that shows them all: the slots after 77 (NaN here) are not read,
    and the output is attention over slots 0-77."""
    generator = torch.Generator().manual_seed(2)
    rows, heads, key_heads, dim, length, filled = 2, 12, 2, 128, 128, 77
    query = torch.randn(rows, 1, heads, dim, generator=generator).transpose(1, 2)
    key, value = (torch.randn(rows, key_heads, length, dim, generator=generator) for _ in range(2))
    seen = filled + 1
    expected = _reference(query, key[:, :, :seen], value[:, :, :seen], torch.zeros(rows, 1, 1, seen), dim**-0.5)
    key[:, :, filled + 1:], value[:, :, filled + 1:] = float("nan"), float("nan")
    got = attention_kernel.attend(query, key, value, torch.zeros(rows, 1, 1, length), dim**-0.5,
                                  filled=torch.tensor([filled]))
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_the_kernel_leaves_prefill_and_other_layouts_to_sdpa():
    query = torch.zeros(2, 12, 5, 128)  # a prefill: 5 queries a row
    key = torch.zeros(2, 2, 64, 128)
    assert not attention_kernel.supported(query, key)
    assert not attention_kernel.supported(torch.zeros(2, 12, 1, 96), torch.zeros(2, 2, 64, 96))  # 96: no power of 2
    assert not attention_kernel.supported(torch.zeros(2, 40, 1, 128), torch.zeros(2, 2, 64, 128))  # 20 heads a key head
