"""The MLproject entry points run through `mlflow run` (the `generate` one for real)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def test_entry_points_call_the_cli() -> None:
    spec = yaml.safe_load((REPO / "MLproject").read_text())
    entry_points = spec["entry_points"]
    assert {"generate", "train", "tune", "evaluate"} <= set(entry_points)
    assert entry_points["train"]["command"].startswith("revcast train {model}")
    assert "--tune {trials}" in entry_points["tune"]["command"]


def test_mlflow_run_generate_writes_a_dataset(tmp_path: Path) -> None:
    mlflow_cli = VENV_BIN / "mlflow"
    assert mlflow_cli.exists(), f"mlflow CLI not found next to {sys.executable}"
    out = tmp_path / "data"
    # other tests' MLflow state (e.g. MLFLOW_EXPERIMENT_ID set by mlflow.set_experiment) must not leak in
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env = {
        **inherited,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    completed = subprocess.run(
        [
            str(mlflow_cli),
            "run",
            str(REPO),
            "-e",
            "generate",
            "-P",
            f"out={out}",
            "-P",
            "accounts=40",
            "-P",
            "seed=3",
            "--env-manager",
            "local",
            "--experiment-name",
            "revcast-mlproject-test",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    assert (out / "accounts.csv").is_file() and (out / "opportunities.csv").is_file()
    assert (out / "truth").is_dir()
    shutil.rmtree(out)
