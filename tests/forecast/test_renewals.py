"""Renewal deals not yet created: term ends predicted from subscription rows known at T."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving.forecast import (
    _Analogs,
    _renewal_lead_days,
    _renewals_not_yet_created,
    _upcoming_term_ends,
    as_of_view,
)

T = pd.Timestamp("2025-01-01")


def _subs(rows: list[tuple[str, str, str | None, float, float]]) -> pd.DataFrame:
    """Subscription rows (account, start, end or None, mrr, auto_renew) in canonical dtypes."""
    frame = pd.DataFrame(rows, columns=["account_id", "start_date", "end_date", "mrr", "auto_renew"])
    frame["start_date"] = pd.to_datetime(frame["start_date"])
    frame["end_date"] = pd.to_datetime(frame["end_date"])
    frame["subscription_id"] = [f"s-{i}" for i in range(len(frame))]
    return frame


def test_term_ends_follow_the_term_start_and_length_not_the_latest_line():
    subs = _subs(
        [
            # a: annual terms; a line added mid-term (short first row) is co-termed to the account's term.
            ("a", "2023-05-21", "2024-05-21", 500.0, 0.0),
            ("a", "2023-11-03", "2024-05-21", 200.0, 0.0),
            ("a", "2024-05-21", None, 500.0, 0.0),
            ("a", "2024-05-21", None, 200.0, 0.0),
            ("a", "2024-12-31", None, 100.0, 0.0),
            # b: two-year terms.
            ("b", "2021-03-10", "2023-03-10", 1000.0, 0.0),
            ("b", "2023-03-10", None, 1000.0, 0.0),
            # c: monthly billing (every finished row is a month): no renewal deal expected.
            ("c", "2024-10-01", "2024-11-01", 90.0, 0.0),
            ("c", "2024-11-01", "2024-12-01", 90.0, 0.0),
            ("c", "2024-12-01", None, 90.0, 0.0),
            # d: auto-renewing: no renewal deal expected.
            ("d", "2024-02-01", None, 300.0, 1.0),
            # e: one row per contract, no finished row: yearly anniversaries of its start.
            ("e", "2022-08-15", None, 400.0, 0.0),
        ]
    )
    ends = _upcoming_term_ends(subs, T)
    assert set(ends.index) == {"a", "b", "e"}
    assert ends.loc["a", "term_end"] == pd.Timestamp("2025-05-21")
    assert ends.loc["a", "mrr"] == pytest.approx(800.0)
    assert ends.loc["b", "term_end"] == pd.Timestamp("2025-03-10")
    assert ends.loc["e", "term_end"] == pd.Timestamp("2025-08-15")


def test_term_ends_read_nothing_after_t():
    subs = _subs([("a", "2024-05-21", "2025-05-21", 500.0, 0.0), ("a", "2025-05-21", None, 500.0, 0.0)])
    view = as_of_view(
        {
            "opportunities": pd.DataFrame(
                {"opportunity_id": ["o"], "account_id": ["a"], "created_at": [pd.Timestamp("2024-01-01")]}
            ),
            "subscriptions": subs,
        },
        T,
    )
    ends = _upcoming_term_ends(view["subscriptions"], T)
    # The end date 2025-05-21 is in the future: predicted (one year), not read.
    assert ends.loc["a", "term_end"] == pd.Timestamp("2025-05-21")
    moved = subs.copy()
    moved.loc[0, "end_date"] = pd.Timestamp("2025-02-01")
    view_moved = as_of_view({"opportunities": view["opportunities"], "subscriptions": moved}, T)
    pd.testing.assert_frame_equal(ends, _upcoming_term_ends(view_moved["subscriptions"], T))


def _renewal_book(n_accounts: int = 40, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Annual non-auto terms; each renewal deal opens 90 days before the term end, ~75 % won, 20 days later."""
    rng = np.random.default_rng(seed)
    subs, opps = [], []
    for i in range(n_accounts):
        start = pd.Timestamp("2021-01-01") + pd.Timedelta(days=int(rng.integers(0, 365)))
        mrr = float(rng.uniform(500, 2000))
        term_start = start
        for _term in range(5):
            term_end = term_start + pd.DateOffset(years=1)
            subs.append((f"a-{i}", term_start, term_end, mrr, 0.0))
            created = term_end - pd.Timedelta(days=90)
            won = rng.random() < 0.75
            opps.append(
                {
                    "opportunity_id": f"o-{i}-{_term}",
                    "account_id": f"a-{i}",
                    "created_at": created,
                    "type": "renewal",
                    "owner_id": "r-1",
                    "closed_at": created + pd.Timedelta(days=20),
                    "outcome": "won" if won else "lost",
                    "won_amount": 12 * mrr if won else np.nan,
                }
            )
            if not won:
                break
            term_start = term_end
    sub_frame = pd.DataFrame(subs, columns=["account_id", "start_date", "end_date", "mrr", "auto_renew"])
    sub_frame["subscription_id"] = [f"s-{i}" for i in range(len(sub_frame))]
    return {"opportunities": pd.DataFrame(opps), "subscriptions": sub_frame}


def test_renewals_not_yet_created_match_the_terms_ending_soon():
    tables = _renewal_book()
    as_of = pd.Timestamp("2024-04-01")
    view = as_of_view(tables, as_of)
    assert _renewal_lead_days(view["subscriptions"], view["opportunities"], as_of) == pytest.approx(90.0)
    window = (as_of, as_of + pd.DateOffset(months=3))
    analog_dates = [as_of - pd.DateOffset(months=3 * j) for j in range(1, 9)]
    analogs = _Analogs(
        dates=analog_dates,
        starts=[[d] for d in analog_dates],
        ends=[[d + pd.DateOffset(months=3)] for d in analog_dates],
    )
    won_amount = view["opportunities"].set_index("opportunity_id")["won_amount"].fillna(0.0)
    renewals = _renewals_not_yet_created(view, as_of, [window], analogs, won_amount)
    assert renewals is not None
    # Exactly the accounts whose term ends 90 days after a creation inside the window.
    opps = tables["opportunities"]
    due = opps.loc[(opps["created_at"] > as_of) & (opps["created_at"] < window[1]), "account_id"]
    assert set(renewals.account_id) == set(due)
    # Amount if won = 12 x MRR (learned as value per MRR over the analogs / the renewal win rate).
    mrr = tables["subscriptions"].drop_duplicates("account_id").set_index("account_id")["mrr"]
    assert renewals.amount_if_won == pytest.approx(12 * mrr.reindex(renewals.account_id).to_numpy(), rel=0.01)
    assert 0.6 < renewals.win_rate < 0.9
    # A deal closes 20 days after creation: inside the window unless created in its last 20 days.
    created = opps.set_index("account_id").loc[
        (opps["created_at"] > as_of).to_numpy() & (opps["created_at"] < window[1]).to_numpy(), "created_at"
    ]
    inside = (window[1] - created.reindex(renewals.account_id)).dt.days.to_numpy() >= 20
    assert renewals.close_probability[:, 0] == pytest.approx(np.where(inside, renewals.win_rate, 0.0))
    assert inside.any() and (~inside).any()


def test_later_terms_within_the_horizon_are_expected_too():
    from serving.forecast import _future_renewals

    subs = _subs([("a", "2024-05-01", None, 1000.0, 0.0)])
    # Five quarters from T: the term ending 2025-05-01 and the next one (2026-05-01) both get a deal,
    # created 90 days before each end and closed 20 days later.
    windows = [
        (
            pd.Timestamp("2025-01-01") + pd.DateOffset(months=3 * k),
            pd.Timestamp("2025-04-01") + pd.DateOffset(months=3 * k),
        )
        for k in range(5)
    ]
    durations = np.array([20.0])
    mrr, timing, later = _future_renewals(subs, T, windows, 90.0, durations)
    assert list(mrr.index) == ["a", "a"] and list(later) == [0, 1]
    assert timing.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert timing[0].argmax() == 0 and timing[1].argmax() == 4
