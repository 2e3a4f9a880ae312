"""The API computes exactly the batch path's features and scores for the same records and as_of."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from features.account import build_account_features
from features.opportunity import build_opportunity_features
from serving.bundle import json_safe
from tests.serving.crm import EXPORT, account_records, opportunity_records

pytestmark = pytest.mark.server


def _same(api_value, batch_value) -> bool:
    batch_value = json_safe(batch_value)
    if api_value is None or batch_value is None:
        return api_value is None and batch_value is None
    if isinstance(batch_value, float | int) and not isinstance(batch_value, bool):
        return math.isclose(float(api_value), float(batch_value), rel_tol=1e-9, abs_tol=1e-9)
    return api_value == batch_value


def _compare_features(api_results: list[dict], batch: pd.DataFrame, id_column: str, names: list[str]) -> None:
    batch = batch.set_index(id_column)
    mismatches = []
    for result in api_results:
        row = batch.loc[result[id_column]]
        for name in names:
            if not _same(result["features"][name], row[name]):
                mismatches.append((result[id_column], name, result["features"][name], row[name]))
    assert not mismatches, mismatches[:10]


def test_opportunity_features_and_scores_match_the_batch_path(client, service, registry, crm_tables) -> None:
    # The service reads the same CRM (REVCAST_DATA_DIR): a deal sent as the CRM holds it gets the
    # features and score `revcast score opportunities` gives it over the whole CRM, track records
    # (rep, account, product, lead source) and the rep's and account's open deals included.
    tables = crm_tables["tables"]
    opps = tables["opportunities"]
    ids = opps[(opps["created_at"] <= EXPORT) & opps["closed_at"].isna()]["opportunity_id"].head(40).tolist()
    assert len(ids) >= 10
    records = opportunity_records(tables, ids, EXPORT)
    response = client.post(
        "/v1/opportunities/score",
        params={"include_features": "true"},
        json={"as_of": EXPORT.date().isoformat(), "opportunities": records},
        headers=service.headers(),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["rejected"] == []
    assert [r["opportunity_id"] for r in body["results"]] == ids
    assert body["track_records"].startswith("dataset@")

    batch = build_opportunity_features(tables, EXPORT, current_state_as_of=EXPORT)
    win = registry.bundles["win"]
    _compare_features(body["results"], batch, "opportunity_id", win.feature_names)
    # The comparison covers what only the rest of the CRM knows: not every deal is its rep's only one.
    compared = batch.set_index("opportunity_id").loc[ids]
    assert compared["rep_open_deals"].max() > 1 and compared["rep_closed_deals_prior"].max() > 0
    assert compared["rep_win_rate_closed"].notna().all()

    expected_p = win.predict(compared)
    expected_amount = np.clip(registry.bundles["amount"].predict(compared), 0, None)
    api_p = np.array([r["win_probability"] for r in body["results"]])
    api_amount = np.array([r["expected_amount"] for r in body["results"]])
    np.testing.assert_allclose(api_p, expected_p, atol=1e-6)
    np.testing.assert_allclose(api_amount, expected_amount, atol=0.01)
    # Not a constant model: the parity above would be weak if every deal got the same score.
    assert np.ptp(api_p) > 0


def test_one_deal_requests_match_the_batch_path_too(client, service, registry, crm_tables) -> None:
    # A CRM asks about one deal at a time: the deal's rep's other open deals come from the dataset.
    tables = crm_tables["tables"]
    opps = tables["opportunities"]
    ids = opps[(opps["created_at"] <= EXPORT) & opps["closed_at"].isna()]["opportunity_id"].head(8).tolist()
    batch = build_opportunity_features(tables, EXPORT, current_state_as_of=EXPORT).set_index("opportunity_id")
    expected = registry.bundles["win"].predict(batch.loc[ids])
    for opp_id, p in zip(ids, expected, strict=True):
        response = client.post(
            "/v1/opportunities/score",
            params={"include_features": "true"},
            json={
                "as_of": EXPORT.date().isoformat(),
                "opportunities": opportunity_records(tables, [opp_id], EXPORT),
            },
            headers=service.headers(),
        )
        assert response.status_code == 200, response.text
        result = response.json()["results"][0]
        assert result["features"]["rep_open_deals"] == batch.loc[opp_id, "rep_open_deals"]
        assert math.isclose(result["win_probability"], float(p), abs_tol=1e-6), (opp_id, result, p)


# Renewal features need deals open or just decided at as_of: few remain open at the export date of
# the synthetic CRM, many at this earlier date (about 40 customers, 10 with an open renewal).
RENEWAL_AS_OF = pd.Timestamp("2024-09-30")
RENEWAL_FEATURES = [
    "acct_open_renewal_opps",
    "acct_open_renewal_amount",
    "acct_renewal_stage_index",
    "acct_renewal_days_since_update",
    "acct_renewals_lost_60d",
    "acct_renewals_won_60d",
]


@pytest.mark.parametrize("as_of", [EXPORT, RENEWAL_AS_OF], ids=["export", "mid-history"])
def test_churn_features_and_scores_match_the_batch_path(client, service, registry, crm_tables, as_of) -> None:
    tables = crm_tables["tables"]
    subs = tables["subscriptions"]
    active = subs[(subs["start_date"] <= as_of) & (subs["end_date"].isna() | (subs["end_date"] > as_of))]
    ids = sorted(active["account_id"].unique())[:50]
    assert len(ids) >= 10
    # Each account with its deals (and their history up to as_of), as a CRM holds them at as_of.
    records = account_records(tables, ids, as_of)
    assert sum(len(record["opportunities"]) for record in records) >= len(ids)
    response = client.post(
        "/v1/accounts/churn",
        params={"include_features": "true"},
        json={"as_of": as_of.isoformat(), "accounts": records},
        headers=service.headers(),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["rejected"] == []
    # The batch path on the loaded tables restricted to these accounts, everything they hold (also
    # facts after as_of: the builder's as-of rules must ignore them as the API records omit them).
    # Batch churn scoring passes no current state of the deals; neither does the API.
    subset = {
        name: tables[name][tables[name]["account_id"].isin(ids)]
        for name in (
            "accounts",
            "subscriptions",
            "usage",
            "tickets",
            "surveys",
            "activities",
            "opportunities",
        )
    }
    history = tables["opportunity_history"]
    subset["opportunity_history"] = history[
        history["opportunity_id"].isin(subset["opportunities"]["opportunity_id"])
    ]
    batch = build_account_features(subset, as_of)
    churn = registry.bundles["churn"]
    assert set(RENEWAL_FEATURES) <= set(churn.feature_names)
    _compare_features(body["results"], batch, "account_id", churn.feature_names)
    batch = batch.set_index("account_id").loc[[r["account_id"] for r in body["results"]]]
    np.testing.assert_allclose(
        [r["churn_probability"] for r in body["results"]], churn.predict(batch), atol=1e-6
    )
    np.testing.assert_allclose([r["arr"] for r in body["results"]], batch["arr"].to_numpy(), atol=0.01)
    if as_of == RENEWAL_AS_OF:
        # Not a vacuous parity: the renewal deals sent in the request do reach the features.
        assert (batch["acct_open_renewal_opps"] > 0).sum() >= 3
        assert batch["acct_renewal_stage_index"].notna().sum() >= 1
        assert (batch["acct_renewals_lost_60d"] + batch["acct_renewals_won_60d"] > 0).sum() >= 1
        without = client.post(
            "/v1/accounts/churn",
            params={"include_features": "true"},
            json={
                "as_of": as_of.isoformat(),
                "accounts": account_records(tables, ids, as_of, with_opportunities=False),
            },
            headers=service.headers(),
        ).json()
        assert sum(r["features"]["acct_open_renewal_opps"] for r in without["results"]) == 0
