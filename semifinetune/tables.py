"""Small pandas tables, and the short views, that notebooks end their cells with."""

from __future__ import annotations

import html
import os
import textwrap

from .config import config_table  # noqa: F401  (notebook 01 imports it from here; it lives with RunConfig, which shows itself with it)


def key_value_table(values: dict, value_name: str = "value"):
    """A dict as a two-column table; nested dicts are flattened to `outer.inner`."""
    import pandas as pd

    rows = []
    for key, value in values.items():
        if isinstance(value, dict):
            rows += [(f"{key}.{inner}", v) for inner, v in value.items()]
        else:
            rows.append((key, value))
    return pd.DataFrame(rows, columns=["name", value_name]).set_index("name")


def environment_table(report: dict):
    from .env import report_rows

    import pandas as pd

    return pd.DataFrame(report_rows(report), columns=["item", "value"]).set_index("item")


def layers_table(layers: dict):
    """Layer groups from models.layer_precision_report: type (storage), count, example names."""
    import pandas as pd

    rows = [(group, info["count"], ", ".join(info["examples"])) for group, info in layers.items()]
    return pd.DataFrame(rows, columns=["layer (storage)", "count", "examples"]).set_index("layer (storage)")


def memory_table(before: dict, after: dict):
    import pandas as pd

    return pd.DataFrame({"before load": before, "after load": after})


RECIPE_STUDY = "benchmarks/results/recipes_cpu.json"  # benchmarks/study_recipes.py's records, under the project


def recipe_study_table(path: str | None = None):
    """The recipe study on the embedded model, one row per candidate of every recorded round: how each was chosen,
    its training rows, steps, kept step, held-out and general correct (BENCHMARKS.md reads the same records)."""
    import json

    import pandas as pd

    from .runs import PROJECT_ROOT

    rounds = json.loads((PROJECT_ROOT / (path or RECIPE_STUDY)).read_text(encoding="utf-8"))
    rows = [("base model", "", "", "", "", rounds[0]["base"]["held_out"]["correct"], rounds[0]["base"]["general"]["correct"])]
    for entry in rounds:
        chosen = "validation answers" if "answers" in entry["chosen_by"] else "validation loss"
        rows += [
            (c["name"], chosen, c["train_rows"], c["global_step"], c["kept_step"], c["held_out"]["correct"], c["general"]["correct"])
            for c in entry["candidates"]
        ]
    columns = ["candidate", "checkpoint chosen by", "training rows", "steps", "kept step", "held-out correct of 73", "general correct of 30"]
    return pd.DataFrame(rows, columns=columns).set_index("candidate")


def config_summary(cfg, run_dir: str | os.PathLike | None = None):
    """The run's config in five lines a user checks: model, data, recipe, steps, run directory (config_table(cfg),
    or `cfg` alone, shows every setting)."""
    from .colab import on_colab
    from .splits import plan

    effective = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    targets = ", ".join(cfg.target_modules)
    held_out = plan(cfg)["eval"]  # "auto" as the run reads it: the shipped file, or a sample of the training file
    rows = {
        "model": f"{cfg.model_name} ({cfg.profile} profile{', 4-bit' if cfg.load_in_4bit else ''})",
        "data": f"train {cfg.train_file}; held-out questions {held_out if held_out != 'sample' else 'sampled from it'}",
        "recipe": f"{cfg.recipe}: lr {cfg.learning_rate:g}, LoRA r{cfg.lora_r}/alpha{cfg.lora_alpha} on {targets}",
        "steps": f"{cfg.max_steps} at effective batch {effective}",
    }
    if run_dir is not None:  # on Colab the folder on Drive; elsewhere as given, relative to the working directory
        rows["run directory"] = str(os.path.abspath(run_dir)) if on_colab() else str(run_dir)
    return KeyValues(rows)


def lora_summary(report: dict):
    """lora.lora_parameter_report in four lines: trainable and frozen counts with their ratio, adapted modules, size."""
    return KeyValues({
        "trainable parameters": f"{report['trainable_params']:,} ({report['trainable_percent']}% of the base model's)",
        "base model parameters": f"{report['base_params']:,} (frozen; 4-bit weights counted at their real size)",
        "adapted modules": ", ".join(report["adapted_modules"]),
        "adapter size": f"{report['adapter_mb']} MB (fp32)",
    })


class WrappedTable:
    """Rows of whole texts, shown wrapped: an HTML table in a notebook front end, text blocks elsewhere.

    pandas cuts every cell at display.max_colwidth (50 characters), which hides most of an answer."""

    def __init__(self, rows: list[dict], width: int = 100):
        self.rows, self.width = rows, width

    def _repr_html_(self) -> str:
        if not self.rows:
            return "<p>(no rows)</p>"
        columns = list(self.rows[0])
        cell = 'style="white-space: pre-wrap; text-align: left; vertical-align: top; min-width: 8em"'
        head = "".join(f"<th {cell}>{html.escape(c)}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(f"<td {cell}>{html.escape(str(row[c]))}</td>" for c in columns) + "</tr>" for row in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __repr__(self) -> str:
        blocks = []
        for row in self.rows:
            lines = []
            for name, value in row.items():
                for i, paragraph in enumerate(str(value).splitlines() or [""]):
                    prefix = f"{name}: " if i == 0 else " " * (len(name) + 2)
                    lines += textwrap.wrap(paragraph, self.width, initial_indent=prefix,
                                           subsequent_indent=" " * (len(name) + 2)) or [prefix.rstrip()]
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)


class KeyValues(dict):
    """A few named values shown whole, one a line: a two-column HTML table in a notebook front end, aligned text
    elsewhere (a DataFrame would cut each value at 50 characters)."""

    def _repr_html_(self) -> str:
        cell = 'style="text-align: left; white-space: pre-wrap"'
        rows = "".join(f"<tr><th {cell}>{html.escape(str(k))}</th><td {cell}>{html.escape(str(v))}</td></tr>"
                       for k, v in self.items())
        return f"<table>{rows}</table>"

    def __repr__(self) -> str:
        width = max((len(str(k)) for k in self), default=0)
        return "\n".join(f"{str(k).ljust(width)}  {v}" for k, v in self.items())

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # IPython's text/plain: this, not dict's
        printer.text(repr(self))
