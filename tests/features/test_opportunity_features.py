"""Opportunity features on a hand-made story with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.opportunity import build_opportunity_features
from features.params import feature_columns, load_params

from .conftest import canonicalize

T = pd.Timestamp("2024-04-01")


def _story() -> dict[str, pd.DataFrame]:
    ts = pd.Timestamp
    opportunities = pd.DataFrame(
        {
            "opportunity_id": ["d1", "d2", "old-won", "old-lost", "other-rep-won", "future"],
            "account_id": ["A", "A", "A", "B", "B", "A"],
            "owner_id": ["r1", "r1", "r1", "r1", "r2", "r1"],
            "created_at": [
                ts("2024-01-01"),
                ts("2024-03-01"),
                ts("2023-01-01"),
                ts("2023-02-01"),
                ts("2023-03-01"),
                ts("2024-05-01"),
            ],
            "closed_at": [
                pd.NaT,
                ts("2024-06-01"),
                ts("2023-06-01"),
                ts("2023-07-01"),
                ts("2023-08-01"),
                pd.NaT,
            ],
            "outcome": [None, "won", "won", "lost", "won", None],
            "won_amount": [np.nan, 1e6, 1000.0, np.nan, 3000.0, np.nan],
            "stage": ["commit"] * 6,
            "amount": [1e9] * 6,
            "expected_close_date": [ts("2030-01-01")] * 6,
            "product": ["pro", "pro", "pro", "basic", "pro", "pro"],
            "type": ["new"] * 6,
            "lead_source": ["web"] * 6,
        }
    )
    history = pd.DataFrame(
        {
            "opportunity_id": ["d1"] * 6,
            "changed_at": [
                ts("2024-01-01"),
                ts("2024-01-20"),
                ts("2024-02-10"),
                ts("2024-03-01"),
                ts("2024-03-11"),
                ts("2024-05-01"),
            ],
            "stage": ["qualification", "proposal", "demo", None, "demo", "negotiation"],
            "amount": [10000.0, np.nan, 12000.0, 12000.0, 15000.0, 1.0],
            "expected_close_date": [
                ts("2024-03-01"),
                ts("2024-03-01"),
                ts("2024-03-21"),
                ts("2024-03-15"),
                ts("2024-03-25"),
                ts("2024-12-01"),
            ],
        }
    )
    activities = pd.DataFrame(
        {
            "activity_id": [f"x{i}" for i in range(6)],
            "account_id": ["A"] * 6,
            "opportunity_id": ["d1", "d1", "d1", "d1", "d1", None],
            "occurred_at": [
                ts("2024-01-05"),
                ts("2024-03-10"),
                ts("2024-03-28"),
                ts("2024-03-30"),
                ts("2024-04-02"),
                ts("2024-03-31"),
            ],
            "type": ["meeting", "email", "call", "email", "meeting", "meeting"],
            "direction": ["outbound", "outbound", "inbound", "inbound", "inbound", "inbound"],
            "replied": [np.nan, 1.0, np.nan, 0.0, np.nan, np.nan],
            "duration_s": [1800.0, np.nan, 600.0, np.nan, 99999.0, np.nan],
        }
    )
    accounts = pd.DataFrame(
        {
            "account_id": ["A", "B"],
            "created_at": [ts("2022-01-01"), ts("2025-01-01")],
            "industry": ["tech", "retail"],
            "employees": [100.0, 5.0],
        }
    )
    return canonicalize(
        {
            "opportunities": opportunities,
            "opportunity_history": history,
            "activities": activities,
            "accounts": accounts,
        }
    )


@pytest.fixture(scope="module")
def d1() -> pd.Series:
    feats = build_opportunity_features(_story(), [T])
    assert sorted(feats["opportunity_id"]) == ["d1", "d2"]
    return feats.set_index("opportunity_id").loc["d1"]


def test_history_state(d1):
    assert d1["opp_stage"] == "demo"
    assert d1["opp_days_in_stage"] == (T - pd.Timestamp("2024-02-10")).days  # demo -> (no stage) -> demo
    assert d1["opp_stage_changes"] == 2 and d1["opp_stage_regressions"] == 1  # proposal -> demo
    assert d1["opp_amount"] == 15000.0 and d1["opp_amount_first"] == 10000.0
    assert d1["opp_amount_revisions"] == 2 and d1["opp_amount_change_rel"] == pytest.approx(0.5)
    assert d1["opp_days_to_expected_close"] == -7.0 and d1["opp_close_date_past"] == 1.0
    assert d1["opp_close_date_slips"] == 2 and d1["opp_close_date_days_slipped"] == 30.0
    assert d1["opp_age_days"] == 91.0


def test_activities(d1):
    assert d1["opp_meetings_90d"] == 1.0 and d1["opp_meetings_7d"] == 0.0  # 2024-04-02 is after T
    assert d1["opp_emails_7d"] == 1.0 and d1["opp_emails_30d"] == 2.0
    assert d1["opp_calls_7d"] == 1.0 and d1["opp_activities_total"] == 4.0
    assert d1["opp_days_since_activity"] == 2.0 and d1["opp_days_since_meeting"] == 87.0
    assert d1["opp_reply_rate"] == 0.5 and d1["opp_inbound_share"] == 0.5


def test_engagement_rates(d1):
    # 4 activities by T over 91 days of age; 3 of them after the demo stage was entered (2024-02-10).
    assert d1["opp_activities_per_week_log"] == pytest.approx(np.log(5 / (91 / 7 + 1)))
    assert d1["opp_days_in_stage"] == 51.0
    assert d1["opp_stage_activities_per_week_log"] == pytest.approx(np.log(4 / (51 / 7 + 1)))
    smoothing = load_params().smoothing
    k, prior = smoothing["reply_rate"], smoothing["reply_rate_prior"]
    assert d1["opp_reply_rate_smoothed"] == pytest.approx((1 + k * prior) / (2 + k))  # 1 reply of 2 known
    assert d1["opp_days_per_stage"] == pytest.approx(91 / 3)  # two stage changes: three stages reached
    # The meeting on 2024-04-02 (after T, 99999 s) must not count; emails carry no duration.
    assert d1["opp_calls_log_duration_mean"] == pytest.approx(np.log(600.0))
    assert d1["opp_meetings_log_duration_mean"] == pytest.approx(np.log(1800.0))
    assert np.isnan(d1["opp_demos_log_duration_mean"])


def test_track_records(d1):
    params = load_params()
    k = params.smoothing["rep"]
    global_rate = 2 / 3  # old-won, old-lost, other-rep-won closed before T; d2 closes after T
    assert d1["rep_win_rate_closed"] == pytest.approx((1 + k * global_rate) / (2 + k))
    assert d1["rep_closed_deals_prior"] == 2 and d1["rep_avg_won_amount_prior"] == 1000.0
    assert d1["rep_open_deals"] == 2 and d1["acct_open_deals"] == 2
    assert d1["acct_won_deals_prior"] == 1 and d1["acct_won_amount_prior"] == 1000.0
    kp = params.smoothing["product"]
    assert d1["opp_product_win_rate_prior"] == pytest.approx((2 + kp * global_rate) / (2 + kp))
    assert d1["acct_industry"] == "tech" and d1["acct_employees"] == 100.0
    assert d1["acct_tenure_days"] == (T - pd.Timestamp("2022-01-01")).days


def test_account_created_after_t_is_not_visible():
    feats = build_opportunity_features(_story(), [pd.Timestamp("2023-05-01")]).set_index("opportunity_id")
    assert feats.loc["old-lost", "acct_industry"] is None and np.isnan(
        feats.loc["old-lost", "acct_employees"]
    )


def test_feature_columns_follow_params(d1):
    feats = build_opportunity_features(_story(), [T])
    columns = feature_columns("opportunity", feats)
    assert "opp_meetings_30d" in columns and "rep_win_rate_closed" in columns
    assert not {"opportunity_id", "account_id", "owner_id", "as_of"} & set(columns)
    with pytest.raises(KeyError, match="opp_stage"):
        feature_columns("opportunity", feats.drop(columns=["opp_stage"]))


def test_account_feature_columns_expand_usage_metrics(crm):
    from features.account import build_account_features

    feats = build_account_features(crm, ["2024-06-03"])
    columns = feature_columns("account", feats)
    for metric in ("active_users", "events", "reports_run"):
        assert f"acct_usage_{metric}_trend_90d" in columns
    assert "arr" not in columns and "account_id" not in columns
