"""Deals scored without their CRM (API records) get the batch build's features from a context.

`track_record_context` computes the CRM's track records and open deals as of a date with the batch
build's SQL; a build over one deal's own rows plus that context must equal the batch build over the
whole CRM, and rows dated after the date must not move the context (rule 1).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.opportunity import (
    CONTEXT_OPEN_DEALS,
    TRACK_RECORD_KEYS,
    build_opportunity_features,
    index_track_record_context,
    track_record_context,
    track_record_context_for,
)
from tests.features.test_asof_leakage import T, mutate_after

TRACK_RECORD_FEATURES = [
    "opp_product_win_rate_prior",
    "opp_lead_source_win_rate_prior",
    "rep_win_rate_closed",
    "rep_closed_deals_prior",
    "rep_avg_won_amount_prior",
    "rep_open_deals",
    "acct_won_deals_prior",
    "acct_won_amount_prior",
    "acct_win_rate_closed",
    "acct_open_deals",
]


def _own_rows(tables: dict[str, pd.DataFrame], opp_id: str, as_of: pd.Timestamp) -> dict[str, pd.DataFrame]:
    """What an API record carries: the deal (open, as the CRM held it at as_of), its account, its rows."""
    opps = tables["opportunities"]
    deal = opps[opps["opportunity_id"] == opp_id].assign(closed_at=pd.NaT, outcome=None, won_amount=np.nan)
    history = tables["opportunity_history"]
    activities = tables["activities"]
    return {
        "opportunities": deal,
        "accounts": tables["accounts"][tables["accounts"]["account_id"].isin(deal["account_id"])],
        "opportunity_history": history[
            (history["opportunity_id"] == opp_id) & (history["changed_at"] <= as_of)
        ],
        "activities": activities[
            (activities["opportunity_id"] == opp_id) & (activities["occurred_at"] <= as_of)
        ],
    }


def _assert_same(left: pd.Series, right: pd.Series) -> None:
    for name in left.index:
        a, b = left[name], right[name]
        if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
            assert a == b or (pd.isna(a) and pd.isna(b)), (name, a, b)
        else:
            assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12), (name, a, b)


@pytest.mark.parametrize("as_of", [pd.Timestamp("2024-03-04"), T])
def test_one_deal_with_the_context_gets_the_whole_crm_batch_features(crm, as_of) -> None:
    batch = build_opportunity_features(crm, as_of).set_index("opportunity_id")
    # deals whose track records are not trivial, so the comparison can fail
    assert batch["rep_closed_deals_prior"].max() > 0 and batch["rep_open_deals"].max() > 1
    context = index_track_record_context(track_record_context(crm, as_of))
    for opp_id in batch.index[:12]:
        own = _own_rows(crm, opp_id, as_of)
        alone = build_opportunity_features(own, as_of).set_index("opportunity_id").loc[opp_id]
        with_context = build_opportunity_features(
            own, as_of, context=track_record_context_for(context, own["opportunities"], as_of)
        ).set_index("opportunity_id")
        _assert_same(with_context.loc[opp_id].drop("as_of"), batch.loc[opp_id].drop("as_of"))
        # without the context the deal would be its rep's only open deal, with no track record
        assert alone["rep_open_deals"] == 1
        assert np.isnan(alone["rep_win_rate_closed"])


@pytest.mark.parametrize("table", ["opportunities"])
def test_rows_after_as_of_never_move_the_context(crm, table) -> None:
    before = track_record_context(crm, T)
    after = track_record_context(mutate_after(crm, table, seed=3), T)
    for name in [*TRACK_RECORD_KEYS, CONTEXT_OPEN_DEALS]:
        pd.testing.assert_frame_equal(
            before[name].sort_values(list(before[name].columns[:2])).reset_index(drop=True),
            after[name].sort_values(list(after[name].columns[:2])).reset_index(drop=True),
            check_dtype=False,
        )


def test_a_deal_closed_before_as_of_moves_the_context(crm) -> None:
    # the control: the context does read closes at or before as_of
    opps = crm["opportunities"]
    closed = opps[(opps["closed_at"] <= T) & (opps["outcome"] == "won")].iloc[0]
    flipped = {
        **crm,
        "opportunities": opps.assign(
            outcome=np.where(opps["opportunity_id"] == closed["opportunity_id"], "lost", opps["outcome"])
        ),
    }
    before = track_record_context(crm, T)["rep_tr"].set_index("k")
    after = track_record_context(flipped, T)["rep_tr"].set_index("k")
    assert after.loc[closed["owner_id"], "n_won"] == before.loc[closed["owner_id"], "n_won"] - 1


def test_the_cut_context_holds_only_what_the_deals_look_up(crm) -> None:
    context = index_track_record_context(track_record_context(crm, T))
    opps = crm["opportunities"]
    deal = opps[(opps["created_at"] <= T) & (opps["closed_at"].isna() | (opps["closed_at"] > T))].iloc[[0]]
    cut = track_record_context_for(context, deal, T)
    assert set(cut["rep_tr"]["k"]) <= set(deal["owner_id"]) and len(cut["rep_tr"]) == 1
    assert set(cut["acct_tr"]["k"]) <= set(deal["account_id"])
    others = cut[CONTEXT_OPEN_DEALS]
    assert deal["opportunity_id"].iloc[0] not in set(others["opportunity_id"])
    assert (others["owner_id"].isin(deal["owner_id"]) | others["account_id"].isin(deal["account_id"])).all()
