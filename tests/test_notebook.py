"""The notebook walks through the analysis with the public API; executed here on a tiny run."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "mnist_notebook.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_notebook_runs_end_to_end_on_a_tiny_configuration(tmp_path, dataset, request, monkeypatch):
    data_dir = request.getfixturevalue("mnist_dir" if dataset == "mnist" else "fashion_dir")
    monkeypatch.setenv("NOTEBOOK_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("NOTEBOOK_DATASET", dataset)
    monkeypatch.setenv("NOTEBOOK_DATA_DIR", str(data_dir))
    monkeypatch.setenv("NOTEBOOK_TINY", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "ensemble of 2: test accuracy" in text
    assert "DESCRIBE YOUR MODEL" in text and "IMPACT OF THE IMAGES AND IMPROVEMENTS" in text
    assert (tmp_path / "run" / "scores.csv").is_file()
    assert f"{dataset} train (60000, 28, 28)" in text
    assert "600 training digits by region" in text  # the cross-fitted run's dynamics
    assert ("no human review" in text) == (dataset != "mnist")
