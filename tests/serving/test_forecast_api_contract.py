"""GET /v1/forecast: the model fields every answer carries (CONTRACT §3), its documented shape, and
as_of dates outside the loaded dataset refused with a reason instead of answered with wrong numbers."""

from __future__ import annotations

import time

import httpx
import pandas as pd
import pytest

pytestmark = pytest.mark.server


def _forecast(client: httpx.Client, service, **params: str) -> httpx.Response:
    """The forecast, after the service has loaded its dataset in the background (503 until then)."""
    deadline = time.monotonic() + 120
    while True:
        response = client.get("/v1/forecast", params=params, headers=service.headers())
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        time.sleep(0.5)


def _data_range(crm_tables: dict) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First deal created and latest timestamp of the service's dataset, read independently of it."""
    from features.labels import data_export_date

    tables = crm_tables["tables"]
    return pd.Timestamp(tables["opportunities"]["created_at"].min()), data_export_date(tables)


def test_forecast_carries_model_and_version(client, service, crm_tables) -> None:
    first, last = _data_range(crm_tables)
    response = _forecast(client, service, period="quarter")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "forecast"
    assert body["model_version"] == f"historical-rates@{last.isoformat()}"
    assert body["data_from"] == first.isoformat()
    assert body["data_through"] == last.isoformat()
    assert body["as_of"] == last.isoformat()
    assert body["totals"] and body["totals"][0]["group"] == "total"


def test_forecast_openapi_documents_the_answer(client) -> None:
    spec = client.get("/v1/openapi.json").json()
    ok = spec["paths"]["/forecast"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/ForecastResponse"}
    schema = spec["components"]["schemas"]["ForecastResponse"]
    assert {"model", "model_version", "as_of", "totals", "groups"} <= set(schema["required"])
    assert {"p10", "p50", "p90"} <= set(spec["components"]["schemas"]["ForecastRow"]["properties"])


def test_as_of_at_the_end_of_the_data_is_the_default_forecast(client, service, crm_tables) -> None:
    _first, last = _data_range(crm_tables)
    default = _forecast(client, service, period="quarter")
    explicit = _forecast(client, service, period="quarter", as_of=last.isoformat())
    assert default.status_code == 200 and explicit.status_code == 200, explicit.text
    assert explicit.json()["totals"] == default.json()["totals"]
    assert explicit.json()["model_version"] == default.json()["model_version"]


@pytest.mark.parametrize("shift", [pd.Timedelta(seconds=1), pd.Timedelta(days=340), pd.Timedelta(days=27000)])
def test_as_of_after_the_data_is_refused(client, service, crm_tables, shift) -> None:
    first, last = _data_range(crm_tables)
    response = _forecast(client, service, period="quarter", as_of=(last + shift).isoformat())
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == "as_of"
    assert "after the end of the data" in body["error"]
    assert first.isoformat() in body["error"] and last.isoformat() in body["error"]
    assert "leave as_of out" in body["error"]


def test_as_of_before_the_first_deal_is_refused(client, service, crm_tables) -> None:
    first, last = _data_range(crm_tables)
    response = _forecast(client, service, period="quarter", as_of="1990-01-01")
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == "as_of"
    assert "before the first deal" in body["error"]
    assert first.isoformat() in body["error"] and last.isoformat() in body["error"]
    assert "NaT" not in body["error"]
