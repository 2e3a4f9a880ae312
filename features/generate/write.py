"""Writing the generated tables: CSV (ISO-8601 text) or Parquet, chunk by chunk, byte-reproducible."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

BOOL_COLUMNS: frozenset[str] = frozenset({"auto_renew", "replied", "first_contact_resolved"})
"""Columns holding 0/1/NaN that are written as true/false/empty in CSV."""


def _csv_ready(frame: pd.DataFrame, date_columns: tuple[str, ...]) -> pd.DataFrame:
    """Timestamps as ISO-8601 text (dates or datetimes), booleans as true/false."""
    out = frame.copy(deep=False)
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_datetime64_any_dtype(values):
            raw = values.to_numpy(dtype="datetime64[s]")
            text = np.datetime_as_string(raw, unit="D" if column in date_columns else "s")
            out[column] = np.where(np.isnat(raw), "", text).astype(object)
        elif column in BOOL_COLUMNS:
            numbers = values.to_numpy(dtype=np.float64)
            out[column] = np.where(np.isnan(numbers), "", np.where(numbers > 0.5, "true", "false")).astype(
                object
            )
    return out


def _arrow_ready(frame: pd.DataFrame, date_columns: tuple[str, ...]) -> pa.Table:
    """Arrow table: dates as date32, datetimes as timestamp[s], no pandas metadata."""
    arrays, names = [], []
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_datetime64_any_dtype(values):
            raw = values.to_numpy(dtype="datetime64[s]")
            if column in date_columns:
                arrays.append(pa.array(raw.astype("datetime64[D]"), mask=np.isnat(raw), type=pa.date32()))
            else:
                arrays.append(pa.array(raw, mask=np.isnat(raw), type=pa.timestamp("s")))
        elif values.dtype == object:
            arrays.append(pa.array(values.to_numpy(), type=pa.string(), from_pandas=True))
        else:
            arrays.append(pa.array(values, from_pandas=True))
        names.append(column)
    return pa.Table.from_arrays(arrays, names=names)


def write_table(
    directory: Path,
    name: str,
    chunks: pd.DataFrame | Iterable[pd.DataFrame],
    fmt: str,
    date_columns: tuple[str, ...] = (),
) -> int:
    """Write one table (a DataFrame or an iterable of chunks) as `<directory>/<name>.<fmt>`.

    Returns:
        Number of rows written.
    """
    if isinstance(chunks, pd.DataFrame):
        chunks = [chunks]
    path = directory / f"{name}.{fmt}"
    rows = 0
    if fmt == "csv":
        with path.open("w", encoding="utf-8", newline="") as handle:
            for index, frame in enumerate(chunks):
                _csv_ready(frame, date_columns).to_csv(
                    handle, index=False, header=index == 0, lineterminator="\n"
                )
                rows += len(frame)
        return rows
    writer: pq.ParquetWriter | None = None
    try:
        for frame in chunks:
            table = _arrow_ready(frame, date_columns)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            writer.write_table(table.cast(writer.schema))
            rows += len(frame)
    finally:
        if writer is not None:
            writer.close()
    return rows
