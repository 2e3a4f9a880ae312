"""Feature pipelines on a small dataset from the project's synthetic generator (~100 accounts)."""

from __future__ import annotations

import pandas as pd
import pytest

from features.account import build_account_features
from features.opportunity import build_opportunity_features
from features.reference_pandas import reference_opportunity_features
from features.snapshots import as_of_dates, build_churn_training_set, build_win_training_set

from .test_asof_leakage import mutate_after

T = pd.Timestamp("2025-06-02")


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, pd.DataFrame]:
    generate = pytest.importorskip("features.generate", reason="synthetic generator not available")
    data = pytest.importorskip("features.data", reason="loader not available")
    out = tmp_path_factory.mktemp("gen100")
    generate.generate_crm(out, n_accounts=100, seed=11, fmt="parquet")
    tables, _report = data.load_tables(out)
    return tables


@pytest.fixture(scope="module")
def dates() -> list[pd.Timestamp]:
    return [T - pd.Timedelta(days=56), T - pd.Timedelta(days=28), T]


@pytest.fixture(scope="module")
def baseline(generated, dates) -> tuple[pd.DataFrame, pd.DataFrame]:
    return build_opportunity_features(generated, dates), build_account_features(generated, dates)


@pytest.mark.parametrize(
    "table", ["opportunities", "opportunity_history", "activities", "subscriptions", "usage", "tickets"]
)
def test_generated_rows_after_t_never_move_features(generated, dates, baseline, table):
    before_opp, before_acct = baseline
    assert len(before_opp) > 20 and len(before_acct) > 10
    mutated = mutate_after(generated, table, seed=3, as_of=T)
    pd.testing.assert_frame_equal(build_opportunity_features(mutated, dates), before_opp)
    pd.testing.assert_frame_equal(build_account_features(mutated, dates), before_acct)


def test_generated_sql_matches_pandas_reference(generated):
    dates = as_of_dates("2024-01-01", "2026-10-26", "W-MON")[::13]
    sql = build_opportunity_features(generated, dates)
    ref = reference_opportunity_features(generated, dates)
    assert len(sql) > 100
    pd.testing.assert_frame_equal(sql, ref, check_exact=False, rtol=1e-9, atol=1e-9)


def test_generated_training_sets(generated):
    dates = as_of_dates("2023-01-02", "2026-10-26", "W-MON")
    win = build_win_training_set(generated, dates)
    assert set(win["label_won"].unique()) == {0.0, 1.0}
    assert win.attrs["n_unlabeled_dropped"] > 0  # deals still open at the export are not called lost
    opps = generated["opportunities"].set_index("opportunity_id")
    closed = opps.loc[win["opportunity_id"], "closed_at"].to_numpy()
    assert (closed > win["as_of"].to_numpy()).all()  # every label comes from after T
    churn = build_churn_training_set(generated, as_of_dates("2023-01-01", "2026-10-01", "MS"))
    assert set(churn["label_churn"].unique()) <= {0.0, 1.0} and churn["label_churn"].sum() > 0
    assert (churn["arr"] > 0).all()
    traps = {
        "close_reason",
        "contract_signed_at",
        "status",
        "churned_at",
        "outcome",
        "won_amount",
        "closed_at",
    }
    assert not traps & (set(win.columns) | set(churn.columns))
    assert {"acct_usage_seats_used_trend_90d", "acct_usage_reports_run_mean_30d"} <= set(churn.columns)


def test_generated_account_sql_matches_pandas_reference(generated):
    from features.reference_pandas import reference_account_features

    dates = as_of_dates("2024-01-01", "2026-10-01", "MS")[::4]
    sql = build_account_features(generated, dates)
    ref = reference_account_features(generated, dates)
    assert len(sql) > 50
    pd.testing.assert_frame_equal(sql, ref[list(sql.columns)], check_exact=False, rtol=1e-9, atol=1e-9)
