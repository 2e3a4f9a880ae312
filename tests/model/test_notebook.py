"""The retrain-and-promote notebook runs top to bottom on a small generated CRM.

The percent-format script is converted with jupytext into a notebook in a temporary directory and
executed with nbclient on the project's own Python kernel (jupyter_client maps the ``python3``
kernelspec to the running interpreter; nothing is installed into the user's home).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from train_data import fast_params, generate_small_crm

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "retrain_and_promote.py"


def test_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    data = generate_small_crm(tmp_path / "data")
    params_file = tmp_path / "fast_params.yaml"
    params_file.write_text(yaml.safe_dump(fast_params()))
    monkeypatch.setenv("REVCAST_NOTEBOOK_DATA", str(data))
    monkeypatch.setenv("REVCAST_TRAINING_PARAMS", str(params_file))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOK.parents[1]))

    notebook = jupytext.read(NOTEBOOK)
    ipynb = tmp_path / "retrain_and_promote.ipynb"
    nbformat.write(notebook, ipynb)
    client = NotebookClient(
        nbformat.read(ipynb, as_version=4),
        kernel_name="python3",
        timeout=900,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    executed = client.execute()
    outputs = "\n".join(
        output.get("text", "")
        for cell in executed.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert "verdict:" in outputs and "promoted:" in outputs
