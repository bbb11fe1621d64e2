"""Streaming: the pieces an answer is shown in, joined, are the answer generate() returns, on both decoding paths."""

import pytest
import torch

from semifinetune.generate import SamplingSettings, eos_token_ids, generate
from semifinetune.streaming import answer_streamer

QUESTIONS = ["Who founded TSMC?", "What is EUV lithography used for in a modern semiconductor fab?"]
GREEDY = SamplingSettings(temperature=0.0, max_new_tokens=40)


def _streamed(model, tokenizer, question, settings, stop_ids=None):
    pieces = []
    streamer = answer_streamer(tokenizer, pieces.append, stop_ids or eos_token_ids(model, tokenizer))
    (row,) = generate(model, tokenizer, [question], settings, progress=False, streamer=streamer)
    return pieces, row


@pytest.mark.parametrize("question", QUESTIONS)
def test_streamed_pieces_join_to_the_greedy_answer(tiny, question):
    model, tokenizer = tiny
    (plain,) = generate(model, tokenizer, [question], GREEDY, progress=False)
    pieces, streamed = _streamed(model, tokenizer, question, GREEDY)
    assert [streamed.text, streamed.answer, streamed.new_tokens] == [plain.text, plain.answer, plain.new_tokens]
    assert len(pieces) > 1 and "".join(pieces) == plain.text  # token by token, not one piece at the end
    assert plain.new_tokens == 40 and plain.finish_reason == "length"


def test_the_end_of_sequence_token_ends_the_stream_and_is_not_shown(tiny, monkeypatch):
    """The random model never picks its eos: make its 6th greedy token the eos, as a trained model's would be."""
    import semifinetune.generate as generate_module
    from semifinetune.formats import chat_prompt

    model, tokenizer = tiny
    encoded = tokenizer([chat_prompt(tokenizer, QUESTIONS[0])], return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        ids = model.generate(**encoded, do_sample=False, max_new_tokens=40, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=sorted(eos_token_ids(model, tokenizer)))[0, encoded["input_ids"].shape[1] :].tolist()
    stop = ids[5]
    monkeypatch.setattr(generate_module, "eos_token_ids", lambda model, tokenizer: {stop})
    pieces, row = _streamed(model, tokenizer, QUESTIONS[0], GREEDY, {stop})
    assert row.finish_reason == "eos" and row.new_tokens == ids.index(stop) + 1
    assert "".join(pieces) == row.text == tokenizer.decode(ids[: ids.index(stop)], skip_special_tokens=False)


def test_the_static_decoding_loop_streams_what_it_returns(tiny):
    """The CUDA path's own loop (run eagerly here): the prompt first, each token up to eos, then end()."""
    from semifinetune.decode import static_decode
    from semifinetune.formats import chat_prompt

    model, tokenizer = tiny
    encoded = tokenizer([chat_prompt(tokenizer, QUESTIONS[1])], return_tensors="pt", add_special_tokens=False)
    eos = eos_token_ids(model, tokenizer)
    with torch.inference_mode():
        expected = static_decode(model, encoded["input_ids"], encoded["attention_mask"], [0.0], [1.0], 20, eos,
                                 tokenizer.pad_token_id, cuda_graph=False)[0].tolist()
        stop = expected[7]  # as above: a token the loop picks, made its end-of-sequence token
        pieces = []
        got = static_decode(model, encoded["input_ids"], encoded["attention_mask"], [0.0], [1.0], 20, {stop},
                            tokenizer.pad_token_id, cuda_graph=False,
                            streamer=answer_streamer(tokenizer, pieces.append, {stop}))[0].tolist()
    end = expected.index(stop)
    assert got[: end + 1] == expected[: end + 1] and set(got[end + 1 :]) == {tokenizer.pad_token_id}
    assert "".join(pieces) == tokenizer.decode(expected[:end], skip_special_tokens=False)


def test_a_streamer_takes_one_question(tiny):
    model, tokenizer = tiny
    streamer = answer_streamer(tokenizer, print, eos_token_ids(model, tokenizer))
    with pytest.raises(ValueError, match="one answer at a time: got 2 questions"):
        generate(model, tokenizer, QUESTIONS, GREEDY, progress=False, streamer=streamer)
