"""Loading, validating and canonicalising CRM tables against the data contract.

`validate_tables` does all the work on in-memory raw DataFrames (the API and the tests use it);
`load_tables` only reads files and hands them over. Canonical dtypes are those described in
ARCHITECTURE.md and `features.contract`.

Row numbers in messages: for CSV files they are line numbers (the header is line 1, so the first
data row is 2; a quoted value spanning several lines shifts later numbers); for Parquet files and
in-memory tables they are 1-based row positions.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from features.contract import ALWAYS_REQUIRED, KIND_EXPECTATIONS, TABLES, ColumnSpec, TableSpec

Tables = dict[str, pd.DataFrame]

FILE_SUFFIXES: tuple[str, ...] = (".csv", ".parquet")
SAMPLE_SIZE = 3
"""How many row numbers and values an issue quotes."""

_ISO_RE = (
    r"^\d{4}-\d{2}-\d{2}"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?(?P<zone>[Zz]|[+-]\d{2}(?::?\d{2})?)?)?$"
)
_ZONE_RE = r"[T ]\d{2}:\d{2}.*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$"
_ARROW_TEXT = "string[pyarrow]"
_TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1", "1.0"})
_FALSE_WORDS = frozenset({"false", "f", "no", "n", "0", "0.0"})


class DataValidationError(ValueError):
    """A dataset cannot be used; the message names file, column, rows and the expectation.

    Attributes:
        report: The validation report up to the failure (``None`` when it failed before any
            table was read).
    """

    def __init__(self, message: str, report: ValidationReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class Issue:
    """One problem found in one column of one table.

    Attributes:
        table: Canonical table name.
        column: Column name (several joined by ", " for a composite key), or None for table-level.
        rule: Machine-readable rule, e.g. ``unparsable``, ``missing_value``, ``duplicate_key``,
            ``orphan``, ``unknown_value``, ``not_numeric_metric``.
        count: Number of rows affected.
        rows: The first few row numbers (see module docstring for the numbering).
        values: The first few offending values, as text.
        action: ``dropped`` (rows removed), ``nulled`` (value set missing, row kept), ``kept``
            (nothing changed, informational) or ``fatal``.
        message: One-line human-readable description.
    """

    table: str
    column: str | None
    rule: str
    count: int
    rows: list[int]
    values: list[str]
    action: Literal["dropped", "nulled", "kept", "fatal"]
    message: str


@dataclass
class ValidationReport:
    """What validation found: fatal errors, skipped/cleaned rows, and row counts per table."""

    errors: list[Issue] = field(default_factory=list)
    skipped: list[Issue] = field(default_factory=list)
    rows_in: dict[str, int] = field(default_factory=dict)
    rows_out: dict[str, int] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    unknown_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Per table, the skipped rows whose record is gone from the loaded table: ``row`` (numbered as in
    #: the messages), the table's key (None when the key itself was unusable), the references to parent
    #: tables, and ``reason`` (every problem of that row, with its own value). A row skipped as a
    #: duplicate of a kept key is not a lost record and is not listed.
    dropped: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when there is no fatal error."""
        return not self.errors

    def summary_lines(self) -> list[str]:
        """Human-readable lines: per-table counts, then skipped rows, notes and errors."""
        lines = [f"{'table':<22}{'rows in':>12}{'rows out':>12}  source"]
        for table, n_in in self.rows_in.items():
            n_out = self.rows_out.get(table)
            shown_out = f"{n_out:,}" if n_out is not None else "-"
            lines.append(f"{table:<22}{n_in:>12,}{shown_out:>12}  {self.sources.get(table, '')}")
        if self.unknown_files:
            lines.append(f"ignored (not a contract table): {', '.join(self.unknown_files)}")
        for note in self.notes:
            lines.append(f"note: {note}")
        if self.skipped:
            lines.append(f"warnings ({len(self.skipped)}): rows skipped or values cleaned")
            lines.extend(f"  - [{issue.action}] {issue.message}" for issue in self.skipped)
        if self.errors:
            lines.append(f"errors ({len(self.errors)}):")
            lines.extend(f"  - {issue.message}" for issue in self.errors)
        return lines

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form of the report."""
        return {
            "ok": self.ok,
            "errors": [asdict(issue) for issue in self.errors],
            "skipped": [asdict(issue) for issue in self.skipped],
            "rows_in": dict(self.rows_in),
            "rows_out": dict(self.rows_out),
            "sources": dict(self.sources),
            "unknown_files": list(self.unknown_files),
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- value parsing


def _text(values: pd.Series) -> pd.Series:
    """Arrow-backed stripped text of any column (empty -> NA); integral floats lose their '.0'.

    Arrow strings keep the string work (strip, regex, lower-case) vectorised in C++.
    """
    if pd.api.types.is_float_dtype(values):
        as_text = values.map(
            lambda v: None if pd.isna(v) else (str(int(v)) if float(v).is_integer() else repr(v))
        )
        return as_text.astype(_ARROW_TEXT)
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.map(lambda v: None if pd.isna(v) else v.isoformat()).astype(_ARROW_TEXT)
    if values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
        # Mixed Python objects (e.g. JSON numbers in an id column): str() each present value.
        values = values.map(lambda v: v if v is None or isinstance(v, str) or pd.isna(v) else str(v))
    text = values.astype(_ARROW_TEXT).str.strip()
    return text.mask(text == "")


def _to_object(text: pd.Series) -> pd.Series:
    """Canonical text column: object dtype holding str, missing = None."""
    return pd.Series(text.to_numpy(dtype=object, na_value=None), index=text.index, dtype=object)


def _clean_strings(values: pd.Series) -> pd.Series:
    """Text form of any column: stripped str, empty -> None, integral floats without '.0'."""
    return _to_object(_text(values))


def _present(text: pd.Series) -> pd.Series:
    return text.notna().astype(bool)


def _parse_timestamps(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Parse to naive-UTC datetime64[ns]; returns (parsed, bad) where bad = present but invalid."""
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
        if getattr(parsed.dt, "tz", None) is not None:
            parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
        return parsed.astype("datetime64[ns]"), pd.Series(False, index=values.index)
    inferred = pd.api.types.infer_dtype(values, skipna=True)
    if inferred in ("datetime", "date", "datetime64"):
        values = values.map(lambda v: v.isoformat() if isinstance(v, datetime | date) else v)
    text = _text(values).str.replace(",", ".", regex=False)
    present = _present(text)
    well_formed = text.str.match(_ISO_RE).fillna(False).astype(bool)
    has_zone = well_formed & text.str.contains(_ZONE_RE).fillna(False).astype(bool)
    parsed = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    naive_rows = well_formed & ~has_zone
    if naive_rows.any():
        naive = pd.to_datetime(_to_object(text[naive_rows]), format="ISO8601", errors="coerce")
        parsed.loc[naive_rows] = naive.astype("datetime64[ns]")
    if has_zone.any():
        # Zoned values are parsed separately: pandas applies one value's offset to naive neighbours.
        aware = pd.to_datetime(_to_object(text[has_zone]), format="ISO8601", utc=True, errors="coerce")
        parsed.loc[has_zone] = aware.dt.tz_localize(None).astype("datetime64[ns]")
    bad = present & parsed.isna()
    return parsed, bad


def _parse_numbers(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Parse to float64; non-finite or non-numeric present values are bad."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        parsed = pd.Series(values.to_numpy(dtype="float64", na_value=np.nan), index=values.index)
        bad = values.notna() & ~np.isfinite(parsed.fillna(0.0))
        return parsed.where(~bad), bad
    text = _text(values)
    numbers = pd.to_numeric(_to_object(text), errors="coerce")
    parsed = pd.Series(np.asarray(numbers, dtype="float64"), index=values.index)
    bad = _present(text) & (parsed.isna() | ~np.isfinite(parsed.fillna(0.0)))
    return parsed.where(~bad), bad


def _parse_bools(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Parse to float64 0/1/NaN."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        parsed = pd.Series(values.to_numpy(dtype="float64", na_value=np.nan), index=values.index)
        bad = parsed.notna() & ~parsed.isin([0.0, 1.0])
        return parsed.where(~bad), bad
    text = _text(values)
    lowered = text.str.lower()
    parsed = pd.Series(np.nan, index=values.index, dtype="float64")
    parsed[lowered.isin(_TRUE_WORDS).fillna(False).astype(bool)] = 1.0
    parsed[lowered.isin(_FALSE_WORDS).fillna(False).astype(bool)] = 0.0
    bad = _present(text) & parsed.isna()
    return parsed, bad


def _parse_labels(values: pd.Series, column: ColumnSpec) -> tuple[pd.Series, pd.Series]:
    """ids, text, categories and enums: cleaned str; enums must be in `allowed`."""
    text = _text(values)
    if column.kind == "enum" or (column.kind == "category" and column.lowercase):
        text = text.str.lower()
    if column.kind == "enum":
        bad = _present(text) & ~text.isin(column.allowed).fillna(False).astype(bool)
    else:
        bad = pd.Series(False, index=values.index)
    return _to_object(text), bad


def _parse_column(values: pd.Series, column: ColumnSpec) -> tuple[pd.Series, pd.Series]:
    if column.kind == "timestamp":
        return _parse_timestamps(values)
    if column.kind == "number":
        return _parse_numbers(values)
    if column.kind == "bool":
        return _parse_bools(values)
    return _parse_labels(values, column)


def _infer_extra_column(name: str, values: pd.Series) -> pd.Series:
    """Text extra column (e.g. from CSV): numeric when every value is a plain number, else text.

    Ids (``*_id``) and codes with leading zeros ("007") stay text so that they are kept unchanged.
    """
    text = _clean_strings(values)
    if name.endswith("_id") or text.isna().all():
        return text
    numbers, bad = _parse_numbers(text)
    leading_zero = _text(text).str.match(r"^[+-]?0\d").fillna(False).astype(bool)
    if bad.any() or leading_zero.any():
        return text
    return numbers


def _empty_column(column: ColumnSpec, n_rows: int) -> pd.Series:
    if column.kind == "timestamp":
        return pd.Series(pd.NaT, index=range(n_rows), dtype="datetime64[ns]")
    if column.kind in ("number", "bool"):
        return pd.Series(np.nan, index=range(n_rows), dtype="float64")
    return pd.Series([None] * n_rows, index=range(n_rows), dtype=object)


def _expectation(column: ColumnSpec) -> str:
    if column.kind == "enum":
        allowed = ", ".join(column.allowed)
        return f"one of {allowed}" if column.required else f"one of {allowed} (or empty)"
    return KIND_EXPECTATIONS[column.kind]


# --------------------------------------------------------------------------- issue bookkeeping


def _format_rows(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:SAMPLE_SIZE])
    extra = len(rows) - SAMPLE_SIZE
    noun = "row" if len(rows) == 1 else "rows"
    return f"{noun} {shown}" + (f" (+{extra} more)" if extra > 0 else "")


def _sample_values(values: pd.Series) -> list[str]:
    sample: list[str] = []
    for value in values:
        text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
        if text not in sample:
            sample.append(text)
        if len(sample) == SAMPLE_SIZE:
            break
    return sample


class _TableCheck:
    """Accumulates the problems of one table while it is being canonicalised."""

    def __init__(self, table: str, source: str, row_numbers: np.ndarray) -> None:
        self.table = table
        self.source = source
        self.row_numbers = row_numbers
        self.drop = np.zeros(len(row_numbers), dtype=bool)
        self.touched = np.zeros(len(row_numbers), dtype=bool)
        # Orphans whose parent row was itself skipped: reported, but the problem is counted upstream.
        self.cascaded = np.zeros(len(row_numbers), dtype=bool)
        self.issues: list[Issue] = []
        # Each dropping problem, to say per row why it went (see `lost_rows`).
        self._drop_reasons: list[tuple[np.ndarray, pd.Series, str, str, str, pd.Series | None]] = []

    def record(
        self,
        mask: np.ndarray,
        raw_values: pd.Series,
        *,
        column: str,
        rule: str,
        action: Literal["dropped", "nulled", "kept"],
        expected: str,
        got_suffix: str = "",
        from_skipped_parent: pd.Series | None = None,
    ) -> None:
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        if action == "dropped":
            self._drop_reasons.append((mask, raw_values, column, rule, expected, from_skipped_parent))
        rows = self.row_numbers[mask]
        values = _sample_values(raw_values[mask])
        got = f"got '{values[0]}'" if values and values[0] != "" else "got an empty value"
        message = (
            f"{self.source}: column '{column}', {_format_rows(rows)}: expected {expected}, {got}{got_suffix}"
        )
        if action == "dropped":
            message += f" ({int(mask.sum())} row{'s' if mask.sum() != 1 else ''} skipped)"
        elif action == "nulled":
            message += f" (value{'s' if mask.sum() != 1 else ''} set to missing)"
        self.issues.append(
            Issue(
                table=self.table,
                column=column,
                rule=rule,
                count=int(mask.sum()),
                rows=[int(r) for r in rows[:SAMPLE_SIZE]],
                values=values,
                action=action,
                message=message,
            )
        )
        self.touched |= mask
        if action == "dropped":
            self.drop |= mask

    def lost_rows(
        self, table: pd.DataFrame, spec: TableSpec, parent_table_of: Mapping[str, str]
    ) -> pd.DataFrame:
        """The dropped rows whose key did not survive, with every reason (see ``ValidationReport.dropped``).

        Args:
            table: The canonical table before dropping (same positions as the raw rows).
            spec: Its contract spec.
            parent_table_of: Reference column -> parent table, to word the cascade.
        """
        key = spec.primary_key[0] if len(spec.primary_key) == 1 else None
        refs = [ref.column for ref in spec.parents]
        lost = self.drop.copy()
        if key is not None:
            kept_keys = set(table.loc[~self.drop, key].dropna())
            lost &= ~table[key].isin(kept_keys).to_numpy()
        positions = np.flatnonzero(lost)
        reasons = []
        # Only the lost rows (a few percent at most: more is fatal), so a loop is fine here.
        for position in positions.tolist():
            parts = []
            for mask, raw_values, column, rule, expected, from_parent in self._drop_reasons:
                if not mask[position]:
                    continue
                value = raw_values.iloc[position]
                got = "an empty value" if pd.isna(value) or str(value).strip() == "" else repr(str(value))
                part = f"column '{column}' ({rule}): expected {expected}, got {got}"
                if from_parent is not None and bool(from_parent.get(position, False)):
                    part += f" (that {parent_table_of.get(column, 'parent')} row was itself skipped by validation)"
                parts.append(part)
            reasons.append(
                f"skipped by validation: {self.source} row {int(self.row_numbers[position])}: "
                + "; ".join(parts)
            )
        columns = {"row": self.row_numbers[positions].astype("int64")}
        if key is not None:
            columns[key] = table[key].iloc[positions].to_numpy(dtype=object)
        for ref in refs:
            if ref != key:
                columns[ref] = table[ref].iloc[positions].to_numpy(dtype=object)
        columns["reason"] = np.asarray(reasons, dtype=object)
        return pd.DataFrame(columns)


# --------------------------------------------------------------------------- validation


def _separator_hint(header: list[str]) -> str | None:
    """Why a one-column header without commas is not comma-separated (e.g. "looks ';'-separated"), or None."""
    if len(header) != 1 or "," in header[0]:
        return None
    for separator, label in ((";", "';'"), ("\t", "tab"), ("|", "'|'")):
        if separator in header[0]:
            return f"looks {label}-separated; CSV files must be comma-separated"
    return None


def _match_column_case(
    spec: TableSpec, raw: pd.DataFrame, source: str, report: ValidationReport
) -> pd.DataFrame:
    """Rename columns that differ from a contract column only in case (``Account_Id``), with a note.

    Only an unambiguous match is renamed: the contract name itself is absent and exactly one
    column spells it in another case. Values are untouched, so the rename cannot change data.
    """
    present = set(raw.columns)
    renames: dict[str, str] = {}
    for name in spec.column_names:
        if name in present:
            continue
        matches = [str(c) for c in raw.columns if str(c).lower() == name.lower()]
        if len(matches) == 1:
            renames[matches[0]] = name
    if not renames:
        return raw
    report.notes.append(
        f"{source}: column names matched ignoring case: "
        + ", ".join(f"{old} -> {new}" for old, new in renames.items())
    )
    return raw.rename(columns=renames)


def _validate_one(
    spec: TableSpec,
    raw: pd.DataFrame,
    source: str,
    first_row_number: int,
    parent_keys: Mapping[str, set[str]],
    dropped_keys: Mapping[str, set[str]],
    report: ValidationReport,
) -> tuple[pd.DataFrame, _TableCheck]:
    raw = raw.reset_index(drop=True)
    raw.columns = [str(name).strip().lstrip("\ufeff") for name in raw.columns]
    raw = _match_column_case(spec, raw, source, report)
    n_rows = len(raw)
    check = _TableCheck(spec.name, source, np.arange(first_row_number, first_row_number + n_rows))

    missing_columns = [name for name in spec.required_columns if name not in raw.columns]
    if missing_columns:
        found = ", ".join(map(str, raw.columns)) or "no columns"
        plural = "s" if len(missing_columns) > 1 else ""
        message = (
            f"{source}: missing required column{plural} {', '.join(repr(c) for c in missing_columns)}"
            f" (required: {', '.join(spec.required_columns)}; found: {found})"
        )
        separator = _separator_hint(list(raw.columns))
        if separator is not None:
            # The whole header landed in one column: the cause is the separator, not the columns.
            message = f"{source}: {separator}; {message[len(source) + 2 :]}"
        ambiguous = {
            name: [str(c) for c in raw.columns if str(c).lower() == name.lower()] for name in missing_columns
        }
        ambiguous = {name: found_as for name, found_as in ambiguous.items() if found_as}
        if ambiguous:
            message += "; differ only in case (ambiguous, so not renamed): " + "; ".join(
                f"{name}: {', '.join(found_as)}" for name, found_as in ambiguous.items()
            )
        issue = Issue(spec.name, missing_columns[0], "missing_column", n_rows, [], [], "fatal", message)
        report.errors.append(issue)
        raise DataValidationError(message, report)

    canonical: dict[str, pd.Series] = {}
    for column in spec.columns:
        if column.name not in raw.columns:
            canonical[column.name] = _empty_column(column, n_rows)
            continue
        raw_values = raw[column.name]
        parsed, bad = _parse_column(raw_values, column)
        bad = bad.to_numpy(dtype=bool)
        missing = parsed.isna().to_numpy(dtype=bool) & ~bad
        action: Literal["dropped", "nulled"] = "dropped" if column.required else "nulled"
        rule = "unknown_value" if column.kind == "enum" else "unparsable"
        check.record(
            bad, raw_values, column=column.name, rule=rule, action=action, expected=_expectation(column)
        )
        if column.kind == "number" and column.minimum is not None:
            below = (parsed < column.minimum).to_numpy(dtype=bool) & ~bad
            check.record(
                below,
                raw_values,
                column=column.name,
                rule="out_of_range",
                action=action,
                expected=f"a number >= {column.minimum:g}",
            )
            bad = bad | below
        if column.required:
            check.record(
                missing,
                raw_values,
                column=column.name,
                rule="missing_value",
                action="dropped",
                expected=_expectation(column),
            )
        if column.kind in ("timestamp", "number", "bool"):
            parsed = parsed.where(~bad)
        else:
            parsed = parsed.where(~bad, None).astype(object)
        canonical[column.name] = parsed

    for name in raw.columns:
        if name in canonical:
            continue
        values = raw[name]
        if spec.numeric_extras:
            numbers, bad = _parse_numbers(values)
            if bad.any():
                check.issues.append(
                    Issue(
                        spec.name,
                        name,
                        "not_numeric_metric",
                        int(bad.sum()),
                        [int(r) for r in check.row_numbers[bad.to_numpy()][:SAMPLE_SIZE]],
                        _sample_values(values[bad]),
                        "kept",
                        f"{source}: column '{name}', {_format_rows(check.row_numbers[bad.to_numpy()])}: "
                        f"expected a number (extra {spec.name} columns are metrics), got "
                        f"'{_sample_values(values[bad])[0]}' (column kept as text, not used as a metric)",
                    )
                )
                canonical[name] = _clean_strings(values)
            else:
                canonical[name] = numbers
        elif values.dtype == object:
            canonical[name] = _infer_extra_column(name, values)
        else:
            canonical[name] = values
    table = pd.DataFrame(canonical)

    # Times of one row that contradict each other (closed before created, resolved before opened):
    # compared by day, since CRMs export close dates as dates and creation times as timestamps.
    for earlier, later in spec.ordered:
        if earlier not in raw.columns or later not in raw.columns:
            continue
        before = (table[later].dt.floor("D") < table[earlier].dt.floor("D")).to_numpy(dtype=bool)
        check.record(
            before & ~check.drop,
            raw[later],
            column=later,
            rule="out_of_order",
            action="dropped",
            expected=f"a date on or after the row's {earlier}",
        )

    # Duplicate keys: among rows that survived the value checks, keep the first occurrence.
    if spec.primary_key:
        alive = ~check.drop
        duplicated = np.zeros(n_rows, dtype=bool)
        duplicated[alive] = (
            table.loc[alive].duplicated(subset=list(spec.primary_key), keep="first").to_numpy()
        )
        key_label = ", ".join(spec.primary_key)
        key_values = (
            table[spec.primary_key[0]]
            if len(spec.primary_key) == 1
            else table[list(spec.primary_key)].astype(str).agg(" / ".join, axis=1)
        )
        check.record(
            duplicated,
            key_values,
            column=key_label,
            rule="duplicate_key",
            action="dropped",
            expected=f"a unique key ({key_label})",
            got_suffix=" again (first occurrence kept)",
        )

    # References to parent tables: orphans are dropped (required refs) or blanked (optional refs).
    for ref in spec.parents:
        if ref.parent_table not in parent_keys:
            if ref.on_orphan == "drop":
                report.notes.append(
                    f"{source}: {ref.column} not checked against {ref.parent_table} (table not present)"
                )
            continue
        values = table[ref.column]
        orphan = (values.notna() & ~values.isin(parent_keys[ref.parent_table])).to_numpy() & ~check.drop
        if not orphan.any():
            continue
        from_dropped = values[orphan].isin(dropped_keys.get(ref.parent_table, set()))
        parent_skipped = values.isin(dropped_keys.get(ref.parent_table, set()))
        cascade_rows = np.flatnonzero(orphan)[from_dropped.to_numpy()]
        check.cascaded[cascade_rows[~check.touched[cascade_rows]]] = True
        suffix = ""
        if from_dropped.any():
            suffix = f"; {int(from_dropped.sum())} of them point to {ref.parent_table} rows that were themselves skipped"
        action = "nulled" if ref.on_orphan == "null" else "dropped"
        check.record(
            orphan,
            values,
            column=ref.column,
            rule="orphan",
            action=action,
            expected=f"a value of {ref.parent_table}.{ref.parent_column}",
            got_suffix=suffix,
            from_skipped_parent=parent_skipped.reset_index(drop=True),
        )
        if ref.on_orphan == "null":
            table.loc[orphan, ref.column] = None

    if check.drop.any():
        report.dropped[spec.name] = check.lost_rows(
            table, spec, {ref.column: ref.parent_table for ref in spec.parents}
        )
    kept = table.loc[~check.drop].reset_index(drop=True)
    return kept, check


def _validate(
    raw_tables: Mapping[str, pd.DataFrame],
    sources: Mapping[str, str],
    first_row_numbers: Mapping[str, int],
    require: Iterable[str],
    strict: bool,
    max_bad_fraction: float,
    report: ValidationReport,
    location: str,
    progress: Callable[[str], None] | None,
) -> Tables:
    required = _required_tables(require)
    for name in raw_tables:
        if name not in TABLES:
            report.unknown_files.append(sources.get(name, name))
    for name in required:
        if name not in raw_tables:
            message = f"{location}required table '{name}' not found (expected {name}.csv or {name}.parquet)"
            report.errors.append(Issue(name, None, "missing_table", 0, [], [], "fatal", message))
            raise DataValidationError(message, report)
    for name in required:
        if len(raw_tables[name]) == 0:
            # Said before any other table is checked: otherwise every child row is blamed as an orphan.
            message = f"{sources.get(name, name)}: no data rows; '{name}' is a required table"
            report.errors.append(Issue(name, None, "empty_table", 0, [], [], "fatal", message))
            raise DataValidationError(message, report)

    tables: Tables = {}
    parent_keys: dict[str, set[str]] = {}
    dropped_keys: dict[str, set[str]] = {}
    for name, spec in TABLES.items():
        if name not in raw_tables:
            continue
        raw = raw_tables[name]
        source = sources.get(name, name)
        if progress is not None:
            progress(f"validating {source} ({len(raw):,} rows)")
        report.sources[name] = source
        report.rows_in[name] = len(raw)
        table, check = _validate_one(
            spec, raw, source, first_row_numbers.get(name, 1), parent_keys, dropped_keys, report
        )
        report.skipped.extend(check.issues)
        n_bad = int((check.touched & ~check.cascaded).sum())
        problems = [issue for issue in check.issues if issue.action != "kept"]
        # When a parent file has no rows, it is the cause and every orphan below is its consequence.
        empty_parent = _empty_parent(spec, problems, report)
        cause = (
            f"{report.sources.get(empty_parent, empty_parent)}: no data rows, so "
            if empty_parent is not None
            else ""
        )
        if strict and problems:
            first = problems[0]
            message = f"{cause}{first.message} [strict mode]"
            report.errors.append(Issue(**{**asdict(first), "action": "fatal", "message": message}))
            raise DataValidationError(message, report)
        if len(raw) and n_bad / len(raw) > max_bad_fraction:
            first = problems[0]
            message = (
                f"{cause}{source}: {n_bad:,} of {len(raw):,} rows ({n_bad / len(raw):.1%}) have problems, "
                f"more than max_bad_fraction={max_bad_fraction:g}; first: {first.message}"
            )
            report.errors.append(Issue(**{**asdict(first), "action": "fatal", "message": message}))
            raise DataValidationError(message, report)
        tables[name] = table
        report.rows_out[name] = len(table)
        if len(spec.primary_key) == 1:
            key = spec.primary_key[0]
            parent_keys[name] = set(table[key].dropna())
            raw_key = _clean_strings(raw.reset_index(drop=True)[key]) if key in raw.columns else pd.Series([])
            dropped_keys[name] = set(raw_key.dropna()) - parent_keys[name]
    return tables


def _required_tables(require: Iterable[str]) -> list[str]:
    required = list(dict.fromkeys([*ALWAYS_REQUIRED, *require]))
    for name in required:
        if name not in TABLES:
            raise ValueError(f"unknown table '{name}' in require; known tables: {', '.join(TABLES)}")
    return required


def _empty_parent(spec: TableSpec, problems: list[Issue], report: ValidationReport) -> str | None:
    """The parent table with zero rows that some of these orphan problems point to, if any."""
    for issue in problems:
        if issue.rule != "orphan":
            continue
        for ref in spec.parents:
            if ref.column == issue.column and report.rows_in.get(ref.parent_table) == 0:
                return ref.parent_table
    return None


def validate_tables(
    tables: Mapping[str, pd.DataFrame],
    *,
    source_names: Mapping[str, str] | None = None,
    first_row_numbers: Mapping[str, int] | None = None,
    require: Iterable[str] = ("accounts",),
    strict: bool = False,
    max_bad_fraction: float = 0.05,
    progress: Callable[[str], None] | None = None,
) -> tuple[Tables, ValidationReport]:
    """Validate and canonicalise raw tables (any dtypes, e.g. all-text CSV columns).

    Args:
        tables: Raw DataFrames keyed by table name; keys that are not contract tables are
            reported in ``unknown_files`` and left out of the result.
        source_names: Name of each table's origin used in messages (default: the table name).
        first_row_numbers: Number of each table's first data row in messages (default 1;
            `load_tables` passes 2 for CSV files so that numbers are line numbers).
        require: Tables that must be present (``accounts`` always is).
        strict: Raise on the first row-level problem instead of skipping the row.
        max_bad_fraction: Raise when a larger share of a table's rows has problems.
        progress: Optional callback receiving one line per table being validated.

    Returns:
        The canonical tables (contract columns first, in contract order, missing optional
        columns added as all-missing, then extra columns) and the validation report. Extra
        columns are kept: in ``usage`` they must be numeric (metrics; otherwise kept as text and
        reported); elsewhere text columns become float64 only when every value is a plain number
        without leading zeros and the name does not end in ``_id``. A column whose name differs
        from a contract column only in case (``Account_Id``) is read as that column, with a note.
        Money and counts below their contract minimum (negative) are treated like unparsable
        values: the row is skipped for a required column, the value set missing otherwise.

    Raises:
        DataValidationError: missing required table or column, a required table without rows,
            too many bad rows, or any row problem in strict mode. ``exc.report`` holds the report
            so far.
    """
    report = ValidationReport()
    sources = dict(source_names or {})
    canonical = _validate(
        tables,
        sources,
        dict(first_row_numbers or {}),
        require,
        strict,
        max_bad_fraction,
        report,
        "",
        progress,
    )
    return canonical, report


def _empty_file(path: Path) -> str | None:
    """Why a table file holds nothing at all ("0 bytes", "only blank lines"), or None."""
    size = path.stat().st_size
    if size == 0:
        return "0 bytes"
    if path.suffix == ".csv" and size <= 4096 and not path.read_bytes().lstrip(b"\xef\xbb\xbf").strip():
        return "only blank lines"
    return None


def _read_table_file(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".csv":
            with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
                header = handle.readline().rstrip("\r\n")
            # Checked before parsing: rows of a ';'-separated file that hold a comma fail with a
            # tokenizer error that says nothing about the separator.
            separator = _separator_hint([header])
            if separator is not None:
                shown = header if len(header) <= 80 else header[:77] + "..."
                raise DataValidationError(f"{path.name}: {separator} (header: {shown})")
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig")
        return pd.read_parquet(path).reset_index(drop=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        if isinstance(exc, DataValidationError):
            raise
        detail = " ".join(str(exc).split())
        raise DataValidationError(f"{path.name}: cannot be read as {path.suffix[1:]}: {detail}") from exc


def load_tables(
    directory: str | Path,
    require: Iterable[str] = ("accounts",),
    strict: bool = False,
    max_bad_fraction: float = 0.05,
    progress: Callable[[str], None] | None = None,
) -> tuple[Tables, ValidationReport]:
    """Read `<table>.csv` or `<table>.parquet` files from `directory` and validate them.

    Args:
        directory: Dataset directory, one file per table.
        require: Tables that must be present (``accounts`` always is).
        strict: Raise on the first row-level problem instead of skipping the row.
        max_bad_fraction: Raise when a larger share of a table's rows has problems.
        progress: Optional callback receiving one line per file read or validated.

    Returns:
        Canonical tables and the validation report (see `validate_tables`).

    An empty file (0 bytes) of an optional table is left out with a warning in
    ``report.skipped``; of a required table it is fatal.

    Raises:
        DataValidationError: the directory is missing, a table exists as both CSV and Parquet,
            a required table's file is empty, a CSV file is not comma-separated, a file cannot be
            parsed, or any fatal problem listed in `validate_tables`.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataValidationError(f"{directory}: not a directory (expected one CSV/Parquet file per table)")
    report = ValidationReport()
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.is_dir():
            report.notes.append(f"subdirectory {path.name}/ ignored")
            continue
        if path.suffix not in FILE_SUFFIXES or path.stem not in TABLES:
            report.unknown_files.append(path.name)
            continue
        if path.stem in found:
            message = (
                f"{directory}: table '{path.stem}' exists as both {found[path.stem].name} and {path.name}; "
                "keep exactly one"
            )
            report.errors.append(Issue(path.stem, None, "duplicate_file", 0, [], [], "fatal", message))
            raise DataValidationError(message, report)
        found[path.stem] = path

    required = _required_tables(require)
    for name, path in list(found.items()):
        empty = _empty_file(path)
        if empty is None:
            continue
        if name in required:
            message = f"{path.name}: empty file ({empty}); '{name}' is a required table"
            report.errors.append(Issue(name, None, "empty_file", 0, [], [], "fatal", message))
            raise DataValidationError(message, report)
        # An optional table adds features; with nothing in it, leaving it out is the same and honest.
        message = f"{path.name} is empty ({empty}); the table is left out"
        report.skipped.append(Issue(name, None, "empty_file", 0, [], [], "dropped", message))
        del found[name]

    raw_tables: dict[str, pd.DataFrame] = {}
    for name, path in found.items():
        if progress is not None:
            progress(f"reading {path.name}")
        raw_tables[name] = _read_table_file(path)
    tables = _validate(
        raw_tables,
        {name: path.name for name, path in found.items()},
        {name: 2 if path.suffix == ".csv" else 1 for name, path in found.items()},
        require,
        strict,
        max_bad_fraction,
        report,
        f"{directory}: ",
        progress,
    )
    return tables, report


# --------------------------------------------------------------------------- writing and hashing


def _timestamps_as_iso(values: pd.Series) -> pd.Series:
    """ISO text: a date when every value is at midnight, else a datetime (microseconds if needed)."""
    present = values.dropna()
    if present.empty:
        return pd.Series([""] * len(values), index=values.index, dtype=object)
    if (present == present.dt.normalize()).all():
        text = values.dt.strftime("%Y-%m-%d")
    elif (present.dt.microsecond == 0).all() and (present.dt.nanosecond == 0).all():
        text = values.dt.strftime("%Y-%m-%dT%H:%M:%S")
    else:
        text = values.dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
    return text.fillna("").astype(object)


def write_tables(
    tables: Mapping[str, pd.DataFrame], directory: str | Path, fmt: Literal["csv", "parquet"] = "csv"
) -> list[Path]:
    """Write canonical tables, one file per table, named after the table.

    A file of the same table in the other format is removed, so that the directory never holds
    both (which `load_tables` refuses).

    Args:
        tables: Canonical tables (as returned by `validate_tables`).
        directory: Output directory (created if needed).
        fmt: ``csv`` (ISO timestamps, no index, ``\\n`` line ends) or ``parquet``.

    Returns:
        The paths written, in table order.
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"unknown format '{fmt}': expected csv or parquet")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    ordered = [name for name in TABLES if name in tables] + [name for name in tables if name not in TABLES]
    for name in ordered:
        table = tables[name]
        path = directory / f"{name}.{fmt}"
        other = directory / f"{name}.{'parquet' if fmt == 'csv' else 'csv'}"
        if other.exists():
            other.unlink()
        if fmt == "csv":
            out = table.copy()
            for column in out.columns:
                if pd.api.types.is_datetime64_any_dtype(out[column]):
                    out[column] = _timestamps_as_iso(out[column])
            out.to_csv(path, index=False, lineterminator="\n")
        else:
            table.to_parquet(path, index=False)
        written.append(path)
    return written


def dataset_fingerprint(tables: Mapping[str, pd.DataFrame]) -> str:
    """Stable sha256 of canonical content: independent of row and column order.

    Args:
        tables: Canonical tables.

    Returns:
        Hex digest covering table names, column names, dtypes and every row's values.
    """
    digest = hashlib.sha256()
    for name in sorted(tables):
        table = tables[name]
        columns = sorted(map(str, table.columns))
        digest.update(f"table:{name}\n".encode())
        for column in columns:
            digest.update(f"column:{column}:{table[column].dtype}\n".encode())
        if len(table):
            ordered = table[columns]
            row_hashes = pd.util.hash_pandas_object(ordered, index=False).to_numpy().astype("<u8")
            row_hashes.sort()
            digest.update(row_hashes.tobytes())
    return digest.hexdigest()
