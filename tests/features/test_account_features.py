"""Account features on hand-made stories with known answers, and both subscription shapes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.account import build_account_features
from features.labels import churn_labels

from .conftest import canonicalize

DATES = [
    pd.Timestamp(d)
    for d in ("2022-06-15", "2023-01-01", "2023-02-10", "2023-12-20", "2024-03-01", "2024-05-01")
]


def _story(shape: str) -> dict[str, pd.DataFrame]:
    """Account A renews yearly since 2022-01-01 (12-month terms); B leaves on 2024-01-01."""
    if shape == "period":
        subs = [
            ("A", "2022-01-01", "2023-01-01"),
            ("A", "2023-01-01", "2024-01-01"),
            ("A", "2024-01-01", None),
            ("B", "2022-03-01", "2023-03-01"),
            ("B", "2023-03-01", "2024-01-01"),
        ]
    else:
        subs = [("A", "2022-01-01", None), ("B", "2022-03-01", "2024-01-01")]
    frame = pd.DataFrame(subs, columns=["account_id", "start_date", "end_date"])
    frame["subscription_id"] = [f"{shape}-{i}" for i in range(len(frame))]
    frame["mrr"] = frame["account_id"].map({"A": 500.0, "B": 200.0})
    frame["auto_renew"] = 1.0
    frame["term_months"] = 12.0
    usage = pd.DataFrame(
        {
            "account_id": ["A"] * 900,
            "date": pd.date_range("2021-12-01", periods=900, freq="D"),
            "active_users": np.linspace(50, 10, 900),
            "reports_run": 3.0,
        }
    )
    accounts = pd.DataFrame(
        {
            "account_id": ["A", "B"],
            "created_at": pd.to_datetime(["2021-11-01", "2022-02-01"]),
            "industry": ["tech", "retail"],
        }
    )
    return canonicalize({"subscriptions": frame, "usage": usage, "accounts": accounts})


def test_both_subscription_shapes_give_the_same_features():
    period = build_account_features(_story("period"), DATES)
    contract = build_account_features(_story("contract"), DATES)
    assert len(period) == len(DATES) * 2 - 2  # B is gone at the last two dates
    pd.testing.assert_frame_equal(period, contract)
    assert period["acct_days_to_renewal"].notna().all()


def test_both_shapes_give_the_same_churn_labels():
    snaps = build_account_features(_story("period"), DATES)[["account_id", "as_of"]]
    pd.testing.assert_frame_equal(
        churn_labels(_story("period"), snaps), churn_labels(_story("contract"), snaps)
    )


def test_renewal_and_mrr_values():
    feats = build_account_features(_story("period"), DATES).set_index(["account_id", "as_of"])
    row = feats.loc[("A", pd.Timestamp("2023-02-10"))]
    assert row["acct_days_to_renewal"] == (pd.Timestamp("2024-01-01") - pd.Timestamp("2023-02-10")).days
    assert row["acct_mrr"] == 500.0 and row["arr"] == 6000.0
    assert (
        row["acct_subscription_tenure_days"] == (pd.Timestamp("2023-02-10") - pd.Timestamp("2022-01-01")).days
    )
    assert row["acct_tenure_days"] == (pd.Timestamp("2023-02-10") - pd.Timestamp("2021-11-01")).days
    # B started 2022-03-01: 61 days before 2022-05-01 its whole MRR is 90-day growth, none is 30-day.
    b_may = build_account_features(_story("period"), ["2022-05-01"]).set_index("account_id").loc["B"]
    assert b_may["acct_mrr_change_90d"] == 200.0 and b_may["acct_mrr_change_30d"] == 0.0
    # Falling usage: trend negative, slope negative, recent below baseline.
    assert row["acct_usage_active_users_trend_90d"] < 0
    assert row["acct_usage_active_users_slope_90d"] == pytest.approx(-40 / 899, rel=1e-6)
    assert row["acct_usage_active_users_drop_vs_baseline"] > 0
    assert row["acct_usage_reports_run_trend_90d"] == 0.0


def test_term_inferred_from_ended_periods_when_no_term_column():
    tables = _story("period")
    tables["subscriptions"] = tables["subscriptions"].drop(columns=["term_months"])
    feats = build_account_features(tables, DATES).set_index(["account_id", "as_of"])
    assert np.isnan(feats.loc[("A", pd.Timestamp("2022-06-15")), "acct_days_to_renewal"])  # nothing ended yet
    assert feats.loc[("A", pd.Timestamp("2023-02-10")), "acct_term_months"] == 12.0
    assert feats.loc[("A", pd.Timestamp("2023-02-10")), "acct_days_to_renewal"] == 325.0


def test_tickets_surveys_touches_and_open_renewals():
    tables = _story("period")
    t = pd.Timestamp("2024-03-01")
    tables.update(
        canonicalize(
            {
                "tickets": pd.DataFrame(
                    {
                        "ticket_id": ["t1", "t2", "t3", "t4"],
                        "account_id": ["A"] * 4,
                        "opened_at": pd.to_datetime(["2024-01-10", "2024-02-20", "2024-02-25", "2024-03-05"]),
                        "resolved_at": pd.to_datetime(["2024-01-11", "2024-03-10", None, "2024-03-06"]),
                        "priority": ["high", "low", "high", "high"],
                        "csat": [4.0, 1.0, np.nan, 5.0],
                        "first_contact_resolved": [1.0, 0.0, np.nan, 1.0],
                    }
                ),
                "surveys": pd.DataFrame(
                    {
                        "account_id": ["A"] * 4,
                        "responded_at": pd.to_datetime(
                            ["2023-06-01", "2024-01-01", "2024-02-01", "2024-04-01"]
                        ),
                        "kind": ["nps", "nps", "csat", "nps"],
                        "score": [9.0, 6.0, 4.0, 0.0],
                    }
                ),
                "activities": pd.DataFrame(
                    {
                        "activity_id": ["x1", "x2"],
                        "account_id": ["A", "A"],
                        "occurred_at": pd.to_datetime(["2024-02-20", "2024-03-02"]),
                        "type": ["call", "call"],
                    }
                ),
                "opportunities": pd.DataFrame(
                    {
                        "opportunity_id": ["r1", "n1"],
                        "account_id": ["A", "A"],
                        "created_at": pd.to_datetime(["2024-02-01", "2024-02-01"]),
                        "type": ["renewal", "new"],
                        "amount": [99999.0, 5.0],
                        "closed_at": pd.to_datetime([None, None]),
                    }
                ),
                "opportunity_history": pd.DataFrame(
                    {
                        "opportunity_id": ["r1", "r1"],
                        "changed_at": pd.to_datetime(["2024-02-01", "2024-03-15"]),
                        "amount": [6000.0, 7000.0],
                    }
                ),
            }
        )
    )
    row = build_account_features(tables, [t]).set_index("account_id").loc["A"]
    assert row["acct_tickets_30d"] == 2.0 and row["acct_tickets_90d"] == 3.0
    assert row["acct_tickets_open_at_asof"] == 2.0  # t2 resolved only after T, t3 never
    assert row["acct_ticket_resolution_hours_mean"] == 24.0
    assert row["acct_ticket_csat_mean"] == 4.0 and row["acct_ticket_fcr_rate"] == 1.0
    assert row["acct_tickets_high_priority_share"] == pytest.approx(2 / 3)
    assert row["acct_nps_latest"] == 6.0 and row["acct_nps_change"] == -3.0
    assert row["acct_days_since_nps"] == 60.0 and row["acct_csat_latest"] == 4.0
    assert row["acct_touches_30d"] == 1.0 and row["acct_days_since_touch"] == 10.0
    assert row["acct_open_renewal_opps"] == 1.0 and row["acct_open_renewal_amount"] == 6000.0


def test_term_ends_within_the_churn_horizon():
    """Annual terms meet at most one renewal decision in 90 days; month-to-month ones about three."""
    tables = _story("period")
    monthly = canonicalize(
        {
            "subscriptions": pd.DataFrame(
                {
                    "subscription_id": ["m-1"],
                    "account_id": ["C"],
                    "start_date": ["2022-05-10"],
                    "end_date": [None],
                    "mrr": [90.0],
                    "auto_renew": [1.0],
                    "term_months": [1.0],
                }
            )
        }
    )["subscriptions"]
    tables["subscriptions"] = pd.concat([tables["subscriptions"], monthly], ignore_index=True)
    feats = build_account_features(tables, DATES).set_index(["account_id", "as_of"])
    # A renews on 2024-01-01: 12 days after 2023-12-20, 305 days after 2024-03-01.
    assert feats.loc[("A", pd.Timestamp("2023-12-20")), "acct_term_ends_in_horizon"] == 1.0
    assert feats.loc[("A", pd.Timestamp("2024-03-01")), "acct_term_ends_in_horizon"] == 0.0
    # C renews on the 10th of every month: 2024-03-10, 04-10 and 05-10 fall within 2024-03-01 + 90 days.
    assert feats.loc[("C", pd.Timestamp("2024-03-01")), "acct_days_to_renewal"] == 9.0
    assert feats.loc[("C", pd.Timestamp("2024-03-01")), "acct_term_ends_in_horizon"] == 3.0


def test_renewal_deal_stage_and_recent_outcomes():
    tables = _story("period")
    t = pd.Timestamp("2023-12-20")
    tables.update(
        canonicalize(
            {
                "opportunities": pd.DataFrame(
                    {
                        "opportunity_id": ["r-open", "r-lost", "r-won-old", "x-exp"],
                        "account_id": ["A", "B", "A", "A"],
                        "created_at": ["2023-11-01", "2023-10-01", "2023-06-01", "2023-11-01"],
                        "type": ["renewal", "renewal", "renewal", "expansion"],
                        "closed_at": [None, "2023-12-01", "2023-09-01", "2023-12-10"],
                        "outcome": [None, "lost", "won", "lost"],
                    }
                ),
                "opportunity_history": pd.DataFrame(
                    {
                        "opportunity_id": ["r-open"] * 3,
                        "changed_at": ["2023-11-01", "2023-11-20", "2024-01-05"],
                        "stage": ["qualification", "proposal", "negotiation"],
                        "amount": [6000.0, 6000.0, 6500.0],
                    }
                ),
            }
        )
    )
    feats = build_account_features(tables, [t]).set_index("account_id")
    order = ["prospecting", "engaging", "qualification", "discovery", "demo", "proposal"]
    # Stage as of T is 'proposal' (entered 30 days before T); 'negotiation' comes after T.
    assert feats.loc["A", "acct_renewal_stage_index"] == float(order.index("proposal"))
    assert feats.loc["A", "acct_renewal_days_since_update"] == 30.0
    assert feats.loc["B", "acct_renewals_lost_60d"] == 1.0  # lost 19 days before T
    assert np.isnan(feats.loc["B", "acct_renewal_stage_index"])  # no open renewal deal
    # The won renewal closed 110 days before T and the lost expansion is not a renewal.
    assert feats.loc["A", "acct_renewals_won_60d"] == 0.0 and feats.loc["A", "acct_renewals_lost_60d"] == 0.0


def test_usage_per_mrr_and_per_user():
    tables = _story("period")
    t = pd.Timestamp("2023-12-20")
    row = build_account_features(tables, [t]).set_index("account_id").loc["A"]
    usage = tables["usage"]
    recent = usage[(usage["date"] > t - pd.Timedelta(days=30)) & (usage["date"] <= t)]
    # A pays 500 MRR: per 1,000 of MRR is twice the level.
    assert row["acct_usage_active_users_per_kmrr_30d"] == pytest.approx(2 * recent["active_users"].mean())
    last = usage.loc[usage["date"] == t, "active_users"].iloc[0]
    assert row["acct_usage_active_users_last_per_kmrr"] == pytest.approx(2 * last)
    assert row["acct_usage_reports_run_per_user_30d"] == pytest.approx(3.0 / recent["active_users"].mean())
    assert np.isnan(row["acct_usage_active_users_per_user_30d"])  # users per user is not a signal


def test_users_per_user_is_not_a_model_feature():
    from features.params import feature_columns, load_params

    params = load_params()
    frame = pd.DataFrame(
        columns=[
            *params.account_features.categorical,
            *params.account_features.numeric,
            *(
                t.format(metric=m)
                for m in ("active_users", "reports_run")
                for t in params.account_features.usage_per_metric
            ),
        ]
    )
    columns = feature_columns("account", frame, params)
    assert "acct_usage_reports_run_per_user_30d" in columns
    assert "acct_usage_active_users_per_user_30d" not in columns
