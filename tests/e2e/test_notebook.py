"""examples/paper_demo.ipynb runs from top to bottom (nbclient), offline on a CPU, its MLflow
store, Optuna journal and outputs in a temporary folder; it is stored without outputs.

The notebook's own default is SmolLM2; the test runs it on ``tiny`` (every cell, a few minutes),
because on SmolLM2 it took 712.7 s on a 2-core machine shared with other jobs (4 min 55 s of CPU).
MEMINJECT_NOTEBOOK_MODEL=smollm2-135m runs the test on SmolLM2."""

from __future__ import annotations

import os
import time

import pytest

from conftest import ROOT

NOTEBOOK = ROOT / "examples" / "paper_demo.ipynb"


def test_the_notebook_is_stored_without_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
@pytest.mark.parametrize("model", [os.environ.get("MEMINJECT_NOTEBOOK_MODEL", "tiny")])
def test_the_notebook_runs_without_errors(tmp_path, monkeypatch, model):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("MEMINJECT_NOTEBOOK_MODEL", model)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    started = time.perf_counter()
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    print(f"notebook on {model}: {time.perf_counter() - started:.1f} s")
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    text = "\n".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.output_type == "stream")
    assert "the clean pass is not run again" in text and "sweep smoke: study notebook" in text
    assert (tmp_path / "outputs" / "figures" / "notebook" / "gain_heatmap.png").is_file()
    assert (tmp_path / "mlruns").is_dir() and not (ROOT / "examples" / "mlruns").exists()
