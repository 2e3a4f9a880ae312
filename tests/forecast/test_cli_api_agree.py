"""`revcast forecast` and GET /v1/forecast agree on the same data, as_of and basis (historical rates).

A black-box review found the CLI and the API forecasting the same quarter differently (the CLI's
4-period run learned from older analog dates than the API's 1-period run), and the CLI taking the
data's end from the deal tables only while `revcast score` and the API take any table's latest
timestamp.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from training.cli import app

# Later than every deal timestamp (the builder's deals end 2025-10-15 00:00): the data's end.
LATE_ACCOUNT = pd.Timestamp("2025-10-15 06:30:00")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, crm: dict[str, pd.DataFrame]) -> Path:
    """The small CRM on disk, with one account created after the last deal event."""
    from features.data import write_tables

    tables = {name: frame.copy() for name, frame in crm.items()}
    tables["accounts"].loc[tables["accounts"].index[-1], "created_at"] = LATE_ACCOUNT
    path = tmp_path_factory.mktemp("agree") / "crm"
    write_tables(tables, path)
    return path


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Historical rates on the CLI (the API's basis) and no tracking server."""
    from training import cmd_forecast

    monkeypatch.setattr(
        cmd_forecast, "champion_win_probabilities", lambda *_: (None, "historical as-of win rates")
    )
    monkeypatch.setattr(cmd_forecast, "log_to_mlflow", lambda *_: "run")


def _cli(data: Path, out: Path, as_of: str | None, by: str | None = None) -> dict[str, Any]:
    args = ["forecast", "--data", str(data), "--metrics-out", str(out)]
    args += ["--as-of", as_of] if as_of else []
    args += ["--by", by] if by else []
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def _api(data: Path, as_of: str | None, by: str | None = None) -> dict[str, Any]:
    from features.data import load_tables
    from serving.forecast import forecast_data_range
    from serving.requests import parse_as_of
    from serving.service import _forecast

    tables, _ = load_tables(data)  # as the service loads REVCAST_DATA_DIR
    when = parse_as_of(as_of) if as_of else None
    return _forecast(tables, when, "quarter", by, forecast_data_range(tables))


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize(
    ("as_of", "by"),
    [
        (None, None),  # the data's end: the latest timestamp of any table
        ("2025-10-15T03:00:00", None),  # after the last deal event, before the data's end
        ("2025-10-15T00:00:00", "team"),  # the last deal event
        ("2025-05-01", None),  # a past date: the export's current state must not count
    ],
)
def test_cli_and_api_give_the_same_current_period(
    data: Path, tmp_path: Path, as_of: str | None, by: str | None
) -> None:
    cli = _cli(data, tmp_path / "forecast.json", as_of, by)
    api = _api(data, as_of, by)
    assert cli["as_of"] == api["as_of"]
    current = api["totals"][0]["period"]
    assert len(api["totals"]) == 1 and cli["totals"][0] == api["totals"][0]
    assert [g for g in cli["groups"] if g["period"] == current] == api["groups"]
    # The CLI still shows the upcoming periods, and says where they come from.
    assert len(cli["totals"]) > 1
    assert any("as GET /v1/forecast does" in note for note in cli["notes"])


def test_cli_data_end_is_the_latest_timestamp_of_any_table(data: Path) -> None:
    result = CliRunner().invoke(app, ["forecast", "--data", str(data), "--as-of", "2025-10-15T07:00:00"])
    assert result.exit_code == 2, result.output
    assert f"last timestamp {LATE_ACCOUNT.isoformat()}" in result.output


def test_a_past_forecast_ignores_the_exports_current_state(crm: dict[str, pd.DataFrame]) -> None:
    """The API passes its as_of as the current-state date: before the export it must not count."""
    from serving.forecast import forecast_data_range
    from serving.service import _forecast

    changed = {name: frame.copy() for name, frame in crm.items()}
    opps = changed["opportunities"]
    opps["amount"] = opps["amount"] * 10  # the export's state, reached after 2025-05-01
    as_of = pd.Timestamp("2025-05-01")
    base = _forecast(crm, as_of, "quarter", None, forecast_data_range(crm))
    moved = _forecast(changed, as_of, "quarter", None, forecast_data_range(changed))
    assert moved["totals"] == base["totals"]
    at_export = _forecast(changed, None, "quarter", None, forecast_data_range(changed))
    assert at_export["totals"] != _forecast(crm, None, "quarter", None, forecast_data_range(crm))["totals"]
