"""Tiny real models for the serving tests: LightGBM on the real feature builders' output, saved as real
bundles and registered in MLflow with the real tracking helpers (so the registry layout is the one
`revcast train` produces). Quality is irrelevant here; speed and realism of the artefacts are not."""

from __future__ import annotations

import tempfile
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.params import categorical_columns, feature_columns
from features.snapshots import as_of_dates, build_churn_training_set, build_win_training_set
from serving.bundle import ModelBundle, learn_categories, prepare_features

TRAIN_DATES = ("2024-03-01", "2025-10-01")


def training_frames(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Win (with won amount) and churn training snapshots, monthly."""
    dates = as_of_dates(*TRAIN_DATES, freq="MS")
    return {"win": build_win_training_set(tables, dates), "churn": build_churn_training_set(tables, dates)}


def train_bundle(kind: str, frames: dict[str, pd.DataFrame], n_trees: int = 15, seed: int = 0) -> ModelBundle:
    """Train a small booster for ``win``, ``amount`` or ``churn`` and wrap it as a bundle."""
    feature_kind = "account" if kind == "churn" else "opportunity"
    frame = frames["churn" if kind == "churn" else "win"]
    if kind == "amount":
        frame = frame[frame["label_won"] == 1]
        label = frame["label_won_amount"].to_numpy(dtype=float)
        objective = "regression"
    else:
        label = frame["label_churn" if kind == "churn" else "label_won"].to_numpy(dtype=float)
        objective = "binary"
    names = feature_columns(feature_kind, frame)
    categories = learn_categories(frame, [c for c in categorical_columns(feature_kind) if c in names])
    prepared = prepare_features(frame, names, categories)
    booster = lgb.train(
        {
            "objective": objective,
            "num_leaves": 7,
            "min_data_in_leaf": 5,
            "learning_rate": 0.2,
            "seed": seed,
            "bagging_seed": seed,
            "feature_fraction": 0.9 if seed else 1.0,
            "feature_fraction_seed": seed,
            "verbose": -1,
            "num_threads": 1,
        },
        lgb.Dataset(prepared, label=label, categorical_feature=list(categories), free_raw_data=False),
        num_boost_round=n_trees,
    )
    calibration = None
    if objective == "binary":
        raw = booster.predict(prepared)
        grid = np.quantile(raw, np.linspace(0, 1, 6))
        calibration = {
            "method": "isotonic",
            "x": list(np.unique(grid)),
            "y": list(np.linspace(0.05, 0.95, len(np.unique(grid)))),
        }
    return ModelBundle.from_booster(
        booster,
        model=kind,
        kind="classifier" if objective == "binary" else "regressor",
        feature_names=names,
        categorical=categories,
        calibration=calibration,
        extra={"trained_as_of": TRAIN_DATES[1], "test_seed": seed},
    )


def register_bundle(
    bundle: ModelBundle, kind: str, tracking_uri: str, alias: str = "champion", sha256_tag: str | None = None
) -> str:
    """Log the bundle as a models-from-code pyfunc model, register it and point ``alias`` at it.

    ``sha256_tag`` overrides the registered digest (to register a deliberately inconsistent version).
    """
    import mlflow

    from serving.registry import SHA256_TAG, mlflow_client, registered_name
    from training.tracking import experiment_for, log_bundle_model, register

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    experiment_id = experiment_for(kind, tracking_uri)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(experiment_id=experiment_id):
        bundle_dir = bundle.save(Path(tmp) / "bundle")
        model_uri = log_bundle_model(bundle_dir, tracking_uri=tracking_uri)
        version = register(
            model_uri, kind, tags={SHA256_TAG: sha256_tag or bundle.sha256}, tracking_uri=tracking_uri
        )
    mlflow_client(tracking_uri).set_registered_model_alias(registered_name(kind), alias, version)
    return version
