"""Tests of the synthetic CRM generator (features.generate): reproducibility, contract, consistency, truth."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.contract import TABLES
from features.data import load_tables
from features.generate import TABLE_ORDER, generate_crm
from features.generate.calibration import calibration_report, churn_labels, read_truth
from features.labels import churn_labels as project_churn_labels

N_ACCOUNTS = 100
EXPORT = pd.Timestamp("2026-10-31")


def _digest(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("crm") / "data"
    summary = generate_crm(out, n_accounts=N_ACCOUNTS, seed=11)
    return out, summary


@pytest.fixture(scope="module")
def tables(generated: tuple[Path, dict]) -> dict[str, pd.DataFrame]:
    loaded, report = load_tables(generated[0])
    assert report.errors == []
    return loaded


def test_same_seed_gives_identical_bytes_and_other_seed_differs(
    tmp_path: Path, generated: tuple[Path, dict]
) -> None:
    again = tmp_path / "again"
    generate_crm(again, n_accounts=N_ACCOUNTS, seed=11)
    first, second = _digest(generated[0]), _digest(again)
    assert first == second
    assert any(name.startswith("truth/") for name in first)
    other = tmp_path / "other"
    generate_crm(other, n_accounts=N_ACCOUNTS, seed=12)
    different = _digest(other)
    assert different.keys() == first.keys()
    assert different["opportunities.csv"] != first["opportunities.csv"]
    assert different["activities.csv"] != first["activities.csv"]


def test_every_contract_table_is_written_with_its_columns(generated: tuple[Path, dict]) -> None:
    out, summary = generated
    for name in TABLE_ORDER:
        path = out / f"{name}.csv"
        assert path.is_file(), name
        header = pd.read_csv(path, nrows=0).columns
        missing = set(TABLES[name].column_names) - set(header)
        assert not missing, f"{name} lacks {missing}"
        assert summary["rows"][name] > 0, name
    assert set(TABLES) <= set(TABLE_ORDER)
    # The leakage traps exist as extra columns.
    assert {"close_reason", "contract_signed_at"} <= set(
        pd.read_csv(out / "opportunities.csv", nrows=0).columns
    )
    assert {"status", "churned_at"} <= set(pd.read_csv(out / "accounts.csv", nrows=0).columns)


def test_loader_accepts_output_with_no_error_and_no_skipped_row(generated: tuple[Path, dict]) -> None:
    out, summary = generated
    loaded, report = load_tables(out)
    assert report.errors == []
    assert report.skipped == []
    for name in TABLE_ORDER:
        assert len(loaded[name]) == summary["rows"][name], name


def test_ids_are_prefixed_strings_and_timestamps_iso(generated: tuple[Path, dict]) -> None:
    out, _ = generated
    opportunities = pd.read_csv(out / "opportunities.csv", dtype=str, keep_default_na=False)
    assert opportunities["opportunity_id"].str.fullmatch(r"o-\d{7}").all()
    assert opportunities["account_id"].str.fullmatch(r"a-\d{6}").all()
    assert opportunities["owner_id"].str.fullmatch(r"r-\d{3}").all()
    assert opportunities["created_at"].str.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}").all()
    assert opportunities["expected_close_date"].str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()


def test_referential_integrity(tables: dict[str, pd.DataFrame]) -> None:
    accounts = set(tables["accounts"]["account_id"])
    reps = set(tables["reps"]["rep_id"])
    opportunities = set(tables["opportunities"]["opportunity_id"])
    for name in ("opportunities", "activities", "subscriptions", "usage", "tickets", "surveys"):
        assert set(tables[name]["account_id"]) <= accounts, name
    assert set(tables["accounts"]["owner_id"]) <= reps
    assert set(tables["opportunities"]["owner_id"]) <= reps
    assert set(tables["quotas"]["rep_id"]) <= reps
    assert set(tables["reps"]["manager_id"].dropna()) <= reps
    assert set(tables["opportunity_history"]["opportunity_id"]) == opportunities
    assert set(tables["activities"]["opportunity_id"].dropna()) <= opportunities
    assert set(tables["opportunities"]["product"]) <= set(tables["products"]["product"])
    # Deal activities belong to the deal's account.
    acts = tables["activities"].dropna(subset=["opportunity_id"])
    owner_account = tables["opportunities"].set_index("opportunity_id")["account_id"]
    assert (acts["account_id"].to_numpy() == owner_account.loc[acts["opportunity_id"]].to_numpy()).all()


def test_history_last_row_equals_current_state(tables: dict[str, pd.DataFrame]) -> None:
    history = tables["opportunity_history"]
    last = history.groupby("opportunity_id", sort=False).tail(1).set_index("opportunity_id")
    current = tables["opportunities"].set_index("opportunity_id").loc[last.index]
    assert (last["stage"] == current["stage"]).all()
    assert np.allclose(last["amount"], current["amount"])
    assert (last["expected_close_date"] == current["expected_close_date"]).all()
    first = history.groupby("opportunity_id", sort=False).head(1).set_index("opportunity_id")
    assert (first["changed_at"] == current.loc[first.index, "created_at"]).all()
    assert history.groupby("opportunity_id")["changed_at"].apply(lambda s: s.is_monotonic_increasing).all()


def test_current_state_reflects_the_export_date(tables: dict[str, pd.DataFrame]) -> None:
    opp = tables["opportunities"]
    closed = opp["outcome"].notna()
    assert (opp.loc[closed, "stage"] == opp.loc[closed, "outcome"]).all()
    assert opp.loc[~closed, "closed_at"].isna().all()
    assert opp.loc[~closed, "stage"].isin(["prospecting", "qualification", "proposal", "negotiation"]).all()
    assert opp.loc[opp["outcome"] == "won", "won_amount"].gt(0).all()
    assert opp.loc[opp["outcome"] != "won", "won_amount"].isna().all()
    assert (~closed).sum() > 0 and closed.sum() > 0
    limit = EXPORT + pd.Timedelta(days=1)
    for name, column in (
        ("opportunities", "created_at"),
        ("opportunities", "closed_at"),
        ("opportunity_history", "changed_at"),
        ("activities", "occurred_at"),
        ("tickets", "opened_at"),
        ("surveys", "responded_at"),
        ("usage", "date"),
        ("subscriptions", "start_date"),
    ):
        assert tables[name][column].dropna().lt(limit).all(), (name, column)
    assert set(opp["type"]) == {"new", "renewal", "expansion"}
    # Close dates slip and get revised: history has more rows than stage changes alone.
    assert tables["opportunity_history"]["change"].eq("close_date").any()


def test_truth_is_written_outside_the_tables(
    generated: tuple[Path, dict], tables: dict[str, pd.DataFrame]
) -> None:
    out, summary = generated
    truth = read_truth(out)
    assert not set(summary["truth_rows"]) & {"opportunity_history", "activities"}
    assert "truth" not in tables
    oracle = truth["opportunities"]
    assert set(oracle["opportunity_id"]) == set(tables["opportunities"]["opportunity_id"])
    stages = ["prospecting", "qualification", "proposal", "negotiation"]
    p = oracle[[f"p_win_from_{s}" for s in stages]].to_numpy()
    assert ((p > 0) & (p < 1)).all()
    assert (np.diff(p, axis=1) >= 0).all()  # closer to the end, likelier to win
    churn = truth["accounts_churn"]
    assert churn["p_churn_90d"].between(0, 1).all()


def test_calibration_targets_hold(tables: dict[str, pd.DataFrame], generated: tuple[Path, dict]) -> None:
    report = calibration_report(tables, read_truth(generated[0]))
    assert 0.75 <= report["oracle_win_auc"] <= 0.95
    assert 0.01 <= report["churn_base_rate"] <= 0.12
    assert report["oracle_churn_auc"] >= 0.75
    # The truth is the probability of the label the subscriptions table yields.
    assert report["churn_label_agreement"] >= 0.98
    assert abs(report["churn_oracle_mean"] - report["churn_base_rate"]) < 0.03


def test_project_churn_labels_match_simulated_churn(
    generated: tuple[Path, dict], tables: dict[str, pd.DataFrame]
) -> None:
    truth = read_truth(generated[0])["accounts_churn"].dropna(subset=["label_churn_90d"])
    snapshots = truth.rename(columns={"period_start": "as_of"})[["account_id", "as_of"]]
    labels = project_churn_labels(tables, snapshots)
    known = labels["label_observed"].to_numpy()
    agreement = (labels["label_churn"].to_numpy()[known] == truth["label_churn_90d"].to_numpy()[known]).mean()
    assert known.mean() > 0.9
    assert agreement >= 0.98


@pytest.mark.parametrize("fmt", ["parquet"])
def test_contract_shape_and_parquet(tmp_path: Path, fmt: str, tables: dict[str, pd.DataFrame]) -> None:
    out = tmp_path / "contract"
    generate_crm(out, n_accounts=N_ACCOUNTS, seed=11, fmt=fmt, subscription_rows="contract")
    loaded, report = load_tables(out)
    assert report.errors == [] and report.skipped == []
    contract = loaded["subscriptions"]
    assert contract["contract_id"].is_unique
    assert contract["end_date"].isna().any()
    period = tables["subscriptions"]
    assert set(period["contract_id"]) == set(contract["contract_id"])
    # Period rows of one contract chain without gaps (a renewal starts when the previous row ends).
    chained = period.sort_values(["contract_id", "start_date"])
    same = chained["contract_id"].eq(chained["contract_id"].shift())
    assert (chained["start_date"][same].to_numpy() == chained["end_date"].shift()[same].to_numpy()).all()
    # Both shapes say the same about churn.
    for as_of in pd.date_range("2024-01-01", "2026-04-01", freq="QS"):
        a = churn_labels(period, as_of).sort_values("account_id").reset_index(drop=True)
        b = churn_labels(contract, as_of).sort_values("account_id").reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b)
    # Everything else is the same data.
    assert (
        loaded["opportunities"]["opportunity_id"].tolist()
        == tables["opportunities"]["opportunity_id"].tolist()
    )


def test_scale_grows_volume_about_linearly(tmp_path: Path, generated: tuple[Path, dict]) -> None:
    base = generated[1]["rows"]
    doubled = generate_crm(tmp_path / "x2", n_accounts=N_ACCOUNTS, seed=11, scale=2.0)["rows"]
    for name in ("opportunities", "opportunity_history", "activities"):
        ratio = doubled[name] / base[name]
        assert 1.6 <= ratio <= 2.4, (name, ratio)


def test_activity_rate_thins_activities_and_leaves_deals_alone(
    tmp_path: Path, generated: tuple[Path, dict]
) -> None:
    out = tmp_path / "half"
    halved = generate_crm(out, n_accounts=N_ACCOUNTS, seed=11, activity_rate=0.5)["rows"]
    ratio = halved["activities"] / generated[1]["rows"]["activities"]
    assert 0.35 <= ratio <= 0.65, ratio
    base = _digest(generated[0])
    thinned = _digest(out)
    for name in ("opportunities.csv", "opportunity_history.csv", "accounts.csv"):
        assert thinned[name] == base[name], name
    with pytest.raises(ValueError, match="activity_rate"):
        generate_crm(tmp_path / "bad", n_accounts=10, activity_rate=0.0)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fmt"):
        generate_crm(tmp_path, n_accounts=10, fmt="xlsx")
    with pytest.raises(ValueError, match="subscription_rows"):
        generate_crm(tmp_path, n_accounts=10, subscription_rows="weekly")
    with pytest.raises(ValueError, match="n_accounts"):
        generate_crm(tmp_path, n_accounts=0)
