"""What the notebooks show a user: the config summary, the bar charts, the one-line verdicts, whole answers wrapped,
and the loss plot's single legend. Hand-made tables with hand-checked values."""

import pandas as pd
import pytest

from semifinetune.compare import distractors_label, retrieval_verdict
from semifinetune.evaluate import base_tuned_verdict
from semifinetune.plots import BASE_VS_TUNED_PLOT, RETRIEVAL_PLOT, plot_base_vs_tuned, plot_losses, plot_retrieval
from semifinetune.sweep import recommendation_line, temperature_comparison, temperature_verdict
from semifinetune.tables import WrappedTable, config_summary


def _evaluation(run_dir, base: list[bool], tuned: list[bool], base_eos: list[bool], tuned_eos: list[bool], notes_k=None):
    rows = [{"model": model, "question_id": q, "question": f"q{q}", "correct": ok, "eos_stop": eos}
            for model, correct, stops in (("base", base, base_eos), ("tuned", tuned, tuned_eos))
            for q, (ok, eos) in enumerate(zip(correct, stops))]
    table = pd.DataFrame(rows)
    if notes_k is not None:  # evaluated with notes (retrieval_k): notes_k per answer, 0 where none scored above the floor
        table["notes_k"] = [notes_k[q] for q in table["question_id"]]
    table.to_csv(run_dir / "evaluation.csv", index=False)


def test_the_verdict_says_when_the_answers_had_notes(tmp_path):
    _evaluation(tmp_path, base=[True, False], tuned=[True, True], base_eos=[True] * 2, tuned_eos=[True] * 2, notes_k=[1, 0])
    assert ", each given the top training pair in its prompt where one matches (retrieval_k;" in base_tuned_verdict(tmp_path)
    _evaluation(tmp_path, base=[True, False], tuned=[True, True], base_eos=[True] * 2, tuned_eos=[True] * 2)
    assert "training pair" not in base_tuned_verdict(tmp_path)


def _retrieval(run_dir, held: dict, general: dict, k: int = 1):
    """retrieval.csv from {(model, with_notes): [correct per question]} per set."""
    table = _retrieval_table(held, general, k)
    table.to_csv(run_dir / "retrieval.csv", index=False)
    return table


def _label(noted, k: int) -> str:
    """(model, noted) keys: False for no notes, True for the top k, "distractors" for the third column."""
    return distractors_label(k) if noted == "distractors" else f"top {k}" if noted else "off"


HELD = {("base", False): [False] * 20, ("base", True): [True] * 16 + [False] * 4,
        ("tuned", False): [True] * 3 + [False] * 17, ("tuned", True): [True] * 17 + [False] * 3}
GENERAL = {("base", False): [True] * 10, ("base", True): [True] * 10,
           ("tuned", False): [True] * 6 + [False] * 4, ("tuned", True): [True] * 9 + [False]}


# --- the config, short ---


def test_config_summary_is_five_lines_a_user_checks(tiny_cfg):
    summary = config_summary(tiny_cfg, "runs/demo")
    assert list(summary) == ["model", "data", "recipe", "steps", "run directory"]
    assert summary["model"] == "tiny:random-qwen2 (tiny profile)"
    assert summary["data"] == "train data/semiconductor_train.jsonl; held-out questions data/semiconductor_eval.jsonl"
    effective = tiny_cfg.per_device_train_batch_size * tiny_cfg.gradient_accumulation_steps
    assert summary["steps"] == f"{tiny_cfg.max_steps} at effective batch {effective}"
    assert summary["run directory"] == "runs/demo"
    # shown whole, one line each (a DataFrame cuts values at 50 characters)
    lines = repr(summary).splitlines()
    assert len(lines) == 5 and lines[1] == "data           " + summary["data"]
    assert f"<td style=\"text-align: left; white-space: pre-wrap\">{summary['data']}</td>" in summary._repr_html_()


def test_config_summary_names_the_recipe_and_4bit(cpu_cfg):
    from semifinetune.config import make_config

    t4 = make_config("t4")
    assert config_summary(t4)["model"] == "unsloth/DeepSeek-R1-Distill-Qwen-1.5B-bnb-4bit (t4 profile, 4-bit)"
    assert config_summary(cpu_cfg)["recipe"] == "facts: lr 0.002, LoRA r64/alpha128 on all-linear"
    assert "run directory" not in config_summary(cpu_cfg)


def test_lora_summary_of_the_guides_r1_numbers():
    from semifinetune.lora import r1_lora_report
    from semifinetune.tables import lora_summary

    summary = lora_summary(r1_lora_report())
    assert summary["trainable parameters"] == "4,358,144 (0.245% of the base model's)"
    assert summary["base model parameters"].startswith("1,777,088,000 (frozen")
    assert summary["adapted modules"] == "q_proj x 28, k_proj x 28, v_proj x 28, o_proj x 28"
    assert summary["adapter size"] == "17.4 MB (fp32)"


# --- base vs tuned ---


def test_base_vs_tuned_verdict_and_bars(tmp_path):
    _evaluation(tmp_path, base=[False] * 18 + [True] * 2, tuned=[True] * 12 + [False] * 8,
                base_eos=[True] * 9 + [False] * 11, tuned_eos=[True] * 20)
    assert base_tuned_verdict(tmp_path) == (
        "The tuned model answers 12 of 20 held-out questions correctly, the base model 2 (10 more, beyond the noise of "
        "20 questions); the tuned model ends its answer by itself in 100% of them, the base model in 45%.")
    fig = plot_base_vs_tuned(tmp_path)
    correct, eos = fig.axes
    assert [bar.get_height() for bar in correct.patches] == [2, 12]
    assert [t.get_text() for t in correct.texts] == ["2 of 20", "12 of 20"]
    assert [round(bar.get_height(), 2) for bar in eos.patches] == [0.45, 1.0]
    assert [t.get_text() for t in correct.get_xticklabels()] == ["base", "tuned"]
    assert (tmp_path / BASE_VS_TUNED_PLOT).stat().st_size > 5000


def test_base_vs_tuned_within_the_noise(tmp_path):
    # 2 questions only tuned got right, 1 only base: McNemar p = 1
    _evaluation(tmp_path, base=[True, True, False, False, True], tuned=[True, False, True, True, True],
                base_eos=[True] * 5, tuned_eos=[True] * 5)
    assert "the base model 3 (1 more, within the noise of 5 questions)" in base_tuned_verdict(tmp_path)
    _evaluation(tmp_path, base=[True, False], tuned=[False, True], base_eos=[True] * 2, tuned_eos=[True] * 2)
    assert "answers 1 of 2 held-out questions correctly, the base model 1 (as many, within the noise" in base_tuned_verdict(tmp_path)


# --- the retrieval 2 x 2 ---


def test_retrieval_verdict_one_line_per_set_with_the_counts():
    from semifinetune.compare import mcnemar_p

    table = _retrieval_table()
    assert retrieval_verdict(table).splitlines() == [
        "Most held-out answers right: the tuned model with the top note, 17 of 20 (85%; 95% interval 64%-95%), 1 more "
        "than the base model with the top note (within the noise).",
        "held-out, 20 questions: base 0, base + top 1 16, tuned 3, tuned + top 1 17 correct: retrieval beats the "
        "fine-tune; using both changes nothing beyond the noise.",
        "general, 10 questions: base 10, base + top 1 10, tuned 6, tuned + top 1 9 correct: the fine-tune costs 4; "
        "retrieval keeps them; both costs 1 (all within the noise).",
    ]
    assert "p =" not in retrieval_verdict(table)
    assert mcnemar_p(0, 4) > 0.05  # the 4 general answers the fine-tune lost are within the noise of 10
    lost = {**GENERAL, ("tuned", False): [True] * 2 + [False] * 28, ("base", False): [True] * 30,
            ("base", True): [True] * 30, ("tuned", True): [True] * 30}
    assert "the fine-tune costs 28, beyond the noise; retrieval keeps them; both keeps them." in retrieval_verdict(
        _retrieval_table(general=lost))
    flipped = {**HELD, ("base", True): [True] * 3 + [False] * 17, ("tuned", False): [True] * 16 + [False] * 4}
    assert "the fine-tune beats retrieval" in retrieval_verdict(_retrieval_table(held=flipped))


def _retrieval_table(held=HELD, general=GENERAL, k=1):
    rows = [{"set": name, "model": model, "retrieval": _label(noted, k), "notes_k": k if noted else 0,
             "question_id": q, "correct": ok}
            for name, cells in (("held-out", held), ("general", general))
            for (model, noted), correct in cells.items() for q, ok in enumerate(correct)]
    return pd.DataFrame(rows)


def test_retrieval_bars_read_as_the_2x2(tmp_path):
    _retrieval(tmp_path, HELD, GENERAL, k=3)
    fig = plot_retrieval(tmp_path)
    held, general = [ax for ax in fig.axes if ax.patches]
    assert held.get_title() == "held-out: 20 questions" and general.get_title() == "general: 10 questions"
    assert [bar.get_height() for bar in held.patches] == [0, 16, 3, 17]
    assert [bar.get_height() for bar in general.patches] == [10, 10, 6, 9]
    assert [t.get_text() for t in held.get_xticklabels()] == ["base", "base\n+ top 3", "tuned", "tuned\n+ top 3"]
    assert [bool(bar.get_hatch()) for bar in held.patches] == [False, True, False, True]  # with notes: hatched
    assert (tmp_path / RETRIEVAL_PLOT).stat().st_size > 5000


def test_the_distractor_column_is_counted_drawn_and_said(tmp_path):
    held = {**HELD, ("base", "distractors"): [True] * 2 + [False] * 18, ("tuned", "distractors"): [True] * 4 + [False] * 16}
    general = {**GENERAL, ("base", "distractors"): [True] * 9 + [False], ("tuned", "distractors"): [True] * 8 + [False] * 2}
    _retrieval(tmp_path, held, general, k=3)
    held_ax, _ = [ax for ax in plot_retrieval(tmp_path).axes if ax.patches]
    assert [bar.get_height() for bar in held_ax.patches] == [0, 16, 2, 3, 17, 4]
    assert [bar.get_hatch() for bar in held_ax.patches] == [None, "//", "..", None, "//", ".."]
    assert held_ax.get_xticklabels()[2].get_text() == "base\n+ 3\ndistractors"  # three short lines: no overlap
    verdict = retrieval_verdict(_retrieval_table(held, general, k=3))
    assert "tuned + top 3 17, base + 3 distractors 2, tuned + 3 distractors 4 correct" in verdict


# --- the sweep ---


def _sweep(recall_low, recall_high, questions=8, samples=2):
    rows = [dict(model="tuned", question_id=q, temperature=t, top_p=0.95, sample=s, recall=recall(q, s),
                 eos_stop=True, repeat_4gram=0.1)
            for q in range(questions) for t, recall in ((0.3, recall_low), (0.6, recall_high)) for s in range(samples)]
    return pd.DataFrame(rows)


def test_temperature_verdict_one_line_per_model():
    clear = temperature_comparison(_sweep(lambda q, s: 1.0, lambda q, s: 0.0))
    assert temperature_verdict(clear) == ("tuned: recall 1.000 at temperature 0.3 vs 0.000 at 0.6, 0.3 is better, "
                                          "beyond the noise (8 questions, 16 answers each).")
    noisy = temperature_comparison(_sweep(lambda q, s: float(q % 2), lambda q, s: float(1 - q % 2)))
    assert temperature_verdict(noisy).endswith("within the noise (8 questions, 16 answers each).")


def test_recommendation_line():
    recommended = {"model": "tuned", "temperature": 0.3, "top_p": 0.95, "repetition_penalty": 1.0, "max_new_tokens": 64,
                   "recall": 0.4125, "eos_rate": 0.98, "answers": 36}
    assert recommendation_line(recommended) == ("Recommended: temperature 0.3, top_p 0.95, max_new_tokens 64: the tuned "
                                                "model's mean recall 0.412, EOS-stop rate 0.98 over 36 answers.")
    assert "repetition_penalty 1.1," in recommendation_line({**recommended, "repetition_penalty": 1.1})


# --- whole answers ---


def test_wrapped_table_keeps_every_word_and_wraps():
    answer = " ".join(f"word{i}" for i in range(60))  # 469 characters: pandas would show 50
    table = WrappedTable([{"question": "Who?", "tuned answer": answer + "\n[correct]"}], width=60)
    text = repr(table)
    assert " ".join(text.split()).replace("tuned answer: ", "").endswith(answer + " [correct]")
    assert max(len(line) for line in text.splitlines()) <= 60
    assert text.splitlines()[1].startswith("tuned answer: word0")
    html = table._repr_html_()
    assert "white-space: pre-wrap" in html and answer in html and html.count("<tr>") == 2
    assert "&lt;think&gt;" in WrappedTable([{"a": "<think>"}])._repr_html_()  # model text is escaped


# --- the loss plot ---


def test_loss_plot_has_one_legend_for_both_axes():
    log = {"train_loss": [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}],
           "eval_loss": [{"step": 2, "loss": 2.7}],
           "validation_loss": [{"step": 0, "loss": 3.1}, {"step": 2, "loss": 2.8}],
           "validation_recall": [{"step": 2, "recall": 0.4}],
           "stats": {"kept_step": 2}}
    fig = plot_losses(log)
    assert all(ax.get_legend() is None for ax in fig.axes)  # none inside the axes, over the curves
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "train loss", "held-out loss", "validation loss", "adapter kept: step 2", "validation recall (chooses)"]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()  # the figure comes back closed, without a canvas of its own
    box, plot = legend.get_window_extent(renderer), fig.axes[0].get_window_extent(renderer)
    assert box.y1 <= plot.y0  # under the axes, not over them


@pytest.mark.parametrize("keys", [("train_loss",), ("train_loss", "eval_loss")])
def test_loss_plot_without_validation(keys):
    log = {key: [{"step": 1, "loss": 3.0}] for key in keys}
    (legend,) = plot_losses(log).legends
    assert [t.get_text() for t in legend.get_texts()] == ["train loss", "held-out loss"]
