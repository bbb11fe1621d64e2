"""The Triton draw (sample_kernel) against torch, run by Triton's interpreter on the CPU (the GPU suite runs it
compiled, on 50,000 draws)."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":  # conftest.py turns it on where there is no CUDA GPU
    pytest.skip("the GPU suite runs the Triton draw compiled (tests/gpu)", allow_module_level=True)
pytest.importorskip("triton")

from semifinetune import decode, sample_kernel  # noqa: E402


SETTINGS = (torch.tensor([0.0, 0.6, 1.0, 0.3, 0.0, 1.5, 0.7, 1.0]), torch.tensor([1.0, 0.95, 1.0, 0.9, 0.5, 0.8, 0.02, 0.3]))


def test_the_draw_is_the_argmax_at_temperature_0_and_never_a_token_top_p_cuts():
    """5,000 tokens (two pieces a row): greedy rows take the first of tied largest logits, even across pieces; a
    sampled token is always one the sorted top_p cut keeps; the same seed draws the same, another seed not."""
    temperature, top_p = SETTINGS
    generator = torch.Generator().manual_seed(0)
    assert sample_kernel.splits_for(len(temperature), 5000) == 2
    for spread in (4.0, 0.3):  # peaked rows and flat ones; float32, so that no tie sits at top_p's cut
        logits = torch.randn(8, 5000, generator=generator) * spread
        logits[0, [10, 4000]] = logits[0].max() + 1  # a tie: the first position wins, as torch.argmax's
        scores = logits / torch.where(temperature <= 0, 1.0, temperature).unsqueeze(1)
        removed = decode._top_p_removed_by_sorting(scores, top_p)
        tokens, pending = sample_kernel.draw(logits, temperature, top_p, seed=11)
        kept = ~pending
        assert not removed[kept].gather(1, tokens[kept].unsqueeze(1)).any()
        greedy = temperature <= 0
        assert torch.equal(tokens[greedy], logits[greedy].argmax(dim=-1)) and tokens[0] == 10
        assert not pending[greedy].any()
        assert torch.equal(sample_kernel.draw(logits, temperature, top_p, seed=11)[0], tokens)
    assert not torch.equal(sample_kernel.draw(logits, temperature, top_p, seed=12)[0][~greedy], tokens[~greedy])


def test_each_token_is_drawn_as_often_as_its_warped_probability():
    """40 tokens, 4 settings x 200 rows (the interpreter runs a program in about 10 ms; the GPU suite draws 50,000):
    the draws' frequencies are the warped distribution's within four standard errors, the rows whose four draws
    top_p all cut (settled by the exact cut) included; where top_p keeps one token of a nearly flat row, most rows
    are settled so, and take that token."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 40, generator=generator) * 2
    temperature, top_p = torch.tensor([0.3, 0.7, 1.0, 1.0]), torch.tensor([0.9, 0.6, 1.0, 0.5])
    draws = 200
    tokens, pending = sample_kernel.draw(logits.repeat_interleave(draws, 0), temperature.repeat_interleave(draws),
                                         top_p.repeat_interleave(draws), seed=5, block=64)
    scores = logits / temperature.unsqueeze(1)
    expected = scores.masked_fill(decode._top_p_removed_by_sorting(scores, top_p), float("-inf")).softmax(-1)
    for row in range(4):
        counts = torch.bincount(tokens.view(4, draws)[row], minlength=40).float()
        frequencies = counts / counts.sum()
        assert not frequencies[expected[row] == 0].any()
        error = 4 * (expected[row] * (1 - expected[row]) / counts.sum()).sqrt() + 1e-3
        assert ((frequencies - expected[row]).abs() <= error).all(), row
    assert pending.any() and not pending.view(4, draws)[2].any()  # top_p 1 keeps every draw

    flat = torch.zeros(16, 40)
    flat[:, 0] = 0.1  # top_p 0.01 keeps this token alone (tokens tied with a kept one would all stay)
    tokens, pending = sample_kernel.draw(flat, torch.ones(16), torch.full((16,), 0.01), seed=1, block=64)
    assert pending.float().mean() > 0.5 and (tokens == 0).all()  # (39/40)^4 of the rows draw four other tokens


def test_rows_whose_draws_top_p_all_cuts_are_settled_by_the_exact_cut():
    """Nearly flat rows where top_p 0.01 keeps about 1% of the tokens: most rows' four draws are cut, and the kernel
    finds the cut itself, so sample_next gives every row a token top_p keeps without waiting for the GPU."""
    temperature = SETTINGS[0]
    top_p = torch.full((8,), 0.01)
    logits = torch.randn(8, 5000, generator=torch.Generator().manual_seed(1)) * 0.1  # float32: no ties at the cut
    assert sample_kernel.draw(logits, temperature, top_p, seed=2)[1].float().mean() > 0.5
    tokens = decode.sample_next(logits, temperature, top_p, seed=2)
    scores = logits / torch.where(temperature <= 0, 1.0, temperature).unsqueeze(1)
    assert not decode._top_p_removed_by_sorting(scores, top_p).gather(1, tokens.unsqueeze(1)).any()


def test_few_rows_over_many_splits_draw_though_the_last_splits_lie_past_the_vocabulary():
    """2 rows x 20,000 tokens spread over 8 splits of 4,096 tokens: the last three hold no token. Such a split adds
    nothing (it once made each row's sum NaN, which left every sampled row pending)."""
    assert sample_kernel.splits_for(2, 20_000) == 8
    logits = torch.randn(2, 20_000, generator=torch.Generator().manual_seed(4)) * 3
    temperature, top_p = torch.tensor([0.0, 0.6]), torch.tensor([1.0, 0.95])
    tokens, pending = sample_kernel.draw(logits, temperature, top_p, seed=9, block=2048)
    assert not pending.any() and tokens[0] == logits[0].argmax()
    removed = decode._top_p_removed_by_sorting(logits[1:] / 0.6, top_p[1:])
    assert not removed[0, tokens[1]]


def test_draws_found_split_by_split_lane_by_lane_and_block_by_block_follow_the_distribution():
    """4,096 tokens in 2 splits of 8 blocks of 256 lanes, the probability on 8 tokens (the rest 0): two lanes of the
    first split and one of the second hold two or more of them, in different blocks. Each is drawn as often as its
    warped probability (a search that missed a level would never draw some of them), and no token of probability
    0 is drawn."""
    generator = torch.Generator().manual_seed(6)
    vocab, draws = 4096, 250
    where = torch.tensor([3, 3 + 512, 3 + 1792, 200, 200 + 1024, 2048 + 128 + 256, 2048 + 128 + 1792, 2048 + 5])
    logits = torch.full((2, vocab), -1e4)
    logits[:, where] = torch.randn(2, len(where), generator=generator) * 0.3
    temperature, top_p = torch.tensor([1.0, 0.7]), torch.tensor([1.0, 0.8])
    assert sample_kernel.splits_for(2 * draws, vocab) == 2
    tokens, pending = sample_kernel.draw(logits.repeat_interleave(draws, 0), temperature.repeat_interleave(draws),
                                         top_p.repeat_interleave(draws), seed=7, block=256)
    scores = logits / temperature.unsqueeze(1)
    expected = scores.masked_fill(decode._top_p_removed_by_sorting(scores, top_p), float("-inf")).softmax(-1)
    kept = ~pending.view(2, draws)
    for row in range(2):
        counts = torch.bincount(tokens.view(2, draws)[row][kept[row]], minlength=vocab).float()
        frequencies = counts / counts.sum()
        assert not frequencies[expected[row] == 0].any()
        error = 4 * (expected[row] * (1 - expected[row]) / counts.sum()).sqrt() + 1e-3
        assert ((frequencies - expected[row]).abs() <= error).all(), row
