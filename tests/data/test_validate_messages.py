"""Validation messages for inputs a black-box CLI review found confusing or silently accepted.

Negative money and counts, header-only and 0-byte files, column names that differ only in case,
and CSV files separated by something other than commas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.data import DataValidationError, load_tables, validate_tables
from tests.data.conftest import write_raw
from training.cli import app

# --------------------------------------------------------------------------- negative money and counts


def test_negative_optional_amount_is_set_missing_and_reported(
    raw: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    raw["opportunities"].loc[[3, 9], "amount"] = ["-500", "-0.5"]
    raw["opportunities"].loc[4, "amount"] = "0"  # zero is a valid amount
    tables, report = load_tables(write_raw(raw, tmp_path))
    opportunities = tables["opportunities"]
    assert len(opportunities) == 40  # the deals stay; only the impossible amount goes
    assert np.isnan(opportunities.loc[3, "amount"]) and np.isnan(opportunities.loc[9, "amount"])
    assert opportunities.loc[4, "amount"] == 0.0
    issue = next(i for i in report.skipped if i.column == "amount")
    assert (issue.rule, issue.count, issue.rows, issue.action) == ("out_of_range", 2, [5, 11], "nulled")
    assert issue.values == ["-500", "-0.5"]
    assert issue.message == (
        "opportunities.csv: column 'amount', rows 5, 11: expected a number >= 0, got '-500' (values set to missing)"
    )


def test_negative_required_mrr_skips_the_row(raw: dict[str, pd.DataFrame]) -> None:
    raw["subscriptions"] = pd.DataFrame(
        {
            "subscription_id": [f"s-{i}" for i in range(30)],
            "account_id": ["a-1"] * 30,
            "start_date": ["2025-01-01"] * 30,
            "mrr": ["100"] * 29 + ["-100"],
        }
    )
    tables, report = validate_tables(raw, source_names={"subscriptions": "subscriptions.csv"})
    assert len(tables["subscriptions"]) == 29 and "s-29" not in set(
        tables["subscriptions"]["subscription_id"]
    )
    issue = next(i for i in report.skipped if i.column == "mrr")
    assert (issue.rule, issue.rows, issue.action) == ("out_of_range", [30], "dropped")
    assert "subscriptions.csv: column 'mrr', row 30: expected a number >= 0, got '-100' (1 row skipped)" in (
        issue.message
    )


@pytest.mark.parametrize(
    ("table", "column"),
    [("accounts", "employees"), ("accounts", "annual_revenue"), ("opportunities", "won_amount")],
)
def test_negative_counts_and_money_in_other_columns(
    raw: dict[str, pd.DataFrame], table: str, column: str
) -> None:
    raw[table][column] = "5"
    raw[table].loc[1, column] = "-3"
    tables, report = validate_tables(raw, max_bad_fraction=1.0)  # 1 of the 3 accounts
    assert np.isnan(tables[table].loc[1, column]) and tables[table].loc[0, column] == 5.0
    issue = next(i for i in report.skipped if i.column == column)
    assert issue.rule == "out_of_range" and issue.values == ["-3"]


def test_negative_duration_in_parquet_numbers(raw: dict[str, pd.DataFrame]) -> None:
    # Already-numeric columns (Parquet, API) go through the same bound.
    raw["activities"] = pd.DataFrame(
        {
            "activity_id": [f"x-{i}" for i in range(30)],
            "account_id": ["a-2"] * 30,
            "occurred_at": ["2025-02-01"] * 30,
            "type": ["call"] * 30,
            "duration_s": [60.0] * 29 + [-60.0],
        }
    )
    tables, report = validate_tables(raw)
    assert np.isnan(tables["activities"]["duration_s"].iloc[29]) and len(tables["activities"]) == 30
    issue = next(i for i in report.skipped if i.column == "duration_s")
    assert issue.rows == [30] and issue.action == "nulled"


# --------------------------------------------------------------------------- header-only and empty files


def test_header_only_required_accounts_is_named_first(raw: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    raw["accounts"] = raw["accounts"].iloc[:0]
    with pytest.raises(DataValidationError) as excinfo:
        load_tables(write_raw(raw, tmp_path))
    assert str(excinfo.value) == "accounts.csv: no data rows; 'accounts' is a required table"
    assert excinfo.value.report is not None and excinfo.value.report.errors[0].rule == "empty_table"


def test_header_only_required_by_the_caller(raw: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    raw["opportunities"] = raw["opportunities"].iloc[:0]
    directory = write_raw(raw, tmp_path)
    with pytest.raises(DataValidationError, match=r"^opportunities.csv: no data rows; 'opportunities' is"):
        load_tables(directory, require=("accounts", "opportunities"))


def test_header_only_optional_parent_is_named_before_its_orphans(
    raw: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    raw["opportunities"] = raw["opportunities"].iloc[:0]
    directory = write_raw(raw, tmp_path)
    with pytest.raises(DataValidationError) as excinfo:
        load_tables(directory)
    message = str(excinfo.value)
    assert message.startswith("opportunities.csv: no data rows, so opportunity_history.csv: 3 of 3 rows")
    assert "expected a value of opportunities.opportunity_id" in message
    with pytest.raises(DataValidationError, match=r"^opportunities.csv: no data rows, so .*\[strict mode\]$"):
        load_tables(directory, strict=True)


def test_zero_byte_optional_table_is_left_out_with_a_warning(
    raw: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    directory = write_raw(raw, tmp_path)
    (directory / "usage.csv").write_bytes(b"")
    (directory / "tickets.parquet").write_bytes(b"")
    tables, report = load_tables(directory)
    assert "usage" not in tables and "tickets" not in tables
    assert len(tables["opportunities"]) == 40
    messages = [i.message for i in report.skipped if i.rule == "empty_file"]
    assert messages == [
        "tickets.parquet is empty (0 bytes); the table is left out",
        "usage.csv is empty (0 bytes); the table is left out",
    ]
    assert any("usage.csv is empty (0 bytes)" in line for line in report.summary_lines())


@pytest.mark.parametrize(("content", "why"), [(b"", "0 bytes"), (b"\n\r\n", "only blank lines")])
def test_empty_required_file_is_one_line(
    raw: dict[str, pd.DataFrame], tmp_path: Path, content: bytes, why: str
) -> None:
    directory = write_raw(raw, tmp_path)
    (directory / "accounts.csv").write_bytes(content)
    with pytest.raises(DataValidationError) as excinfo:
        load_tables(directory)
    assert str(excinfo.value) == f"accounts.csv: empty file ({why}); 'accounts' is a required table"
    (directory / "accounts.csv").unlink()
    raw["accounts"].to_csv(directory / "accounts.csv", index=False)
    (directory / "opportunities.csv").write_bytes(content)
    with pytest.raises(DataValidationError, match=rf"^opportunities.csv: empty file \({why}\)"):
        load_tables(directory, require=("opportunities",))


def test_cli_validate_reports_the_empty_optional_table(raw: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    directory = write_raw(raw, tmp_path)
    (directory / "usage.csv").write_bytes(b"")
    result = CliRunner().invoke(app, ["data", "validate", str(directory)])
    assert result.exit_code == 0, result.output
    assert "usage.csv is empty (0 bytes); the table is left out" in result.stdout
    assert "valid with warnings" in result.stdout


# --------------------------------------------------------------------------- column names and separators


def test_column_names_differing_in_case_are_read_as_contract_columns(
    raw: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    expected, _ = validate_tables(raw)
    raw["accounts"].columns = [name.title() for name in raw["accounts"].columns]  # Account_Id, ...
    raw["opportunities"] = raw["opportunities"].rename(columns={"created_at": "CREATED_AT"})
    tables, report = load_tables(write_raw(raw, tmp_path))
    for name in ("accounts", "opportunities"):
        pd.testing.assert_frame_equal(tables[name], expected[name])
    assert "accounts.csv: column names matched ignoring case: Account_Id -> account_id, " in "\n".join(
        report.notes
    )
    assert "opportunities.csv: column names matched ignoring case: CREATED_AT -> created_at" in report.notes


def test_ambiguous_case_matches_are_named_not_guessed(raw: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    raw["accounts"] = raw["accounts"].rename(columns={"account_id": "Account_Id"})
    raw["accounts"]["ACCOUNT_ID"] = ["x-1", "x-2", "x-3"]
    with pytest.raises(DataValidationError) as excinfo:
        load_tables(write_raw(raw, tmp_path))
    message = str(excinfo.value)
    assert message.startswith("accounts.csv: missing required column 'account_id'")
    assert message.endswith(
        "differ only in case (ambiguous, so not renamed): account_id: Account_Id, ACCOUNT_ID"
    )


@pytest.mark.parametrize(("separator", "label"), [(";", "';'"), ("\t", "tab")])
def test_non_comma_separator_is_named(
    raw: dict[str, pd.DataFrame], tmp_path: Path, separator: str, label: str
) -> None:
    directory = write_raw(raw, tmp_path)
    # A comma inside a value: pandas alone fails with a tokenizer error about field counts.
    raw["accounts"].loc[1, "industry"] = "Retail, online"
    raw["accounts"].to_csv(directory / "accounts.csv", index=False, sep=separator)
    with pytest.raises(DataValidationError) as excinfo:
        load_tables(directory)
    message = str(excinfo.value)
    assert message.startswith(f"accounts.csv: looks {label}-separated; CSV files must be comma-separated")
    assert "account_id" in message


def test_separator_hint_for_in_memory_tables(raw: dict[str, pd.DataFrame]) -> None:
    raw["accounts"] = pd.DataFrame({"account_id;created_at": ["a-1;2024-01-01"]})
    with pytest.raises(DataValidationError) as excinfo:
        validate_tables(raw, source_names={"accounts": "accounts.csv"})
    assert str(excinfo.value).startswith(
        "accounts.csv: looks ';'-separated; CSV files must be comma-separated; missing required columns"
    )


# --------------------------------------------------------------------------- times that contradict each other


def test_a_deal_closed_before_it_was_created_is_skipped_and_reported(raw: dict[str, pd.DataFrame]) -> None:
    deals = raw["opportunities"]
    deals["closed_at"] = ""
    deals.loc[0, "created_at"] = "2025-01-01T15:30:00"
    deals.loc[0, "closed_at"] = "2025-01-01"  # a close date on the creation day: fine (days, not instants)
    deals.loc[5, "closed_at"] = "2024-12-31"  # created 2025-01-06: closed before it existed
    raw["opportunity_history"] = raw["opportunity_history"][
        raw["opportunity_history"]["opportunity_id"] != "o-5"
    ]
    tables, report = validate_tables(raw, source_names={"opportunities": "opportunities.csv"})
    kept = set(tables["opportunities"]["opportunity_id"])
    assert "o-0" in kept and "o-5" not in kept and len(kept) == 39
    issue = next(i for i in report.skipped if i.rule == "out_of_order")
    assert (issue.table, issue.column, issue.rows, issue.action) == (
        "opportunities",
        "closed_at",
        [6],
        "dropped",
    )
    assert issue.message == (
        "opportunities.csv: column 'closed_at', row 6: expected a date on or after the row's created_at, "
        "got '2024-12-31' (1 row skipped)"
    )


def test_a_ticket_resolved_before_it_was_opened_is_skipped(raw: dict[str, pd.DataFrame]) -> None:
    raw["tickets"] = pd.DataFrame(
        {
            "ticket_id": [f"t-{i}" for i in range(30)],
            "account_id": ["a-1"] * 30,
            "opened_at": ["2025-03-10"] * 30,
            "resolved_at": ["2025-03-12"] * 28 + ["", "2025-03-01"],
        }
    )
    tables, report = validate_tables(raw)
    assert len(tables["tickets"]) == 29 and "t-29" not in set(tables["tickets"]["ticket_id"])
    issue = next(i for i in report.skipped if i.rule == "out_of_order")
    assert (issue.column, issue.count, issue.values) == ("resolved_at", 1, ["2025-03-01"])
