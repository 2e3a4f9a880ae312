"""Shared plumbing of the DuckDB feature queries: input shaping, the as-of dates table, connections.

The queries themselves live next to their builders (features/opportunity.py, features/account.py,
features/labels.py). Only plain SQL constructs are used (joins with range conditions, window
functions, FILTER-free CASE aggregates, max_by/min_by) so that the same text could run on Spark.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

# Lower bound used as the "previous as-of" of the first date (buckets everything before it).
EPOCH_START = pd.Timestamp("1900-01-01")

AsOf = str | dt.date | dt.datetime | pd.Timestamp
AsOfArg = AsOf | Sequence[AsOf] | pd.DatetimeIndex | pd.Series


def to_timestamps(as_of: AsOfArg) -> list[pd.Timestamp]:
    """Normalise one or many as-of values to sorted unique timezone-naive UTC timestamps.

    A date (or a date string) means midnight of that day: rows dated that day at 00:00 are
    visible, later rows of the same day are not.

    Args:
        as_of: A date/datetime/string or a sequence of them.

    Returns:
        Sorted, de-duplicated timestamps.

    Raises:
        ValueError: an empty sequence or an unparseable value.
    """
    values: Iterable[Any]
    if isinstance(as_of, str | dt.date | dt.datetime | pd.Timestamp | np.datetime64):
        values = [as_of]
    else:
        values = list(as_of)
    stamps = []
    for value in values:
        stamp = pd.Timestamp(value)
        if pd.isna(stamp):
            raise ValueError(f"as_of: not a date: {value!r}")
        if stamp.tzinfo is not None:
            stamp = stamp.tz_convert("UTC").tz_localize(None)
        stamps.append(stamp)
    if not stamps:
        raise ValueError("as_of: no dates given")
    return sorted(set(stamps))


def dates_frame(as_of: AsOfArg, windows_days: Iterable[int] = ()) -> pd.DataFrame:
    """The as-of dates table joined by every feature query.

    Args:
        as_of: One or many as-of dates.
        windows_days: Window lengths; adds `start_<w>d` = as_of - w days (rows strictly after it
            and at or before as_of are in the window).

    Returns:
        Columns as_of, prev_as_of (previous date in the series, EPOCH_START for the first) and the
        window starts.
    """
    stamps = pd.Series(pd.to_datetime(to_timestamps(as_of)).astype("datetime64[ns]"))
    as_of_values = stamps.to_numpy()
    previous = np.empty_like(as_of_values)
    previous[0] = EPOCH_START.to_datetime64()
    previous[1:] = as_of_values[:-1]
    # Built as arrays and one constructor call (column insertion costs more than the rest here).
    columns = {"as_of": as_of_values, "prev_as_of": previous}
    for window in sorted(set(windows_days)):
        # pandas arithmetic (not numpy's): it raises on a date out of range instead of wrapping.
        columns[f"start_{window}d"] = (stamps - pd.Timedelta(days=int(window))).to_numpy()
    return pd.DataFrame(columns)


def shaped_table(
    tables: Mapping[str, pd.DataFrame],
    name: str,
    columns: Mapping[str, str],
    extra: Iterable[str] = (),
) -> pd.DataFrame:
    """Select only the columns a query needs, adding absent optional columns as nulls.

    Selecting columns explicitly keeps extra columns (e.g. `close_reason`, `churned_at`) out of
    every feature query, and lets optional tables/columns be missing.

    Args:
        tables: Canonical tables (features.data.Tables).
        name: Table name; a missing table gives an empty frame.
        columns: Column name -> kind ("str", "ts", "num").
        extra: Further columns to keep when present (kept as they are).

    Returns:
        A new frame with exactly `columns` (+ present `extra`) in canonical dtypes.
    """
    source = tables.get(name)
    if source is None:
        source = pd.DataFrame()
    n_rows = len(source)
    default_index = isinstance(source.index, pd.RangeIndex) and source.index.equals(pd.RangeIndex(n_rows))
    out: dict[str, Any] = {}
    for col, kind in columns.items():
        present = col in source.columns
        if present and kind != "str" and kind != "lstr" and source[col].dtype == _CANONICAL_DTYPE[kind]:
            # Already canonical (the loader's and the API's tables): the array as it is. Arrays, not
            # Series, go into the constructor below: on one-row frames that is most of its cost.
            out[col] = source[col].to_numpy()
            continue
        if (
            present
            and n_rows <= _SMALL_TEXT
            and (kind == "str" or kind == "lstr")
            and source[col].dtype == object
        ):
            out[col] = _text_array(source[col].to_numpy(), lower=kind == "lstr")
            continue
        if present:
            values = source[col] if default_index else source[col].reset_index(drop=True)
        else:
            values = pd.Series([None] * n_rows, dtype=object)
        if kind == "ts":
            # Already-canonical columns (naive ns timestamps) skip the parse: it would be a no-op.
            if values.dtype != "datetime64[ns]":
                values = pd.to_datetime(values, utc=True).dt.tz_localize(None).astype("datetime64[ns]")
        elif kind == "num":
            if values.dtype != "float64":
                values = pd.to_numeric(values, errors="raise").astype("float64")
        else:
            values = _as_text(values, lower=kind == "lstr")
        out[col] = values
    for col in extra:
        if col in source.columns and col not in out:
            out[col] = source[col] if default_index else source[col].reset_index(drop=True)
    # One constructor call instead of one insertion per column (the per-column cost dominates for
    # the one-record frames of the serving path).
    return pd.DataFrame(out, index=pd.RangeIndex(n_rows))


# Up to this many values, text is normalised in a plain loop: the vectorised pandas string methods
# cost ~0.1 ms per call whatever the length, which dominates on the serving path's few-row frames.
_SMALL_TEXT = 256


def _as_text(values: pd.Series, lower: bool) -> pd.Series:
    """str/None values (vectorised: canonical tables already hold str, so this is mostly a pass)."""
    text = values.astype(object)
    if len(text) <= _SMALL_TEXT:
        return pd.Series(
            [_text_value(v, lower) for v in text.tolist()], index=text.index, dtype=object, name=text.name
        )
    if pd.api.types.infer_dtype(text, skipna=True) not in ("string", "empty"):
        text = text.map(lambda v: None if pd.isna(v) else str(v))
    if lower:
        text = text.str.strip().str.lower()
    if text.isna().any():
        text = text.where(text.notna(), None)
    return text


_CANONICAL_DTYPE = {"ts": np.dtype("datetime64[ns]"), "num": np.dtype("float64")}


def _text_array(values: np.ndarray, lower: bool) -> np.ndarray:
    """`_as_text` of a few values, as an object array (without building a Series)."""
    text = np.empty(len(values), dtype=object)
    text[:] = [_text_value(v, lower) for v in values.tolist()]
    return text


def _text_value(value: Any, lower: bool) -> str | None:
    """One value as `_as_text` treats it: missing -> None, else str (stripped lower case if asked)."""
    if pd.isna(value):
        return None
    text = value if isinstance(value, str) else str(value)
    return text.strip().lower() if lower else text


def connect() -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB connection (one per build; frames are registered on it)."""
    con = duckdb.connect(database=":memory:")
    _quiet(con)
    return con


def _quiet(con: duckdb.DuckDBPyConnection) -> None:
    # Inside Jupyter without ipywidgets DuckDB refuses to touch the progress-bar setting at all (and
    # draws no bar there either); the setting is cosmetic, so a refusal is not an error.
    with contextlib.suppress(duckdb.InvalidInputException):
        # library code: no terminal output (fetched so that no unfinished result stays on `con`)
        con.execute("SET enable_progress_bar = false").fetchall()


# Opening an in-memory database costs ~20 ms, more than the whole query on one record, so feature
# builds share one database per process and each thread works on its own cursor (a DuckDB
# connection object must not be used by two threads at once; registered frames are per cursor).
#
# Builds over few rows (the API's request records) use a second database limited to one DuckDB
# thread, with cursors that skip the query optimizer: on inputs this small a query's operators have
# nothing to split and no plan choice pays for its planning time, which is most of a one-record build
# (measured on a one-record opportunity build: one thread ~40 % less CPU, then no optimizer ~1/3 less
# again). Neither changes results (tests/features/test_sql_statement_cache.py compares both ways);
# big builds keep DuckDB's default parallelism and optimizer.
SMALL_BUILD_ROWS = 20_000
_DATABASE_LOCK = threading.Lock()
_databases: dict[bool, tuple[int, duckdb.DuckDBPyConnection]] = {}
_thread_state = threading.local()


def _shared_database(small: bool = False) -> duckdb.DuckDBPyConnection:
    """The process's shared in-memory database (for small or other builds), opened on first use.

    Opened again after a fork: a DuckDB database must not be shared across processes.
    """
    with _DATABASE_LOCK:
        cached = _databases.get(small)
        if cached is None or cached[0] != os.getpid():
            con = connect()
            if small:
                con.execute("SET threads = 1").fetchall()
            cached = (os.getpid(), con)
            _databases[small] = cached
        return cached[1]


def _thread_connections() -> dict[bool, tuple[int, ParsedStatementConnection]]:
    connections = getattr(_thread_state, "connections", None)
    if connections is None:
        connections = {}
        _thread_state.connections = connections
    return connections


def _thread_cursor(small: bool = False) -> ParsedStatementConnection:
    """This thread's cursor on the shared (small or other) database, with its statement cache."""
    connections = _thread_connections()
    cached = connections.get(small)
    if cached is None or cached[0] != os.getpid():
        cursor = _shared_database(small).cursor()
        _quiet(cursor)
        if small:
            cursor.execute("PRAGMA disable_optimizer").fetchall()
        cached = (os.getpid(), ParsedStatementConnection(cursor))
        connections[small] = cached
    return cached[1]


@contextlib.contextmanager
def registered(frames: Mapping[str, pd.DataFrame]) -> Iterator[ParsedStatementConnection]:
    """A DuckDB connection with `frames` registered under their names, for one feature build.

    The connection is this thread's reusable cursor (on the one-thread database, without the
    optimizer, when the frames hold at most SMALL_BUILD_ROWS rows in all). On exit the cursor lets
    go of the frames: it holds no reference to them and the next build cannot see them (a query
    naming one fails). Its `execute` parses a given SQL text once per cursor (see
    `ParsedStatementConnection`).

    Small builds bind their frames (as Arrow tables) into the cursor's `ArrowSlot`s, registered once
    per name; other builds register each frame and unregister it on exit. (Registering and
    unregistering a view are two catalog transactions, ~0.6 ms per relation: about a tenth of a
    one-record build.)

    Args:
        frames: Relation name -> frame.

    Yields:
        The connection to run queries on (only inside the `with` block).
    """
    small = sum(len(frame) for frame in frames.values()) <= SMALL_BUILD_ROWS
    con = _thread_cursor(small)
    bound: list[str] = []
    names: list[str] = []
    try:
        for name, frame in frames.items():
            relation = _arrow_relation(frame) if small else frame
            if isinstance(relation, pa.Table):
                con.bind_arrow(name, relation)
                bound.append(name)
            else:
                con.register_frame(name, relation)
                names.append(name)
        yield con
    except BaseException:
        _drop_thread_cursor(small)
        raise
    try:
        for name in bound:
            con.release(name)
        for name in names:
            con.unregister(name)
    except duckdb.Error:
        _drop_thread_cursor(small)


class ArrowSlot:
    """A relation registered once on a cursor whose rows are rebound for each build.

    DuckDB reads a registered object through the Arrow PyCapsule stream protocol each time a query
    binds and scans it, so swapping `table` changes what the next query reads, schema included,
    without the catalog transactions of a new registration. Between builds `table` is None and a
    query naming the relation fails instead of reading an earlier build's rows.

    Attributes:
        name: The relation name (for the error message).
        table: The rows of the running build, or None.
    """

    __slots__ = ("name", "table")

    def __init__(self, name: str, table: pa.Table) -> None:
        """A slot holding `table`."""
        self.name = name
        self.table: pa.Table | None = table

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        """The bound table's Arrow stream (PyCapsule protocol).

        Raises:
            LookupError: No build has bound rows to this relation.
        """
        if self.table is None:
            raise LookupError(f"relation {self.name!r} is not part of the running feature build")
        return self.table.__arrow_c_stream__(requested_schema)


def _arrow_relation(frame: pd.DataFrame) -> pa.Table | pd.DataFrame:
    """A small frame as an Arrow table with the column types DuckDB's pandas scan reads it with.

    An Arrow table can be bound to an `ArrowSlot` (no registration per build), and it states its
    column types where DuckDB's pandas scan inspects object columns value by value. NaN/NaT become
    NULL, as the pandas scan reads them. Text columns are VARCHAR even when empty or all missing
    (the pandas scan says "NULL" type there; either way every value is NULL, and VARCHAR lets the
    result keep its text type).

    Args:
        frame: A shaped input frame (object text, float64/int64/bool numbers, datetime64 times).

    Returns:
        The Arrow table, or `frame` itself when a column is of another kind (kept as pandas reads it).
    """
    if not frame.columns.is_unique:
        return frame
    arrays = []
    for name, dtype in frame.dtypes.items():
        if not isinstance(dtype, np.dtype):
            return frame  # an extension dtype (category, nullable integer, ...): pandas reads it its way
        values = frame[name].to_numpy()
        kind = dtype.kind
        if kind == "O":
            # Arrow would turn other objects (numbers, dates) into their text: not what pandas reads.
            if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
                return frame
            arrays.append(pa.array(values, type=pa.string(), from_pandas=True))
        elif kind in "fiubM":
            arrays.append(pa.array(values, from_pandas=True))
        else:
            return frame
    return pa.Table.from_arrays(arrays, names=[str(name) for name in frame.columns])


# Parsed statements kept per cursor: the builders' few query texts, times the distinct feature
# parameter sets a process uses; past this many the least recently used one is parsed again.
_MAX_PARSED_STATEMENTS = 32


class ParsedStatementConnection:
    """A DuckDB connection whose `execute` parses each distinct SQL text only once.

    Parsing the feature builders' large SQL texts costs about as much as running them on the
    one-record tables of an API request. Only the parse is reused: DuckDB binds, plans and optimises
    a statement on every execution, against the relations registered at that moment, so a cached
    statement can never answer from the data of an earlier build. (A SQL `PREPARE`d plan is no
    shortcut: DuckDB re-binds table-reading prepared statements on every `EXECUTE`, and a plan
    reused across changed data would be stale.)

    Everything other than `execute` is the wrapped connection's own.

    Attributes:
        connection: The wrapped DuckDB connection (a per-thread cursor).
    """

    def __init__(self, connection: duckdb.DuckDBPyConnection) -> None:
        """Wrap `connection` with an empty statement cache."""
        self.connection = connection
        self._statements: OrderedDict[str, duckdb.Statement] = OrderedDict()
        self._slots: dict[str, ArrowSlot] = {}

    def bind_arrow(self, name: str, table: pa.Table) -> None:
        """Make `name` read `table` (registering an `ArrowSlot` under that name on first use)."""
        slot = self._slots.get(name)
        if slot is None:
            slot = ArrowSlot(name, table)
            self.connection.register(name, slot)
            self._slots[name] = slot
        else:
            slot.table = table

    def release(self, name: str) -> None:
        """Unbind `name`'s rows: the slot keeps no reference to them and reading it fails."""
        self._slots[name].table = None

    def register_frame(self, name: str, frame: Any) -> None:
        """Register `frame` as `name` (replacing a slot of that name, which is then forgotten)."""
        self._slots.pop(name, None)
        self.connection.register(name, frame)

    def execute(self, query: str, parameters: Any = None) -> duckdb.DuckDBPyConnection:
        """Run one SQL text (parsed on first use) as `DuckDBPyConnection.execute` does.

        Args:
            query: SQL text; a text holding several statements is run as given, uncached.
            parameters: Prepared-statement parameters, as for DuckDB's `execute`.

        Returns:
            The connection, holding the result (`.df()`, `.fetchall()`, ...).
        """
        statement = self._statements.get(query)
        if statement is None:
            parsed = self.connection.extract_statements(query)
            if len(parsed) != 1:
                return self.connection.execute(query, parameters)
            statement = parsed[0]
            self._statements[query] = statement
            if len(self._statements) > _MAX_PARSED_STATEMENTS:
                self._statements.popitem(last=False)
        else:
            self._statements.move_to_end(query)
        return self.connection.execute(statement, parameters)

    def cached_statements(self) -> int:
        """Number of SQL texts parsed and kept (for tests and diagnostics)."""
        return len(self._statements)

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this class lacks: register, df, fetchall, sql, ...
        return getattr(self.connection, name)


def _drop_thread_cursor(small: bool) -> None:
    """Forget (and close) this thread's cursor on one database; the next build opens a new one.

    Used when a build failed or left a half-read result: DuckDB refuses further work on a cursor with
    an unfinished result, and closing it also drops whatever was still registered on it (and its
    parsed statements go with it).
    """
    cached = _thread_connections().pop(small, None)
    if cached is not None:
        with contextlib.suppress(duckdb.Error):
            cached[1].connection.close()


def days_between(start: str, end: str) -> str:
    """SQL expression: fractional days from `start` to `end` (both timestamp expressions)."""
    return f"((epoch({end}) - epoch({start})) / 86400.0)"


def finish_frame(frame: pd.DataFrame, string_columns: Iterable[str]) -> pd.DataFrame:
    """Canonical dtypes for a query result: as_of ns timestamps, str/None ids, float64 numbers."""
    string_columns = set(string_columns)
    if not (isinstance(frame.index, pd.RangeIndex) and frame.index.equals(pd.RangeIndex(len(frame)))):
        frame = frame.reset_index(drop=True)
    out: dict[str, Any] = {}
    for col in frame.columns:
        values = frame[col]
        if col == "as_of":
            if values.dtype != "datetime64[ns]":
                values = pd.to_datetime(values).astype("datetime64[ns]")
        elif col in string_columns:
            values = values.astype(object)
            if values.isna().any():
                values = values.where(values.notna(), None)
        elif col.startswith("label_") and values.dtype == bool:
            pass
        elif values.dtype != "float64":
            values = pd.to_numeric(values, errors="coerce").astype("float64")
        out[col] = values
    # Built in one constructor call: per-column insertion is the main fixed cost on small results.
    return pd.DataFrame(out, index=pd.RangeIndex(len(frame)), columns=list(frame.columns))


# Result column types `fetch_canonical` converts itself; any other type falls back to `.df()` +
# `finish_frame` (e.g. DECIMAL, BOOLEAN, DATE: not produced by the feature queries).
_NUMERIC_RESULT_TYPES = frozenset(
    {
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "HUGEINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
        "FLOAT",
        "DOUBLE",
    }
)


def fetch_canonical(result: Any, string_columns: Iterable[str]) -> dict[str, np.ndarray]:
    """A query result's columns as canonical arrays: what `finish_frame(result.df(), ...)` holds.

    `.df()` builds a DataFrame column by column (with nullable extension dtypes for integer columns
    holding NULLs) only for `finish_frame` to rebuild it; on the few-row results of the serving path
    that double construction cost about as much as running the query. This reads the columns once
    as numpy arrays (`fetchnumpy`) and converts each the way `finish_frame` does.

    Args:
        result: A DuckDB connection holding an executed query's result.
        string_columns: Columns to return as object arrays of str/None (the others are numeric,
            except `as_of`, a timestamp).

    Returns:
        Column name -> array in result column order: `as_of` datetime64[ns], string columns object
        (None for NULL), every other column float64 (NaN for NULL).
    """
    string_columns = set(string_columns)
    types = [(name, str(kind)) for name, kind, *_ in result.description]
    if not all(_convertible(name, kind, string_columns) for name, kind in types):
        frame = finish_frame(result.df(), string_columns)
        return {name: frame[name].to_numpy() for name in frame.columns}
    raw = result.fetchnumpy()
    out: dict[str, np.ndarray] = {}
    for name, _ in types:
        values = raw[name]
        masked = isinstance(values, np.ma.MaskedArray)
        if name == "as_of":
            out[name] = values.filled(np.datetime64("NaT", "ns")) if masked else values
        elif name in string_columns:
            if masked:
                values = np.where(np.ma.getmaskarray(values), None, values.data)
            out[name] = _none_for_missing(values)
        elif masked:
            # np.where on the plain arrays: MaskedArray's own astype/filled cost ~4x more per column.
            out[name] = np.where(np.ma.getmaskarray(values), np.nan, np.ma.getdata(values).astype("float64"))
        else:
            out[name] = values.astype("float64", copy=False)
    return out


def _none_for_missing(values: np.ndarray) -> np.ndarray:
    """An object array with None wherever `pd.isna` holds (as `finish_frame` makes text columns)."""
    if len(values) <= _SMALL_TEXT:
        cells = [None if value is None or pd.isna(value) else value for value in values.tolist()]
        text = np.empty(len(cells), dtype=object)
        text[:] = cells
        return text
    series = pd.Series(values, dtype=object)
    return series.where(series.notna(), None).to_numpy()


def _convertible(name: str, kind: str, string_columns: set[str]) -> bool:
    """Whether `fetch_canonical` converts a result column of DuckDB type `kind` itself."""
    if name == "as_of":
        return kind == "TIMESTAMP_NS"
    if name in string_columns:
        return kind == "VARCHAR"
    return kind in _NUMERIC_RESULT_TYPES


def canonical_frame(columns: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """One DataFrame (default RangeIndex) from canonical column arrays, in one constructor call."""
    n_rows = len(next(iter(columns.values()))) if columns else 0
    return pd.DataFrame(dict(columns), index=pd.RangeIndex(n_rows), columns=list(columns))
