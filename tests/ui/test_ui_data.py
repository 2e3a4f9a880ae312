"""Fast tests of the web page's rules (no browser, no server): store locations, sessions, run
selection, the at-risk table, drops, plain-language drivers, actions, charts, and the app's auth edges
through Starlette's in-process client."""

from __future__ import annotations

import html as html_lib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving.ui import views
from serving.ui.auth import SESSION_MAX_AGE_S, session_is_valid, session_value
from serving.ui.charts import line_chart, range_bars
from serving.ui.store import ActionStore, ScoresReader, default_actions_url, default_scores_url

# --------------------------------------------------------------------------- store locations


@pytest.mark.parametrize("tracking", [None, "sqlite:///{tmp}/track/mlflow.db", "http://127.0.0.1:5000"])
def test_scores_location_is_the_one_revcast_score_writes(
    tracking: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.score import default_scores_url as training_scores_url

    monkeypatch.chdir(tmp_path)
    if tracking is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.format(tmp=tmp_path))
    assert default_scores_url() == training_scores_url()
    assert default_scores_url().endswith("scores.db")


def test_actions_location_env_override_and_default(tmp_path: Path) -> None:
    assert (
        default_actions_url("sqlite:///x.db", {"REVCAST_UI_DB_URL": "postgresql://h/db"})
        == "postgresql://h/db"
    )
    default = default_actions_url(f"sqlite:///{tmp_path}/scores.db", {})
    assert default == f"sqlite:///{tmp_path.resolve()}/ui_actions.db"


# --------------------------------------------------------------------------- sessions


def test_session_cookie_is_an_hmac_that_expires_and_dies_with_the_token() -> None:
    now = 1_800_000_000
    value = session_value("secret-token", issued_at=now)
    assert "secret-token" not in value
    assert session_is_valid(value, "secret-token", now=now + 10)
    assert not session_is_valid(value, "rotated-token", now=now + 10)
    assert not session_is_valid(value, "secret-token", now=now + SESSION_MAX_AGE_S + 1)
    assert not session_is_valid(value, "secret-token", now=now - 3600)  # issued in the future
    issued, mac = value.split(".")
    assert not session_is_valid(f"{int(issued) + 1}.{mac}", "secret-token", now=now + 10)
    assert not session_is_valid(f"{issued}.{mac[:-1]}0", "secret-token", now=now + 10) or mac.endswith("0")
    for broken in (None, "", "abc", "123", ".abc", "secret-token"):
        assert not session_is_valid(broken, "secret-token", now=now)
    assert not session_is_valid(value, None, now=now)


# --------------------------------------------------------------------------- runs and drops


def _runs(*as_of: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "scored_at": [f"2026-01-{i + 1:02d}T00:00:00" for i in range(len(as_of))],
            "as_of": list(as_of),
            "n": 1,
        }
    )


def test_comparison_run_is_the_latest_at_least_a_week_older_else_the_previous() -> None:
    runs = _runs("2025-11-01T00:00:00", "2025-11-20T00:00:00", "2025-11-25T00:00:00", "2025-11-28T00:00:00")
    assert views.comparison_run(runs)["as_of"] == "2025-11-20T00:00:00"
    close = _runs("2025-11-25T00:00:00", "2025-11-26T00:00:00", "2025-11-28T00:00:00")
    assert views.comparison_run(close)["as_of"] == "2025-11-26T00:00:00"
    assert views.comparison_run(_runs("2025-11-25T00:00:00")) is None
    assert views.latest_run(runs)["as_of"] == "2025-11-28T00:00:00"


def test_score_drops_lists_only_falls_largest_first() -> None:
    latest = pd.DataFrame(
        {
            "opportunity_id": ["o1", "o2", "o3", "o4"],
            "account_id": "a",
            "owner_id": "r",
            "grade": "B",
            "win_probability": [0.2, 0.5, 0.1, 0.9],
            "expected_revenue": 1.0,
        }
    )
    earlier = pd.DataFrame({"opportunity_id": ["o1", "o2", "o3"], "win_probability": [0.6, 0.4, 0.15]})
    drops = views.score_drops(latest, earlier)
    assert drops["opportunity_id"].tolist() == ["o1", "o3"]
    assert drops["change"].tolist() == pytest.approx([-0.4, -0.05])


# --------------------------------------------------------------------------- at-risk table


def _factors(*pairs: tuple[str, float, float]) -> str:
    return json.dumps([{"feature": f, "value": v, "contribution": c} for f, v, c in pairs])


def test_at_risk_table_sorts_by_revenue_at_risk_with_trend_mrr_owner_and_last_action() -> None:
    latest = pd.DataFrame(
        {
            "account_id": ["a1", "a2", "a3"],
            "as_of": "2025-12-01T00:00:00",
            "churn_probability": [0.3, 0.6, 0.1],
            "risk_band": ["medium", "high", "low"],
            "revenue_at_risk": [900.0, 300.0, 50.0],
            "top_factors": [
                _factors(("acct_tickets_open_30d", 4, 0.5), ("acct_nps_latest", 9, -0.2)),
                _factors(("acct_usage_events_trend_90d", -0.42, 0.3)),
                "[]",
            ],
        }
    )
    previous = pd.DataFrame(
        {
            "account_id": ["a1", "a1", "a2"],
            "churn_probability": [0.9, 0.2, 0.7],
            "as_of": ["2025-10-01T00:00:00", "2025-11-01T00:00:00", "2025-11-01T00:00:00"],
            "scored_at": ["s1", "s2", "s2"],
        }
    )
    tables = {
        "accounts": pd.DataFrame(
            {
                "account_id": ["a1", "a2", "a3"],
                "owner_id": ["r1", "r2", "r1"],
                "region": ["emea", "amer", "emea"],
            }
        ),
        "subscriptions": pd.DataFrame(
            {
                "account_id": ["a1", "a1", "a2", "a3"],
                "start_date": pd.to_datetime(["2025-01-01", "2025-06-01", "2025-01-01", "2024-01-01"]),
                "end_date": pd.to_datetime([None, None, "2025-11-01", None]),
                "mrr": [100.0, 50.0, 80.0, 10.0],
            }
        ),
    }
    actions = pd.DataFrame(
        {"account_id": ["a2", "a2"], "action": ["saved", "contacted"], "at": ["2026-01-02", "2026-01-01"]}
    )
    table = views.at_risk_table(latest, previous, tables, actions)
    assert table["account_id"].tolist() == ["a1", "a2", "a3"]
    assert table["change_since_previous"].iloc[0] == pytest.approx(0.1)  # against the latest earlier score
    assert table["change_since_previous"].iloc[1] == pytest.approx(-0.1)
    assert np.isnan(table["change_since_previous"].iloc[2])
    assert table["mrr"].iloc[0] == 150.0 and np.isnan(table["mrr"].iloc[1])  # a2's subscription ended
    assert table["owner_id"].tolist() == ["r1", "r2", "r1"]
    assert table["last_action"].iloc[1] == "saved"  # the newest of a2's two actions
    assert table["last_action"].iloc[[0, 2]].isna().all()
    drivers = table["drivers"].iloc[0]
    assert drivers[0]["text"] == "tickets open (30 days) is 4: raises risk"
    assert drivers[1]["text"] == "nps latest is 9: lowers risk"
    high = views.filter_rows(table, risk_band="high", owner_id="", region=None)
    assert high["account_id"].tolist() == ["a2"]
    assert views.filter_rows(table, owner_id="r1", region="emea")["account_id"].tolist() == ["a1", "a3"]


def test_plain_drivers_keep_display_names_and_say_missing() -> None:
    factors = [
        {"feature": "Days since last meeting", "value": None, "contribution": -0.3},
        {"feature": "opp_stage", "value": "proposal", "contribution": 0.2},
    ]
    texts = [d["text"] for d in views.plain_drivers(factors, "helps the deal")]
    assert texts == [
        "Days since last meeting is missing: hurts the deal",
        "stage is proposal: helps the deal",
    ]
    assert views.plain_drivers(None, "raises risk") == []


def test_later_churned_uses_the_contract_label_at_the_score_date() -> None:
    tables = {
        "subscriptions": pd.DataFrame(
            {
                "subscription_id": ["s1", "s2", "s3"],
                "account_id": ["gone", "stays", "recent"],
                "start_date": pd.to_datetime(["2024-01-01", "2024-01-01", "2024-01-01"]),
                "end_date": pd.to_datetime(["2024-08-01", None, None]),
                "mrr": [1.0, 1.0, 1.0],
            }
        ),
        "usage": pd.DataFrame({"account_id": ["stays"], "date": pd.to_datetime(["2025-06-01"])}),
    }
    actions = pd.DataFrame(
        {
            "account_id": ["gone", "stays", "recent", "gone"],
            "score_as_of": ["2024-06-01T00:00:00", "2024-06-01T00:00:00", "2025-05-01T00:00:00", None],
        }
    )
    assert views.later_churned(tables, actions).tolist() == ["yes", "no", "", ""]


# --------------------------------------------------------------------------- stores


def test_action_store_validates_and_returns_newest_first(tmp_path: Path) -> None:
    store = ActionStore(f"sqlite:///{tmp_path / 'a.db'}")
    with pytest.raises(ValueError, match="action: expected one of contacted, saved, false alarm"):
        store.record("a1", "called", "")
    with pytest.raises(ValueError, match="note: at most"):
        store.record("a1", "saved", "x" * 5000)
    store.record("a1", "contacted", " first ", churn_probability=0.4, at=pd.Timestamp("2026-01-01", tz="UTC"))
    store.record("a1", "false alarm", "second", at=pd.Timestamp("2026-01-02", tz="UTC"))
    store.record("a2", "saved", "", at=pd.Timestamp("2026-01-03", tz="UTC"))
    mine = store.actions("a1")
    assert mine["action"].tolist() == ["false alarm", "contacted"]
    assert mine["note"].tolist() == ["second", "first"]
    assert len(ActionStore(store.url).actions()) == 3  # persisted, re-opened


def test_scores_reader_on_an_empty_store_reads_nothing(tmp_path: Path) -> None:
    reader = ScoresReader(f"sqlite:///{tmp_path / 'none.db'}")
    assert reader.runs("account_scores").empty and reader.account_history("a1").empty


# --------------------------------------------------------------------------- charts


def test_charts_escape_text_and_describe_numbers() -> None:
    svg = str(
        range_bars(
            [{"group": "<script>x</script>", "p10": 10.0, "p50": 20.0, "p90": 40.0, "quota": 30.0}], title="t"
        )
    )
    assert "<script>" not in svg and "&lt;script&gt;" in svg and 'role="img"' in svg
    line = str(line_chart(["2025-01-01", "2025-02-01"], [0.1, 0.25], title="history"))
    assert line.count("<circle") == 2 and "25.0%" in line


# --------------------------------------------------------------------------- app edges (in-process)


@pytest.fixture()
def app_client(tmp_path: Path):
    from starlette.testclient import TestClient

    from serving.ui.app import UiSources, create_ui_app
    from training.score import ScoresStore

    scores_url = f"sqlite:///{tmp_path / 'scores.db'}"
    ScoresStore(scores_url).append_account_scores(
        pd.DataFrame(
            {
                "account_id": ["=HYPERLINK(1)", "a2"],
                "as_of": pd.Timestamp("2025-12-01"),
                "churn_probability": [0.7, 0.1],
                "risk_band": ["high", "low"],
                "revenue_at_risk": [70.0, 1.0],
                "top_factors": "[]",
                "churn_model_version": "3",
            }
        )
    )
    sources = UiSources("tok", None, "no dataset", scores_url, f"sqlite:///{tmp_path / 'actions.db'}")
    with TestClient(create_ui_app(lambda: sources), base_url="http://testserver") as client:
        yield client


def test_sign_in_only_redirects_inside_the_page_and_sets_a_strict_cookie(app_client) -> None:
    response = app_client.post(
        "/signin", data={"token": "tok", "next": "//evil.example/x"}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/accounts"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie
    https = app_client.post(
        "/signin", data={"token": "tok"}, headers={"x-forwarded-proto": "https"}, follow_redirects=False
    )
    assert "secure" in https.headers["set-cookie"].lower()


def test_cross_site_posts_are_refused_and_csv_cells_cannot_be_formulas(app_client) -> None:
    app_client.post("/signin", data={"token": "tok"})
    refused = app_client.post(
        "/accounts/a2/actions", data={"action": "saved"}, headers={"origin": "http://evil.example"}
    )
    assert refused.status_code == 403
    ok = app_client.post("/accounts/a2/actions", data={"action": "saved", "note": "=cmd|' /C calc'!A0"})
    assert ok.status_code == 200 and "=cmd" in ok.text  # shown (escaped) on the page after the redirect
    actions = app_client.get("/actions.csv").text.splitlines()
    assert actions[1].startswith("a2,saved,'=cmd")
    accounts = app_client.get("/accounts.csv").text
    assert "'=HYPERLINK(1)" in accounts
    missing = app_client.post("/accounts/nobody/actions", data={"action": "saved"})
    assert missing.status_code == 404


def test_every_path_without_a_session_goes_to_sign_in(app_client) -> None:
    for path in ("/", "/accounts", "/accounts.csv", "/actions.csv", "/accounts/a2", "/pipeline", "/x/y"):
        response = app_client.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/signin?next=")
        assert "a2" not in response.text
    assert app_client.get("/static/ui.css").status_code == 200  # assets carry no data


# --------------------------------------------------------------------------- review fixes


def test_accounts_without_an_action_have_no_last_action_in_the_table_page_and_csv(app_client) -> None:
    """One recorded action used to give every other account a "nan" last action (NaN from ``map``)."""
    table = views.at_risk_table(
        pd.DataFrame(
            {
                "account_id": ["a1", "a2"],
                "as_of": "2025-12-01T00:00:00",
                "churn_probability": [0.3, 0.6],
                "risk_band": ["medium", "high"],
                "revenue_at_risk": [900.0, 300.0],
                "top_factors": "[]",
            }
        ),
        pd.DataFrame(),
        None,
        pd.DataFrame({"account_id": ["a2"], "action": ["saved"], "at": ["2026-01-02T00:00:00"]}),
    )
    assert table["last_action"].tolist() == [None, "saved"]
    assert table["last_action_at"].tolist() == [None, "2026-01-02T00:00:00"]
    app_client.post("/signin", data={"token": "tok"})
    assert app_client.post("/accounts/a2/actions", data={"action": "saved"}).status_code == 200
    html = app_client.get("/accounts").text
    assert html.count('class="action-tag"') == 1 and "nan" not in html.lower()
    rows = {line.split(",")[0]: line for line in app_client.get("/accounts.csv").text.splitlines()[1:]}
    assert ",saved," in rows["a2"]
    assert "nan" not in rows["'=HYPERLINK(1)"].lower()
    assert rows["'=HYPERLINK(1)"].split(",")[-3:-1] == ["", ""]  # last_action, last_action_at


@pytest.mark.parametrize(
    ("feature", "value", "shown"),
    [
        ("account days to renewal", 0.0175, "less than a day"),  # 25 minutes before a midnight renewal
        ("acct_days_to_renewal", 12.4, "12 days"),
        ("acct_days_since_touch", 1.2, "1 day"),
        ("opp_days_to_expected_close", -3.4, "3 days ago"),
        ("acct_ticket_fcr_rate", 0.4567, "45.7%"),
        ("acct_auto_renew_share", 0.0123, "1.2%"),
        ("opp_amount_change_rel", -0.25, "-25%"),
        ("acct_mrr", 12345.67, "12,346"),
        ("acct_open_renewal_amount", 1234567, "1,234,567"),
        ("acct_usage_events_trend_90d", -0.351234, "-0.351"),
        ("acct_ticket_resolution_hours_mean", 12345.6, "12,346"),
        ("opp_activities_per_week_log", 1.23456, "1.23"),
        ("opp_amount_revisions", 3, "3"),
        ("acct_nps_latest", 9, "9"),
    ],
)
def test_driver_values_read_as_days_percent_money_or_a_few_digits(
    feature: str, value: float, shown: str
) -> None:
    for raises, contribution, effect in (
        ("raises risk", 0.2, "raises risk"),
        ("raises risk", -0.1, "lowers risk"),
    ):
        (driver,) = views.plain_drivers(
            [{"feature": feature, "value": value, "contribution": contribution}], raises
        )
        assert driver["text"] == f"{views.plain_feature_name(feature)} is {shown}: {effect}"


def test_a_day_count_named_days_says_days_once() -> None:
    factors = [{"feature": "acct_subscription_tenure_days", "value": 986.4, "contribution": 0.3}]
    assert (
        views.plain_drivers(factors, "raises risk")[0]["text"]
        == "subscription tenure is 986 days: raises risk"
    )


def test_staleness_notice_and_nearly_over_periods() -> None:
    today = pd.Timestamp("2026-12-06T10:00", tz="UTC")
    assert views.staleness_notice("2026-10-31T23:34:45", today) == "data as of 2026-10-31 (36 days old)"
    assert views.staleness_notice("2026-11-29T08:00:00", today) is None  # 7 days: still recent
    assert views.staleness_notice("2026-11-28T08:00:00", today) == "data as of 2026-11-28 (8 days old)"
    assert views.staleness_notice(None, today) is None
    # Month view as of Oct 31 23:34: 25 minutes of October were left, so P10=P50=P90 are actuals.
    note = views.period_nearly_over("2026-10-31", "2026-10-31T23:34:45")
    assert note is not None and "25 minutes" in note and "actuals" in note
    assert "actuals" in (views.period_nearly_over("2026-09-30", "2026-10-31T23:34:45") or "")
    assert views.period_nearly_over("2026-12-31", "2026-10-31T23:34:45") is None  # quarter: 2 months left
    assert views.period_nearly_over("2026-11-30", "2026-11-29T00:00:00") is None  # two days left


def test_accounts_page_states_the_model_version_and_how_old_the_scores_are(app_client) -> None:
    app_client.post("/signin", data={"token": "tok"})
    html = app_client.get("/accounts").text
    assert re.search(r"churn model version\s*<strong>3</strong>", html)
    assert 'id="stale-notice"' in html and "data as of 2025-12-01 (" in html  # scores as_of, no dataset
    assert '<link rel="icon" type="image/png" href="/static_content/favicon-light-32x32.png">' in html


@pytest.mark.parametrize(("query", "shown"), [("band=HIGH", "=HYPERLINK(1)"), ("band=Low", ">a2<")])
def test_band_filter_ignores_case(app_client, query: str, shown: str) -> None:
    app_client.post("/signin", data={"token": "tok"})
    response = app_client.get(f"/accounts?{query}")
    assert response.status_code == 200 and "1 of 2 accounts" in response.text and shown in response.text
    assert "selected>" in response.text.split('id="f-band"')[1].split("</select>")[0]


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("band=bogus", "band: no such value 'bogus'; expected one of high, medium, low"),
        ("owner=nobody", "owner: no such value 'nobody'"),
        ("region=mars", "region: no such value 'mars'"),
    ],
)
def test_unknown_filter_values_are_a_422_naming_the_filter_and_choices(
    app_client, query: str, named: str
) -> None:
    app_client.post("/signin", data={"token": "tok"})
    page = app_client.get(f"/accounts?{query}")
    assert page.status_code == 422 and named in html_lib.unescape(page.text) and "0 of 2" not in page.text
    csv_answer = app_client.get(f"/accounts.csv?{query}")
    assert csv_answer.status_code == 422 and named in csv_answer.text


def test_a_dataset_load_error_is_shown_without_the_server_path_and_logged(caplog) -> None:
    from serving.ui.app import _public_load_error

    detail = "DataValidationError: /srv/secret/data/accounts.csv: column 'mrr' row 3: not a number"
    with caplog.at_level("ERROR", logger="revcast.ui"):
        shown = _public_load_error(detail)
    assert shown is not None and "/srv" not in shown and "accounts.csv" not in shown
    assert "failed validation" in shown and "server log" in shown
    assert detail in caplog.text
    assert "/tmp" not in (_public_load_error("OSError: [Errno 2] No such file: '/tmp/x'") or "")
    assert _public_load_error(None) is None
