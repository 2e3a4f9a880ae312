"""`revcast forecast` inputs found by a black-box CLI review: --as-of outside the data, skipped rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from training.cli import app


@pytest.fixture
def data(tmp_path: Path, crm: dict[str, pd.DataFrame]) -> Path:
    from features.data import write_tables

    write_tables(crm, tmp_path / "crm")
    return tmp_path / "crm"


@pytest.mark.parametrize(
    ("as_of", "words"),
    [
        ("2099-01-01", ["--as-of", "after the data's last timestamp"]),
        ("1999-01-01", ["--as-of", "before the data's first date"]),
        ("2026-13-01", ["--as-of", "month must be in 1..12"]),
    ],
)
def test_forecast_refuses_an_as_of_outside_the_data(data: Path, as_of: str, words: list[str]) -> None:
    result = CliRunner().invoke(app, ["forecast", "--data", str(data), "--as-of", as_of])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(word in errors[0] for word in words), result.output
    assert "P50" not in result.output


def test_forecast_notes_rows_that_validation_skipped(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    deals = pd.read_csv(data / "opportunities.csv", dtype=str, keep_default_na=False)
    deals.loc[deals.index[-1], "created_at"] = "31/02/2026"
    deals.to_csv(data / "opportunities.csv", index=False)
    result = CliRunner().invoke(app, ["forecast", "--data", str(data), "--as-of", "2025-05-01"])
    assert result.exit_code == 0, result.output
    assert "loading" in result.output and "forecasting won revenue" in result.output
    notes = [line for line in result.output.splitlines() if "validation skipped" in line]
    assert len(notes) == 1 and "opportunities" in notes[0], result.output
