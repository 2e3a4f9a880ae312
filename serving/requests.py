"""Turn API request bodies into canonical Tables, record by record, reporting every rejected record.

The API computes features with the same builders as the batch path; this module only changes the
shape of the data: nested JSON records -> one DataFrame per contract table with canonical dtypes
(ARCHITECTURE.md "Canonical in-memory tables"). A record that is invalid, or that cannot be scored as
of the request's ``as_of``, goes to ``rejected`` with every reason found, naming the field; the other
records are unaffected. Nothing is dropped silently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ValidationError

from features.contract import TABLES, ColumnSpec
from serving.config import DEFAULT_CLOSED_STAGES, closed_stage_key
from serving.schemas import AccountOpportunityIn, ChurnAccountIn, OpportunityIn

Tables = dict[str, pd.DataFrame]

# Canonical columns of the tables the API builds, derived from the data contract (features.contract)
# so that a request record gets exactly the dtypes and lower-casing a loaded dataset gets.
_ID, _TIME, _NUM, _BOOL, _ENUM, _TEXT = "id", "time", "num", "bool", "enum", "text"
_API_TABLES = (
    "accounts",
    "opportunities",
    "opportunity_history",
    "activities",
    "subscriptions",
    "usage",
    "tickets",
    "surveys",
)


def _column_kind(column: ColumnSpec) -> str:
    if column.kind == "timestamp":
        return _TIME
    if column.kind == "number":
        return _NUM
    if column.kind == "bool":
        return _BOOL
    if column.kind == "enum" or (column.kind == "category" and column.lowercase):
        return _ENUM
    return _ID if column.kind == "id" else _TEXT


TABLE_COLUMNS: dict[str, dict[str, str]] = {
    name: {column.name: _column_kind(column) for column in TABLES[name].columns} for name in _API_TABLES
}


class RequestError(ValueError):
    """The request as a whole is unacceptable (answered 4xx, never 5xx).

    Attributes:
        status: HTTP status to answer.
        field: Dotted path of the offending field, when there is one.
    """

    def __init__(self, message: str, *, status: int = 422, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


@dataclass
class PreparedBatch:
    """The accepted records of a request as canonical tables, plus the rejected ones.

    Attributes:
        tables: Canonical tables built from the accepted records only.
        accepted: ``(index in request, caller id)`` of each accepted record, in request order.
        rejected: ``{"index", "<id field>", "errors"}`` per rejected record, in request order.
        as_of: The timestamp the records are scored as of (timezone-naive UTC).
        values: Per accepted caller id, values the response needs besides the model output
            (``amount`` of a deal, ``arr`` of an account).
        rows: The table rows the tables are built from (``build_tables``); kept so that several
            requests' rows can be merged before any frame is built (serving.coalesce).
        namespaced: Several requests merged into one build: every ``*_id`` value is prefixed by its
            request (serving.coalesce).
    """

    tables: Tables
    accepted: list[tuple[int, str]]
    rejected: list[dict[str, Any]]
    as_of: pd.Timestamp
    values: dict[str, dict[str, float | None]] = field(default_factory=dict)
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    namespaced: bool = False

    def reject(self, index: int, caller_id: str, id_field: str, errors: list[str]) -> None:
        """Move an accepted record to ``rejected`` (e.g. when the feature builder returns no row for it)."""
        self.accepted = [(i, cid) for i, cid in self.accepted if i != index]
        self.rejected.append({"index": index, id_field: caller_id, "errors": errors})
        self.rejected.sort(key=lambda item: item["index"])


# --------------------------------------------------------------------------- envelope


def parse_json_body(body: bytes) -> Any:
    """Parse a request body as strict JSON: NaN and Infinity are refused, naming where they are.

    Args:
        body: Raw request body.

    Returns:
        The decoded JSON value.

    Raises:
        RequestError: 400 when the body is not JSON, 422 when it holds a non-finite number.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"body is not UTF-8 text: {exc.reason} at byte {exc.start}", status=400) from exc
    try:
        # NaN/Infinity tokens are not JSON; decode them to floats so the scan below can name the field.
        value = json.loads(text, parse_constant=float)
    except json.JSONDecodeError as exc:
        raise RequestError(
            f"body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", status=400
        ) from exc
    except RecursionError as exc:
        raise RequestError("body is nested too deeply", status=400) from exc
    path = find_non_finite(value)
    if path is not None:
        raise RequestError(
            f"{path}: NaN and Infinity are not allowed (JSON numbers must be finite)", field=path
        )
    return value


def find_non_finite(value: Any, path: str = "") -> str | None:
    """Return the path (``opportunities[2].amount``) of the first NaN/Infinity in a JSON value, or None."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where or "<body>"
        if isinstance(item, dict):
            stack.extend(
                (child, f"{where}.{key}" if where else str(key)) for key, child in reversed(item.items())
            )
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in reversed(list(enumerate(item))))
    return None


def to_timestamp(value: datetime | date) -> pd.Timestamp:
    """A date or datetime as a timezone-naive UTC timestamp (dates mean midnight UTC)."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return pd.Timestamp(value)
    return pd.Timestamp(value.year, value.month, value.day)


def parse_envelope(
    payload: Any, records_key: str, max_records: int, now: datetime | None = None
) -> tuple[pd.Timestamp, list[Any]]:
    """Check the request envelope: a JSON object with an optional ``as_of`` and 1..max records.

    Args:
        payload: Decoded JSON body.
        records_key: ``opportunities`` or ``accounts``.
        max_records: Largest accepted batch.
        now: The time used when ``as_of`` is absent (default: now, UTC).

    Returns:
        ``(as_of, records)`` with ``as_of`` a timezone-naive UTC timestamp.

    Raises:
        RequestError: 422 naming the field, or 413 when the batch is too large.
    """
    if not isinstance(payload, dict):
        raise RequestError(f"body must be a JSON object with '{records_key}', got {type(payload).__name__}")
    unknown = sorted(set(payload) - {"as_of", records_key})
    if unknown:
        raise RequestError(
            f"{unknown[0]}: unknown field (expected only 'as_of' and '{records_key}')", field=unknown[0]
        )
    if records_key not in payload:
        raise RequestError(f"{records_key}: required field is missing", field=records_key)
    records = payload[records_key]
    if not isinstance(records, list):
        raise RequestError(
            f"{records_key}: expected a list of records, got {type(records).__name__}", field=records_key
        )
    if not records:
        raise RequestError(f"{records_key}: expected at least 1 record, got 0", field=records_key)
    if len(records) > max_records:
        raise RequestError(
            f"{records_key}: {len(records)} records is more than the limit of {max_records} per request",
            status=413,
            field=records_key,
        )
    raw_as_of = payload.get("as_of")
    as_of = to_timestamp(now or datetime.now(UTC)) if raw_as_of is None else parse_as_of(raw_as_of)
    return as_of, records


def parse_as_of(value: Any) -> pd.Timestamp:
    """Parse ``as_of`` (ISO date or datetime string) into a timezone-naive UTC timestamp."""
    if not isinstance(value, str):
        raise RequestError(
            f"as_of: expected an ISO-8601 date or datetime string, got {type(value).__name__}", field="as_of"
        )
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise RequestError(f"as_of: not an ISO-8601 date or datetime: {value!r}", field="as_of") from exc
    if not 1900 <= parsed.year <= 2262:
        raise RequestError(f"as_of: year {parsed.year} is out of range (1900-2262)", field="as_of")
    return to_timestamp(parsed)


# --------------------------------------------------------------------------- records


def _validation_errors(exc: ValidationError) -> list[str]:
    """Pydantic errors as ``field.path: message (got value)`` lines, never echoing long values."""
    lines = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "<record>"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] not in ("missing", "value_error") and "input" in error:
            shown = repr(error["input"])
            message += f" (got {shown if len(shown) <= 40 else shown[:37] + '...'})"
        lines.append(f"{where}: {message}")
    return lines


def _validate(model: type[BaseModel], record: Any) -> tuple[BaseModel | None, list[str]]:
    if not isinstance(record, dict):
        return None, [f"<record>: expected a JSON object, got {type(record).__name__}"]
    try:
        return model.model_validate(record), []
    except ValidationError as exc:
        return None, _validation_errors(exc)


def _caller_id(record: Any, id_field: str) -> str | None:
    """The caller's id of a record exactly as sent (a rejection names the record the caller sent)."""
    if (
        isinstance(record, dict)
        and isinstance(record.get(id_field), str | int)
        and not isinstance(record.get(id_field), bool)
    ):
        return str(record[id_field])
    return None


def _after(items: Iterable[BaseModel], attr: str, as_of: pd.Timestamp, where: str) -> list[str]:
    """Errors for nested rows dated after as_of: the caller sent facts the model must not see."""
    errors = []
    for i, item in enumerate(items):
        value = getattr(item, attr)
        if value is not None and to_timestamp(value) > as_of:
            errors.append(f"{where}[{i}].{attr}: {value} is after as_of {as_of.isoformat()}")
    return errors


# Which contract table the rows of each nested list become, so that a record's rows are checked by
# that table's rules (TableSpec.ordered). A list missing here is a test failure (test_record_checks).
RECORD_TABLES: dict[str, str] = {"opportunities": "opportunities", "accounts": "accounts"}
NESTED_TABLES: dict[type[BaseModel], dict[str, str]] = {
    OpportunityIn: {
        "account": "accounts",
        "history": "opportunity_history",
        "activities": "activities",
    },
    ChurnAccountIn: {
        "subscriptions": "subscriptions",
        "usage": "usage",
        "tickets": "tickets",
        "surveys": "surveys",
        "activities": "activities",
        "opportunities": "opportunities",
    },
    AccountOpportunityIn: {"history": "opportunity_history"},
}


def _day(value: datetime | date) -> pd.Timestamp:
    """The UTC day of a time: batch validation compares a row's times by day (CRMs export dates)."""
    return to_timestamp(value).normalize()


def _out_of_order(model: BaseModel, table: str, where: str = "") -> list[str]:
    """Errors for times of one row that contradict each other, by the contract's ``ordered`` pairs.

    The same rule as batch validation (features.data): a ``later`` on a day before its ``earlier``
    is a row problem; batch skips the row, the API rejects the record naming the nested field.
    Nested rows of the model (``NESTED_TABLES``) are checked too.

    Args:
        model: A validated record or nested row.
        table: The contract table its row belongs to.
        where: Path prefix of the model in the record (``"tickets[2]."``; ``""`` for the record).

    Returns:
        One line per contradiction, naming the later field.
    """
    errors = []
    for earlier, later in TABLES[table].ordered:
        first, second = getattr(model, earlier, None), getattr(model, later, None)
        if first is not None and second is not None and _day(second) < _day(first):
            errors.append(
                f"{where}{later}: {second} is before its {earlier} {first} "
                "(compared by day; batch validation skips such rows)"
            )
    for name, child_table in NESTED_TABLES.get(type(model), {}).items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            errors += _out_of_order(value, child_table, f"{where}{name}.")
        elif value is not None:
            for i, item in enumerate(value):
                errors += _out_of_order(item, child_table, f"{where}{name}[{i}].")
    return errors


def _row(model: BaseModel, columns: Mapping[str, str], **overrides: Any) -> dict[str, Any]:
    """One table row from a record: contract columns plus extra (unknown) fields, kept as given."""
    data = model.model_dump(exclude_none=False)
    row = {name: data.get(name) for name in columns}
    for name, value in (model.model_extra or {}).items():
        row.setdefault(name, value)
    row.update(overrides)
    return row


def _frame(rows: Sequence[dict[str, Any]], columns: Mapping[str, str], keep_extra: bool) -> pd.DataFrame:
    """Rows -> DataFrame with the canonical dtype of every contract column.

    Columns are converted as plain lists and the frame is built in one constructor call: per-column
    pandas operations are the main cost on the few rows of a typical request.

    Args:
        rows: Table rows.
        columns: Contract column -> kind.
        keep_extra: Keep unknown columns (numeric ones become float64, as usage metrics).
    """
    extra: list[str] = []
    if keep_extra:
        extra = list(dict.fromkeys(name for row in rows for name in row if name not in columns))
    data: dict[str, Any] = {}
    for name, kind in columns.items():
        raw = [row.get(name) for row in rows]
        if kind == _TIME:
            data[name] = np.array(
                [np.datetime64("NaT", "ns") if v is None else to_timestamp(v).asm8 for v in raw],
                dtype="datetime64[ns]",
            )
        elif kind in (_NUM, _BOOL):
            data[name] = _float_array(raw)
        elif kind == _ID:
            data[name] = np.array([canonical_text(v) for v in raw] or [], dtype=object)
        else:
            lower = kind == _ENUM
            data[name] = np.array(
                [canonical_text(v, lower=lower, strip=True) for v in raw] or [], dtype=object
            )
    for name in extra:
        raw = [row.get(name) for row in rows]
        if all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in raw):
            data[name] = _float_array(raw)
        else:
            data[name] = np.array(
                [np.nan if v is None and name not in row else v for v, row in zip(raw, rows, strict=True)],
                dtype=object,
            )
    return pd.DataFrame(data, index=pd.RangeIndex(len(rows)), columns=[*columns, *extra])


def _float_array(values: Sequence[Any]) -> np.ndarray:
    """float64 values, None as NaN."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype="float64")


def canonical_text(value: Any, lower: bool = False, *, strip: bool = False) -> str | None:
    """Canonical text cell: str, blank -> None; stripped if ``strip``, lower case if ``lower``.

    The default is the id clean-up: an id is kept as sent, surrounding whitespace included, so that
    the answer carries the caller's id and ``"o-1"`` and ``"o-1 "`` stay two records (the API's ids
    are validated non-blank; serving.coalesce applies this to every ``*_id`` value it prefixes).
    Labels and free text are stripped (``strip=True``), as features.data does for files.

    Args:
        value: A cell value (None for missing).
        lower: Lower-case the text (enum-like labels such as stage or type); implies ``strip``.
        strip: Remove surrounding whitespace.

    Returns:
        The text, or None when the value is missing or blank.
    """
    if value is None:
        return None
    text = str(value)
    if not text.strip():
        return None
    if lower:
        return text.strip().lower()
    return text.strip() if strip else text


def _empty_tables(names: Iterable[str]) -> Tables:
    return {name: _frame([], TABLE_COLUMNS[name], keep_extra=False) for name in names}


# Nested rows with their own id: given twice within one request, the first one is kept.
_DEDUPLICATED_TABLES = {
    "subscriptions": "subscription_id",
    "tickets": "ticket_id",
    "activities": "activity_id",
}


def build_tables(rows: Mapping[str, Sequence[dict[str, Any]]]) -> Tables:
    """Canonical tables from the table rows of prepared records (``PreparedBatch.rows``).

    Args:
        rows: Table name -> rows.

    Returns:
        One frame per table with the contract's dtypes (usage keeps its extra numeric metric columns);
        subscriptions, tickets and activities keep the first row of each id.
    """
    tables = {
        name: _frame(table_rows, TABLE_COLUMNS[name], keep_extra=name == "usage")
        for name, table_rows in rows.items()
    }
    for name, key in _DEDUPLICATED_TABLES.items():
        frame = tables.get(name)
        if frame is not None and len(frame) > 1 and frame[key].duplicated().any():
            tables[name] = frame.drop_duplicates(subset=[key], keep="first").reset_index(drop=True)
    return tables


def prepare_opportunities(
    records: Sequence[Any],
    as_of: pd.Timestamp,
    *,
    with_tables: bool = True,
    closed_stages: Collection[str] = DEFAULT_CLOSED_STAGES,
) -> PreparedBatch:
    """Validate opportunity records and build the tables the win/amount features are computed from.

    Each record's current state (stage, amount, expected_close_date) is its state as of ``as_of``;
    the caller of the feature builder passes ``current_state_as_of=as_of``.

    Args:
        records: The ``opportunities`` list of the request (decoded JSON).
        as_of: Timestamp the deals are scored as of.
        with_tables: False leaves ``tables`` empty (only ``rows``), for requests merged before
            their tables are built.
        closed_stages: Stages in ``closed_stage_key`` form (``ServiceConfig.closed_stages``) that
            mean a deal is closed; a deal whose stage has one of these keys is rejected naming ``stage``.

    Returns:
        The batch: tables ``accounts``, ``opportunities``, ``opportunity_history``, ``activities``.
    """
    accepted: list[tuple[int, str]] = []
    rejected: list[dict[str, Any]] = []
    rows: dict[str, list[dict[str, Any]]] = {
        name: [] for name in ("accounts", "opportunities", "opportunity_history", "activities")
    }
    accounts_seen: dict[str, tuple[dict[str, Any], str]] = {}
    activity_owner: dict[str, str] = {}
    values: dict[str, dict[str, float | None]] = {}
    for index, record in enumerate(records):
        caller_id = _caller_id(record, "opportunity_id")
        parsed, errors = _validate(OpportunityIn, record)
        if parsed is not None:
            assert isinstance(parsed, OpportunityIn)
            errors = _check_opportunity(parsed, as_of, closed_stages)
            if parsed.opportunity_id in values:
                errors.append(
                    f"opportunity_id: {parsed.opportunity_id!r} appears more than once in the request"
                )
            account_row = None
            if parsed.account is not None:
                account_row = _row(parsed.account, TABLE_COLUMNS["accounts"])
                previous = accounts_seen.get(parsed.account_id)
                if previous is not None and previous[0] != account_row:
                    errors.append(
                        f"account: differs from the account {parsed.account_id!r} given with opportunity {previous[1]!r}"
                    )
            for i, activity in enumerate(parsed.activities):
                owner = activity_owner.get(activity.activity_id)
                if owner is not None and owner != parsed.opportunity_id:
                    errors.append(
                        f"activities[{i}].activity_id: {activity.activity_id!r} is also given with opportunity {owner!r}"
                    )
        if errors or parsed is None:
            rejected.append({"index": index, "opportunity_id": caller_id, "errors": errors})
            continue
        assert isinstance(parsed, OpportunityIn)
        opp_id = parsed.opportunity_id
        accepted.append((index, opp_id))
        values[opp_id] = {"amount": parsed.amount}
        if account_row is not None and parsed.account_id not in accounts_seen:
            accounts_seen[parsed.account_id] = (account_row, opp_id)
            rows["accounts"].append(account_row)
        rows["opportunities"].append(_row(parsed, TABLE_COLUMNS["opportunities"]))
        for item in parsed.history:
            rows["opportunity_history"].append(
                _row(item, TABLE_COLUMNS["opportunity_history"], opportunity_id=opp_id)
            )
        for activity in parsed.activities:
            if activity.activity_id in activity_owner:
                continue  # the same activity sent with the same deal twice is one activity
            activity_owner[activity.activity_id] = opp_id
            rows["activities"].append(
                _row(
                    activity, TABLE_COLUMNS["activities"], account_id=parsed.account_id, opportunity_id=opp_id
                )
            )
    tables = build_tables(rows) if with_tables else {}
    return PreparedBatch(
        tables=tables, accepted=accepted, rejected=rejected, as_of=as_of, values=values, rows=rows
    )


def _check_opportunity(opp: OpportunityIn, as_of: pd.Timestamp, closed_stages: Collection[str]) -> list[str]:
    """Reasons why a well-formed deal cannot be scored as of ``as_of``."""
    errors = []
    if to_timestamp(opp.created_at) > as_of:
        errors.append(f"created_at: {opp.created_at} is after as_of {as_of.isoformat()}")
    if opp.outcome in ("won", "lost"):
        errors.append(f"outcome: the deal is already {opp.outcome}; only open deals are scored")
    elif opp.closed_at is not None and to_timestamp(opp.closed_at) <= as_of:
        errors.append(
            f"closed_at: the deal closed on {opp.closed_at}, on or before as_of; only open deals are scored"
        )
    elif opp.stage is not None and closed_stage_key(opp.stage) in closed_stages:
        # Scored as open, a closed stage is just an unseen category: the deal would get an open
        # deal's score (the same as stage "banana") instead of being reported.
        errors.append(
            f"stage: {opp.stage!r} means the deal is closed and closed deals are not scored; "
            "send its closed_at and outcome (won/lost)"
        )
    if opp.account is not None:
        if opp.account.account_id != opp.account_id:
            errors.append(
                f"account.account_id: {opp.account.account_id!r} differs from account_id {opp.account_id!r}"
            )
        if to_timestamp(opp.account.created_at) > as_of:
            errors.append(f"account.created_at: {opp.account.created_at} is after as_of {as_of.isoformat()}")
    errors += _after(opp.history, "changed_at", as_of, "history")
    errors += _after(opp.activities, "occurred_at", as_of, "activities")
    errors += _out_of_order(opp, RECORD_TABLES["opportunities"])
    for i, activity in enumerate(opp.activities):
        if activity.opportunity_id is not None and activity.opportunity_id != opp.opportunity_id:
            errors.append(
                f"activities[{i}].opportunity_id: {activity.opportunity_id!r} differs from opportunity_id {opp.opportunity_id!r}"
            )
    return errors


def prepare_accounts(
    records: Sequence[Any], as_of: pd.Timestamp, *, with_tables: bool = True
) -> PreparedBatch:
    """Validate churn records (accounts with their subscriptions, usage, ...) and build their tables.

    Each nested deal becomes an ``opportunities`` row of the account and its ``history`` rows become
    ``opportunity_history`` rows. The deal's current-state columns do NOT become a history row: the
    account features (features.account) read a deal's state as of T from opportunity_history only,
    and batch churn scoring passes no current state, so the API does the same to compute the same
    features (a current-state row dated as_of would also read as an update made today).

    Args:
        records: The ``accounts`` list of the request (decoded JSON).
        as_of: Timestamp the accounts are scored as of.
        with_tables: False leaves ``tables`` empty (only ``rows``), as for ``prepare_opportunities``.

    Returns:
        The batch: tables ``accounts``, ``subscriptions``, ``usage``, ``tickets``, ``surveys``,
        ``activities``, ``opportunities``, ``opportunity_history``. Whether an account is a customer
        at as_of (has an active subscription) is decided by the feature builder, which returns no
        row otherwise.
    """
    accepted: list[tuple[int, str]] = []
    rejected: list[dict[str, Any]] = []
    names = (
        "accounts",
        "subscriptions",
        "usage",
        "tickets",
        "surveys",
        "activities",
        "opportunities",
        "opportunity_history",
    )
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    seen_keys: dict[str, dict[str, str]] = {
        "subscription_id": {},
        "ticket_id": {},
        "activity_id": {},
        "opportunity_id": {},
    }
    values: dict[str, dict[str, float | None]] = {}
    for index, record in enumerate(records):
        caller_id = _caller_id(record, "account_id")
        parsed, errors = _validate(ChurnAccountIn, record)
        if parsed is not None:
            assert isinstance(parsed, ChurnAccountIn)
            errors = _check_account(parsed, as_of)
            if parsed.account_id in values:
                errors.append(f"account_id: {parsed.account_id!r} appears more than once in the request")
            for list_name, key in _ACCOUNT_KEYED_LISTS:
                for i, item in enumerate(getattr(parsed, list_name)):
                    owner = seen_keys[key].get(getattr(item, key))
                    if owner is not None and owner != parsed.account_id:
                        errors.append(
                            f"{list_name}[{i}].{key}: {getattr(item, key)!r} is also given with account {owner!r}"
                        )
        if errors or parsed is None:
            rejected.append({"index": index, "account_id": caller_id, "errors": errors})
            continue
        assert isinstance(parsed, ChurnAccountIn)
        acct_id = parsed.account_id
        accepted.append((index, acct_id))
        rows["accounts"].append(_row(parsed, TABLE_COLUMNS["accounts"]))
        for list_name, key in _ACCOUNT_KEYED_LISTS:
            for item in getattr(parsed, list_name):
                seen_keys[key][getattr(item, key)] = acct_id
        for table in ("subscriptions", "usage", "tickets", "surveys", "activities", "opportunities"):
            for item in getattr(parsed, table):
                rows[table].append(_row(item, TABLE_COLUMNS[table], account_id=acct_id))
        for deal in parsed.opportunities:
            for change in deal.history:
                rows["opportunity_history"].append(
                    _row(change, TABLE_COLUMNS["opportunity_history"], opportunity_id=deal.opportunity_id)
                )
    tables = build_tables(rows) if with_tables else {}
    return PreparedBatch(
        tables=tables, accepted=accepted, rejected=rejected, as_of=as_of, values=values, rows=rows
    )


# Nested lists whose rows have their own id: an id given with two accounts is a per-record rejection.
_ACCOUNT_KEYED_LISTS = (
    ("subscriptions", "subscription_id"),
    ("tickets", "ticket_id"),
    ("activities", "activity_id"),
    ("opportunities", "opportunity_id"),
)


def _check_account(acct: ChurnAccountIn, as_of: pd.Timestamp) -> list[str]:
    """Reasons why a well-formed account cannot be scored as of ``as_of``."""
    errors = []
    if to_timestamp(acct.created_at) > as_of:
        errors.append(f"created_at: {acct.created_at} is after as_of {as_of.isoformat()}")
    errors += _after(acct.subscriptions, "start_date", as_of, "subscriptions")
    errors += _after(acct.usage, "date", as_of, "usage")
    errors += _after(acct.tickets, "opened_at", as_of, "tickets")
    errors += _after(acct.surveys, "responded_at", as_of, "surveys")
    errors += _after(acct.activities, "occurred_at", as_of, "activities")
    errors += _out_of_order(acct, RECORD_TABLES["accounts"])
    for i, usage in enumerate(acct.usage):
        for name, value in (usage.model_extra or {}).items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                errors.append(
                    f"usage[{i}].{name}: extra usage fields are product metrics and must be numbers (got {value!r})"
                )
    errors += _check_account_deals(acct, as_of)
    return errors


def _check_account_deals(acct: ChurnAccountIn, as_of: pd.Timestamp) -> list[str]:
    """Reasons why an account's nested deals cannot be used as of ``as_of`` (each names its field)."""
    errors = []
    seen: dict[str, int] = {}
    for i, deal in enumerate(acct.opportunities):
        where = f"opportunities[{i}]"
        if deal.opportunity_id in seen:
            errors.append(
                f"{where}.opportunity_id: {deal.opportunity_id!r} is also given as opportunities[{seen[deal.opportunity_id]}]"
            )
        seen.setdefault(deal.opportunity_id, i)
        if deal.account_id is not None and deal.account_id != acct.account_id:
            errors.append(
                f"{where}.account_id: {deal.account_id!r} differs from account_id {acct.account_id!r}"
            )
        created = to_timestamp(deal.created_at)
        if created > as_of:
            errors.append(f"{where}.created_at: {deal.created_at} is after as_of {as_of.isoformat()}")
        if deal.outcome in ("won", "lost") and deal.closed_at is None:
            # Without its close date a decided deal would count as an open renewal.
            errors.append(f"{where}.closed_at: required when outcome is {deal.outcome!r}")
        errors += _after(deal.history, "changed_at", as_of, f"{where}.history")
    return errors
