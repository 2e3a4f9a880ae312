"""As-of correctness: nothing dated after T may move a feature as of T (and the tests can fail)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.account import build_account_features
from features.opportunity import build_opportunity_features

T = pd.Timestamp("2024-06-03")
DATES = [pd.Timestamp("2024-03-04"), pd.Timestamp("2024-05-06"), T]


def _copy(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    return {name: frame.copy() for name, frame in tables.items()}


def _later_base(
    rng: np.random.Generator, n: int, not_before: pd.Timestamp = T, t: pd.Timestamp = T
) -> pd.Series:
    """n random timestamps strictly after t (and after not_before)."""
    base = max(t, not_before)
    return pd.Series(base + pd.to_timedelta(rng.integers(1, 400 * 24, n), unit="h")).astype("datetime64[ns]")


def mutate_after(
    tables: dict[str, pd.DataFrame], table: str, seed: int = 0, as_of: pd.Timestamp = T
) -> dict[str, pd.DataFrame]:
    """Alter every field of `table` that is not visible at `as_of`, and append rows dated after it."""
    T = as_of  # noqa: N806 - the as-of date of this mutation
    rng = np.random.default_rng(seed)

    def _later(n: int, not_before: pd.Timestamp = T, _rng: np.random.Generator = rng) -> pd.Series:
        return _later_base(_rng, n, not_before, T)

    out = _copy(tables)
    f = out[table]
    if table == "accounts":
        later = f["created_at"] > T
        f.loc[later, "industry"] = "mutated"
        f.loc[later, "employees"] = 1.0
        f.loc[later, "annual_revenue"] = 2.0
        new = f.iloc[:3].copy()
        new["account_id"] = ["a-new-1", "a-new-2", "a-new-3"]
        new["created_at"] = _later(3).values
        f = pd.concat([f, new], ignore_index=True)
    elif table == "opportunities":
        future = f["created_at"] > T
        open_at_t = (f["created_at"] <= T) & (f["closed_at"].isna() | (f["closed_at"] > T))
        # Deals created after T: anything goes (but they stay created after T).
        f.loc[future, "owner_id"] = "r-0"
        f.loc[future, "product"] = "mutated"
        f.loc[future, "created_at"] = _later(int(future.sum())).values
        # Deals open at T: their close, outcome, won amount and current state are after-T facts.
        n_open = int(open_at_t.sum())
        f.loc[open_at_t, "outcome"] = np.where(f.loc[open_at_t, "outcome"] == "won", "lost", "won")
        f.loc[open_at_t, "closed_at"] = _later(n_open).values
        f.loc[open_at_t, "won_amount"] = rng.uniform(1, 1e6, n_open)
        f.loc[open_at_t, "stage"] = "negotiation"
        f.loc[open_at_t, "amount"] = rng.uniform(1, 1e6, n_open)
        f.loc[open_at_t, "expected_close_date"] = _later(n_open).values
        f.loc[open_at_t, "close_reason"] = "mutated"
        new = f.iloc[:5].copy()
        new["opportunity_id"] = [f"o-new-{i}" for i in range(5)]
        new["created_at"] = _later(5).values
        new["closed_at"] = _later(5, new["created_at"].max()).values
        new["outcome"] = "won"
        f = pd.concat([f, new], ignore_index=True)
    elif table == "opportunity_history":
        later = f["changed_at"] > T
        n = int(later.sum())
        f.loc[later, "stage"] = "prospecting"
        f.loc[later, "amount"] = rng.uniform(1, 1e6, n)
        f.loc[later, "expected_close_date"] = _later(n).values
        new = pd.DataFrame(
            {
                "opportunity_id": out["opportunities"]["opportunity_id"].iloc[:50].values,
                "changed_at": _later(50).values,
                "stage": "negotiation",
                "amount": 1.0,
                "expected_close_date": _later(50).values,
            }
        )
        f = pd.concat([f, new], ignore_index=True)
    elif table == "activities":
        later = f["occurred_at"] > T
        f.loc[later, "type"] = "meeting"
        f.loc[later, "direction"] = "inbound"
        f.loc[later, "replied"] = 1.0
        f.loc[later, "opportunity_id"] = out["opportunities"]["opportunity_id"].iloc[0]
        opp_ids = out["opportunities"]["opportunity_id"].iloc[:60]
        new = pd.DataFrame(
            {
                "activity_id": [f"x-new-{i}" for i in range(60)],
                "account_id": out["opportunities"]["account_id"].iloc[:60].values,
                "opportunity_id": opp_ids.values,
                "occurred_at": _later(60).values,
                "type": "demo",
                "direction": "outbound",
                "replied": 0.0,
                "duration_s": 10.0,
            }
        )
        f = pd.concat([f, new], ignore_index=True)
    elif table == "subscriptions":
        later = f["start_date"] > T
        n = int(later.sum())
        f.loc[later, "mrr"] = rng.uniform(1, 1e5, n)
        f.loc[later, "auto_renew"] = 1.0 - f.loc[later, "auto_renew"]
        f.loc[later, "start_date"] = _later(n).values
        # Subscriptions running at T: their end (after T) is invisible at T.
        running = (f["start_date"] <= T) & (f["end_date"].isna() | (f["end_date"] > T))
        ends = _later(int(running.sum())).where(rng.random(int(running.sum())) < 0.7)
        f.loc[running, "end_date"] = ends.values
        f.loc[running, "churned_at"] = ends.values
        new = f.iloc[:10].copy()
        new["subscription_id"] = [f"s-new-{i}" for i in range(10)]
        new["start_date"] = _later(10).values
        new["end_date"] = pd.NaT
        f = pd.concat([f, new], ignore_index=True)
    elif table == "usage":
        later = f["date"] > T
        for col in ("active_users", "events", "reports_run"):
            f.loc[later, col] = rng.uniform(0, 1e4, int(later.sum()))
        new = f.iloc[:30].copy()
        new["date"] = _later(30).values
        f = pd.concat([f, new], ignore_index=True)
    elif table == "tickets":
        later = f["opened_at"] > T
        f.loc[later, "priority"] = "high"
        f.loc[later, "opened_at"] = _later(int(later.sum())).values
        unresolved_at_t = (f["opened_at"] <= T) & (f["resolved_at"].isna() | (f["resolved_at"] > T))
        n = int(unresolved_at_t.sum())
        f.loc[unresolved_at_t, "resolved_at"] = _later(n).values
        f.loc[unresolved_at_t, "csat"] = 1.0
        f.loc[unresolved_at_t, "first_contact_resolved"] = 1.0
        new = f.iloc[:10].copy()
        new["ticket_id"] = [f"t-new-{i}" for i in range(10)]
        new["opened_at"] = _later(10).values
        f = pd.concat([f, new], ignore_index=True)
    elif table == "surveys":
        later = f["responded_at"] > T
        f.loc[later, "score"] = 0.0
        f.loc[later, "kind"] = "nps"
        new = f.iloc[:10].copy()
        new["responded_at"] = _later(10).values
        new["kind"] = "nps"
        f = pd.concat([f, new], ignore_index=True)
    elif table == "quotas":
        f["amount"] = 1.0
        new = f.iloc[:1].copy()
        new["period_start"] = T + pd.Timedelta(days=10)
        f = pd.concat([f, new], ignore_index=True)
    elif table == "reps":
        f["team"] = "mutated"
    else:  # pragma: no cover - test wiring
        raise AssertionError(table)
    out[table] = f
    return out


ALL_TABLES = [
    "accounts",
    "opportunities",
    "opportunity_history",
    "activities",
    "subscriptions",
    "usage",
    "tickets",
    "surveys",
    "quotas",
    "reps",
]


@pytest.fixture(scope="module")
def baseline(crm):
    return build_opportunity_features(crm, DATES), build_account_features(crm, DATES)


@pytest.mark.parametrize("table", ALL_TABLES)
def test_rows_after_t_never_move_features(crm, baseline, table):
    opp_before, acct_before = baseline
    mutated = mutate_after(crm, table, seed=hash(table) % 1000)
    assert not mutated[table].equals(crm[table]), "the mutation must actually change the table"
    pd.testing.assert_frame_equal(build_opportunity_features(mutated, DATES), opp_before)
    pd.testing.assert_frame_equal(build_account_features(mutated, DATES), acct_before)


def _open_opportunity(crm) -> pd.Series:
    opps = crm["opportunities"]
    open_at_t = (opps["created_at"] <= T - pd.Timedelta(days=10)) & (
        opps["closed_at"].isna() | (opps["closed_at"] > T)
    )
    return opps[open_at_t].iloc[0]


def _active_account(crm) -> str:
    subs = crm["subscriptions"]
    active = (subs["start_date"] <= T - pd.Timedelta(days=100)) & (
        subs["end_date"].isna() | (subs["end_date"] > T)
    )
    return subs[active]["account_id"].iloc[0]


CONTROL_CHANGES = {
    "opportunity_history": lambda crm: (
        "opportunity_history",
        pd.DataFrame(
            {
                "opportunity_id": [_open_opportunity(crm)["opportunity_id"]],
                "changed_at": [T - pd.Timedelta(days=1)],
                "stage": ["negotiation"],
                "amount": [123.0],
                "expected_close_date": [T + pd.Timedelta(days=3)],
            }
        ),
    ),
    "activities": lambda crm: (
        "activities",
        pd.DataFrame(
            {
                "activity_id": ["x-control"],
                "account_id": [_open_opportunity(crm)["account_id"]],
                "opportunity_id": [_open_opportunity(crm)["opportunity_id"]],
                "occurred_at": [T - pd.Timedelta(hours=5)],
                "type": ["meeting"],
                "direction": ["inbound"],
                "replied": [1.0],
                "duration_s": [60.0],
            }
        ),
    ),
    "usage": lambda crm: (
        "usage",
        pd.DataFrame(
            {
                "account_id": [_active_account(crm)],
                "date": [T - pd.Timedelta(days=1)],
                "active_users": [9999.0],
                "events": [9999.0],
                "reports_run": [9999.0],
            }
        ),
    ),
    "tickets": lambda crm: (
        "tickets",
        pd.DataFrame(
            {
                "ticket_id": ["t-control"],
                "account_id": [_active_account(crm)],
                "opened_at": [T - pd.Timedelta(days=2)],
                "resolved_at": [pd.NaT],
                "priority": ["high"],
                "csat": [np.nan],
                "first_contact_resolved": [np.nan],
            }
        ),
    ),
}


@pytest.mark.parametrize("table", list(CONTROL_CHANGES))
def test_control_change_before_t_moves_features(crm, baseline, table):
    """The same comparison detects a change dated before T (so the invariance tests can fail)."""
    name, extra = CONTROL_CHANGES[table](crm)
    changed = _copy(crm)
    extra = extra.astype({c: crm[name][c].dtype for c in extra.columns if c in crm[name].columns})
    changed[name] = pd.concat([crm[name], extra], ignore_index=True)
    opp_before, acct_before = baseline
    opp_after = build_opportunity_features(changed, DATES)
    acct_after = build_account_features(changed, DATES)
    assert not (opp_after.equals(opp_before) and acct_after.equals(acct_before))


def test_closed_deal_outcome_before_t_moves_track_records(crm, baseline):
    opps = crm["opportunities"]
    closed_before = opps.index[(opps["closed_at"] <= T - pd.Timedelta(days=3)) & (opps["outcome"] == "lost")][
        0
    ]
    changed = _copy(crm)
    changed["opportunities"].loc[closed_before, "outcome"] = "won"
    changed["opportunities"].loc[closed_before, "won_amount"] = 5e5
    after = build_opportunity_features(changed, DATES)
    assert not after["rep_win_rate_closed"].equals(baseline[0]["rep_win_rate_closed"])


def test_current_state_only_visible_from_current_state_as_of(crm):
    export = pd.Timestamp("2025-12-31")
    base = build_opportunity_features(crm, DATES, current_state_as_of=export)
    pd.testing.assert_frame_equal(base, build_opportunity_features(crm, DATES))
    changed = _copy(crm)
    opps = changed["opportunities"]
    opps["stage"] = "commit"
    opps["amount"] = 1.0
    opps["expected_close_date"] = T + pd.Timedelta(days=1)
    pd.testing.assert_frame_equal(
        build_opportunity_features(changed, DATES, current_state_as_of=export), base
    )
    # Control: at the current-state date itself the current state is the latest history row.
    at_export = build_opportunity_features(changed, [export], current_state_as_of=export)
    assert len(at_export) > 0
    assert (at_export["opp_stage"] == "commit").all()
    assert (at_export["opp_amount"] == 1.0).all()


def test_leakage_trap_columns_never_in_output(crm):
    opp = build_opportunity_features(crm, DATES)
    acct = build_account_features(crm, DATES)
    for frame in (opp, acct):
        for trap in ("close_reason", "churned_at", "outcome", "won_amount", "closed_at", "end_date"):
            assert trap not in frame.columns, trap
    assert "close_reason" in crm["opportunities"].columns  # the trap is really in the input


def test_population_is_open_deals_and_active_accounts(crm):
    opp = build_opportunity_features(crm, [T])
    opps = crm["opportunities"]
    expected = opps[(opps["created_at"] <= T) & (opps["closed_at"].isna() | (opps["closed_at"] > T))]
    assert sorted(opp["opportunity_id"]) == sorted(expected["opportunity_id"])
    acct = build_account_features(crm, [T])
    subs = crm["subscriptions"]
    active = subs[(subs["start_date"] <= T) & (subs["end_date"].isna() | (subs["end_date"] > T))]
    assert sorted(acct["account_id"]) == sorted(active["account_id"].unique())
    assert list(opp.columns[:4]) == ["opportunity_id", "account_id", "owner_id", "as_of"]


def test_metric_recorded_only_after_t_has_no_values_at_t(crm):
    """The column set follows the table's schema; a metric with values only after T is all-NaN at T."""
    changed = _copy(crm)
    usage = changed["usage"]
    usage["seats_used"] = np.where(usage["date"] > T, 5.0, np.nan)
    acct = build_account_features(changed, DATES)
    seats = [c for c in acct.columns if c.startswith("acct_usage_seats_used_")]
    assert len(seats) == 9
    assert acct[seats].isna().all().all()
    usage["seats_used"] = 5.0  # control: values before T do show up
    assert build_account_features(changed, DATES)["acct_usage_seats_used_mean_30d"].notna().any()


def _renewal_deal(crm, account_id: str, closed_at: pd.Timestamp) -> dict[str, pd.DataFrame]:
    deal = pd.DataFrame(
        {
            "opportunity_id": ["o-renewal-control"],
            "account_id": [account_id],
            "created_at": [T - pd.Timedelta(days=40)],
            "type": ["renewal"],
            "closed_at": [closed_at],
            "outcome": ["lost"],
        }
    )
    changed = _copy(crm)
    deal = deal.astype({c: crm["opportunities"][c].dtype for c in deal.columns})
    changed["opportunities"] = pd.concat([crm["opportunities"], deal], ignore_index=True)
    return changed


def test_renewal_lost_before_t_counts_and_after_t_does_not(crm, baseline):
    """A renewal deal lost before T is a churn signal at T; the same deal lost after T is invisible."""
    account = _active_account(crm)
    before = build_account_features(_renewal_deal(crm, account, T - pd.Timedelta(days=2)), DATES)
    row = before.set_index(["account_id", "as_of"]).loc[(account, T)]
    expected = baseline[1].set_index(["account_id", "as_of"]).loc[(account, T), "acct_renewals_lost_60d"] + 1
    assert row["acct_renewals_lost_60d"] == expected
    after = build_account_features(_renewal_deal(crm, account, T + pd.Timedelta(days=2)), DATES)
    # Open at T instead: it counts as an open renewal deal (without a stage: it has no history).
    changed_columns = [c for c in after.columns if not after[c].equals(baseline[1][c])]
    assert set(changed_columns) <= {"acct_open_renewal_opps", "acct_open_renewal_amount"}
    assert "acct_renewals_lost_60d" not in changed_columns
