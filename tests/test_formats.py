"""The two text formats: prompt tokens carry no loss, EOS does, and the guide format ends with the real eos id."""

from __future__ import annotations

import dataclasses

import pytest

from semifinetune.data import format_and_tokenize
from semifinetune.formats import GUIDE_END_TOKEN, both_formats, guide_end_token_demo, loss_table, loss_text

EXAMPLE = {"input": "Which company makes NVIDIA's GPUs?", "output": "TSMC manufactures them; NVIDIA is fabless."}


@pytest.fixture(params=["tiny_tokenizer", "smol_tokenizer"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


def test_chat_format_puts_loss_on_the_answer_and_eos_only(tokenizer, tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, format="chat", loss_on="auto")
    row = format_and_tokenize(tokenizer, EXAMPLE, cfg)
    prompt_len = len(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])
    assert row["completion_mask"] == [0] * prompt_len + [1] * (len(row["input_ids"]) - prompt_len)
    assert row["input_ids"][-1] == tokenizer.eos_token_id and row["completion_mask"][-1] == 1
    assert EXAMPLE["input"] in tokenizer.decode(row["input_ids"][:prompt_len])
    trained = [t for t, keep in zip(row["input_ids"], row["completion_mask"]) if keep]
    assert tokenizer.decode(trained).strip().endswith(EXAMPLE["output"] + tokenizer.eos_token)


def test_guide_format_ends_with_the_real_eos_id_and_trains_on_everything(tokenizer, tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, format="guide", loss_on="auto")
    row = format_and_tokenize(tokenizer, EXAMPLE, cfg)
    assert row["input_ids"][-1] == tokenizer.eos_token_id
    assert GUIDE_END_TOKEN not in row["completion"]
    assert all(row["completion_mask"])  # the guide trains on the whole text
    masked = format_and_tokenize(tokenizer, EXAMPLE, dataclasses.replace(cfg, loss_on="completion"))
    assert masked["completion_mask"][0] == 0 and masked["completion_mask"][-1] == 1


def test_guide_end_string_splits_into_ordinary_pieces(tokenizer):
    demo = guide_end_token_demo(tokenizer)
    guide, eos = demo.loc["guide's end string"], demo.loc["tokenizer.eos_token"]
    assert guide["n_tokens"] > 1 and tokenizer.eos_token_id not in guide["ids"] and not guide["is_eos"]
    assert eos["ids"] == [tokenizer.eos_token_id] and eos["is_eos"]


def test_masking_display_marks_each_prompt_token(tiny_tokenizer, tiny_cfg):
    row = format_and_tokenize(tiny_tokenizer, EXAMPLE, tiny_cfg)
    n_masked = row["completion_mask"].count(0)
    text = loss_text(tiny_tokenizer, row)
    assert text.startswith("░" * n_masked) and text[n_masked] != "░"
    assert text.endswith(EXAMPLE["output"] + tiny_tokenizer.eos_token)
    table = loss_table(tiny_tokenizer, row)
    assert len(table) == len(row["input_ids"]) and int(table["loss"].sum()) == sum(row["completion_mask"])
    assert table["token"].iloc[-1] == tiny_tokenizer.eos_token


def test_both_formats_show_the_same_answer(tiny_tokenizer, tiny_cfg):
    text = both_formats(tiny_tokenizer, EXAMPLE, tiny_cfg)
    chat, guide = text.split("=== guide ===")
    assert chat.count(EXAMPLE["output"]) == 1 and guide.count(EXAMPLE["output"]) == 2  # the guide repeats it
    assert "Based on my analysis above" in guide and "<｜Assistant｜>" in chat
