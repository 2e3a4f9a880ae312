"""The out-of-time split, the purge rule and the time-ordered tuning folds (no data files needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.train import assign_slices, load_training_params, plan_split, plan_split_for_history
from training.tune import time_ordered_folds

WEEKS = pd.date_range("2023-01-02", periods=120, freq="W-MON")
EXPORT = WEEKS[-1] + pd.Timedelta(days=3)


def test_split_is_time_ordered_with_room_for_the_gap() -> None:
    split = plan_split(
        WEEKS, export_at=EXPORT, label_gap_days=90, train_fraction=0.6, calibration_fraction=0.2
    )
    assert split.train_start == WEEKS[0]
    assert (
        split.train_end
        < split.calibration_start
        <= split.calibration_end
        < split.test_start
        <= split.test_end
    )
    # the last usable date leaves the label window inside the data
    assert split.test_end <= EXPORT - pd.Timedelta(days=90)
    assert split.test_end == max(d for d in WEEKS if d <= EXPORT - pd.Timedelta(days=90))


def test_purge_rule_drops_rows_whose_label_window_reaches_the_next_slice() -> None:
    split = plan_split(
        WEEKS, export_at=EXPORT, label_gap_days=60, train_fraction=0.6, calibration_fraction=0.2
    )
    gap = pd.Timedelta(days=60)
    as_of = pd.Series(
        [
            split.train_start,  # old, closed quickly: train
            split.train_start,  # old but closed only during the test period: purged
            split.train_end,  # inside the gap before calibration: purged even if closed fast
            split.calibration_start,  # calibration, closed before the test starts
            split.calibration_end,  # within the gap before the test: purged
            split.test_start,  # test, closed before the export
            split.test_end,  # test, still open at the export: unlabeled -> purged
        ]
    )
    decided = pd.Series(
        [
            split.train_start + pd.Timedelta(days=10),
            split.test_start + pd.Timedelta(days=1),
            split.train_end + pd.Timedelta(days=1),
            split.calibration_start + pd.Timedelta(days=5),
            split.calibration_end + pd.Timedelta(days=1),
            split.test_start + pd.Timedelta(days=20),
            pd.NaT,
        ]
    )
    assert split.train_end > split.calibration_start - gap  # the scenario needs a date inside the gap
    slices = assign_slices(as_of, decided, split).tolist()
    assert slices == ["train", "purged", "purged", "calibration", "purged", "test", "purged"]


def test_every_training_label_is_known_before_calibration_starts() -> None:
    rng = np.random.default_rng(0)
    as_of = pd.Series(rng.choice(WEEKS, 3000))
    decided = as_of + pd.to_timedelta(rng.integers(1, 200, 3000), unit="D")
    decided[rng.random(3000) < 0.05] = pd.NaT
    split = plan_split(WEEKS, export_at=EXPORT, label_gap_days=90)
    slices = assign_slices(as_of, decided, split)
    assert (decided[slices == "train"] < split.calibration_start).all()
    assert (decided[slices == "calibration"] < split.test_start).all()
    assert (decided[slices == "test"] <= EXPORT).all()
    assert as_of[slices == "train"].max() <= split.calibration_start - pd.Timedelta(days=90)
    assert set(slices) == {"train", "calibration", "test", "purged"}


def test_too_little_history_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not enough history"):
        plan_split(WEEKS[:8], export_at=WEEKS[7], label_gap_days=30)
    with pytest.raises(ValueError, match="split fractions"):
        plan_split(WEEKS, export_at=EXPORT, label_gap_days=30, train_fraction=0.9, calibration_fraction=0.2)


def test_tuning_folds_validate_only_on_later_dates_beyond_the_gap() -> None:
    as_of = pd.Series(np.repeat(WEEKS[:60], 5))
    folds = time_ordered_folds(as_of, n_folds=3, label_gap_days=28)
    assert len(folds) == 3
    for train_idx, valid_idx in folds:
        assert as_of.iloc[train_idx].max() <= as_of.iloc[valid_idx].min() - pd.Timedelta(days=28)
    # expanding window: each fold trains on at least as much as the one before
    sizes = [len(train_idx) for train_idx, _ in folds]
    assert sizes == sorted(sizes)


def test_config_holds_the_documented_knobs() -> None:
    params = load_training_params(overrides={"evaluation": {"n_boot": 7}})
    assert params["evaluation"]["n_boot"] == 7
    assert params["snapshots"]["win"]["freq"] == "W-MON" and params["snapshots"]["churn"]["freq"] == "MS"
    assert set(params["scoring"]["grades"]) == {"A", "B", "C"}
    assert params["split"]["label_gap_days"]["churn"] >= 120


def test_short_history_shrinks_the_gap_and_records_it() -> None:
    short = WEEKS[:40]  # ~9 months: a 90-day gap leaves no calibration rows
    export = short[-1] + pd.Timedelta(days=3)
    with pytest.raises(ValueError, match="more history is needed"):
        plan_split(short, export_at=export, label_gap_days=90)
    split = plan_split_for_history(short, export_at=export, label_gap_days=90)
    assert 7 <= split.label_gap_days < 90
    assert split.to_dict()["label_gap_days_configured"] == 90
    assert split.calibration_start - pd.Timedelta(days=split.label_gap_days) >= split.train_start
