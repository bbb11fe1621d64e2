"""Triton kernels for the small elementwise parts of a decoder layer: RMSNorm (with the residual add before it),
rotary position embedding, and SiLU(gate) x up.

transformers' eager code runs each of these as several kernels over float32 copies (an RMSNorm is five, rotary
about ten for q and k); while decoding, at 822 rows on an H100, the 57 norms and the other small parts took 3.8 ms
of a 12.9 ms step (BENCHMARKS.md). Here rotary (with a decoding step's cache write), SiLU x up and RMSNorm are one
kernel each. Each rounds where transformers' code rounds (every bf16 or fp16 intermediate rounded to the input's
dtype, products and sums in float32, CUDA's own exp, rsqrt and division), so on a GPU they give torch's bits.
fp_fusion is off: a multiply and add fused into one FMA would round once where torch rounds twice.

RMSNorm's mean of squares is a sum, whose last bit depends on the order of its additions; an order other than
torch's changed greedy tokens at random weights' near-ties (BENCHMARKS.md). The one-kernel norm adds in the order
torch's reduction kernel (ATen's Reduce.cuh) takes for these shapes, from 16 rows: each of 32 lanes sums its
vectors of 4 in 4 running sums, which it then adds, and the lanes' sums meet in a tree across the warp. Which
tree (halves first, as torch does now, or neighbours first, as it did before) is found on each GPU at first use,
by comparing both with torch's own mean; where neither gives torch's bits, or below 16 rows, the norm is three
kernels with torch's mean between them.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl
from triton.language.extra import libdevice

EXACT = {"enable_fp_fusion": False}
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's interpreter lacks libdevice


def rms_norm(x, weight, eps: float, residual=None, squares=None, summed_out=None):
    """transformers' RMSNorm of x (..., N): weight * (x / sqrt(mean(x^2) + eps)) rounded to x's dtype first.

    With `residual`, the norm is of residual + x (rounded to x's dtype, as `residual + hidden_states` is) and the
    value is (norm, that sum): the decoder layer's add folded into the norm's kernel; the sum is written into
    `summed_out` where given (one kernel only). One kernel where norm_in_one_kernel(x), else three: the float32
    squares (`squares`: given where add_squared made x, so not run again), torch's mean of them, the rest.
    """
    import torch

    shape, width = x.shape, x.shape[-1]
    lanes_by_halves = None if squares is not None else _order(x)
    if lanes_by_halves is not None:
        out, summed, _ = _one_kernel_norm(x, weight, eps, residual, lanes_by_halves, summed_out)
        return out.view(shape) if residual is None else (out.view(shape), summed.view(shape))
    if summed_out is not None:
        raise ValueError("summed_out is written by the one-kernel norm only (norm_in_one_kernel)")
    if squares is None:
        summed, squares = _sum_and_squares(x, residual)
    else:
        summed = x.reshape(-1, width).contiguous()
    rows = summed.shape[0]
    out = torch.empty(summed.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    variance = squares.view(shape).mean(-1, keepdim=True)  # transformers' mean: the same kernel, the same order
    if rows:
        _normalize[(rows,)](summed, variance, weight.contiguous(), out, width, eps, BLOCK=triton.next_power_of_2(width),
                            ACCURATE=not INTERPRETED, num_warps=4, **EXACT)
    if residual is None:
        return out.view(shape)
    return out.view(shape), summed.view(shape)


def norm_in_one_kernel(x) -> bool:
    """x's RMSNorm (rms_norm without `squares`) runs as one kernel: a CUDA tensor of at least TORCH_ROWS rows
    whose width torch's reduction vectorizes, on a GPU where the probe found torch's order."""
    return _order(x) is not None


# torch's mean over the last dimension takes one warp a row, 32 lanes x 4-vectors, from 16 rows (fewer rows give
# wider blocks and another order), where the width is a multiple of 4 from 128 and each lane adds under 256 values
# (more are split across warps).
TORCH_ROWS, LANES, VECTOR = 16, 32, 4
_ORDERS = {}  # (device, width): True (lanes summed halves first), False (neighbours first), None (neither is torch's)


def _order(x):
    """For x's norm in one kernel: whether torch's warp adds its lanes' sums halves first (True) or neighbours first
    (False); None where the one kernel does not apply or reproduces neither."""
    import torch

    width = x.shape[-1]
    if (INTERPRETED or not x.is_cuda or x.numel() < TORCH_ROWS * width or width % VECTOR
            or not LANES * VECTOR <= width <= LANES * 255):
        return None
    key = (x.device, width)
    if key not in _ORDERS:
        if torch.cuda.is_current_stream_capturing():  # the probe runs eagerly, before a recording
            return None
        _ORDERS[key] = _probe(x.device, width)
    return _ORDERS[key]


def _probe(device, width: int):
    """The lane order (_order's) whose mean of squares equals torch's bit for bit on 64 rows of random float32
    values, or None. Sums of 1,536 values in two orders part in the last bit for most rows, so an order that
    matches on every row is torch's."""
    import torch

    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(64, width, generator=generator, device=device)
    expected = x.pow(2).mean(-1)  # transformers' expression
    for halves in (True, False):
        if torch.equal(_one_kernel_norm(x, torch.ones(width, device=device), 1e-6, None, halves)[2], expected):
            return halves
    return None


def _one_kernel_norm(x, weight, eps: float, residual, lanes_by_halves: bool, summed_out=None):
    """(norm as (rows, N), residual + x or x as (rows, N), the float32 mean of squares (rows,)): rms_norm in one
    kernel, the mean added up in torch's order (_order); the sum written into `summed_out` where given."""
    import numpy as np
    import torch

    width = x.shape[-1]
    flat = x.reshape(-1, width).contiguous()
    rows = flat.shape[0]
    if residual is None:
        summed = flat
    else:
        summed = torch.empty_like(flat) if summed_out is None else summed_out.view(rows, width)
    out = torch.empty(flat.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    mean = torch.empty(rows, dtype=torch.float32, device=x.device)
    factor = float(np.float32(rows) / np.float32(rows * width))  # torch's MeanOps: the sum times outputs / inputs
    if rows:
        res = flat if residual is None else residual.reshape(-1, width).contiguous()
        _norm[(rows,)](flat, res, summed, weight.contiguous(), out, mean, width, eps, factor, ADD=residual is not None,
                       HALVES=lanes_by_halves, CHUNKS=triton.cdiv(width, LANES * VECTOR), LANES=LANES, VECTOR=VECTOR,
                       ACCURATE=not INTERPRETED, num_warps=4, **EXACT)
    return out, summed, mean


@triton.jit
def _norm(x_ptr, res_ptr, sum_ptr, w_ptr, out_ptr, mean_ptr, width, eps, factor, ADD: tl.constexpr,
          HALVES: tl.constexpr, CHUNKS: tl.constexpr, LANES: tl.constexpr, VECTOR: tl.constexpr,
          ACCURATE: tl.constexpr):
    """Per row: residual + x (ADD, rounded to x's dtype, stored), its mean of float32 squares in torch's order
    (stored), and the norm. Lane l's running sum i takes element (l + LANES * j) * VECTOR + i for j = 0, 1, ...;
    the four sums are added in turn; the lanes' sums are added in a tree, halves first or neighbours first."""
    row = tl.program_id(0).to(tl.int64)
    at = tl.arange(0, LANES)[:, None] * VECTOR + tl.arange(0, VECTOR)[None, :]
    sums = tl.zeros([LANES, VECTOR], tl.float32)
    for chunk in tl.static_range(CHUNKS):
        cols = chunk * LANES * VECTOR + at
        x = _row_part(x_ptr, res_ptr, row * width + cols, cols < width, ADD)
        if ADD:
            tl.store(sum_ptr + row * width + cols, x, mask=cols < width)
        wide = x.to(tl.float32)
        sums = sums + wide * wide  # a lane past the row's end adds 0, which leaves its sum as it was
    even, odd = tl.split(tl.reshape(sums, (LANES, VECTOR // 2, 2)))
    first, third = tl.split(even)
    second, fourth = tl.split(odd)
    lane = ((first + second) + third) + fourth
    lane = _fold(lane, LANES // 2, HALVES)
    lane = _fold(lane, LANES // 4, HALVES)
    lane = _fold(lane, LANES // 8, HALVES)
    lane = _fold(lane, LANES // 16, HALVES)
    total = _fold(lane, LANES // 32, HALVES)  # (1,)
    mean = total * factor
    tl.store(mean_ptr + row + tl.arange(0, 1), mean)
    if ACCURATE:  # CUDA's rsqrtf, as torch.rsqrt calls it
        scale = libdevice.rsqrt(mean + eps)
    else:  # Triton's interpreter lacks libdevice
        scale = tl.rsqrt(mean + eps)
    scale = tl.reshape(scale, (1, 1))
    for chunk in tl.static_range(CHUNKS):
        cols = chunk * LANES * VECTOR + at
        inside = cols < width
        x = _row_part(x_ptr, res_ptr, row * width + cols, inside, ADD)  # the same sum again, from the cache
        normed = (x.to(tl.float32) * scale).to(x_ptr.dtype.element_ty)
        weight = tl.load(w_ptr + cols, mask=inside, other=0.0)
        tl.store(out_ptr + row * width + cols,
                 (weight.to(tl.float32) * normed.to(tl.float32)).to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _row_part(x_ptr, res_ptr, at, inside, ADD: tl.constexpr):
    x = tl.load(x_ptr + at, mask=inside, other=0.0)
    if ADD:
        x = (tl.load(res_ptr + at, mask=inside, other=0.0).to(tl.float32) + x.to(tl.float32)).to(x_ptr.dtype.element_ty)
    return x


@triton.jit
def _fold(lanes, HALF: tl.constexpr, HALVES: tl.constexpr):
    """One step of a warp's shuffle-down tree over 2 x HALF lanes' values: lane l takes l + HALF's (halves first)
    or, neighbours first, lane 2l takes 2l + 1's; the HALF values the next step reads."""
    if HALVES:
        pairs = tl.trans(tl.reshape(lanes, (2, HALF)))
    else:
        pairs = tl.reshape(lanes, (HALF, 2))
    low, high = tl.split(pairs)
    return low + high


def add_squared(x, residual):
    """(residual + x rounded to x's dtype, as torch adds them; its float32 squares): a decoder layer's last add in
    the kernel that the next RMSNorm would run first (rms_norm's `squares`)."""
    summed, squares = _sum_and_squares(x, residual)
    return summed.view(x.shape), squares


def _sum_and_squares(x, residual):
    """(x, or residual + x rounded to x's dtype, as (rows, N); its float32 squares)."""
    import torch

    width = x.shape[-1]
    flat = x.reshape(-1, width).contiguous()
    rows = flat.shape[0]
    summed = flat if residual is None else torch.empty_like(flat)
    squares = torch.empty(flat.shape, dtype=torch.float32, device=x.device)
    if rows:
        res = flat if residual is None else residual.reshape(-1, width).contiguous()
        _squares[(rows,)](flat, res, summed, squares, width, ADD=residual is not None,
                          BLOCK=triton.next_power_of_2(width), num_warps=4, **EXACT)
    return summed, squares


@triton.jit
def _squares(x_ptr, res_ptr, sum_ptr, squares_ptr, width, ADD: tl.constexpr, BLOCK: tl.constexpr):
    """Per row: (residual + x, rounded to x's dtype, stored) and its float32 squares."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    inside = cols < width
    x = tl.load(x_ptr + row * width + cols, mask=inside, other=0.0)
    if ADD:
        x = (tl.load(res_ptr + row * width + cols, mask=inside, other=0.0).to(tl.float32) + x.to(tl.float32))
        x = x.to(x_ptr.dtype.element_ty)
        tl.store(sum_ptr + row * width + cols, x, mask=inside)
    wide = x.to(tl.float32)
    tl.store(squares_ptr + row * width + cols, wide * wide, mask=inside)


@triton.jit
def _normalize(x_ptr, variance_ptr, w_ptr, out_ptr, width, eps, BLOCK: tl.constexpr, ACCURATE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    inside = cols < width
    wide = tl.load(x_ptr + row * width + cols, mask=inside, other=0.0).to(tl.float32)
    if ACCURATE:  # CUDA's rsqrtf, as torch.rsqrt calls it
        scale = libdevice.rsqrt(tl.load(variance_ptr + row) + eps)
    else:  # Triton's interpreter lacks libdevice
        scale = tl.rsqrt(tl.load(variance_ptr + row) + eps)
    normed = (wide * scale).to(x_ptr.dtype.element_ty)
    weight = tl.load(w_ptr + cols, mask=inside, other=0.0)
    tl.store(out_ptr + row * width + cols, (weight.to(tl.float32) * normed.to(tl.float32)).to(out_ptr.dtype.element_ty),
             mask=inside)


def rotary(q, k, cos, sin):
    """transformers' apply_rotary_pos_emb for q (B, H, T, D) and k (B, KH, T, D) as the attention layers hold them
    (views of (B, T, heads, D), whose rows may be slices of a wider projection output), cos and sin (B, T, D):
    x * cos + rotate_half(x) * sin, each product rounded. Returns new (q, k) in that same layout, contiguous."""
    import torch

    rows, heads, tokens, dim = q.shape
    key_heads = k.shape[1]
    k_out = torch.empty((rows * tokens, key_heads, dim), dtype=torch.promote_types(q.dtype, cos.dtype), device=q.device)
    q_out = _rotary_launch(q, k, None, cos, sin, k_out, None, None)
    return q_out, k_out.view(rows, tokens, key_heads, dim).transpose(1, 2)


def rotary_into_cache(q, k, v, cos, sin, keys, values, position):
    """A decoding step's rotary (one token a row, as `rotary`) with the cache update in the same kernel: k rotated
    and v as it is written into keys and values (B, KH, slots, D) at slot `position` (a one-element tensor, read on
    the GPU, so a recorded graph writes where it points at each replay), as StaticLayer.update's index_copy_ writes
    them. Returns q rotated. Spares a layer the update's five small kernels and the rotated keys' copy."""
    if keys.stride() != values.stride() or keys.stride(-1) != 1:
        raise ValueError("rotary_into_cache: keys and values must share one layout with adjacent head dimensions.")
    return _rotary_launch(q, k, v, cos, sin, keys, values, position)


def _rotary_launch(q, k, v, cos, sin, k_out, v_out, position):
    """rotary's one launch (the programs of the second column rotate k): k written to k_out, a (B x T, KH, D) matrix,
    or with `v` (one token a row) k and v written into the cache k_out and v_out (B, KH, slots, D) at `position`.
    Returns q rotated."""
    import torch

    rows, heads, tokens, dim = q.shape
    key_heads = k.shape[1]
    dtype = torch.promote_types(q.dtype, cos.dtype)
    q_in, k_in = (_rows_of(t.transpose(1, 2), rows * tokens) for t in (q, k))
    v_in = q_in if v is None else _rows_of(v.transpose(1, 2), rows)
    cos, sin = (t.expand(rows, tokens, dim).contiguous().view(rows * tokens, dim) for t in (cos, sin))
    q_out = torch.empty((rows * tokens, heads, dim), dtype=dtype, device=q.device)
    cache = v is not None
    if cache and k_out.dtype != dtype:
        raise ValueError(f"rotary_into_cache: a {k_out.dtype} cache for {dtype} keys.")
    # where a token's k heads go: (token, head, slot) strides of the cache (one token a row), or of k_out's rows
    k_strides = k_out.stride()[:3] if cache else (key_heads * dim, dim, 0)
    if rows * tokens:
        _rotary[(rows * tokens, 2)](q_in, k_in, v_in, cos, sin, q_out, k_out, v_out if cache else k_out,
                                     position if cache else q_out, q_in.stride(0), k_in.stride(0), v_in.stride(0),
                                     *k_strides, heads, key_heads, HALF=dim // 2,
                                     Q_HEADS=triton.next_power_of_2(heads), K_HEADS=triton.next_power_of_2(key_heads),
                                     CACHE=cache, num_warps=4, **EXACT)
    return q_out.view(rows, tokens, heads, dim).transpose(1, 2)


def _rows_of(x, rows: int):
    """x as a (rows, the rest) matrix whose columns are adjacent: a view where x's layout allows (a slice of a wider
    output, as the merged projections give), else a copy."""
    flat = x.reshape(rows, -1)
    return flat if flat.stride(-1) == 1 else flat.contiguous()


@triton.jit
def _rotary(q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, q_out_ptr, k_out_ptr, v_out_ptr, position_ptr, q_row, k_row, v_row,
            out_row, out_head, out_slot, q_heads, k_heads, HALF: tl.constexpr, Q_HEADS: tl.constexpr,
            K_HEADS: tl.constexpr, CACHE: tl.constexpr):
    """Program (token, 0) rotates the token's q heads; (token, 1) its k heads, with CACHE also copying its v heads,
    both written at the slot position_ptr holds."""
    token = tl.program_id(0).to(tl.int64)
    if tl.program_id(1) == 0:
        _rotate(q_ptr, cos_ptr, sin_ptr, q_out_ptr, token, q_row, token * q_heads * 2 * HALF, 2 * HALF, q_heads, HALF,
                Q_HEADS)
    else:
        at = token * out_row
        if CACHE:
            at += tl.load(position_ptr).to(tl.int64) * out_slot
        _rotate(k_ptr, cos_ptr, sin_ptr, k_out_ptr, token, k_row, at, out_head, k_heads, HALF, K_HEADS)
        if CACHE:
            head = tl.arange(0, K_HEADS)[:, None]
            col = tl.arange(0, 2 * HALF)[None, :]
            inside = head < k_heads
            value = tl.load(v_ptr + token * v_row + head * 2 * HALF + col, mask=inside, other=0.0)
            tl.store(v_out_ptr + at + head * out_head + col, value, mask=inside)


@triton.jit
def _rotate(x_ptr, cos_ptr, sin_ptr, out_ptr, token, x_row, out_at, out_head, heads, HALF: tl.constexpr,
            BLOCK_HEADS: tl.constexpr):
    """One token's heads of q or k, rotated, head h written from out_at + h x out_head."""
    head = tl.arange(0, BLOCK_HEADS)[:, None]
    col = tl.arange(0, HALF)[None, :]
    inside = head < heads
    at = head * 2 * HALF + col
    x1 = tl.load(x_ptr + token * x_row + at, mask=inside, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + token * x_row + at + HALF, mask=inside, other=0.0).to(tl.float32)
    trig = token * 2 * HALF + col
    c1, c2 = tl.load(cos_ptr + trig).to(tl.float32), tl.load(cos_ptr + trig + HALF).to(tl.float32)
    s1, s2 = tl.load(sin_ptr + trig).to(tl.float32), tl.load(sin_ptr + trig + HALF).to(tl.float32)
    dtype = out_ptr.dtype.element_ty
    # q * cos + cat(-x2, x1) * sin, with each product and the sum rounded to the output's dtype
    first = ((x1 * c1).to(dtype).to(tl.float32) + (-x2 * s1).to(dtype).to(tl.float32)).to(dtype)
    second = ((x2 * c2).to(dtype).to(tl.float32) + (x1 * s2).to(dtype).to(tl.float32)).to(dtype)
    out = out_at + head * out_head + col
    tl.store(out_ptr + out, first, mask=inside)
    tl.store(out_ptr + out + HALF, second, mask=inside)


def silu_mul(gate, up, block: int = 1024):
    """SiLU(gate) * up as Qwen2MLP computes it: the SiLU (x / (1 + exp(-x)) in float32) rounded to gate's dtype,
    then the product rounded. gate and up may be slices of one wider output (the merged projections')."""
    import torch

    shape = gate.shape
    width = shape[-1]
    rows = gate.numel() // max(width, 1)
    gate_rows, up_rows = _rows_of(gate, rows), _rows_of(up, rows)
    out = torch.empty(shape, dtype=torch.promote_types(gate.dtype, up.dtype), device=gate.device)
    if gate.numel():
        _silu_mul[(rows, triton.cdiv(width, block))](gate_rows, up_rows, out, gate_rows.stride(0), up_rows.stride(0),
                                                      width, BLOCK=block, ACCURATE=not INTERPRETED, num_warps=4,
                                                      **EXACT)
    return out


@triton.jit
def _silu_mul(gate_ptr, up_ptr, out_ptr, gate_row, up_row, width, BLOCK: tl.constexpr, ACCURATE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < width
    gate = tl.load(gate_ptr + row * gate_row + cols, mask=inside, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + row * up_row + cols, mask=inside, other=0.0).to(tl.float32)
    if ACCURATE:  # CUDA's expf, as torch's SiLU calls it
        exp = libdevice.exp(-gate)
    else:  # Triton's interpreter lacks libdevice
        exp = tl.exp(-gate)
    silu = tl.div_rn(gate, 1.0 + exp).to(gate_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * width + cols, (silu * up).to(out_ptr.dtype.element_ty), mask=inside)
