"""Optuna tuning: time-ordered folds, pruning callback, nested MLflow runs, resumable SQLite study."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
from train_data import fast_params

from serving.bundle import prepare_features
from training.train import lightgbm_params
from training.tune import time_ordered_folds, tune_lightgbm


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


def _weekly_rows(n_weeks: int, rows_per_week: int) -> pd.Series:
    weeks = pd.date_range("2024-01-01", periods=n_weeks, freq="7D")
    return pd.Series(np.repeat(weeks, rows_per_week))


class _PruneAfterFirstTrial(optuna.pruners.BasePruner):
    """Completes trial 0, prunes every later trial at its 5th reported round (deterministic)."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number >= 1 and max(trial.intermediate_values, default=0) >= 4


def _tune(x, y, as_of, storage: Path, n_trials: int, **kwargs: Any) -> dict[str, Any]:
    params = kwargs.pop("params", None) or fast_params()
    return tune_lightgbm(
        x,
        y,
        as_of,
        base_params=kwargs.pop("base_params", None) or lightgbm_params(params, "win"),
        params=params,
        n_trials=n_trials,
        model="win",
        data_fingerprint="abc",
        storage_path=storage,
        **kwargs,
    )


def test_folds_short_of_either_class_are_left_out() -> None:
    # 4 blocks of 10 weekly dates x 10 rows; the label is rare early (as churn is in young data):
    # block 0 has no positive, so fold 0 (train on block 0) cannot learn or be scored meaningfully.
    as_of = _weekly_rows(40, 10)
    block = np.repeat(np.arange(4), 100)
    rng = np.random.default_rng(0)
    labels = np.where(block == 0, 0.0, (rng.random(400) < 0.4).astype(float))
    unrestricted = time_ordered_folds(as_of, 3)
    assert len(unrestricted) == 3
    folds = time_ordered_folds(as_of, 3, labels=labels, min_class_rows=10)
    assert [len(train) for train, _ in folds] == [200, 300]  # fold 0 (100 training rows) left out
    for train, valid in folds:
        for part in (train, valid):
            positives = int(labels[part].sum())
            assert positives >= 10 and len(part) - positives >= 10


def test_no_usable_fold_raises_and_says_why(tmp_path: Path, training_slice) -> None:
    x, _, as_of = training_slice
    y = np.zeros(len(x))
    y[-15:] = 1.0  # 15 positives, all in the last block: no fold reaches the default minimum of 20
    with pytest.raises(ValueError, match=r"at least 20 positives and 20 negatives.*fold 0 .*0 positive"):
        _tune(x, y, as_of, tmp_path / "optuna.db", 2, log_to_mlflow=False)
    assert not (tmp_path / "optuna.db").exists() or not optuna.get_all_study_summaries(
        f"sqlite:///{tmp_path / 'optuna.db'}"
    )


def test_min_class_rows_is_configurable_and_ignored_for_regression(tmp_path: Path, training_slice) -> None:
    x, y, as_of = training_slice
    params = fast_params()
    params["tuning"]["min_class_rows"] = 10_000  # more than the slice has: every fold is left out
    with pytest.raises(ValueError, match="at least 10000 positives"):
        _tune(x, y, as_of, tmp_path / "optuna.db", 1, params=params, log_to_mlflow=False)
    # an L1 regression has no classes: the same setting must not block it
    amount = lightgbm_params(params, "amount")
    summary = _tune(
        x, y, as_of, tmp_path / "optuna.db", 1, params=params, base_params=amount, log_to_mlflow=False
    )
    assert summary["min_class_rows"] == 0 and summary["n_folds"] == 2


def test_decided_at_purges_fold_training_rows() -> None:
    as_of = _weekly_rows(30, 4)
    # every label becomes known 8 weeks after its as-of date (long horizon), one row much later
    decided_at = as_of + pd.Timedelta(weeks=8)
    decided_at.iloc[0] = pd.Timestamp("2030-01-01")
    validation_starts = [pd.Timestamp("2024-01-01") + pd.Timedelta(weeks=10 * k) for k in (1, 2)]
    plain = time_ordered_folds(as_of, 2)
    purged = time_ordered_folds(as_of, 2, decided_at=decided_at)
    for (train_plain, valid_plain), (train, valid), start in zip(
        plain, purged, validation_starts, strict=True
    ):
        assert np.array_equal(valid, valid_plain)
        assert (decided_at.iloc[train] < start).all()
        assert set(train) < set(train_plain)
        assert 0 in train_plain and 0 not in train
    # fold 0 validates from week 10: weeks 0-1 are decided in time (8 rows, less row 0); fold 1 from
    # week 20: weeks 0-11 (48 rows, less row 0). Without the purge: weeks 0-9 and 0-19.
    assert [len(train) for train, _ in plain] == [40, 80]
    assert [len(train) for train, _ in purged] == [7, 47]
    # the optional purge changes nothing when labels are known at once
    same = time_ordered_folds(as_of, 2, decided_at=as_of)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(same, plain, strict=True))


def test_every_trial_is_a_nested_run_in_the_parents_experiment(
    tmp_path: Path, training_slice, monkeypatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    x, y, as_of = training_slice
    # The fluent API's active experiment is somewhere else, as in the CLI (parent started by id).
    elsewhere = mlflow.set_experiment("elsewhere")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # set_experiment exports it; keep it local
    experiment_id = mlflow.create_experiment("revcast-win")
    with mlflow.start_run(experiment_id=experiment_id, run_name="tune-win") as parent:
        summary = _tune(x, y, as_of, tmp_path / "optuna.db", 3, pruner=_PruneAfterFirstTrial())
    assert summary["n_trials"] == 3 and summary["n_pruned"] == 2
    children = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    by_name = dict(zip(children["tags.mlflow.runName"], children["tags.optuna.state"], strict=True))
    assert by_name == {"trial-0": "COMPLETE", "trial-1": "PRUNED", "trial-2": "PRUNED"}
    pruned = children[children["tags.optuna.state"] == "PRUNED"]
    assert (pruned["metrics.last_step"] == 5).all()
    assert pruned["metrics.last_intermediate_binary_logloss"].notna().all()
    assert len(mlflow.search_runs(experiment_ids=[elsewhere.experiment_id])) == 0


def test_study_is_persisted_resumed_and_says_so(tmp_path: Path, training_slice) -> None:
    x, y, as_of = training_slice
    params = fast_params()
    storage = tmp_path / "optuna.db"
    notes: list[str] = []
    first = _tune(x, y, as_of, storage, 3, params=params, log_to_mlflow=False, echo=notes.append)
    assert storage.is_file()
    assert first["n_trials"] == 3 and first["n_trials_run_now"] == 3
    assert set(first["best_params"]) == set(params["tuning"]["search_space"])
    assert first["best_value"] < 0.69  # log loss below the coin-flip value: the signal was found
    assert first["n_failed"] == 0
    # same model + data + settings -> same study, only the missing trial runs
    second = _tune(x, y, as_of, storage, 4, params=params, log_to_mlflow=False, echo=notes.append)
    again = _tune(x, y, as_of, storage, 4, params=params, log_to_mlflow=False, echo=notes.append)
    name = first["study_name"]
    assert second["study_name"] == name and again["study_name"] == name
    assert (second["n_trials"], second["n_trials_run_now"]) == (4, 1)
    assert (again["n_trials"], again["n_trials_run_now"], again["n_trials_already_finished"]) == (4, 0, 4)
    assert notes == [
        f"study {name}: 0 trials already finished, running 3 more (total 3)",
        f"study {name}: 3 trials already finished, running 1 more (total 4)",
        f"study {name}: 4 trials already finished, running 0 more (total 4)",
    ]
    assert again["study_note"] == notes[-1]


def test_changed_search_space_or_base_parameters_start_a_new_study(tmp_path: Path, training_slice) -> None:
    x, y, as_of = training_slice
    storage = tmp_path / "optuna.db"
    params = fast_params()
    first = _tune(x, y, as_of, storage, 2, params=params, log_to_mlflow=False, echo=lambda _: None)
    narrower = fast_params()
    narrower["tuning"]["search_space"]["num_leaves"] = [4, 15, "int"]
    other_base = {**lightgbm_params(params, "win"), "lambda_l1": 1.0}
    names = {first["study_name"]}
    for kwargs in ({"params": narrower}, {"params": params, "base_params": other_base}):
        summary = _tune(x, y, as_of, storage, 2, log_to_mlflow=False, echo=lambda _: None, **kwargs)
        assert summary["study_name"] not in names and summary["n_trials_run_now"] == 2
        names.add(summary["study_name"])
    assert first["study_name"].startswith("revcast-win-abc-")
