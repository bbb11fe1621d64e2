"""Attention for the static-cache decoding loop: over the filled slots only, and without copying the keys per head.

transformers' SDPA attention, given a mask, copies each key and value head once per query head that shares it
(grouped-query attention: R1-1.5B has 12 query heads over 2 key heads, so 6 copies of the whole cache a step) and
attends over the cache's full length. Here a decoding step's single query per row becomes, for each key head, the
6 queries of the heads that share it: the same scores and softmax, one read of the cache. The keys are cut to the
mask's length, which the loop sets to the filled slots rounded up to a bucket (decode.KV_BUCKET), so early steps
do not read the empty end of the cache. Where Triton kernels run (decode.kernels_usable), a 16-bit model's step
attends through attention_kernel instead: the same attention in one kernel, its weights nearer float32.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

NAME = "semifinetune_decode"


def grouped_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, kernel=False,
                      prompt_rows=None, **kwargs):
    """transformers' attention-function interface: (attention output (B, q, heads, dim), None). `kernel`: a
    decoding step attends through attention_kernel where it supports the shapes, with `prompt_rows`
    (attention_kernel.attend's), up to the slot its cache_position names."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kernel:
        from . import attention_kernel

        if attention_kernel.supported(query, key):
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            # a step's query sits at cache_position: the slots after it are hidden from it, and not read
            position = kwargs.get("cache_position")
            step_slot = position if position is not None and position.numel() == 1 else None
            return attention_kernel.attend(query, key, value, attention_mask, scale, prompt_rows, step_slot), None
    filled = attention_mask.shape[-1]
    key, value = key[:, :, :filled], value[:, :, :filled]
    rows, heads, queries, dim = query.shape
    key_heads = key.shape[1]
    if queries != 1 or heads == key_heads:  # the prefill: transformers' own SDPA over the cut keys
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    # Query head h reads key head h // (heads / key_heads) (transformers' repeat_kv order), so the heads that share a
    # key head are consecutive: (B, heads, 1, dim) -> (B, key_heads, heads / key_heads, dim).
    grouped = query.reshape(rows, key_heads, heads // key_heads, dim)
    out = torch.nn.functional.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(rows, heads, 1, dim).transpose(1, 2).contiguous(), None


@contextmanager
def decode_attention(model, kernel: bool = False, prompt_rows=None):
    """Inside the block the model's SDPA attention layers call grouped_attention (with `kernel` and `prompt_rows`),
    and the block's value is True; SDPA again after. A model loaded with another implementation (eager,
    flash-attention) keeps it: the value is False, and masks must then span the whole cache."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, functools.partial(grouped_attention, kernel=kernel, prompt_rows=prompt_rows))
    AttentionMaskInterface.register(NAME, sdpa_mask)  # looked up by name; the loop passes its own 4-D masks
    config = model.config
    previous = config._attn_implementation
    if previous != "sdpa":
        yield False
        return
    config._attn_implementation = NAME
    try:
        yield True
    finally:
        config._attn_implementation = previous
