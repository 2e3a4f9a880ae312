"""Bring-your-own churn table: `revcast train churn --table FILE` and `revcast score accounts --table FILE`.

A user who has no CRM tables but one "one row per customer" churn export (the Telco customer churn
CSV, a bank's ``Churn_Modelling.csv``, a product analytics dump) gets the same calibrated churn
model, baselines, verdict and registry flow as the canonical pipeline.

The module has three layers:

* parsing and schema inference (:func:`read_table`, :func:`infer_schema`, :func:`apply_schema`):
  pure functions of DataFrames that decide, and *report*, what every column is and why a column
  is refused as a feature; the inferred :class:`TableSchema` is stored in the bundle's state.json so
  scoring applies exactly the same parsing to a new file;
* evaluation (:func:`evaluate_byo`): stratified 5-fold out-of-fold predictions, or an out-of-time
  split when the table has a time column; baselines (base rate, logistic regression with C chosen by
  inner CV, default LightGBM) are measured on the same folds / rows;
* the two CLI entry points (:func:`train_byo_table`, :func:`score_byo_table`), the only functions
  here that read or write files.

Why the model is fitted the way it is (see :func:`fit_calibrated_lgbm`): LightGBM with shallow,
regularised trees, the number of rounds chosen by early stopping on inner cross-validation folds,
and an isotonic calibrator fitted on the *inner out-of-fold* scores — the rows a calibrator sees are
never rows the scored model was fitted on, and never the outer test rows.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# --------------------------------------------------------------------------- configuration

#: Cell values (compared after stripping whitespace, case-insensitively) that mean "missing".
MISSING_MARKERS: tuple[str, ...] = ("", "na", "n/a", "nan", "null", "none", "?", "#n/a", "-")

#: Boolean vocabularies: lower-cased value -> truth value.
BOOLEAN_VALUES: dict[str, float] = {
    "yes": 1.0,
    "no": 0.0,
    "y": 1.0,
    "n": 0.0,
    "true": 1.0,
    "false": 0.0,
    "t": 1.0,
    "f": 0.0,
    "1": 1.0,
    "0": 0.0,
    "1.0": 1.0,
    "0.0": 0.0,
}

#: Label values that mean "churned" / "stayed" when --positive is not given.
POSITIVE_LABELS: frozenset[str] = frozenset(
    {
        "yes",
        "y",
        "true",
        "t",
        "1",
        "1.0",
        "churn",
        "churned",
        "exited",
        "left",
        "lost",
        "cancelled",
        "canceled",
        "attrited",
        "attrited customer",
        "inactive",
        "closed",
        "gone",
        "terminated",
    }
)
NEGATIVE_LABELS: frozenset[str] = frozenset(
    {
        "no",
        "n",
        "false",
        "f",
        "0",
        "0.0",
        "retained",
        "stayed",
        "active",
        "existing",
        "existing customer",
        "current",
        "renewed",
        "open",
        "kept",
        "not churned",
        "no churn",
    }
)

DEFAULT_CONFIG: dict[str, Any] = {
    # inference
    "numeric_min_share": 0.95,  # share of non-missing cells that must parse as numbers
    "date_min_share": 0.95,  # share of non-missing cells that must parse as dates
    "id_like_unique_share": 0.95,  # strings with this share of distinct values are id-like
    "max_categories": 100,  # more distinct strings than this: free text, refused
    "min_category_count": 5,  # rarer categories are treated as missing (unseen) by the model
    "min_rows_for_id_rule": 50,
    "leakage_auc": 0.99,  # single-feature AUC above this: leaky column, refused
    "label_noise_share": 0.05,  # extra label values beyond the main two must be rarer than this
    # evaluation
    "n_folds": 5,
    "inner_folds": 4,
    "time_split": (0.6, 0.2, 0.2),
    "seed": 7,
    "n_boot": 300,
    "logreg_Cs": (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
    # our LightGBM: shallow, regularised trees; rounds from early stopping on inner folds
    "lgbm_params": {
        "objective": "binary",
        "learning_rate": 0.03,
        "num_leaves": 8,
        "max_depth": 4,
        "min_child_samples": 40,
        "feature_fraction": 0.7,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 5.0,
        "cat_smooth": 20.0,
        "min_data_per_group": 40,
        "cat_l2": 10.0,
        "verbosity": -1,
        "num_threads": 1,  # small tables: threads only add OpenMP contention (measured 100x slower on a busy 2-core box)
        "deterministic": True,
        "force_col_wise": True,
    },
    "max_boost_rounds": 3000,
    "early_stopping_rounds": 50,
    "risk_bands": {"high": 0.25, "medium": 0.1},
    "top_factors": 5,
    "registered_name": "churn-table",  # registry name revcast-churn-table (no clash with revcast-churn)
}


#: Run artifact listing the ids of the rows the registered model was fitted on (promotion fairness).
TRAINED_IDS_ARTIFACT = "evaluation/trained_ids.json"
#: Held-out rows (and positives among them) a promotion comparison needs after excluding the rows
#: the champion was fitted on.
PROMOTION_MIN_ROWS = 100
PROMOTION_MIN_POSITIVES = 10


class ByoTableError(ValueError):
    """Bad input in a bring-your-own table; the message names the file, column, rows and expectation."""


# --------------------------------------------------------------------------- reading


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet table with every cell kept as text (or its Parquet type).

    CSV cells are read as strings with no pandas NA guessing, so the same missing-marker rules apply
    to CSV and Parquet and no value is reinterpreted before schema inference sees it.

    Args:
        path: A ``.csv`` (optionally compressed) or ``.parquet`` file.

    Returns:
        The raw table; the index is the 0-based data row (file line = index + 2).

    Raises:
        FileNotFoundError: When the file is missing.
        ByoTableError: When the file cannot be read or has no rows.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffixes = "".join(path.suffixes).lower()
    try:
        if ".parquet" in suffixes or ".pq" in suffixes:
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(
                path, dtype=str, keep_default_na=False, na_filter=False, encoding_errors="replace"
            )
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise ByoTableError(f"{path}: cannot read the table: {exc}") from exc
    if frame.empty:
        raise ByoTableError(f"{path}: the table has no data rows")
    frame.columns = [str(c).strip() for c in frame.columns]
    duplicated = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if duplicated:
        raise ByoTableError(f"{path}: duplicated column names {duplicated}; expected unique names")
    return frame.reset_index(drop=True)


def line_numbers(index: Sequence[int] | pd.Index) -> list[int]:
    """File line numbers of data rows (the header is line 1)."""
    return [int(i) + 2 for i in index]


def normalise_missing(series: pd.Series, markers: Sequence[str] = MISSING_MARKERS) -> pd.Series:
    """Strip text cells and turn missing markers into ``None``; non-text columns pass unchanged.

    Args:
        series: A raw column.
        markers: Lower-case cell values meaning missing.

    Returns:
        An ``object`` column of stripped strings / ``None`` for text input, else the input.
    """
    if not (pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)):
        return series
    marker_set = {m.lower() for m in markers}
    text = series.astype(object).where(series.notna(), None)
    stripped = text.map(lambda v: v.strip() if isinstance(v, str) else v)
    is_missing = stripped.map(lambda v: v is None or (isinstance(v, str) and v.lower() in marker_set))
    is_missing |= stripped.map(lambda v: isinstance(v, float) and math.isnan(v))
    out = stripped.astype(object)
    out[is_missing] = None
    return out.map(lambda v: v if v is None or isinstance(v, str) else str(v))


# --------------------------------------------------------------------------- schema


@dataclass
class ColumnSpec:
    """How one feature column is parsed.

    Attributes:
        name: Column name in the file.
        kind: ``numeric``, ``boolean``, ``date`` or ``categorical``.
        categories: Known categories (categorical only); other values become missing at scoring.
        n_bad_values: Non-missing cells of the training file that did not parse and became missing.
        bad_examples: A few of those raw values.
    """

    name: str
    kind: str
    categories: list[str] | None = None
    n_bad_values: int = 0
    bad_examples: list[str] = field(default_factory=list)
    feature: str = ""

    @property
    def feature_name(self) -> str:
        """Name of the model feature derived from this column (LightGBM-safe characters only)."""
        return self.feature or safe_feature_name(
            f"days_since_{self.name}" if self.kind == "date" else self.name
        )

    @property
    def display_name(self) -> str:
        """The plain name shown in top factors: the file's column name."""
        return f"days since {self.name}" if self.kind == "date" else self.name


def safe_feature_name(name: str) -> str:
    """A feature name LightGBM keeps as is (it rewrites spaces and refuses JSON special characters)."""
    cleaned = re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_")
    return cleaned or "column"


@dataclass
class TableSchema:
    """Everything needed to parse a table the same way at training and at scoring time."""

    id_col: str
    label_col: str
    positive: str
    negative: str
    time_col: str | None
    columns: list[ColumnSpec]
    refused: dict[str, str]
    notes: list[str]
    missing_markers: list[str] = field(default_factory=lambda: list(MISSING_MARKERS))

    @property
    def feature_names(self) -> list[str]:
        """Model feature names, in column order."""
        return [c.feature_name for c in self.columns]

    @property
    def display_names(self) -> dict[str, str]:
        """Feature name -> the file's column name (for top factors)."""
        return {c.feature_name: c.display_name for c in self.columns}

    @property
    def categorical(self) -> dict[str, list[str]]:
        """Categorical feature -> its category list (the bundle's ``categorical`` field)."""
        return {c.feature_name: list(c.categories or []) for c in self.columns if c.kind == "categorical"}

    def to_json(self) -> dict[str, Any]:
        """JSON-safe form stored in the bundle's state.json under ``byo_schema``."""
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> TableSchema:
        """Inverse of :meth:`to_json`."""
        doc = dict(doc)
        doc["columns"] = [ColumnSpec(**c) for c in doc["columns"]]
        return cls(**doc)


def _parse_numbers(text: pd.Series) -> pd.Series:
    """Numbers stored as text (`" 29.85"`, `"1,234.5"`, `"12%"` stays bad) -> float64, bad -> NaN."""
    cleaned = text.map(
        lambda v: v.replace(",", "") if isinstance(v, str) and re.fullmatch(r"-?[\d,]+(\.\d*)?", v) else v
    )
    return pd.to_numeric(cleaned, errors="coerce").astype("float64")


_DATE_SHAPE = re.compile(r"^\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}([ T].*)?$")


def _parse_dates(text: pd.Series) -> pd.Series:
    """ISO-like date / datetime text -> timezone-naive UTC datetime64, bad -> NaT."""
    if pd.api.types.is_datetime64_any_dtype(text):
        values = pd.to_datetime(text, utc=True)
        return values.dt.tz_localize(None)
    shaped = text.map(lambda v: v if isinstance(v, str) and _DATE_SHAPE.match(v) else None)
    values = pd.to_datetime(shaped, errors="coerce", utc=True, format="mixed")
    return values.dt.tz_localize(None)


def _as_bool(text: pd.Series) -> pd.Series:
    """Boolean vocabulary -> 1.0 / 0.0; anything else -> NaN."""
    if pd.api.types.is_bool_dtype(text):
        return text.astype("float64")
    if pd.api.types.is_numeric_dtype(text):
        return text.astype("float64").where(text.isin([0, 1]))
    return text.map(lambda v: BOOLEAN_VALUES.get(v.lower(), np.nan) if isinstance(v, str) else np.nan).astype(
        "float64"
    )


def infer_column(
    series: pd.Series, name: str, config: dict[str, Any]
) -> tuple[ColumnSpec | None, str | None]:
    """Decide the kind of one candidate feature column, or why it is refused.

    Args:
        series: The column after :func:`normalise_missing`.
        name: Column name.
        config: Inference thresholds (see ``DEFAULT_CONFIG``).

    Returns:
        ``(spec, None)`` for a usable column or ``(None, reason)`` for a refused one.
    """
    present = series.dropna()
    n_present = len(present)
    if n_present == 0:
        return None, "constant: every value is missing"
    if pd.api.types.is_bool_dtype(series):
        kind = "boolean"
    elif pd.api.types.is_numeric_dtype(series):
        kind = "numeric"
    elif pd.api.types.is_datetime64_any_dtype(series):
        kind = "date"
    else:
        kind = ""
    distinct = present.astype(str).str.lower().unique() if kind == "" else present.unique()
    if len(distinct) <= 1:
        return None, f"constant: the only value is {str(present.iloc[0])!r}"

    if kind == "" and set(distinct) <= set(BOOLEAN_VALUES) and len(distinct) == 2:
        kind = "boolean"
    bad = pd.Series(dtype=object)
    if kind == "":
        numbers = _parse_numbers(present)
        if numbers.notna().mean() >= config["numeric_min_share"]:
            kind = "numeric"
            bad = present[numbers.isna()]
    if kind == "":
        dates = _parse_dates(present)
        if dates.notna().mean() >= config["date_min_share"]:
            kind = "date"
            bad = present[dates.isna()]

    if kind == "numeric":
        values = series.astype("float64") if pd.api.types.is_numeric_dtype(series) else _parse_numbers(series)
        values = values.dropna()
        is_integer = bool(np.all(np.isclose(values, np.round(values))))
        if is_integer and len(values) >= config["min_rows_for_id_rule"] and values.nunique() == len(values):
            return None, "id-like: integer values, unique on every row"
        return (
            ColumnSpec(
                name, "numeric", n_bad_values=len(bad), bad_examples=[str(v) for v in bad.unique()[:5]]
            ),
            None,
        )
    if kind in ("boolean", "date"):
        return ColumnSpec(
            name, kind, n_bad_values=len(bad), bad_examples=[str(v) for v in bad.unique()[:5]]
        ), None

    # categorical text
    n_distinct = present.nunique()
    if (
        n_present >= config["min_rows_for_id_rule"]
        and n_distinct >= config["id_like_unique_share"] * n_present
    ):
        return None, f"id-like: {n_distinct} distinct values in {n_present} rows (near-unique text)"
    if n_distinct > config["max_categories"]:
        return None, (
            f"high-cardinality text: {n_distinct} distinct values (more than {config['max_categories']}); "
            "encode it yourself if it matters"
        )
    counts = present.value_counts()
    categories = sorted(str(v) for v in counts[counts >= config["min_category_count"]].index)
    if len(categories) <= 1:
        return (
            None,
            f"constant: only {len(categories)} category seen at least {config['min_category_count']} times",
        )
    return ColumnSpec(name, "categorical", categories=categories), None


def resolve_label(
    series: pd.Series, *, positive: str | None, label_col: str, source: str, noise_share: float
) -> tuple[str, str]:
    """Choose the churned (positive) and retained (negative) label values.

    Args:
        series: The label column after :func:`normalise_missing` (text).
        positive: The user's ``--positive`` value, or None to infer it.
        label_col: Column name (for messages).
        source: File name (for messages).
        noise_share: Values beyond the two main ones must be rarer than this share of rows.

    Returns:
        ``(positive, negative)`` as they are spelled in the file.

    Raises:
        ByoTableError: When the label has fewer than two values, when ``positive`` is not one of
            them, or when the churned value cannot be inferred (the message lists the values).
    """
    counts = series.dropna().astype(str).value_counts()
    listing = ", ".join(f"{v!r} ({n})" for v, n in counts.head(12).items())
    if len(counts) < 2:
        raise ByoTableError(
            f"{source}: column {label_col!r}: expected two label values (churned / retained), found {listing or 'none'}"
        )
    if positive is not None:
        matches = [v for v in counts.index if v == positive] or [
            v for v in counts.index if v.lower() == str(positive).strip().lower()
        ]
        if not matches:
            raise ByoTableError(
                f"{source}: column {label_col!r}: --positive {positive!r} is not one of its values: {listing}"
            )
        pos = matches[0]
        others = counts.drop(pos)
        neg = str(others.index[0])
        if len(others) > 1 and others.iloc[1:].sum() > noise_share * counts.sum():
            raise ByoTableError(
                f"{source}: column {label_col!r}: more than two label values ({listing}); "
                "expected exactly one churned value and one retained value"
            )
        return pos, neg
    main = [str(v) for v in counts.index[:2]]
    if counts.iloc[2:].sum() > noise_share * counts.sum():
        raise ByoTableError(
            f"{source}: column {label_col!r}: cannot tell which value means churned among {listing}; "
            "pass --positive VALUE"
        )
    lowered = [v.lower() for v in main]
    if lowered[0] in POSITIVE_LABELS and lowered[1] in NEGATIVE_LABELS:
        return main[0], main[1]
    if lowered[1] in POSITIVE_LABELS and lowered[0] in NEGATIVE_LABELS:
        return main[1], main[0]
    raise ByoTableError(
        f"{source}: column {label_col!r}: cannot tell which value means churned among {listing}; "
        "pass --positive VALUE"
    )


def single_feature_auc(values: pd.Series, y: np.ndarray, kind: str) -> float:
    """How well one column alone separates the classes (max of AUC and 1 - AUC).

    Numeric columns are ranked with missing values placed at either end (the better of both);
    categorical and boolean columns (missing = its own level) are scored by their in-sample churn
    rate, which is what a copy of the label or a "churn reason" column filled only for churners
    looks like.

    Args:
        values: The parsed feature column.
        y: 0/1 labels.
        kind: The column kind.

    Returns:
        A number in [0.5, 1].
    """
    from training.evaluate import auc_score as roc_auc_score

    if kind in ("numeric", "date"):
        x = values.astype("float64").to_numpy()
        if np.isnan(x).all():
            return 0.5
        low = np.where(np.isnan(x), np.nanmin(x) - 1.0, x)
        high = np.where(np.isnan(x), np.nanmax(x) + 1.0, x)
        aucs = [roc_auc_score(y, low), roc_auc_score(y, high)]
    else:
        keys = values.astype(object).where(values.notna(), "__missing__").astype(str)
        rate = pd.Series(y).groupby(keys.to_numpy()).transform("mean").to_numpy()
        aucs = [roc_auc_score(y, rate)]
    return float(max(max(a, 1.0 - a) for a in aucs))


def _feature_values(series: pd.Series, spec: ColumnSpec, row_time: pd.Series | None) -> pd.Series:
    """One parsed feature column (float64 or object text) from a normalised raw column."""
    if spec.kind == "numeric":
        return series.astype("float64") if pd.api.types.is_numeric_dtype(series) else _parse_numbers(series)
    if spec.kind == "boolean":
        return _as_bool(series.map(lambda v: v.lower() if isinstance(v, str) else v))
    if spec.kind == "date":
        dates = _parse_dates(series)
        if row_time is None:
            raise ValueError("date features need the row time")
        return ((row_time - dates).dt.total_seconds() / 86400.0).astype("float64")
    return series.astype(object)


@dataclass
class ParsedTable:
    """A table parsed with a :class:`TableSchema`.

    Attributes:
        features: One row per usable data row; columns = schema feature names.
        ids: The id column (text) aligned with ``features``.
        y: 0/1 labels aligned with ``features`` (None when the table has no label, e.g. scoring).
        row_time: The time column (None without one).
        rejected: Rows that could not be used: file line, id, reasons.
        warnings: Per-column notes (cells that did not parse and became missing).
    """

    features: pd.DataFrame
    ids: pd.Series
    y: np.ndarray | None
    row_time: pd.Series | None
    rejected: list[dict[str, Any]]
    warnings: list[str]


def _sample(rows: pd.Index, values: pd.Series | None = None, k: int = 5) -> str:
    lines = line_numbers(rows[:k])
    if values is None:
        return f"lines {lines}"
    shown = [f"{line}: {values.loc[r]!r}" for line, r in zip(lines, rows[:k], strict=False)]
    return "e.g. line " + ", line ".join(shown)


def infer_schema(
    raw: pd.DataFrame,
    *,
    id_col: str,
    label_col: str,
    positive: str | None = None,
    time_col: str | None = None,
    source: str = "table",
    config: dict[str, Any] | None = None,
) -> TableSchema:
    """Infer how to parse every column, which columns are features and which are refused (and why).

    Args:
        raw: The table from :func:`read_table`.
        id_col: The customer id column.
        label_col: The churn label column.
        positive: The value meaning churned (inferred when None).
        time_col: Optional column with each row's observation date.
        source: File name used in messages.
        config: Overrides of ``DEFAULT_CONFIG``.

    Returns:
        The schema; ``refused`` maps each refused column to its reason, ``notes`` lists the decisions
        a user should know about (coerced values, dropped label rows, leaky columns).

    Raises:
        ByoTableError: A named column does not exist, the label cannot be resolved, or no feature
            column is left.
    """
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    for role, col in (("--id-col", id_col), ("--label-col", label_col), ("--time-col", time_col)):
        if col is not None and col not in raw.columns:
            raise ByoTableError(f"{source}: {role} {col!r} is not a column; columns are {list(raw.columns)}")
    if len({id_col, label_col, time_col} - {None}) < len([c for c in (id_col, label_col, time_col) if c]):
        raise ByoTableError(f"{source}: --id-col, --label-col and --time-col must be different columns")

    label_text = normalise_missing(raw[label_col].astype(object).map(lambda v: v if v is None else str(v)))
    pos, neg = resolve_label(
        label_text,
        positive=positive,
        label_col=label_col,
        source=source,
        noise_share=cfg["label_noise_share"],
    )
    notes: list[str] = []
    keep = label_text.isin([pos, neg])
    y = (label_text[keep] == pos).astype(int).to_numpy()
    if y.sum() < 2 or (1 - y).sum() < 2:
        raise ByoTableError(
            f"{source}: column {label_col!r}: need at least two rows of each class ({pos!r}/{neg!r})"
        )

    refused: dict[str, str] = {id_col: "the id column", label_col: "the label column"}
    if time_col:
        refused[time_col] = "the time column (used for the out-of-time split and for date features)"
    row_time = None
    if time_col:
        time_text = normalise_missing(raw[time_col])
        row_time = _parse_dates(time_text)[keep]
        if not row_time.notna().any():
            present = time_text[keep].dropna()
            got = f"got e.g. {str(present.iloc[0])!r}" if len(present) else "every value is empty"
            raise ByoTableError(
                f"{source}: --time-col {time_col!r}: none of its {int(keep.sum())} labelled rows is a date "
                f"(expected YYYY-MM-DD, e.g. 2024-03-31; {got}); pass a date column or leave out --time-col"
            )

    columns: list[ColumnSpec] = []
    for name in raw.columns:
        if name in refused:
            continue
        series = normalise_missing(raw[name])[keep]
        spec, reason = infer_column(series, name, cfg)
        if spec is None:
            refused[name] = str(reason)
            continue
        if spec.kind == "date" and row_time is None:
            refused[name] = (
                "date column without --time-col: days-since needs each row's date (pass --time-col)"
            )
            continue
        values = _feature_values(series, spec, row_time)
        if spec.kind == "categorical":
            values = values.where(values.isin(spec.categories or []), None)
        auc = single_feature_auc(values, y, spec.kind)
        if auc > cfg["leakage_auc"]:
            refused[name] = (
                f"leakage guard: this column alone predicts the label with AUC {auc:.3f} (> {cfg['leakage_auc']}); "
                "it is probably recorded after the churn or derived from it"
            )
            notes.append(
                f"column {name!r} refused as a leaky predictor of {label_col!r} (single-feature AUC {auc:.3f})"
            )
            continue
        if spec.n_bad_values:
            notes.append(
                f"column {name!r} ({spec.kind}): {spec.n_bad_values} value(s) did not parse and are treated as "
                f"missing, e.g. {spec.bad_examples}"
            )
        columns.append(spec)
    taken: set[str] = set()
    for spec in columns:
        base = spec.feature_name
        name, n = base, 2
        while name in taken:
            name, n = f"{base}_{n}", n + 1
        spec.feature = name
        taken.add(name)
    if not columns:
        raise ByoTableError(
            f"{source}: no usable feature column; refused: "
            + "; ".join(f"{k}: {v}" for k, v in refused.items() if k not in (id_col, label_col))
        )
    return TableSchema(
        id_col=id_col,
        label_col=label_col,
        positive=pos,
        negative=neg,
        time_col=time_col,
        columns=columns,
        refused=refused,
        notes=notes,
        missing_markers=list(MISSING_MARKERS),
    )


def apply_schema(
    raw: pd.DataFrame, schema: TableSchema, *, source: str = "table", with_label: bool = True
) -> ParsedTable:
    """Parse a table with a schema: the same code path for training and scoring.

    Rows are rejected (and reported with their file line) when the id is missing, the label is
    missing or not one of the two label values (``with_label``), or the time column is missing or not
    a date. Feature cells that do not parse become missing and are counted in ``warnings``.

    Args:
        raw: The table from :func:`read_table`.
        schema: From :func:`infer_schema` (or a bundle's state).
        source: File name used in messages.
        with_label: Parse and require the label column (False when scoring).

    Returns:
        The parsed table.

    Raises:
        ByoTableError: When a column the schema needs is absent.
    """
    needed = [schema.id_col, *[c.name for c in schema.columns]]
    if schema.time_col:
        needed.append(schema.time_col)
    if with_label:
        needed.append(schema.label_col)
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise ByoTableError(f"{source}: missing column(s) {missing}; the model was trained with {needed}")

    reasons: dict[int, list[str]] = {}

    def reject(rows: pd.Index, message: str) -> None:
        for r in rows:
            reasons.setdefault(int(r), []).append(message)

    ids = normalise_missing(
        raw[schema.id_col].astype(object).map(lambda v: v if v is None or isinstance(v, str) else str(v))
    )
    reject(ids.index[ids.isna()], f"{schema.id_col}: missing id")
    y_all = None
    if with_label:
        label = normalise_missing(
            raw[schema.label_col].astype(object).map(lambda v: v if v is None else str(v))
        )
        bad_label = ~label.isin([schema.positive, schema.negative])
        for r in label.index[bad_label]:
            shown = "missing" if label[r] is None else repr(label[r])
            reject(
                pd.Index([r]),
                f"{schema.label_col}: {shown} is not {schema.positive!r} or {schema.negative!r}",
            )
        y_all = (label == schema.positive).astype(int)
    row_time = None
    if schema.time_col:
        row_time = _parse_dates(normalise_missing(raw[schema.time_col]))
        for r in row_time.index[row_time.isna()]:
            reject(
                pd.Index([r]),
                f"{schema.time_col}: missing or not a date (expected YYYY-MM-DD): {raw[schema.time_col][r]!r}",
            )

    warnings: list[str] = []
    features = pd.DataFrame(index=raw.index)
    for spec in schema.columns:
        series = normalise_missing(raw[spec.name])
        values = _feature_values(series, spec, row_time)
        parsed_values = _parse_dates(series) if spec.kind == "date" else values
        # a date that parses but sits on a row with a bad time is reported once, as a rejected row
        became_missing = parsed_values.isna() & series.notna()
        if spec.kind == "categorical":
            unseen = values.notna() & ~values.isin(spec.categories or [])
            if unseen.any():
                warnings.append(
                    f"column {spec.name!r}: {int(unseen.sum())} value(s) not seen (or too rare) in training are "
                    f"treated as missing, {_sample(values.index[unseen], values)}"
                )
        elif became_missing.any():
            warnings.append(
                f"column {spec.name!r}: {int(became_missing.sum())} value(s) are not {spec.kind} and are treated as "
                f"missing, {_sample(series.index[became_missing], series)}"
            )
        features[spec.feature_name] = values

    rejected = [{"line": r + 2, "id": ids[r], "errors": msgs} for r, msgs in sorted(reasons.items())]
    good = raw.index[~raw.index.isin(list(reasons))]
    return ParsedTable(
        features=features.loc[good],
        ids=ids.loc[good].astype(str),
        y=None if y_all is None else y_all.loc[good].to_numpy(),
        row_time=None if row_time is None else row_time.loc[good],
        rejected=rejected,
        warnings=warnings,
    )


def summarise_rejected(rejected: list[dict[str, Any]], source: str, k: int = 5) -> str | None:
    """One line naming how many rows were rejected, sample lines and their reasons."""
    if not rejected:
        return None
    sample = "; ".join(f"line {r['line']}: {', '.join(r['errors'])}" for r in rejected[:k])
    return f"{source}: {len(rejected)} row(s) rejected, e.g. {sample}"


# --------------------------------------------------------------------------- models


def prepare_frame(features: pd.DataFrame, schema: TableSchema) -> pd.DataFrame:
    """Model-ready frame (categoricals as pd.Categorical with the schema's categories, numbers float64)."""
    from serving.bundle import prepare_features

    return prepare_features(features, schema.feature_names, schema.categorical)


def _stratified_folds(y: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold

    n_folds = int(max(2, min(n_folds, np.bincount(y, minlength=2).min())))
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y))


class CalibratedLgbm:
    """Our churn model: regularised LightGBM, rounds by inner-CV early stopping, isotonic calibration.

    ``fit`` runs ``inner_folds`` stratified folds on the rows it is given. In each, a booster is
    trained with early stopping on the held-out inner fold, whose scores are kept (inner
    out-of-fold scores). The final booster is refitted on all given rows with the median best number
    of rounds, and the isotonic calibrator is fitted on the inner out-of-fold scores, i.e. on scores
    of rows the scoring booster had not seen. With ``tune_trials`` > 0, an Optuna search over the
    main LightGBM parameters (objective: the same inner-CV log loss) runs first, on the given rows
    only, so an outer evaluation stays nested.

    Args:
        params: LightGBM parameters.
        max_boost_rounds: Upper bound of boosting rounds.
        early_stopping_rounds: Patience of early stopping.
        inner_folds: Inner folds for early stopping and calibration scores.
        tune_trials: Optuna trials (0 = use ``params`` as given).
        seed: Random seed.
    """

    def __init__(
        self,
        params: dict[str, Any] | None = None,
        max_boost_rounds: int = 3000,
        early_stopping_rounds: int = 100,
        inner_folds: int = 4,
        tune_trials: int = 0,
        seed: int = 7,
    ) -> None:
        self.params = params
        self.max_boost_rounds = max_boost_rounds
        self.early_stopping_rounds = early_stopping_rounds
        self.inner_folds = inner_folds
        self.tune_trials = tune_trials
        self.seed = seed

    def _inner_cv(
        self, X: pd.DataFrame, y: np.ndarray, params: dict[str, Any]
    ) -> tuple[np.ndarray, list[int]]:
        import lightgbm as lgb

        oof = np.zeros(len(y), dtype=float)
        rounds: list[int] = []
        for fit_rows, held_rows in _stratified_folds(y, self.inner_folds, self.seed + 1):
            train_set = lgb.Dataset(X.iloc[fit_rows], y[fit_rows])
            valid_set = lgb.Dataset(X.iloc[held_rows], y[held_rows], reference=train_set)
            booster = lgb.train(
                {**params, "metric": "binary_logloss", "seed": self.seed},
                train_set,
                num_boost_round=self.max_boost_rounds,
                valid_sets=[valid_set],
                callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
            )
            best = int(booster.best_iteration or booster.current_iteration())
            rounds.append(max(best, 1))
            oof[held_rows] = booster.predict(X.iloc[held_rows], num_iteration=best)
        return oof, rounds

    def _tune(self, X: pd.DataFrame, y: np.ndarray, params: dict[str, Any]) -> dict[str, Any]:
        import optuna
        from sklearn.metrics import log_loss

        optuna.logging.set_verbosity(optuna.logging.WARNING)

        def objective(trial: optuna.Trial) -> float:
            candidate = {
                **params,
                "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
                "num_leaves": trial.suggest_int("num_leaves", 4, 64, log=True),
                "min_child_samples": trial.suggest_int("min_child_samples", 10, 200, log=True),
                "feature_fraction": trial.suggest_float("feature_fraction", 0.4, 1.0),
                "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 30.0, log=True),
            }
            if trial.number != 0:  # trial 0 is the configured default, depth limit included
                candidate["max_depth"] = -1
            oof, _ = self._inner_cv(X, y, candidate)
            return float(log_loss(y, np.clip(oof, 1e-6, 1 - 1e-6)))

        study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=self.seed))
        study.enqueue_trial(
            {
                k: params[k]
                for k in ("learning_rate", "num_leaves", "min_child_samples", "feature_fraction", "lambda_l2")
            }
        )
        study.optimize(objective, n_trials=self.tune_trials)
        best = {**params, **study.best_params}
        if study.best_trial.number != 0:
            best["max_depth"] = -1
        return best

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> CalibratedLgbm:
        """Fit on a prepared frame and 0/1 labels; returns self."""
        import lightgbm as lgb

        from training.calibrate import IsotonicCalibrator

        y = np.asarray(y, dtype=int)
        params = dict(self.params if self.params is not None else DEFAULT_CONFIG["lgbm_params"])
        if self.tune_trials > 0:
            params = self._tune(X, y, params)
        oof, rounds = self._inner_cv(X, y, params)
        self.params_ = params
        self.n_rounds_ = int(np.median(rounds))
        self.inner_oof_ = oof
        self.booster_ = lgb.train(
            {**params, "seed": self.seed}, lgb.Dataset(X, y), num_boost_round=self.n_rounds_
        )
        self.calibrator_ = IsotonicCalibrator().fit(oof, y)
        return self

    def predict_uncalibrated(self, X: pd.DataFrame) -> np.ndarray:
        """The booster's own probability."""
        return np.asarray(self.booster_.predict(X), dtype=float)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Two columns: P(retained), P(churned) (calibrated)."""
        p = np.clip(self.calibrator_.predict(self.predict_uncalibrated(X)), 0.0, 1.0)
        return np.column_stack([1.0 - p, p])


class DefaultLgbmBaseline:
    """LightGBM exactly as a user would run it first: library defaults, no tuning, no calibration.

    Args:
        seed: Random seed.
    """

    def __init__(self, seed: int = 7) -> None:
        self.seed = seed

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> DefaultLgbmBaseline:
        """Fit ``LGBMClassifier()`` with default parameters; returns self."""
        import lightgbm as lgb

        self.model_ = lgb.LGBMClassifier(random_state=self.seed, n_jobs=1, verbose=-1)
        self.model_.fit(X, np.asarray(y, dtype=int))
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Two columns: P(retained), P(churned)."""
        return self.model_.predict_proba(X)


class ConstantRateBaseline:
    """The training base rate for every row."""

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> ConstantRateBaseline:
        """Store the churn rate; returns self."""
        self.rate_ = float(np.mean(y))
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Two columns: 1 - rate, rate."""
        p = np.full(len(X), self.rate_)
        return np.column_stack([1.0 - p, p])


class CrossValidatedLogisticRegression:
    """Well-regularised logistic regression: ``LogisticRegressionBaseline`` with C chosen by inner CV.

    The candidate C giving the lowest inner stratified-CV log loss on the rows ``fit`` is given is
    refitted on all of them (so an outer evaluation stays nested).

    Args:
        Cs: Candidate inverse regularisation strengths.
        inner_folds: Inner folds.
        seed: Random seed of the fold assignment.
    """

    def __init__(
        self, Cs: Sequence[float] = DEFAULT_CONFIG["logreg_Cs"], inner_folds: int = 4, seed: int = 7
    ) -> None:
        self.Cs = Cs
        self.inner_folds = inner_folds
        self.seed = seed

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> CrossValidatedLogisticRegression:
        """Choose C by inner CV and refit; returns self."""
        from sklearn.base import clone
        from sklearn.metrics import log_loss

        from training.baselines import LogisticRegressionBaseline

        y = np.asarray(y, dtype=int)
        oof = {C: np.zeros(len(y)) for C in self.Cs}
        for fit_rows, held_rows in _stratified_folds(y, self.inner_folds, self.seed + 2):
            base = LogisticRegressionBaseline(C=1.0).fit(X.iloc[fit_rows], y[fit_rows])
            pipeline = getattr(base, "pipeline_", None)
            if pipeline is None:  # one class in the inner fold: the baseline is a constant
                for C in self.Cs:
                    oof[C][held_rows] = base.predict_proba(X.iloc[held_rows])[:, 1]
                continue
            # The preprocessing (one-hot, imputation, scaling) does not depend on C: fit it once per
            # fold and refit only the regression for each C (warm-started), which is what makes
            # choosing C by inner CV affordable.
            prepare, regression = pipeline.steps[0][1], pipeline.steps[-1][1]
            design_fit = prepare.transform(base._frame(X.iloc[fit_rows]))
            design_held = prepare.transform(base._frame(X.iloc[held_rows]))
            model = clone(regression).set_params(warm_start=True)
            for C in sorted(self.Cs):
                model.set_params(C=C).fit(design_fit, y[fit_rows])
                oof[C][held_rows] = model.predict_proba(design_held)[:, 1]
        losses = {C: float(log_loss(y, np.clip(oof[C], 1e-6, 1 - 1e-6), labels=[0, 1])) for C in self.Cs}
        self.C_ = min(losses, key=losses.get)
        self.cv_log_loss_ = losses
        self.model_ = LogisticRegressionBaseline(C=self.C_).fit(X, y)
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Two columns: P(retained), P(churned)."""
        return self.model_.predict_proba(X)


# --------------------------------------------------------------------------- evaluation

BASELINE_NAMES: tuple[str, ...] = ("base_rate", "logistic_regression", "lightgbm_default")


def _make_baselines(config: dict[str, Any]) -> dict[str, Any]:
    seed = int(config["seed"])
    return {
        "base_rate": ConstantRateBaseline(),
        "logistic_regression": CrossValidatedLogisticRegression(
            Cs=config["logreg_Cs"], inner_folds=config["inner_folds"], seed=seed
        ),
        "lightgbm_default": DefaultLgbmBaseline(seed=seed),
    }


def _make_model(config: dict[str, Any], tune_trials: int) -> CalibratedLgbm:
    return CalibratedLgbm(
        params=dict(config["lgbm_params"]),
        max_boost_rounds=int(config["max_boost_rounds"]),
        early_stopping_rounds=int(config["early_stopping_rounds"]),
        inner_folds=int(config["inner_folds"]),
        tune_trials=tune_trials,
        seed=int(config["seed"]),
    )


@dataclass
class ByoEvaluation:
    """Held-out predictions of our model and every baseline, on the same rows.

    Attributes:
        evaluation: ``stratified_5fold_oof`` or ``out_of_time``.
        test_positions: Row positions (in the parsed table) of the held-out rows, in ``y`` order.
        y: Held-out labels.
        predictions: ``{"model": p, baseline name: p}`` aligned with ``y``.
        n_train: Rows the evaluated models were fitted on (OOF: rows per fold, on average).
        details: Fold sizes / split dates and per-fold model facts (rounds, chosen C).
        final_model: The model to register (out-of-time: the evaluated one; OOF: None, fit later).
    """

    evaluation: str
    test_positions: np.ndarray
    y: np.ndarray
    predictions: dict[str, np.ndarray]
    n_train: int
    details: dict[str, Any]
    final_model: CalibratedLgbm | None = None


def evaluate_out_of_fold(
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    tune_trials: int = 0,
    config: dict[str, Any] | None = None,
    progress: Any = None,
) -> ByoEvaluation:
    """Stratified K-fold out-of-fold predictions of our model and the baselines (same folds).

    Everything that learns from data (rounds, C, calibration, tuning) happens inside each outer
    training part, so no outer test row influences its own prediction.

    Args:
        X: Prepared feature frame (``prepare_frame``).
        y: 0/1 labels.
        tune_trials: Optuna trials per outer fold (0 = fixed parameters).
        config: Overrides of ``DEFAULT_CONFIG``.
        progress: Optional ``callable(str)`` for progress lines.

    Returns:
        The evaluation (``test_positions`` = every row, each predicted once).
    """
    with _single_threaded():
        return _evaluate_out_of_fold(X, y, tune_trials=tune_trials, config=config, progress=progress)


def _single_threaded() -> Any:
    """Limit BLAS/OpenMP pools to one thread: on these small designs extra threads only contend."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _evaluate_out_of_fold(
    X: pd.DataFrame, y: np.ndarray, *, tune_trials: int, config: dict[str, Any] | None, progress: Any
) -> ByoEvaluation:
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    y = np.asarray(y, dtype=int)
    folds = _stratified_folds(y, int(cfg["n_folds"]), int(cfg["seed"]))
    predictions = {name: np.full(len(y), np.nan) for name in ("model", *BASELINE_NAMES)}
    fold_details = []
    for k, (train_rows, test_rows) in enumerate(folds):
        if progress:
            progress(f"fold {k + 1}/{len(folds)}: {len(train_rows)} training rows, {len(test_rows)} held out")
        X_train, y_train, X_test = X.iloc[train_rows], y[train_rows], X.iloc[test_rows]
        model = _make_model(cfg, tune_trials).fit(X_train, y_train)
        predictions["model"][test_rows] = model.predict_proba(X_test)[:, 1]
        detail: dict[str, Any] = {
            "fold": k + 1,
            "n_train": len(train_rows),
            "n_test": len(test_rows),
            "n_rounds": model.n_rounds_,
        }
        for name, baseline in _make_baselines(cfg).items():
            baseline.fit(X_train, y_train)
            predictions[name][test_rows] = baseline.predict_proba(X_test)[:, 1]
            if name == "logistic_regression":
                detail["logreg_C"] = baseline.C_
        fold_details.append(detail)
    return ByoEvaluation(
        evaluation="stratified_5fold_oof" if len(folds) == 5 else f"stratified_{len(folds)}fold_oof",
        test_positions=np.arange(len(y)),
        y=y,
        predictions=predictions,
        n_train=int(round(np.mean([d["n_train"] for d in fold_details]))),
        details={"n_folds": len(folds), "folds": fold_details},
    )


def time_split(row_time: pd.Series, fractions: Sequence[float] = (0.6, 0.2, 0.2)) -> tuple[np.ndarray, ...]:
    """Positions of the train / calibration / test rows: oldest, next, latest (no timestamp straddles).

    Args:
        row_time: Each row's date.
        fractions: Shares of rows for train, calibration, test (approximate when dates tie).

    Returns:
        Three arrays of row positions.

    Raises:
        ByoTableError: When a slice would be empty (too few distinct dates).
    """
    times = pd.to_datetime(row_time).to_numpy()
    ordered = np.sort(times)
    n = len(ordered)
    if n == 0:
        raise ByoTableError("time column: no row has a date, so there is nothing to split by date")
    cut_cal = ordered[min(n - 1, int(round(fractions[0] * n)))]
    cut_test = ordered[min(n - 1, int(round((fractions[0] + fractions[1]) * n)))]
    train = np.flatnonzero(times < cut_cal)
    cal = np.flatnonzero((times >= cut_cal) & (times < cut_test))
    test = np.flatnonzero(times >= cut_test)
    if min(len(train), len(cal), len(test)) == 0:
        raise ByoTableError(
            f"time column: cannot cut {n} rows into train/calibration/test slices by date "
            f"({len(train)}/{len(cal)}/{len(test)} rows); it needs more distinct dates"
        )
    return train, cal, test


def evaluate_out_of_time(
    X: pd.DataFrame,
    y: np.ndarray,
    row_time: pd.Series,
    *,
    tune_trials: int = 0,
    config: dict[str, Any] | None = None,
    progress: Any = None,
) -> ByoEvaluation:
    """Out-of-time evaluation: fit on the oldest rows, calibrate on the next, test on the latest.

    Our model: boosting rounds by early stopping and the isotonic calibrator both from the
    calibration slice (scored by a booster fitted on the training slice only); the booster is then
    refitted on train + calibration rows with those rounds. Baselines are fitted on the same
    train + calibration rows. All are scored on the same latest rows.

    Args:
        X: Prepared feature frame.
        y: 0/1 labels.
        row_time: Each row's date.
        tune_trials: Optuna trials (on the training slice, inner CV).
        config: Overrides of ``DEFAULT_CONFIG``.
        progress: Optional ``callable(str)``.

    Returns:
        The evaluation, with ``final_model`` = the evaluated model.
    """
    with _single_threaded():
        return _evaluate_out_of_time(
            X, y, row_time, tune_trials=tune_trials, config=config, progress=progress
        )


def _evaluate_out_of_time(
    X: pd.DataFrame,
    y: np.ndarray,
    row_time: pd.Series,
    *,
    tune_trials: int,
    config: dict[str, Any] | None,
    progress: Any,
) -> ByoEvaluation:
    import lightgbm as lgb

    from training.calibrate import IsotonicCalibrator

    cfg = {**DEFAULT_CONFIG, **(config or {})}
    y = np.asarray(y, dtype=int)
    train, cal, test = time_split(row_time, cfg["time_split"])
    for name, rows in (("training", train), ("calibration", cal), ("test", test)):
        if len(np.unique(y[rows])) < 2:
            raise ByoTableError(f"time column: the {name} slice ({len(rows)} rows) has only one label class")
    if progress:
        progress(f"out-of-time split: {len(train)} train, {len(cal)} calibration, {len(test)} test rows")
    model = _make_model(cfg, tune_trials)
    params = dict(model.params)
    if tune_trials > 0:
        params = model._tune(X.iloc[train], y[train], params)
    train_set = lgb.Dataset(X.iloc[train], y[train])
    booster = lgb.train(
        {**params, "metric": "binary_logloss", "seed": model.seed},
        train_set,
        num_boost_round=model.max_boost_rounds,
        valid_sets=[lgb.Dataset(X.iloc[cal], y[cal], reference=train_set)],
        callbacks=[lgb.early_stopping(model.early_stopping_rounds, verbose=False)],
    )
    rounds = max(int(booster.best_iteration or booster.current_iteration()), 1)
    cal_scores = booster.predict(X.iloc[cal], num_iteration=rounds)
    fit_rows = np.concatenate([train, cal])
    model.params_ = params
    model.n_rounds_ = rounds
    model.inner_oof_ = cal_scores
    model.booster_ = lgb.train(
        {**params, "seed": model.seed}, lgb.Dataset(X.iloc[fit_rows], y[fit_rows]), rounds
    )
    model.calibrator_ = IsotonicCalibrator().fit(cal_scores, y[cal])

    predictions = {"model": model.predict_proba(X.iloc[test])[:, 1]}
    details: dict[str, Any] = {"n_rounds": rounds}
    for name, baseline in _make_baselines(cfg).items():
        baseline.fit(X.iloc[fit_rows], y[fit_rows])
        predictions[name] = baseline.predict_proba(X.iloc[test])[:, 1]
        if name == "logistic_regression":
            details["logreg_C"] = baseline.C_
    times = pd.to_datetime(row_time).reset_index(drop=True)

    def span(rows: np.ndarray) -> list[str]:
        return [str(times.iloc[rows].min().date()), str(times.iloc[rows].max().date())]

    details.update(
        {
            "train_period": span(train),
            "calibration_period": span(cal),
            "test_period": span(test),
            "n_calibration": len(cal),
        }
    )
    return ByoEvaluation(
        evaluation="out_of_time",
        test_positions=test,
        y=y[test],
        predictions=predictions,
        n_train=len(fit_rows),
        details=details,
        final_model=model,
    )


# --------------------------------------------------------------------------- train / score entry points


def _echo(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _risk_bands() -> dict[str, float]:
    """Risk-band cut points: ``scoring.risk_bands`` of training/params.yaml (shared with canonical churn)."""
    try:
        import yaml

        doc = yaml.safe_load(Path(__file__).with_name("params.yaml").read_text())
        bands = (doc or {}).get("scoring", {}).get("risk_bands")
        if bands:
            return {"high": float(bands["high"]), "medium": float(bands["medium"])}
    except (OSError, KeyError, TypeError, ValueError):
        pass
    return dict(DEFAULT_CONFIG["risk_bands"])


def risk_band(p: np.ndarray, bands: dict[str, float]) -> np.ndarray:
    """``high`` / ``medium`` / ``low`` per churn probability."""
    p = np.asarray(p, dtype=float)
    return np.where(p >= bands["high"], "high", np.where(p >= bands["medium"], "medium", "low"))


def _fingerprint(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_bundle(model: CalibratedLgbm, schema: TableSchema, *, extra: dict[str, Any] | None = None) -> Any:
    """The serving bundle of a fitted model: booster + calibration + the parsing schema in state.json."""
    from serving.bundle import ModelBundle

    return ModelBundle.from_booster(
        model.booster_,
        model="churn",
        kind="classifier",
        feature_names=schema.feature_names,
        categorical=schema.categorical,
        calibration=model.calibrator_.to_json(),
        display_names=schema.display_names,
        extra={
            "byo_schema": schema.to_json(),
            "source": "byo_table",
            "n_rounds": model.n_rounds_,
            "lgbm_params": model.params_,
            "risk_bands": _risk_bands(),
            **(extra or {}),
        },
    )


def train_byo_table(
    table: Path,
    *,
    id_col: str,
    label_col: str,
    positive: str | None,
    time_col: str | None,
    tune: int,
    metrics_out: Path | None,
    register: bool,
) -> dict:
    """`revcast train churn --table FILE ...`: evaluate, train, log and register a churn model.

    Args:
        table: One-row-per-customer CSV or Parquet file.
        id_col: Customer id column.
        label_col: Churn label column.
        positive: Label value meaning churned (inferred for yes/no, true/false, 1/0, churned/retained).
        time_col: Optional observation-date column: enables the out-of-time evaluation and
            days-since features of other date columns.
        tune: Optuna trials (0 = fixed, regularised parameters).
        metrics_out: Write the metrics document (CONTRACT §2) here.
        register: Register the model as ``revcast-churn-table`` with alias ``challenger``.

    Returns:
        The metrics document.

    Raises:
        ByoTableError: Bad input (the message names file, column, rows and what was expected).
    """
    from training.evaluate import evaluate_model, metrics_document, paired_to_json

    table = Path(table)
    cfg = dict(DEFAULT_CONFIG)
    source = table.name
    raw = read_table(table)
    _echo(f"read {source}: {len(raw)} rows, {raw.shape[1]} columns")
    schema = infer_schema(
        raw,
        id_col=id_col,
        label_col=label_col,
        positive=positive,
        time_col=time_col,
        source=source,
        config=cfg,
    )
    parsed = apply_schema(raw, schema, source=source, with_label=True)
    _echo(f"label: {label_col!r} = {schema.positive!r} means churned, {schema.negative!r} retained")
    _echo(
        f"features used ({len(schema.columns)}): " + ", ".join(f"{c.name} [{c.kind}]" for c in schema.columns)
    )
    for name, reason in schema.refused.items():
        if name not in (id_col, label_col):
            _echo(f"refused {name!r}: {reason}")
    # parse warnings repeat the schema's "did not parse" notes with file lines: show those only
    notes = [n for n in schema.notes if "did not parse" not in n] + parsed.warnings
    for line in notes:
        _echo(f"note: {line}")
    rejected_line = summarise_rejected(parsed.rejected, source)
    if rejected_line:
        _echo(rejected_line)
    duplicated = parsed.ids[parsed.ids.duplicated(keep=False)]
    if len(duplicated):
        _echo(
            f"note: {duplicated.nunique()} id value(s) occur on several rows, e.g. {duplicated.unique()[:5].tolist()}"
        )

    X = prepare_frame(parsed.features, schema).reset_index(drop=True)
    y = parsed.y
    if time_col:
        result = evaluate_out_of_time(
            X, y, parsed.row_time.reset_index(drop=True), tune_trials=tune, config=cfg, progress=_echo
        )
        final = result.final_model
    else:
        result = evaluate_out_of_fold(X, y, tune_trials=tune, config=cfg, progress=_echo)
        _echo(f"final model on all {len(y)} rows")
        with _single_threaded():
            final = _make_model(cfg, tune).fit(X, y)

    baseline_predictions = {name: result.predictions[name] for name in BASELINE_NAMES}
    train_y = y if not time_col else np.delete(y, result.test_positions)
    evaluation = evaluate_model(
        "classifier",
        result.y,
        result.predictions["model"],
        baseline_predictions,
        n_positive=int(train_y.sum()),
        n_negative=int(len(train_y) - train_y.sum()),
        n_boot=int(cfg["n_boot"]),
        seed=int(cfg["seed"]),
    )
    document = metrics_document(
        "churn",
        result.evaluation,
        result.n_train,
        len(result.y),
        len(parsed.rejected),
        evaluation.model_metrics,
        evaluation.baselines,
        evaluation.intervals,
        evaluation.verdict,
        evaluation.reasons,
        None,
        source="byo_table",
        table=str(table),
        label_positive=schema.positive,
        label_negative=schema.negative,
        id_col=id_col,
        time_col=time_col,
        features_used=[{"column": c.name, "feature": c.feature_name, "kind": c.kind} for c in schema.columns],
        features_refused=dict(schema.refused),
        notes=notes,
        rejected_rows=parsed.rejected[:20],
        paired=paired_to_json(evaluation.paired),
        evaluation_details=result.details,
        final_model={
            "n_rows": len(y) if not time_col else result.n_train,
            "n_rounds": final.n_rounds_,
            "params": final.params_,
        },
        tune_trials=tune,
        registered_name="revcast-" + cfg["registered_name"],
    )
    _echo(
        f"{result.evaluation}: auc {document['auc']:.4f} (logistic regression "
        f"{document['baselines']['logistic_regression']['auc']:.4f}, default LightGBM "
        f"{document['baselines']['lightgbm_default']['auc']:.4f}), brier {document['brier']:.4f}, "
        f"ece {document['ece']:.4f}; verdict {document['verdict']}"
    )

    bundle = build_bundle(
        final,
        schema,
        extra={
            "data_fingerprint": _fingerprint(table),
            "evaluation": result.evaluation,
            "trained_rows": int(len(y) if not time_col else result.n_train),
        },
    )
    document = _log_and_register(bundle, document, X, y, parsed, result, schema, cfg, register=register)
    if metrics_out is not None:
        metrics_out = Path(metrics_out)
        metrics_out.parent.mkdir(parents=True, exist_ok=True)
        metrics_out.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
        _echo(f"metrics written to {metrics_out}")
    return document


def _log_and_register(
    bundle: Any,
    document: dict[str, Any],
    X: pd.DataFrame,
    y: np.ndarray,
    parsed: ParsedTable,
    result: ByoEvaluation,
    schema: TableSchema,
    cfg: dict[str, Any],
    *,
    register: bool,
) -> dict[str, Any]:
    """Log the run in experiment ``revcast-churn`` and register ``revcast-churn-table`` (alias challenger)."""
    from serving.registry import SHA256_TAG, mlflow_client
    from training.tracking import log_training_run
    from training.tracking import register as register_version

    rows = result.test_positions
    # raw feature values (text categories, float numbers): what a caller sends to the model
    test_set = parsed.features.reset_index(drop=True).iloc[rows].copy()
    test_set.insert(
        0,
        schema.id_col if schema.id_col not in test_set.columns else "customer_id",
        parsed.ids.to_numpy()[rows],
    )
    test_set["label_churn"] = y[rows]
    test_set["heldout_churn_probability"] = result.predictions["model"]
    logged = log_training_run(
        "churn",
        bundle=bundle,
        training_params=cfg,
        metrics_document=document,
        test_set=test_set,
        label_column="label_churn",
        params={
            "source": "byo_table",
            "evaluation": result.evaluation,
            "n_rounds": bundle.state["n_rounds"],
            "lgbm": bundle.state["lgbm_params"],
            "id_col": schema.id_col,
            "label_col": schema.label_col,
            "time_col": schema.time_col,
            "label_positive": schema.positive,
        },
        data_fingerprint=bundle.state.get("data_fingerprint"),
        tags={
            "revcast.source": "byo_table",
            "revcast.registered_name": "revcast-" + cfg["registered_name"],
            **(
                {"test_set_note": "OOF rows; the registered model was refitted on them"}
                if result.evaluation != "out_of_time"
                else {}
            ),
        },
        register_model=False,
        run_name=f"byo-table-{result.evaluation}",
    )
    document = dict(logged.metrics_document)
    trained = trained_positions(result, len(y))
    mlflow_client().log_dict(
        logged.run_id,
        {"id_col": schema.id_col, "ids": [str(i) for i in parsed.ids.to_numpy()[trained]]},
        TRAINED_IDS_ARTIFACT,
    )
    if register and logged.model_uri:
        version = register_version(
            logged.model_uri,
            cfg["registered_name"],
            tags={SHA256_TAG: bundle.sha256, "verdict": str(document["verdict"]), "source": "byo_table"},
        )
        mlflow_client().set_tag(logged.run_id, "registered_version", version)
        document["registered_version"] = version
        _echo(
            f"registered revcast-{cfg['registered_name']} version {version} (alias challenger); run {logged.run_id}"
        )
    return document


def _write_scores(frame: pd.DataFrame, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix == ".parquet":
        frame.to_parquet(out, index=False)
    elif suffix == ".json":
        out.write_text(json.dumps(frame.to_dict(orient="records"), indent=1) + "\n")
    elif suffix == ".csv":
        frame.to_csv(out, index=False)
    else:
        raise ByoTableError(f"{out}: unsupported output format {suffix!r}; expected .csv, .parquet or .json")


def score_frame(
    raw: pd.DataFrame, bundle: Any, *, source: str = "table", top_k: int | None = None
) -> tuple[pd.DataFrame, ParsedTable]:
    """Score a raw table with a bring-your-own bundle (pure: no I/O).

    Args:
        raw: The table from :func:`read_table` (the label column may be absent).
        bundle: A ``ModelBundle`` trained by :func:`train_byo_table`.
        source: File name for messages.
        top_k: Top factors per row (default: config).

    Returns:
        ``(scores, parsed)``: one row per parsed row with the id column, ``churn_probability``,
        ``risk_band`` and ``top_factors`` (JSON text); ``parsed.rejected`` lists rows not scored.
    """
    if "byo_schema" not in bundle.state:
        raise ByoTableError("the model is not a bring-your-own table model (no byo_schema in its state)")
    schema = TableSchema.from_json(bundle.state["byo_schema"])
    parsed = apply_schema(raw, schema, source=source, with_label=False)
    features = parsed.features
    p = bundle.predict(features) if len(features) else np.zeros(0)
    factors = bundle.explain(features, top_k=top_k or DEFAULT_CONFIG["top_factors"]) if len(features) else []
    bands = bundle.state.get("risk_bands") or _risk_bands()
    scores = pd.DataFrame(
        {
            schema.id_col: parsed.ids.to_numpy(),
            "churn_probability": np.round(p, 6),
            "risk_band": risk_band(p, bands),
            "top_factors": [json.dumps(f) for f in factors],
        }
    )
    return scores, parsed


def score_byo_table(table: Path, *, out: Path, alias: str = "champion") -> dict:
    """`revcast score accounts --table FILE --out FILE`: score a churn table with the registered model.

    Uses ``revcast-churn-table@<alias>``; when ``alias`` is ``champion`` and no champion exists yet,
    the challenger is used and the report says so. Rows that cannot be scored (missing id, bad time
    column) are written to ``<out stem>.rejected.csv`` and reported.

    Args:
        table: CSV or Parquet file with the columns the model was trained with (label optional).
        out: Output file (.csv, .parquet or .json).
        alias: Registry alias.

    Returns:
        A report: model name/version/alias, n_scored, n_rejected, rejected sample, warnings, out.
    """
    from serving.registry import ModelNotFoundError, resolve_bundle

    table, out = Path(table), Path(out)
    name = DEFAULT_CONFIG["registered_name"]
    raw = read_table(table)
    notes: list[str] = []
    try:
        bundle, info = resolve_bundle(name, alias)
    except ModelNotFoundError:
        if alias != "champion":
            raise
        try:
            bundle, info = resolve_bundle(name, "challenger")
        except ModelNotFoundError as exc:
            raise ByoTableError(
                f"no model registered as revcast-{name}; train one with `revcast train churn --table ...`"
            ) from exc
        notes.append(
            f"no champion of revcast-{name} yet: scored with the challenger (version {info['version']})"
        )
    scores, parsed = score_frame(raw, bundle, source=table.name)
    scores["model_version"] = info["version"]
    _write_scores(scores, out)
    rejected_path = None
    if parsed.rejected:
        rejected_path = out.with_name(out.stem + ".rejected.csv")
        pd.DataFrame(
            [{"line": r["line"], "id": r["id"], "errors": "; ".join(r["errors"])} for r in parsed.rejected]
        ).to_csv(rejected_path, index=False)
    for line in [*notes, *parsed.warnings]:
        _echo(f"note: {line}")
    rejected_line = summarise_rejected(parsed.rejected, table.name)
    if rejected_line:
        _echo(f"{rejected_line} (all listed in {rejected_path})")
    _echo(f"scored {len(scores)} row(s) with revcast-{name} v{info['version']} ({info['alias']}) -> {out}")
    return {
        "model": f"revcast-{name}",
        "model_version": info["version"],
        "alias": info["alias"],
        "out": str(out),
        "n_scored": len(scores),
        "n_rejected": len(parsed.rejected),
        "rejected": parsed.rejected[:20],
        "rejected_file": str(rejected_path) if rejected_path else None,
        "warnings": [*notes, *parsed.warnings],
    }


# --------------------------------------------------------------------------- promotion


def trained_positions(result: ByoEvaluation, n_rows: int) -> np.ndarray:
    """Row positions the registered model was fitted on.

    Out-of-fold evaluation refits the registered model on every row; the out-of-time one fits it on
    the training and calibration rows, never on the test rows.
    """
    every = np.arange(n_rows)
    if result.evaluation == "out_of_time":
        return np.setdiff1d(every, result.test_positions)
    return every


def load_trained_ids(run_id: str, tracking_uri: str | None = None) -> set[str] | None:
    """Ids of the rows a bring-your-own run's registered model was fitted on (None: not recorded)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from serving.registry import tracking_uri as default_tracking_uri

    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id,
            artifact_path=TRAINED_IDS_ARTIFACT,
            tracking_uri=tracking_uri or default_tracking_uri(),
        )
    except (MlflowException, OSError):
        return None
    return {str(i) for i in json.loads(Path(local).read_text())["ids"]}


def byo_paired_comparison(
    test_set: pd.DataFrame,
    spec: dict[str, Any],
    challenger: Any,
    champion: Any,
    *,
    champion_trained_ids: set[str] | None,
    n_boot: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired bootstrap of AUC, challenger minus champion, on rows neither model was fitted on.

    The challenger's scores are its stored held-out predictions (out-of-fold or out-of-time), never
    the refitted model's in-sample scores; the champion scores the same rows, minus every row whose
    id it was fitted on (a model scoring its own training rows would look better than it is).

    Args:
        test_set: The challenger run's held-out rows (id, parsed features, label, held-out probability).
        spec: The run's ``test_set.json`` (label column).
        challenger: The challenger bundle (its schema names the id column).
        champion: The champion bundle (scores the parsed features).
        champion_trained_ids: Ids the champion was fitted on; None when its run did not record them.
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.

    Returns:
        ``{"metric": "auc", "delta", "lo", "hi", "n", "n_excluded"}``.

    Raises:
        ValueError: The champion's training rows are unknown, or too few held-out rows remain.
    """
    from training.evaluate import paired_bootstrap_delta

    if champion_trained_ids is None:
        raise ValueError("the champion's training rows are not recorded, so no fair comparison is possible")
    id_col = challenger.state["byo_schema"]["id_col"]
    id_col = id_col if id_col in test_set.columns else "customer_id"
    unseen = ~test_set[id_col].astype(str).isin(champion_trained_ids).to_numpy()
    rows = test_set[unseen]
    labels = rows[spec["label_column"]].to_numpy(dtype=float)
    n_pos = int(labels.sum())
    if len(rows) < PROMOTION_MIN_ROWS or min(n_pos, len(rows) - n_pos) < PROMOTION_MIN_POSITIVES:
        raise ValueError(
            f"the champion was fitted on {int((~unseen).sum())} of the challenger's {len(test_set)} held-out "
            f"rows; {len(rows)} rows ({n_pos} churned) remain, fewer than the {PROMOTION_MIN_ROWS} rows and "
            f"{PROMOTION_MIN_POSITIVES} of each class a paired comparison needs (train the challenger on a "
            "table with customers the champion has not seen, or use --force with a reason)"
        )
    delta, lo, hi = paired_bootstrap_delta(
        labels,
        rows["heldout_churn_probability"].to_numpy(dtype=float),
        champion.predict(rows),
        "auc",
        n_boot=n_boot,
        seed=seed,
    )
    return {
        "metric": "auc",
        "delta": delta,
        "lo": lo,
        "hi": hi,
        "n": len(rows),
        "n_excluded": int((~unseen).sum()),
    }


def promotion_evaluate_fn(tracking_uri: str | None = None) -> Any:
    """The ``evaluate_fn`` of ``training.tracking.promote`` for ``churn-table`` models.

    Looks up the current champion's training ids once; ``promote`` calls the returned function only
    when a champion exists.
    """
    from functools import partial

    from serving.registry import CHAMPION, ModelNotFoundError, model_version_by_alias

    name = DEFAULT_CONFIG["registered_name"]
    try:
        champion = model_version_by_alias(name, CHAMPION, tracking_uri)
    except ModelNotFoundError:
        return partial(byo_paired_comparison, champion_trained_ids=None)
    trained = load_trained_ids(champion.run_id, tracking_uri) if champion.run_id else None
    return partial(byo_paired_comparison, champion_trained_ids=trained)
