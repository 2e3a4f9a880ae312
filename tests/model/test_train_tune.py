"""Optuna tuning: time-ordered folds, pruning callback, nested MLflow runs, resumable SQLite study."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from train_data import fast_params

from serving.bundle import prepare_features
from training.train import lightgbm_params
from training.tune import tune_lightgbm


@pytest.fixture()
def training_slice() -> tuple[pd.DataFrame, np.ndarray, pd.Series]:
    rng = np.random.default_rng(3)
    n = 1200
    frame = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "segment": rng.choice(["smb", "mid", "ent"], n),
        }
    )
    logit = 1.5 * frame["x1"] - frame["x2"] + (frame["segment"] == "ent") * 0.8
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    as_of = pd.Series(
        pd.to_datetime("2024-01-01") + pd.to_timedelta(np.sort(rng.integers(0, 300, n)), unit="D")
    )
    x = prepare_features(frame, ["x1", "x2", "segment"], {"segment": ["ent", "mid", "smb"]})
    return x, y.to_numpy(), as_of


def test_study_is_persisted_resumed_and_logged_as_nested_runs(
    tmp_path: Path, training_slice, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    x, y, as_of = training_slice
    params = fast_params()
    base = lightgbm_params(params, "win")
    storage = tmp_path / "optuna.db"
    experiment = mlflow.set_experiment("tune-test")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # set_experiment exports it; keep it local
    with mlflow.start_run(run_name="parent") as parent:
        first = tune_lightgbm(
            x,
            y,
            as_of,
            base_params=base,
            params=params,
            n_trials=3,
            model="win",
            data_fingerprint="abc",
            storage_path=storage,
        )
    assert storage.is_file()
    assert first["n_trials"] == 3 and first["n_trials_run_now"] == 3
    assert set(first["best_params"]) == set(params["tuning"]["search_space"])
    assert first["best_value"] < 0.69  # log loss below the coin-flip value: the signal was found
    assert first["n_failed"] == 0
    # same model + data fingerprint -> same study, only the missing trial runs
    second = tune_lightgbm(
        x,
        y,
        as_of,
        base_params=base,
        params=params,
        n_trials=4,
        model="win",
        data_fingerprint="abc",
        storage_path=storage,
    )
    assert (
        second["study_name"] == first["study_name"]
        and second["n_trials"] == 4
        and second["n_trials_run_now"] == 1
    )
    children = mlflow.search_runs(
        experiment_ids=[experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    completed = first["n_trials"] - first["n_pruned"]
    assert len(children) == completed
    assert all(name.startswith("trial-") for name in children["tags.mlflow.runName"])
