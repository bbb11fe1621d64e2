"""Small pandas tables that notebooks end their cells with."""

from __future__ import annotations


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


def config_table(cfg):
    """Each setting, the guide's recipe value, and whether the profile or an override changed it."""
    import pandas as pd

    from .config import RunConfig

    recipe = RunConfig().to_dict()
    rows = [
        (key, value, recipe[key], "" if value == recipe[key] or key == "profile" else "changed")
        for key, value in cfg.to_dict().items()
    ]
    return pd.DataFrame(rows, columns=["setting", "value", "guide's recipe", "note"]).set_index("setting")


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
