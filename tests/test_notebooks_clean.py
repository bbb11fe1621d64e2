"""The notebooks under notebooks/ are committed clean: no outputs, no execution counts, no widget state, one parameters cell."""

from __future__ import annotations


import nbformat
import pytest

from semifinetune.notebooks import NOTEBOOK_DIR, NOTEBOOKS

PATHS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def test_the_six_notebooks_exist():
    assert [p.stem for p in PATHS] == list(NOTEBOOKS)


@pytest.fixture(params=PATHS, ids=[p.stem for p in PATHS])
def nb(request):
    return nbformat.read(request.param, as_version=4)


def test_valid_nbformat_with_python3_kernel(nb):
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_no_outputs_or_execution_counts(nb):
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert dirty == [], f"cells {dirty} hold outputs or execution counts: clear them (Jupyter: Clear All Outputs) before committing"


def test_no_widget_state_or_run_metadata(nb):
    assert not {"widgets", "papermill"} & set(nb.metadata), "notebook metadata holds widget state or papermill run data"
    for i, cell in enumerate(nb.cells):
        assert not {"papermill", "execution"} & set(cell.metadata), f"cell {i} metadata holds run data"
        assert "nbval-ignore-output" not in cell.metadata.get("tags", []), f"cell {i}: nbval tags belong in tests/nbval only"


def test_one_parameters_cell_with_run_dir(nb):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{len(cells)} cells tagged `parameters`; papermill needs exactly one"
    assert cells[0].cell_type == "code"
    assert any(line.startswith("run_dir = ") for line in cells[0].source.splitlines())


def test_colab_opens_them_on_a_t4(nb):
    """Colab reads these to offer a GPU runtime (the format Colab itself saves)."""
    assert nb.metadata.get("accelerator") == "GPU"
    assert nb.metadata.get("colab", {}).get("gpuType") == "T4"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_every_parameter_line_is_one_papermill_can_read(path):
    """papermill skips a parameters line with a second `=` (one in its comment too): -p could not set that name."""
    import papermill

    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    names = [line.split("=")[0].strip() for line in cell.source.splitlines() if "=" in line and not line.startswith("#")]
    assert names and sorted(papermill.inspect_notebook(str(path))) == sorted(names)


# --- what the executed notebooks show (the golden copies in tests/nbval are executed notebooks) ---

GOLDEN = sorted((NOTEBOOK_DIR.parent / "tests" / "nbval").glob("*.ipynb"))


@pytest.fixture(params=GOLDEN, ids=[p.stem for p in GOLDEN])
def executed(request):
    return request.param.stem, nbformat.read(request.param, as_version=4)


def shown_texts(nb) -> list[tuple[int, str, str]]:
    """(cell, kind, text) of every output a reader sees as text: streams, text/plain results, error lines."""
    texts = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.output_type == "stream":
                texts.append((i, out.name, out.text))
            elif out.output_type in ("execute_result", "display_data") and "text/plain" in out.data:
                texts.append((i, "text/plain", out.data["text/plain"]))
            elif out.output_type == "error":
                texts.append((i, "error", out.ename + ": " + out.evalue))
    return texts


def test_the_golden_notebooks_are_the_six():
    assert [p.stem for p in GOLDEN] == list(NOTEBOOKS)


def test_no_progress_bars_warnings_or_escape_codes(executed):
    name, nb = executed
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {}), f"{name} cell {i}: a progress bar"
    for i, kind, text in shown_texts(nb):
        assert kind != "stderr", f"{name} cell {i} wrote to stderr: {text[:200]!r}"
        assert kind != "error", f"{name} cell {i}: {text[:200]}"
        for code in ("\x1b[", "\r", "[A"):
            assert code not in text, f"{name} cell {i}: {code!r} in {text[:200]!r}"


def test_the_config_shows_as_five_lines(executed):
    """Each notebook shows the config as config_summary's five lines, never the whole settings table (`cfg` alone
    shows that, one call away) nor a 1,000-character repr."""
    name, nb = executed
    for i, kind, text in shown_texts(nb):
        assert not text.startswith("RunConfig("), f"{name} cell {i}: the config as one {len(text)}-character line"
        assert "guide's recipe" not in text, f"{name} cell {i}: the whole settings table"
    shown = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and c.source.strip().splitlines()[-1].startswith("config_summary(")]
    assert len(shown) == 1, f"{name}: {len(shown)} cells end with config_summary(...)"
    (text,) = [t for j, kind, t in shown_texts(nb) if j == shown[0] and kind == "text/plain"]
    assert [line.split("  ")[0] for line in text.splitlines()] == ["model", "data", "recipe", "steps", "run directory"]


def test_figures_are_rounded(executed):
    """No float with more than 5 significant digits (7.624155521392822, 248.521214) in what a reader sees; 0.00005
    (lr 5e-5) and the trainer's own 4-digit logs ('0.007812') are fine."""
    import re

    name, nb = executed
    number = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")
    for i, kind, text in shown_texts(nb):
        long = [n for n in number.findall(text) if len(n.replace(".", "").lstrip("0")) > 5]
        assert not long, f"{name} cell {i}: unrounded {long[:3]}"


def test_sizes_carry_units():
    nb = nbformat.read(NOTEBOOK_DIR.parent / "tests" / "nbval" / "05_train.ipynb", as_version=4)
    (text,) = [t for _, kind, t in shown_texts(nb) if kind == "text/plain" and "adapter_model.safetensors" in t]
    rows = [line.split() for line in text.splitlines() if "." in line and not line.rstrip().endswith("/")]
    assert rows and all(row[-1] in ("KB", "MB", "GB") for row in rows), text


def test_figures_as_tables_show_them():
    from semifinetune.train import file_size, shown

    assert [shown(v) for v in (7.63078498840332, 4358144, ["float32"], None, True, 9.18)] == [
        "7.6308", "4,358,144", "float32", "none", "True", "9.18"]
    assert [file_size(n) for n in (5222, 59392, 18_271_842, 3 * 2**30)] == ["5.1 KB", "58.0 KB", "17.4 MB", "3.00 GB"]


def test_a_headless_kernel_prints_no_tcp_warning_and_no_bars(tmp_path, capfd):
    """The runner's kernels talk over local sockets (no "running over TCP without encryption" at each start), end
    without a "KeyboardInterrupt caught in kernel" line, and show no progress bars, generate()'s included."""
    from semifinetune.notebooks import execute

    src = tmp_path / "bars.ipynb"
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(
        "from datasets.utils.logging import is_progress_bar_enabled\n"
        "from huggingface_hub.utils import are_progress_bars_disabled\n"
        "from semifinetune.quiet import progress_bars_off\n"
        "print(progress_bars_off(), are_progress_bars_disabled(), is_progress_bar_enabled())")]  # generate(), hub, datasets
    nbformat.write(nb, src)
    execute(src, tmp_path / "out.ipynb", {}, tmp_path, progress=False)
    (cell,) = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
    assert [(o.output_type, o.get("text")) for o in cell.outputs] == [("stream", "True True False\n")]
    printed = capfd.readouterr()
    assert "running over TCP" not in printed.err and "KeyboardInterrupt" not in printed.out + printed.err
