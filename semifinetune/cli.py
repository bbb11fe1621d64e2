"""`python -m semifinetune COMMAND`: the pipeline, its steps, and the environment report."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, parse_assignments


def _add_run_args(parser: argparse.ArgumentParser, profile: bool = True) -> None:
    parser.add_argument("--run-dir", required=True, help="run directory (config, data, adapter, results)")
    if profile:
        parser.add_argument("--profile", default="auto",
                            help="auto (default: t4 on a CUDA GPU, cpu elsewhere), t4 (GPU + hub), cpu (embedded model), tiny (tests)")
    parser.add_argument("--recipe", help="how the model learns: facts (the profiles' default, chosen by a study), raft "
                        "(facts with retrieved notes in the training prompts) or guide (the guide's exact "
                        "hyperparameters); a --grid over recipe=guide,facts,raft compares them")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")


def _overrides(args) -> dict:
    """--set assignments, with --recipe among them (make_config takes the recipe from the overrides)."""
    overrides = parse_assignments(args.set)
    return {**overrides, "recipe": args.recipe} if args.recipe else overrides


def cmd_env(args) -> int:
    from .env import environment_report, format_report

    print(format_report(environment_report()))
    return 0


def cmd_setup(args) -> int:
    from .pipeline import setup

    cfg, report = setup(args.run_dir, args.profile, _overrides(args), overwrite=args.overwrite)
    print(f"{args.run_dir}/config.json: profile {cfg.profile}, recipe {cfg.recipe}, model {cfg.model_name}, backend {report['backend']}, "
          f"precision {report['precision']}")
    return 0


def cmd_run(args) -> int:
    from .pipeline import run_pipeline

    result = run_pipeline(args.run_dir, args.profile, _overrides(args), overwrite=args.overwrite)
    evaluation, stats, best = result["evaluation"], result["train"], result["recommended"]
    retrieval = f"; with retrieval, correct: {result['retrieval']}" if result.get("retrieval") else ""
    print(f"trained {stats['global_step']} steps in {stats['train_runtime_s']:.0f} s; "
          f"held-out correct: base {evaluation['base_correct']}, tuned {evaluation['tuned_correct']} "
          f"of {evaluation['questions']}{retrieval}; recommended temperature {best['temperature']}, top_p {best['top_p']}; "
          f"results in {args.run_dir}")
    if result.get("best_mode"):
        print(result["best_mode"])
    return 0


def cmd_validate_data(args) -> int:
    from .config import make_config
    from .data import DataError, summary_line, validate_files
    from .models import ModelLoadError

    kinds = [args.kind] * len(args.files) if args.kind != "auto" else None
    try:
        summary = validate_files(args.files, make_config(args.profile), kinds)
    except DataError as err:  # one `file:line: problem` line each, no traceback
        print(err, file=sys.stderr)
        return 1
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary_line(summary))
    return 0


def cmd_prepare_data(args) -> int:
    from .data import DataError, prepare_data

    try:
        summary = prepare_data(args.run_dir)
    except DataError as err:
        print(err, file=sys.stderr)
        return 1
    for split in ("train", "eval"):
        tokens = summary[split]["tokens"]
        print(f"{split}: {summary[split]['examples']} examples, tokens min {tokens['min']} mean {tokens['mean']} "
              f"p95 {tokens['p95']} max {tokens['max']} of max_seq_length {tokens['max_seq_length']}")
    return 0


def cmd_train(args) -> int:
    from .runs import open_run
    from .train import stats_table, train

    stats = train(open_run(args.run_dir), args.run_dir, resume=args.resume, overwrite=args.overwrite)
    print(stats_table(stats).to_string())
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import compare_base_tuned, evaluation_summary

    if args.retrieval is not None:
        return _evaluate_retrieval(args)
    result = compare_base_tuned(args.run_dir, batch_size=args.batch_size)
    print(evaluation_summary(args.run_dir).to_string())
    print(f"correct of {result['questions']} held-out questions: base {result['base_correct']}, "
          f"tuned {result['tuned_correct']} (per answer: {result['file']})")
    return 0


def _evaluate_retrieval(args) -> int:
    """`evaluate --retrieval [K]`: the base/tuned x without/with K notes 2 x 2 on held-out and general questions."""
    import pandas as pd

    from .compare import compare_retrieval, retrieval_statement, retrieval_table
    from .runs import RETRIEVAL, run_path

    k = None if args.retrieval == "config" else _notes_count(args.retrieval)
    table = compare_retrieval(args.run_dir, k, batch_size=args.batch_size)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
        print(retrieval_table(table).to_string())
    print(retrieval_statement(table))
    print(f"per answer: {run_path(args.run_dir, RETRIEVAL)}")
    return 0


def _notes_count(text: str) -> int:
    try:
        k = int(text)
    except ValueError:
        k = -1
    if k < 1:
        raise ConfigError(f"--retrieval takes a number of notes of 1 or more, got {text!r} (no value: retrieval_compare_k).")
    return k


def cmd_sweep(args) -> int:
    from .sweep import recommend_settings, run_sweep, summarize_sweep, temperature_comparison, temperature_statement

    table = run_sweep(args.run_dir, batch_size=args.batch_size)
    summary = summarize_sweep(table)
    print(summary.to_string(index=False))
    print(f"recommended: {recommend_settings(summary)}")
    try:
        print(temperature_statement(temperature_comparison(table)))
    except ConfigError as err:  # the grid lacks 0.3 or 0.6: the rest of the sweep still stands
        print(f"0.3 vs 0.6: {err}")
    return 0


def cmd_export(args) -> int:
    from .export import export_run, hub_token, push_to_hub

    token = hub_token() if args.push_to_hub else None  # no token: fail before a long merge, not after
    result = export_run(args.run_dir, args.format, overwrite=args.overwrite, quantization=args.quantization)
    for note in result["notes"]:
        print(note)
    print(f"{args.format} export: {result['folder']} ({len(result['files'])} files, {sum(result['files'].values()):.1f} MB)")
    if args.push_to_hub:
        print(f"pushed to {push_to_hub(result['folder'], args.push_to_hub, token)}")
    return 0


def cmd_notebooks(args) -> int:
    from .notebooks import literal, parse_grid, run_grid, run_notebooks, write_golden

    if args.golden:
        write_golden(args.golden, args.run_dir, args.profile)
        return 0
    params = {key: literal(value) for key, value in args.param}
    overrides = _overrides(args)
    if args.grid:
        key, values = parse_grid(args.grid)
        table = run_grid(args.run_dir, args.profile, key, values, params, overrides, overwrite=args.overwrite)
        print(table.drop(columns="run_dir").to_string(index=False))
        print(f"table: {args.run_dir}/grid.csv")
        return 0
    timings = run_notebooks(args.run_dir, args.profile, params, overrides, overwrite=args.overwrite)
    print(f"all {len(timings)} notebooks in {sum(t['seconds'] for t in timings):.1f} s; executed copies in {args.run_dir}/notebooks/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m semifinetune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("env", help="print the environment report (GPU, memory, versions, backend, precision)")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("setup", help="notebook 01: resolve the config, check the machine, write RUN_DIR/config.json")
    _add_run_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace results already in --run-dir")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("run", help="the whole pipeline: setup, load, format, train, evaluate, sweep")
    _add_run_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace results already in --run-dir")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate-data", help="check data files: one `file:line: problem` line each, exit 1 on problems")
    p.add_argument("files", nargs="+", metavar="FILE", help="data files (.jsonl, .json, .csv, .tsv, .parquet), folders or Hub dataset ids, in any format the project reads")
    p.add_argument("--profile", default="cpu", help="whose tokenizer counts the tokens (default cpu: offline)")
    p.add_argument("--kind", default="auto", choices=["auto", "train", "eval"], help="auto: eval if the name says eval or the first line has keywords")
    p.set_defaults(func=cmd_validate_data)

    p = sub.add_parser("prepare-data", help="validate, format and tokenize the run's data into RUN_DIR/data/")
    p.add_argument("--run-dir", required=True, help="run directory written by setup (config.json)")
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser("train", help="notebook 05: LoRA training on RUN_DIR/data/, adapter into RUN_DIR/adapter")
    p.add_argument("--run-dir", required=True, help="run directory prepared by setup and prepare-data")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in RUN_DIR/checkpoints")
    p.add_argument("--overwrite", action="store_true", help="train again from scratch over an adapter or checkpoints already in RUN_DIR")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="notebook 06: base vs tuned on the held-out questions, RUN_DIR/evaluation.csv")
    p.add_argument("--run-dir", required=True, help="run directory with a trained adapter")
    p.add_argument("--retrieval", nargs="?", const="config", metavar="K",
                   help="instead: base and tuned, each without and with the top K training pairs in the prompt, on the "
                        "held-out and the general questions (K default: retrieval_compare_k), RUN_DIR/retrieval.csv")
    p.add_argument("--batch-size", type=int, default=None, help="answers per generate() batch (default: as many as GPU memory holds, at most 1024, 64 on a T4-sized card; 48 on CPU; halved on GPU out-of-memory)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sweep", help="notebook 06: sampling grid, base vs tuned, RUN_DIR/sweep.csv, heatmaps, recommendation")
    p.add_argument("--run-dir", required=True, help="run directory with a trained adapter")
    p.add_argument("--batch-size", type=int, default=None, help="answers per generate() batch (default: as many as GPU memory holds, at most 1024, 64 on a T4-sized card; 48 on CPU; halved on GPU out-of-memory)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("export", help="RUN_DIR/export/FORMAT: adapter + model card, merged 16-bit safetensors, or GGUF; Ollama Modelfile")
    p.add_argument("--run-dir", required=True, help="run directory with a trained adapter")
    p.add_argument("--format", required=True, choices=["adapter", "merged16", "gguf"], help="what to write")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export of this format")
    p.add_argument("--quantization", default="q8_0", metavar="TYPES",
                   help="GGUF only, comma-separated: f16, bf16, q8_0 (llama.cpp's converter, any machine); "
                        "q4_k_m and other llama-quantize types (llama-quantize on PATH, or Unsloth on a CUDA GPU)")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the export to this Hugging Face model repo (token: HF_TOKEN or `hf auth login`)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("notebooks", help="notebooks 01-06 under papermill into RUN_DIR/notebooks/; --grid: one run per value")
    _add_run_args(p)
    p.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a notebook parameter (Python literal), to each notebook that declares it; a config key becomes an override")
    p.add_argument("--grid", metavar="KEY=V1,V2", help="run the pipeline once per value into RUN_DIR/KEY=VALUE/, table in RUN_DIR/grid.csv")
    p.add_argument("--golden", metavar="DIR", help="rewrite the nbval golden notebooks in DIR (tests/nbval) from a clean RUN_DIR")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run already in RUN_DIR: overwrite=True for 01 (clears its results) and 05")
    p.set_defaults(func=cmd_notebooks)
    return parser


# Commands that start a run create its folder; the others work in one that setup made.
STARTS_A_RUN = ("setup", "run", "notebooks")


def command_lock(args):
    """The run directory's lock, for every command that works in one: a second process is refused before it reads
    or writes anything there."""
    from contextlib import nullcontext

    from .runlock import run_lock

    if getattr(args, "run_dir", None) is None:
        return nullcontext()
    return run_lock(args.run_dir, args.command, create=args.command in STARTS_A_RUN)


def main(argv: list[str] | None = None) -> int:
    from .atomic import DiskFullError
    from .models import ModelLoadError
    from .safety import scrub

    args = build_parser().parse_args(argv)
    try:
        with command_lock(args):
            return args.func(args)
    except (ConfigError, ModelLoadError, DiskFullError) as err:  # bad settings, data, model; a full disk: one line each
        print(f"error: {scrub(str(err))}", file=sys.stderr)
        return 2
