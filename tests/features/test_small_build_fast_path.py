"""The cheaper paths of one small feature build give exactly what the general paths give."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest

from features import account, opportunity, sql
from features.account import build_account_features
from features.opportunity import build_opportunity_features
from features.params import load_params
from tests.features.conftest import make_random_crm

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


def _canonical_result(frames: dict[str, pd.DataFrame], query: str) -> pd.DataFrame:
    with sql.registered(frames) as con:
        return sql.canonical_frame(sql.fetch_canonical(con.execute(query), opportunity.STRING_OUTPUT))


def _without_closed_deals(tables: dict[str, pd.DataFrame], how: str) -> dict[str, pd.DataFrame]:
    """The CRM with no deal closed as won/lost, in the ways data can say so."""
    tables = dict(tables)
    opps = tables["opportunities"].copy()
    if how == "open_only":  # what the API sends: open deals only
        opps = opps[opps["closed_at"].isna()].reset_index(drop=True)
    elif how == "no_outcome":  # closed (so not open afterwards) but without a won/lost outcome
        opps["outcome"] = None
    elif how == "outcome_without_close":
        opps["closed_at"] = pd.NaT
        opps.loc[opps.index % 3 == 0, "outcome"] = "won"
    # Missing keys: the track records' NULL handling (no rep / no account) must agree too.
    opps.loc[opps.index % 5 == 1, "owner_id"] = None
    opps.loc[opps.index % 7 == 2, "account_id"] = None
    tables["opportunities"] = opps
    return tables


@pytest.mark.parametrize("how", ["open_only", "no_outcome", "outcome_without_close"])
@pytest.mark.parametrize("current_state", [False, True])
def test_query_without_closed_deals_equals_the_general_query(how: str, current_state: bool) -> None:
    params = load_params()
    tables = _without_closed_deals(make_random_crm(40, seed=21), how)
    as_of = ["2024-03-31", "2025-01-15", "2025-12-31"]
    frames = opportunity.opportunity_frames(
        tables, as_of, params, current_state_as_of="2025-06-30" if current_state else None
    )
    assert not opportunity.has_closed_deals(frames["opps"])
    general = _canonical_result(frames, opportunity.opportunity_query(params, closed_deals=True))
    short = _canonical_result(frames, opportunity.opportunity_query(params, closed_deals=False))
    assert len(general) >= 5
    assert general["rep_closed_deals_prior"].eq(0).any() and general["acct_won_amount_prior"].eq(0).any()
    pdt.assert_frame_equal(short, general, check_exact=True)


def test_one_record_builds_without_closed_deals_equal_the_general_query() -> None:
    params = load_params()
    tables = _without_closed_deals(make_random_crm(12, seed=4), "open_only")
    opps = tables["opportunities"]
    for opp_id in opps["opportunity_id"].head(6):
        one = {
            "opportunities": opps[opps["opportunity_id"] == opp_id].reset_index(drop=True),
            "opportunity_history": tables["opportunity_history"].query("opportunity_id == @opp_id"),
            "activities": tables["activities"].query("opportunity_id == @opp_id"),
            "accounts": tables["accounts"],
        }
        built = build_opportunity_features(one, "2025-12-31", params, current_state_as_of="2025-12-31")
        frames = opportunity.opportunity_frames(one, "2025-12-31", params, current_state_as_of="2025-12-31")
        general = _canonical_result(frames, opportunity.opportunity_query(params, closed_deals=True))
        assert len(built) == 1
        # The builder's only other steps: zero activity counts for a deal without activities.
        counts = [c for c in general.columns if opportunity._is_activity_count(c)]
        general[counts] = general[counts].fillna(0.0)
        pdt.assert_frame_equal(built, general, check_exact=True)


def test_the_short_query_is_only_right_without_closed_deals() -> None:
    # On data with won/lost deals the two texts differ: the builder must pick the general one.
    params = load_params()
    tables = make_random_crm(25, seed=21)
    frames = opportunity.opportunity_frames(tables, ["2025-01-15", "2025-12-31"], params)
    assert opportunity.has_closed_deals(frames["opps"])
    general = _canonical_result(frames, opportunity.opportunity_query(params, closed_deals=True))
    short = _canonical_result(frames, opportunity.opportunity_query(params, closed_deals=False))
    assert general["rep_win_rate_closed"].notna().any() and short["rep_win_rate_closed"].isna().all()
    counts = [c for c in general.columns if opportunity._is_activity_count(c)]
    general[counts] = general[counts].fillna(0.0)
    pdt.assert_frame_equal(build_opportunity_features(tables, ["2025-01-15", "2025-12-31"], params), general)


def test_feature_query_results_are_converted_without_the_df_fallback() -> None:
    # A result column of another type (e.g. a DECIMAL literal such as 0.0) would silently send every
    # build through `.df()` again: same frame, twice the cost. Every query's columns must convert.
    params = load_params()
    tables = make_random_crm(12, seed=5)
    frames = opportunity.opportunity_frames(tables, ["2025-06-30", "2025-12-31"], params)
    strings = set(opportunity.STRING_OUTPUT)
    with sql.registered(frames) as con:
        for closed_deals in (True, False):
            result = con.execute(opportunity.opportunity_query(params, closed_deals))
            kinds = [(name, str(kind)) for name, kind, *_ in result.description]
            result.fetchall()
            assert [k for k in kinds if not sql._convertible(*k, strings)] == []
    account_result = build_account_features(tables, ["2025-06-30", "2025-12-31"], params)
    assert len(account_result) > 0
    with sql.registered(account.account_frames(tables, ["2025-06-30"], params)) as con:
        result = con.execute(account.account_query(params))
        kinds = [(name, str(kind)) for name, kind, *_ in result.description]
        result.fetchall()
    assert [k for k in kinds if not sql._convertible(*k, {"account_id", *account.CATEGORICAL_OUTPUT})] == []


def _relation_cases() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "text": pd.Series(["a", None, "b", "a"], dtype=object),
            "no_text": pd.Series([None] * 4, dtype=object),
            "x": [1.5, np.nan, -2.0, 4.0],
            "n": np.arange(4, dtype="int64"),
            "flag": [True, False, True, True],
            "seen_at": pd.to_datetime(
                ["2025-01-01T00:00:00", None, "2025-03-01T12:00:00", "2025-02-01T00:00:00"]
            ).astype("datetime64[ns]"),
            "at_s": pd.Series(pd.to_datetime(["2025-01-02"] * 4)).astype("datetime64[s]"),
        }
    )


def test_small_relations_read_as_the_pandas_scan_reads_them() -> None:
    frame = _relation_cases()
    relation = sql._arrow_relation(frame)
    assert not isinstance(relation, pd.DataFrame)  # converted: every column is of a handled kind
    query = """
        SELECT text, no_text, COUNT(*) AS n_rows, SUM(x) AS sum_x, COUNT(x) AS n_x, AVG(n) AS mean_n,
               SUM(CASE WHEN flag THEN 1 ELSE 0 END) AS n_flag, MAX(seen_at) AS last_at, COUNT(seen_at) AS n_at,
               MIN(epoch(at_s) - epoch(seen_at)) AS gap, SUM(CASE WHEN no_text = 'a' THEN 1 ELSE 0 END) AS n_match
        FROM t GROUP BY text, no_text ORDER BY text NULLS LAST
    """
    con = duckdb.connect()
    con.register("t", frame)
    by_pandas = con.execute(query).fetchall()
    con.register("t", relation)
    by_arrow = con.execute(query).fetchall()
    assert by_arrow == by_pandas
    assert by_pandas[0][:5] == ("a", None, 2, 5.5, 2)  # NaN is NULL (not counted) either way


def test_frames_of_other_kinds_are_registered_as_they_are() -> None:
    categorical = _relation_cases().assign(text=lambda f: f["text"].astype("category"))
    mixed = _relation_cases().assign(no_text=[1, "a", None, 2.5])
    assert sql._arrow_relation(categorical) is categorical
    assert sql._arrow_relation(mixed) is mixed


def _random_usage_stats(rng: np.random.Generator, n_keys: int, metrics: list[str]) -> pd.DataFrame:
    """usage_query-shaped statistics: some keys miss some metrics (the users one too), NaNs and zeros."""
    rows = []
    for k in range(n_keys):
        for metric in metrics:
            if rng.random() < 0.25:
                continue
            values = rng.choice([0.0, np.nan, 1.0, 2.5, 40.0, -3.0], size=8)
            rows.append(
                {
                    "account_id": f"a-{k % 7}",
                    "as_of": pd.Timestamp("2025-01-01") + pd.Timedelta(days=30 * (k // 7)),
                    "metric": metric,
                    "mean_recent": values[0],
                    "mean_previous": values[1],
                    "mean_baseline": values[2],
                    "slope": values[3],
                    "days_since": abs(values[4]),
                    "recent_per_kmrr": values[5],
                    "previous_per_kmrr": values[6],
                    "last_per_kmrr": values[7],
                }
            )
    stats = pd.DataFrame(rows)
    stats["as_of"] = stats["as_of"].astype("datetime64[ns]")
    return stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_usage_columns_equal_the_pivot_and_merge(seed: int) -> None:
    params = load_params()
    rng = np.random.default_rng(seed)
    metrics = ["active_users", "events", "reports_run", "never_measured"]
    stats = _random_usage_stats(rng, 40, metrics[:3])
    # The population: every key with statistics, plus accounts without any usage.
    keys = stats[["account_id", "as_of"]].drop_duplicates()
    extra = pd.DataFrame({"account_id": ["z-1", "z-2"], "as_of": keys["as_of"].iloc[:2].to_numpy()})
    base = pd.concat([keys, extra], ignore_index=True).sort_values(["as_of", "account_id"], ignore_index=True)
    expected = base.merge(account._usage_wide(stats, metrics, params), on=["account_id", "as_of"], how="left")
    columns = account._usage_columns(
        (base["account_id"].to_numpy(), base["as_of"].to_numpy()),
        {name: stats[name].to_numpy() for name in stats.columns},
        metrics,
        params,
    )
    got = pd.concat([base, pd.DataFrame(columns)], axis=1)
    pdt.assert_frame_equal(got, expected, check_exact=True)
    assert got["acct_usage_events_per_user_30d"].notna().any()
    assert got["acct_usage_never_measured_mean_30d"].isna().all()


def test_account_builds_equal_the_pandas_usage_path(monkeypatch: pytest.MonkeyPatch) -> None:
    params = load_params()
    tables = make_random_crm(15, seed=8)
    as_of = ["2024-12-31", "2025-06-30", "2025-12-31"]
    numpy_path = build_account_features(tables, as_of, params)
    monkeypatch.setattr(account, "SMALL_USAGE_STATS", -1)
    monkeypatch.setattr(account, "SMALL_SORT_CHECK", -1)
    pandas_path = build_account_features(tables, as_of, params)
    assert len(numpy_path) > 10 and numpy_path["acct_usage_events_mean_30d"].notna().any()
    pdt.assert_frame_equal(numpy_path, pandas_path, check_exact=True)


def _shaped_by_series(source: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """shaped_table's per-column Series path (what it did for every column before the array path)."""
    source = source.reset_index(drop=True)
    out = {}
    for col, kind in columns.items():
        values = source[col] if col in source.columns else pd.Series([None] * len(source), dtype=object)
        if kind == "ts" and values.dtype != "datetime64[ns]":
            values = pd.to_datetime(values, utc=True).dt.tz_localize(None).astype("datetime64[ns]")
        elif kind == "num" and values.dtype != "float64":
            values = pd.to_numeric(values, errors="raise").astype("float64")
        elif kind in ("str", "lstr"):
            lower = kind == "lstr"
            values = values.astype(object).map(
                lambda v, lower=lower: None if pd.isna(v) else (str(v).strip().lower() if lower else str(v))
            )
            values = values.astype(object).where(values.notna(), None)
        out[col] = values
    return pd.DataFrame(out, index=pd.RangeIndex(len(source)))


@pytest.mark.parametrize("n_rows", [1, 3, 300])
def test_shaped_table_array_path_equals_the_series_path(n_rows: int) -> None:
    rng = np.random.default_rng(n_rows)
    source = pd.DataFrame(
        {
            "id": rng.choice(np.array(["a-1", "B-2", None, " c "], dtype=object), n_rows),
            "int_id": rng.integers(0, 9, n_rows),
            "stage": rng.choice(np.array([" Demo", "proposal", None, np.nan], dtype=object), n_rows),
            "text_dtype": pd.array(rng.choice(["X", "y"], n_rows), dtype="string"),
            "at": pd.Timestamp("2025-01-01") + pd.to_timedelta(rng.integers(0, 90, n_rows), unit="D"),
            "at_text": rng.choice(
                np.array(["2025-01-02T00:00:00Z", "2025-03-04T05:06:07Z", None], dtype=object), n_rows
            ),
            "amount": rng.choice([1.5, np.nan, 3.0], n_rows),
            "count": rng.integers(0, 5, n_rows),
        },
        index=pd.RangeIndex(10, 10 + n_rows),  # not the default index: reset on the way
    )
    columns = {
        "id": "str",
        "int_id": "str",
        "stage": "lstr",
        "text_dtype": "lstr",
        "at": "ts",
        "at_text": "ts",
        "amount": "num",
        "count": "num",
        "absent_text": "str",
        "absent_time": "ts",
        "absent_number": "num",
    }
    shaped = sql.shaped_table({"t": source}, "t", columns)
    pdt.assert_frame_equal(shaped, _shaped_by_series(source, columns), check_exact=True)
    # The shaped frame owns its data: changing it leaves the caller's table alone.
    before = source["at"].copy()
    shaped.loc[0, "at"] = pd.Timestamp("1999-01-01")
    pdt.assert_series_equal(source["at"], before)


def _usage_long_by_melt(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """usage_long as pandas' melt + dropna computes it (its path before the array one)."""
    usage = tables["usage"]
    metric_columns = [
        c
        for c in usage.columns
        if c not in ("account_id", "date") and pd.api.types.is_numeric_dtype(usage[c])
    ]
    keys = sql.shaped_table(tables, "usage", {"account_id": "str", "date": "ts"})
    wide = pd.concat([keys, usage[metric_columns].reset_index(drop=True).astype("float64")], axis=1)
    wide = wide.rename(columns={c: account.metric_feature_name(c) for c in metric_columns})
    metrics = list(dict.fromkeys(account.metric_feature_name(c) for c in metric_columns))
    long = wide.melt(
        id_vars=["account_id", "date"], value_vars=metrics, var_name="metric", value_name="value"
    )
    return long.dropna(subset=["value"]).reset_index(drop=True)


@pytest.mark.parametrize("n_rows", [0, 1, 7, 400])
def test_usage_long_equals_melt_then_dropna(n_rows: int) -> None:
    rng = np.random.default_rng(n_rows)
    usage = pd.DataFrame(
        {
            "account_id": rng.choice(["a-1", "a-2"], n_rows).astype(object),
            "date": pd.Timestamp("2025-01-01") + pd.to_timedelta(rng.integers(0, 60, n_rows), unit="D"),
            "Active Users": rng.choice([1.0, np.nan, 3.0], n_rows),
            "events": rng.integers(0, 50, n_rows),
            "flag": rng.random(n_rows) < 0.5,
            "nullable": pd.array(rng.choice([1, 2], n_rows), dtype="Int64"),
            "note": rng.choice(["x", "y"], n_rows).astype(object),  # not numeric: not a metric
        },
        index=pd.RangeIndex(5, 5 + n_rows),
    )
    if n_rows:
        usage.loc[usage.index[0], "nullable"] = pd.NA
    tables = {"usage": usage}
    long, metrics = account.usage_long(tables)
    if n_rows == 0:  # no usage rows: no metrics
        assert long.empty and metrics == []
        return
    assert metrics == ["active_users", "events", "flag", "nullable"]
    pdt.assert_frame_equal(long, _usage_long_by_melt(tables), check_exact=True)


def test_usage_long_with_two_columns_of_one_feature_name_keeps_melt() -> None:
    usage = pd.DataFrame(
        {"account_id": ["a", "b"], "date": pd.to_datetime(["2025-01-01", "2025-01-02"]), "Events": [1.0, 2.0]}
    )
    usage["events"] = [3.0, np.nan]
    long, metrics = account.usage_long({"usage": usage})
    assert metrics == ["events"]
    pdt.assert_frame_equal(long, _usage_long_by_melt({"usage": usage}), check_exact=True)


def test_slots_read_each_build_s_rows_and_nothing_between_builds() -> None:
    with sql.registered({"t": pd.DataFrame({"k": ["a", "b"], "v": [1.0, 2.0]})}) as con:
        assert con.execute("SELECT k, v FROM t ORDER BY k").fetchall() == [("a", 1.0), ("b", 2.0)]
        cursor = con
    # Between builds the name is bound to nothing: a query naming it fails, reading no old rows.
    with pytest.raises(duckdb.Error, match="not part of the running feature build"):
        cursor.execute("SELECT * FROM t").fetchall()
    cursor.connection.execute("SELECT 1").fetchall()  # the failed query left the cursor usable
    # Another schema under the same name is read as such.
    with sql.registered({"t": pd.DataFrame({"w": pd.Series([None], dtype=object), "n": [4]})}) as con:
        assert con is cursor
        assert con.execute("SELECT w, n FROM t").fetchall() == [(None, 4)]


def test_a_frame_kept_as_pandas_replaces_a_slot_of_its_name() -> None:
    with sql.registered({"t": pd.DataFrame({"x": [1.0]})}) as con:
        assert con.execute("SELECT x FROM t").fetchall() == [(1.0,)]
    categorical = pd.DataFrame({"x": pd.Categorical(["p", "q"])})  # not converted to Arrow
    with sql.registered({"t": categorical}) as con:
        assert sorted(con.execute("SELECT CAST(x AS VARCHAR) FROM t").fetchall()) == [("p",), ("q",)]
    with pytest.raises(duckdb.Error):  # unregistered again on exit
        con.execute("SELECT * FROM t").fetchall()
    with sql.registered({"t": pd.DataFrame({"x": [5.0]})}) as con:  # and a slot again afterwards
        assert con.execute("SELECT x FROM t").fetchall() == [(5.0,)]
