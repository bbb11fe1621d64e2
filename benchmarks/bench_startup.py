"""Start-up benchmark: `import semifinetune` in a fresh process, and each notebook's first useful output.

    python benchmarks/bench_startup.py --out benchmarks/results/startup_cpu.json

Each notebook runs under papermill in a fresh kernel (tiny profile, so training and sweeps stay short); "first
useful output" is the end of the first cell after the parameters that shows something, measured from the start
of the kernel. Python's own start-up is subtracted from the import figure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime as dt
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from record import record  # noqa: E402


def seconds_to_run(code: str, repeats: int = 5) -> float:
    """Median wall time of `python -c code` in fresh processes."""
    import time

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def first_output_seconds(executed: Path) -> dict:
    """From the kernel's start to the end of the first cell that shows output (after the parameters cell)."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    start = dt.fromisoformat(nb.metadata.papermill["start_time"])
    end = dt.fromisoformat(nb.metadata.papermill["end_time"])
    seen_parameters = False
    for index, cell in enumerate(nb.cells):
        tags = cell.metadata.get("tags", [])
        seen_parameters = seen_parameters or "parameters" in tags
        if cell.cell_type == "code" and seen_parameters and cell.get("outputs") and "injected-parameters" not in tags:
            first = dt.fromisoformat(cell.metadata.papermill["end_time"])
            return {"first_output_s": round((first - start).total_seconds(), 2), "cell": index,
                    "whole_notebook_s": round((end - start).total_seconds(), 2)}
    return {"first_output_s": None, "whole_notebook_s": round((end - start).total_seconds(), 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import papermill

    from semifinetune.notebooks import NOTEBOOKS, notebook_paths

    bare = seconds_to_run("pass")
    entry = {
        "benchmark": "startup",
        "date": datetime.date.today().isoformat(),
        "machine": f"CPU, {os.cpu_count()} cores",
        "import_semifinetune_s": round(seconds_to_run("import semifinetune") - bare, 3),
        "import_semifinetune_and_torch_s": round(seconds_to_run("import semifinetune, torch") - bare, 3),
        "notebooks": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = str(Path(tmp) / "run")
        for name, path in zip(NOTEBOOKS, notebook_paths()):
            params = {"run_dir": run_dir, "interactive": False}
            if name == "01_setup":
                params.update(profile="tiny", overwrite=True)
            executed = Path(tmp) / f"{name}.ipynb"
            declared = papermill.inspect_notebook(str(path))
            papermill.execute_notebook(str(path), str(executed), parameters={k: v for k, v in params.items() if k in declared},
                                       cwd=str(ROOT), progress_bar=False, kernel_name="python3")
            entry["notebooks"][name] = first_output_seconds(executed)
            print(name, entry["notebooks"][name], flush=True)
    print(json.dumps(entry, indent=1))
    firsts = ", ".join(f"{name[:2]} {v['first_output_s']} s" for name, v in entry["notebooks"].items())
    record(args.out, entry, f"import semifinetune {max(entry['import_semifinetune_s'], 0):.2f} s; first output: {firsts}")


if __name__ == "__main__":
    main()
