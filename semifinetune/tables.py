"""Small pandas tables that notebooks end their cells with."""

from __future__ import annotations

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
