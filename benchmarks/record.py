"""Append a benchmark's record to its JSON file and one row to BENCHMARKS.md's table of recorded runs."""

from __future__ import annotations

import json
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
LOG_HEADING = "## Recorded runs"


def record(out: str | Path, entry: dict, summary: str) -> None:
    """Keep every run: the JSON list at `out` grows by `entry`; BENCHMARKS.md gets `date | machine | summary`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    entries = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(entries + [entry], indent=1) + "\n")
    text = BENCHMARKS_MD.read_text(encoding="utf-8") if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    if LOG_HEADING not in text:
        text += f"\n{LOG_HEADING}\n\n| date | benchmark | machine | result | file |\n|---|---|---|---|---|\n"
    machine = entry.get("card") or entry.get("machine", "")
    text = text.rstrip("\n") + f"\n| {entry['date']} | {entry['benchmark']} | {machine} | {summary} | `{out.name}` |\n"
    BENCHMARKS_MD.write_text(text, encoding="utf-8")
