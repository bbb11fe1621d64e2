"""decode.sample_next's draw as Triton kernels on a GPU: two reads of the logits instead of torch's eight or so passes
over float32 copies of the vocabulary, and no wait for the GPU.

What is drawn is decode.sample_next's distribution: each row's tempered distribution restricted to the tokens top_p
keeps (the tokens more likely than a kept one hold less than top_p), the argmax where temperature is 0. Each row
makes DRAWS draws from its whole tempered distribution and keeps the first that top_p keeps; a kept draw is a draw
from the restricted distribution. A row whose draws top_p all cuts (at most (1 - top_p) ** 4 of the rows: the kept
share of a row's mass is top_p or more) is settled by _settle, which finds top_p's cut exactly and draws from the
tokens it keeps: slow for that row (about 33 reads of it), but rare, and it spares the host a check after every
step. The noise differs from torch's, so the tokens are not torch's; the distribution is the same.

A draw is the inverse of the cumulative distribution at one uniform number, with the tokens taken in an order that
costs nothing to sum: a program reads its split of the vocabulary in blocks of BLOCK tokens, and lane k keeps the
running sum of exp2(s) over the k-th token of every block (s = logits / temperature x log2(e): base 2, the same
ratios). So the vocabulary falls into splits, each split into lanes, each lane into one token per block, and
u x the row's sum is found split by split, lane by lane and token by token: three short prefix sums per draw. The
first read (_lane_sums) takes two exp2 a token (the running sum's rescaling and the token's) and no reduction
across the program until its end; a row's random numbers are four. The second read (_mass_partials) adds up, per
draw, the probability of the tokens more likely than it, which top_p's rule needs; rows that keep every token
(top_p 1, greedy) skip it. The Gumbel-max draw this replaces took a Philox number and eight logarithms a token
(BENCHMARKS.md).
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

DRAWS = 4  # tl.rand4x gives a row four numbers from one Philox call
BLOCK = 1024  # tokens a program reads at a time, and the lanes a split's sum is kept in
TARGET_PROGRAMS = 1024  # rows x splits of the vocabulary: enough programs to keep every multiprocessor busy
MAX_SPLITS = 64
SPLIT_BLOCK = 2048  # a split spans at least two of these
# Triton compiles a kernel again for an integer argument that is 1 or divisible by 16: each step's seed would compile
# the seeded kernels up to three times in a run, mid-decoding, the GPU waiting on each compile (BENCHMARKS.md)
SEEDED = {"do_not_specialize": ["seed"]}


def fits(rows: int, vocab: int) -> bool:
    """Every position row x vocabulary + token fits the kernels' int32 offsets."""
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
    temperature, top_p = temperature.float().contiguous(), top_p.float().contiguous()
    inverse = (torch.where(temperature <= 0, 1.0, 1.0 / temperature) * math.log2(math.e)).contiguous()
    f32 = dict(dtype=torch.float32, device=logits.device)
    i32 = dict(dtype=torch.int32, device=logits.device)
    lane_max, lane_sum = torch.empty((rows, splits, block), **f32), torch.empty((rows, splits, block), **f32)
    part_max, part_sum = torch.empty((rows, splits), **f32), torch.empty((rows, splits), **f32)
    part_arg = torch.empty((rows, splits), **i32)
    drawn, drawn_s = torch.empty((rows, DRAWS), **i32), torch.empty((rows, DRAWS), **f32)
    row_max, row_sum = torch.empty(rows, **f32), torch.empty(rows, **f32)
    mass = torch.empty((rows, splits, DRAWS), **f32)
    token = torch.empty(rows, dtype=torch.int64, device=logits.device)
    pending = torch.empty(rows, dtype=torch.int8, device=logits.device)
    stride = logits.stride(0)
    _lane_sums[(rows, splits)](logits, stride, inverse, vocab, span, lane_max, lane_sum, part_max, part_sum, part_arg,
                               SPLITS=splits, BLOCK=block, num_warps=8)
    _locate[(rows,)](logits, stride, inverse, seed, vocab, span, lane_max, lane_sum, part_max, part_sum, drawn,
                     drawn_s, row_max, row_sum, SPLITS=splits, BLOCK=block,
                     DEPTH=triton.next_power_of_2(span // block), num_warps=4)
    _mass_partials[(rows, splits)](logits, stride, inverse, temperature, top_p, vocab, span, row_max, drawn_s, mass,
                                   SPLITS=splits, BLOCK=block, num_warps=8)
    _choose[(rows,)](temperature, top_p, part_max, part_arg, drawn, row_sum, mass, token, pending, SPLITS=splits)
    _settle[(rows,)](logits, stride, inverse, top_p, seed, rows, vocab, row_max, row_sum, token, pending, BLOCK=block,
                     num_warps=8)
    return token, pending.bool()


@triton.jit
def _lane_sums(logits_ptr, row_stride, inverse_ptr, vocab, span, lane_max_ptr, lane_sum_ptr, max_ptr, sum_ptr,
               arg_ptr, SPLITS: tl.constexpr, BLOCK: tl.constexpr):
    """Per (row, split), lane by lane: the largest tempered logit s and the sum of exp2(s - largest) over the lane's
    tokens (one a block); then over the split: the largest s, its first position and the sum."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    inverse = tl.load(inverse_ptr + row)
    begin = split * span
    end = tl.minimum(begin + span, vocab)
    lanes = tl.arange(0, BLOCK)
    top = tl.full([BLOCK], -float("inf"), tl.float32)
    total = tl.zeros([BLOCK], tl.float32)
    top_at = tl.zeros([BLOCK], tl.int32)
    for offset in range(0, span, BLOCK):
        at = begin + offset + lanes
        s = tl.load(logits_ptr + row * row_stride + at, mask=at < end, other=-float("inf")).to(tl.float32) * inverse
        top_at = tl.where(s > top, at, top_at)  # strictly larger: a lane keeps its first position of a tie
        new_top = tl.maximum(top, s)
        shift = tl.where(new_top == -float("inf"), 0.0, new_top)  # a lane that has seen only -inf adds nothing
        total = total * tl.exp2(top - shift) + tl.exp2(s - shift)
        top = new_top
    part = row * SPLITS + split
    tl.store(lane_max_ptr + part * BLOCK + lanes, top)
    tl.store(lane_sum_ptr + part * BLOCK + lanes, total)
    best = tl.max(top, 0)
    tl.store(max_ptr + part, best)
    tl.store(sum_ptr + part, tl.sum(total * tl.exp2(top - tl.where(best == -float("inf"), 0.0, best)), 0))
    tl.store(arg_ptr + part, tl.min(tl.where(top == best, top_at, vocab), 0))


@triton.jit
def _weights(max_ptr, sum_ptr, at, top):
    """exp2(largest - top) x sum for the lanes or splits at `at`: their share of the row's sum (0 where empty)."""
    largest = tl.load(max_ptr + at)
    return tl.load(sum_ptr + at) * tl.exp2(tl.where(largest == -float("inf"), -float("inf"), largest - top))


@triton.jit
def _crossing(weights, target):
    """(index, what is left of target past the weights before it) of the first weight whose prefix sum passes
    target; the last nonzero weight where rounding leaves target at or past the whole sum."""
    index = tl.arange(0, weights.shape[0])
    prefix = tl.cumsum(weights, 0)
    last = tl.max(tl.where(weights > 0, index, 0), 0)
    at = tl.minimum(tl.sum((prefix <= target).to(tl.int32), 0), last)
    before = tl.sum(tl.where(index == at, prefix - weights, 0.0), 0)
    return at, target - before


@triton.jit(**SEEDED)
def _locate(logits_ptr, row_stride, inverse_ptr, seed, vocab, span, lane_max_ptr, lane_sum_ptr, max_ptr, sum_ptr,
            drawn_ptr, drawn_s_ptr, row_max_ptr, row_sum_ptr, SPLITS: tl.constexpr, BLOCK: tl.constexpr,
            DEPTH: tl.constexpr):
    """Per row: DRAWS draws (position and tempered logit), each u x the row's sum found split by split, lane by lane
    and block by block; the row's largest s and its sum."""
    row = tl.program_id(0)
    inverse = tl.load(inverse_ptr + row)
    parts = row * SPLITS + tl.arange(0, SPLITS)
    top = tl.max(tl.load(max_ptr + parts), 0)
    split_weights = _weights(max_ptr, sum_ptr, parts, top)
    total = tl.sum(split_weights, 0)
    tl.store(row_max_ptr + row, top)
    tl.store(row_sum_ptr + row, total)
    lanes = tl.arange(0, BLOCK)
    blocks = tl.arange(0, DEPTH)
    u0, u1, u2, u3 = tl.rand4x(seed, row)
    for d in tl.static_range(4):
        u = u0 if d == 0 else (u1 if d == 1 else (u2 if d == 2 else u3))
        split, left = _crossing(split_weights, u * total)
        lane, left = _crossing(_weights(lane_max_ptr, lane_sum_ptr, (row * SPLITS + split) * BLOCK + lanes, top), left)
        at = split * span + blocks * BLOCK + lane
        inside = (blocks * BLOCK < span) & (at < vocab)
        s = tl.load(logits_ptr + row * row_stride + at, mask=inside, other=-float("inf")).to(tl.float32) * inverse
        block, _ = _crossing(tl.exp2(s - top), left)
        tl.store(drawn_ptr + row * 4 + d, split * span + block * BLOCK + lane)
        tl.store(drawn_s_ptr + row * 4 + d, tl.sum(tl.where(blocks == block, s, 0.0), 0))


@triton.jit
def _mass_partials(logits_ptr, row_stride, inverse_ptr, temperature_ptr, top_p_ptr, vocab, span, row_max_ptr,
                   drawn_s_ptr, mass_ptr, SPLITS: tl.constexpr, BLOCK: tl.constexpr):
    """Per (row, split, draw): the sum of exp2(s - the row's largest s) over the tokens more likely than the draw;
    per lane, reduced once at the end. Rows that keep every draw (top_p 1, greedy) read nothing."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    inverse = tl.load(inverse_ptr + row)
    top = tl.load(row_max_ptr + row)
    s0 = tl.load(drawn_s_ptr + row * 4 + 0)
    s1 = tl.load(drawn_s_ptr + row * 4 + 1)
    s2 = tl.load(drawn_s_ptr + row * 4 + 2)
    s3 = tl.load(drawn_s_ptr + row * 4 + 3)
    keeps_all = (tl.load(top_p_ptr + row) >= 1.0) | (tl.load(temperature_ptr + row) <= 0.0)
    begin = split * span
    end = tl.minimum(begin + span, vocab)
    lanes = tl.arange(0, BLOCK)
    m0 = tl.zeros([BLOCK], tl.float32)
    m1, m2, m3 = m0, m0, m0
    for offset in range(0, tl.where(keeps_all, 0, span), BLOCK):
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
def _choose(temperature_ptr, top_p_ptr, max_ptr, arg_ptr, drawn_ptr, row_sum_ptr, mass_ptr, token_ptr, pending_ptr,
            SPLITS: tl.constexpr):
    """Per row: the argmax (temperature 0), else the first draw top_p keeps; pending where it keeps none."""
    row = tl.program_id(0)
    parts = tl.arange(0, SPLITS)
    tops = tl.load(max_ptr + row * SPLITS + parts)
    # the first split holding the row's largest logit holds its first position (splits are in vocabulary order)
    first = tl.min(tl.where(tops == tl.max(tops, 0), parts, SPLITS), 0)
    greedy_at = tl.load(arg_ptr + row * SPLITS + first)
    total = tl.load(row_sum_ptr + row)
    top_p = tl.load(top_p_ptr + row)
    keep_all = top_p >= 1.0
    chosen = 0
    found = 0
    for d in tl.static_range(4):
        at = tl.load(drawn_ptr + row * 4 + d)
        above = tl.sum(tl.load(mass_ptr + (row * SPLITS + parts) * 4 + d), 0) / total
        kept = keep_all | (above < top_p)
        chosen = tl.where(kept & (found == 0), at, chosen)
        found = tl.where(kept, 1, found)
    greedy = tl.load(temperature_ptr + row) <= 0.0
    tl.store(token_ptr + row, tl.where(greedy, greedy_at, chosen).to(tl.int64))
    tl.store(pending_ptr + row, tl.where(greedy | (found == 1), 0, 1).to(tl.int8))


@triton.jit(**SEEDED)
def _settle(logits_ptr, row_stride, inverse_ptr, top_p_ptr, seed, rows, vocab, row_max_ptr, row_sum_ptr, token_ptr,
            pending_ptr, BLOCK: tl.constexpr):
    """Per row whose draws top_p all cut (the others return at once): top_p's cut found exactly, then one draw from
    the tokens it keeps. With t = s - the row's largest s, a token is kept where the tokens above it hold less than
    top_p x the sum, so the kept ones are those at or above a threshold -y: y is the largest float for which the
    mass above -y stays below that, found by bisection on y's bits (31 reads of the row). The draw is then the
    inverse of the kept tokens' cumulative distribution in vocabulary order (two more reads)."""
    row = tl.program_id(0)
    settle = tl.load(pending_ptr + row) != 0
    inverse = tl.load(inverse_ptr + row)
    top = tl.load(row_max_ptr + row)
    target = tl.load(top_p_ptr + row) * tl.load(row_sum_ptr + row)
    lanes = tl.arange(0, BLOCK)
    base = logits_ptr + row * row_stride
    low = tl.full([], 0, tl.int32)  # y = 0: nothing lies above t = 0, so kept
    high = tl.full([], 0x7F800000, tl.int32)  # y = inf: everything lies above -inf, so not kept
    for _ in range(0, tl.where(settle, 31, 0)):
        middle = low + (high - low) // 2
        below = -(middle.to(tl.float32, bitcast=True))
        mass = tl.zeros([BLOCK], tl.float32)
        for offset in range(0, vocab, BLOCK):
            at = offset + lanes
            t = _tempered(base, at, vocab, inverse) - top
            mass += tl.where(t > below, tl.exp2(t), 0.0)
        kept = tl.sum(mass, 0) < target
        low = tl.where(kept, middle, low)
        high = tl.where(kept, high, middle)
    threshold = -(low.to(tl.float32, bitcast=True))
    kept_mass = tl.zeros([BLOCK], tl.float32)
    for offset in range(0, tl.where(settle, vocab, 0), BLOCK):
        at = offset + lanes
        t = _tempered(base, at, vocab, inverse) - top
        kept_mass += tl.where(t >= threshold, tl.exp2(t), 0.0)
    left = tl.rand(seed, rows + row) * tl.sum(kept_mass, 0)  # Philox counters past the draws' (one a row)
    chosen = tl.full([], -1, tl.int32)
    last = tl.full([], 0, tl.int32)
    for offset in range(0, tl.where(settle, vocab, 0), BLOCK):
        at = offset + lanes
        t = _tempered(base, at, vocab, inverse) - top
        p = tl.where(t >= threshold, tl.exp2(t), 0.0)
        prefix = tl.cumsum(p, 0)
        crossed = (prefix > left) & (p > 0)
        first = tl.min(tl.where(crossed, at, vocab), 0)
        chosen = tl.where((chosen < 0) & (first < vocab), first, chosen)
        last = tl.maximum(last, tl.max(tl.where(p > 0, at, 0), 0))
        left -= tl.sum(p, 0)
    if settle:
        tl.store(token_ptr + row, tl.where(chosen < 0, last, chosen).to(tl.int64))  # rounding past the end: the last


@triton.jit
def _tempered(row_ptr, at, vocab, inverse):
    """The row's tempered logits s at positions `at` (-inf past the vocabulary)."""
    return tl.load(row_ptr + at, mask=at < vocab, other=-float("inf")).to(tl.float32) * inverse
