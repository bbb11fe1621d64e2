"""Split a model's output into reasoning and answer, knowing whether the prompt opened a think block."""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass
class ParsedOutput:
    reasoning: str | None  # None: the model has no reasoning block (not applicable)
    answer: str  # "" where the think block never closed: the model never reached its answer
    think_closed: bool | None  # None: not applicable


def parse_output(text: str, opens_think: bool) -> ParsedOutput:
    """R1 outputs hold `</think>` but not `<think>` (the prompt ends with it); other models give the answer only."""
    if not opens_think:
        return ParsedOutput(reasoning=None, answer=text.strip(), think_closed=None)
    reasoning, closed, answer = text.partition(THINK_CLOSE)
    reasoning = reasoning.strip().removeprefix(THINK_OPEN).strip()  # a repeated opening tag is not reasoning
    if not closed:
        return ParsedOutput(reasoning=reasoning, answer="", think_closed=False)
    return ParsedOutput(reasoning=reasoning, answer=answer.strip(), think_closed=True)
