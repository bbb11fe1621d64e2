"""The sweep on the tiny run: grid, files, recommendation rule, 0.3 vs 0.6, side by side, heatmaps, CLI, playground."""

import json

import pandas as pd
import pytest

from semifinetune.config import ConfigError, make_config
from semifinetune.sweep import (
    RULE,
    read_sweep,
    recommend_settings,
    run_sweep,
    side_by_side,
    summarize_sweep,
    sweep_settings,
    temperature_comparison,
    temperature_statement,
)


def test_grid_is_the_product_of_the_lists():
    cfg = make_config("tiny", {"sweep_temperatures": [0.3, 0.6, 1.0], "sweep_top_ps": [0.9, 1.0], "sweep_repetition_penalties": [1.0, 1.1]})
    grid = sweep_settings(cfg)
    assert len(grid) == 12
    assert {s.max_new_tokens for s in grid} == {cfg.max_new_tokens}  # empty sweep_max_new_tokens: the run's own
    assert len(sweep_settings(make_config("tiny", {"sweep_max_new_tokens": [8, 16]}))) == 4


def _summary(rows):
    base = {"model": "tuned", "repetition_penalty": 1.0, "max_new_tokens": 64, "answers": 10}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_recommendation_rule_on_hand_made_tables():
    pick = lambda rows: (lambda r: (r["temperature"], r["top_p"]))(recommend_settings(_summary(rows)))
    row = lambda t, p, recall, eos, rep: dict(temperature=t, top_p=p, recall=recall, eos_rate=eos, repeat_4gram=rep)
    # highest recall wins, whatever the rest
    assert pick([row(0.3, 0.9, 0.5, 1.0, 0.0), row(1.0, 1.0, 0.6, 0.1, 0.9)]) == (1.0, 1.0)
    # recall tied: higher EOS-stop rate
    assert pick([row(0.3, 0.9, 0.5, 0.7, 0.0), row(1.0, 1.0, 0.5, 0.8, 0.9)]) == (1.0, 1.0)
    # recall and EOS tied: less repetition
    assert pick([row(0.3, 0.9, 0.5, 0.8, 0.1), row(1.0, 1.0, 0.5, 0.8, 0.2)]) == (0.3, 0.9)
    # all tied: closest to DeepSeek's 0.6 / 0.95
    assert pick([row(0.3, 0.9, 0.5, 0.8, 0.1), row(0.7, 0.95, 0.5, 0.8, 0.1), row(1.0, 1.0, 0.5, 0.8, 0.1)]) == (0.7, 0.95)
    # only the tuned model's rows count
    mixed = _summary([row(0.3, 0.9, 0.4, 1, 0), row(0.6, 0.95, 0.3, 1, 0)])
    mixed.loc[len(mixed)] = {**mixed.iloc[0].to_dict(), "model": "base", "recall": 0.9, "temperature": 1.0}
    assert recommend_settings(mixed)["temperature"] == 0.3
    assert recommend_settings(mixed)["rule"] == RULE


def _table(recall_low, recall_high, questions=8, samples=2):
    rows = []
    for q in range(questions):
        for t, recall in ((0.3, recall_low), (0.6, recall_high)):
            for s in range(samples):
                rows.append(dict(model="tuned", question_id=q, temperature=t, top_p=0.95, sample=s,
                                 recall=recall(q, s), eos_stop=True, repeat_4gram=0.1))
    return pd.DataFrame(rows)


def test_temperature_comparison_separates_a_real_difference_from_noise():
    clear = temperature_comparison(_table(lambda q, s: 1.0, lambda q, s: 0.0)).set_index("metric")
    assert clear.loc["recall", "difference"] == 1.0 and clear.loc["recall", "beyond_noise"]
    assert (clear.loc["recall", "T=0.3"], clear.loc["recall", "T=0.6"]) == (1.0, 0.0)
    assert not clear.loc["EOS-stop rate", "beyond_noise"]  # identical: difference 0, interval [0, 0]
    assert "0.3 gives higher recall than 0.6" in temperature_statement(temperature_comparison(_table(lambda q, s: 1.0, lambda q, s: 0.0)))
    # half the questions better at 0.3, half at 0.6: mean difference 0, within the noise
    noisy = temperature_comparison(_table(lambda q, s: float(q % 2), lambda q, s: float(1 - q % 2))).set_index("metric")
    assert noisy.loc["recall", "difference"] == 0.0 and not noisy.loc["recall", "beyond_noise"]
    statement = temperature_statement(noisy.reset_index())
    assert "cannot be told apart" in statement and "8 questions, 16 answers at each temperature" in statement


def test_temperature_comparison_needs_both_temperatures():
    table = _table(lambda q, s: 1.0, lambda q, s: 0.0)
    with pytest.raises(ConfigError, match="no temperature"):
        temperature_comparison(table[table["temperature"] == 0.3])


@pytest.fixture(scope="module")
def swept(tiny_run):
    return run_sweep(tiny_run, progress=False)


def test_sweep_table_and_files(swept, tiny_run):
    # tiny profile: temperatures 0.3 and 0.6, top_p 1.0, 1 sample, first 4 questions, 2 models
    assert len(swept) == 2 * 2 * 1 * 4
    assert set(swept["model"]) == {"base", "tuned"}
    by_model = swept.groupby("model")["question"].apply(list)
    assert by_model["base"] == by_model["tuned"]  # the same prompts for both
    assert sorted(set(swept["sample"])) == [0] and sorted(set(swept["temperature"])) == [0.3, 0.6]
    for name in ("sweep.csv", "sweep_summary.csv", "sweep_heatmaps.png", "recommended_settings.json"):
        assert (tiny_run / name).stat().st_size > 0
    recommended = json.loads((tiny_run / "recommended_settings.json").read_text())
    assert recommended["model"] == "tuned" and recommended["temperature"] in (0.3, 0.6) and recommended["rule"] == RULE
    assert recommended["sweep_answers"] == 16
    back = read_sweep(tiny_run)
    assert len(back) == 16 and list(back["answer"].fillna("")) == list(swept["answer"])
    summary = summarize_sweep(back)
    assert len(summary) == 4 and set(summary["answers"]) == {4}


def test_side_by_side_at_the_recommended_setting(swept):
    summary = summarize_sweep(swept)
    wide = side_by_side(swept, recommend_settings(summary), questions=3)
    assert len(wide) == 3
    assert {"base answer", "tuned answer", "base correct", "tuned correct", "base scored on", "tuned scored on",
            "keywords"} <= set(wide.columns)
    n = recommend_settings(summary)["max_new_tokens"]
    for model in ("base", "tuned"):  # an empty answer says why: the tiny model's reasoning never finishes
        cut = wide[f"{model} scored on"] == "unfinished reasoning"
        assert list(wide.loc[cut, f"{model} answer"]) == [
            f"(reasoning did not finish in max_new_tokens={n})"] * int(cut.sum())
    assert (wide[["base scored on", "tuned scored on"]] == "unfinished reasoning").any(axis=None)


def test_heatmaps_have_one_panel_per_model_and_metric(swept):
    from semifinetune.plots import plot_sweep_heatmaps

    fig = plot_sweep_heatmaps(summarize_sweep(swept))
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert sorted(ax.get_title() for ax in panels) == [
        "base: EOS-stop rate", "base: mean keyword recall", "tuned: EOS-stop rate", "tuned: mean keyword recall"]


def test_cli_evaluate_and_sweep(tiny_run, capsys):
    from semifinetune.cli import main

    assert main(["evaluate", "--run-dir", str(tiny_run)]) == 0
    assert "correct of 6 held-out questions" in capsys.readouterr().out
    assert main(["sweep", "--run-dir", str(tiny_run)]) == 0
    out = capsys.readouterr().out
    assert "recommended:" in out and "temperature 0.3 vs 0.6" in out


def test_cli_without_adapter_is_one_line(tmp_path, capsys):
    from semifinetune.cli import main
    from semifinetune.pipeline import setup

    setup(tmp_path, "tiny")
    assert main(["sweep", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "adapter_config.json does not exist" in err


def test_playground_skips_cleanly_outside_an_interactive_session(tiny_run, capsys):
    from semifinetune.playground import interactive_session, playground

    assert playground(tiny_run, interactive=False) is None
    assert capsys.readouterr().out == "Playground skipped: interactive=False (papermill runs set it).\n"
    assert interactive_session(True) == (False, "not running in a Jupyter kernel")  # pytest: no kernel
