"""Notebook 06's workload counted before it runs, its expected duration, and the sweep sized to a T4."""

import json

from semifinetune.config import make_config
from semifinetune.workload import fit_to_card, notebook06_answers, tokens_per_s


def test_the_t4_workload_counts_every_answer_notebook_06_generates():
    parts = notebook06_answers(make_config("t4"))
    # 73 held-out x 2 models; the retrieval comparison adds, per model, held-out with notes and with distractors and
    # 30 general without notes, with notes and with distractors; the sweep 5 x 3 settings x 3 samples x 73 x 2
    assert parts == {"evaluation, base and tuned": (146, 146 * 512), "retrieval comparison": (472, 472 * 512),
                     "sweep": (6570, 6570 * 512)}


def test_a_t4_gets_fewer_sweep_samples_unless_the_user_chose_them():
    cfg = make_config("t4")
    fitted, note = fit_to_card(cfg, "Tesla T4", set())
    assert fitted.sweep_samples < cfg.sweep_samples and "--set sweep_samples=3 keeps the full grid" in note
    rate, kind = tokens_per_s("Tesla T4")
    assert sum(t for _, t in notebook06_answers(fitted).values()) / rate <= 15 * 60 and kind == "estimated"
    assert fit_to_card(cfg, "Tesla T4", {"sweep_samples"}) == (cfg, "")
    assert fit_to_card(cfg, "NVIDIA H200", set()) == (cfg, "")  # 3 minutes there
    assert fit_to_card(make_config("cpu"), "Tesla T4", set())[1] == ""  # another profile's grid is its own


def test_setup_on_a_t4_writes_the_fitted_grid_and_says_why(tmp_path, monkeypatch, capsys):
    import semifinetune.env as env
    import semifinetune.models as models
    from semifinetune.pipeline import setup

    report = {**env.environment_report(), "cuda_available": True, "gpu_name": "Tesla T4"}
    monkeypatch.setattr(env, "environment_report", lambda: report)
    monkeypatch.setattr(models, "check_loadable", lambda cfg, report: None)  # no CUDA here to load onto
    cfg, _ = setup(tmp_path / "run", "t4")
    fitted = fit_to_card(make_config("t4"), "Tesla T4", set())[0].sweep_samples
    assert cfg.sweep_samples == fitted < 3 and f"sweep_samples 3 -> {fitted}" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["sweep_samples"] == fitted


def test_the_workload_line_names_the_parts_and_the_card(tiny_run):
    from semifinetune.runs import open_run
    from semifinetune.workload import workload_line

    line = workload_line(tiny_run)
    parts = notebook06_answers(open_run(tiny_run))
    for name, (answers, tokens) in parts.items():
        assert f"{name}: {answers:,} answers, at most {tokens:,} new tokens" in line
    assert f"in all: {sum(a for a, _ in parts.values()):,} answers" in line
    assert "not measured here" in line  # CPU: no rate, the progress bars estimate it
