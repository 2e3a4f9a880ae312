"""Fixtures of the model-core tests: small synthetic data, LightGBM bundles and a real MLflow server."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pytest

from tests.servers import BIN, start_mlflow_server, stop

FEATURES = ["num_signal", "num_noise", "cat_segment"]
CATEGORICAL_COLUMNS = ["cat_segment"]


def make_frame(n_rows: int = 600, seed: int = 0, n_groups: int = 200) -> pd.DataFrame:
    """Synthetic rows with ids, two numeric and one categorical feature and a 0/1 label.

    The label is drawn from a known logistic probability (column ``true_p``) so tests can check
    calibration and ranking against the truth.
    """
    rng = np.random.default_rng(seed)
    segment = rng.choice(["enterprise", "mid", "smb", None], size=n_rows, p=[0.25, 0.3, 0.35, 0.1])
    num_signal = rng.normal(size=n_rows)
    num_noise = rng.normal(size=n_rows)
    num_noise[rng.uniform(size=n_rows) < 0.05] = np.nan
    logit = -0.4 + 1.6 * num_signal + np.where(segment == "enterprise", 0.8, 0.0)
    true_p = 1.0 / (1.0 + np.exp(-logit))
    return pd.DataFrame(
        {
            "opportunity_id": [f"o-{i % n_groups}" for i in range(n_rows)],
            "num_signal": num_signal,
            "num_noise": num_noise,
            "cat_segment": pd.Series(segment, dtype=object),
            "true_p": true_p,
            "label": (rng.uniform(size=n_rows) < true_p).astype(int),
            "amount": np.exp(8 + 0.5 * num_signal + rng.normal(scale=0.2, size=n_rows)),
        }
    )


def train_bundle(
    frame: pd.DataFrame,
    *,
    kind: str = "classifier",
    rounds: int = 40,
    features: list[str] | None = None,
    calibration: dict | None = None,
    model: str | None = None,
):
    """Train a small LightGBM model on ``frame`` and wrap it in a ``ModelBundle``."""
    import lightgbm as lgb

    from serving.bundle import ModelBundle, learn_categories, prepare_features

    features = features or FEATURES
    categorical = learn_categories(frame, [c for c in CATEGORICAL_COLUMNS if c in features])
    x = prepare_features(frame, features, categorical)
    objective = "binary" if kind == "classifier" else "regression"
    target = frame["label"] if kind == "classifier" else frame["amount"]
    params = {
        "objective": objective,
        "num_leaves": 7,
        "learning_rate": 0.1,
        "min_data_in_leaf": 10,
        "min_data_per_group": 10,
        "verbosity": -1,
        "num_threads": 1,
        "deterministic": True,
        "seed": 1,
    }
    booster = lgb.train(params, lgb.Dataset(x, target), num_boost_round=rounds)
    return ModelBundle.from_booster(
        booster,
        model=model or ("win" if kind == "classifier" else "amount"),
        kind=kind,
        feature_names=features,
        categorical=categorical,
        calibration=calibration,
        display_names={"num_signal": "signal strength"},
        extra={"trained_as_of": "2026-01-01"},
    )


@pytest.fixture(scope="session")
def frame() -> pd.DataFrame:
    """600 synthetic rows (seed 0)."""
    return make_frame()


@pytest.fixture(scope="session")
def bundle(frame: pd.DataFrame):
    """A classifier bundle trained on ``frame``."""
    return train_bundle(frame)


@pytest.fixture(scope="session")
def bundle_factory() -> Callable:
    """``train_bundle`` for tests that need several models."""
    return train_bundle


@pytest.fixture(scope="session")
def frame_factory() -> Callable:
    """``make_frame`` for tests that need other data."""
    return make_frame


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (free port, temporary SQLite backend and artifact root).

    Yields the tracking URI; the server is stopped at teardown.
    """
    if not (BIN / "mlflow").exists():
        pytest.skip(f"mlflow command not found next to {sys.executable}")
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow_server"))
    try:
        # Generous: imports alone take a minute on a loaded 2-core machine.
        yield server.wait_ready(timeout_s=300)
    finally:
        stop(server.process)
