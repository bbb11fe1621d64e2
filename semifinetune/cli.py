"""`python -m semifinetune COMMAND`: the pipeline, its steps, and the environment report."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, parse_assignments


def _add_run_args(parser: argparse.ArgumentParser, profile: bool = True) -> None:
    parser.add_argument("--run-dir", required=True, help="run directory (config, data, adapter, results)")
    if profile:
        parser.add_argument("--profile", default="cpu", help="t4 (GPU + hub), cpu (embedded default), tiny (tests)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")


def cmd_env(args) -> int:
    from .env import environment_report, format_report

    print(format_report(environment_report()))
    return 0


def cmd_run(args) -> int:
    from .pipeline import run_pipeline

    run_pipeline(args.run_dir, args.profile, parse_assignments(args.set), overwrite=args.overwrite)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m semifinetune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("env", help="print the environment report (GPU, memory, versions, backend, precision)")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("run", help="the whole pipeline: setup, load, format, train, evaluate, sweep")
    _add_run_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace results already in --run-dir")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:  # bad settings or data: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
