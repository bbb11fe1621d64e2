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
