"""Batched generation on the tiny model: order, left padding, finish reasons, token counts, seeds, OOM halving."""

import copy

import pytest
import torch

from semifinetune.generate import Generation, GenerationMemoryError, SamplingSettings, generate, sampling_kwargs

QUESTIONS = [
    "Who founded TSMC?",
    "Which contract manufacturer fabricates the GPUs that NVIDIA designs, and where is its head office?",
    "What is EUV lithography used for in a modern semiconductor fab?",
    "CUDA?",
]
GREEDY = SamplingSettings(temperature=0.0, max_new_tokens=8)


def test_one_generation_per_question_in_order(tiny):
    model, tokenizer = tiny
    out = generate(model, tokenizer, QUESTIONS, GREEDY, batch_size=3, progress=False)
    assert len(out) == 4 and all(isinstance(g, Generation) for g in out)
    for question, gen in zip(QUESTIONS, out):
        assert question in gen.prompt and gen.prompt.endswith("<think>\n")
        assert 1 <= gen.new_tokens <= 8
        assert gen.finish_reason in ("eos", "length")
        assert gen.think_closed in (True, False)  # R1 template: applicable
        assert gen.seconds > 0
    assert set(out[0].to_dict()) == {"prompt", "text", "reasoning", "answer", "think_closed", "new_tokens", "finish_reason", "seconds"}


def test_left_padding_gives_the_same_greedy_text_alone_and_in_a_batch(tiny):
    model, tokenizer = tiny
    batched = generate(model, tokenizer, QUESTIONS, GREEDY, batch_size=4, progress=False)
    alone = [generate(model, tokenizer, [q], GREEDY, progress=False)[0] for q in QUESTIONS]
    assert [g.text for g in batched] == [g.text for g in alone]
    assert [g.new_tokens for g in batched] == [g.new_tokens for g in alone]


def test_caller_state_is_restored(tiny):
    model, tokenizer = tiny
    side = tokenizer.padding_side
    model.train()
    try:
        generate(model, tokenizer, QUESTIONS[:1], GREEDY, progress=False)
        assert model.training and tokenizer.padding_side == side
    finally:
        model.eval()


def test_same_seed_same_samples_other_seed_other_samples(tiny):
    model, tokenizer = tiny
    hot = SamplingSettings(temperature=1.0, top_p=1.0, max_new_tokens=12)
    first = [g.text for g in generate(model, tokenizer, QUESTIONS, hot, seed=1, progress=False)]
    again = [g.text for g in generate(model, tokenizer, QUESTIONS, hot, seed=1, progress=False)]
    other = [g.text for g in generate(model, tokenizer, QUESTIONS, hot, seed=2, progress=False)]
    assert first == again
    assert first != other


def _biased(tiny_cfg, token_id: int):
    """A tiny model whose every next token is `token_id` (output bias +100 on it)."""
    from semifinetune.models import load_model

    model, tokenizer = load_model(tiny_cfg)
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[token_id] = 100.0
    model.lm_head = head
    return model, tokenizer


def test_eos_finish_counts_the_eos_token_only(tiny_cfg, tiny_tokenizer):
    model, tokenizer = _biased(tiny_cfg, tiny_tokenizer.eos_token_id)
    out = generate(model, tokenizer, QUESTIONS, SamplingSettings(temperature=0.7, max_new_tokens=6), progress=False)
    for gen in out:
        assert (gen.finish_reason, gen.new_tokens, gen.text, gen.answer, gen.think_closed) == ("eos", 1, "", "", False)


def test_length_finish_counts_no_padding(tiny_cfg, tiny_tokenizer):
    token = tiny_tokenizer.convert_tokens_to_ids("</think>")
    model, tokenizer = _biased(tiny_cfg, token)
    out = generate(model, tokenizer, QUESTIONS, SamplingSettings(temperature=0.0, max_new_tokens=5), progress=False)
    for gen in out:  # prompts of different lengths: the shorter ones were padded, padding is not counted
        assert (gen.finish_reason, gen.new_tokens) == ("length", 5)
        assert gen.text == "</think>" * 5
        assert (gen.reasoning, gen.answer, gen.think_closed) == ("", "</think></think></think></think>", True)


def test_out_of_memory_halves_the_batch(tiny, monkeypatch, capsys):
    model, tokenizer = tiny
    expected = [g.text for g in generate(model, tokenizer, QUESTIONS, GREEDY, batch_size=1, progress=False)]
    real = model.generate
    sizes = []

    def small_memory(**kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(**kwargs)

    monkeypatch.setattr(model, "generate", small_memory)
    out = generate(model, tokenizer, QUESTIONS, GREEDY, batch_size=4, progress=False)
    assert [g.text for g in out] == expected
    assert sizes == [4, 2, 1, 1, 1, 1]
    printed = capsys.readouterr().out
    assert "retrying with batch size 2" in printed and "retrying with batch size 1" in printed


def test_out_of_memory_at_batch_one_says_what_to_lower(tiny, monkeypatch):
    model, tokenizer = tiny

    def no_memory(**kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(model, "generate", no_memory)
    with pytest.raises(GenerationMemoryError, match="max_new_tokens=8"):
        generate(model, tokenizer, QUESTIONS[:1], GREEDY, progress=False)


def test_sampling_arguments():
    assert sampling_kwargs(SamplingSettings(temperature=0.0, max_new_tokens=7)) == {
        "max_new_tokens": 7, "use_cache": True, "do_sample": False,
    }
    sampled = sampling_kwargs(SamplingSettings(temperature=0.6, top_p=0.95, repetition_penalty=1.1))
    assert sampled["do_sample"] and sampled["temperature"] == 0.6 and sampled["top_p"] == 0.95
    assert sampled["top_k"] == 0  # no hidden top-50 cut on top of top_p
    assert sampled["repetition_penalty"] == 1.1


def test_a_group_splits_into_even_batches():
    from semifinetune.generate import _even_batch

    assert [_even_batch(n, 1024) for n in (3285, 2463, 1642, 821)] == [822, 821, 821, 821]
    assert _even_batch(10, 16) == 10 and _even_batch(17, 16) == 9


@pytest.mark.parametrize("name", ["tiny_tokenizer", "smol_tokenizer"])
def test_answers_decode_in_one_call_as_decode_gives_each(name, request):
    """The whole batch's ids decoded at once give decode()'s texts, special tokens and partial characters included;
    a tokenizer that cleans up spaces after decoding is decoded one answer at a time, as decode() does."""
    from semifinetune.generate import _first_stops, decoded_texts

    tokenizer = request.getfixturevalue(name)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tokenizer), (24, 40), generator=generator)
    ids[3, 7] = ids[5, 0] = tokenizer.eos_token_id
    id_lists = ids.tolist() + [[], [tokenizer.convert_tokens_to_ids("</think>")]]
    assert decoded_texts(tokenizer, id_lists) == [tokenizer.decode(i, skip_special_tokens=False) for i in id_lists]
    stops = _first_stops(ids, {tokenizer.eos_token_id})
    assert (stops[3], stops[5], stops[0]) == (7, 0, None)
    cleaning = copy.deepcopy(tokenizer)
    cleaning.clean_up_tokenization_spaces = True
    calls = []
    cleaning.decode = lambda ids, **kwargs: calls.append(ids) or "x"
    assert decoded_texts(cleaning, id_lists[:2]) == ["x", "x"] and calls == id_lists[:2]
