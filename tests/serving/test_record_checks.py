"""A request record is checked by the rules batch validation applies to the same rows: times of one row
that contradict each other (the contract's ``TableSpec.ordered`` pairs, compared by day) reject the
record naming the nested field, and a boolean is not a number."""

from __future__ import annotations

import copy
import typing
from typing import Any

import pandas as pd
import pytest
from pydantic import BaseModel

from features.contract import TABLES
from serving.requests import (
    NESTED_TABLES,
    RECORD_TABLES,
    TABLE_COLUMNS,
    prepare_accounts,
    prepare_opportunities,
)
from serving.schemas import EXAMPLE_CHURN_REQUEST, EXAMPLE_OPPORTUNITY_REQUEST

AS_OF = pd.Timestamp("2026-11-01")


def _account(**changes: Any) -> dict[str, Any]:
    record = copy.deepcopy(EXAMPLE_CHURN_REQUEST["accounts"][0])
    record.update(changes)
    return record


def _deal(**changes: Any) -> dict[str, Any]:
    record = copy.deepcopy(EXAMPLE_OPPORTUNITY_REQUEST["opportunities"][0])
    record.update(changes)
    return record


def _errors(batch: Any) -> list[str]:
    (rejected,) = batch.rejected
    assert batch.accepted == []
    return rejected["errors"]


def _models(annotation: Any) -> list[type[BaseModel]]:
    """Record models inside a field's annotation (``list[TicketIn]``, ``AccountIn | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models(arg)]


def test_every_nested_record_list_is_mapped_to_its_contract_table() -> None:
    # A nested list left out of the map would skip its table's rules without anyone noticing.
    from serving.schemas import ChurnAccountIn, OpportunityIn

    pending: list[type[BaseModel]] = [OpportunityIn, ChurnAccountIn]
    seen: set[type[BaseModel]] = set()
    while pending:
        model = pending.pop()
        seen.add(model)
        for name, info in model.model_fields.items():
            children = _models(info.annotation)
            if not children:
                continue
            table = NESTED_TABLES.get(model, {}).get(name)
            assert table is not None, f"{model.__name__}.{name} has no contract table in NESTED_TABLES"
            # The nested rows carry the table's ordered columns under the contract's names.
            for earlier, later in TABLES[table].ordered:
                for child in children:
                    assert {earlier, later} <= set(child.model_fields), (child.__name__, earlier, later)
            pending += [child for child in children if child not in seen]
    assert set(RECORD_TABLES.values()) <= set(TABLE_COLUMNS)


@pytest.mark.parametrize(
    ("path", "change", "field"),
    [
        ("tickets", {"opened_at": "2026-09-03", "resolved_at": "2026-09-01"}, "tickets[0].resolved_at"),
        (
            "subscriptions",
            {"start_date": "2025-01-01", "end_date": "2024-12-31"},
            "subscriptions[0].end_date",
        ),
        (
            "opportunities",
            {"created_at": "2026-09-15", "closed_at": "2026-09-14"},
            "opportunities[0].closed_at",
        ),
    ],
)
def test_account_rows_whose_times_contradict_reject_the_account(
    path: str, change: dict[str, str], field: str
) -> None:
    record = _account()
    record[path][0].update(change)
    errors = _errors(prepare_accounts([record], AS_OF))
    earlier = next(name for name in change if not field.endswith(name))
    assert [error for error in errors if error.startswith(f"{field}:")] == [
        f"{field}: {pd.Timestamp(change[field.split('.')[-1]]).to_pydatetime()} is before its {earlier} "
        f"{pd.Timestamp(change[earlier]).to_pydatetime()} (compared by day; batch validation skips such rows)"
    ], errors


def test_the_ticket_the_reviewer_sent_is_rejected_among_other_tickets() -> None:
    record = _account()
    record["tickets"] = [
        {"ticket_id": "t-1", "opened_at": "2026-09-03"},
        {"ticket_id": "t-2", "opened_at": "2026-09-03", "resolved_at": "2026-09-04"},
        {"ticket_id": "t-3", "opened_at": "2026-10-05T09:00", "resolved_at": "2026-10-01T17:00"},
    ]
    batch = prepare_accounts([record, _account(account_id="a-10")], AS_OF)
    assert batch.accepted == [(1, "a-10")]
    (error,) = batch.rejected[0]["errors"]
    assert error.startswith("tickets[2].resolved_at: ") and "before its opened_at" in error


@pytest.mark.parametrize(
    ("path", "earlier", "later"),
    [
        ("tickets", ("opened_at", "2026-09-03T18:00"), ("resolved_at", "2026-09-03T08:00")),
        ("subscriptions", ("start_date", "2025-01-01T12:00"), ("end_date", "2025-01-01")),
        ("opportunities", ("created_at", "2026-09-15T23:00"), ("closed_at", "2026-09-15")),
        # Days are UTC days: 01:00+02:00 is the day before in UTC, so the two share a day.
        ("tickets", ("opened_at", "2026-09-04T01:00+02:00"), ("resolved_at", "2026-09-03T20:00Z")),
    ],
)
def test_earlier_on_the_same_day_is_accepted_as_batch_does(
    path: str, earlier: tuple[str, str], later: tuple[str, str]
) -> None:
    record = _account()
    record[path][0].update(dict([earlier, later]))
    batch = prepare_accounts([record], AS_OF)
    assert batch.rejected == [] and batch.accepted == [(0, "a-9")]


def test_a_deal_scored_for_a_win_names_a_close_before_its_creation() -> None:
    errors = _errors(prepare_opportunities([_deal(created_at="2026-10-20", closed_at="2026-10-01")], AS_OF))
    assert "closed_at: 2026-10-01 00:00:00 is before its created_at 2026-10-20 00:00:00" in " | ".join(
        errors
    ), errors


def test_times_in_order_are_accepted_on_both_endpoints() -> None:
    record = _account()
    record["tickets"][0]["resolved_at"] = "2026-09-05"
    record["subscriptions"][0]["end_date"] = "2026-12-31"
    record["opportunities"][0]["closed_at"] = "2026-10-30"
    record["opportunities"][0]["outcome"] = "won"
    assert prepare_accounts([record], AS_OF).rejected == []
    assert prepare_opportunities([_deal(closed_at="2026-12-20")], AS_OF).rejected == []


@pytest.mark.parametrize(
    ("endpoint", "where", "value"),
    [
        ("opportunities", "amount", True),
        ("opportunities", "won_amount", False),
        ("opportunities", "account.employees", True),
        ("opportunities", "history.0.amount", True),
        ("opportunities", "activities.0.duration_s", True),
        ("accounts", "surveys.0.score", True),
        ("accounts", "subscriptions.0.mrr", True),
        ("accounts", "tickets.0.csat", False),
        ("accounts", "usage.0.active_users", True),
        ("accounts", "annual_revenue", True),
    ],
)
def test_a_boolean_where_a_number_is_expected_is_rejected_naming_the_field(
    endpoint: str, where: str, value: bool
) -> None:
    record = _deal() if endpoint == "opportunities" else _account()
    *parents, last = where.split(".")
    target: Any = record
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    target[last] = value
    prepare = prepare_opportunities if endpoint == "opportunities" else prepare_accounts
    (error,) = _errors(prepare([record], AS_OF))
    assert error == f"{where}: expected a number, got a boolean ({str(value).lower()})"


def test_numbers_are_still_numbers_and_survey_scores_have_no_range() -> None:
    record = _account()
    record["surveys"][0]["score"] = 1e12
    record["subscriptions"][0]["mrr"] = 0
    batch = prepare_accounts([record], AS_OF)
    assert batch.rejected == []
    assert batch.tables["surveys"]["score"].tolist() == [1e12]
    deal = prepare_opportunities([_deal(amount=0, won_amount=1)], AS_OF)
    assert deal.rejected == [] and deal.tables["opportunities"]["amount"].tolist() == [0.0]


@pytest.mark.server
def test_service_rejects_a_ticket_resolved_before_it_was_opened(client, service) -> None:
    record = _account()
    record["tickets"][0]["resolved_at"] = "2026-09-01"
    response = client.post(
        "/v1/accounts/churn",
        json={"as_of": "2026-11-01", "accounts": [record]},
        headers=service.headers(),
    )
    # The only record rejected: nothing to score, so the answer is a 422 with the record's reasons.
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == "accounts[0]"
    (rejected,) = body["details"]
    assert rejected["account_id"] == "a-9"
    assert rejected["errors"][0].startswith("tickets[0].resolved_at: 2026-09-01")
