"""Optuna tuning of LightGBM parameters with time-ordered folds inside the training period.

Folds are an *expanding window* over the training slice's as-of dates: the dates are cut in time
order into ``n_folds + 1`` blocks; fold k trains on blocks 0..k and validates on block k+1, with the
same purge as the main split: training rows of a fold need ``as_of <= validation_start - gap`` and,
when the caller passes when each row's label became known (``decided_at``), ``decided_at <
validation_start`` (a label decided after the validation block starts would carry later knowledge
into the fold's training part). No validation row is ever older than a training row of its fold, and
the calibration / test slices are never seen. For binary objectives a fold is only used when both
its training and its validation part hold at least ``tuning.min_class_rows`` positives and as many
negatives (the earliest blocks of a rare label can have none, which makes the fold's metric
meaningless and drags the study towards parameters that only fit the later folds).

Each trial runs ``lightgbm.cv`` over those folds with early stopping; pruning uses
optuna-integration's ``LightGBMPruningCallback`` on the fold-averaged metric. Every finished trial
(complete, pruned or failed, tagged with its state) is logged as a nested MLflow run in the active
run's experiment when a run is active. The study lives in SQLite (``optuna.storages.RDBStorage``)
named per model, data fingerprint and a short hash of everything that gives a trial's value its
meaning (search space, base LightGBM parameters, metric, boosting limits, fold layout), so
re-running the same command resumes it (only the missing trials, up to ``n_trials`` finished ones,
are run) while a changed search space or parameter starts a new study.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: Metric direction per LightGBM metric name (what the study optimises).
_MAXIMISED = {"auc", "average_precision"}

#: LightGBM objectives with a 0/1 label (the only ones the per-class fold minimum applies to).
_BINARY_OBJECTIVES = {"binary", "cross_entropy", "xentropy"}

#: Default of ``tuning.min_class_rows``: positives and negatives each part of a fold needs.
DEFAULT_MIN_CLASS_ROWS = 20


def time_ordered_folds(
    as_of: pd.Series | Sequence[Any],
    n_folds: int,
    label_gap_days: int = 0,
    *,
    labels: np.ndarray | Sequence[float] | None = None,
    min_class_rows: int = 0,
    decided_at: pd.Series | Sequence[Any] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Expanding-window folds over as-of dates (train: older blocks, validate: the next block).

    Args:
        as_of: As-of date of every training row.
        n_folds: Number of folds (the dates are cut into ``n_folds + 1`` blocks).
        label_gap_days: Training rows of a fold need ``as_of <= validation_start - gap``.
        labels: 0/1 label of every row (aligned by position with ``as_of``); needed for
            ``min_class_rows``.
        min_class_rows: Positives and negatives each required in both the training and the
            validation part of a fold (0: no requirement).
        decided_at: When each row's label became known (aligned by position with ``as_of``);
            training rows of a fold then also need ``decided_at < validation_start``. A missing
            value (NaT) never satisfies that, so such a row only ever validates.

    Returns:
        ``[(train_positions, validation_positions), ...]`` as integer numpy arrays; folds whose
        train or validation part would be empty, or short of either class, are left out.

    Raises:
        ValueError: Fewer distinct dates than blocks, misaligned inputs, or no usable fold (the
            message lists every fold's rows and positives).
    """
    dates = pd.to_datetime(pd.Series(as_of)).reset_index(drop=True)
    if min_class_rows > 0 and labels is None:
        raise ValueError("min_class_rows needs the labels")
    y = None if labels is None else np.asarray(labels, dtype=float)
    if y is not None and len(y) != len(dates):
        raise ValueError(f"labels has {len(y)} rows, as_of {len(dates)}")
    decided = None
    if decided_at is not None:
        decided = pd.to_datetime(pd.Series(decided_at)).reset_index(drop=True)
        if len(decided) != len(dates):
            raise ValueError(f"decided_at has {len(decided)} rows, as_of {len(dates)}")
    unique = np.sort(dates.unique())
    if len(unique) < n_folds + 1:
        raise ValueError(f"tuning needs at least {n_folds + 1} distinct as-of dates in the training slice")
    blocks = np.array_split(unique, n_folds + 1)
    gap = pd.Timedelta(days=int(label_gap_days))
    folds = []
    left_out = []
    for k in range(n_folds):
        validation_start, validation_end = blocks[k + 1][0], blocks[k + 1][-1]
        train_mask = (dates <= blocks[k][-1]) & (dates <= validation_start - gap)
        if decided is not None:
            train_mask &= decided < validation_start
        valid_mask = (dates >= validation_start) & (dates <= validation_end)
        train_pos = np.flatnonzero(train_mask.to_numpy())
        valid_pos = np.flatnonzero(valid_mask.to_numpy())
        counts = _class_counts(y, train_pos), _class_counts(y, valid_pos)
        usable = len(train_pos) > 0 and len(valid_pos) > 0
        if counts[0] is not None and counts[1] is not None:
            usable = usable and min(*counts[0], *counts[1]) >= min_class_rows
        if usable:
            folds.append((train_pos, valid_pos))
        else:
            left_out.append(
                f"fold {k} (validation from {pd.Timestamp(validation_start).date()}): "
                f"train {_describe(len(train_pos), counts[0])}, "
                f"validation {_describe(len(valid_pos), counts[1])}"
            )
    requirement = "training and validation rows"
    if y is not None:
        requirement += f" with at least {min_class_rows} positives and {min_class_rows} negatives in both"
    for line in left_out:
        logger.warning("tuning: left out %s (a fold needs %s)", line, requirement)
    if not folds:
        raise ValueError(
            f"no usable time-ordered fold (each needs {requirement}): {'; '.join(left_out)}. "
            "Lower tuning.n_folds or tuning.min_class_rows, or train without --tune"
        )
    return folds


def _class_counts(y: np.ndarray | None, positions: np.ndarray) -> tuple[int, int] | None:
    """``(positives, negatives)`` among ``positions``, or None without labels."""
    if y is None:
        return None
    positives = int((y[positions] > 0.5).sum())
    return positives, len(positions) - positives


def _describe(n_rows: int, counts: tuple[int, int] | None) -> str:
    """``"541 rows (1 positive, 540 negative)"`` (the class counts only with labels)."""
    if counts is None:
        return f"{n_rows} rows"
    return f"{n_rows} rows ({counts[0]} positive, {counts[1]} negative)"


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


def study_key(
    search_space: Mapping[str, Any],
    base_params: Mapping[str, Any],
    *,
    metric: str,
    max_rounds: int,
    early_stopping_rounds: int,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
) -> str:
    """Short hash (8 hex digits) of what a trial's value depends on besides the data.

    A stored trial is only comparable with new ones when the same parameters are searched around
    the same base, scored by the same metric on the same folds; anything else must start a new study.
    """
    digest = hashlib.sha256()
    settings = {
        "search_space": search_space,
        "base_params": base_params,
        "metric": metric,
        "max_rounds": int(max_rounds),
        "early_stopping_rounds": int(early_stopping_rounds),
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for train_pos, valid_pos in folds:
        digest.update(np.asarray(train_pos, dtype=np.int64).tobytes())
        digest.update(b"|")
        digest.update(np.asarray(valid_pos, dtype=np.int64).tobytes())
        digest.update(b"#")
    return digest.hexdigest()[:8]


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
    decided_at: pd.Series | Sequence[Any] | None = None,
    pruner: Any = None,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) an Optuna study over LightGBM parameters on time-ordered folds.

    Args:
        x_train: Prepared training features (training slice only).
        y_train: Training target.
        as_of_train: As-of date per training row (defines the folds).
        base_params: LightGBM parameters the search space overrides (objective, metric, seed...).
        params: Training configuration (``tuning`` block with ``n_folds``, ``min_class_rows``,
            ``search_space``...; ``lightgbm.max_boost_rounds`` ...).
        n_trials: Finished trials the study should hold after this call (resume runs the rest).
        model: Model name, part of the study name.
        data_fingerprint: Dataset fingerprint, part of the study name.
        storage_path: SQLite file of the study (default: ``optuna.db`` next to the tracking DB).
        label_gap_days: Purge gap between a fold's training rows and its validation block.
        log_to_mlflow: Log each trial as a nested MLflow run when a run is active.
        decided_at: Optional time each training row's label became known, aligned by position with
            ``x_train``; a fold's training rows then need ``decided_at < validation_start`` (the
            row-level purge of the main split). None: only the as-of gap purges.
        pruner: Optuna pruner (default: ``MedianPruner(n_startup_trials=3, n_warmup_steps=20)``).
        echo: Receives the one-line resume note (default: printed to stderr).

    Returns:
        ``{"best_params", "best_value", "metric", "direction", "n_trials", "n_trials_run_now",
        "n_trials_already_finished", "n_pruned", "n_failed", "study_name", "study_note", "storage",
        "best_num_boost_round", "n_folds", "min_class_rows"}``.

    Raises:
        ValueError: No usable fold (see :func:`time_ordered_folds`) or no trial completed.
    """
    import lightgbm as lgb
    import optuna
    from optuna_integration.lightgbm import LightGBMPruningCallback

    tuning = params.get("tuning", {})
    metric = str(base_params.get("metric") or tuning.get("metric", "binary_logloss"))
    direction = "maximize" if metric in _MAXIMISED else "minimize"
    binary = str(base_params.get("objective", "")) in _BINARY_OBJECTIVES
    min_class_rows = int(tuning.get("min_class_rows", DEFAULT_MIN_CLASS_ROWS)) if binary else 0
    folds = time_ordered_folds(
        as_of_train,
        int(tuning.get("n_folds", 3)),
        label_gap_days,
        labels=np.asarray(y_train, dtype=float) if binary else None,
        min_class_rows=min_class_rows,
        decided_at=decided_at,
    )
    max_rounds = int(params["lightgbm"]["max_boost_rounds"])
    early_stopping = int(params["lightgbm"]["early_stopping_rounds"])
    storage_path = Path(storage_path) if storage_path else default_storage_path()
    storage_path.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{storage_path}")
    key = study_key(
        tuning["search_space"],
        base_params,
        metric=metric,
        max_rounds=max_rounds,
        early_stopping_rounds=early_stopping,
        folds=folds,
    )
    study_name = f"revcast-{model}-{data_fingerprint[:16]}-{key}"
    seed = int(params.get("seed", 7))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction=direction,
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=20),
    )
    finished = [
        t
        for t in study.trials
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    remaining = max(0, int(n_trials) - len(finished))
    note = (
        f"study {study_name}: {len(finished)} trials already finished, "
        f"running {remaining} more (total {len(finished) + remaining})"
    )
    logger.info(note)
    (echo or _stderr)(note)
    # One Dataset serves every trial; feature_pre_filter=False lets trials lower min_child_samples
    # below the value the Dataset was first binned with (LightGBM refuses otherwise).
    dataset = lgb.Dataset(
        x_train,
        label=np.asarray(y_train, dtype=float),
        free_raw_data=False,
        params={"feature_pre_filter": False},
    )

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
        trial.set_user_attr("num_boost_round", best + 1)
        return float(curve[best])

    if remaining:
        # A study callback sees every finished trial with its final state; logging from inside the
        # objective would miss the pruned ones (the pruning callback raises out of lgb.cv).
        callbacks = [_TrialLogger(metric, study_name)] if log_to_mlflow else []
        study.optimize(objective, n_trials=remaining, timeout=tuning.get("timeout_s"), callbacks=callbacks)
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
        "n_trials_already_finished": len(finished),
        "n_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        "n_failed": sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials),
        "study_name": study_name,
        "study_note": note,
        "storage": str(storage_path),
        "best_num_boost_round": int(best.user_attrs.get("num_boost_round", 0)),
        "n_folds": len(folds),
        "min_class_rows": min_class_rows,
    }


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _TrialLogger:
    """Optuna study callback: one nested MLflow run per finished trial, in the parent's experiment."""

    def __init__(self, metric: str, study_name: str) -> None:
        self.metric = metric
        self.study_name = study_name

    def __call__(self, study: Any, trial: Any) -> None:
        """Log ``trial`` (a FrozenTrial) under the active run; no-op without one."""
        import mlflow

        parent = mlflow.active_run()
        if parent is None:
            return
        state = trial.state.name
        metrics: dict[str, float] = {}
        if trial.value is not None:
            metrics[f"cv_{self.metric}"] = float(trial.value)
        if "num_boost_round" in trial.user_attrs:
            metrics["num_boost_round"] = float(trial.user_attrs["num_boost_round"])
        if trial.intermediate_values:
            # For a pruned trial: where it stopped and how it stood then.
            last_step = max(trial.intermediate_values)
            metrics[f"last_intermediate_{self.metric}"] = float(trial.intermediate_values[last_step])
            metrics["last_step"] = float(last_step + 1)
        # Without experiment_id the child would go to the fluent API's active experiment (often
        # Default), not to the parent's: a run started with experiment_id does not change that.
        mlflow.start_run(
            experiment_id=parent.info.experiment_id,
            run_name=f"trial-{trial.number}",
            nested=True,
            tags={"optuna.state": state, "optuna.study": self.study_name, "optuna.trial": str(trial.number)},
        )
        status = "FAILED" if state == "FAIL" else "FINISHED"
        try:
            mlflow.log_params({f"lgb.{k}": v for k, v in trial.params.items()})
            if metrics:
                mlflow.log_metrics(metrics)
        except Exception:
            status = "FAILED"
            raise
        finally:
            mlflow.end_run(status=status)
