"""`revcast data validate` and `revcast data import` through the real CLI app."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from tests.data.conftest import raw_dataset, write_mini_maven, write_raw
from training.cli import app

runner = CliRunner()


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_validate_clean_dataset(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "validate", str(write_raw(raw_dataset(), tmp_path))])
    assert result.exit_code == 0, result.output
    assert "opportunities" in result.stdout and "40" in result.stdout
    assert "valid:" in result.stdout


def test_validate_with_skipped_rows_warns_and_succeeds(tmp_path: Path) -> None:
    raw = raw_dataset()
    raw["opportunities"].loc[0, "account_id"] = "a-404"
    result = runner.invoke(app, ["data", "validate", str(write_raw(raw, tmp_path))])
    assert result.exit_code == 0, result.output
    assert "valid with warnings: 3 rows skipped" in result.stdout  # 1 opportunity + 2 cascaded history rows
    assert "got 'a-404'" in result.stdout


def test_validate_fatal_is_exit_2_with_one_line(tmp_path: Path) -> None:
    raw = raw_dataset()
    raw["opportunities"] = raw["opportunities"].drop(columns=["created_at"])
    result = runner.invoke(app, ["data", "validate", str(write_raw(raw, tmp_path))])
    assert result.exit_code == 2
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and "opportunities.csv: missing required column 'created_at'" in errors[0]
    result = runner.invoke(app, ["data", "validate", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "not a directory" in result.stderr


def test_import_maven_writes_loadable_tables(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["data", "import", "maven", str(write_mini_maven(tmp_path / "src")), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "5 in export = 5 imported + 0 skipped" in result.stdout
    assert pd.read_csv(out / "opportunities.csv").shape[0] == 5
    check = runner.invoke(app, ["data", "validate", str(out)])
    assert check.exit_code == 0 and "valid:" in check.stdout


def test_import_bad_kind_or_dir_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "import", "hubspot", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert _error_lines(result.stderr) == ["error: unknown source kind 'hubspot': expected one of maven"]
    result = runner.invoke(
        app, ["data", "import", "maven", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and len(_error_lines(result.stderr)) == 1
