"""The per-cursor parsed-statement cache of features.sql never answers from an earlier build's data."""

from __future__ import annotations

import threading

import duckdb
import pandas as pd
import pandas.testing as pdt

from features import sql
from features.account import build_account_features
from features.opportunity import build_opportunity_features
from tests.features.conftest import make_random_crm


def _in_fresh_thread(fn):
    """Run `fn` on a new thread: a new cursor with an empty cache, i.e. the uncached path."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised on the calling thread
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_same_text_on_new_data_reads_the_new_data() -> None:
    query = "SELECT k, SUM(v) AS total FROM t GROUP BY k ORDER BY k"
    with sql.registered({"t": pd.DataFrame({"k": ["a", "a", "b"], "v": [1.0, 2.0, 5.0]})}) as con:
        first = con.execute(query).fetchall()
        parsed_after_first = con.cached_statements()
    with sql.registered({"t": pd.DataFrame({"k": ["c"], "v": [7.0]})}) as con:
        second = con.execute(query).fetchall()
        parsed_after_second = con.cached_statements()
    assert first == [("a", 3.0), ("b", 5.0)]
    assert second == [("c", 7.0)]
    # The second run reused the parsed text instead of parsing it again.
    assert parsed_after_second == parsed_after_first


def test_a_schema_change_between_builds_is_bound_afresh() -> None:
    query = "SELECT * FROM t"
    with sql.registered({"t": pd.DataFrame({"x": [1.0]})}) as con:
        assert list(con.execute(query).df().columns) == ["x"]
    with sql.registered({"t": pd.DataFrame({"y": ["z"], "w": [2.0]})}) as con:
        assert con.execute(query).df().to_dict("records") == [{"y": "z", "w": 2.0}]


def test_parameters_and_several_statements_pass_through() -> None:
    with sql.registered({}) as con:
        assert con.execute("SELECT ? + 1", [41]).fetchall() == [(42,)]
        assert con.execute("SELECT ? + 1", [1]).fetchall() == [(2,)]
        # Several statements are not cached; the last one's result is returned, as DuckDB does.
        before = con.cached_statements()
        assert con.execute("SELECT 1; SELECT 2").fetchall() == [(2,)]
        assert con.cached_statements() == before


def test_builders_give_the_uncached_result_for_each_new_dataset() -> None:
    datasets = [make_random_crm(12, seed=seed) for seed in (11, 12)]
    as_of = ["2025-06-01", "2025-09-01"]
    # Warm this thread's cache with dataset 0, then build dataset 1 with the cached statements.
    build_opportunity_features(datasets[0], as_of)
    build_account_features(datasets[0], as_of)
    cached_opps = build_opportunity_features(datasets[1], as_of)
    cached_accounts = build_account_features(datasets[1], as_of)
    fresh_opps = _in_fresh_thread(lambda: build_opportunity_features(datasets[1], as_of))
    fresh_accounts = _in_fresh_thread(lambda: build_account_features(datasets[1], as_of))
    assert len(cached_opps) > 0 and len(cached_accounts) > 0
    pdt.assert_frame_equal(cached_opps, fresh_opps)
    pdt.assert_frame_equal(cached_accounts, fresh_accounts)
    # And the two datasets really differ, so a stale answer could not pass unnoticed.
    other = build_opportunity_features(datasets[0], as_of)
    assert not other.equals(cached_opps)


def test_a_failed_build_leaves_no_cache_behind() -> None:
    try:
        with sql.registered({"t": pd.DataFrame({"x": [1.0]})}) as con:
            con.execute("SELECT no_such_column FROM t").fetchall()
    except Exception:
        pass
    with sql.registered({"t": pd.DataFrame({"x": [3.0]})}) as con:
        assert con.cached_statements() == 0
        assert con.execute("SELECT x FROM t").fetchall() == [(3.0,)]


def test_small_builds_run_on_one_duckdb_thread_without_optimizer_and_give_the_same_features(
    monkeypatch,
) -> None:
    tables = make_random_crm(12, seed=13)
    as_of = ["2025-03-01", "2025-09-01"]
    settings = "SELECT current_setting('threads'), current_setting('enable_optimizer')"
    with sql.registered({"t": pd.DataFrame({"x": [1.0]})}) as con:
        assert con.execute(settings).fetchall() == [(1, False)]
    small_opps = build_opportunity_features(tables, as_of)
    small_accounts = build_account_features(tables, as_of)
    # Every build counted as big: the default database with DuckDB's own thread count.
    monkeypatch.setattr(sql, "SMALL_BUILD_ROWS", -1)
    with sql.registered({"t": pd.DataFrame({"x": [1.0]})}) as con:
        big_settings = con.execute(settings).fetchall()
    assert big_settings == duckdb.connect().execute(settings).fetchall()
    assert big_settings[0][1] is True
    pdt.assert_frame_equal(build_opportunity_features(tables, as_of), small_opps)
    pdt.assert_frame_equal(build_account_features(tables, as_of), small_accounts)
