"""Labels: only rows after T decide them; unobservable labels are flagged, never called 0."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.labels import churn_labels, data_export_date, win_labels
from features.opportunity import build_opportunity_features

from .conftest import canonicalize

T = pd.Timestamp("2024-06-03")


def _opps(rows: list[dict]) -> dict[str, pd.DataFrame]:
    base = {
        "account_id": "a-1",
        "owner_id": "r-1",
        "created_at": pd.Timestamp("2024-01-01"),
        "closed_at": pd.NaT,
        "outcome": None,
        "won_amount": np.nan,
    }
    return canonicalize({"opportunities": pd.DataFrame([{**base, **row} for row in rows])})


def test_win_label_cases():
    tables = _opps(
        [
            {
                "opportunity_id": "won-later",
                "closed_at": pd.Timestamp("2024-09-01"),
                "outcome": "won",
                "won_amount": 10.0,
            },
            {"opportunity_id": "lost-later", "closed_at": pd.Timestamp("2024-07-01"), "outcome": "lost"},
            {"opportunity_id": "still-open", "created_at": pd.Timestamp("2024-05-01")},
            {
                "opportunity_id": "won-before",
                "closed_at": pd.Timestamp("2024-05-01"),
                "outcome": "won",
                "won_amount": 5.0,
            },
            {"opportunity_id": "marker", "created_at": pd.Timestamp("2025-06-01")},
        ]
    )
    snaps = pd.DataFrame(
        {"opportunity_id": ["won-later", "lost-later", "still-open", "won-before"], "as_of": T}
    )
    labels = win_labels(tables, snaps)
    assert labels["label_won"].tolist()[:2] == [1.0, 0.0]
    assert labels["label_won"].iloc[2:].isna().all()
    assert labels["label_observed"].tolist() == [True, True, False, False]
    assert labels["label_won_amount"].iloc[0] == 10.0 and labels["label_won_amount"].iloc[1:].isna().all()
    # With a 60-day horizon: won after the horizon is 0, an open deal past T+60 (data reaches 2025) is 0.
    horizon = win_labels(tables, snaps, horizon_days=60)
    assert horizon["label_won"].tolist()[:3] == [0.0, 0.0, 0.0]
    assert horizon["label_observed"].tolist() == [True, True, True, False]
    # A horizon the data has not reached yet leaves the open deal unobserved.
    late = win_labels(tables, snaps, horizon_days=600)
    assert not late["label_observed"].iloc[2] and np.isnan(late["label_won"].iloc[2])


def test_win_labels_depend_only_on_rows_after_t(crm):
    snaps = build_opportunity_features(crm, [T])[["opportunity_id", "as_of"]]
    base = win_labels(crm, snaps)
    changed = {k: v.copy() for k, v in crm.items()}
    opps = changed["opportunities"]
    before = opps["closed_at"] <= T
    opps.loc[before, "outcome"] = "won"  # rows dated before T: not label material
    changed["activities"] = changed["activities"].iloc[::2]
    pd.testing.assert_frame_equal(win_labels(changed, snaps), base)
    # Control: flipping an outcome after T flips the label.
    decided_after = opps.index[
        (opps["closed_at"] > T)
        & (opps["outcome"] == "lost")
        & opps["opportunity_id"].isin(snaps["opportunity_id"])
    ]
    assert len(decided_after) > 0
    opps.loc[decided_after, "outcome"] = "won"
    assert not win_labels(changed, snaps)["label_won"].equals(base["label_won"])


def _subs(rows: list[tuple[str, str, str | None]], export: str = "2026-06-30") -> dict[str, pd.DataFrame]:
    frame = pd.DataFrame(rows, columns=["account_id", "start_date", "end_date"])
    frame["subscription_id"] = [f"s-{i}" for i in range(len(frame))]
    frame["mrr"] = 100.0
    marker = pd.DataFrame({"account_id": ["zz"], "created_at": [pd.Timestamp(export)]})
    return canonicalize({"subscriptions": frame, "accounts": marker})


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([("a", "2023-01-01", "2024-07-01")], 1.0),  # ended inside the horizon, never came back
        ([("a", "2023-01-01", None)], 0.0),  # still running
        ([("a", "2023-01-01", "2024-12-01")], 0.0),  # ends after T + 90
        ([("a", "2023-01-01", "2024-07-01"), ("a", "2024-07-01", None)], 0.0),  # period-shape renewal
        ([("a", "2023-01-01", "2024-07-01"), ("a", "2024-07-20", None)], 0.0),  # late renewal within grace
        ([("a", "2023-01-01", "2024-07-01"), ("a", "2024-09-15", None)], 1.0),  # came back after the grace
        (
            [("a", "2023-01-01", "2024-07-01"), ("a", "2023-06-01", None)],
            0.0,
        ),  # another product keeps running
    ],
)
def test_churn_label_cases(rows, expected):
    tables = _subs(rows)
    labels = churn_labels(tables, pd.DataFrame({"account_id": ["a"], "as_of": [T]}))
    assert labels["label_observed"].iloc[0]
    assert labels["label_churn"].iloc[0] == expected


def test_churn_label_unobserved_near_export_date_and_without_population():
    tables = _subs([("a", "2023-01-01", "2024-07-01")], export="2024-08-15")
    labels = churn_labels(tables, pd.DataFrame({"account_id": ["a", "nobody"], "as_of": [T, T]}))
    assert labels["label_observed"].tolist() == [False, False]
    assert labels["label_churn"].isna().all()
    assert data_export_date(tables) == pd.Timestamp("2024-08-15")
