"""Was the fine-tune the right tool? Base and tuned, each without and with retrieval, on held-out and general questions.

The 2 x 2 per question set: the base model alone, the base model with the top k training pairs in its prompt
(retrieval instead of fine-tuning), the tuned model alone, and the tuned model with the notes (both). The general
questions (`general_eval_file`) lie outside the domain: a drop there is what the fine-tune or the notes cost.
"""

from __future__ import annotations

import math
import os

from . import runs
from .atomic import csv_bytes, write_bytes_atomic
from .config import ConfigError
from .evaluate import mcnemar_p  # noqa: F401 - the tests and notebooks read it from here too
from .runlock import holds_run_dir
from .safety import check_answers_space

SETS = ("held-out", "general")
TABLE_COLUMNS = [
    "questions", "correct", "recall", "eos_rate", "scored_on_reasoning", "answer_words", "new_tokens", "prompt_tokens",
    "tokens_per_s", "notes_hold_answer",
]


EXTRA_RANKS = 20  # ranked notes looked through for ones that lack the answer


def retrieval_label(k: int) -> str:
    return f"top {k}" if k else "off"


def distractors_label(k: int) -> str:
    """The third column: k notes, none of which holds the answer (does the model pass over notes that do not help?)."""
    return f"{k} distractor{'s' if k != 1 else ''}"


def is_distractors(label: str) -> bool:
    return "distractor" in label


def distractor_notes(index, rows: list[dict], k: int) -> list[list[dict]]:
    """For each question, the best-ranked k notes whose answers do not hold its answer (evaluate.notes_hold_answer):
    what retrieval gives when it misses."""
    from .evaluate import notes_hold_answer
    from .retrieval import retrieve

    ranked = retrieve(index, [row["input"] for row in rows], min(k + EXTRA_RANKS, len(index.pairs)))
    return [[note for note in notes if not notes_hold_answer([note], row)][:k] for notes, row in zip(ranked, rows)]


def question_sets(cfg, limit: int = 0, run_dir: str | os.PathLike | None = None) -> dict[str, list[dict]]:
    """The held-out questions (eval_file, or the run's sample) and the general ones (general_eval_file), validated,
    with key terms; the first `limit` of each if limit > 0."""
    from .data import read_examples, split_examples
    from .refscore import with_key_terms
    from .splits import locate

    general = read_examples(locate(cfg.general_eval_file), "eval")
    sets = {"held-out": split_examples(cfg, "eval", run_dir), "general": with_key_terms(general, [r["output"] for r in general])}
    return {name: rows[:limit] if limit > 0 else rows for name, rows in sets.items()}


@holds_run_dir("evaluate --retrieval")
def compare_retrieval(run_dir: str | os.PathLike, k: int | None = None, settings=None, batch_size: int | None = None,
                      progress: bool = True, reuse_evaluation: bool = False):
    """The 2 x 2 on both question sets at the run's sampling settings, k notes (default retrieval_compare_k), and a
    third column of k notes that lack the answer (distractor_notes); writes run_dir/retrieval.csv (one row per answer)
    and returns it as read back.

    reuse_evaluation: take one held-out cell from evaluation.csv instead of generating it again, where it was written
    for the same questions without notes (retrieval_k 0) or with the same k notes. They are the same answers (same
    prompts, batches and seed) only if compare_base_tuned ran at the run's settings, as notebook 06 and `run` call it.
    """
    import pandas as pd

    from .evaluate import MODELS, as_model, evaluate_model, load_base_and_tuned, max_new_tokens, settings_from_config
    from .notes import above_floor, index_training_pairs, score_floor
    from .retrieval import check_k, retrieve

    cfg = runs.open_run(run_dir)
    k = cfg.retrieval_compare_k if k is None else k
    check_k(k)
    if k == 0:
        raise ConfigError("The 2 x 2 needs notes: set retrieval_compare_k (or pass k) to 1 or more.")
    settings = settings or settings_from_config(cfg)
    sets = question_sets(cfg, cfg.retrieval_compare_questions, run_dir)
    index = index_training_pairs(cfg)  # train_file only: the held-out answers are never among the notes
    floor = score_floor(cfg, index, run_dir)  # the notes as evaluate gives them: none below the floor
    notes = {name: above_floor(retrieve(index, [row["input"] for row in rows], k), floor) for name, rows in sets.items()}
    misses = {name: distractor_notes(index, rows, k) for name, rows in sets.items()}
    reused = _evaluation_reused(run_dir, cfg, sets["held-out"], k) if reuse_evaluation else None
    reused_label = retrieval_label(cfg.retrieval_k)  # the cell evaluation.csv answered: no notes, or the top k
    answers = 3 * len(MODELS) * sum(len(rows) for rows in sets.values())  # without notes, with notes, with distractors
    check_answers_space(run_dir, answers, max_new_tokens(settings, cfg), runs.RETRIEVAL)
    model, tokenizer = load_base_and_tuned(cfg, run_dir)
    cells = [(name, label, rows, given) for name, rows in sets.items()  # no notes: the model-alone prompt
             for label, given in ((retrieval_label(0), [[] for _ in rows]), (retrieval_label(k), notes[name]),
                                  (distractors_label(k), misses[name]))]
    fresh = [cell for cell in cells if reused is None or cell[:2] != ("held-out", reused_label)]
    frames = []
    for which in MODELS:
        with as_model(model, which):
            # One generate() call for all of this model's cells: their rows share batches (on a GPU usually one)
            # instead of each cell's few rows decoding through max_new_tokens on their own.
            answered = evaluate_model(model, tokenizer, [row for cell in fresh for row in cell[2]], settings, cfg.seed,
                                      batch_size, progress, cfg.cuda_graphs, [n for cell in fresh for n in cell[3]])
            start, by_cell = 0, {}
            for name, label, rows, _ in fresh:
                by_cell[name, label] = answered.iloc[start : start + len(rows)].assign(question_id=range(len(rows)))
                start += len(rows)
            for name, label, _, _ in cells:
                frame = by_cell.get((name, label))
                if frame is None:
                    frame = _as_retrieval_rows(reused[reused["model"] == which], tokenizer)
                frames.append(frame.assign(set=name, model=which, retrieval=label))
    table = pd.concat(frames, ignore_index=True)
    write_bytes_atomic(runs.run_path(run_dir, runs.RETRIEVAL), csv_bytes(table))  # rewritten each call, like evaluation.csv
    return read_retrieval(run_dir)  # read back: reused and new rows alike typed as the CSV holds them


def _evaluation_reused(run_dir, cfg, rows: list[dict], k: int):
    """evaluation.csv's rows for these questions where it holds both models' answers to them (as its first
    questions, in order) in one of the 2 x 2's cells: without notes (retrieval_k 0) or with the same top k notes
    (retrieval_k = k, the same floor); else None."""
    import pandas as pd

    from .evaluate import MODELS, read_evaluation

    if cfg.retrieval_k not in (0, k) or not runs.run_path(run_dir, runs.EVALUATION).exists():
        return None
    table = read_evaluation(run_dir)
    questions = [row["input"] for row in rows]
    kept = [table[table["model"] == which].head(len(questions)) for which in MODELS]
    same = all(list(frame["question"]) == questions for frame in kept)
    return pd.concat(kept) if same and ("notes_k" in table) == bool(cfg.retrieval_k) else None


def _as_retrieval_rows(frame, tokenizer):
    """evaluation.csv rows of one model in the shape evaluate_model gives (with no notes, the notes columns added)."""
    from .formats import chat_prompt

    frame = frame.drop(columns="model").reset_index(drop=True)
    if "notes_k" in frame:  # answered with notes: evaluate_model wrote every column
        return frame
    prompts = [chat_prompt(tokenizer, question) for question in frame["question"]]
    return frame.assign(
        notes_k=0, notes="[]", notes_hold_answer=None,
        prompt_tokens=[len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts],
    )


def read_retrieval(run_dir: str | os.PathLike):
    """run_dir/retrieval.csv as compare_retrieval wrote it."""
    import pandas as pd

    path = runs.run_path(run_dir, runs.RETRIEVAL)
    if not path.exists():
        raise ConfigError(f"{path} does not exist. Run compare_retrieval (notebook 06) or "
                          f"`python -m semifinetune evaluate --retrieval --run-dir {run_dir}` first.")
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def retrieval_table(table):
    """Per question set, the four rows base/tuned x off/top k: correct count, recall, EOS-stop rate, lengths, tokens/s,
    and how often the notes held the answer."""
    from .evaluate import MODELS, summarize

    summary = summarize(table, ["set", "model", "retrieval"])
    extra = table.groupby(["set", "model", "retrieval"], sort=True).agg(
        prompt_tokens=("prompt_tokens", lambda s: round(s.mean(), 1)),
        notes_hold_answer=("notes_hold_answer", lambda s: round(_rate(s), 3)),
        correct=("correct", lambda s: int(s.astype(bool).sum())),
    ).reset_index()
    summary = summary.merge(extra, on=["set", "model", "retrieval"]).rename(columns={"answers": "questions"})
    summary = summary.set_index(["set", "model", "retrieval"])[TABLE_COLUMNS]
    # Sets in SETS order, then base before tuned, each without notes first: the 2 x 2 read row by row.
    labels = sorted(set(summary.index.get_level_values("retrieval")), key=lambda r: (r != "off", is_distractors(r), r))
    order = [(s, m, r) for s in SETS for m in MODELS for r in labels if (s, m, r) in summary.index]
    return summary.loc[order]


def _rate(values) -> float:
    """Share of True among the known values (NaN where no row had notes)."""
    import pandas as pd

    known = pd.Series(list(values), dtype=object).dropna()
    return float(known.map(lambda v: v is True or str(v).lower() == "true").mean()) if len(known) else math.nan


def _cells(table, name: str) -> dict:
    """{(model, with_notes): per-question correct Series} of one question set; (model, "distractors") for the
    third column where the table has it."""
    rows = table[table["set"] == name]
    return {
        (model, "distractors" if is_distractors(retrieval) else retrieval != "off"):
            group.set_index("question_id")["correct"].astype(bool)
        for (model, retrieval), group in rows.groupby(["model", "retrieval"])
    }


def _versus(a, b) -> tuple[int, int, float]:
    """Correct counts of a and b on the same questions, and the McNemar p of their difference."""
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    return int(a.sum()), int(b.sum()), mcnemar_p(only_a, only_b)


def _noise(p: float) -> str:
    return f"p = {p:.2g}, {'beyond' if p < 0.05 else 'within'} the noise"


def retrieval_statement(table) -> str:
    """What the 2 x 2 says, in one sentence, from a compare_retrieval table (exact McNemar tests on the same questions)."""
    held, general = _cells(table, "held-out"), _cells(table, "general")
    k = int(table.loc[table["retrieval"] != "off", "notes_k"].max())
    n_held, n_general = len(held[("base", False)]), len(general[("base", False)])
    rag, tuned, p_rag = _versus(held[("base", True)], held[("tuned", False)])
    both, best_single, p_both = _versus(held[("tuned", True)], held[("base", True)] if rag >= tuned else held[("tuned", False)])
    base = int(held[("base", False)].sum())
    if p_rag >= 0.05:
        which = "retrieval alone and the fine-tune alone cannot be told apart"
    elif rag > tuned:
        which = "retrieval beats the fine-tune"
    else:
        which = "the fine-tune beats retrieval"
    if p_both >= 0.05:
        together = "adding the other to the better one changes nothing beyond the noise"
    elif both > best_single:
        together = "both together beat either alone"
    else:
        together = "both together do worse than the better one alone"
    costs = []
    for label, cell in (("the fine-tune", ("tuned", False)), ("retrieval", ("base", True)), ("both", ("tuned", True))):
        before, after, p = _versus(general[("base", False)], general[cell])
        change = "keeps" if after == before else ("costs" if after < before else "adds")
        amount = "" if after == before else f" {abs(after - before)}"
        costs.append(f"{label} {change}{amount} ({after} vs {before}, {_noise(p)})")
    return (
        f"On the {n_held} held-out questions the base model answers {base}, with the top {k} training "
        f"{'pair' if k == 1 else 'pairs'} in its prompt {rag}, fine-tuned {tuned} and fine-tuned with the notes {both}: "
        f"{which} ({rag} vs {tuned}, {_noise(p_rag)}) and {together} ({both} vs {best_single}, {_noise(p_both)}); "
        f"on the {n_general} general questions {', '.join(costs[:-1])} and {costs[-1]}."
    )


def correct_counts(table) -> dict:
    """{set: {"questions": n, "base": c, "base + top k": c, "tuned": c, "tuned + top k": c}} of a compare_retrieval table."""
    counts = {}
    for name in SETS:
        rows = table[table["set"] == name]
        if rows.empty:
            continue
        cells = {"questions": int(rows["question_id"].nunique())}
        for (model, retrieval), group in rows.groupby(["model", "retrieval"], sort=False):
            cells[model if retrieval == "off" else f"{model} + {retrieval}"] = int(group["correct"].astype(bool).sum())
        counts[name] = cells
    return counts


def counts_line(table) -> str:
    """The 2 x 2's correct counts in one line, for `run`'s summary."""
    parts = []
    for name, cells in correct_counts(table).items():
        shown = ", ".join(f"{label} {n}" for label, n in cells.items() if label != "questions")
        parts.append(f"{name} {shown} of {cells['questions']}")
    return "; ".join(parts)


def retrieval_verdict(table) -> str:
    """What the 2 x 2 says, one line per question set, with the counts and no p-values (retrieval_statement has
    them): which of retrieval and fine-tune wins on the held-out questions, and what each costs on the general ones.
    "Beyond the noise" is an exact McNemar test on the same questions at p < 0.05."""
    held, general = _cells(table, "held-out"), _cells(table, "general")
    k = int(table.loc[table["retrieval"] != "off", "notes_k"].max())
    notes = f"top {k}"

    def counts(cells) -> str:
        missed = "".join(f", {model} + {distractors_label(k)} {int(cells[(model, 'distractors')].sum())}"
                         for model in ("base", "tuned") if (model, "distractors") in cells)
        return (f"base {int(cells[('base', False)].sum())}, base + {notes} {int(cells[('base', True)].sum())}, "
                f"tuned {int(cells[('tuned', False)].sum())}, tuned + {notes} {int(cells[('tuned', True)].sum())}"
                f"{missed} correct")

    rag, tuned, p_rag = _versus(held[("base", True)], held[("tuned", False)])
    both, best, p_both = _versus(held[("tuned", True)], held[("base", True)] if rag >= tuned else held[("tuned", False)])
    if p_rag >= 0.05:
        which = "retrieval and the fine-tune cannot be told apart"
    else:
        which = "retrieval beats the fine-tune" if rag > tuned else "the fine-tune beats retrieval"
    if p_both >= 0.05:
        together = "using both changes nothing beyond the noise"
    else:
        together = "both together beat either alone" if both > best else "both together do worse than the better one alone"
    lines = [f"held-out, {len(held[('base', False)])} questions: {counts(held)}: {which}; {together}."]
    costs = []
    for label, cell in (("the fine-tune", ("tuned", False)), ("retrieval", ("base", True)), ("both", ("tuned", True))):
        before, after, p = _versus(general[("base", False)], general[cell])
        change = "keeps them" if after == before else f"{'costs' if after < before else 'adds'} {abs(after - before)}"
        costs.append(change if after == before or p >= 0.05 else f"{change}, beyond the noise")
        costs[-1] = f"{label} {costs[-1]}"
    noise = "" if any("beyond" in cost for cost in costs) else " (all within the noise)"
    lines.append(f"general, {len(general[('base', False)])} questions: {counts(general)}: {'; '.join(costs)}{noise}.")
    return "\n".join([best_mode_line(held, k)] + lines)


def best_mode(table) -> str:
    """best_mode_line of a compare_retrieval table's held-out questions."""
    return best_mode_line(_cells(table, "held-out"), int(table.loc[table["retrieval"] != "off", "notes_k"].max()))


def best_mode_line(held: dict, k: int) -> str:
    """Which way of answering (base or tuned, without or with the top k notes) gets most held-out questions right,
    with a 95% interval, and its lead over the next (exact McNemar on the same questions)."""
    notes = "the top note" if k == 1 else f"the top {k} notes"
    names = {("base", False): "the base model", ("base", True): f"the base model with {notes}",
             ("tuned", False): "the tuned model", ("tuned", True): f"the tuned model with {notes}"}
    ranked = sorted(names, key=lambda cell: -int(held[cell].sum()))
    best, second = ranked[0], ranked[1]
    n, right = len(held[best]), int(held[best].sum())
    low, high = wilson_interval(right, n)
    _, other, p = _versus(held[best], held[second])
    lead = ("as many as" if right == other else f"{right - other} more than") + \
        f" {names[second]} ({'beyond' if p < 0.05 else 'within'} the noise)"
    return (f"Most held-out answers right: {names[best]}, {right} of {n} ({right / n:.0%}; 95% interval "
            f"{low:.0%}-{high:.0%}), {lead}.")


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's score interval for a share successes / n (good at small n and near 0 or 1)."""
    if n == 0:
        return 0.0, 1.0
    share = successes / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
