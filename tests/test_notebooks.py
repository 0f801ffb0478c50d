"""The example notebooks, executed end to end in smoke mode (mock data, a tiny model)."""

import os
import sys
import time

import nbformat
import pytest
from conftest import BACKEND, timm_convmixer
from nbclient import NotebookClient

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


# Each notebook runs once, on a backend of its own (the kernel inherits KERAS_BACKEND).
NOTEBOOK_BACKENDS = {"cifar10_transfer_learning": "torch", "cifar10_from_scratch": "tensorflow"}


@pytest.mark.parametrize("name", NOTEBOOK_BACKENDS)
def test_notebook_runs_without_errors(name, tmp_path, monkeypatch):
    if NOTEBOOK_BACKENDS[name] != BACKEND:
        pytest.skip(f"executed once, on the {NOTEBOOK_BACKENDS[name]} backend")
    from safetensors.torch import save_file

    weights = tmp_path / "convmixer_16_2_k3_p2.safetensors"
    save_file(timm_convmixer(16, 2, 3, 2, classes=1000).state_dict(), str(weights))
    monkeypatch.setenv("KERAS_CONVMIXER_SMOKE", "1")
    monkeypatch.setenv("KERAS_CONVMIXER_SMOKE_WEIGHTS", str(weights))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(os.path.join(EXAMPLES, f"{name}.ipynb"), as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    start = time.perf_counter()
    NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()
    print(f"{name}: smoke run {time.perf_counter() - start:.1f} s", file=sys.stderr)
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors
    text = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "accuracy" in text
