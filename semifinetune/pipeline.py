"""The pipeline's steps over one run directory; notebooks 01-06 and the CLI call these."""

from __future__ import annotations

import dataclasses
import json
import os

from . import runs
from .atomic import write_json_atomic
from .colab import GPU_HINT, check_files_on_drive, on_colab
from .config import ConfigError, RunConfig, make_config, parse_overrides, save_config, training_steps
from .runlock import holds_run_dir
from .runs import open_run  # noqa: F401 - notebooks 02-06 import it from here


@holds_run_dir("setup", create=True)
def setup(
    run_dir: str | os.PathLike, profile: str = "auto", overrides: dict | str | None = None, overwrite: bool = False,
    recipe: str = "", **data_files: str,
):
    """Notebook 01: resolve the config, check the machine and the data files, write config.json and env.json.

    recipe '' keeps the profile's own (or the one named among the overrides); 'guide' or 'facts' chooses one.
    data_files: train_file, eval_file, validation_file as notebook 01's parameters give them; one left at its
    default leaves the overrides' value (or the default) in place.

    profile 'auto' is resolved here, once, by the machine (t4 with a CUDA GPU, cpu elsewhere); config.json keeps the
    resolved name, which notebooks 02-06 read. Returns (cfg, report).
    """
    from .data import describe_data, read_splits, save_samples
    from .env import choose_profile, environment_report
    from .models import check_loadable
    from .train import check_trackers
    from .workload import fit_to_card

    report = environment_report()
    resolved = choose_profile(report, profile)
    if recipe:
        overrides = {**parse_overrides(overrides), "recipe": recipe}
    overrides = {**parse_overrides(overrides), **data_settings(data_files)}
    cfg = make_config(resolved, overrides)
    cfg, fitted = fit_to_card(cfg, report.get("gpu_name") or "", set(parse_overrides(overrides)))
    if fitted:
        print(fitted)
    if profile != resolved:
        print(f"profile {profile} -> {resolved} ({'a CUDA GPU' if report['cuda_available'] else 'no CUDA GPU'} here)")
    if not report["cuda_available"] and on_colab():
        print(f"This Colab runtime has no GPU, so the run uses the small CPU model. {GPU_HINT}")
    check_loadable(cfg, report)
    check_trackers(cfg)
    found = read_splits(cfg)  # a wrong path fails here, not at notebook 04 after two model loads
    check_files_on_drive(cfg)  # on Colab: a file on the runtime's own disk is gone in 04's runtime
    cfg = dataclasses.replace(cfg, max_steps=training_steps(cfg, len(found["train"].records)))
    print(describe_data(cfg, found))
    _refuse_to_overwrite(run_dir, cfg, overwrite)
    if overwrite:
        clear_results(run_dir)  # a new run never mixes with the old one's adapter, checkpoints or tables
    runs.ensure_run_dir(run_dir)
    save_samples(run_dir, found)
    save_config(cfg, run_dir)
    write_json_atomic(runs.run_path(run_dir, runs.ENV), report)
    runs.remember_run(run_dir)  # notebooks 02-06 open this run unless given another
    return cfg, report


def data_settings(data_files: dict[str, str]) -> dict[str, str]:
    """The data parameters that differ from RunConfig's defaults, as overrides."""
    defaults = RunConfig()
    unknown = set(data_files) - {"train_file", "eval_file", "validation_file"}
    if unknown:
        raise ConfigError(f"setup() takes train_file, eval_file and validation_file as data parameters, not {', '.join(sorted(unknown))}")
    return {key: str(value) for key, value in data_files.items() if value != getattr(defaults, key)}


def _refuse_to_overwrite(run_dir, cfg: RunConfig, overwrite: bool) -> None:
    """A run directory with results under another config is never overwritten silently.

    Raising max_steps alone is allowed: the results stay, and notebook 05 with resume=True trains on from them.
    """
    path = runs.run_path(run_dir, runs.CONFIG)
    results = runs.existing_results(run_dir)
    if overwrite or not results or not path.exists():
        return
    old, new = json.loads(path.read_text(encoding="utf-8")), cfg.to_dict()
    changed = sorted(key for key in new if old.get(key) != new[key])
    if not changed:
        return
    if set(changed) <= {"max_steps", "num_train_epochs"} and isinstance(old.get("max_steps"), int) and new["max_steps"] > old["max_steps"]:
        print(f"{path}: max_steps {old['max_steps']} -> {new['max_steps']}; the results are kept. Train on from the "
              "last checkpoint with notebook 05's resume=True (`python -m semifinetune train --run-dir ... --resume`).")
        return
    differences = ", ".join(f"{key} {old.get(key)!r} -> {new[key]!r}" for key in changed)
    raise ConfigError(
        f"{run_dir} already holds results ({', '.join(results)}) from another config ({differences}). "
        "Choose a new run_dir, or pass overwrite=True (notebook 01's overwrite parameter; --overwrite for "
        "`setup`, `run` and `notebooks`) to replace them."
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


@holds_run_dir("the baseline (notebook 02)")
def load_baseline(run_dir: str | os.PathLike) -> dict:
    """Notebook 02: load the model from the run's config, measure it, and record its answer before fine-tuning."""
    from .generate import SamplingSettings, generate
    from .loaded import forget
    from .measure import memory_snapshot, timed
    from .models import layer_precision_report, load_model
    from .seeding import seed_everything
    from .evaluate import sample_question

    cfg = open_run(run_dir)
    seed_everything(cfg.seed)
    forget()  # a model held from an earlier run in this process would count in memory_after, and share the GPU
    before = memory_snapshot()
    with timed() as load:
        model, tokenizer = load_model(cfg)
    after = memory_snapshot()
    settings = SamplingSettings(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
    question = sample_question(cfg, run_dir)
    (answer,) = generate(model, tokenizer, [question], settings, seed=cfg.seed, cuda_graphs=cfg.cuda_graphs)
    result = {
        "model_name": cfg.model_name,
        "backend": model.semifinetune_backend,
        "load_seconds": load["seconds"],
        "memory_before": before,
        "memory_after": after,
        "layers": layer_precision_report(model),
        "question": question,
        "answer": answer.to_dict(),
    }
    write_json_atomic(runs.run_path(run_dir, runs.BASELINE), result)
    return result


@holds_run_dir("run", create=True)
def run_pipeline(run_dir: str | os.PathLike, profile: str = "auto", overrides: dict | str | None = None, overwrite: bool = False) -> dict:
    """The whole job, step by step, as notebooks 01-06 do it; returns each step's summary."""
    from .compare import best_mode, compare_retrieval, counts_line
    from .data import prepare_data
    from .evaluate import compare_base_tuned
    from .sweep import run_sweep
    from .train import refuse_to_overwrite, train
    from .workload import workload_line

    cfg, _ = setup(run_dir, profile, overrides, overwrite=overwrite)  # 01
    refuse_to_overwrite(run_dir, resume=False, overwrite=overwrite, cfg=cfg)  # same config, results kept: stop now, not at 05
    _step("04 format data")  # before 02: bad data fails here, before any model loads
    data = prepare_data(run_dir)
    _step("02 load + baseline")
    load_baseline(run_dir)
    _step("05 train")
    stats = train(cfg, run_dir)
    _step("06 evaluate base vs tuned")
    print(workload_line(run_dir), flush=True)
    evaluation = compare_base_tuned(run_dir)
    retrieval = best = ""
    if cfg.retrieval_compare_k > 0:
        _step(f"06 base and tuned, without notes, with the top {cfg.retrieval_compare_k} training pairs and with "
              f"{cfg.retrieval_compare_k} that lack the answer")
        table = compare_retrieval(run_dir, reuse_evaluation=True)  # held-out, no notes: just measured
        retrieval, best = counts_line(table), best_mode(table)
    _step("06 sampling sweep")
    run_sweep(run_dir)
    recommended = json.loads(runs.run_path(run_dir, runs.RECOMMENDED).read_text(encoding="utf-8"))
    return {"data": data, "train": stats, "evaluation": evaluation, "retrieval": retrieval, "best_mode": best,
            "recommended": recommended}


def _step(name: str) -> None:
    print(f"== {name}", flush=True)


def training_length(run_dir: str | os.PathLike) -> str:
    """Notebook 05: how many steps this run trains, in epochs of its data (after notebook 04 has prepared it)."""
    from .config import length_note
    from .data import SUMMARY_FILE

    summary = json.loads((runs.run_path(run_dir, runs.DATA) / SUMMARY_FILE).read_text(encoding="utf-8"))
    return length_note(open_run(run_dir), summary["train"]["examples"])
