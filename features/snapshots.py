"""Snapshot series and training sets: features as of each date joined with labels from after it."""

from __future__ import annotations

import pandas as pd

from features.account import build_account_features
from features.labels import churn_labels, data_export_date, win_labels
from features.opportunity import build_opportunity_features
from features.params import FeatureParams, load_params
from features.sql import AsOf, AsOfArg


def as_of_dates(start: AsOf, end: AsOf, freq: str = "W-MON") -> list[pd.Timestamp]:
    """A regular series of as-of dates.

    Args:
        start: First possible date (inclusive).
        end: Last possible date (inclusive).
        freq: pandas offset alias, e.g. "W-MON" (weekly on Mondays) or "MS" (month starts).

    Returns:
        The dates between start and end on the frequency grid.

    Raises:
        ValueError: end before start, or no grid date in the range.
    """
    start_ts, end_ts = pd.Timestamp(start), pd.Timestamp(end)
    if end_ts < start_ts:
        raise ValueError(f"as_of_dates: end {end_ts.date()} is before start {start_ts.date()}")
    dates = list(pd.date_range(start_ts, end_ts, freq=freq))
    if not dates:
        raise ValueError(f"as_of_dates: no {freq} date between {start_ts.date()} and {end_ts.date()}")
    return dates


def build_win_training_set(
    tables: dict[str, pd.DataFrame],
    as_of_dates: AsOfArg,
    params: FeatureParams | None = None,
    *,
    horizon_days: int | None = None,
    keep_unlabeled: bool = False,
) -> pd.DataFrame:
    """Opportunity features at each as-of date with the win and won-amount labels.

    Args:
        tables: Canonical tables.
        as_of_dates: Snapshot dates.
        params: Feature parameters; None loads features/params.yaml.
        horizon_days: Win horizon; None takes params.labels.win_horizon_days.
        keep_unlabeled: Keep snapshots whose label is not observed yet (label NaN).

    Returns:
        The feature frame plus label_won, label_won_amount and label_observed. Dropped unlabeled
        snapshots are counted in `frame.attrs["n_unlabeled_dropped"]`; the export date used for
        observability is in `frame.attrs["export_date"]`.
    """
    params = params or load_params()
    horizon = params.labels.win_horizon_days if horizon_days is None else horizon_days
    export_date = data_export_date(tables)
    features = build_opportunity_features(tables, as_of_dates, params)
    labels = win_labels(tables, features, horizon, export_date=export_date)
    frame = pd.concat([features, labels[["label_won", "label_won_amount", "label_observed"]]], axis=1)
    return _drop_unlabeled(frame, keep_unlabeled, export_date)


def build_churn_training_set(
    tables: dict[str, pd.DataFrame],
    as_of_dates: AsOfArg,
    params: FeatureParams | None = None,
    *,
    keep_unlabeled: bool = False,
) -> pd.DataFrame:
    """Account features at each as-of date with the churn label (horizon/grace from params).

    Args:
        tables: Canonical tables.
        as_of_dates: Snapshot dates.
        params: Feature parameters; None loads features/params.yaml.
        keep_unlabeled: Keep snapshots whose label is not observed yet (label NaN).

    Returns:
        The account feature frame (including `arr`) plus label_churn and label_observed; dropped
        unlabeled snapshots are counted in `frame.attrs["n_unlabeled_dropped"]`.
    """
    params = params or load_params()
    export_date = data_export_date(tables)
    features = build_account_features(tables, as_of_dates, params)
    labels = churn_labels(
        tables,
        features,
        params.labels.churn_horizon_days,
        params.labels.churn_grace_days,
        export_date=export_date,
    )
    frame = pd.concat([features, labels[["label_churn", "label_observed"]]], axis=1)
    return _drop_unlabeled(frame, keep_unlabeled, export_date)


def _drop_unlabeled(frame: pd.DataFrame, keep_unlabeled: bool, export_date: pd.Timestamp) -> pd.DataFrame:
    n_unlabeled = int((~frame["label_observed"]).sum())
    if not keep_unlabeled:
        frame = frame[frame["label_observed"]].reset_index(drop=True)
    frame.attrs["n_unlabeled_dropped"] = 0 if keep_unlabeled else n_unlabeled
    frame.attrs["export_date"] = str(export_date)
    return frame
