"""Notebook 06's last step: export the run in the formats asked for, then push each export to the hub.

The token is read here, in the notebook's own kernel (export.hub_token: on Colab the secret HF_TOKEN, which a
`!python -m semifinetune export` subprocess cannot see), and goes to huggingface_hub only: it is no notebook
parameter (papermill writes those into the executed notebook), and it is never printed, returned or written.
The exports are this step's own output, derived from the adapter like evaluation.csv: re-running 06 replaces the
formats it exports (other formats under run_dir/export/ are left alone).
"""

from __future__ import annotations

import os

from .export import FORMATS, ExportError


def export_formats(formats: str | list[str] | None) -> list[str]:
    """The formats asked for, in order, once each: a list, or papermill's text "adapter,gguf"; [] or "" for none."""
    names = formats.split(",") if isinstance(formats, str) else list(formats or [])
    chosen = list(dict.fromkeys(name.strip().lower() for name in names if name.strip()))
    unknown = [name for name in chosen if name not in FORMATS]
    if unknown:
        raise ExportError(f"Unknown export format(s) {', '.join(unknown)} in export_formats. Valid: {', '.join(FORMATS)} "
                          "(a list, e.g. [\"adapter\", \"gguf\"], or [] for no export).")
    return chosen


def export_and_push(run_dir: str | os.PathLike, formats: str | list[str] = ("adapter",), repo: str = "",
                    quantization: str | list[str] = "q8_0", private: bool = True):
    """Each of `formats` into run_dir/export/<format>/, then each uploaded to the hub model repo `repo` ("" = no
    push): at its root for one format, under <format>/ for several. A table: format, folder, files, size, where pushed."""
    import pandas as pd

    from .export import export_run, hub_token, push_to_hub

    chosen = export_formats(formats)
    if not chosen:
        print("No export: export_formats is empty (e.g. [\"adapter\"], [\"merged16\"], [\"gguf\"]).")
        return None
    repo = repo.strip()
    token = hub_token() if repo else None  # no token: fail before a long merge, not after it
    rows = []
    for fmt in chosen:
        result = export_run(run_dir, fmt, overwrite=True, quantization=quantization)
        pushed = ""
        if repo:
            where = fmt if len(chosen) > 1 else ""
            url = push_to_hub(result["folder"], repo, token, private=private, path_in_repo=where)
            pushed = f"{url}/tree/main/{where}" if where else url
        rows.append({"format": fmt, "folder": result["folder"], "files": len(result["files"]),
                     "size": f"{sum(result['files'].values()):.1f} MB", "pushed to": pushed or "not pushed"})
    return pd.DataFrame(rows).set_index("format")
