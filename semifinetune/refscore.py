"""Scoring an answer against its reference answer, for questions without hand-written keyword groups.

Two measures, both shown beside the keyword verdict where keyword groups exist:
- **Key terms**: the reference answer's numbers, names and words rare in the data set, at most KEY_TERMS of them
  (the rarest first). The answer is correct when it holds at least half of them (rounded up): one of one, one of
  two, two of three; and, where the reference holds a number, one of its numbers. A term is found where a word of the answer starts with its first STEM letters (a short term
  must match whole, plurals folded), so "manufactures" finds "manufacturing", "ferry" finds "ferries", and
  "1987" does not find "19".
- **Token F1**: SQuAD's overlap of answer and reference words (lower case, punctuation and articles dropped), a
  standard score that needs no choice of terms; reported, not used for the verdict.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter

KEY_TERMS = 3
STEM = 6  # letters a word and a term must share from the start; shorter terms match whole words
RARE_SHARE = 0.05  # a plain word is a key term when at most this share of the answers (or 2 of them) use it
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers him
his how i if in into is it its itself just me more most my nor not now of off on once only or other our out over
own same she should so some such than that the their them then there these they this those through to too under
until up very was we were what when where which while who whom why will with would you your called known used
uses use one two many much well made make makes based including such like within without per via among
""".split())
# A number (1987, 60.9, 1,200, 45%) or a word; a word may hold digits (3G, H100, 7nm) and then counts as a name.
TOKEN = re.compile(r"\d+(?:[.,]\d+)*%?(?![^\W_])|\w[\w'-]*", re.UNICODE)
NUMBER = re.compile(r"\d+(?:[.,]\d+)*%?")


def _tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


def document_frequencies(texts: list[str]) -> Counter:
    """In how many of the texts each lower-cased word appears."""
    counts: Counter = Counter()
    for text in texts:
        counts.update({token.lower() for token in _tokens(text)})
    return counts


def _is_name(token: str, sentence_start: bool) -> bool:
    """An acronym (TSMC), a mixed-case word (iPhone), or a capitalised word not at the start of a sentence."""
    if len(token) > 1 and token.isupper():
        return True
    if any(c.isupper() for c in token[1:]):
        return True
    return token[:1].isupper() and not sentence_start


def key_terms(reference: str, frequencies: Counter, documents: int, question: str = "", limit: int = KEY_TERMS) -> list[str]:
    """The reference answer's key terms: numbers and names first, then rare words, the rarest first; words of the
    question are left out (an answer that repeats the question has not answered it)."""
    candidates: dict[str, tuple[int, float]] = {}
    sentence_start = True
    for token in _tokens(reference):
        lowered = token.lower()
        rarity = math.log((documents + 1) / (frequencies.get(lowered, 0) + 1))
        if lowered in STOPWORDS or (question and term_found(lowered, question)):
            pass
        elif NUMBER.fullmatch(token):
            candidates.setdefault(lowered, (0, -rarity))
        elif _is_name(token, sentence_start) or any(c.isdigit() for c in token):
            candidates.setdefault(lowered, (1, -rarity))
        elif len(token) >= 4 and frequencies.get(lowered, 0) <= max(2, RARE_SHARE * documents):
            candidates.setdefault(lowered, (2, -rarity))
        sentence_start = False
    ranked = sorted(candidates, key=lambda term: candidates[term])
    if not ranked:  # a reference of common words, or of the question's words only: its longest words stand for it
        ranked = sorted({t.lower() for t in _tokens(reference) if t.lower() not in STOPWORDS}, key=lambda t: (-len(t), t))
    return ranked[:limit]


def _singular(word: str) -> str:
    """English plurals folded ("ferries" -> "ferry", "ships" -> "ship"), so a term and its plural match."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def term_found(term: str, text: str) -> bool:
    """The term is in the text as a word (plurals folded), or as the start of a word where the term is long."""
    words, stems = _word_forms(text)
    if _singular(term) in words:
        return True
    if len(term) >= STEM and term.isalpha():  # a plain word; compounds ("chip-on-wafer") and codes match whole
        return term[:STEM] in stems
    return False


@functools.lru_cache(maxsize=64)
def _word_forms(text: str) -> tuple[frozenset, frozenset]:
    """The text's words (lower case, plurals folded) and the first STEM letters of those of STEM letters or more.
    Kept for the last texts: an answer is searched for each of its key terms, twice (recall and verdict)."""
    words = frozenset(map(_singular, {token.lower() for token in _tokens(text)}))
    return words, frozenset(word[:STEM] for word in words if len(word) >= STEM)


def key_term_recall(text: str, terms: list[str]) -> float:
    return sum(term_found(term, text) for term in terms) / len(terms) if terms else float("nan")


def key_terms_correct(text: str, terms: list[str]) -> bool:
    """At least half of the key terms, rounded up; where the reference holds numbers, one of them among those found
    (an answer of the right kind with the wrong figure, "$13 billion" for "$47.5 billion", is wrong)."""
    found = [term for term in terms if term_found(term, text)]
    numbers = [term for term in terms if NUMBER.fullmatch(term)]
    if numbers and not any(term in found for term in numbers):
        return False
    return bool(terms) and len(found) >= math.ceil(len(terms) / 2)


def _normal_words(text: str) -> list[str]:
    """SQuAD's normalisation: lower case, no punctuation, no articles."""
    return [w for w in re.findall(r"\w+", text.lower()) if w not in ("a", "an", "the")]


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1 between an answer and its reference (0 when either is empty)."""
    predicted, expected = _normal_words(prediction), _normal_words(reference)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def with_key_terms(rows: list[dict], corpus: list[str]) -> list[dict]:
    """Each row with "key_terms" from its reference answer, rarity counted over `corpus` (the data set's answers)."""
    frequencies = document_frequencies(corpus)
    return [{**row, "key_terms": key_terms(row["output"], frequencies, len(corpus), row["input"])} for row in rows]
