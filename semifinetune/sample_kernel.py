"""decode.sample_next's draw as three Triton kernels on a GPU: two reads of the logits instead of torch's eight or so
passes over float32 copies of the vocabulary.

What is drawn is decode.sample_next's distribution: each row's tempered distribution restricted to the tokens top_p
keeps (the tokens more likely than a kept one hold less than top_p), the argmax where temperature is 0. The draw is
the Gumbel-max form of multinomial sampling: the argmax of s + g over the vocabulary, s the tempered logits and g
Gumbel noise, is a draw from softmax(s); no softmax is computed for it. Each row makes DRAWS such draws from one
random number per token and keeps the first that top_p keeps, which needs the row's normalising sum and, per draw,
the probability of the tokens above it (a second read). A row whose draws top_p all cuts (at most (1 - top_p) ** 4
of the rows: the kept share of a row's mass is top_p or more) is reported pending; decode.sample_next then draws it
by torch's path. A kept draw is a draw from the restricted distribution, as there, so the rows follow the same
distribution; the noise differs, so the tokens are not torch's.

The kernels work in base 2 (s = logits / temperature x log2(e), exp2 and log2, the Gumbel noise -log2(-log2(u))):
the same argmax and the same ratios. The draw is bound by arithmetic, not by reading the logits, and log2 has a fast
form (libdevice.fast_log2f, one instruction): eight of them a token instead of natural logarithms took the kernel
from 2.01 to 1.15 ms at 822 rows on an H100.

The noise is Philox (tl.rand4x) keyed by a seed per step and counted by row * vocabulary + token: rows * vocabulary
must stay below 2 ** 31 (fits() says so).
"""

from __future__ import annotations

import math

import triton
import triton.language as tl
from triton.language.extra import libdevice

from .layer_kernels import INTERPRETED

DRAWS = 4  # tl.rand4x gives four numbers per token from one Philox call
BLOCK = 1024  # tokens a program reads at a time: 0.95 ms at 822 rows on an H100 against 1.15 at 2,048 (BENCHMARKS.md)
TARGET_PROGRAMS = 1024  # rows x splits of the vocabulary: enough programs to keep every multiprocessor busy
MAX_SPLITS = 64
SPLIT_BLOCK = 2048  # a split spans at least two of these


def fits(rows: int, vocab: int) -> bool:
    return rows * vocab < 2**31


def splits_for(rows: int, vocab: int) -> int:
    """Programs per row: a power of two, so that few rows still spread over the card."""
    splits = 1
    while splits < MAX_SPLITS and rows * splits < TARGET_PROGRAMS and vocab // (2 * splits) >= SPLIT_BLOCK:
        splits *= 2
    return splits


def draw(logits, temperature, top_p, seed: int, block: int = BLOCK):
    """(token per row (int64), pending (bool): rows whose DRAWS draws top_p all cut) for logits (B, V) on the GPU,
    temperature and top_p float32 (B,), `seed` an int below 2 ** 31 (one per step); `block` a power of two."""
    import torch

    rows, vocab = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    splits = splits_for(rows, vocab)
    span = -(-vocab // (splits * block)) * block
    inverse = (torch.where(temperature <= 0, 1.0, 1.0 / temperature) * math.log2(math.e)).float().contiguous()
    f32 = dict(dtype=torch.float32, device=logits.device)
    i32 = dict(dtype=torch.int32, device=logits.device)
    part_max, part_sum = torch.empty((rows, splits), **f32), torch.empty((rows, splits), **f32)
    part_arg = torch.empty((rows, splits), **i32)
    draw_key, draw_arg = torch.empty((rows, splits, DRAWS), **f32), torch.empty((rows, splits, DRAWS), **i32)
    mass = torch.empty((rows, splits, DRAWS), **f32)
    token = torch.empty(rows, dtype=torch.int64, device=logits.device)
    pending = torch.empty(rows, dtype=torch.int8, device=logits.device)
    _draw_partials[(rows, splits)](logits, logits.stride(0), inverse, seed, vocab, span, part_max, part_sum,
                                   part_arg, draw_key, draw_arg, SPLITS=splits, BLOCK=block, FAST=not INTERPRETED,
                                   num_warps=8)
    _mass_partials[(rows, splits)](logits, logits.stride(0), inverse, vocab, span, part_max, draw_key, draw_arg, mass,
                                   SPLITS=splits, BLOCK=block, num_warps=8)
    _choose[(rows,)](temperature, top_p.float().contiguous(), part_max, part_sum, part_arg, draw_key, draw_arg, mass,
                     token, pending, SPLITS=splits)
    return token, pending.bool()


@triton.jit
def _draw_partials(logits_ptr, row_stride, inverse_ptr, seed, vocab, span, max_ptr, sum_ptr, arg_ptr, key_ptr,
                   draw_ptr, SPLITS: tl.constexpr, BLOCK: tl.constexpr, FAST: tl.constexpr):
    """Per (row, split): the largest tempered logit, its first position, the sum of exp2(s - largest), and per draw
    the largest s + Gumbel noise and its position. Each lane keeps its own running values over the split and the
    lanes are reduced once at the end: a reduction across the program per block (six of them) cost more than the
    arithmetic."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    inverse = tl.load(inverse_ptr + row)
    begin = split * span
    end = tl.minimum(begin + span, vocab)
    lanes = tl.arange(0, BLOCK)
    none = tl.full([BLOCK], -float("inf"), tl.float32)
    first = tl.zeros([BLOCK], tl.int32)
    top, total, top_at = none, tl.zeros([BLOCK], tl.float32), first
    k0, k1, k2, k3 = none, none, none, none
    a0, a1, a2, a3 = first, first, first, first
    for offset in range(0, span, BLOCK):
        at = begin + offset + lanes
        s = tl.load(logits_ptr + row * row_stride + at, mask=at < end, other=-float("inf")).to(tl.float32) * inverse
        top_at = tl.where(s > top, at, top_at)  # strictly larger: a lane keeps its first position of a tie
        new_top = tl.maximum(top, s)
        shift = tl.where(new_top == -float("inf"), 0.0, new_top)  # a lane that has seen only -inf adds nothing
        total = total * tl.exp2(top - shift) + tl.exp2(s - shift)
        top = new_top
        u0, u1, u2, u3 = tl.rand4x(seed, row * vocab + at)
        key = s - _log2(-_log2(u0, FAST), FAST)
        a0 = tl.where(key > k0, at, a0)
        k0 = tl.maximum(k0, key)
        key = s - _log2(-_log2(u1, FAST), FAST)
        a1 = tl.where(key > k1, at, a1)
        k1 = tl.maximum(k1, key)
        key = s - _log2(-_log2(u2, FAST), FAST)
        a2 = tl.where(key > k2, at, a2)
        k2 = tl.maximum(k2, key)
        key = s - _log2(-_log2(u3, FAST), FAST)
        a3 = tl.where(key > k3, at, a3)
        k3 = tl.maximum(k3, key)
    part = row * SPLITS + split
    best = tl.max(top, 0)
    tl.store(max_ptr + part, best)
    tl.store(sum_ptr + part, tl.sum(total * tl.exp2(top - tl.where(best == -float("inf"), 0.0, best)), 0))
    tl.store(arg_ptr + part, _first_at(top, top_at, best, vocab))
    _store_draw(key_ptr, draw_ptr, part * 4 + 0, k0, a0, vocab)
    _store_draw(key_ptr, draw_ptr, part * 4 + 1, k1, a1, vocab)
    _store_draw(key_ptr, draw_ptr, part * 4 + 2, k2, a2, vocab)
    _store_draw(key_ptr, draw_ptr, part * 4 + 3, k3, a3, vocab)


@triton.jit
def _log2(x, FAST: tl.constexpr):
    if FAST:
        return libdevice.fast_log2f(x)  # lg2.approx: one instruction, relative error about 2 ** -22
    return tl.log2(x)


@triton.jit
def _store_draw(key_ptr, draw_ptr, at, keys, positions, vocab):
    key = tl.max(keys, 0)
    tl.store(key_ptr + at, key)
    tl.store(draw_ptr + at, _first_at(keys, positions, key, vocab))


@triton.jit
def _first_at(values, positions, largest, vocab):
    """The first position among the lanes holding `largest` (each lane's own first)."""
    return tl.min(tl.where(values == largest, positions, vocab), 0)


@triton.jit
def _drawn(logits_ptr, row_stride, row, inverse, key_ptr, draw_ptr, d: tl.constexpr, SPLITS: tl.constexpr):
    """The row's draw d over all splits: (position, its tempered logit)."""
    parts = tl.arange(0, SPLITS)
    keys = tl.load(key_ptr + (row * SPLITS + parts) * 4 + d)
    _, best = tl.max(keys, 0, return_indices=True)
    at = tl.load(draw_ptr + (row * SPLITS + best) * 4 + d)
    return at, tl.load(logits_ptr + row * row_stride + at).to(tl.float32) * inverse


@triton.jit
def _mass_partials(logits_ptr, row_stride, inverse_ptr, vocab, span, max_ptr, key_ptr, draw_ptr, mass_ptr,
                   SPLITS: tl.constexpr, BLOCK: tl.constexpr):
    """Per (row, split, draw): the sum of exp2(s - the row's largest s) over the tokens more likely than the draw;
    per lane, reduced once at the end."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    inverse = tl.load(inverse_ptr + row)
    top = tl.max(tl.load(max_ptr + row * SPLITS + tl.arange(0, SPLITS)), 0)
    _, s0 = _drawn(logits_ptr, row_stride, row, inverse, key_ptr, draw_ptr, 0, SPLITS)
    _, s1 = _drawn(logits_ptr, row_stride, row, inverse, key_ptr, draw_ptr, 1, SPLITS)
    _, s2 = _drawn(logits_ptr, row_stride, row, inverse, key_ptr, draw_ptr, 2, SPLITS)
    _, s3 = _drawn(logits_ptr, row_stride, row, inverse, key_ptr, draw_ptr, 3, SPLITS)
    begin = split * span
    end = tl.minimum(begin + span, vocab)
    lanes = tl.arange(0, BLOCK)
    m0 = tl.zeros([BLOCK], tl.float32)
    m1, m2, m3 = m0, m0, m0
    for offset in range(0, span, BLOCK):
        at = begin + offset + lanes
        s = tl.load(logits_ptr + row * row_stride + at, mask=at < end, other=-float("inf")).to(tl.float32) * inverse
        p = tl.exp2(s - top)
        m0 += tl.where(s > s0, p, 0.0)
        m1 += tl.where(s > s1, p, 0.0)
        m2 += tl.where(s > s2, p, 0.0)
        m3 += tl.where(s > s3, p, 0.0)
    part = row * SPLITS + split
    tl.store(mass_ptr + part * 4 + 0, tl.sum(m0, 0))
    tl.store(mass_ptr + part * 4 + 1, tl.sum(m1, 0))
    tl.store(mass_ptr + part * 4 + 2, tl.sum(m2, 0))
    tl.store(mass_ptr + part * 4 + 3, tl.sum(m3, 0))


@triton.jit
def _choose(temperature_ptr, top_p_ptr, max_ptr, sum_ptr, arg_ptr, key_ptr, draw_ptr, mass_ptr, token_ptr,
            pending_ptr, SPLITS: tl.constexpr):
    """Per row: the argmax (temperature 0), else the first draw top_p keeps; pending where it keeps none."""
    row = tl.program_id(0)
    parts = tl.arange(0, SPLITS)
    tops = tl.load(max_ptr + row * SPLITS + parts)
    top = tl.max(tops, 0)
    total = tl.sum(tl.load(sum_ptr + row * SPLITS + parts) * tl.exp2(tops - top), 0)
    # the first split holding the row's largest logit holds its first position (splits are in vocabulary order)
    first = tl.min(tl.where(tops == top, parts, SPLITS), 0)
    greedy_at = tl.load(arg_ptr + row * SPLITS + first)
    top_p = tl.load(top_p_ptr + row)
    keep_all = top_p >= 1.0
    chosen = 0
    found = 0
    for d in tl.static_range(4):
        keys = tl.load(key_ptr + (row * SPLITS + parts) * 4 + d)
        _, best = tl.max(keys, 0, return_indices=True)
        at = tl.load(draw_ptr + (row * SPLITS + best) * 4 + d)
        above = tl.sum(tl.load(mass_ptr + (row * SPLITS + parts) * 4 + d), 0) / total
        kept = keep_all | (above < top_p)
        chosen = tl.where(kept & (found == 0), at, chosen)
        found = tl.where(kept, 1, found)
    greedy = tl.load(temperature_ptr + row) <= 0.0
    tl.store(token_ptr + row, tl.where(greedy, greedy_at, chosen).to(tl.int64))
    tl.store(pending_ptr + row, tl.where(greedy | (found == 1), 0, 1).to(tl.int8))
