"""Each notebook's result in one line, read back from the run directory: what the runners print as each one ends."""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

from . import runs


def headline(name: str, run_dir: str | os.PathLike, executed: str | os.PathLike | None = None) -> str:
    """One line for notebook `name` (e.g. '05_train') of the run; '' where its result is not there to read."""
    read = HEADLINES.get(name)
    try:
        return read(Path(run_dir), executed) if read else ""
    except (OSError, KeyError, ValueError, SyntaxError):  # a result missing or from an older version: no line
        return ""


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def setup_line(run_dir: Path, executed=None) -> str:
    cfg = _read_json(run_dir / runs.CONFIG)
    return (f"profile {cfg['profile']}, recipe {cfg['recipe']}, model {cfg['model_name']}, {cfg['max_steps']} steps; "
            f"train {cfg['train_file']}, held-out {cfg['eval_file']}")


def baseline_line(run_dir: Path, executed=None) -> str:
    baseline = _read_json(run_dir / runs.BASELINE)
    answer = baseline["answer"]
    ended = "ended by itself" if answer["finish_reason"] == "eos" else "cut at max_new_tokens"
    return (f"{baseline['model_name']} loaded in {baseline['load_seconds']:.1f} s ({baseline['backend']}); its answer "
            f"before fine-tuning: {answer['new_tokens']} tokens, {ended}")


def lora_line(run_dir: Path, executed: str | os.PathLike | None = None) -> str:
    """03 writes nothing to the run: its count is read from the executed notebook's report cell."""
    shown = shown_text(executed or run_dir / "notebooks" / "03_lora.ipynb", "lora_summary(lora_parameter_report(model))")
    values = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in shown.splitlines() if line.strip())
    trainable, percent = re.match(r"([\d,]+) \(([\d.]+)%", values["trainable parameters"]).groups()
    return (f"LoRA: {trainable} trainable parameters, {percent}% of the base model's "
            f"{values['base model parameters'].split(' (')[0]}; adapter {values['adapter size'].split(' (')[0]}")


def data_line(run_dir: Path, executed=None) -> str:
    from .data import SUMMARY_FILE

    summary = _read_json(run_dir / runs.DATA / SUMMARY_FILE)
    splits = [split for split in ("train", "eval", "validation") if split in summary]
    counts = ", ".join(f"{summary[s]['examples']} {'held-out' if s == 'eval' else s}" for s in splits)
    longest = max(summary[s]["tokens"]["max"] for s in splits)
    return f"data: {counts} examples, format {summary['format']}; longest {longest} tokens of {summary['max_seq_length']}"


def train_line(run_dir: Path, executed=None) -> str:
    from .train import kept_checkpoint_line

    stats = _read_json(run_dir / runs.TRAIN_LOG)["stats"]
    loss = f", final training loss {stats['final_train_loss']:.3f}" if stats.get("final_train_loss") is not None else ""
    return f"trained {stats['global_step']} steps in {stats['train_runtime_s']:.0f} s{loss}; {kept_checkpoint_line(stats)}"


def inference_line(run_dir: Path, executed=None) -> str:
    import pandas as pd

    table = pd.read_csv(run_dir / runs.EVALUATION, usecols=["model", "correct"])
    correct = table.groupby("model")["correct"].sum()
    best = _read_json(run_dir / runs.RECOMMENDED)
    return (f"held-out correct: base {int(correct['base'])}, tuned {int(correct['tuned'])} of "
            f"{int((table['model'] == 'tuned').sum())}; recommended temperature {best['temperature']}, top_p {best['top_p']}")


HEADLINES = {
    "01_setup": setup_line,
    "02_load_4bit": baseline_line,
    "03_lora": lora_line,
    "04_format": data_line,
    "05_train": train_line,
    "06_inference_sweep": inference_line,
}


def shown_text(path: str | os.PathLike, call: str) -> str:
    """The text an executed notebook shows for the cell that ends with `call` (its text/plain)."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.strip().endswith(call):
            for output in cell.get("outputs", []):
                if "text/plain" in output.get("data", {}):
                    return output["data"]["text/plain"]
    raise KeyError(call)


def shown_value(path: str | os.PathLike, call: str):
    """The value an executed notebook shows for the cell that ends with `call` (its text/plain, as a literal)."""
    return ast.literal_eval(shown_text(path, call))
