"""R1 output parsing: `</think>` without the opening tag, unclosed blocks, and models without a reasoning block."""

from semifinetune.formats import chat_prompt, opens_think_block
from semifinetune.parsing import parse_output


def test_r1_output_with_closed_think_block():
    parsed = parse_output("TSMC is a foundry.\nIt was founded in 1987.\n</think>\n\nTSMC, founded in 1987.", True)
    assert parsed.reasoning == "TSMC is a foundry.\nIt was founded in 1987."
    assert parsed.answer == "TSMC, founded in 1987."
    assert parsed.think_closed is True


def test_r1_output_without_closing_tag_has_no_answer():
    parsed = parse_output("Let me think about TSMC and its founder", True)
    assert parsed.reasoning == "Let me think about TSMC and its founder"
    assert parsed.answer == ""  # the model never reached its answer: keywords in the reasoning do not count
    assert parsed.think_closed is False


def test_r1_empty_reasoning_and_repeated_opening_tag():
    assert parse_output("\n</think>\n\nHsinchu.", True).reasoning == ""
    parsed = parse_output("<think>\nhmm\n</think>\nHsinchu.", True)
    assert (parsed.reasoning, parsed.answer, parsed.think_closed) == ("hmm", "Hsinchu.", True)


def test_answer_stops_at_first_closing_tag_only():
    parsed = parse_output("a</think>b</think>c", True)
    assert (parsed.reasoning, parsed.answer) == ("a", "b</think>c")


def test_model_without_reasoning_block_reads_not_applicable():
    parsed = parse_output("  Hsinchu, Taiwan. </think>  ", False)
    assert parsed.reasoning is None
    assert parsed.think_closed is None
    assert parsed.answer == "Hsinchu, Taiwan. </think>"


def test_which_prompts_open_a_think_block(tiny_tokenizer, smol_tokenizer):
    assert opens_think_block(chat_prompt(tiny_tokenizer, "Who founded TSMC?"))  # R1 template
    assert not opens_think_block(chat_prompt(smol_tokenizer, "Who founded TSMC?"))  # SmolLM2: no reasoning block
