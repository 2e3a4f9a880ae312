"""The cheaper paths of one small feature build give exactly what the general paths give."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest

from features import sql

# A result with every case `fetch_canonical` converts: text with and without NULLs, HUGEINT sums,
# BIGINT/INTEGER with NULLs (nullable Int64 under `.df()`), doubles with NULLs, and as_of.
_MIXED_QUERY = """
SELECT CASE WHEN i % 3 = 0 THEN NULL ELSE 'id-' || i END AS account_id,
       'x' || i AS acct_industry,
       TIMESTAMP_NS '2025-01-01' + to_days(CAST(i AS INTEGER)) AS as_of,
       CAST(i AS HUGEINT) * 2 AS n_hugeint,
       CASE WHEN i % 2 = 0 THEN CAST(i AS BIGINT) END AS n_bigint_nulls,
       CAST(i AS INTEGER) AS n_integer,
       CASE WHEN i % 4 = 0 THEN NULL ELSE i / 7.0 END AS x_double,
       CAST(NULL AS DOUBLE) AS x_all_null
FROM range({n}) t(i)
"""


def _both_ways(query: str, string_columns: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    con = duckdb.connect()
    general = sql.finish_frame(con.execute(query).df(), string_columns)
    fast = sql.canonical_frame(sql.fetch_canonical(con.execute(query), string_columns))
    return general, fast


@pytest.mark.parametrize("n_rows", [0, 1, 5, 300])
def test_fetch_canonical_equals_df_then_finish_frame(n_rows: int) -> None:
    general, fast = _both_ways(_MIXED_QUERY.format(n=n_rows), ["account_id", "acct_industry"])
    pdt.assert_frame_equal(fast, general, check_exact=True)
    assert len(fast) == n_rows
    assert fast["n_bigint_nulls"].dtype == "float64" and fast["as_of"].dtype == "datetime64[ns]"
    if n_rows:
        # NULL text is None (not NaN), NULL numbers NaN: the canonical missing values.
        assert fast.loc[0, "account_id"] is None
    if n_rows >= 3:
        assert np.isnan(fast.loc[1, "n_bigint_nulls"]) and fast.loc[2, "n_bigint_nulls"] == 2.0


def test_fetch_canonical_falls_back_for_types_it_does_not_convert() -> None:
    # DECIMAL and BOOLEAN are not produced by the feature queries: they go through `.df()`.
    query = "SELECT 'a' AS account_id, 1.25::DECIMAL(5, 2) AS d, true AS flag, NULL::BOOLEAN AS maybe"
    general, fast = _both_ways(query, ["account_id"])
    pdt.assert_frame_equal(fast, general, check_exact=True)
