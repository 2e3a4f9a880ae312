"""The Maven importer: quirks on a tiny export, and the real shared export end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.data import DataValidationError, load_tables, write_tables
from features.importers import run_importer
from features.importers.maven import PLACEHOLDER_ACCOUNT_ID, import_maven, slugify
from tests.data.conftest import write_mini_maven


def test_mini_export_quirks(tmp_path: Path) -> None:
    tables, report = import_maven(write_mini_maven(tmp_path))
    opportunities = tables["opportunities"].set_index("opportunity_id")
    assert report.opportunities_in == report.opportunities_imported == 5
    # GTXPro is the product list's "GTX Pro"; amount is the list price.
    assert opportunities.loc["W1", "product"] == "GTX Pro" and opportunities.loc["W1", "amount"] == 4821.0
    assert (opportunities.loc["W1", "outcome"], opportunities.loc["W1", "won_amount"]) == ("won", 4514.0)
    assert opportunities.loc["W1", "closed_at"] == pd.Timestamp("2017-03-01")
    # Lost: closed, but its close_value 0 is not a won amount.
    assert opportunities.loc["L1", "outcome"] == "lost" and np.isnan(opportunities.loc["L1", "won_amount"])
    # Open deals: no outcome, no close date.
    assert opportunities.loc["E1", "outcome"] is None and pd.isna(opportunities.loc["E1", "closed_at"])
    # No account -> placeholder; no engage_date -> export date, flagged.
    assert opportunities.loc["E1", "account_id"] == PLACEHOLDER_ACCOUNT_ID
    assert opportunities.loc["P1", "created_at"] == pd.Timestamp("2017-05-01")
    assert opportunities.loc[["P1", "P2"], "created_at_imputed"].tolist() == [1.0, 1.0]
    assert opportunities.loc["W1", "created_at_imputed"] == 0.0
    accounts = tables["accounts"].set_index("account_id")
    assert accounts.loc["acme-corporation", "industry"] == "technology"
    assert accounts.loc["acme-corporation", "annual_revenue"] == pytest.approx(1_100_040_000.0)
    assert accounts.loc["condax", "country"] == "Philippines"
    assert accounts.loc["condax", "parent_account_id"] == "acme-corporation"
    # Condax (established 2017) has a 2016 deal: the account cannot be created after it.
    assert accounts.loc["condax", "created_at"] == pd.Timestamp("2016-11-02")
    assert accounts.loc[PLACEHOLDER_ACCOUNT_ID, "is_placeholder"] == 1.0
    reps = tables["reps"].set_index("rep_id")
    assert reps.loc["moses-frase", "manager_id"] == "dustin-brinkmann"
    assert reps.loc["moses-frase", "region"] == "Central"
    history = tables["opportunity_history"]
    assert history[history["opportunity_id"] == "W1"]["stage"].tolist() == ["engaging", "won"]
    assert "P1" not in set(history["opportunity_id"])  # no dated fact, no history
    assert json.loads(json.dumps(report.to_dict()))["opportunities_imported"] == 5
    text = "\n".join(report.summary_lines())
    for expected in ("'GTXPro'", "'technolgy' corrected", "placeholder account", "created_at_imputed = 1"):
        assert expected in text


def test_bad_pipeline_rows_are_reported_not_lost(tmp_path: Path) -> None:
    extra = [
        "W1,Moses Frase,GTX Pro,Acme Corporation,Won,2016-10-21,2017-03-02,4000",  # duplicate id
        "X1,Moses Frase,GTX Pro,Acme Corporation,Negotiating,2017-01-01,,",  # unknown stage
        "X2,Moses Frase,GTX Pro,Acme Corporation,Won,2017-01-01,,",  # closed without close date
        "X3,Moses Frase,GTX Pro,Acme Corporation,Engaging,01/02/2017,,",  # bad date
        "X4,Zed New,Unknown Box,Newco,Engaging,2017-02-01,,",  # agent, product, account not in lists
    ]
    tables, report = import_maven(write_mini_maven(tmp_path, extra))
    assert report.opportunities_in == 10
    assert report.opportunities_imported == 6
    reasons = {item.reason: item.sample_ids for item in report.skipped}
    assert reasons["duplicate opportunity_id (first occurrence kept)"] == ["W1"]
    assert reasons["Won/Lost deal without close_date"] == ["X2"]
    assert reasons["engage_date is not a YYYY-MM-DD date"] == ["X3"]
    assert any(ids == ["X1"] and "deal_stage" in reason for reason, ids in reasons.items())
    x4 = tables["opportunities"].set_index("opportunity_id").loc["X4"]
    assert x4["account_id"] == "newco" and x4["owner_id"] == "zed-new" and np.isnan(x4["amount"])
    assert "zed-new" in set(tables["reps"]["rep_id"]) and "newco" in set(tables["accounts"]["account_id"])
    assert "10 in export = 6 imported + 4 skipped" in "\n".join(report.summary_lines())


def test_missing_file_and_column(tmp_path: Path) -> None:
    export = write_mini_maven(tmp_path)
    (export / "products.csv").write_text("product,series\nGTX Pro,GTX\n")
    with pytest.raises(DataValidationError, match=r"products.csv: missing column 'sales_price'"):
        import_maven(export)
    (export / "products.csv").unlink()
    with pytest.raises(FileNotFoundError, match="products.csv not found"):
        import_maven(export)
    with pytest.raises(ValueError, match="unknown source kind 'salesforce'"):
        run_importer("salesforce", export)


def test_slugify() -> None:
    assert slugify("Gekko & Co") == "gekko-co"
    assert slugify("  Mei-Mei Johns ") == "mei-mei-johns"


@pytest.mark.shared_data
def test_real_export_every_deal_accounted_for(maven_dir: Path, tmp_path: Path) -> None:
    tables, report = import_maven(maven_dir)
    raw = pd.read_csv(maven_dir / "sales_pipeline.csv")
    assert report.opportunities_in == len(raw) == 8800
    assert report.opportunities_imported + report.opportunities_skipped == 8800
    opportunities = tables["opportunities"]
    # The real export needs no skip: every deal is imported (with reported choices).
    assert report.opportunities_skipped == 0
    assert set(opportunities["opportunity_id"]) == set(raw["opportunity_id"])
    assert report.validation is not None and report.validation.ok and not report.validation.skipped

    by_id = opportunities.set_index("opportunity_id")
    no_account = raw.loc[raw["account"].isna(), "opportunity_id"]
    assert len(no_account) == 1425
    assert (by_id.loc[no_account, "account_id"] == PLACEHOLDER_ACCOUNT_ID).all()
    no_date = raw.loc[raw["engage_date"].isna(), "opportunity_id"]
    assert len(no_date) == 500
    assert (by_id.loc[no_date, "created_at_imputed"] == 1.0).all()
    assert (by_id.loc[no_date, "created_at"] == pd.Timestamp("2017-12-31")).all()
    assert "GTXPro" not in set(opportunities["product"])
    assert set(opportunities["product"]) <= set(tables["products"]["product"])
    closed = opportunities["outcome"].notna()
    assert closed.sum() == (raw["deal_stage"].isin(["Won", "Lost"])).sum()
    assert (
        opportunities.loc[closed, "closed_at"].notna().all()
        and opportunities.loc[~closed, "closed_at"].isna().all()
    )
    won = opportunities["outcome"] == "won"
    assert (
        opportunities.loc[won, "won_amount"].gt(0).all()
        and opportunities.loc[~won, "won_amount"].isna().all()
    )
    assert "technolgy" not in set(tables["accounts"]["industry"])

    history = tables["opportunity_history"].merge(
        opportunities[["opportunity_id", "created_at"]], on="opportunity_id"
    )
    assert len(history) == raw["engage_date"].notna().sum() + closed.sum()
    assert (history["changed_at"] >= history["created_at"]).all()
    # Accounts exist before their deals (as-of joins rely on it).
    first_deal = opportunities.groupby("account_id")["created_at"].min()
    created = tables["accounts"].set_index("account_id")["created_at"]
    assert (created.loc[first_deal.index] <= first_deal).all()

    # Written CSVs load back contract-clean and identical.
    write_tables(tables, tmp_path)
    reloaded, validation = load_tables(tmp_path, require=("accounts", "opportunities"), strict=True)
    assert validation.ok and not validation.skipped
    for name, table in tables.items():
        pd.testing.assert_frame_equal(reloaded[name], table)
