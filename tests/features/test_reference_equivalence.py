"""The DuckDB pipeline and the plain pandas reference agree value for value on the same data."""

from __future__ import annotations

import pandas as pd

from features.opportunity import build_opportunity_features
from features.reference_pandas import reference_opportunity_features
from features.snapshots import as_of_dates


def test_sql_matches_pandas_reference(crm):
    dates = as_of_dates("2023-02-06", "2025-12-29", "W-MON")[::7]
    sql = build_opportunity_features(crm, dates)
    ref = reference_opportunity_features(crm, dates)
    assert len(sql) > 100
    assert list(sql.columns) == list(ref.columns)
    pd.testing.assert_frame_equal(sql, ref, check_exact=False, rtol=1e-9, atol=1e-9)


def test_sql_matches_reference_with_current_state(crm):
    dates = ["2025-06-02", "2025-12-31"]
    sql = build_opportunity_features(crm, dates, current_state_as_of="2025-12-31")
    ref = reference_opportunity_features(crm, dates, current_state_as_of="2025-12-31")
    pd.testing.assert_frame_equal(sql, ref, check_exact=False, rtol=1e-9, atol=1e-9)


def test_sql_matches_pandas_reference_accounts(crm):
    from features.account import build_account_features
    from features.reference_pandas import reference_account_features

    dates = as_of_dates("2023-03-01", "2025-12-01", "MS")[::3]
    sql = build_account_features(crm, dates)
    ref = reference_account_features(crm, dates)
    assert len(sql) > 100
    assert sorted(sql.columns) == sorted(ref.columns)
    pd.testing.assert_frame_equal(sql, ref[list(sql.columns)], check_exact=False, rtol=1e-9, atol=1e-9)
