"""The CRM data contract (CONTRACT.md section 1) as data.

Every canonical table is described by a :class:`TableSpec`: its columns with their kinds, the
primary key, the event-time column used for as-of filtering (see ARCHITECTURE.md), the entity it
belongs to and the references to parent tables. `features.data` interprets these specs; nothing in
this module contains validation logic, so adding a column or a table is a change to the data below.

Column kinds and their canonical in-memory dtypes:

- ``id``: identifiers; ``object`` column of ``str`` (missing = ``None``).
- ``timestamp``: ISO-8601 date or datetime; ``datetime64[ns]``, timezone-naive UTC.
- ``number``: ``float64``.
- ``bool``: ``float64`` holding 0/1/NaN.
- ``category``: free text label; ``object`` column of ``str`` (lower-cased when ``lowercase``).
- ``enum``: category with a closed list of ``allowed`` values; always lower-cased.
- ``text``: free text (e.g. a name); ``object`` column of ``str``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ColumnKind = Literal["id", "timestamp", "number", "bool", "category", "enum", "text"]
OrphanPolicy = Literal["drop", "null"]


@dataclass(frozen=True)
class ColumnSpec:
    """One column of a canonical table.

    Attributes:
        name: Column name as it appears in the file.
        kind: One of the column kinds listed in the module docstring.
        required: Whether the column must exist and every row must hold a valid value.
        allowed: For ``enum`` columns, the allowed (lower-case) values; empty cells mean missing.
        lowercase: For ``category`` columns, whether values are lower-cased when canonicalised.
        minimum: For ``number`` columns, the smallest valid value (``None`` = no bound). Money and
            counts are never negative; a value below the bound is treated like an unparsable one.
        description: What the column means (used in docs and error messages).
    """

    name: str
    kind: ColumnKind
    required: bool = False
    allowed: tuple[str, ...] = ()
    lowercase: bool = False
    minimum: float | None = None
    description: str = ""


@dataclass(frozen=True)
class ParentRef:
    """A reference from a child column to a parent table's key column.

    Attributes:
        column: Column of the child table holding the reference.
        parent_table: Table referenced.
        parent_column: Key column in the parent table.
        on_orphan: ``"drop"`` removes child rows whose reference is not found (required
            references); ``"null"`` blanks the reference but keeps the row (optional references).
    """

    column: str
    parent_table: str
    parent_column: str
    on_orphan: OrphanPolicy = "drop"


@dataclass(frozen=True)
class TableSpec:
    """One canonical table.

    Attributes:
        name: Table name, also the file stem (``accounts.csv`` / ``accounts.parquet``).
        columns: Column specifications in canonical order.
        primary_key: Columns that identify a row; duplicates keep the first row. Empty = no key.
        event_time: Column holding the row's own timestamp for as-of filtering (``None`` when the
            table has no event time, e.g. reps).
        entity: The entity a row describes or belongs to.
        parents: References to parent tables, checked when the parent table is present.
        extension: True for tables that are not part of CONTRACT.md but that importers may write.
        numeric_extras: True when unknown extra columns are metrics to be kept numeric (usage).
        ordered: ``(earlier, later)`` column pairs of one row: a ``later`` on a day before its
            ``earlier`` (a deal closed before it was created) is a row problem. Days, not instants:
            CRMs export close dates as dates and creation times as timestamps.
        description: What the table holds.
    """

    name: str
    columns: tuple[ColumnSpec, ...]
    primary_key: tuple[str, ...] = ()
    event_time: str | None = None
    entity: str = ""
    parents: tuple[ParentRef, ...] = ()
    extension: bool = False
    numeric_extras: bool = False
    ordered: tuple[tuple[str, str], ...] = ()
    description: str = ""
    _by_name: dict[str, ColumnSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {column.name: column for column in self.columns})

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Names of the required columns, in canonical order."""
        return tuple(column.name for column in self.columns if column.required)

    @property
    def column_names(self) -> tuple[str, ...]:
        """Names of all contract columns, in canonical order."""
        return tuple(column.name for column in self.columns)

    def column(self, name: str) -> ColumnSpec:
        """Return the spec of column `name` (KeyError when it is not a contract column)."""
        return self._by_name[name]


def _req(name: str, kind: ColumnKind, **kwargs) -> ColumnSpec:
    return ColumnSpec(name=name, kind=kind, required=True, **kwargs)


def _opt(name: str, kind: ColumnKind, **kwargs) -> ColumnSpec:
    return ColumnSpec(name=name, kind=kind, required=False, **kwargs)


OPPORTUNITY_TYPES: tuple[str, ...] = ("new", "renewal", "expansion")
OPPORTUNITY_OUTCOMES: tuple[str, ...] = ("won", "lost")
SURVEY_KINDS: tuple[str, ...] = ("nps", "csat", "ces")

# Order matters: parents come before their children so that row drops cascade in one pass.
# Money and counts carry minimum=0.0: a negative one is an entry or export error, never a real value.
# csat and survey scores have no bound: CONTRACT.md does not fix their scales.
TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec(
            name="accounts",
            description="Customer and prospect companies (firmographics are static attributes).",
            entity="account",
            primary_key=("account_id",),
            event_time="created_at",
            columns=(
                _req("account_id", "id"),
                _req("created_at", "timestamp", description="when the account was created"),
                _opt("name", "text", description="company name (PII)"),
                _opt("industry", "category", lowercase=True),
                _opt("country", "category"),
                _opt("region", "category"),
                _opt("employees", "number", minimum=0.0),
                _opt("annual_revenue", "number", minimum=0.0),
                _opt("owner_id", "id"),
                _opt("segment", "category", lowercase=True),
            ),
        ),
        TableSpec(
            name="reps",
            description="Sales reps with their manager, team and region.",
            entity="rep",
            primary_key=("rep_id",),
            event_time=None,
            columns=(
                _req("rep_id", "id"),
                _opt("manager_id", "id"),
                _opt("team", "category"),
                _opt("region", "category"),
                _opt("hired_at", "timestamp"),
            ),
        ),
        TableSpec(
            name="quotas",
            description="Quota per rep and period.",
            entity="rep",
            primary_key=("rep_id", "period_start"),
            ordered=(("period_start", "period_end"),),
            event_time="period_start",
            columns=(
                _req("rep_id", "id"),
                _req("period_start", "timestamp"),
                _req("period_end", "timestamp"),
                _req("amount", "number", minimum=0.0),
            ),
        ),
        TableSpec(
            name="products",
            description="Extension table written by importers: product list prices (amount baseline).",
            entity="product",
            primary_key=("product",),
            event_time=None,
            extension=True,
            columns=(
                _req("product", "category"),
                _opt("list_price", "number", minimum=0.0),
                _opt("series", "category"),
            ),
        ),
        TableSpec(
            name="opportunities",
            description="Deals; stage/amount/expected_close_date/closed_at/outcome/won_amount are current state.",
            entity="opportunity",
            primary_key=("opportunity_id",),
            ordered=(("created_at", "closed_at"),),
            event_time="created_at",
            parents=(ParentRef("account_id", "accounts", "account_id", on_orphan="drop"),),
            columns=(
                _req("opportunity_id", "id"),
                _req("account_id", "id"),
                _req("created_at", "timestamp"),
                _opt("owner_id", "id"),
                _opt("product", "category"),
                _opt("type", "enum", allowed=OPPORTUNITY_TYPES),
                _opt("lead_source", "category", lowercase=True),
                _opt("amount", "number", description="expected amount (current state)", minimum=0.0),
                _opt("expected_close_date", "timestamp"),
                _opt("stage", "category", lowercase=True, description="current stage"),
                _opt("closed_at", "timestamp"),
                _opt("outcome", "enum", allowed=OPPORTUNITY_OUTCOMES, description="won/lost/empty"),
                _opt("won_amount", "number", minimum=0.0),
            ),
        ),
        TableSpec(
            name="opportunity_history",
            description="Dated changes of an opportunity's stage, amount and expected close date.",
            entity="opportunity",
            primary_key=(),
            event_time="changed_at",
            parents=(ParentRef("opportunity_id", "opportunities", "opportunity_id", on_orphan="drop"),),
            columns=(
                _req("opportunity_id", "id"),
                _req("changed_at", "timestamp"),
                _opt("stage", "category", lowercase=True),
                _opt("amount", "number", minimum=0.0),
                _opt("expected_close_date", "timestamp"),
            ),
        ),
        TableSpec(
            name="activities",
            description="Calls, emails, meetings, demos ... per account (and optionally per deal).",
            entity="account",
            primary_key=("activity_id",),
            event_time="occurred_at",
            parents=(
                ParentRef("account_id", "accounts", "account_id", on_orphan="drop"),
                ParentRef("opportunity_id", "opportunities", "opportunity_id", on_orphan="null"),
            ),
            columns=(
                _req("activity_id", "id"),
                _req("account_id", "id"),
                _req("occurred_at", "timestamp"),
                _req("type", "category", lowercase=True, description="call/email/meeting/demo/..."),
                _opt("opportunity_id", "id"),
                _opt("duration_s", "number", minimum=0.0),
                _opt("direction", "category", lowercase=True),
                _opt("replied", "bool"),
            ),
        ),
        TableSpec(
            name="subscriptions",
            description="One row per billing period or per contract; empty end_date = active.",
            entity="account",
            primary_key=("subscription_id",),
            ordered=(("start_date", "end_date"),),
            event_time="start_date",
            parents=(ParentRef("account_id", "accounts", "account_id", on_orphan="drop"),),
            columns=(
                _req("subscription_id", "id"),
                _req("account_id", "id"),
                _req("start_date", "timestamp"),
                _req("mrr", "number", minimum=0.0),
                _opt("end_date", "timestamp"),
                _opt("product", "category"),
                _opt("auto_renew", "bool"),
            ),
        ),
        TableSpec(
            name="usage",
            description="Product usage per account and date; every extra numeric column is a metric.",
            entity="account",
            primary_key=("account_id", "date"),
            event_time="date",
            numeric_extras=True,
            parents=(ParentRef("account_id", "accounts", "account_id", on_orphan="drop"),),
            columns=(
                _req("account_id", "id"),
                _req("date", "timestamp"),
                _opt("active_users", "number", minimum=0.0),
                _opt("events", "number", minimum=0.0),
            ),
        ),
        TableSpec(
            name="tickets",
            description="Support tickets.",
            entity="account",
            primary_key=("ticket_id",),
            ordered=(("opened_at", "resolved_at"),),
            event_time="opened_at",
            parents=(ParentRef("account_id", "accounts", "account_id", on_orphan="drop"),),
            columns=(
                _req("ticket_id", "id"),
                _req("account_id", "id"),
                _req("opened_at", "timestamp"),
                _opt("resolved_at", "timestamp"),
                _opt("priority", "category", lowercase=True),
                _opt("csat", "number"),
                _opt("first_contact_resolved", "bool"),
            ),
        ),
        TableSpec(
            name="surveys",
            description="NPS / CSAT / CES responses.",
            entity="account",
            primary_key=(),
            event_time="responded_at",
            parents=(ParentRef("account_id", "accounts", "account_id", on_orphan="drop"),),
            columns=(
                _req("account_id", "id"),
                _req("responded_at", "timestamp"),
                _req("kind", "enum", allowed=SURVEY_KINDS),
                _req("score", "number"),
            ),
        ),
    )
}

#: Tables that must exist in every dataset.
ALWAYS_REQUIRED: tuple[str, ...] = ("accounts",)

#: Tables each model (or the forecast) needs, beyond which every optional table adds features.
REQUIRED_TABLES_FOR: dict[str, tuple[str, ...]] = {
    "win": ("accounts", "opportunities"),
    "amount": ("accounts", "opportunities"),
    "forecast": ("accounts", "opportunities"),
    "churn": ("accounts", "subscriptions"),
}

#: What a valid value of each kind looks like, for error messages.
KIND_EXPECTATIONS: dict[str, str] = {
    "id": "a non-empty identifier",
    "timestamp": "an ISO-8601 date (YYYY-MM-DD) or datetime (YYYY-MM-DDTHH:MM[:SS][+HH:MM|Z])",
    "number": "a number",
    "bool": "a boolean (true/false, 1/0, yes/no)",
    "category": "a non-empty label",
    "enum": "one of the allowed values",
    "text": "text",
}
