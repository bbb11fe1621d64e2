"""Notebooks 01-06 headless under papermill: one run, a grid of runs, and the nbval golden notebooks.

    python -m semifinetune notebooks --profile tiny --run-dir runs/nb            # 01..06 into runs/nb/notebooks/
    python -m semifinetune notebooks --profile cpu --run-dir runs/lr --grid learning_rate=1e-4,1e-3
    python -m semifinetune notebooks --profile tiny --run-dir runs/nbval --golden tests/nbval   # regenerate nbval

Each notebook runs in a fresh kernel with the project root as its working directory; the run directory is
passed as an absolute path, so the notebooks find each other's files wherever the command was started.
Each executes into a temporary copy first: RUN_DIR/notebooks/NAME.ipynb is replaced only by a run that succeeded,
and a failed one is kept beside it as NAME.failed.ipynb.
A grid runs the whole pipeline once per value into RUN_DIR/KEY=VALUE/ and writes RUN_DIR/grid.csv.
"""

from __future__ import annotations

import ast
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from . import runs
from .atomic import csv_bytes, write_bytes_atomic
from .config import FIELD_TYPES, ConfigError, parse_overrides, parse_value
from .runlock import holds_run_dir

NOTEBOOK_DIR = runs.PROJECT_ROOT / "notebooks"
NOTEBOOKS = ("01_setup", "02_load_4bit", "03_lora", "04_format", "05_train", "06_inference_sweep")
EXECUTED = "notebooks"  # RUN_DIR/notebooks/: the executed copies
RUN_REST = "run_02_to_06"  # notebook 01's parameter: True runs 02-06 in 01's runtime (run_rest)
GRID_TABLE = "grid.csv"
KERNEL = "python3"


class NotebookFailed(ConfigError):
    """A notebook raised: the message names the notebook, the cell, the exception and the executed copy."""


def notebook_paths(folder: str | os.PathLike = NOTEBOOK_DIR) -> list[Path]:
    """The six notebooks in order; a missing one is an error that names it."""
    if Path(folder) == NOTEBOOK_DIR and not runs.in_a_clone():
        raise ConfigError(runs.clone_message(f"The notebooks folder ({NOTEBOOK_DIR})"))
    paths = [Path(folder) / f"{name}.ipynb" for name in NOTEBOOKS]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise ConfigError(f"{folder} lacks {', '.join(missing)}: the pipeline needs all of {', '.join(NOTEBOOKS)}.")
    return paths


def declared_parameters(path: str | os.PathLike) -> dict:
    """The names and default sources in a notebook's `parameters` cell (papermill's own reading)."""
    import papermill

    return {name: info["default"] for name, info in papermill.inspect_notebook(str(path)).items()}


def literal(text: str):
    """A `-p` value as papermill's CLI reads it: a Python literal where it parses, else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def route_parameters(paths: list[Path], run_dir: str, profile: str, params: dict | None = None, overrides: dict | None = None,
                     overwrite: bool = False) -> dict:
    """Parameters per notebook: run_dir for all, profile and overrides for 01, each -p pair where it is declared.

    A -p key that no notebook declares but that is a config key (`-p max_steps 3`) becomes an override for 01;
    overwrite=True (--overwrite) goes to every notebook that declares `overwrite` (01 and 05).
    """
    params = dict(params or {})
    if params.get(RUN_REST):
        raise ConfigError(f"-p {RUN_REST}: this command runs 02-06 itself; leave the parameter out.")
    overrides = parse_overrides(overrides)
    if "overrides" in params:
        params["overrides"] = parse_overrides(params["overrides"])  # -p overrides 'max_steps: 3' (YAML) or a dict
    if overwrite:
        params["overwrite"] = True
    declared = {path.stem: declared_parameters(path) for path in paths}
    known = set().union(*declared.values())
    for key in [k for k in params if k not in known]:
        if key not in FIELD_TYPES:
            raise ConfigError(
                f"-p {key}: no notebook declares it and it is not a config key. "
                f"Notebook parameters: {', '.join(sorted(known))}; config keys go through overrides or --set."
            )
        value = params.pop(key)
        overrides[key] = parse_value(key, str(value)) if isinstance(value, str) else value
    routed = {}
    for path in paths:
        names = declared[path.stem]
        chosen = {k: v for k, v in params.items() if k in names}
        chosen["run_dir"] = run_dir
        if "profile" in names:
            chosen["profile"] = profile
        if "interactive" in names:  # headless: no widgets waiting for a user
            chosen.setdefault("interactive", False)
        if "overrides" in names:
            chosen["overrides"] = {**chosen.get("overrides", {}), **overrides}
        routed[path.stem] = chosen
    return routed


def failed_copy(dst: Path, work_dir: Path | None = None) -> Path:
    """Where a failed run of dst is kept: NAME.failed.ipynb beside it (or in work_dir)."""
    return (work_dir or dst.parent) / f"{dst.stem}.failed.ipynb"


def execute(src: Path, dst: Path, parameters: dict, cwd: str | os.PathLike, progress: bool = True,
            work_dir: Path | None = None) -> float:
    """Run one notebook in a fresh kernel into dst; returns seconds. A failing cell raises NotebookFailed.

    The kernel writes into a temporary copy (in work_dir, else beside dst): dst is replaced only when every cell
    ran, so a failed re-run never overwrites a good executed notebook; the failed copy is kept as NAME.failed.ipynb.
    """
    import papermill
    import tqdm.auto  # noqa: F401 - papermill's bar, imported before project_importable sets TQDM_DISABLE (read at import)
    from papermill.exceptions import PapermillExecutionError

    work = work_dir or dst.parent
    work.mkdir(parents=True, exist_ok=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    running, failed = work / f"{dst.stem}.running.ipynb", failed_copy(dst, work_dir)
    kept = f" The earlier good copy {dst} is unchanged." if dst.exists() else ""
    start = time.perf_counter()
    try:
        with project_importable():
            papermill.execute_notebook(
                str(src), str(running), parameters=parameters, kernel_name=KERNEL, cwd=str(cwd), progress_bar=progress,
                kernel_manager_class=headless_kernel_manager(),
            )
    except PapermillExecutionError as err:
        os.replace(running, failed)
        first = next((line for line in err.source.splitlines() if line.strip()), "")
        raise NotebookFailed(
            f"{src.name} failed at cell {err.cell_index} (In [{err.exec_count}]: `{first.strip()}`): {err.ename}: {err.evalue.strip().rstrip('.')}. "
            f"The executed copy with the full traceback is {failed}; what earlier notebooks wrote is kept.{kept}"
        ) from None
    except RuntimeError as err:  # nbclient: DeadKernelError, CellTimeoutError (both RuntimeErrors)
        if running.exists():
            os.replace(running, failed)
        raise NotebookFailed(f"{src.name} stopped: {type(err).__name__}: {err}. Partial copy: {failed}.{kept}") from None
    os.replace(running, dst)
    failed.unlink(missing_ok=True)  # a stale failure from an earlier run no longer describes this notebook
    return time.perf_counter() - start


def headless_kernel_manager():
    """jupyter_client's kernel manager, quiet: over local sockets (IPC) instead of TCP, so the kernel talks to this
    process only and ipykernel's "Kernel is running over TCP without encryption" warning at every start has no cause;
    and no SIGINT before the shutdown request, which an idle kernel logs as "KeyboardInterrupt caught in kernel" after
    a run that succeeded (papermill shuts kernels down idle; a busy one still gets SIGTERM, then SIGKILL).
    The sockets lie in the temporary folder: by default they would be made in the kernel's working folder, which on
    Colab is Google Drive, whose file system holds no sockets."""
    import tempfile
    import uuid

    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class HeadlessKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self):
            return "tcp" if os.name == "nt" else "ipc"  # ZeroMQ has no IPC transport on Windows

        @default("ip")
        def _default_ip(self) -> str:
            if self.transport != "ipc":
                return super()._ip_default()
            # the temporary folder: local disk, and a short path (a socket's path must stay under 108 bytes)
            return os.path.join(tempfile.gettempdir(), f"semifinetune-kernel-{uuid.uuid4().hex[:12]}-ipc")

        async def _async_interrupt_kernel(self) -> None:
            if not self.shutting_down:
                await super()._async_interrupt_kernel()

    return HeadlessKernelManager


@contextmanager
def project_importable():
    """Kernels inherit the environment: the project root on PYTHONPATH, so `import semifinetune` works from any cwd,
    installed or not; no Google Drive mount (the run directory is passed as an absolute path); no progress bars."""
    saved = {key: os.environ.get(key) for key in ("PYTHONPATH", "SEMIFINETUNE_DRIVE", *NO_PROGRESS_BARS)}
    old = saved["PYTHONPATH"]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(runs.PROJECT_ROOT), *([old] if old else [])])
    os.environ["SEMIFINETUNE_DRIVE"] = "off"
    os.environ.update(NO_PROGRESS_BARS)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def refuse_rerun(run_dir: Path, params: dict, overwrite: bool) -> None:
    """A run directory that already holds a training run is refused before 01 runs, not at 05 after four notebooks."""
    from .train import trained_results

    found = trained_results(run_dir)
    if found and not overwrite and not params.get("resume"):
        raise ConfigError(
            f"{run_dir} already holds a training run ({', '.join(found)}). Run the six notebooks again from scratch "
            "with --overwrite, continue an unfinished training run with -p resume True (a finished one: raise "
            "max_steps too, e.g. --set max_steps=200), or choose another --run-dir."
        )


@holds_run_dir("notebooks", create=True)
def run_notebooks(
    run_dir: str | os.PathLike,
    profile: str = "auto",
    params: dict | None = None,
    overrides: dict | None = None,
    folder: str | os.PathLike = NOTEBOOK_DIR,
    progress: bool = True,
    log=print,
    overwrite: bool = False,
) -> list[dict]:
    """Notebooks 01-06 in order into RUN_DIR/notebooks/, each in a fresh kernel from the project root; returns timings."""
    run_dir = Path(run_dir).resolve()  # absolute: the kernels start in the project root, not here
    paths = notebook_paths(folder)
    routed = route_parameters(paths, str(run_dir), profile, params, overrides, overwrite)
    refuse_rerun(run_dir, routed.get("05_train", {}), overwrite)
    return [run_one(path, run_dir, routed[path.stem], runs.PROJECT_ROOT, progress, log) for path in paths]


def run_one(path: Path, run_dir: Path, parameters: dict, cwd: str | os.PathLike, progress: bool, log=print) -> dict:
    """One notebook into RUN_DIR/notebooks/, said as it starts and as it ends, with its result in one line."""
    log(f"[{path.stem}] running (parameters: {parameters})")
    timing = execute_into_run(path, run_dir, parameters, cwd, progress)
    log(f"[{path.stem}] done in {timing['seconds']:.1f} s -> {run_dir / EXECUTED / path.name}"
        + (f"\n[{path.stem}] {timing['result']}" if timing["result"] else ""))
    return timing


def execute_into_run(path: Path, run_dir: Path, parameters: dict, cwd: str | os.PathLike, progress: bool) -> dict:
    """Execute one notebook into RUN_DIR/notebooks/; {notebook, seconds, result}, the result as headlines reads it."""
    from .headlines import headline

    dst = run_dir / EXECUTED / path.name
    seconds = execute(path, dst, parameters, cwd, progress)
    return {"notebook": path.stem, "seconds": round(seconds, 1), "result": headline(path.stem, run_dir, dst)}


# --- notebook 01's last cell: 02-06 in the same runtime ---

NEXT_STEPS = (
    "Next: notebook 02 (02 and 03 only show the model and its LoRA, and can be skipped: 04 goes on from what this "
    "notebook wrote); the badges below open them in Colab. Or run 02-06 from here, one after another: set "
    f"{RUN_REST} = True in the parameters cell and run all cells again."
)


def run_rest(run_dir: str | os.PathLike, run: bool = True, log=print) -> None:
    """Notebook 01's last cell: notebooks 02-06 in this runtime, one after another, as the `notebooks` command runs
    them (each in a fresh kernel), their executed copies in RUN_DIR/notebooks/; for each, a progress bar and, as it
    ends, its time and its result in one line.

    The kernels start in this working folder (on Colab: the Drive folder, so relative data paths resolve as in 01),
    inherit Drive's model cache and mount nothing. run=False: one line on what comes next, nothing run."""
    from .quiet import progress_bars_off

    if not run:
        log(NEXT_STEPS)
        return
    run_dir = Path(run_dir).resolve()
    refuse_trained(run_dir)
    paths = notebook_paths()[1:]
    routed = route_parameters(paths, str(run_dir), "auto")
    seconds = 0.0
    for path in paths:
        log(f"[{path.stem}] running")
        timing = execute_into_run(path, run_dir, routed[path.stem], Path.cwd(), not progress_bars_off())
        log(f"[{path.stem}] done in {timing['seconds']:.0f} s" + (f": {timing['result']}" if timing["result"] else ""))
        seconds += timing["seconds"]
    log(f"02-06 done in {seconds:.0f} s; the executed notebooks are in {run_dir / EXECUTED}")


def refuse_trained(run_dir: Path) -> None:
    """A run that is trained already would stop at 05 after three notebooks: said before 02 starts."""
    from .train import trained_results

    found = trained_results(run_dir)
    if found:
        raise ConfigError(
            f"{run_dir} already holds a training run ({', '.join(found)}), so notebook 05 would stop. To train again from "
            "scratch set overwrite = True in the parameters cell and run all cells again; to evaluate this run as it is, "
            "open notebook 06; or choose another run_dir."
        )


# --- grid ---


def parse_grid(text: str) -> tuple[str, list]:
    """`learning_rate=1e-4,1e-3` into the key and its values, typed as the config field is."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not values.strip():
        raise ConfigError(f"--grid takes key=v1,v2,..., got {text!r} (e.g. --grid learning_rate=1e-4,1e-3)")
    if typing_is_list(key):
        raise ConfigError(f"--grid {key}: list-valued keys are not supported in a grid; run them one at a time with --set.")
    return key, [parse_value(key, part.strip()) for part in values.split(",") if part.strip()]


def typing_is_list(key: str) -> bool:
    import typing

    if key not in FIELD_TYPES:
        parse_value(key, "")  # raises the unknown-key error with the valid keys
    return typing.get_origin(FIELD_TYPES[key]) is list


def grid_run_dir(run_dir: str | os.PathLike, key: str, value) -> Path:
    """RUN_DIR/KEY=VALUE: one sub-directory per grid value."""
    return Path(run_dir) / f"{key}={value}"


def run_summary(run_dir: str | os.PathLike) -> dict:
    """Final train and held-out loss (train_log.json) and tuned/base recall (evaluation.csv) of one run; NaN where missing."""
    nan = float("nan")
    summary = {"final_train_loss": nan, "final_eval_loss": nan, "tuned_recall": nan, "base_recall": nan, "tuned_correct": nan}
    log_path = runs.run_path(run_dir, runs.TRAIN_LOG)
    if log_path.exists():
        stats = json.loads(log_path.read_text(encoding="utf-8"))["stats"]
        for key in ("final_train_loss", "final_eval_loss"):
            summary[key] = nan if stats.get(key) is None else stats[key]
    if runs.run_path(run_dir, runs.EVALUATION).exists():
        from .evaluate import read_evaluation

        table = read_evaluation(run_dir)
        by_model = table.groupby("model")
        recall = by_model["recall"].mean()
        summary["tuned_recall"] = float(recall.get("tuned", nan))
        summary["base_recall"] = float(recall.get("base", nan))
        summary["tuned_correct"] = int(by_model["correct"].sum().get("tuned", 0))
    return summary


@holds_run_dir("notebooks --grid", create=True)
def run_grid(
    run_dir: str | os.PathLike,
    profile: str,
    key: str,
    values: list,
    params: dict | None = None,
    overrides: dict | None = None,
    progress: bool = True,
    log=print,
    overwrite: bool = False,
):
    """The pipeline once per value of one config key, into RUN_DIR/KEY=VALUE/; the comparison as RUN_DIR/grid.csv."""
    import pandas as pd

    rows = []
    for value in values:
        child = grid_run_dir(run_dir, key, value)
        log(f"== {key}={value} -> {child}")
        timings = run_notebooks(child, profile, params, {**(overrides or {}), key: value}, progress=progress, log=log,
                                overwrite=overwrite)
        rows.append({key: value, "run_dir": str(child), **run_summary(child), "run_seconds": round(sum(t["seconds"] for t in timings), 1)})
    table = pd.DataFrame(rows)
    write_bytes_atomic(Path(run_dir) / GRID_TABLE, csv_bytes(table))
    return table


# --- nbval golden notebooks ---

# Cells whose output nbval cannot check even sanitized: (notebook, last line of the cell). Both show tokens_per_s
# as a table column (a timing), which no regex can single out among the other columns; their recall and EOS
# figures are checked through 06's `result`, `recommended` and side-by-side cells.
IGNORE_OUTPUT = {
    ("06_inference_sweep", "evaluation_summary(run_dir)"),
    ("06_inference_sweep", "summary"),
    ("06_inference_sweep", "retrieval_table(rag)"),  # tokens/s; the counts are checked in the statement cell below it
}
# Kernels run headless hold no progress bars: an executed notebook saves a bar widget as its first state, "0%", so
# every finished step would read as stuck at the start.
NO_PROGRESS_BARS = {
    "TQDM_DISABLE": "1",  # tqdm's bars, generate()'s included (quiet.progress_bars_off)
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' own bars (loading weights, writing shards)
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # datasets' passes
}
# Golden notebooks and their nbval re-runs also hold no library warnings on stderr (they come and go with versions
# and file-system timing).
QUIET = {
    **NO_PROGRESS_BARS,
    "TRANSFORMERS_VERBOSITY": "error",
    "PYTHONWARNINGS": "ignore",
}


def write_golden(golden_dir: str | os.PathLike, run_dir: str | os.PathLike, profile: str = "tiny", progress: bool = True, log=print) -> list[Path]:
    """Execute 01-06 as nbval will re-run them (cwd = golden_dir, run_dir relative to it, 01 overwrites) and keep the outputs."""
    import shutil

    golden_dir = Path(golden_dir).resolve()
    golden_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(run_dir).resolve()
    shutil.rmtree(run_dir, ignore_errors=True)  # the golden run starts clean, as the nbval run will
    relative = os.path.relpath(run_dir, golden_dir)  # nbval starts each kernel in the notebook's folder
    paths = notebook_paths()
    routed = route_parameters(paths, relative, profile)
    routed[NOTEBOOKS[0]]["overwrite"] = True  # every nbval run re-runs 01 over the previous run's results
    written = []
    saved = {key: os.environ.get(key) for key in QUIET}
    os.environ.update(QUIET)  # the kernels inherit it
    try:
        for path in paths:
            dst = golden_dir / path.name
            # the temporary and any failed copy go to the run directory: nbval collects every notebook in golden_dir
            seconds = execute(path, dst, routed[path.stem], golden_dir, progress, work_dir=run_dir / EXECUTED)
            strip_run_metadata(dst)
            tag_ignored_outputs(dst)
            log(f"[{path.stem}] golden in {seconds:.1f} s -> {dst}")
            written.append(dst)
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    return written


def strip_run_metadata(path: Path) -> None:
    """Drop what changes on every execution without being an output: papermill timings, widget state, cell ids' timing."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)


def tag_ignored_outputs(path: Path) -> None:
    """Tag the IGNORE_OUTPUT cells of a golden notebook `nbval-ignore-output` (they still run; a raise still fails)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        lines = cell.source.strip().splitlines()
        if cell.cell_type == "code" and lines and (path.stem, lines[-1].strip()) in IGNORE_OUTPUT:
            tags = cell.metadata.setdefault("tags", [])
            if "nbval-ignore-output" not in tags:
                tags.append("nbval-ignore-output")
    nbformat.write(nb, path)
