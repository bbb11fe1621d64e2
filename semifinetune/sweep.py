"""The sampling sweep: a grid of settings x samples, base and tuned on the same questions, and what it says.

Recommendation rule (recommend_settings): among the grid's settings, take the highest mean recall (of keyword groups,
or of key terms) of the tuned model; break ties by the higher EOS-stop rate, then the lower repeated-4-gram share, then the
setting closest to DeepSeek's recommendation (temperature 0.6, top_p 0.95). It reads the summary's figures as shown,
rounded to 3 decimals (evaluate.DECIMALS): a difference too small to see in the table is a tie.
"""

from __future__ import annotations

import itertools
import os

from . import runs
from .atomic import csv_bytes, figure_bytes, json_bytes, write_files_atomic
from .config import ConfigError, RunConfig
from .runlock import holds_run_dir
from .safety import check_answers_space

SETTING_COLUMNS = ["temperature", "top_p", "repetition_penalty", "max_new_tokens"]
DEEPSEEK = {"temperature": 0.6, "top_p": 0.95}  # DeepSeek-R1 README, "Usage Recommendations"
SUMMARY_FILE = "sweep_summary.csv"
HEATMAP_FILE = "sweep_heatmaps.png"
RULE = (
    "highest mean recall (keyword groups, or key terms) of the tuned model; ties broken by higher EOS-stop rate, then lower "
    "repeated-4-gram share, then closest to DeepSeek's temperature 0.6 / top_p 0.95"
)
COMPARED_METRICS = {"recall": "recall", "eos_stop": "EOS-stop rate", "repeat_4gram": "repeated 4-grams"}


def sweep_settings(cfg: RunConfig) -> list:
    """Every SamplingSettings of the grid: temperatures x top_ps x repetition penalties x max_new_tokens."""
    from .generate import SamplingSettings

    grid = itertools.product(
        cfg.sweep_temperatures,
        cfg.sweep_top_ps,
        cfg.sweep_repetition_penalties,
        cfg.sweep_max_new_tokens or [cfg.max_new_tokens],  # empty list: the run's max_new_tokens only
    )
    return [SamplingSettings(t, p, n, r) for t, p, r, n in grid]


@holds_run_dir("sweep")
def run_sweep(run_dir: str | os.PathLike, batch_size: int | None = None, progress: bool = True):
    """Base and tuned over the grid, cfg.sweep_samples draws each (retrieval_k notes in each prompt, where set);
    writes sweep.csv, its summary, heatmaps, recommendation."""
    import pandas as pd

    from .evaluate import MODELS, as_model, evaluate_model, load_base_and_tuned, read_eval_rows
    from .measure import memory_snapshot, reset_peak_memory, timed
    from .notes import notes_for
    from .runs import open_run

    cfg = open_run(run_dir)
    eval_rows = read_eval_rows(cfg, cfg.sweep_questions, run_dir)
    notes = notes_for(cfg, [row["input"] for row in eval_rows], cfg.retrieval_k, run_dir)  # None: retrieval_k 0, off
    # The whole grid as one list of rows (setting x draw x question), generated together: rows of every setting
    # share each batch, which keeps a GPU busy (generate() batches only rows of equal max_new_tokens).
    grid = [(settings, sample) for settings in sweep_settings(cfg) for sample in range(cfg.sweep_samples)]
    check_answers_space(run_dir, len(grid) * len(eval_rows) * len(MODELS), max(s.max_new_tokens for s, _ in grid),
                        f"{runs.SWEEP} and its summary")
    model, tokenizer = load_base_and_tuned(cfg, run_dir)
    rows = [row for _ in grid for row in eval_rows]
    per_row = [settings for settings, _ in grid for _ in eval_rows]
    per_row_notes = None if notes is None else [given for _ in grid for given in notes]
    labels = pd.DataFrame(
        [{**vars(settings), "sample": sample, "question_id": i} for settings, sample in grid for i in range(len(eval_rows))]
    )
    frames = []
    reset_peak_memory()
    with timed() as clock:
        for which in MODELS:
            with as_model(model, which):
                frame = evaluate_model(
                    model, tokenizer, rows, per_row, cfg.seed, batch_size, progress, cfg.cuda_graphs, per_row_notes
                )
            frames.append(pd.concat([frame.drop(columns="question_id"), labels], axis=1).assign(model=which))
    table = pd.concat(frames, ignore_index=True)
    # Rewritten on every call, like evaluation.csv: the sweep's own outputs, re-running the step redoes them. One
    # set, replaced together: the recommendation never stands beside tables of another sweep.
    from .plots import HEATMAP_SAVE, plot_sweep_heatmaps

    summary = summarize_sweep(table)
    recommendation = recommendation_record(recommend_settings(summary), clock["seconds"], len(table), memory_snapshot())
    write_files_atomic({
        runs.run_path(run_dir, runs.SWEEP): csv_bytes(table),
        runs.run_path(run_dir, SUMMARY_FILE): csv_bytes(summary),
        runs.run_path(run_dir, runs.RECOMMENDED): json_bytes(recommendation),
        runs.run_path(run_dir, HEATMAP_FILE): figure_bytes(plot_sweep_heatmaps(summary), **HEATMAP_SAVE),
    }, "the sweep's tables, recommendation and heatmaps")
    return table


def read_sweep(run_dir: str | os.PathLike):
    """run_dir/sweep.csv as run_sweep wrote it: one row per model x setting x sample x question."""
    import pandas as pd

    path = runs.run_path(run_dir, runs.SWEEP)
    if not path.exists():
        raise ConfigError(f"{path} does not exist. Run notebook 06 or `python -m semifinetune sweep --run-dir {run_dir}` first.")
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def summarize_sweep(table):
    """One row per model x setting: the aggregated metrics over questions and samples."""
    from .evaluate import summarize

    return summarize(table, ["model", *SETTING_COLUMNS])


def recommend_settings(summary, model: str = "tuned") -> dict:
    """The setting the rule in this module's docstring picks for `model` from a summarize_sweep table."""
    rows = summary[summary["model"] == model]
    if rows.empty:
        raise ConfigError(f"The sweep summary has no rows for model {model!r} (models: {sorted(set(summary['model']))}).")

    def key(row) -> tuple:
        distance = abs(row["temperature"] - DEEPSEEK["temperature"]) + abs(row["top_p"] - DEEPSEEK["top_p"])
        # rounded: float means of the same counts must tie exactly
        return (-round(row["recall"], 9), -round(row["eos_rate"], 9), round(row["repeat_4gram"], 9), round(distance, 9))

    best = min((row for _, row in rows.iterrows()), key=key)
    return {
        "rule": RULE,
        "model": model,
        **{col: _plain(best[col]) for col in SETTING_COLUMNS},
        **{col: _plain(best[col]) for col in ("recall", "eos_rate", "repeat_4gram", "answers")},
    }


def _plain(value):
    """numpy scalars as plain Python numbers, for JSON."""
    return value.item() if hasattr(value, "item") else value


def recommendation_record(recommendation: dict, seconds: float, rows: int, memory: dict | None = None) -> dict:
    """recommended_settings.json's content: the recommendation, the sweep's time and answers, and its memory (peaks
    since the sweep began, measure.memory_snapshot)."""
    return {**recommendation, "sweep_seconds": seconds, "sweep_answers": rows, "sweep_memory": memory or {}}


def temperature_comparison(table, low: float = 0.3, high: float = 0.6, boot: int = 2000, seed: int = 0):
    """Per model and metric: mean at `low` and `high`, the difference and its 95% bootstrap interval over questions.

    Rows of all other settings (top_p, ...) and samples are pooled; the bootstrap resamples questions (paired:
    each question's mean at `low` minus its mean at `high`), since samples of one question are not independent.
    A difference is beyond the noise when its interval excludes 0.
    """
    import numpy as np
    import pandas as pd

    missing = [t for t in (low, high) if not np.isclose(table["temperature"], t).any()]
    if missing:
        raise ConfigError(
            f"The sweep has no temperature {missing} (it has {sorted(set(table['temperature']))}). "
            "Add it to sweep_temperatures in config.json and run the sweep again."
        )
    rng = np.random.default_rng(seed)
    records = []
    for model, rows in table.groupby("model", sort=False):
        at = {t: rows[np.isclose(rows["temperature"], t)] for t in (low, high)}
        for metric, label in COMPARED_METRICS.items():
            per_question = pd.concat(
                {t: at[t].groupby("question_id")[metric].apply(lambda s: s.astype(float).mean()) for t in (low, high)}, axis=1
            ).dropna()
            diffs = (per_question[low] - per_question[high]).to_numpy()
            boots = rng.choice(diffs, size=(boot, len(diffs)), replace=True).mean(axis=1)
            ci_low, ci_high = np.percentile(boots, [2.5, 97.5])
            records.append(
                {
                    "model": model,
                    "metric": label,
                    f"T={low}": round(at[low][metric].astype(float).mean(), 3),
                    f"T={high}": round(at[high][metric].astype(float).mean(), 3),
                    "difference": round(diffs.mean(), 3),
                    "ci95_low": round(ci_low, 3),
                    "ci95_high": round(ci_high, 3),
                    "beyond_noise": bool(ci_low > 0 or ci_high < 0),  # from the interval before rounding
                    "questions": len(diffs),
                    "answers_each": len(at[low]),
                }
            )
    return pd.DataFrame(records)


def temperature_statement(comparison, low: float = 0.3, high: float = 0.6) -> str:
    """What the sweep says about `low` vs `high`, one line per model, from a temperature_comparison table."""
    lines = []
    for model, rows in comparison.groupby("model", sort=False):
        parts = []
        for _, r in rows.iterrows():
            verdict = "beyond the noise" if r["beyond_noise"] else "within the noise"
            parts.append(
                f"{r['metric']} {r[f'T={low}']:.3f} vs {r[f'T={high}']:.3f} "
                f"(difference {r['difference']:+.3f}, 95% CI {r['ci95_low']:+.3f} to {r['ci95_high']:+.3f}: {verdict})"
            )
        recall = rows[rows["metric"] == COMPARED_METRICS["recall"]].iloc[0]
        if not recall["beyond_noise"]:
            conclusion = f"on recall, {low} and {high} cannot be told apart with this many questions and samples"
        elif recall["difference"] > 0:
            conclusion = f"{low} gives higher recall than {high}"
        else:
            conclusion = f"{high} gives higher recall than {low}"
        lines.append(
            f"{model} model, temperature {low} vs {high} ({int(recall['questions'])} questions, "
            f"{int(recall['answers_each'])} answers at each temperature): " + "; ".join(parts) + f". So {conclusion}."
        )
    return "\n".join(lines)


def side_by_side(table, recommendation: dict | None = None, questions: int = 5, width: int | None = 200):
    """The first `questions` questions, base vs tuned answers at one setting (default: the recommended), sample 0;
    what each was scored on, and for an empty answer, why it is empty. Answers cut at `width` characters (None: whole)."""
    import numpy as np

    from .evaluate import answer_or_why

    rows = table[table["sample"] == table["sample"].min()]
    if recommendation:
        for col in SETTING_COLUMNS:
            rows = rows[np.isclose(rows[col], recommendation[col])]
    else:
        first = rows.iloc[0]
        for col in SETTING_COLUMNS:
            rows = rows[np.isclose(rows[col], first[col])]
    rows = rows.assign(answer=[answer_or_why(a, rule, n) for a, rule, n in
                               zip(rows["answer"], rows["scored_on"], rows["max_new_tokens"])])
    wide = rows.pivot_table(index=["question_id", "question", "keywords"], columns="model",
                            values=["answer", "correct", "scored_on"], aggfunc="first")
    wide.columns = [f"{model} {field.replace('_', ' ')}" for field, model in wide.columns]
    wide = wide.reset_index().drop(columns="question_id").head(questions)
    for col in [c for c in wide.columns if c.endswith(" answer")]:
        wide[col] = wide[col].astype(str).str.slice(0, width)  # width None: whole
    return wide.set_index("question")


def recommendation_line(recommendation: dict) -> str:
    """The recommended setting in one line, with the figures that chose it."""
    extra = "".join(f", {col} {recommendation[col]:g}" for col, off in (("repetition_penalty", 1.0),) if recommendation[col] != off)
    return (f"Recommended: temperature {recommendation['temperature']:g}, top_p {recommendation['top_p']:g}{extra}, "
            f"max_new_tokens {recommendation['max_new_tokens']:g}: the {recommendation['model']} model's mean recall "
            f"{recommendation['recall']:.3f}, EOS-stop rate {recommendation['eos_rate']:.2f} over "
            f"{recommendation['answers']:g} answers.")


def temperature_verdict(comparison, low: float = 0.3, high: float = 0.6) -> str:
    """Recall at `low` vs `high`, one line per model, and whether the difference is beyond the noise (its 95%
    bootstrap interval over questions excludes 0); temperature_statement gives every metric with its interval."""
    lines = []
    for model, rows in comparison.groupby("model", sort=False):
        recall = rows[rows["metric"] == COMPARED_METRICS["recall"]].iloc[0]
        if not recall["beyond_noise"]:
            verdict = "within the noise"
        else:
            verdict = f"{low if recall['difference'] > 0 else high} is better, beyond the noise"
        lines.append(f"{model}: recall {recall[f'T={low}']:.3f} at temperature {low} vs {recall[f'T={high}']:.3f} at "
                     f"{high}, {verdict} ({int(recall['questions'])} questions, {int(recall['answers_each'])} answers each).")
    return "\n".join(lines)


def answers_side_by_side(table, recommendation: dict | None = None, questions: int = 5):
    """side_by_side's questions with every answer whole, wrapped to the page (pandas cuts cells at 50 characters)."""
    from .tables import WrappedTable

    wide = side_by_side(table, recommendation, questions, width=None)
    rows = []
    for question, row in wide.iterrows():
        cells = {"question": question, "keywords": _keyword_text(row["keywords"])}
        for model in ("base", "tuned"):
            mark = "correct" if str(row[f"{model} correct"]).lower() == "true" else "not correct"
            cells[f"{model} answer"] = f"{row[f'{model} answer']}\n[{mark}; scored on {row[f'{model} scored on']}]"
        rows.append(cells)
    return WrappedTable(rows)


def _keyword_text(keywords) -> str:
    """[["TSMC", "Taiwan Semiconductor"], ["1987"]] as "TSMC or Taiwan Semiconductor; 1987"."""
    import json

    try:
        groups = json.loads(keywords) if isinstance(keywords, str) else keywords
        return "; ".join(" or ".join(group) for group in groups)
    except (ValueError, TypeError):
        return str(keywords)
