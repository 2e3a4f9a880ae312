"""Checks of what the managers' page states about its numbers, against the real service (no browser):
which model and data the scores and the forecast come from, how old they are, and the favicon."""

from __future__ import annotations

import html
import re
import sqlite3

import httpx
import pytest

from tests.ui.conftest import UiService

pytestmark = [pytest.mark.server, pytest.mark.slow]


def _latest_version(ui_service: UiService, table: str) -> str:
    with sqlite3.connect(ui_service.scores_db) as connection:
        (version,) = connection.execute(
            f"SELECT model_version FROM {table} WHERE scored_at = (SELECT scored_at FROM {table} "
            "GROUP BY scored_at ORDER BY MAX(as_of) DESC, scored_at DESC LIMIT 1) LIMIT 1"
        ).fetchone()
    return str(version)


def _text(page: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>(.*?)</p>', page, flags=re.S)
    assert match, f"no #{element_id} on the page"
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", match.group(1))).split())


def test_pages_name_the_models_data_dates_and_age_behind_their_numbers(ui_service: UiService) -> None:
    auth = {"Authorization": f"Bearer {ui_service.token}"}
    with httpx.Client(base_url=ui_service.url, headers=auth, timeout=180) as http:
        api = http.get("/v1/forecast", params={"period": "quarter", "by": "team"})
        assert api.status_code == 200, api.text
        answer = api.json()
        pipeline = http.get("/ui/pipeline", params={"by": "team", "period": "quarter"})
        accounts = http.get("/ui/accounts")
    assert pipeline.status_code == 200 and accounts.status_code == 200
    basis = _text(pipeline.text, "forecast-basis")
    group = answer["groups"][0]
    assert f"{group['period_start']} to {group['period_end']}" in basis
    assert f"version {answer['model_version']}" in basis and f"model {answer['model']}" in basis
    assert f"{answer['data_from'][:10]} (first deal) to {answer['data_through'][:10]} (end" in basis
    deals = _text(pipeline.text, "deals-basis")
    assert deals.endswith(f"win model version {_latest_version(ui_service, 'opportunity_scores')}")
    scores = _text(accounts.text, "scores-basis")
    assert f"churn model version {_latest_version(ui_service, 'account_scores')} " in scores
    # The test CRM's export ends 2025-12-29: more than a week ago on any day these tests run.
    data_end = answer["data_through"][:10]
    for page in (pipeline.text, accounts.text):
        assert re.search(rf"data as of {data_end} \(\d+ days old\)", _text(page, "stale-notice"))


def test_the_favicon_the_pages_link_is_served(ui_service: UiService) -> None:
    with httpx.Client(base_url=ui_service.url, timeout=60) as http:
        page = http.get("/ui/accounts", headers={"Authorization": f"Bearer {ui_service.token}"})
        (href,) = re.findall(r'<link rel="icon"[^>]*href="([^"]+)"', page.text)
        icon = http.get(href)
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/png"), href
