"""End-to-end checks of the managers' page in headless Chromium against the real service, with real
champions and a real `revcast score` run behind it (fixtures in tests/ui/conftest.py)."""

from __future__ import annotations

import csv
import io
import re
import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.ui.conftest import UiService

pytestmark = [pytest.mark.server, pytest.mark.browser, pytest.mark.slow]

WIDTHS = {"laptop": (1366, 900), "tablet": (768, 1024)}


def _latest_account_run(scores_db: Path) -> list[tuple]:
    """(account_id, churn_probability, risk_band, revenue_at_risk, as_of) of the latest run, from the store."""
    with sqlite3.connect(scores_db) as connection:
        (scored_at,) = connection.execute(
            "SELECT scored_at FROM account_scores GROUP BY scored_at ORDER BY MAX(as_of) DESC, scored_at DESC LIMIT 1"
        ).fetchone()
        return connection.execute(
            "SELECT account_id, churn_probability, risk_band, revenue_at_risk, as_of FROM account_scores "
            "WHERE scored_at = ?",
            (scored_at,),
        ).fetchall()


def _sign_in(page, service: UiService, token: str) -> None:
    page.goto(f"{service.url}/ui/")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def _no_horizontal_page_scroll(page) -> bool:
    return page.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth + 1")


def test_without_token_everything_redirects_to_sign_in_and_serves_no_account_data(
    ui_service: UiService,
) -> None:
    """Pages, CSVs and the action form answer 303 to sign-in; forged cookies and wrong tokens too."""
    latest = _latest_account_run(ui_service.scores_db)
    some_account = max(latest, key=lambda row: row[3])[0]
    with httpx.Client(base_url=ui_service.url, timeout=60, follow_redirects=False) as http:
        for path in (
            "/ui",
            "/ui/",
            "/ui/accounts",
            "/ui/accounts?band=high",
            "/ui/accounts.csv",
            f"/ui/accounts/{some_account}",
            "/ui/pipeline",
            "/ui/actions.csv",
            "/ui/no-such-page",
        ):
            for headers in (
                {},
                {"Authorization": "Bearer wrong-token"},
                {"Cookie": "revcast_ui_session=9999999999.deadbeef"},
                {"Cookie": f"revcast_ui_session={ui_service.token}"},  # the raw token is not a session
            ):
                response = http.get(path, headers=headers)
                assert response.status_code in (303, 307), (path, headers, response.status_code)
                location = response.headers["location"]
                if response.status_code == 303:
                    assert location.startswith("/ui/signin"), (path, location)
                assert some_account not in response.text
        posted = http.post(
            f"/ui/accounts/{some_account}/actions", data={"action": "saved", "note": "should not be stored"}
        )
        assert posted.status_code == 303 and posted.headers["location"].startswith("/ui/signin")
        assert http.get("/ui/signin").status_code == 200
        # The same data endpoints answer with the bearer token (for scripts).
        with_token = http.get("/ui/accounts.csv", headers={"Authorization": f"Bearer {ui_service.token}"})
        assert with_token.status_code == 200 and some_account in with_token.text
    if ui_service.actions_db.exists():
        with sqlite3.connect(ui_service.actions_db) as connection:
            notes = [row[0] for row in connection.execute("SELECT note FROM account_actions")]
        assert "should not be stored" not in notes


def test_sign_in_at_risk_table_filter_account_page_and_action(
    ui_service: UiService, browser, artifacts: Path
) -> None:
    """The manager's main path, at laptop width, with screenshots of every page at both widths."""
    latest = _latest_account_run(ui_service.scores_db)
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{ui_service.url}/ui/accounts")
        assert "/ui/signin" in page.url
        page.get_by_label("API token").fill("not-the-token")
        page.get_by_role("button", name="Sign in").click()
        assert page.get_by_role("alert").inner_text().startswith("That token is not")
        page.get_by_label("API token").fill(ui_service.token)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(re.compile(r".*/ui/accounts$"))

        cookie = next(c for c in context.cookies() if c["name"] == "revcast_ui_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
        assert ui_service.token not in cookie["value"]

        # The table: every account of the latest run, sorted by revenue at risk (largest first).
        rows = page.locator("#at-risk tbody tr[data-account]")
        assert rows.count() == len(latest) > 0
        shown_ids = rows.evaluate_all("rows => rows.map(r => r.dataset.account)")
        expected = [row[0] for row in sorted(latest, key=lambda row: -(row[3] or 0.0))]
        assert shown_ids[:5] == expected[:5]
        first = rows.first
        assert re.fullmatch(r"\d+\.\d%", first.locator("td").nth(3).inner_text().strip())
        assert first.locator("td.drivers li").count() >= 1
        with sqlite3.connect(ui_service.scores_db) as connection:
            (n_rescored,) = connection.execute(
                "SELECT COUNT(DISTINCT account_id) FROM account_scores WHERE as_of < ? AND account_id IN "
                "(SELECT account_id FROM account_scores WHERE as_of = (SELECT MAX(as_of) FROM account_scores))",
                (max(r[4] for r in latest),),
            ).fetchone()
        trends = rows.locator("td.trend").all_inner_texts()
        assert sum("pts" in text for text in trends) == n_rescored > 0  # the others read "new"
        assert first.locator("td").nth(0).inner_text().strip().startswith("R")  # owner from the CRM
        for name, (width, height) in WIDTHS.items():
            page.set_viewport_size({"width": width, "height": height})
            page.screenshot(path=str(artifacts / f"accounts-{name}.png"), full_page=False)
            assert _no_horizontal_page_scroll(page), f"the at-risk page scrolls sideways at {width}px"
            # The whole table, drivers included, fits without scrolling inside its frame either.
            assert page.evaluate(
                "(() => { const w = document.querySelector('.table-wrap'); return w.scrollWidth <= w.clientWidth + 1; })()"
            ), f"the at-risk table needs sideways scrolling at {width}px"
        page.set_viewport_size({"width": 1366, "height": 900})

        # Filter by band (the select applies on change).
        bands = {row[2] for row in latest}
        band = "high" if "high" in bands else sorted(bands)[0]
        page.get_by_label("Risk band").select_option(band)
        page.wait_for_url(re.compile(rf".*band={band}"))
        filtered = page.locator("#at-risk tbody tr[data-account]")
        assert filtered.count() == sum(1 for row in latest if row[2] == band)
        assert set(filtered.locator(".band").all_inner_texts()) == {band}
        csv_text = page.request.get(f"{ui_service.url}/ui/accounts.csv?band={band}").text()
        csv_rows = list(csv.DictReader(io.StringIO(csv_text)))
        assert len(csv_rows) == filtered.count() and {r["risk_band"] for r in csv_rows} == {band}

        # The account page: history chart (one point per scoring date) and drivers.
        account_id = filtered.first.get_attribute("data-account")
        filtered.first.locator("th a").click()
        page.wait_for_url(re.compile(rf".*/ui/accounts/{account_id}$"))
        with sqlite3.connect(ui_service.scores_db) as connection:
            (n_dates,) = connection.execute(
                "SELECT COUNT(DISTINCT as_of) FROM account_scores WHERE account_id = ?", (account_id,)
            ).fetchone()
        assert page.locator("svg.chart circle.dot").count() == n_dates >= 1
        assert page.locator(".driver-list li").count() >= 1
        for name, (width, height) in WIDTHS.items():
            page.set_viewport_size({"width": width, "height": height})
            page.screenshot(path=str(artifacts / f"account-{name}.png"), full_page=True)
            assert _no_horizontal_page_scroll(page), f"the account page scrolls sideways at {width}px"
        page.set_viewport_size({"width": 1366, "height": 900})

        # Record an action; it persists after a reload and shows on the list and in the CSV.
        note = "Called the CFO; renewal meeting booked for next week"
        page.get_by_label("saved", exact=True).check()
        page.get_by_label("Note", exact=True).fill(note)
        with page.expect_navigation():
            page.get_by_role("button", name="Record action").click()
        page.reload()
        page.screenshot(path=str(artifacts / "account-after-action-laptop.png"), full_page=True)
        assert note in page.locator("#action-list").inner_text()
        assert "saved" in page.locator("#action-list").inner_text()
        page.goto(f"{ui_service.url}/ui/accounts?band={band}")
        assert "saved" in page.locator(f'tr[data-account="{account_id}"]').inner_text()
        actions = list(
            csv.DictReader(io.StringIO(page.request.get(f"{ui_service.url}/ui/actions.csv").text()))
        )
        mine = [a for a in actions if a["account"] == account_id and a["note"] == note]
        assert len(mine) == 1 and mine[0]["action"] == "saved"
        stored_p = {row[0]: row[1] for row in latest}[account_id]
        assert float(mine[0]["churn_probability_at_action"]) == pytest.approx(stored_p)
        with sqlite3.connect(ui_service.actions_db) as connection:  # REVCAST_UI_DB_URL is honoured
            assert connection.execute(
                "SELECT COUNT(*) FROM account_actions WHERE account_id = ? AND note = ?", (account_id, note)
            ).fetchone() == (1,)
    finally:
        context.close()


def test_forecast_view_shows_a_number_for_every_team(ui_service: UiService, browser, artifacts: Path) -> None:
    """Every team of the forecast has a P50 on the page, equal to what GET /v1/forecast answers."""
    api = httpx.get(
        f"{ui_service.url}/v1/forecast",
        params={"period": "quarter", "by": "team"},
        headers={"Authorization": f"Bearer {ui_service.token}"},
        timeout=120,
    )
    assert api.status_code == 200, api.text
    teams = {group["group"]: group["p50"] for group in api.json()["groups"]}
    assert {"East", "West"} <= set(teams)
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    try:
        _sign_in(page, ui_service, ui_service.token)
        page.goto(f"{ui_service.url}/ui/pipeline")
        rows = page.locator("#forecast tbody tr")
        assert rows.count() == len(teams)
        for team, p50 in teams.items():
            cell = page.locator(f'#forecast tr[data-group="{team}"] td.p50').inner_text()
            assert cell == f"{p50:,.0f}", (team, cell, p50)
        assert page.locator("svg.chart rect.range").count() == len(teams)
        assert page.locator("#grades tbody tr").count() == 4
        assert int(page.locator("#grades tbody tr").nth(0).locator("td").first.inner_text()) >= 0
        assert "2025-12-01" in page.locator("text=Since the scoring as of").inner_text()
        for name, (width, height) in WIDTHS.items():
            page.set_viewport_size({"width": width, "height": height})
            page.screenshot(path=str(artifacts / f"pipeline-{name}.png"), full_page=True)
            assert _no_horizontal_page_scroll(page), f"the pipeline page scrolls sideways at {width}px"
    finally:
        context.close()
