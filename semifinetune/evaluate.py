"""Per-answer metrics (keyword recall, EOS stop, repetition, length, think block) and base vs tuned on held-out questions.

Correctness reads the ANSWER part (text after `</think>` for R1) and repetition the whole output, since rambling
inside the reasoning block costs as much as rambling in the answer. One exception keeps base vs tuned fair: an R1
output whose think block never closed within max_new_tokens has no answer, so it is scored on its unfinished
reasoning instead of counting as 0 (the base model reasons at length, the tuned one closes the block at once). Each
row's `scored_on` says which rule applied: "answer", "unfinished reasoning", or "whole output" (no think block).
"""

from __future__ import annotations

import json
import math
import os
import re
from contextlib import contextmanager, nullcontext

from . import runs
from .atomic import csv_bytes, write_bytes_atomic
from .config import ConfigError, RunConfig
from .runlock import holds_run_dir
from .safety import check_answers_space

NOT_APPLICABLE = "n/a"  # think metrics of a model without a reasoning block: not 0, which would read as "never closed"
ANSWER, UNFINISHED, WHOLE = "answer", "unfinished reasoning", "whole output"  # the `scored_on` values
MODELS = ("base", "tuned")

# Aggregated columns, what each is the mean of (see score_generations for the per-answer columns).
SUMMARY_COLUMNS = [
    "answers", "recall", "correct_rate", "eos_rate", "repeat_4gram", "distinct_2",
    "answer_words", "new_tokens", "think_closed_rate", "scored_on_reasoning", "tokens_per_s",
]


# Summary figures rounded to what a reader can tell apart: shares to 3 decimals (1 answer in 1,000), lengths and
# throughput to 1. The recommendation (sweep.py) reads these same values, so a tie in the table is a tie for its rule.
DECIMALS = {
    "recall": 3, "correct_rate": 3, "eos_rate": 3, "repeat_4gram": 3, "distinct_2": 3, "think_closed_rate": 3,
    "scored_on_reasoning": 3, "answer_words": 1, "new_tokens": 1, "tokens_per_s": 1,
}


def words(text: str) -> list[str]:
    """Lower-cased word tokens (runs of letters, digits and _): the unit of n-grams and of answer length."""
    return re.findall(r"\w+", text.lower())


def keyword_hits(answer: str, groups: list[list[str]]) -> int:
    """How many keyword groups have at least one alternative in the answer (case-insensitive substring)."""
    lowered = answer.lower()
    return sum(any(alt.lower() in lowered for alt in group) for group in groups)


def keyword_recall(answer: str, groups: list[list[str]]) -> float:
    """Share of keyword groups the answer hits; 1.0 means correct."""
    return keyword_hits(answer, groups) / len(groups) if groups else float("nan")


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(tokens[i:] for i in range(n))))


def repeated_4gram_share(text: str, tokens: list[str] | None = None) -> float:
    """Share of word 4-grams that repeat an earlier one (0 = no loop; "a b c d a b c d" = 1/5). No 4-grams: 0.
    `tokens`: the text's words where the caller has them."""
    grams = ngrams(words(text) if tokens is None else tokens, 4)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def distinct_2(text: str, tokens: list[str] | None = None) -> float:
    """Distinct word bigrams / all word bigrams (1 = no bigram repeats). No bigrams: 1. `tokens`: as above."""
    grams = ngrams(words(text) if tokens is None else tokens, 2)
    return len(set(grams)) / len(grams) if grams else 1.0


def scored_text(generation) -> tuple[str, str]:
    """(the text keywords are read from, which rule chose it): the answer; for an R1 output whose think block never
    closed, the unfinished reasoning (its answer is empty); for a model without a think block, its whole output."""
    if generation.think_closed is None:
        return generation.answer, WHOLE
    if generation.think_closed:
        return generation.answer, ANSWER
    return generation.reasoning or "", UNFINISHED


def answer_metrics(generation, row: dict) -> dict:
    """The metrics of one Generation against its question: keyword groups where the row has them, else its
    reference answer's key terms (refscore.py); token F1 against the reference either way."""
    from .refscore import key_term_recall, key_terms_correct, token_f1

    text, rule = scored_text(generation)
    groups, terms, reference = row.get("keywords") or [], row.get("key_terms") or [], row.get("output") or ""
    hits = keyword_hits(text, groups)
    by_terms = {"key_term_recall": key_term_recall(text, terms), "key_terms_correct": key_terms_correct(text, terms)}
    verdict = ({"recall": hits / len(groups), "correct": hits == len(groups), "verdict_by": "keywords"} if groups else
               {"recall": by_terms["key_term_recall"], "correct": by_terms["key_terms_correct"], "verdict_by": "key terms"})
    output_words = words(generation.text)
    return {
        "scored_on": rule,
        "keyword_hits": hits,
        "keyword_groups": len(groups),
        **verdict,
        **by_terms,
        "token_f1": round(token_f1(text, reference), 4) if reference else float("nan"),
        "eos_stop": generation.finish_reason == "eos",
        "repeat_4gram": repeated_4gram_share(generation.text, output_words),
        "distinct_2": distinct_2(generation.text, output_words),
        "answer_words": len(words(generation.answer)),  # words of the answer part, not tokens
    }


def answer_or_why(answer, scored_on: str, max_new_tokens: int) -> str:
    """An answer as tables show it: an empty one says why it is empty, in fewer than pandas' 50 shown characters
    (the table's `scored on` column says what was scored instead)."""
    answer = "" if answer is None or answer != answer else str(answer)  # a CSV's empty cell reads back as NaN
    if answer:
        return answer
    if scored_on == UNFINISHED:
        return f"(reasoning did not finish in max_new_tokens={int(max_new_tokens)})"
    if scored_on == ANSWER:
        return "(empty: nothing after </think>)"
    return "(no output)"


def notes_hold_answer(notes: list[dict], row: dict) -> bool:
    """The notes' answers hold what makes an answer correct (every keyword group, else enough key terms): a model
    that copies from them could be correct."""
    from .refscore import key_terms_correct

    text = " ".join(note["output"] for note in notes)
    groups = row.get("keywords") or []
    if groups:
        return keyword_hits(text, groups) == len(groups)
    return key_terms_correct(text, row.get("key_terms") or [])


def note_columns(notes: list[dict], row: dict) -> dict:
    """What one answer's prompt was given: how many notes, their questions, and whether they held the answer."""
    return {
        "notes_k": len(notes),
        "notes": json.dumps([note["input"] for note in notes], ensure_ascii=False),
        "notes_hold_answer": notes_hold_answer(notes, row) if notes else None,  # None: no notes, not applicable
    }


def score_generations(generations: list, eval_rows: list[dict], notes: list[list[dict]] | None = None):
    """One DataFrame row per answer: question, answer parts, finish reason, tokens, time and every metric; with
    `notes` (one list per row, retrieval on) also what each prompt was given."""
    import pandas as pd

    records = []
    for index, (row, gen) in enumerate(zip(eval_rows, generations)):
        given = note_columns(notes[index], row) if notes is not None else {}
        records.append(
            {
                "question_id": index,
                "question": row["input"],
                "topic": row.get("topic", ""),
                "keywords": json.dumps(row.get("keywords") or [], ensure_ascii=False),
                "reference": row.get("output", ""),
                "key_terms": json.dumps(row.get("key_terms") or [], ensure_ascii=False),
                "answer": gen.answer,
                "reasoning": gen.reasoning,
                "text": gen.text,
                "think_closed": gen.think_closed,
                "finish_reason": gen.finish_reason,
                "new_tokens": gen.new_tokens,
                "seconds": gen.seconds,
                **answer_metrics(gen, row),
                **given,
            }
        )
    return pd.DataFrame.from_records(records)


def think_closed_rate(values) -> float | str:
    """Share of answers whose think block closed; "n/a" where no answer had a reasoning block."""
    import pandas as pd

    known = pd.Series(list(values), dtype=object).dropna()  # None (no block) and a CSV's empty cell both drop
    if known.empty:
        return NOT_APPLICABLE
    return float(known.map(lambda v: v is True or str(v).lower() == "true").mean())


def scored_on_reasoning(values) -> float | str:
    """Share of answers scored on their unfinished reasoning; "n/a" where no answer had a reasoning block."""
    import pandas as pd

    rules = pd.Series(list(values), dtype=object).dropna()  # a CSV written before the column existed: all missing
    known = rules[rules != WHOLE]
    if known.empty:
        return NOT_APPLICABLE
    return float((known == UNFINISHED).mean())


def summarize(table, by: list[str]):
    """Per group of `by`: answers, mean recall, correct/EOS/think-closed rates, repetition, lengths, tokens/s, and the
    share of answers scored on unfinished reasoning. Rounded as shown (see DECIMALS)."""
    import pandas as pd

    rows = []
    for key, group in table.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        seconds = group["seconds"].sum()
        rows.append(
            {
                **dict(zip(by, key)),
                "answers": len(group),
                "recall": group["recall"].mean(),
                "correct_rate": group["correct"].astype(float).mean(),
                "eos_rate": group["eos_stop"].astype(float).mean(),
                "repeat_4gram": group["repeat_4gram"].mean(),
                "distinct_2": group["distinct_2"].mean(),
                "answer_words": group["answer_words"].mean(),
                "new_tokens": group["new_tokens"].mean(),  # generated tokens per answer, reasoning included
                "think_closed_rate": think_closed_rate(group["think_closed"]),
                "scored_on_reasoning": scored_on_reasoning(group.get("scored_on", [])),
                # seconds are each row's share of its batch, so this is the batched throughput
                "tokens_per_s": group["new_tokens"].sum() / seconds if seconds > 0 else float("nan"),
            }
        )
        rows[-1] = rounded(rows[-1])
    return pd.DataFrame(rows, columns=[*by, *SUMMARY_COLUMNS])


def rounded(row: dict) -> dict:
    """Each DECIMALS column rounded; "n/a" and NaN stay as they are."""
    return {key: round(value, DECIMALS[key]) if key in DECIMALS and isinstance(value, float) else value
            for key, value in row.items()}


def evaluate_model(
    model, tokenizer, eval_rows: list[dict], settings, seed: int = 42, batch_size: int | None = None, progress: bool = True,
    cuda_graphs: bool = True, notes: list[list[dict]] | None = None,
):
    """Generate an answer to every eval question and score it: one DataFrame row per question (settings: one for
    all, or one per row). `notes`: retrieved training pairs per row, pasted into its user turn (None: retrieval off)."""
    from .generate import generate
    from .retrieval import with_notes

    questions = [row["input"] for row in eval_rows]
    if notes is not None:
        questions = [with_notes(question, given) for question, given in zip(questions, notes)]
    generations = generate(model, tokenizer, questions, settings, seed, batch_size, progress, cuda_graphs)
    table = score_generations(generations, eval_rows, notes)
    if notes is not None:  # retrieval lengthens every prompt: the cost side of its gain
        table["prompt_tokens"] = [len(tokenizer(g.prompt, add_special_tokens=False)["input_ids"]) for g in generations]
    return table


# --- base vs tuned ---


def read_eval_rows(cfg: RunConfig, limit: int = 0, run_dir: str | os.PathLike | None = None) -> list[dict]:
    """The held-out questions (eval_file, or the sample saved in run_dir), with their key terms; the first `limit`
    if limit > 0."""
    from .data import split_examples

    rows = split_examples(cfg, "eval", run_dir)
    return rows[:limit] if limit > 0 else rows


def sample_question(cfg: RunConfig, run_dir: str | os.PathLike | None = None) -> str:
    """The question notebook 02 asks the base model and the playground starts with: the run's first held-out one."""
    return read_eval_rows(cfg, 1, run_dir)[0]["input"]


def settings_from_config(cfg: RunConfig):
    from .generate import SamplingSettings

    return SamplingSettings(
        temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, repetition_penalty=cfg.repetition_penalty
    )


def load_base_and_tuned(cfg: RunConfig, run_dir: str | os.PathLike):
    """The base model with the run's LoRA adapter attached (PeftModel) and its tokenizer; base = adapter disabled.

    Loaded once per process and shared while the adapter files and loading settings stay the same (loaded.py): the
    caller generates with it and must not merge, train or otherwise change it; loaded.forget() drops it.
    """
    from .loaded import base_and_tuned

    return base_and_tuned(cfg, run_dir)


@contextmanager
def as_model(model, which: str):
    """`with as_model(peft_model, "base"):` runs with the adapter disabled; "tuned" runs it as is."""
    if which not in MODELS:
        raise ConfigError(f"Unknown model {which!r}: use 'base' or 'tuned'")
    with model.disable_adapter() if which == "base" else nullcontext():
        yield model


@holds_run_dir("evaluate")
def compare_base_tuned(run_dir: str | os.PathLike, settings=None, batch_size: int | None = None, progress: bool = True) -> dict:
    """Base and tuned on every held-out question at the run's sampling settings (with retrieval_k notes each, where
    set); writes run_dir/evaluation.csv."""
    import pandas as pd

    from .notes import notes_for
    from .runs import open_run

    cfg = open_run(run_dir)
    settings = settings or settings_from_config(cfg)
    eval_rows = read_eval_rows(cfg, run_dir=run_dir)
    notes = notes_for(cfg, [row["input"] for row in eval_rows], cfg.retrieval_k, run_dir)  # None: retrieval_k 0, off
    check_answers_space(run_dir, len(eval_rows) * len(MODELS), max_new_tokens(settings, cfg), runs.EVALUATION)
    model, tokenizer = load_base_and_tuned(cfg, run_dir)
    frames = []
    for which in MODELS:
        with as_model(model, which):
            frame = evaluate_model(model, tokenizer, eval_rows, settings, cfg.seed, batch_size, progress, cfg.cuda_graphs, notes)
        frames.append(frame.assign(model=which))
    table = pd.concat(frames, ignore_index=True)
    # Rewritten on every call: evaluation.csv is this step's own output, derived from the adapter (re-running the
    # step redoes it); the adapter and checkpoints it reads are what train() refuses to overwrite.
    write_bytes_atomic(runs.run_path(run_dir, runs.EVALUATION), csv_bytes(table))
    counts = table.groupby("model")["correct"].sum()
    return {
        "questions": len(eval_rows),
        "settings": vars(settings),
        "base_correct": int(counts.get("base", 0)),
        "tuned_correct": int(counts.get("tuned", 0)),
        "retrieval_k": cfg.retrieval_k,
        "file": str(runs.run_path(run_dir, runs.EVALUATION)),
    }


def max_new_tokens(settings, cfg: RunConfig) -> int:
    """The longest answer the settings (one SamplingSettings, or one per row) allow."""
    per_row = settings if isinstance(settings, (list, tuple)) else [settings]
    return max((getattr(s, "max_new_tokens", 0) for s in per_row), default=0) or cfg.max_new_tokens


def read_evaluation(run_dir: str | os.PathLike):
    """run_dir/evaluation.csv as compare_base_tuned wrote it."""
    import pandas as pd

    path = runs.run_path(run_dir, runs.EVALUATION)
    if not path.exists():
        raise ConfigError(f"{path} does not exist. Run compare_base_tuned (notebook 06) or `python -m semifinetune evaluate --run-dir {run_dir}` first.")
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def evaluation_summary(run_dir: str | os.PathLike):
    """Base vs tuned, one row each: recall, correct/EOS/think-closed rates, repetition, lengths, tokens/s."""
    return summarize(read_evaluation(run_dir), ["model"]).set_index("model")


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p: the chance of a split at least this uneven of the questions only one side got
    right, were both sides equally good."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def base_tuned_verdict(run_dir: str | os.PathLike) -> str:
    """Base vs tuned on the held-out questions in one line: correct counts, whether the difference is beyond the
    noise of this many questions (exact McNemar on the same questions, p < 0.05), and how often each ended by itself."""
    table = read_evaluation(run_dir)
    base, tuned = (table[table["model"] == which].reset_index(drop=True) for which in MODELS)
    right = {which: rows["correct"].astype(bool) for which, rows in (("base", base), ("tuned", tuned))}
    counts = {which: int(correct.sum()) for which, correct in right.items()}
    p = mcnemar_p(int((right["tuned"] & ~right["base"]).sum()), int((right["base"] & ~right["tuned"]).sum()))
    gap = counts["tuned"] - counts["base"]
    change = "as many" if gap == 0 else f"{abs(gap)} {'more' if gap > 0 else 'fewer'}"
    noise = "beyond" if p < 0.05 else "within"
    eos = {which: f"{rows['eos_stop'].astype(bool).mean():.0%}" for which, rows in (("base", base), ("tuned", tuned))}
    summary = runs.run_path(run_dir, runs.DATA) / "summary.json"  # notebook 04's: where the questions came from
    sampled = summary.exists() and json.loads(summary.read_text(encoding="utf-8")).get("eval", {}).get("source") == "sample"
    sampled = (" These questions were sampled from the training file: they measure recall of trained facts, asked as "
               "trained; a file of the facts in other words (eval_file) tests more.") if sampled else ""
    k = int(table["notes_k"].max()) if "notes_k" in table else 0
    noted = (f", each given the top {'training pair' if k == 1 else f'{k} training pairs'} in its prompt where one "
             f"matches (retrieval_k; the comparison below shows each model without them)") if k else ""
    return (f"The tuned model answers {counts['tuned']} of {len(base)} held-out questions correctly, the base model "
            f"{counts['base']} ({change}, {noise} the noise of {len(base)} questions){noted}; the tuned model ends its "
            f"answer by itself in {eos['tuned']} of them, the base model in {eos['base']}.{sampled}")
