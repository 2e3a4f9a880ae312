"""Caller ids come back exactly as sent: ids are opaque strings (CONTRACT §1, §3), so surrounding
whitespace is part of the id, ids that differ only in whitespace are different records, and a blank id
is rejected naming its field."""

from __future__ import annotations

import copy
from typing import Any

import pandas as pd
import pytest

from serving.coalesce import ScoringJob, merge_batches
from serving.config import config_from_env
from serving.requests import canonical_text, prepare_accounts, prepare_opportunities
from serving.schemas import EXAMPLE_CHURN_REQUEST, EXAMPLE_OPPORTUNITY_REQUEST
from serving.service import LoadedModel, ModelSet, ScoringRequest, score_request_jobs
from tests.serving.crm import EXPORT, opportunity_records

AS_OF = pd.Timestamp("2026-11-01")


def _deal(opportunity_id: str, account_id: str = "a-9") -> dict[str, Any]:
    """The example deal under other ids (its activity id follows the deal's, so deals never share one)."""
    record = copy.deepcopy(EXAMPLE_OPPORTUNITY_REQUEST["opportunities"][0])
    record["opportunity_id"] = opportunity_id
    record["account_id"] = account_id
    record["account"]["account_id"] = account_id
    record["activities"][0]["activity_id"] = f"x-{opportunity_id}"
    return record


def test_opportunity_ids_are_kept_verbatim_and_whitespace_variants_stay_apart() -> None:
    ids = ["o-1", "o-1 ", " o-1", "\to-1\n"]
    records = [_deal(opp_id) for opp_id in ids]
    records[1]["account_id"] = records[1]["account"]["account_id"] = "a-9\t"
    records[2]["owner_id"] = " r-3 "
    batch = prepare_opportunities(records, AS_OF)
    assert batch.rejected == []
    assert batch.accepted == list(enumerate(ids))
    assert sorted(batch.values) == sorted(ids)
    tables = batch.tables
    assert tables["opportunities"]["opportunity_id"].tolist() == ids
    assert tables["opportunities"]["account_id"].tolist() == ["a-9", "a-9\t", "a-9", "a-9"]
    assert tables["opportunities"]["owner_id"].tolist() == ["r-3", "r-3", " r-3 ", "r-3"]
    assert sorted(tables["accounts"]["account_id"]) == ["a-9", "a-9\t"]
    assert tables["opportunity_history"]["opportunity_id"].tolist() == ids
    assert tables["activities"]["opportunity_id"].tolist() == ids
    assert tables["activities"]["account_id"].tolist() == ["a-9", "a-9\t", "a-9", "a-9"]


def test_labels_are_still_normalised() -> None:
    record = _deal(" o-1 ")
    record.update(stage=" Proposal ", lead_source=" Inbound ", product=" Pro ")
    record["activities"][0]["type"] = " Meeting\t"
    batch = prepare_opportunities([record], AS_OF)
    assert batch.accepted == [(0, " o-1 ")]
    opps = batch.tables["opportunities"]
    assert (opps.loc[0, "stage"], opps.loc[0, "lead_source"], opps.loc[0, "product"]) == (
        "proposal",
        "inbound",
        "Pro",
    )
    assert batch.tables["activities"].loc[0, "type"] == "meeting"
    assert canonical_text("  Demo ", lower=True) == "demo" and canonical_text(" a ", strip=True) == "a"
    assert (
        canonical_text(" a-1 ") == " a-1 " and canonical_text(" \t") is None and canonical_text(None) is None
    )


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("opportunity_id", "   "),
        ("opportunity_id", ""),
        ("account_id", "\t"),
        ("owner_id", " "),
        ("account.account_id", " "),
        ("account.owner_id", "\n"),
        ("activities.0.activity_id", "  "),
        ("activities.0.opportunity_id", " "),
    ],
)
def test_blank_ids_are_rejected_naming_the_field(path: str, value: str) -> None:
    record = _deal("o-1")
    target: Any = record
    *parents, name = path.split(".")
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    target[name] = value
    batch = prepare_opportunities([record, _deal("o-2")], AS_OF)
    assert batch.accepted == [(1, "o-2")]
    (rejected,) = batch.rejected
    assert rejected["opportunity_id"] == record["opportunity_id"]  # echoed as sent, blank included
    assert any(error.startswith(f"{path}:") for error in rejected["errors"]), rejected


def test_duplicate_check_compares_ids_as_sent() -> None:
    batch = prepare_opportunities([_deal("o-1"), _deal("o-1 "), _deal("o-1")], AS_OF)
    assert batch.accepted == [(0, "o-1"), (1, "o-1 ")]
    (rejected,) = batch.rejected
    assert rejected["index"] == 2 and rejected["opportunity_id"] == "o-1"
    assert rejected["errors"] == ["opportunity_id: 'o-1' appears more than once in the request"]


def test_account_ids_and_nested_ids_are_kept_verbatim() -> None:
    first = copy.deepcopy(EXAMPLE_CHURN_REQUEST["accounts"][0])
    second = copy.deepcopy(first)
    second["account_id"] = "a-9 "
    for name, key in (
        ("subscriptions", "subscription_id"),
        ("tickets", "ticket_id"),
        ("activities", "activity_id"),
        ("opportunities", "opportunity_id"),
    ):
        second[name][0][key] += " "
    batch = prepare_accounts([first, second], AS_OF)
    assert batch.rejected == []
    assert batch.accepted == [(0, "a-9"), (1, "a-9 ")]
    tables = batch.tables
    assert tables["accounts"]["account_id"].tolist() == ["a-9", "a-9 "]
    assert tables["subscriptions"]["subscription_id"].tolist() == ["s-1", "s-1 "]
    assert tables["subscriptions"]["account_id"].tolist() == ["a-9", "a-9 "]
    assert tables["tickets"]["ticket_id"].tolist() == ["t-1", "t-1 "]
    assert tables["opportunity_history"]["opportunity_id"].tolist() == ["o-7", "o-7", "o-7 ", "o-7 "]


@pytest.mark.parametrize(
    ("path", "value"),
    [("account_id", "  "), ("tickets.0.ticket_id", " "), ("opportunities.0.opportunity_id", "\t")],
)
def test_blank_account_ids_are_rejected_naming_the_field(path: str, value: str) -> None:
    record = copy.deepcopy(EXAMPLE_CHURN_REQUEST["accounts"][0])
    target: Any = record
    *parents, name = path.split(".")
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    target[name] = value
    batch = prepare_accounts([record], AS_OF)
    assert batch.accepted == []
    (rejected,) = batch.rejected
    assert rejected["account_id"] == record["account_id"]
    assert any(error.startswith(f"{path}:") for error in rejected["errors"]), rejected


def test_merged_requests_keep_whitespace_ids_apart() -> None:
    """serving.coalesce namespaces the ids of merged requests; every accepted id must still be a row."""
    batches = [
        prepare_opportunities([_deal("o-1"), _deal("o-1 ")], AS_OF, with_tables=False),
        prepare_opportunities([_deal(" o-1")], AS_OF, with_tables=False),
    ]
    merged = merge_batches(batches, [2, 1]).batch
    rows = merged.tables["opportunities"]["opportunity_id"].tolist()
    accepted = [caller_id for _, caller_id in merged.accepted]
    assert rows == accepted and len(set(rows)) == 3
    assert merged.tables["opportunity_history"]["opportunity_id"].tolist() == rows
    assert merged.tables["activities"]["opportunity_id"].tolist() == rows


@pytest.fixture(scope="module")
def models(crm_tables: dict) -> ModelSet:
    from tests.serving.models import train_bundle, training_frames

    frames = training_frames(crm_tables["tables"])
    bundles = {kind: train_bundle(kind, frames) for kind in ("win", "amount")}
    return ModelSet(
        models={kind: LoadedModel(bundle, {"version": "7"}) for kind, bundle in bundles.items()}, warmed=True
    )


def _open_records(tables: dict, ids: list[str]) -> list[dict]:
    """Real open deals at EXPORT, sent under the given ids."""
    opps = tables["opportunities"]
    open_now = opps[(opps["created_at"] <= EXPORT) & ~(opps["closed_at"] <= EXPORT)]
    records = opportunity_records(tables, open_now["opportunity_id"].head(len(ids)).tolist(), EXPORT)
    for record, opp_id in zip(records, ids, strict=True):
        record["opportunity_id"] = opp_id
        for activity in record["activities"]:
            activity["opportunity_id"] = opp_id
    return records


def test_scored_merged_and_alone_with_their_ids_as_sent(models: ModelSet, crm_tables: dict) -> None:
    config = config_from_env({})
    first = _open_records(crm_tables["tables"], ["o-1", "o-1 ", "\to-1"])
    second = _open_records(crm_tables["tables"], [" o-1"])
    requests = [
        ScoringRequest("opportunities", models, records, EXPORT, config, False) for records in (first, second)
    ]
    jobs = [ScoringJob(key=r.merge_key(), n_records=len(r.records), payload=r) for r in requests]
    alone = [score_request_jobs([job])[0] for job in jobs]
    together = score_request_jobs(jobs)
    for bodies in (alone, together):
        assert [[r["opportunity_id"] for r in body["results"]] for body in bodies] == [
            ["o-1", "o-1 ", "\to-1"],
            [" o-1"],
        ]
        assert all(body["rejected"] == [] for body in bodies)
    for a, b in zip(alone, together, strict=True):
        for ra, rb in zip(a["results"], b["results"], strict=True):
            assert ra["win_probability"] == pytest.approx(rb["win_probability"], abs=2e-6)


@pytest.mark.server
def test_service_answers_every_id_as_sent(client, service) -> None:
    records = [_deal("o-1"), _deal("o-1 "), _deal("a-9\t"), _deal("   ")]
    records[2]["owner_id"] = " r-3"
    response = client.post(
        "/v1/opportunities/score",
        json={"as_of": "2026-11-01", "opportunities": records},
        headers=service.headers(),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["opportunity_id"] for r in body["results"]] == ["o-1", "o-1 ", "a-9\t"]
    (rejected,) = body["rejected"]
    assert rejected["index"] == 3 and rejected["opportunity_id"] == "   "
    assert rejected["errors"][0].startswith("opportunity_id:"), rejected
