"""Shared plumbing of the DuckDB feature queries: input shaping, the as-of dates table, connections.

The queries themselves live next to their builders (features/opportunity.py, features/account.py,
features/labels.py). Only plain SQL constructs are used (joins with range conditions, window
functions, FILTER-free CASE aggregates, max_by/min_by) so that the same text could run on Spark.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import duckdb
import numpy as np
import pandas as pd

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
    stamps = to_timestamps(as_of)
    frame = pd.DataFrame({"as_of": pd.to_datetime(stamps).astype("datetime64[ns]")})
    frame["prev_as_of"] = frame["as_of"].shift(1).fillna(EPOCH_START).astype("datetime64[ns]")
    for window in sorted(set(windows_days)):
        frame[f"start_{window}d"] = frame["as_of"] - pd.Timedelta(days=int(window))
    return frame


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
    out = pd.DataFrame(index=source.index)
    for col, kind in columns.items():
        values = source[col] if col in source.columns else pd.Series(None, index=source.index, dtype=object)
        if kind == "ts":
            values = pd.to_datetime(values, utc=True).dt.tz_localize(None).astype("datetime64[ns]")
        elif kind == "num":
            values = pd.to_numeric(values, errors="raise").astype("float64")
        else:
            values = _as_text(values, lower=kind == "lstr")
        out[col] = values
    for col in extra:
        if col in source.columns and col not in out.columns:
            out[col] = source[col]
    return out.reset_index(drop=True)


def _as_text(values: pd.Series, lower: bool) -> pd.Series:
    """str/None values (vectorised: canonical tables already hold str, so this is mostly a pass)."""
    text = values.astype(object)
    if pd.api.types.infer_dtype(text, skipna=True) not in ("string", "empty"):
        text = text.map(lambda v: None if pd.isna(v) else str(v))
    if lower:
        text = text.str.strip().str.lower()
    if text.isna().any():
        text = text.where(text.notna(), None)
    return text


def connect() -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB connection (one per build; frames are registered on it)."""
    con = duckdb.connect(database=":memory:")
    # Inside Jupyter without ipywidgets DuckDB refuses to touch the progress-bar setting at all (and
    # draws no bar there either); the setting is cosmetic, so a refusal is not an error.
    with contextlib.suppress(duckdb.InvalidInputException):
        con.execute("SET enable_progress_bar = false")  # library code: no terminal output
    return con


def days_between(start: str, end: str) -> str:
    """SQL expression: fractional days from `start` to `end` (both timestamp expressions)."""
    return f"((epoch({end}) - epoch({start})) / 86400.0)"


def finish_frame(frame: pd.DataFrame, string_columns: Iterable[str]) -> pd.DataFrame:
    """Canonical dtypes for a query result: as_of ns timestamps, str/None ids, float64 numbers."""
    out = frame.copy()
    string_columns = set(string_columns)
    for col in out.columns:
        if col == "as_of":
            out[col] = pd.to_datetime(out[col]).astype("datetime64[ns]")
        elif col in string_columns:
            out[col] = out[col].astype(object).where(out[col].notna(), None)
        elif col.startswith("label_") and out[col].dtype == bool:
            continue
        else:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype("float64")
    return out.reset_index(drop=True)
