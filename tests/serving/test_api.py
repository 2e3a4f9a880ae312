"""The prediction API against a real `bentoml serve` process and a real MLflow registry (CONTRACT §3)."""

from __future__ import annotations

import copy
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pandas as pd
import pytest

from serving.schemas import EXAMPLE_CHURN_REQUEST, EXAMPLE_OPPORTUNITY_REQUEST
from tests.serving.crm import EXPORT, opportunity_records

pytestmark = pytest.mark.server


def _open_deals(tables: dict, as_of: pd.Timestamp, n: int) -> list[str]:
    opps = tables["opportunities"]
    open_now = opps[(opps["created_at"] <= as_of) & ~(opps["closed_at"] <= as_of)]
    return open_now["opportunity_id"].head(n).tolist()


def _customers(tables: dict, as_of: pd.Timestamp, n: int) -> list[str]:
    subs = tables["subscriptions"]
    active = subs[(subs["start_date"] <= as_of) & (subs["end_date"].isna() | (subs["end_date"] > as_of))]
    return sorted(active["account_id"].unique())[:n]


def test_health_endpoints_are_open(client: httpx.Client) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "revcast_model_version" in metrics.text


def test_score_opportunities_happy_path(client, service, registry) -> None:
    response = client.post(
        "/v1/opportunities/score", json=EXAMPLE_OPPORTUNITY_REQUEST, headers=service.headers()
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "win"
    assert body["model_version"] == registry.versions["win"]
    assert body["amount_model_version"] == registry.versions["amount"]
    assert body["rejected"] == []
    (result,) = body["results"]
    assert result["opportunity_id"] == "o-1"
    assert 0.0 <= result["win_probability"] <= 1.0
    assert 1 <= result["score"] <= 99
    assert result["grade"] in {"A", "B", "C", "D"}
    assert result["expected_amount_source"] == "amount_model"
    assert result["expected_revenue"] == pytest.approx(
        result["win_probability"] * result["expected_amount"], abs=0.02
    )
    assert 1 <= len(result["top_factors"]) <= 5
    assert {"feature", "value", "contribution"} <= set(result["top_factors"][0])
    assert response.headers.get("x-request-id")


def test_churn_happy_path(client, service, registry) -> None:
    response = client.post("/v1/accounts/churn", json=EXAMPLE_CHURN_REQUEST, headers=service.headers())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "churn"
    assert body["model_version"] == registry.versions["churn"]
    (result,) = body["results"]
    assert result["account_id"] == "a-9"
    assert result["arr"] == pytest.approx(440.0 * 12)
    assert result["revenue_at_risk"] == pytest.approx(result["arr"] * result["churn_probability"], abs=0.02)
    assert result["risk_band"] in {"high", "medium", "low"}
    assert result["top_factors"]


@pytest.mark.parametrize("path", ["/v1/opportunities/score", "/v1/accounts/churn", "/v1/admin/reload"])
@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", "Basic dXNlcjpwYXNz", "Bearer"])
def test_prediction_and_admin_endpoints_need_the_token(client, path, auth) -> None:
    headers = {} if auth is None else {"Authorization": auth}
    response = client.post(path, json=EXAMPLE_OPPORTUNITY_REQUEST, headers=headers)
    assert response.status_code == 401, response.text
    assert "token" in response.json()["error"]


def test_forecast_needs_the_token(client) -> None:
    assert client.get("/v1/forecast").status_code == 401


def _post(client, service, path: str, payload) -> httpx.Response:
    return client.post(path, json=payload, headers=service.headers())


def _single_opportunity(**changes) -> dict:
    payload = copy.deepcopy(EXAMPLE_OPPORTUNITY_REQUEST)
    payload["opportunities"][0].update(changes)
    return payload


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"amount": "lots"}, "amount"),
        ({"amount": [1, 2]}, "amount"),
        ({"created_at": "31/02/2026"}, "created_at"),
        ({"created_at": 1754000000}, "created_at"),
        ({"type": "upsell"}, "type"),
        ({"outcome": "maybe"}, "outcome"),
        ({"opportunity_id": None}, "opportunity_id"),
        ({"history": [{"stage": "demo"}]}, "history.0.changed_at"),
        (
            {
                "activities": [
                    {"activity_id": "x", "occurred_at": "2026-10-01", "type": "call", "replied": "sometimes"}
                ]
            },
            "activities.0.replied",
        ),
        (
            {"account": {"account_id": "a-9", "created_at": "2021-03-01", "employees": -5}},
            "account.employees",
        ),
        ({"created_at": "2027-01-01"}, "created_at"),
    ],
)
def test_invalid_record_answers_422_naming_the_field(client, service, changes, field) -> None:
    response = _post(client, service, "/v1/opportunities/score", _single_opportunity(**changes))
    assert response.status_code == 422, response.text
    body = response.json()
    assert field in body["error"], body
    rejected = body["details"][0]
    assert rejected["index"] == 0
    assert any(error.startswith(field) for error in rejected["errors"]), rejected


def test_missing_required_field_is_named(client, service) -> None:
    payload = copy.deepcopy(EXAMPLE_OPPORTUNITY_REQUEST)
    del payload["opportunities"][0]["account_id"]
    response = _post(client, service, "/v1/opportunities/score", payload)
    assert response.status_code == 422
    assert "account_id: Field required" in response.json()["error"]


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"opportunities": []}, 422, "opportunities"),
        ({"opportunities": {"a": 1}}, 422, "opportunities"),
        ({}, 422, "opportunities"),
        ({"as_of": "yesterday", "opportunities": [{}]}, 422, "as_of"),
        ({"as_of": 20261101, "opportunities": [{}]}, 422, "as_of"),
        ({"opportunities": [{}], "extra": 1}, 422, "extra"),
        ([1, 2], 422, None),
    ],
)
def test_invalid_envelope_answers_4xx_naming_the_field(client, service, payload, status, field) -> None:
    response = _post(client, service, "/v1/opportunities/score", payload)
    assert response.status_code == status, response.text
    if field is not None:
        assert response.json()["field"] == field


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_refused_naming_the_field(client, service, token) -> None:
    text = json.dumps(EXAMPLE_OPPORTUNITY_REQUEST).replace('"amount": 42000', f'"amount": {token}')
    response = client.post(
        "/v1/opportunities/score",
        content=text,
        headers={**service.headers(), "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "opportunities[0].amount"


def test_body_must_be_json(client, service) -> None:
    bad = client.post(
        "/v1/opportunities/score",
        content=b"{not json",
        headers={**service.headers(), "Content-Type": "application/json"},
    )
    assert bad.status_code == 400
    assert "not valid JSON" in bad.json()["error"]
    form = client.post(
        "/v1/opportunities/score", content=b"a=1", headers={**service.headers(), "Content-Type": "text/plain"}
    )
    assert form.status_code == 415


def test_oversized_body_is_413(client, service) -> None:
    payload = copy.deepcopy(EXAMPLE_OPPORTUNITY_REQUEST)
    payload["opportunities"][0]["notes"] = "x" * (9 * 1024 * 1024)
    response = _post(client, service, "/v1/opportunities/score", payload)
    assert response.status_code == 413
    assert "limit" in response.json()["error"]


def test_oversized_batch_is_413(client, service) -> None:
    payload = {"opportunities": [EXAMPLE_OPPORTUNITY_REQUEST["opportunities"][0]] * 1501}
    response = _post(client, service, "/v1/opportunities/score", payload)
    assert response.status_code == 413
    assert "1501 records" in response.json()["error"]
    assert response.json()["field"] == "opportunities"


def test_mixed_batch_scores_the_good_and_rejects_the_bad(client, service) -> None:
    good = EXAMPLE_OPPORTUNITY_REQUEST["opportunities"][0]
    records = [
        good,
        {**good, "opportunity_id": "o-2", "created_at": "31/02/2026"},
        {**good, "opportunity_id": "o-3", "activities": []},
        "not an object",
        {**good, "opportunity_id": "o-4", "closed_at": "2026-10-01", "outcome": "won"},
        {**good, "opportunity_id": "o-1"},
        {**good, "opportunity_id": "o-5", "history": [{"changed_at": "2026-12-01", "stage": "demo"}]},
    ]
    response = _post(
        client, service, "/v1/opportunities/score", {"as_of": "2026-11-01", "opportunities": records}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["opportunity_id"] for r in body["results"]] == ["o-1", "o-3"]
    rejected = {item["index"]: item for item in body["rejected"]}
    assert sorted(rejected) == [1, 3, 4, 5, 6]
    assert rejected[1]["opportunity_id"] == "o-2" and rejected[1]["errors"][0].startswith("created_at:")
    assert rejected[3]["opportunity_id"] is None
    assert rejected[4]["errors"][0].startswith("outcome:")
    assert "more than once" in rejected[5]["errors"][0]
    assert rejected[6]["errors"][0].startswith("history[0].changed_at:")


def test_churn_rejects_account_without_active_subscription(client, service) -> None:
    good = EXAMPLE_CHURN_REQUEST["accounts"][0]
    ended = {
        **good,
        "account_id": "a-10",
        "tickets": [],
        "activities": [],
        "opportunities": [],
        "subscriptions": [{**good["subscriptions"][0], "subscription_id": "s-9", "end_date": "2026-01-01"}],
    }
    response = _post(
        client, service, "/v1/accounts/churn", {"as_of": "2026-11-01", "accounts": [good, ended]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["account_id"] for r in body["results"]] == ["a-9"]
    assert body["rejected"][0]["account_id"] == "a-10"
    assert "no subscription is active" in body["rejected"][0]["errors"][0]


@pytest.mark.parametrize(
    ("deal_changes", "field"),
    [
        ({"account_id": "a-other"}, "opportunities[0].account_id"),
        ({"created_at": "2027-01-05"}, "opportunities[0].created_at"),
        ({"type": "upsell"}, "opportunities.0.type"),
        ({"outcome": "lost"}, "opportunities[0].closed_at"),
        (
            {"history": [{"changed_at": "2026-12-01", "stage": "demo"}]},
            "opportunities[0].history[0].changed_at",
        ),
        ({"history": [{"stage": "demo"}]}, "opportunities.0.history.0.changed_at"),
        ({"amount": -3}, "opportunities.0.amount"),
        ({"created_at": None}, "opportunities.0.created_at"),
    ],
)
def test_churn_rejects_a_bad_nested_deal_naming_the_field(client, service, deal_changes, field) -> None:
    good = copy.deepcopy(EXAMPLE_CHURN_REQUEST["accounts"][0])
    bad = copy.deepcopy(good)
    bad["account_id"] = "a-11"
    bad["subscriptions"][0]["subscription_id"] = "s-11"
    bad["tickets"], bad["activities"] = [], []
    bad["opportunities"] = [{**good["opportunities"][0], "opportunity_id": "o-11", **deal_changes}]
    other = {**copy.deepcopy(bad), "account_id": "a-12", "opportunities": []}
    other["subscriptions"][0]["subscription_id"] = "s-12"
    response = _post(
        client, service, "/v1/accounts/churn", {"as_of": "2026-11-01", "accounts": [good, bad, other]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["account_id"] for r in body["results"]] == ["a-9", "a-12"]
    assert [(r["index"], r["account_id"]) for r in body["rejected"]] == [(1, "a-11")]
    assert any(error.startswith(f"{field}:") for error in body["rejected"][0]["errors"]), body["rejected"]


def test_churn_deal_account_defaults_to_the_enclosing_account(client, service) -> None:
    payload = copy.deepcopy(EXAMPLE_CHURN_REQUEST)
    deal = payload["accounts"][0]["opportunities"][0]
    assert "account_id" not in deal
    default = _post(client, service, "/v1/accounts/churn?include_features=true", payload).json()
    deal["account_id"] = payload["accounts"][0]["account_id"]
    explicit = _post(client, service, "/v1/accounts/churn?include_features=true", payload).json()
    payload["accounts"][0]["opportunities"] = []
    without = _post(client, service, "/v1/accounts/churn?include_features=true", payload).json()
    assert default["results"] == explicit["results"]
    assert default["results"][0]["features"]["acct_open_renewal_opps"] == 1
    assert default["results"][0]["features"]["acct_renewal_stage_index"] is not None
    assert without["results"][0]["features"]["acct_open_renewal_opps"] == 0


def test_batch_of_1000_records(client, service, crm_tables) -> None:
    tables = crm_tables["tables"]
    base = opportunity_records(tables, _open_deals(tables, EXPORT, 20), EXPORT)
    records = []
    for i in range(1000):
        record = copy.deepcopy(base[i % len(base)])
        record["opportunity_id"] = f"{record['opportunity_id']}-{i}"
        for activity in record["activities"]:
            activity["activity_id"] = f"{activity['activity_id']}-{i}"
            activity.pop("opportunity_id", None)
        records.append(record)
    response = client.post(
        "/v1/opportunities/score",
        json={"as_of": EXPORT.isoformat(), "opportunities": records},
        headers={**service.headers(), "X-Request-ID": "batch-of-1000"},
    )
    assert response.status_code == 200, response.text[:500]
    body = response.json()
    assert len(body["results"]) == 1000 and body["rejected"] == []
    # Scored on the lane of big requests (serving.yaml large_request_records), not the interactive one.
    assert _log_line(service, "batch-of-1000")["lane"] == "large"
    # The same deal under another id gets the same score: records do not leak into each other.
    by_id = {r["opportunity_id"]: r["win_probability"] for r in body["results"]}
    first_id = base[0]["opportunity_id"]
    assert by_id[f"{first_id}-0"] == by_id[f"{first_id}-{len(base)}"]


def test_concurrent_requests_get_the_answers_they_get_alone(client, service, crm_tables) -> None:
    """Requests arriving together are scored in shared feature builds (serving.coalesce); each must
    still get exactly its own answer, here with the same deal id in every request but other facts."""
    tables = crm_tables["tables"]
    base = opportunity_records(tables, _open_deals(tables, EXPORT, 16), EXPORT)
    payloads = []
    for record in base:
        record = copy.deepcopy(record)
        record["opportunity_id"] = "same-id"
        for activity in record["activities"]:
            activity.pop("opportunity_id", None)
        payloads.append({"as_of": EXPORT.isoformat(), "opportunities": [record]})
    alone = [_post(client, service, "/v1/opportunities/score", payload).json() for payload in payloads]

    def send(payload: dict) -> dict:
        with httpx.Client(base_url=service.url, timeout=60) as own:
            response = own.post("/v1/opportunities/score", json=payload, headers=service.headers())
        assert response.status_code == 200, response.text[:300]
        return response.json()

    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        together = list(pool.map(send, payloads))
    for a, b in zip(together, alone, strict=True):
        (ra,), (rb,) = a["results"], b["results"]
        assert ra["opportunity_id"] == "same-id" and a["rejected"] == []
        assert ra["win_probability"] == pytest.approx(rb["win_probability"], abs=2e-6)
        assert ra["expected_amount"] == pytest.approx(rb["expected_amount"], rel=1e-6)
        assert [f["feature"] for f in ra["top_factors"]] == [f["feature"] for f in rb["top_factors"]]
    assert len({r["results"][0]["win_probability"] for r in alone}) > 1, "the 16 deals should differ"
    text = service.log.read_text(errors="replace")
    scored_with = [
        json.loads(line).get("scored_with")
        for line in text.splitlines()
        if line.startswith("{") and '"endpoint":"opportunities"' in line and '"status":200' in line
    ]
    assert scored_with and all(isinstance(n, int) and n >= 1 for n in scored_with)


def _log_line(service, request_id: str) -> dict:
    """The service's JSON log line of one request (waits for it to be written)."""
    deadline = time.monotonic() + 10
    while True:
        text = service.log.read_text(errors="replace")
        lines = [
            json.loads(line)
            for line in text.splitlines()
            if line.startswith("{") and f'"{request_id}"' in line
        ]
        if lines or time.monotonic() > deadline:
            assert len(lines) == 1, lines
            return lines[0]
        time.sleep(0.2)


def test_forecast(client, service, crm_tables) -> None:
    # The service loads the forecast dataset in the background after start-up: 503 until then.
    deadline = time.monotonic() + 120
    while True:
        response = client.get("/v1/forecast", params={"period": "quarter"}, headers=service.headers())
        if response.status_code != 503 or time.monotonic() > deadline:
            break
        assert "loading" in response.json()["error"], response.text
        time.sleep(0.5)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["period"] == "quarter"
    by_team = client.get(
        "/v1/forecast", params={"period": "quarter", "by": "team"}, headers=service.headers()
    )
    reps = crm_tables["tables"].get("reps")
    if reps is not None and "team" in reps.columns:
        assert by_team.status_code == 200, by_team.text
    else:  # the engine's own reason, as a client error
        assert by_team.status_code == 422, by_team.text
        assert "reps" in by_team.json()["error"]
    bad = client.get("/v1/forecast", params={"period": "week"}, headers=service.headers())
    assert bad.status_code == 422
    assert bad.json()["field"] == "period"


def test_openapi_page_documents_the_api(client) -> None:
    spec = client.get("/v1/openapi.json").json()
    assert {"/opportunities/score", "/accounts/churn", "/forecast", "/admin/reload"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert "OpportunityScoreRequest" in schemas and "OpportunityIn" in schemas
    docs = client.get("/v1/docs")
    assert docs.status_code == 200
    # Works without internet access: every script and style comes from the service itself.
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert assets and not [url for url in assets if "://" in url or url.startswith("//")], assets
    for url in assets:
        assert client.get(url).status_code == 200, url
    assert "'/v1/openapi.json'" in docs.text or '"/v1/openapi.json"' in docs.text


def test_one_structured_log_line_per_request_without_pii(client, service) -> None:
    payload = copy.deepcopy(EXAMPLE_OPPORTUNITY_REQUEST)
    payload["opportunities"][0]["account"]["name"] = "Zyxwv Secret Holdings"
    payload["opportunities"][0]["contact_email"] = "jane.doe@example.org"
    response = client.post(
        "/v1/opportunities/score", json=payload, headers={**service.headers(), "X-Request-ID": "pii-check-1"}
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "pii-check-1"
    line = _log_line(service, "pii-check-1")
    text = service.log.read_text(errors="replace")
    assert (
        line["status"] == 200 and line["n_records"] == 1 and line["n_scored"] == 1 and line["n_rejected"] == 0
    )
    assert line["model_version"] and line["latency_ms"] > 0 and line["lane"] == "small"
    assert "Zyxwv" not in text and "jane.doe" not in text


def test_every_openapi_reference_resolves(client) -> None:
    for path in ("/v1/openapi.json", "/docs.json"):
        document = client.get(path).json()
        refs = set(re.findall(r"#/components/schemas/([A-Za-z0-9_.-]+)", json.dumps(document)))
        assert refs and refs <= set(document["components"]["schemas"]), (
            path,
            refs - set(document["components"]["schemas"]),
        )
    example = client.get("/v1/examples/opportunities/score").json()
    assert example["opportunities"][0]["opportunity_id"] == "o-1"
