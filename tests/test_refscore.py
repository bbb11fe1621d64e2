"""Scoring against a reference answer: key terms, their matching, token F1."""

import pytest

from semifinetune.refscore import document_frequencies, key_terms, key_terms_correct, term_found, token_f1, with_key_terms

CORPUS = [
    "TSMC, the world's largest dedicated foundry.",
    "He founded TSMC in 1987.",
    "Hsinchu, Taiwan, home of TSMC.",
    "NVIDIA is fabless; TSMC manufactures its chips.",
    "ASML makes the EUV lithography machines.",
]


def test_key_terms_are_numbers_names_then_rare_words_without_the_questions_words():
    freq = document_frequencies(CORPUS)
    assert key_terms("He founded TSMC in 1987.", freq, len(CORPUS), "In what year did Morris Chang start his company?") == ["1987", "tsmc", "founded"]
    assert key_terms("He founded TSMC in 1987.", freq, len(CORPUS), "When was TSMC founded?") == ["1987"]
    # every word common or in the question: the longest words stand for the answer
    assert key_terms("Yes, it is.", freq, len(CORPUS), "") == ["yes"]


def test_matching_folds_plurals_and_long_stems_but_not_numbers():
    assert term_found("ferry", "Two ferries leave daily") and term_found("manufacturing", "it manufactures chips")
    assert not term_found("1987", "in 19 87") and not term_found("1987", "19870 units")
    assert not term_found("fab", "fabless")  # short terms match whole words only
    assert not term_found("chip-on-wafer-on-substrate", "a chip-on-chip package")  # compounds match whole
    assert key_terms_correct("TSMC did.", ["tsmc", "hsinchu"]) and not key_terms_correct("TSMC did.", ["tsmc", "taiwan", "hsinchu"])
    # a reference with a number needs one of its numbers: the right kind of answer with the wrong figure is wrong
    assert key_terms_correct("In 1987.", ["tsmc", "1987"]) and not key_terms_correct("TSMC did.", ["tsmc", "1987"])
    assert not key_terms_correct("About $13 billion.", ["47.5", "billion"])
    assert not key_terms_correct("anything", [])


def test_token_f1_is_squads():
    assert token_f1("The TSMC", "tsmc") == 1.0  # articles and case dropped
    assert token_f1("TSMC in Hsinchu", "Hsinchu") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert token_f1("", "x") == 0.0 and token_f1("a", "b") == 0.0


def test_rows_get_key_terms_from_their_reference():
    rows = with_key_terms([{"input": "Who makes EUV machines?", "output": "ASML makes the EUV lithography machines."}], CORPUS)
    assert rows[0]["key_terms"] == ["asml", "lithography"]
