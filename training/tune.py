"""Optuna tuning of LightGBM parameters with time-ordered folds inside the training period.

Folds are an *expanding window* over the training slice's as-of dates: the dates are cut in time
order into ``n_folds + 1`` blocks; fold k trains on blocks 0..k and validates on block k+1, with the
same purge gap as the main split (training rows of a fold need ``as_of <= validation_start - gap``).
No validation row is ever older than a training row of its fold, and the calibration / test slices
are never seen. Each trial runs ``lightgbm.cv`` over those folds with early stopping; pruning uses
optuna-integration's ``LightGBMPruningCallback`` on the fold-averaged metric. Every trial is logged
as a nested MLflow run when a run is active. The study lives in SQLite (``optuna.storages.RDBStorage``)
named per model and data fingerprint, so re-running the same command resumes it: only the missing
trials (up to ``n_trials`` finished ones) are run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: Metric direction per LightGBM metric name (what the study optimises).
_MAXIMISED = {"auc", "average_precision"}


def time_ordered_folds(
    as_of: pd.Series | Sequence[Any], n_folds: int, label_gap_days: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Expanding-window folds over as-of dates (train: older blocks, validate: the next block).

    Args:
        as_of: As-of date of every training row.
        n_folds: Number of folds (the dates are cut into ``n_folds + 1`` blocks).
        label_gap_days: Training rows of a fold need ``as_of <= validation_start - gap``.

    Returns:
        ``[(train_positions, validation_positions), ...]`` as integer numpy arrays; folds whose
        train or validation part would be empty are left out.

    Raises:
        ValueError: Fewer distinct dates than blocks, or no usable fold.
    """
    dates = pd.to_datetime(pd.Series(as_of)).reset_index(drop=True)
    unique = np.sort(dates.unique())
    if len(unique) < n_folds + 1:
        raise ValueError(f"tuning needs at least {n_folds + 1} distinct as-of dates in the training slice")
    blocks = np.array_split(unique, n_folds + 1)
    gap = pd.Timedelta(days=int(label_gap_days))
    folds = []
    for k in range(n_folds):
        validation_start, validation_end = blocks[k + 1][0], blocks[k + 1][-1]
        train_mask = (dates <= blocks[k][-1]) & (dates <= validation_start - gap)
        valid_mask = (dates >= validation_start) & (dates <= validation_end)
        if train_mask.any() and valid_mask.any():
            folds.append((np.flatnonzero(train_mask.to_numpy()), np.flatnonzero(valid_mask.to_numpy())))
    if not folds:
        raise ValueError("no time-ordered fold has both training and validation rows; lower tuning.n_folds")
    return folds


def _suggest(trial: Any, search_space: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """Draw one parameter set: ``name: [low, high, kind]`` with kind float|log|int|int_log."""
    values: dict[str, Any] = {}
    for name, (low, high, kind) in search_space.items():
        if kind == "int":
            values[name] = trial.suggest_int(name, int(low), int(high))
        elif kind == "int_log":
            values[name] = trial.suggest_int(name, int(low), int(high), log=True)
        elif kind == "log":
            values[name] = trial.suggest_float(name, float(low), float(high), log=True)
        else:
            values[name] = trial.suggest_float(name, float(low), float(high))
    return values


def default_storage_path() -> Path:
    """SQLite file for Optuna studies next to the tracking DB (``optuna.db``)."""
    from training.tracking import tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).with_name("optuna.db")
    return Path.cwd() / "optuna.db"


def tune_lightgbm(
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    as_of_train: pd.Series,
    *,
    base_params: Mapping[str, Any],
    params: Mapping[str, Any],
    n_trials: int,
    model: str = "model",
    data_fingerprint: str = "data",
    storage_path: str | Path | None = None,
    label_gap_days: int = 0,
    log_to_mlflow: bool = True,
) -> dict[str, Any]:
    """Run (or resume) an Optuna study over LightGBM parameters on time-ordered folds.

    Args:
        x_train: Prepared training features (training slice only).
        y_train: Training target.
        as_of_train: As-of date per training row (defines the folds).
        base_params: LightGBM parameters the search space overrides (objective, metric, seed...).
        params: Training configuration (``tuning`` block, ``lightgbm.max_boost_rounds`` ...).
        n_trials: Finished trials the study should hold after this call (resume runs the rest).
        model: Model name, part of the study name.
        data_fingerprint: Dataset fingerprint, part of the study name.
        storage_path: SQLite file of the study (default: ``optuna.db`` next to the tracking DB).
        label_gap_days: Purge gap between a fold's training rows and its validation block.
        log_to_mlflow: Log each trial as a nested MLflow run when a run is active.

    Returns:
        ``{"best_params", "best_value", "metric", "n_trials", "n_pruned", "study_name", "storage",
        "best_num_boost_round"}``.
    """
    import lightgbm as lgb
    import optuna
    from optuna_integration.lightgbm import LightGBMPruningCallback

    tuning = params.get("tuning", {})
    metric = str(base_params.get("metric") or tuning.get("metric", "binary_logloss"))
    direction = "maximize" if metric in _MAXIMISED else "minimize"
    folds = time_ordered_folds(as_of_train, int(tuning.get("n_folds", 3)), label_gap_days)
    storage_path = Path(storage_path) if storage_path else default_storage_path()
    storage_path.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{storage_path}")
    study_name = f"revcast-{model}-{data_fingerprint[:16]}"
    seed = int(params.get("seed", 7))
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction=direction,
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=20),
    )
    finished = [
        t
        for t in study.trials
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    remaining = max(0, int(n_trials) - len(finished))
    # One Dataset serves every trial; feature_pre_filter=False lets trials lower min_child_samples
    # below the value the Dataset was first binned with (LightGBM refuses otherwise).
    dataset = lgb.Dataset(
        x_train,
        label=np.asarray(y_train, dtype=float),
        free_raw_data=False,
        params={"feature_pre_filter": False},
    )
    max_rounds = int(params["lightgbm"]["max_boost_rounds"])
    early_stopping = int(params["lightgbm"]["early_stopping_rounds"])

    def objective(trial: optuna.trial.Trial) -> float:
        trial_params = {**dict(base_params), **_suggest(trial, tuning["search_space"]), "metric": metric}
        history = lgb.cv(
            trial_params,
            dataset,
            num_boost_round=max_rounds,
            folds=folds,
            stratified=False,
            shuffle=False,
            callbacks=[
                lgb.early_stopping(early_stopping, verbose=False),
                LightGBMPruningCallback(trial, metric),
            ],
        )
        curve = history[f"valid {metric}-mean"]
        best = int(np.argmax(curve) if direction == "maximize" else np.argmin(curve))
        value = float(curve[best])
        trial.set_user_attr("num_boost_round", best + 1)
        _log_trial(trial.number, trial.params, value, metric, best + 1, log_to_mlflow)
        return value

    if remaining:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(objective, n_trials=remaining, timeout=tuning.get("timeout_s"))
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise ValueError(f"tuning: no trial of study {study_name} completed")
    best = study.best_trial
    return {
        "best_params": dict(best.params),
        "best_value": float(best.value),
        "metric": metric,
        "direction": direction,
        "n_trials": len(study.trials),
        "n_trials_run_now": remaining,
        "n_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        "n_failed": sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials),
        "study_name": study_name,
        "storage": str(storage_path),
        "best_num_boost_round": int(best.user_attrs.get("num_boost_round", 0)),
        "n_folds": len(folds),
    }


def _log_trial(
    number: int, trial_params: Mapping[str, Any], value: float, metric: str, rounds: int, enabled: bool
) -> None:
    """Log one trial as a nested MLflow run under the active run (no-op without one)."""
    if not enabled:
        return
    import mlflow

    if mlflow.active_run() is None:
        return
    with mlflow.start_run(run_name=f"trial-{number}", nested=True):
        mlflow.log_params({f"lgb.{k}": v for k, v in trial_params.items()})
        mlflow.log_metrics({f"cv_{metric}": value, "num_boost_round": rounds})
