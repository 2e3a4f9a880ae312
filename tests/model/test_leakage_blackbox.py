"""Black-box leakage test of batch scoring: scores as of T ignore everything dated after T.

Trained bundles score a generated CRM as of a past date T; then every row dated after T is altered
(outcomes flipped, close dates and won amounts changed, current-state columns rewritten, history
and activities appended, accounts' usage, tickets, surveys and subscriptions after T changed or
added). The scores must be identical. A control change dated before T must move a score, so the
test can fail.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from train_data import fast_params, generate_small_crm, load_small_crm

from training.score import active_accounts_at, open_deals_at, score_accounts, score_opportunities
from training.train import export_timestamp, train_churn_model, train_win_model


@pytest.fixture(scope="module")
def crm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    directory = generate_small_crm(tmp_path_factory.mktemp("crm"))
    tables, _ = load_small_crm(directory)
    return tables


@pytest.fixture(scope="module")
def bundles(crm: dict[str, pd.DataFrame]) -> dict[str, object]:
    params = fast_params()
    return {
        "win": train_win_model(crm, params).bundle,
        "churn": train_churn_model(crm, params).bundle,
    }


@pytest.fixture(scope="module")
def as_of(crm: dict[str, pd.DataFrame]) -> pd.Timestamp:
    return (export_timestamp(crm) - pd.Timedelta(days=200)).normalize() + pd.Timedelta(hours=12)


def _after(frame: pd.DataFrame, column: str, t: pd.Timestamp) -> pd.Series:
    return pd.to_datetime(frame[column]) > t


def alter_everything_after(tables: dict[str, pd.DataFrame], t: pd.Timestamp) -> dict[str, pd.DataFrame]:
    """A copy of the tables where every row dated after ``t`` is changed and new future rows appear."""
    rng = np.random.default_rng(0)
    out = {name: frame.copy() for name, frame in tables.items()}
    day = pd.Timedelta(days=1)

    deals = out["opportunities"]
    closed_later = _after(deals, "closed_at", t)
    won = deals["outcome"] == "won"
    deals.loc[closed_later & won, "outcome"] = "lost"
    deals.loc[closed_later & ~won, "outcome"] = "won"
    deals.loc[closed_later, "won_amount"] = 1.0e6
    deals.loc[closed_later, "closed_at"] = pd.to_datetime(deals.loc[closed_later, "closed_at"]) + 3 * day
    # current-state columns describe the export date (> t): rewrite them for every deal
    deals["stage"] = np.where(deals["outcome"].isna(), "negotiation", deals["stage"])
    deals["amount"] = deals["amount"] * 7
    deals["expected_close_date"] = t + 400 * day
    created_later = _after(deals, "created_at", t)
    deals.loc[created_later, "product"] = "mystery"
    new_deal = deals.iloc[[0]].copy()
    new_deal["opportunity_id"] = "o-future"
    new_deal["created_at"] = t + 2 * day
    new_deal["closed_at"] = pd.NaT  # a deal created after T that is still open
    new_deal["outcome"] = None
    new_deal["won_amount"] = np.nan
    out["opportunities"] = pd.concat([deals, new_deal], ignore_index=True)

    open_ids = open_deals_at(tables, t)["opportunity_id"].tolist()
    history = out["opportunity_history"]
    later = _after(history, "changed_at", t)
    history.loc[later, "stage"] = "prospecting"
    history.loc[later, "amount"] = history.loc[later, "amount"] * 3
    appended = pd.DataFrame(
        {"opportunity_id": open_ids, "changed_at": t + day, "stage": "negotiation", "amount": 9.9e5}
    )
    out["opportunity_history"] = pd.concat([history, appended], ignore_index=True)

    activities = out["activities"]
    later = _after(activities, "occurred_at", t)
    activities.loc[later, "type"] = "meeting"
    deal_accounts = tables["opportunities"].set_index("opportunity_id")["account_id"]
    burst = pd.DataFrame(
        {
            "activity_id": [f"x-future-{i}" for i in range(len(open_ids) * 3)],
            "account_id": [deal_accounts[o] for o in open_ids for _ in range(3)],
            "opportunity_id": [o for o in open_ids for _ in range(3)],
            "occurred_at": t + pd.to_timedelta(rng.integers(1, 30, len(open_ids) * 3), unit="D"),
            "type": "demo",
        }
    )
    out["activities"] = pd.concat([activities, burst], ignore_index=True)

    accounts = out["accounts"]
    accounts.loc[_after(accounts, "created_at", t), "industry"] = "mystery"

    subs = out["subscriptions"]
    subs.loc[_after(subs, "start_date", t), "mrr"] = subs.loc[_after(subs, "start_date", t), "mrr"] * 5
    ends_later = _after(subs, "end_date", t)
    subs.loc[ends_later, "end_date"] = t + day  # an end after T is not visible at T
    restart = subs.iloc[[0]].copy()
    restart["subscription_id"] = "s-future"
    restart["start_date"] = t + 5 * day
    restart["end_date"] = pd.NaT
    out["subscriptions"] = pd.concat([subs, restart], ignore_index=True)

    if "usage" in out:
        usage = out["usage"]
        usage.loc[_after(usage, "date", t), "active_users"] = 0.0
    if "tickets" in out:
        tickets = out["tickets"]
        tickets.loc[_after(tickets, "opened_at", t), "priority"] = "urgent"
        flood = tickets.iloc[:50].copy()
        flood["ticket_id"] = [f"t-future-{i}" for i in range(len(flood))]
        flood["opened_at"] = t + 2 * day
        flood["resolved_at"] = pd.NaT
        out["tickets"] = pd.concat([tickets, flood], ignore_index=True)
    if "surveys" in out:
        surveys = out["surveys"]
        surveys.loc[_after(surveys, "responded_at", t), "score"] = 0.0
    return out


def test_deal_scores_as_of_t_ignore_everything_after_t(crm, bundles, as_of) -> None:
    before = score_opportunities(crm, bundles["win"], as_of=as_of, params=fast_params())
    after = score_opportunities(
        alter_everything_after(crm, as_of), bundles["win"], as_of=as_of, params=fast_params()
    )
    assert before.current_state_as_of is None  # a past date never sees the export's current state
    assert len(before.scores) > 20
    pd.testing.assert_frame_equal(before.scores, after.scores)
    pd.testing.assert_frame_equal(before.rejected, after.rejected)


def test_account_scores_as_of_t_ignore_everything_after_t(crm, bundles, as_of) -> None:
    before = score_accounts(crm, bundles["churn"], as_of=as_of, params=fast_params())
    after = score_accounts(
        alter_everything_after(crm, as_of), bundles["churn"], as_of=as_of, params=fast_params()
    )
    assert len(before.scores) > 20
    pd.testing.assert_frame_equal(before.scores, after.scores)
    pd.testing.assert_frame_equal(before.rejected, after.rejected)


def test_control_change_before_t_moves_a_score(crm, bundles, as_of) -> None:
    """The same kind of change dated *before* T must be seen (otherwise the tests above prove nothing)."""
    before = score_opportunities(crm, bundles["win"], as_of=as_of, params=fast_params())
    changed = {name: frame.copy() for name, frame in crm.items()}
    open_ids = open_deals_at(crm, as_of)["opportunity_id"].tolist()
    history = pd.DataFrame(
        {
            "opportunity_id": open_ids,
            "changed_at": as_of - pd.Timedelta(hours=1),
            "stage": "negotiation",
            "amount": 9.9e5,
        }
    )
    changed["opportunity_history"] = pd.concat([changed["opportunity_history"], history], ignore_index=True)
    after = score_opportunities(changed, bundles["win"], as_of=as_of, params=fast_params())
    merged = before.scores.merge(after.scores, on="opportunity_id", suffixes=("_before", "_after"))
    moved = ~np.isclose(merged["win_probability_before"], merged["win_probability_after"])
    explained_differently = merged["top_factors_before"] != merged["top_factors_after"]
    assert (moved | explained_differently).any()


def test_every_open_deal_and_active_account_appears_exactly_once(crm, bundles, as_of) -> None:
    for t in (as_of, None):
        deals = score_opportunities(crm, bundles["win"], as_of=t, params=fast_params())
        expected = set(open_deals_at(crm, deals.as_of)["opportunity_id"].astype(str))
        scored = deals.scores["opportunity_id"].tolist()
        rejected = deals.rejected["opportunity_id"].tolist()
        assert len(scored) == len(set(scored)) and not set(scored) & set(rejected)
        assert set(scored) | set(rejected) == expected
        assert deals.scores["score"].between(1, 99).all()
        assert set(deals.scores["grade"]) <= {"A", "B", "C", "D"}
        accounts = score_accounts(crm, bundles["churn"], as_of=t, params=fast_params())
        expected_accounts = set(active_accounts_at(crm, accounts.as_of))
        scored_accounts = accounts.scores["account_id"].tolist()
        assert len(scored_accounts) == len(set(scored_accounts))
        assert set(scored_accounts) | set(accounts.rejected["account_id"]) == expected_accounts
        np.testing.assert_allclose(
            accounts.scores["revenue_at_risk"], accounts.scores["arr"] * accounts.scores["churn_probability"]
        )
    # scoring "now" includes the export's current state
    assert deals.current_state_as_of == export_timestamp(crm)
