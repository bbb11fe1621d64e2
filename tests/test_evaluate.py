"""Metrics on hand-written strings with hand-checked values, aggregation, and base vs tuned on the tiny model."""

import math

import pandas as pd
import pytest

from semifinetune.evaluate import (
    answer_metrics,
    answer_or_why,
    compare_base_tuned,
    distinct_2,
    evaluate_model,
    evaluation_summary,
    keyword_hits,
    keyword_recall,
    read_eval_rows,
    repeated_4gram_share,
    summarize,
    think_closed_rate,
    words,
)
from semifinetune.generate import Generation, SamplingSettings
from semifinetune.pipeline import open_run

GROUPS = [["TSMC", "Taiwan Semiconductor"], ["1987"], ["Hsinchu"]]


def gen(answer: str, text: str | None = None, reasoning: str | None = None, think_closed=None, finish="eos", tokens=10, seconds=1.0):
    return Generation("p", text if text is not None else answer, reasoning, answer, think_closed, tokens, finish, seconds)


def test_words_are_lowercased_runs_of_letters_and_digits():
    assert words("Hsinchu, Taiwan's FAB-1!") == ["hsinchu", "taiwan", "s", "fab", "1"]


def test_keyword_groups_need_one_alternative_each_case_insensitive():
    answer = "taiwan semiconductor was founded in 1987 by Morris Chang."
    assert keyword_hits(answer, GROUPS) == 2
    assert keyword_recall(answer, GROUPS) == pytest.approx(2 / 3)
    assert keyword_recall("TSMC, 1987, HSINCHU", GROUPS) == 1.0
    assert keyword_recall("", GROUPS) == 0.0


def test_repeated_4grams_and_distinct_2():
    # 4-grams: abcd bcda cdab dabc abcd -> 1 of 5 repeats an earlier one; bigrams: 7, distinct 4
    assert repeated_4gram_share("a b c d a b c d") == pytest.approx(1 / 5)
    assert distinct_2("a b c d a b c d") == pytest.approx(4 / 7)
    # "x" six times: 3 4-grams, all the same -> 2/3 repeat; 5 bigrams, 1 distinct
    assert repeated_4gram_share("x x x x x x") == pytest.approx(2 / 3)
    assert distinct_2("x x x x x x") == pytest.approx(1 / 5)
    assert repeated_4gram_share("the cat sat on the mat") == 0.0
    assert distinct_2("the cat sat on the mat") == 1.0
    assert repeated_4gram_share("too short") == 0.0 and distinct_2("one") == 1.0


ROW = {"input": "Tell me about TSMC.", "output": "TSMC was founded in 1987 in Hsinchu.", "keywords": GROUPS,
       "key_terms": ["hsinchu", "taiwan"]}


def test_answer_metrics_score_the_answer_not_the_reasoning():
    g = gen("It is in Hsinchu.", text="TSMC 1987 hmm\n</think>\n\nIt is in Hsinchu.", reasoning="TSMC 1987 hmm", think_closed=True)
    m = answer_metrics(g, ROW)
    assert (m["keyword_hits"], m["keyword_groups"], m["correct"], m["eos_stop"], m["answer_words"]) == (1, 3, False, True, 4)
    assert m["recall"] == pytest.approx(1 / 3) and m["scored_on"] == "answer"
    whole = answer_metrics(gen("TSMC in Hsinchu since 1987", finish="length"), ROW)  # no think block (SmolLM2)
    assert whole["correct"] is True and whole["scored_on"] == "whole output"
    assert answer_metrics(gen("x", finish="length"), ROW)["eos_stop"] is False


def test_without_keywords_the_key_terms_decide_and_token_f1_is_shown_either_way():
    g = gen("It is in Hsinchu.", text="It is in Hsinchu.")
    with_keywords = answer_metrics(g, ROW)
    assert (with_keywords["verdict_by"], with_keywords["correct"], with_keywords["key_terms_correct"]) == ("keywords", False, True)
    plain = answer_metrics(g, {key: ROW[key] for key in ("input", "output", "key_terms")})
    assert (plain["verdict_by"], plain["correct"], plain["recall"], plain["keyword_groups"]) == ("key terms", True, 0.5, 0)
    # SQuAD F1 of "it is in hsinchu" against "tsmc was founded in 1987 in hsinchu": 2 common words, P 2/4, R 2/7
    assert plain["token_f1"] == pytest.approx(round(2 * (2 / 4) * (2 / 7) / (2 / 4 + 2 / 7), 4))


def test_reasoning_cut_at_max_new_tokens_is_scored_on_the_reasoning():
    """R1's base model often runs out of tokens mid-reasoning: no answer, yet not a 0 for that alone."""
    cut = gen("", text="TSMC was founded in 1987 in Hsinchu, so", reasoning="TSMC was founded in 1987 in Hsinchu, so",
              think_closed=False, finish="length")
    m = answer_metrics(cut, ROW)
    assert (m["scored_on"], m["keyword_hits"], m["correct"], m["answer_words"], m["eos_stop"]) == (
        "unfinished reasoning", 3, True, 0, False)
    half = gen("", text="Maybe TSMC", reasoning="Maybe TSMC", think_closed=False, finish="length")
    assert answer_metrics(half, ROW)["recall"] == pytest.approx(1 / 3)
    assert answer_metrics(gen("", reasoning=None, think_closed=False), ROW)["recall"] == 0.0  # nothing at all


def test_an_empty_answer_says_why():
    assert answer_or_why("", "unfinished reasoning", 512) == "(reasoning did not finish in max_new_tokens=512)"
    assert answer_or_why(math.nan, "unfinished reasoning", 16.0) == "(reasoning did not finish in max_new_tokens=16)"  # CSV
    assert len(answer_or_why("", "unfinished reasoning", 32768)) <= 50  # pandas shows 50 characters of a cell
    assert answer_or_why("", "answer", 512) == "(empty: nothing after </think>)"
    assert answer_or_why("", "whole output", 512) == "(no output)"
    assert answer_or_why("Hsinchu.", "answer", 512) == "Hsinchu."


def _table(think_closed):
    rows = [gen("TSMC 1987 Hsinchu", think_closed=think_closed[0], tokens=30, seconds=2.0),
            gen("no idea", think_closed=think_closed[1], finish="length", tokens=10, seconds=2.0)]
    from semifinetune.evaluate import score_generations

    return score_generations(rows, [{"input": "q1", "keywords": GROUPS}, {"input": "q2", "keywords": [["CUDA"]]}]).assign(model="m")


def test_summary_of_a_hand_made_table():
    row = summarize(_table([True, False]), ["model"]).iloc[0]
    assert row["answers"] == 2
    assert row["recall"] == 0.5 and row["correct_rate"] == 0.5 and row["eos_rate"] == 0.5
    assert row["think_closed_rate"] == 0.5 and row["scored_on_reasoning"] == 0.5  # the second never closed
    assert row["tokens_per_s"] == pytest.approx(40 / 4.0)  # all tokens over all seconds, not a mean of ratios
    assert row["answer_words"] == 2.5  # 3 and 2 words


def test_summary_figures_are_rounded_as_shown():
    rows = [gen("TSMC", tokens=7, seconds=3.0), gen("TSMC 1987", tokens=8, seconds=3.0), gen("no", tokens=9, seconds=3.0)]
    from semifinetune.evaluate import score_generations

    table = score_generations(rows, [{"input": f"q{i}", "keywords": GROUPS} for i in range(3)]).assign(model="m")
    row = summarize(table, ["model"]).iloc[0]
    assert (row["recall"], row["correct_rate"], row["answer_words"], row["tokens_per_s"]) == (0.333, 0.0, 1.3, 2.7)


def test_think_metrics_read_not_applicable_without_reasoning_block():
    assert summarize(_table([None, None]), ["model"]).iloc[0]["think_closed_rate"] == "n/a"
    assert summarize(_table([None, None]), ["model"]).iloc[0]["scored_on_reasoning"] == "n/a"
    assert think_closed_rate([None, True, False, True]) == pytest.approx(2 / 3)  # unknowns left out, not counted as 0
    assert think_closed_rate(pd.Series([math.nan, math.nan])) == "n/a"  # as read back from a CSV


def test_embedded_model_has_no_think_metrics(cpu_cfg):
    from semifinetune.models import load_model

    model, tokenizer = load_model(cpu_cfg)
    rows = [{"input": "Who founded TSMC?", "keywords": [["Morris Chang", "Chang"]]}]
    table = evaluate_model(model, tokenizer, rows, SamplingSettings(temperature=0.0, max_new_tokens=4), progress=False)
    assert table.loc[0, "reasoning"] is None and table.loc[0, "think_closed"] is None
    assert summarize(table.assign(model="base"), ["model"]).iloc[0]["think_closed_rate"] == "n/a"


def test_evaluate_model_gives_one_row_per_question(tiny, tiny_cfg):
    model, tokenizer = tiny
    rows = read_eval_rows(tiny_cfg, limit=5)
    table = evaluate_model(model, tokenizer, rows, SamplingSettings(temperature=0.0, max_new_tokens=6), progress=False)
    assert len(table) == 5
    assert list(table["question"]) == [r["input"] for r in rows]
    assert set(table["finish_reason"]) <= {"eos", "length"}
    assert table["recall"].between(0, 1).all()


def test_compare_base_tuned_writes_both_models_on_every_question(tiny_run, tiny_cfg):
    result = compare_base_tuned(tiny_run, SamplingSettings(temperature=0.0, max_new_tokens=8), progress=False)
    questions = len(read_eval_rows(open_run(tiny_run)))
    assert result["questions"] == questions == 6  # the fixture's eval file
    table = pd.read_csv(tiny_run / "evaluation.csv")
    assert list(table["model"].value_counts().sort_index()) == [questions, questions]
    base, tuned = table[table["model"] == "base"], table[table["model"] == "tuned"]
    assert list(base["question"]) == list(tuned["question"])
    assert (base["text"].fillna("").to_numpy() != tuned["text"].fillna("").to_numpy()).any()  # the adapter changes answers
    summary = evaluation_summary(tiny_run)
    assert list(summary.index) == ["base", "tuned"]
    assert summary.loc["base", "correct_rate"] * questions == pytest.approx(result["base_correct"])
    assert isinstance(summary.loc["tuned", "think_closed_rate"], float)  # R1 template: applicable
    unfinished = table["think_closed"].astype(str).str.lower() == "false"
    assert unfinished.any()  # 8 new tokens: the random model never closes its think block
    assert set(table.loc[unfinished, "scored_on"]) == {"unfinished reasoning"}
    assert summary.loc["base", "scored_on_reasoning"] == round(unfinished[table["model"] == "base"].mean(), 3)


def test_missing_adapter_says_to_train_first(tmp_path):
    from semifinetune.config import ConfigError
    from semifinetune.pipeline import setup

    setup(tmp_path, "tiny")
    with pytest.raises(ConfigError, match="notebook 05_train"):
        compare_base_tuned(tmp_path)
