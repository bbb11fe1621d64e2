"""A decoding step's attention as a Triton kernel: each row reads only its own filled slots, each key head once for
the query heads that share it, with the softmax and the weighted sum of values in float32.

A row's slots are contiguous: its prompt is left-padded, so its real prompt tokens end where the batch's prompt
length does, and the answer follows them. The kernel reads slots first[row] .. last (the slot this step writes)
and nothing else; decode_attention's SDPA path reads every row up to the batch's bucket, padding included, and
rounds the attention weights to bf16 before they weight the values. Long rows are split into SPLIT_SLOTS pieces
read by programs of their own, then merged by their log-sum-exp (flash-decoding), so that few rows still fill
the card.
"""

from __future__ import annotations

import triton
import triton.language as tl

BLOCK_SLOTS = 64
SPLIT_SLOTS = 256  # slots one program reads at most
TARGET_PROGRAMS = 2048


def supported(query, key) -> bool:
    """Shapes the kernel handles: one query per row, head size a power of two, at most 16 query heads per key head."""
    rows, heads, queries, dim = query.shape
    group = heads // key.shape[1]
    return queries == 1 and dim & (dim - 1) == 0 and 16 <= dim <= 256 and group <= 16 and heads % key.shape[1] == 0


def attend(query, key, value, first, last, length: int, scale: float):
    """Attention output (B, 1, heads, dim) in the query's dtype: query (B, heads, 1, dim); key and value the cache
    (B, key heads, slots, dim); first (B,) each row's first filled slot; last (1,) the slot this step wrote; only
    slots below `length` exist for this call (its recorded shape)."""
    import torch

    rows, heads, _, dim = query.shape
    key_heads = key.shape[1]
    group = heads // key_heads
    splits = max(1, min(-(-length // SPLIT_SLOTS), -(-TARGET_PROGRAMS // (rows * key_heads))))
    span = -(-length // (splits * BLOCK_SLOTS)) * BLOCK_SLOTS
    out = torch.empty((rows, key_heads, splits, group, dim), dtype=torch.float32, device=query.device)
    lse = torch.empty((rows, key_heads, splits, group), dtype=torch.float32, device=query.device)
    q = query.reshape(rows, key_heads, group, dim)
    exact = query.dtype == torch.float32  # a float32 model: every product in float32, as its SDPA computes
    _attend_split[(rows, key_heads, splits)](
        q, key, value, first, last, out, lse, q.stride(0), q.stride(1), q.stride(2),
        key.stride(0), key.stride(1), key.stride(2), value.stride(0), value.stride(1), value.stride(2),
        scale, span, length, PRECISION="ieee" if exact else "tf32", WEIGHTS_PRECISION="ieee" if exact else "tf32x3",
        SPLITS=splits, GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), DIM=dim, BLOCK=BLOCK_SLOTS,
        num_warps=4)
    if splits == 1:
        merged = out[:, :, 0]
    else:  # each piece weighted by its share of the row's softmax sum; empty pieces (lse -inf) weigh 0
        weights = torch.softmax(lse, dim=2).unsqueeze(-1)
        merged = (out * weights).sum(dim=2)
    return merged.reshape(rows, 1, heads, dim).to(query.dtype)


@triton.jit
def _attend_split(q_ptr, k_ptr, v_ptr, first_ptr, last_ptr, out_ptr, lse_ptr, q_row, q_head, q_group,
                  k_row, k_head, k_slot, v_row, v_head, v_slot, scale, span, length, PRECISION: tl.constexpr,
                  WEIGHTS_PRECISION: tl.constexpr,
                  SPLITS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, DIM: tl.constexpr,
                  BLOCK: tl.constexpr):
    row = tl.program_id(0)
    head = tl.program_id(1)
    split = tl.program_id(2)
    begin = tl.maximum(split * span, tl.load(first_ptr + row))
    end = tl.minimum(tl.minimum((split + 1) * span, tl.load(last_ptr) + 1), length)
    groups = tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, DIM)
    q = tl.load(q_ptr + row * q_row + head * q_head + groups[:, None] * q_group + dims[None, :],
                mask=groups[:, None] < GROUP, other=0.0)
    top = tl.full((GROUP_PAD,), -float("inf"), tl.float32)
    total = tl.zeros((GROUP_PAD,), tl.float32)
    acc = tl.zeros((GROUP_PAD, DIM), tl.float32)
    slots = tl.arange(0, BLOCK)
    k_base = k_ptr + row * k_row + head * k_head
    v_base = v_ptr + row * v_row + head * v_head
    for offset in range(0, span, BLOCK):
        at = split * span + offset + slots
        inside = (at >= begin) & (at < end)
        if tl.sum(inside.to(tl.int32), 0) > 0:
            k = tl.load(k_base + at[:, None] * k_slot + dims[None, :], mask=inside[:, None], other=0.0)
            # bf16 x bf16 products are exact in float32, summed in float32; a float32 model's in full float32
            scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            scores = tl.where(inside[None, :], scores, -float("inf"))
            new_top = tl.maximum(top, tl.max(scores, 1))
            weights = tl.exp(scores - new_top[:, None])
            fade = tl.exp(top - new_top)
            total = total * fade + tl.sum(weights, 1)
            v = tl.load(v_base + at[:, None] * v_slot + dims[None, :], mask=inside[:, None], other=0.0)
            # the weights stay float32: three tf32 products (tf32x3) keep float32's precision on tensor cores, where
            # one tf32 product truncates them to 10 bits and SDPA rounds them to bf16's 7
            acc = acc * fade[:, None] + tl.dot(weights, v.to(tl.float32), input_precision=WEIGHTS_PRECISION)
            top = new_top
    part = (row * tl.num_programs(1) + head) * SPLITS + split
    empty = total == 0.0
    result = tl.where(empty[:, None], 0.0, acc / tl.where(empty, 1.0, total)[:, None])
    tl.store(out_ptr + (part * GROUP + groups[:, None]) * DIM + dims[None, :], result, mask=groups[:, None] < GROUP)
    tl.store(lse_ptr + part * GROUP + groups, tl.where(empty, -float("inf"), top + tl.log(tl.where(empty, 1.0, total))),
             mask=groups < GROUP)
