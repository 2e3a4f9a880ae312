"""A deal whose current stage says it is closed is rejected naming ``stage``, not scored as an open
deal with an unseen stage; the closed-stage vocabulary is configuration (serving/serving.yaml). Stages
are matched in lower case with separators read as one space, so one stage's spellings all match."""

from __future__ import annotations

import copy
from typing import Any

import pandas as pd
import pytest

from serving.config import (
    DEFAULT_CLOSED_STAGES,
    ConfigError,
    ServiceConfig,
    closed_stage_key,
    config_from_env,
    load_defaults,
    normalise_stage,
)
from serving.requests import canonical_text, prepare_opportunities
from serving.schemas import EXAMPLE_OPPORTUNITY_REQUEST

AS_OF = pd.Timestamp("2026-11-01")
# As Salesforce, HubSpot and plain exports spell them.
CLOSED_AS_SENT = [
    "Closed Won",
    "Closed Lost",
    "closedwon",
    "closedlost",
    "won",
    "lost",
    "closed_won",
    "CLOSED",
    "Closed - Won",
    "Closed-Won",
    "closed-lost",
    "CLOSED__LOST",
    "Closed/Won",
]


def _deal(opportunity_id: str = "o-1", **changes: Any) -> dict[str, Any]:
    record = copy.deepcopy(EXAMPLE_OPPORTUNITY_REQUEST["opportunities"][0])
    record["opportunity_id"] = opportunity_id
    record["activities"][0]["activity_id"] = f"x-{opportunity_id}"
    record.update(changes)
    return record


@pytest.mark.parametrize("stage", [*CLOSED_AS_SENT, " Closed Won ", "closed lost\t", "Closed\u00a0Won"])
def test_closed_stage_without_outcome_is_rejected_naming_stage(stage: str) -> None:
    batch = prepare_opportunities([_deal(stage=stage), _deal("o-2")], AS_OF)
    assert batch.accepted == [(1, "o-2")]
    (rejected,) = batch.rejected
    assert rejected["opportunity_id"] == "o-1"
    (error,) = rejected["errors"]
    assert error.startswith("stage:") and "closed_at" in error and "outcome" in error, error
    assert "not scored" in error


@pytest.mark.parametrize(
    "stage", ["proposal", "banana", "Closing soon", "won-back", "closed won back", "---", "", None]
)
def test_open_and_unknown_stages_are_scored_as_before(stage: str | None) -> None:
    record = _deal(stage=stage) if stage is not None else _deal()
    if stage is None:
        record.pop("stage")
    batch = prepare_opportunities([record], AS_OF)
    assert batch.rejected == [] and batch.accepted == [(0, "o-1")]


def test_closed_stage_with_a_future_close_date_and_no_outcome_is_rejected() -> None:
    batch = prepare_opportunities([_deal(stage="Closed Won", closed_at="2026-12-01")], AS_OF)
    (rejected,) = batch.rejected
    assert rejected["errors"][0].startswith("stage:")


def test_closed_stage_with_an_outcome_gets_the_outcome_reason_once() -> None:
    batch = prepare_opportunities([_deal(stage="Closed Won", closed_at="2026-10-01", outcome="won")], AS_OF)
    (rejected,) = batch.rejected
    assert [error.split(":")[0] for error in rejected["errors"]] == ["outcome"]


def test_the_vocabulary_is_a_parameter() -> None:
    records = [_deal("o-1", stage="Signed"), _deal("o-2", stage="won")]
    batch = prepare_opportunities(records, AS_OF, closed_stages=frozenset({"signed"}))
    assert batch.accepted == [(1, "o-2")]
    assert batch.rejected[0]["errors"][0].startswith("stage: 'Signed'")
    assert prepare_opportunities(records, AS_OF, closed_stages=frozenset()).rejected == []


def test_configuration_default_file_and_environment() -> None:
    assert {closed_stage_key(stage) for stage in CLOSED_AS_SENT} <= DEFAULT_CLOSED_STAGES
    # serving.yaml lists the same stages as the code's default.
    assert config_from_env({}).closed_stages == DEFAULT_CLOSED_STAGES
    assert set(load_defaults()["closed_stages"]) == DEFAULT_CLOSED_STAGES
    assert ServiceConfig().closed_stages == DEFAULT_CLOSED_STAGES
    env = config_from_env({"REVCAST_CLOSED_STAGES": " Signed , Dead,"})
    assert env.closed_stages == {"signed", "dead"}
    assert config_from_env({}, defaults={"closed_stages": ["Done "]}).closed_stages == {"done"}
    assert config_from_env({}, defaults={"closed_stages": []}).closed_stages == frozenset()
    with pytest.raises(ConfigError, match="closed_stages"):
        config_from_env({}, defaults={"closed_stages": ["won", " "]})
    with pytest.raises(ConfigError, match="closed_stages"):
        ServiceConfig(closed_stages=frozenset({"Closed Won"}))  # would never match a keyed stage
    with pytest.raises(ConfigError, match="closed_stages"):
        ServiceConfig(closed_stages=frozenset({"closed_won"}))
    with pytest.raises(ConfigError, match="REVCAST_CLOSED_STAGES"):
        config_from_env({"REVCAST_CLOSED_STAGES": "signed, --"})  # no letter: would match nothing


def test_the_configured_vocabulary_is_keyed_as_stages_are() -> None:
    # Whatever spelling the configuration uses, every spelling of that stage matches it.
    assert config_from_env({}, defaults={"closed_stages": ["Closed_Won", "HubSpot-Lost"]}).closed_stages == {
        "closed won",
        "hubspot lost",
    }
    config = config_from_env({"REVCAST_CLOSED_STAGES": "Contract-Signed"})
    assert config.closed_stages == {"contract signed"}
    records = [_deal("o-1", stage="contract signed"), _deal("o-2", stage="CONTRACT_SIGNED"), _deal("o-3")]
    batch = prepare_opportunities(records, AS_OF, closed_stages=config.closed_stages)
    assert batch.accepted == [(2, "o-3")]
    assert [item["opportunity_id"] for item in batch.rejected] == ["o-1", "o-2"]


def test_closed_stage_key() -> None:
    for sent in ["Closed - Won", "closed_won", "closed-won", " CLOSED\tWON ", "closed--_won.", "Closed Won"]:
        assert closed_stage_key(sent) == "closed won", sent
    assert closed_stage_key("closedwon") == "closedwon"
    assert closed_stage_key("Étape 2 – Gagné") == "étape 2 gagné"  # letters of any script are kept
    assert closed_stage_key(" -- ") == ""


def test_stage_feature_normalisation_is_the_one_stages_get() -> None:
    # The closed-stage key is for matching only: the stage feature keeps the category clean-up.
    for stage in [*CLOSED_AS_SENT, " Closed\tWon ", "ÉTAPE"]:
        assert normalise_stage(stage) == canonical_text(stage, lower=True)


@pytest.mark.server
def test_service_rejects_a_closed_stage_and_scores_the_rest(client, service) -> None:
    records = [
        _deal("o-1", stage="Closed Won"),
        _deal("o-2", stage="banana"),
        _deal("o-3", stage="closedlost"),
    ]
    response = client.post(
        "/v1/opportunities/score",
        json={"as_of": "2026-11-01", "opportunities": records},
        headers=service.headers(),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["opportunity_id"] for r in body["results"]] == ["o-2"]
    assert [(item["index"], item["opportunity_id"]) for item in body["rejected"]] == [(0, "o-1"), (2, "o-3")]
    for item in body["rejected"]:
        assert item["errors"][0].startswith("stage:") and "closed_at" in item["errors"][0]
