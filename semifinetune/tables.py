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
