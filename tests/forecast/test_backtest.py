"""Backtest of the forecast: document shape on small data, and the Maven monthly backtest."""

from __future__ import annotations

import json
import math

import pytest

from training.backtest import backtest_forecast, summarize

from .crm_builder import SHARED_DATA

BASELINES = {"last_period", "seasonal_naive", "stage_weighted_pipeline", "auto_ets"}


def test_summary_figures():
    points = [
        {"p10": 80, "p50": 90, "p90": 120, "actual": 100},
        {"p10": 150, "p50": 220, "p90": 260, "actual": 200},
    ]
    figures = summarize(points)
    assert figures["accuracy_mean"] == pytest.approx((0.9 + 0.9) / 2)
    assert figures["wape"] == pytest.approx(30 / 300)
    assert figures["bias"] == pytest.approx(10 / 300)
    assert figures["coverage_p10_p90"] == 1.0


def test_backtest_smoke(crm):
    document = backtest_forecast(
        crm, period="quarter", leads=(0, 28), by="team", start="2025-01-01", n_sims=200
    )
    assert document["period"] == "quarter"
    assert [block["lead"] for block in document["leads"]] == ["start", "week_4"]
    periods = document["periods"]
    # Data 2023-01 .. 2025-10: quarters from `start` with complete actuals.
    assert [p["period"] for p in periods] == ["2025-Q1", "2025-Q2", "2025-Q3"]
    for record in periods:
        assert (
            record["as_of"]
            == record["period"][:4] + "-" + f"{(int(record['period'][-1]) - 1) * 3 + 1:02d}-01"
        )
        assert record["p10"] <= record["p50"] <= record["p90"]
        assert record["actual"] > 0
        assert record["accuracy"] == pytest.approx(
            1 - abs(record["p50"] - record["actual"]) / record["actual"]
        )
    assert set(document["baselines"]) == BASELINES
    for figures in document["baselines"].values():
        assert math.isfinite(figures["wape"]) and figures["coverage_p10_p90"] is None
    assert 0 <= document["coverage_p10_p90"] <= 1
    assert document["leads"][1]["wape_by_group"] >= document["leads"][1]["wape"] * 0.5
    assert set(document["verdict"]["beats"]) == BASELINES
    json.dumps(document)  # JSON-ready except numpy scalars handled by the CLI writer


@pytest.mark.shared_data
def test_maven_monthly_backtest_reports_baselines():
    source = SHARED_DATA / "maven_crm"
    if not (source / "sales_pipeline.csv").exists():
        pytest.skip(f"reference data not found at {source} (see ../shared/data/README.md)")
    from features.importers.maven import import_maven

    tables, _report = import_maven(source)
    document = backtest_forecast(tables, period="month", n_sims=200, min_history_days=240)
    assert len(document["periods"]) >= 6
    assert set(document["baselines"]) == BASELINES
    ours = document["wape"]
    # The targets of issue 6 on real data: better than seasonal naive and the stage-weighted pipeline.
    assert ours < document["baselines"]["seasonal_naive"]["wape"]
    assert ours < document["baselines"]["stage_weighted_pipeline"]["wape"]
