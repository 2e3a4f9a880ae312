"""The classifier pipeline's choices that protect the comparison with baselines.

- Tuned parameters compete with the configured ones on the calibration slice (tuning folds inside the
  training slice can be small; they must not be able to make the model worse than the defaults).
- Baselines are recalibrated on the calibration slice as the model is, so that the model's own
  calibration step does not count as a gain over them.
- The data minimums count deals, not their weekly snapshots.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from train_data import fast_params, generate_small_crm, load_small_crm

from training.train import train_win_model


@pytest.fixture(scope="module")
def crm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    tables, _ = load_small_crm(generate_small_crm(tmp_path_factory.mktemp("crm")))
    return tables


@pytest.fixture(scope="module")
def untuned(crm):
    return train_win_model(crm, fast_params())


def test_tuned_parameters_compete_with_the_configured_ones(crm, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = train_win_model(
        crm,
        fast_params(),
        tune_trials=2,
        tune_context={"storage_path": tmp_path / "optuna.db", "data_fingerprint": "candidates-test"},
    )
    losses = result.metrics["candidates_calibration_log_loss"]
    assert {"tuned", "configured"} <= set(losses)
    assert result.metrics["lightgbm_candidate"] == min(losses, key=losses.get)
    assert result.metrics["tuned"] is True


def test_every_baseline_is_recalibrated_with_the_models_calibration_method(untuned) -> None:
    metrics = untuned.metrics
    assert set(metrics["baselines_recalibrated"]) == set(metrics["baselines"])
    assert set(metrics["baselines_recalibrated"].values()) <= {"platt", "isotonic"}
    # still probabilities, and the base rate stays one number for every deal
    for name in metrics["baselines"]:
        values = untuned.test_set[f"baseline_{name}"].to_numpy()
        assert np.all((values >= 0) & (values <= 1)), name
    assert np.ptp(untuned.test_set["baseline_base_rate"].to_numpy()) < 1e-9


def test_data_minimums_count_deals_not_snapshots(untuned) -> None:
    metrics = untuned.metrics
    split_rows = untuned.metrics["rows_per_slice"]
    assert metrics["n_train_positive_entities"] > 0 and metrics["n_train_negative_entities"] > 0
    # weekly snapshots: a deal appears in several training rows, so rows outnumber deals
    assert metrics["n_train_positive_entities"] + metrics["n_train_negative_entities"] < split_rows["train"]
