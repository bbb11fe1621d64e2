"""The pipeline's steps over one run directory; notebooks 01-06 and the CLI call these."""

from __future__ import annotations

import json
import os

from . import runs
from .atomic import write_json_atomic
from .config import ConfigError, RunConfig, make_config, save_config
from .runs import open_run  # noqa: F401 - notebooks 02-06 import it from here

GUIDE_QUESTION = "What does NVIDIA Corporation primarily manufacture?"


def setup(run_dir: str | os.PathLike, profile: str = "cpu", overrides: dict | None = None, overwrite: bool = False):
    """Notebook 01: resolve the config, check the machine, write config.json and env.json. Returns (cfg, report)."""
    from .env import environment_report
    from .models import check_loadable
    from .train import check_trackers

    cfg = make_config(profile, overrides)
    report = environment_report()
    check_loadable(cfg, report)
    check_trackers(cfg)
    _refuse_to_overwrite(run_dir, cfg, overwrite)
    if overwrite:
        clear_results(run_dir)  # a new run never mixes with the old one's adapter, checkpoints or tables
    runs.ensure_run_dir(run_dir)
    save_config(cfg, run_dir)
    write_json_atomic(runs.run_path(run_dir, runs.ENV), report)
    return cfg, report


def _refuse_to_overwrite(run_dir, cfg: RunConfig, overwrite: bool) -> None:
    """A run directory with results under another config is never overwritten silently."""
    path = runs.run_path(run_dir, runs.CONFIG)
    results = runs.existing_results(run_dir)
    if overwrite or not results or not path.exists():
        return
    if json.loads(path.read_text(encoding="utf-8")) != cfg.to_dict():
        raise ConfigError(
            f"{run_dir} already holds results ({', '.join(results)}) from another config. "
            "Choose a new run_dir, or pass overwrite=True (--overwrite) to replace them."
        )


def clear_results(run_dir: str | os.PathLike) -> list[str]:
    """Remove the results a new run replaces (adapter, checkpoints, logs, tables); their names."""
    import shutil

    removed = runs.existing_results(run_dir)
    for name in removed:
        path = runs.run_path(run_dir, name)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def load_baseline(run_dir: str | os.PathLike) -> dict:
    """Notebook 02: load the model from the run's config, measure it, and record its answer before fine-tuning."""
    from .generate import SamplingSettings, generate
    from .measure import memory_snapshot, timed
    from .models import layer_precision_report, load_model
    from .seeding import seed_everything

    cfg = open_run(run_dir)
    seed_everything(cfg.seed)
    before = memory_snapshot()
    with timed() as load:
        model, tokenizer = load_model(cfg)
    after = memory_snapshot()
    settings = SamplingSettings(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
    (answer,) = generate(model, tokenizer, [GUIDE_QUESTION], settings, seed=cfg.seed, cuda_graphs=cfg.cuda_graphs)
    result = {
        "model_name": cfg.model_name,
        "backend": model.semifinetune_backend,
        "load_seconds": load["seconds"],
        "memory_before": before,
        "memory_after": after,
        "layers": layer_precision_report(model),
        "question": GUIDE_QUESTION,
        "answer": answer.to_dict(),
    }
    write_json_atomic(runs.run_path(run_dir, runs.BASELINE), result)
    return result


def run_pipeline(run_dir: str | os.PathLike, profile: str, overrides: dict | None = None, overwrite: bool = False) -> dict:
    """The whole job, step by step, as notebooks 01-06 do it; returns each step's summary."""
    from .compare import compare_retrieval, counts_line
    from .data import prepare_data
    from .evaluate import compare_base_tuned
    from .sweep import run_sweep
    from .train import refuse_to_overwrite, train

    cfg, _ = setup(run_dir, profile, overrides, overwrite=overwrite)  # 01
    refuse_to_overwrite(run_dir, resume=False, overwrite=overwrite)  # same config, results kept: stop now, not at 05
    _step("04 format data")  # before 02: bad data fails here, before any model loads
    data = prepare_data(run_dir)
    _step("02 load + baseline")
    load_baseline(run_dir)
    _step("05 train")
    stats = train(cfg, run_dir)
    _step("06 evaluate base vs tuned")
    evaluation = compare_base_tuned(run_dir)
    retrieval = ""
    if cfg.retrieval_compare_k > 0:
        _step(f"06 base and tuned, without and with the top {cfg.retrieval_compare_k} training pairs")
        retrieval = counts_line(compare_retrieval(run_dir, reuse_evaluation=True))  # held-out, no notes: just measured
    _step("06 sampling sweep")
    run_sweep(run_dir)
    recommended = json.loads(runs.run_path(run_dir, runs.RECOMMENDED).read_text(encoding="utf-8"))
    return {"data": data, "train": stats, "evaluation": evaluation, "retrieval": retrieval, "recommended": recommended}


def _step(name: str) -> None:
    print(f"== {name}", flush=True)
