"""What notebook 06 generates (answers, new tokens at most) and how long that takes on this card.

The rates are notebook 06's own, measured end to end with every answer running to max_new_tokens (the R1
architecture's random weights; benchmarks/bench_gpu_pipeline.py, BENCHMARKS.md), so the duration is an upper
bound; a tuned model that stops by itself takes less. The T4's is an estimate from those figures, not a run.
"""

from __future__ import annotations

import math
import os

# notebook 06's new tokens over its wall time (the model load included), 93% of the answers at 512 tokens, the lower
# of the figure inside the pipeline and the one timed part by part (2026-12-06, BENCHMARKS.md): H200 72,614 and
# 69,905 on the current code, H100 62,764 and 68,438 before levers 19-21 (53,197-55,781 before levers 13-18)
MEASURED_TOKENS_PER_S = {"H200": 69_900, "H100": 62_700}
# BENCHMARKS.md, "A T4, estimated": 64 rows a batch, a step of about 21 ms bound by the T4's bandwidth and its
# ~1,300 kernels, scaled from the full-size run of the t4 pipeline on an H100 made to look like a T4
ESTIMATED_TOKENS_PER_S = {"T4": 2_800}
T4_BUDGET_S = 15 * 60  # what notebook 06 may take on a free Colab T4
UNSLOTH_SLOWER = 50  # Unsloth's sampling against the loop's, H200: 870 vs 44,168 new tokens/s


def notebook06_answers(cfg) -> dict[str, tuple[int, int]]:
    """{part: (answers, new tokens at most)} for the evaluation, the retrieval comparison and the sweep at cfg."""
    from .compare import question_sets
    from .evaluate import read_eval_rows
    from .sweep import sweep_settings

    held_out = len(read_eval_rows(cfg))
    parts = {"evaluation, base and tuned": (2 * held_out, 2 * held_out * cfg.max_new_tokens)}
    if cfg.retrieval_compare_k > 0:
        sets = question_sets(cfg, cfg.retrieval_compare_questions)
        # each model: held-out with notes and with distractors, general without notes, with notes and with
        # distractors (held-out without notes is the evaluation's)
        answers = 2 * (2 * len(sets["held-out"]) + 3 * len(sets["general"]))
        parts["retrieval comparison"] = (answers, answers * cfg.max_new_tokens)
    questions = len(read_eval_rows(cfg, cfg.sweep_questions))
    per_setting = 2 * cfg.sweep_samples * questions
    settings = sweep_settings(cfg)
    parts["sweep"] = (per_setting * len(settings), per_setting * sum(s.max_new_tokens for s in settings))
    return parts


def tokens_per_s(card: str) -> tuple[float | None, str]:
    """(notebook 06's tokens/s on this card, "measured" or "estimated"), or (None, "") where neither is known."""
    for table, kind in ((MEASURED_TOKENS_PER_S, "measured"), (ESTIMATED_TOKENS_PER_S, "estimated")):
        for name, rate in table.items():
            if name in card:
                return rate, kind
    return None, ""


def this_card() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"


def workload_line(run_dir: str | os.PathLike) -> str:
    """The run's notebook-06 workload, part by part, and its expected duration on this card."""
    from .runs import open_run

    cfg = open_run(run_dir)
    parts = notebook06_answers(cfg)
    answers, tokens = (sum(values) for values in zip(*parts.values()))
    lines = [f"{name}: {a:,} answers, at most {t:,} new tokens" for name, (a, t) in parts.items()]
    lines.append(f"in all: {answers:,} answers, at most {tokens:,} new tokens")
    card = this_card()
    rate, kind = tokens_per_s(card)
    if cfg.backend == "unsloth":
        lines.append(f"backend unsloth: it samples through its own path, not the graphed loop these rates are for: about "
                     f"{UNSLOTH_SLOWER}x slower (870 against 44,000 new tokens/s measured on an H200)")
    if rate is None:
        lines.append(f"expected duration on {card}: not measured here; the progress bars estimate it as they go")
    else:
        lines.append(f"expected on {card}: at most {_minutes(tokens / rate)} ({kind}: {rate:,} new tokens/s for "
                     "this notebook, every answer at its limit)")
    return "\n".join(lines)


def fit_to_card(cfg, card: str, chosen: set[str]) -> tuple:
    """(cfg, note): on a card with a known rate, fewer sweep samples where notebook 06 would take longer than
    T4_BUDGET_S; settings in `chosen` (the user's own) are never changed. note is '' where nothing changed."""
    import dataclasses

    rate, kind = tokens_per_s(card)
    if rate is None or "sweep_samples" in chosen or cfg.profile != "t4":
        return cfg, ""

    def seconds(candidate) -> float:
        return sum(t for _, t in notebook06_answers(candidate).values()) / rate

    fitted = cfg
    while seconds(fitted) > T4_BUDGET_S and fitted.sweep_samples > 1:
        fitted = dataclasses.replace(fitted, sweep_samples=fitted.sweep_samples - 1)
    if fitted is cfg:
        return cfg, ""
    return fitted, (f"{card}: sweep_samples {cfg.sweep_samples} -> {fitted.sweep_samples}, so that notebook 06 takes "
                    f"at most {_minutes(seconds(fitted))} instead of {_minutes(seconds(cfg))} ({kind} "
                    f"{rate:,} tokens/s); --set sweep_samples={cfg.sweep_samples} keeps the full grid")


def _minutes(seconds: float) -> str:
    return f"{math.ceil(seconds)} s" if seconds < 120 else f"{math.ceil(seconds / 60)} min"
