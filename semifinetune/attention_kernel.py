"""A decoding step's attention as one Triton kernel: each key head read once for the query heads that share it, the
additive mask's hidden blocks skipped, the output written where the attention projection reads it.

One program per row and key head reads the cache in blocks of BLOCK slots up to the step's own slot (or the mask's
length): the scores of the GROUP query heads that share the key head (padded to 16, the smallest matrix product
Triton's tensor cores take) in float32 from bf16 products, the mask added, an online softmax in float32 (flash
attention's), and the values weighted by the probabilities split into a bf16 part and the bf16 of what that part
leaves out (two products, so the weights keep about 16 bits instead of SDPA's 8). The blocks before the first slot
the mask shows (a short prompt's left padding) are not read, and rows that repeat a prompt read its slots from one
row (attend's prompt_rows). The output is (rows, 1, heads, dim) in the query's dtype, the layout the attention
projection reads, so no copy follows.

Used for bf16 and fp16 models on Ampere and later cards (decode.kernels_usable): a float32 model keeps SDPA, whose
float32 products Triton would take in tf32.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .layer_kernels import INTERPRETED

# Slots a program reads at a time, warps per program, blocks in flight: the fastest of 27 settings (block 32, 64,
# 128 x 2, 4, 8 warps x 1-3 stages) in one layer at 822 rows x 320 slots on an H100 (98.7 us; 104.3 at 64, 4, 2)
BLOCK, WARPS, STAGES = 32, 4, 3


def supported(query, key) -> bool:
    """Shapes and dtypes the kernel handles (supports), for one query per row."""
    return query.shape[2] == 1 and supports(query.shape[1], key.shape[1], query.shape[3], query.dtype)


def supports(heads: int, key_heads: int, dim: int, dtype) -> bool:
    """16-bit (float32 too in Triton's interpreter, which multiplies in float32), head size a power of two from 16
    to 256, at most 16 query heads per key head."""
    import torch

    dtypes = (torch.bfloat16, torch.float16, torch.float32) if INTERPRETED else (torch.bfloat16, torch.float16)
    return (dtype in dtypes and dim & (dim - 1) == 0 and 16 <= dim <= 256 and heads % key_heads == 0
            and heads // key_heads <= 16)


def attend(query, key, value, mask, scale: float, prompt_rows=None, filled=None, block: int = BLOCK,
           warps: int = WARPS, stages: int = STAGES):
    """Attention output (rows, 1, heads, dim): query (rows, heads, 1, dim); key and value (rows, key heads, slots,
    dim) with at least the mask's length of slots; mask additive, (rows, 1, 1, length).

    `prompt_rows`: (first (rows,), source (rows,), shared (1,)), int32 tensors read on the GPU (so a recorded step
    reads each batch's): each row's first slot the mask shows (its prompt's left padding ends there; without them
    it is found from the mask first), and row r reads slots below `shared` from row source[r], which holds the same
    keys and values there (rows that repeat one prompt), so that a prompt's slots come from memory once and from
    the L2 cache for its other rows. `filled`: a one-element tensor holding the step's own slot (its
    cache_position), read on the GPU: the slots after it, which a causal step cannot see, are not read, so one
    recorded step serves every length of the answer. block, warps and stages: the launch settings
    (benchmarks/bench_step.py compares them)."""
    import torch

    rows, heads, _, dim = query.shape
    key_heads = key.shape[1]
    group = heads // key_heads
    length = mask.shape[-1]
    out = torch.empty((rows, 1, heads, dim), dtype=query.dtype, device=query.device)
    first, source, shared = prompt_rows if prompt_rows is not None else (out, out, out)  # unread without ROWS
    _attend[(rows, key_heads)](
        query, key, value, mask, out, first, source, shared, filled if filled is not None else out, query.stride(0),
        query.stride(1), key.stride(0), key.stride(1), key.stride(2), value.stride(0), value.stride(1), value.stride(2),
        mask.stride(0), mask.stride(-1), out.stride(0), out.stride(2), length, scale, GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)), DIM=dim, BLOCK=block, ROWS=prompt_rows is not None,
        FILLED=filled is not None, FLOAT32=INTERPRETED, num_warps=warps, num_stages=stages)
    return out


@triton.jit
def _attend(q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, first_ptr, source_ptr, shared_ptr, filled_ptr, q_row, q_head,
            k_row, k_head, k_slot, v_row, v_head, v_slot, mask_row, mask_slot, out_row, out_head, length, scale,
            GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, DIM: tl.constexpr, BLOCK: tl.constexpr,
            ROWS: tl.constexpr, FILLED: tl.constexpr, FLOAT32: tl.constexpr):
    """ROWS: reading starts at first_ptr[row], and slots below shared_ptr's value are read from row
    source_ptr[row]. FILLED: slots past filled_ptr's value not read. FLOAT32: the matrix products in float32
    (Triton's interpreter multiplies 16-bit values as integers)."""
    row = tl.program_id(0)
    head = tl.program_id(1)
    group = tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, DIM)
    heads = head * GROUP + group
    real = group[:, None] < GROUP
    q = tl.load(q_ptr + row * q_row + heads[:, None] * q_head + dims[None, :], mask=real, other=0.0)
    if FLOAT32:
        q = q.to(tl.float32)
    top = tl.full([GROUP_PAD], -float("inf"), tl.float32)
    total = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, DIM], tl.float32)
    slots = tl.arange(0, BLOCK)
    if ROWS:
        source = tl.load(source_ptr + row)
        shared = tl.load(shared_ptr)
    mask_base = mask_ptr + row * mask_row
    # The first slot the mask shows (the dtype's minimum hides one): the blocks before it, a short prompt's left
    # padding, are not read. Given, or found first from the mask alone, so that the loop below has no branch and
    # Triton can load its next block while computing this one.
    end = length
    if FILLED:
        end = tl.minimum(length, tl.load(filled_ptr).to(tl.int32) + 1)
    if ROWS:
        first = tl.load(first_ptr + row)
    else:
        first = end
        for start in range(0, end, BLOCK):
            at = start + slots
            bias = tl.load(mask_base + at * mask_slot, mask=at < end, other=-float("inf")).to(tl.float32)
            first = tl.minimum(first, tl.min(tl.where(bias > -1e30, at, end), 0))
    for start in range(first // BLOCK * BLOCK, end, BLOCK):
        at = start + slots
        inside = at < end
        bias = tl.load(mask_base + at * mask_slot, mask=inside, other=-float("inf")).to(tl.float32)
        if ROWS:
            kv_row = tl.where(at < shared, source, row)[:, None]
        else:
            kv_row = row
        k = tl.load(k_ptr + kv_row * k_row + head * k_head + at[:, None] * k_slot + dims[None, :], mask=inside[:, None],
                    other=0.0)
        v = tl.load(v_ptr + kv_row * v_row + head * v_head + at[:, None] * v_slot + dims[None, :], mask=inside[:, None],
                    other=0.0)
        if FLOAT32:
            k = k.to(tl.float32)
        scores = tl.dot(q, tl.trans(k)) * scale + bias[None, :]
        new_top = tl.maximum(top, tl.max(scores, 1))
        weights = tl.exp(scores - new_top[:, None])
        fade = tl.exp(top - new_top)
        total = total * fade + tl.sum(weights, 1)
        high = weights.to(v.dtype)
        low = (weights - high.to(tl.float32)).to(v.dtype)
        if FLOAT32:
            v, high, low = v.to(tl.float32), high.to(tl.float32), low.to(tl.float32)
        acc = acc * fade[:, None] + tl.dot(high, v) + tl.dot(low, v)
        top = new_top
    out = acc / total[:, None]
    tl.store(out_ptr + row * out_row + heads[:, None] * out_head + dims[None, :], out.to(out_ptr.dtype.element_ty),
             mask=real)
