"""`revcast forecast` end to end: files in, table printed, JSON written, run tracked in MLflow."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from training.cli import app

from .crm_builder import SHARED_DATA


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One MLflow store for the module (creating its tables is the slow part)."""
    home = tmp_path_factory.mktemp("tracking")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(home)
        yield uri


def _runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("revcast-forecast")
    assert experiment is not None
    return client.search_runs([experiment.experiment_id])


def test_cli_forecast_by_team(tmp_path, crm, tracking):
    from features.data import write_tables

    data = tmp_path / "crm"
    write_tables(crm, data)
    out = tmp_path / "forecast.json"
    result = CliRunner().invoke(
        app,
        ["forecast", "--data", str(data), "--as-of", "2025-05-01", "--by", "team", "--metrics-out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "team-0" in result.output and "P50" in result.output
    assert "historical as-of win rates" in result.output  # no registry: the fallback is announced
    document = json.loads(out.read_text())
    assert document["by"] == "team"
    assert {row["group"] for row in document["groups"]} == {"team-0", "team-1", "team-2"}
    assert document["totals"][0]["period"] == "2025-Q2"
    assert document["run_id"]
    runs = _runs(tracking)
    assert any(run.info.run_id == document["run_id"] for run in runs)


def test_cli_rejects_bad_period(tmp_path, crm):
    from features.data import write_tables

    write_tables(crm, tmp_path / "crm")
    result = CliRunner().invoke(app, ["forecast", "--data", str(tmp_path / "crm"), "--period", "week"])
    assert result.exit_code != 0
    assert "period" in result.output


def test_cli_rejects_non_positive_min_history(tmp_path, crm):
    from features.data import write_tables

    write_tables(crm, tmp_path / "crm")
    result = CliRunner().invoke(
        app, ["forecast", "--data", str(tmp_path / "crm"), "--backtest", "--min-history-days", "0"]
    )
    assert result.exit_code == 2
    assert "--min-history-days" in result.output


@pytest.mark.shared_data
def test_cli_backtest_maven_writes_contract_document(tmp_path, tracking):
    source = SHARED_DATA / "maven_crm"
    if not (source / "sales_pipeline.csv").exists():
        pytest.skip(f"reference data not found at {source} (see ../shared/data/README.md)")
    runner = CliRunner()
    imported = runner.invoke(app, ["data", "import", "maven", str(source), "--out", str(tmp_path / "maven")])
    assert imported.exit_code == 0, imported.output
    out = tmp_path / "backtest.json"
    result = runner.invoke(
        app,
        [
            "forecast",
            "--data",
            str(tmp_path / "maven"),
            "--period",
            "month",
            "--backtest",
            "--metrics-out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    for key in (
        "period",
        "lead",
        "periods",
        "accuracy_mean",
        "wape",
        "bias",
        "coverage_p10_p90",
        "baselines",
    ):
        assert key in document
    assert document["period"] == "month"
    assert {"period", "as_of", "p10", "p50", "p90", "actual", "accuracy"} <= set(document["periods"][0])
    assert set(document["baselines"]) == {
        "last_period",
        "seasonal_naive",
        "stage_weighted_pipeline",
        "auto_ets",
    }
    assert document["run_id"]
