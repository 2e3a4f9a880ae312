"""Loading and validation: every bad-input rule, with the message content users rely on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.data import DataValidationError, dataset_fingerprint, load_tables, validate_tables, write_tables
from tests.data.conftest import raw_dataset, write_raw


def test_valid_dataset_gets_canonical_dtypes(raw: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    raw["opportunities"]["opportunity_id"] = [f"{i:03d}" for i in range(len(raw["opportunities"]))]
    raw["opportunity_history"]["opportunity_id"] = ["000", "000", "001"]
    tables, report = load_tables(write_raw(raw, tmp_path), require=("accounts", "opportunities"))
    assert report.ok and not report.skipped
    opportunities = tables["opportunities"]
    assert opportunities["opportunity_id"].dtype == object
    assert opportunities["opportunity_id"].iloc[0] == "000"  # ids stay strings, leading zeros kept
    assert opportunities["created_at"].dtype == "datetime64[ns]"
    assert opportunities["amount"].dtype == "float64"
    assert opportunities["expected_close_date"].dtype == "datetime64[ns]"  # absent optional column added
    assert opportunities["type"].iloc[:4].tolist() == ["new", "renewal", "expansion", None]
    assert opportunities["stage"].iloc[0] == "proposal"
    assert tables["accounts"]["industry"].tolist() == ["retail", "software", "retail"]
    assert np.isnan(tables["accounts"]["employees"].iloc[2])
    assert report.rows_in == report.rows_out == {"accounts": 3, "opportunities": 40, "opportunity_history": 3}


def test_missing_required_table_names_table_and_files(raw: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    del raw["opportunities"], raw["opportunity_history"]
    directory = write_raw(raw, tmp_path)
    with pytest.raises(DataValidationError) as excinfo:
        load_tables(directory, require=("accounts", "opportunities"))
    message = str(excinfo.value)
    assert "required table 'opportunities' not found" in message
    assert "opportunities.csv or opportunities.parquet" in message
    (directory / "accounts.csv").unlink()
    with pytest.raises(DataValidationError, match="required table 'accounts' not found"):
        load_tables(directory)


def test_missing_required_column(raw: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    raw["opportunities"] = raw["opportunities"].drop(columns=["created_at"])
    with pytest.raises(DataValidationError) as excinfo:
        load_tables(write_raw(raw, tmp_path))
    message = str(excinfo.value)
    assert message.startswith("opportunities.csv: missing required column 'created_at'")
    assert "found: opportunity_id, account_id, type" in message
    assert excinfo.value.report is not None and excinfo.value.report.errors[0].rule == "missing_column"


def test_unparsable_date_is_skipped_with_line_numbers(raw: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    raw["opportunities"].loc[[1, 15], "created_at"] = ["31/02/2026", "2026-02-31"]
    tables, report = load_tables(write_raw(raw, tmp_path), max_bad_fraction=0.1)
    assert len(tables["opportunities"]) == 38
    assert {"o-1", "o-15"}.isdisjoint(tables["opportunities"]["opportunity_id"])
    issue = next(i for i in report.skipped if i.column == "created_at")
    assert (issue.rule, issue.count, issue.rows, issue.action) == ("unparsable", 2, [3, 17], "dropped")
    assert issue.message.startswith(
        "opportunities.csv: column 'created_at', rows 3, 17: expected an ISO-8601 date"
    )
    assert "got '31/02/2026'" in issue.message
    # The history row of the dropped o-1 is an orphan now, and the report says why.
    orphan = next(i for i in report.skipped if i.table == "opportunity_history")
    assert orphan.rule == "orphan" and orphan.rows == [4]
    assert "themselves skipped" in orphan.message
    assert report.rows_out["opportunity_history"] == 2


def test_too_many_bad_rows_or_strict_is_fatal(raw: dict[str, pd.DataFrame]) -> None:
    raw["opportunities"].loc[[1, 15, 16], "created_at"] = "yesterday"
    with pytest.raises(DataValidationError) as excinfo:
        validate_tables(raw, max_bad_fraction=0.05)
    message = str(excinfo.value)
    assert "3 of 40 rows (7.5%) have problems, more than max_bad_fraction=0.05" in message
    assert "column 'created_at', rows 2, 16, 17" in message  # in-memory: 1-based row positions
    tables, _ = validate_tables(raw, max_bad_fraction=0.1)
    assert len(tables["opportunities"]) == 37
    with pytest.raises(DataValidationError, match=r"strict mode"):
        validate_tables(raw, max_bad_fraction=1.0, strict=True)


def test_duplicate_key_keeps_first(raw: dict[str, pd.DataFrame]) -> None:
    raw["accounts"].loc[len(raw["accounts"])] = ["a-1", "2030-01-01", "bogus", "5"]
    tables, report = validate_tables(raw, source_names={"accounts": "accounts.csv"}, max_bad_fraction=0.5)
    accounts = tables["accounts"]
    assert accounts["account_id"].tolist() == ["a-1", "a-2", "a-3"]
    assert accounts.loc[0, "created_at"] == pd.Timestamp("2024-01-01")
    issue = next(i for i in report.skipped if i.rule == "duplicate_key")
    assert issue.rows == [4] and issue.values == ["a-1"]
    assert "accounts.csv: column 'account_id', row 4: expected a unique key (account_id)" in issue.message


def test_orphan_opportunity_dropped_and_reported(raw: dict[str, pd.DataFrame]) -> None:
    raw["opportunities"].loc[0, "account_id"] = "a-404"
    tables, report = validate_tables(raw, max_bad_fraction=0.1)
    assert "o-0" not in set(tables["opportunities"]["opportunity_id"])
    issue = next(i for i in report.skipped if i.table == "opportunities")
    assert issue.rule == "orphan" and issue.values == ["a-404"] and issue.rows == [1]
    assert "expected a value of accounts.account_id, got 'a-404'" in issue.message
    # Cascade: o-0's two history rows are orphans in turn.
    cascade = next(i for i in report.skipped if i.table == "opportunity_history")
    assert cascade.count == 2
    assert tables["opportunity_history"]["opportunity_id"].tolist() == ["o-1"]


def test_enum_values(raw: dict[str, pd.DataFrame]) -> None:
    raw["opportunities"].loc[2, "type"] = "upsell"
    raw["surveys"] = pd.DataFrame(
        {
            "account_id": ["a-1"] * 30,
            "responded_at": ["2025-03-01"] * 30,
            "kind": ["NPS"] * 28 + ["csat", "stars"],
            "score": ["9"] * 30,
        }
    )
    tables, report = validate_tables(raw)
    # Optional enum: value set to missing, row kept.
    assert tables["opportunities"].loc[2, "type"] is None
    assert len(tables["opportunities"]) == 40
    optional = next(i for i in report.skipped if i.column == "type")
    assert (
        optional.action == "nulled"
        and "expected one of new, renewal, expansion (or empty), got 'upsell'" in (optional.message)
    )
    # Required enum: row skipped; case is normalised.
    assert len(tables["surveys"]) == 29 and set(tables["surveys"]["kind"]) == {"nps", "csat"}
    required = next(i for i in report.skipped if i.column == "kind")
    assert (required.rule, required.action, required.rows) == ("unknown_value", "dropped", [30])
    assert "expected one of nps, csat, ces, got 'stars'" in required.message


def test_optional_bad_number_and_bool_become_missing(raw: dict[str, pd.DataFrame]) -> None:
    raw["opportunities"].loc[5, "amount"] = "12k"
    raw["tickets"] = pd.DataFrame(
        {
            "ticket_id": [f"t-{i}" for i in range(30)],
            "account_id": ["a-2"] * 30,
            "opened_at": ["2025-02-01T09:30:00"] * 30,
            "first_contact_resolved": ["yes", "no", "TRUE", "0", "maybe"] * 6,
        }
    )
    tables, report = validate_tables(raw, max_bad_fraction=0.25)
    assert np.isnan(tables["opportunities"].loc[5, "amount"]) and len(tables["opportunities"]) == 40
    resolved = tables["tickets"]["first_contact_resolved"]
    assert resolved.dtype == "float64"
    assert resolved.iloc[:4].tolist() == [1.0, 0.0, 1.0, 0.0] and np.isnan(resolved.iloc[4])
    issue = next(i for i in report.skipped if i.column == "first_contact_resolved")
    assert issue.count == 6 and issue.action == "nulled" and "got 'maybe'" in issue.message


def test_unknown_extra_columns_kept(raw: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    raw["accounts"]["crm_code"] = ["007", "", "x9"]
    raw["accounts"]["zip_code"] = ["01234", "10115", ""]
    raw["accounts"]["health"] = ["1.5", "", "3"]
    raw["accounts"]["partner_id"] = ["12", "13", "14"]
    raw["usage"] = pd.DataFrame(
        {
            "account_id": ["a-1", "a-1", "a-2"],
            "date": ["2025-01-01", "2025-01-02", "2025-01-01"],
            "active_users": ["3", "4", "5"],
            "reports_run": ["10", "", "2.5"],
            "plan_name": ["gold", "gold", "silver"],
        }
    )
    (tmp_path / "notes.txt").write_text("not a table")
    tables, report = load_tables(write_raw(raw, tmp_path))
    accounts = tables["accounts"]
    assert accounts["crm_code"].tolist() == ["007", None, "x9"]
    assert accounts["zip_code"].tolist() == ["01234", "10115", None]  # leading zeros: kept as text
    assert accounts["partner_id"].tolist() == ["12", "13", "14"]  # ids stay strings
    assert accounts["health"].dtype == "float64" and accounts["health"].iloc[2] == 3.0
    usage = tables["usage"]
    assert usage["reports_run"].dtype == "float64" and usage["reports_run"].iloc[2] == 2.5
    assert usage["plan_name"].tolist() == ["gold", "gold", "silver"]
    not_metric = next(i for i in report.skipped if i.column == "plan_name")
    assert not_metric.action == "kept" and "not used as a metric" in not_metric.message
    assert report.unknown_files == ["notes.txt"]
    assert len(usage) == 3  # a non-numeric extra column never drops rows


def test_timezones_become_naive_utc(raw: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    raw["accounts"]["created_at"] = [
        "2024-01-05T10:00:00+02:00",
        "2024-01-05 10:00",
        "2024-01-05T23:30:00-05:00",
    ]
    tables, _ = validate_tables(raw)
    assert tables["accounts"]["created_at"].tolist() == [
        pd.Timestamp("2024-01-05 08:00"),
        pd.Timestamp("2024-01-05 10:00"),  # naive means UTC, whatever its neighbours say
        pd.Timestamp("2024-01-06 04:30"),
    ]
    # Parquet with a timezone-aware column.
    aware = raw_dataset()
    aware["accounts"]["created_at"] = pd.to_datetime(["2024-01-05 10:00"] * 3).tz_localize("Europe/Berlin")
    for name, table in aware.items():
        table.to_parquet(tmp_path / f"{name}.parquet", index=False)
    tables, _ = load_tables(tmp_path)
    assert tables["accounts"]["created_at"].dtype == "datetime64[ns]"
    assert tables["accounts"]["created_at"].iloc[0] == pd.Timestamp("2024-01-05 09:00")


def test_csv_and_parquet_load_the_same(raw: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    raw["tickets"] = pd.DataFrame(
        {
            "ticket_id": ["t-1", "t-2"],
            "account_id": ["a-1", "a-2"],
            "opened_at": ["2025-02-01T09:30:00", "2025-02-01T09:30:00.250+01:00"],
            "resolved_at": ["", ""],
        }
    )
    canonical, _ = validate_tables(raw)
    assert canonical["tickets"]["opened_at"].iloc[1] == pd.Timestamp("2025-02-01 08:30:00.250")
    write_tables(canonical, tmp_path / "csv", fmt="csv")
    write_tables(canonical, tmp_path / "pq", fmt="parquet")
    from_csv, _ = load_tables(tmp_path / "csv")
    from_parquet, report = load_tables(tmp_path / "pq")
    assert report.sources["accounts"] == "accounts.parquet"
    for name, table in canonical.items():
        pd.testing.assert_frame_equal(from_csv[name], table)
        pd.testing.assert_frame_equal(from_parquet[name], table)
    assert (
        dataset_fingerprint(from_csv) == dataset_fingerprint(from_parquet) == dataset_fingerprint(canonical)
    )
    # Both formats of one table is ambiguous.
    canonical["accounts"].to_csv(tmp_path / "pq" / "accounts.csv", index=False)
    with pytest.raises(DataValidationError, match="both accounts.csv and accounts.parquet"):
        load_tables(tmp_path / "pq")


def test_unreadable_csv_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "accounts.csv").write_text('account_id,created_at\na-1,2024-01-01\n"a-2,2024-01-02\n')
    with pytest.raises(DataValidationError, match=r"^accounts.csv: cannot be read as csv"):
        load_tables(tmp_path)


def test_fingerprint_is_order_free_but_content_sensitive(raw: dict[str, pd.DataFrame]) -> None:
    tables, _ = validate_tables(raw)
    shuffled = {
        name: table.sample(frac=1.0, random_state=3)[table.columns[::-1]] for name, table in tables.items()
    }
    assert dataset_fingerprint(shuffled) == dataset_fingerprint(tables)
    changed = {name: table.copy() for name, table in tables.items()}
    changed["opportunities"].loc[3, "amount"] += 1
    assert dataset_fingerprint(changed) != dataset_fingerprint(tables)


def test_summary_and_dict_report_counts(raw: dict[str, pd.DataFrame]) -> None:
    raw["opportunities"].loc[0, "account_id"] = "a-404"
    _, report = validate_tables(raw, max_bad_fraction=1.0)
    lines = "\n".join(report.summary_lines())
    assert "opportunities" in lines and "40" in lines and "39" in lines
    as_dict = report.to_dict()
    assert as_dict["rows_out"]["opportunities"] == 39
    assert as_dict["skipped"][0]["rule"] == "orphan"


def test_header_only_table_and_unchecked_reference(tmp_path: Path) -> None:
    # A header-only optional table is a valid, empty table; a header-only required one is fatal
    # (tests/data/test_validate_messages.py).
    (tmp_path / "accounts.csv").write_text("account_id,created_at\na-1,2024-01-01\n")
    (tmp_path / "subscriptions.csv").write_text("subscription_id,account_id,start_date,mrr\n")
    (tmp_path / "opportunity_history.csv").write_text("opportunity_id,changed_at\no-1,2025-01-01\n")
    tables, report = load_tables(tmp_path)
    assert (
        len(tables["subscriptions"]) == 0 and tables["subscriptions"]["start_date"].dtype == "datetime64[ns]"
    )
    assert tables["subscriptions"]["mrr"].dtype == "float64"
    assert any("not checked against opportunities" in note for note in report.notes)


def test_parquet_rows_are_1_based_positions(raw: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    raw["opportunities"].loc[2, "created_at"] = "2025-13-01"
    for name, table in raw.items():
        table.to_parquet(tmp_path / f"{name}.parquet", index=False)
    _, report = load_tables(tmp_path)
    issue = next(i for i in report.skipped if i.column == "created_at")
    assert issue.rows == [3]
    assert issue.message.startswith(
        "opportunities.parquet: column 'created_at', row 3: expected an ISO-8601 date"
    )
