"""Two builds of the same tables give bit-identical account features (churn retrains reproduce).

Floating-point additions depend on their order, and DuckDB's threads hand a group's rows to an
aggregate in a different order from run to run: `acct_usage_*_slope_90d` differed by ~1e-14 between
two builds, enough for `revcast promote churn` to call a retrain on identical data significantly
worse. These tests build on the multi-threaded database (more threads than this machine may have, so
that the rows really are split) and compare frames exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest

from features import sql
from features.account import build_account_features
from tests.features.conftest import make_random_crm

N_BUILDS = 4
DATES = list(pd.date_range("2023-03-01", "2025-12-01", freq="MS"))


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    """A 300-account random CRM: usage and MRR with fractional values."""
    crm = make_random_crm(300, seed=11)
    subscriptions = crm["subscriptions"].copy()
    subscriptions["mrr"] = subscriptions["mrr"] - 0.01  # price points like 299.99
    return {**crm, "subscriptions": subscriptions}


@pytest.fixture
def many_threads() -> Iterator[None]:
    """The shared multi-threaded database with at least 4 threads for the test, as it was after."""
    database = sql._shared_database(small=False)
    threads = int(database.execute("SELECT current_setting('threads')").fetchone()[0])
    database.execute(f"SET threads = {max(threads, 4)}").fetchall()
    try:
        yield
    finally:
        database.execute(f"SET threads = {threads}").fetchall()


def _bits(frame: pd.DataFrame) -> dict[str, bytes]:
    """Each float column's raw bytes (NaN payloads and the sign of zero included)."""
    return {
        name: frame[name].to_numpy().tobytes() for name in frame.columns if frame[name].dtype == "float64"
    }


def test_inputs_exercise_order_dependent_sums(tables: dict[str, pd.DataFrame]) -> None:
    # Sums of integers are exact in any order: the data must hold fractional values to show anything,
    # and be big enough for the multi-threaded database.
    assert len(tables["usage"]) > sql.SMALL_BUILD_ROWS
    for table, column in [("usage", "events"), ("subscriptions", "mrr")]:
        values = tables[table][column].dropna().to_numpy()
        assert (values != np.round(values)).any(), (table, column)


def test_repeated_builds_are_bit_identical(tables: dict[str, pd.DataFrame], many_threads: None) -> None:
    builds = [build_account_features(tables, DATES) for _ in range(N_BUILDS)]
    first = builds[0]
    slopes = [c for c in first.columns if c.startswith("acct_usage_") and c.endswith("_slope_90d")]
    assert slopes and first[slopes].notna().any().all()
    for other in builds[1:]:
        pdt.assert_frame_equal(other, first, check_exact=True)
        assert _bits(other) == _bits(first)


def test_one_account_build_matches_the_batch_build_bit_for_bit(
    tables: dict[str, pd.DataFrame], many_threads: None
) -> None:
    # The API builds one account on the one-thread database without the optimizer; the batch builds
    # everyone on several threads. Sums taken in the values' own order agree exactly between the two.
    batch = build_account_features(tables, DATES)
    counts = batch.groupby("account_id").size()
    account = counts.index[counts.argmax()]
    own = {
        name: frame[frame["account_id"] == account].reset_index(drop=True)
        if "account_id" in frame.columns
        else frame
        for name, frame in tables.items()
    }
    history = tables["opportunity_history"]
    own["opportunity_history"] = history[
        history["opportunity_id"].isin(own["opportunities"]["opportunity_id"])
    ].reset_index(drop=True)
    assert sum(len(frame) for frame in own.values()) <= sql.SMALL_BUILD_ROWS
    alone = build_account_features(own, DATES)
    expected = batch[batch["account_id"] == account].reset_index(drop=True)
    pdt.assert_frame_equal(alone, expected, check_exact=True)
    assert _bits(alone) == _bits(expected)
