"""Request and response schemas of the prediction API (CONTRACT §3); the OpenAPI page is built from them.

Field names are the data contract's column names. Records are validated one by one (see
serving/requests.py) so that one bad record is reported in ``rejected`` and never fails the others;
the request envelope (``as_of``, the record list) is validated as a whole.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)


def _not_boolean(value: Any) -> Any:
    """Refuse true/false where a number is expected: pydantic would read them as 1 and 0."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got a boolean ({str(value).lower()})")
    return value


# Numbers must be finite: NaN/Infinity are not JSON and would poison the features. A boolean is a
# caller's mistake (a field mixed up), not a count of 1: it is rejected naming the field.
Money = Annotated[float, Field(ge=0, allow_inf_nan=False), BeforeValidator(_not_boolean)]
Number = Annotated[float, Field(allow_inf_nan=False), BeforeValidator(_not_boolean)]
Count = Annotated[float, Field(ge=0, allow_inf_nan=False), BeforeValidator(_not_boolean)]


def _not_blank(value: str) -> str:
    """Refuse an id with no visible character (it names nothing the caller could match an answer to)."""
    if not value.strip():
        raise ValueError(f"an id must not be empty or only whitespace (got {value!r})")
    return value


# An id is a string with a visible character, kept verbatim: the answer must carry the caller's id as
# sent, and ids that differ only in whitespace are different ids (the records' str_strip_whitespace
# does not apply to them). Numbers are refused rather than guessed at (ids are strings in the contract).
Id = Annotated[
    str,
    StringConstraints(strip_whitespace=False, min_length=1, max_length=200),
    AfterValidator(_not_blank),
    Field(
        description="Kept verbatim (surrounding whitespace included); must not be blank.",
        json_schema_extra={"pattern": r"\S"},
    ),
]
# Rows of one nested list (a deal's history, an account's usage, ...). The body-size limit bounds a
# request as a whole; this bounds one record, so that a single record cannot hold most of a request.
# Ten years of daily usage (3,653 rows) fit.
MAX_NESTED_ROWS = 10_000


def _parse_when(value: Any) -> Any:
    """Accept only ISO-8601 date/datetime strings (numbers are not guessed to be Unix times)."""
    if isinstance(value, datetime | date):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO-8601 date or datetime string, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO-8601 date or datetime: {value!r}") from None
    if not 1900 <= parsed.year <= 2262:
        raise ValueError(f"year {parsed.year} is out of the supported range 1900-2262")
    return parsed


# Dates: ISO-8601 date or datetime; UTC when no zone is given.
When = Annotated[
    datetime,
    BeforeValidator(_parse_when),
    WithJsonSchema({"type": "string", "format": "date-time", "example": "2026-11-01"}),
]


class _Record(BaseModel):
    """Base of every record: unknown extra fields are kept and ignored, as in the data contract.

    Free-text fields lose surrounding whitespace (stage, industry, product: labels a CRM export
    pads), except ``Id`` fields, which are kept as sent.
    """

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)


class AccountIn(_Record):
    """An account (firmographics are static attributes). ``name`` is PII: never logged or returned."""

    account_id: Id
    created_at: When
    name: str | None = None
    industry: str | None = None
    country: str | None = None
    region: str | None = None
    employees: Count | None = None
    annual_revenue: Money | None = None
    owner_id: Id | None = None
    segment: str | None = None


class HistoryIn(_Record):
    """One change of an opportunity (stage, amount or expected close date) at ``changed_at``."""

    changed_at: When
    stage: str | None = None
    amount: Money | None = None
    expected_close_date: When | None = None


class ActivityIn(_Record):
    """A call, email, meeting, demo, ... with the account (and optionally the deal)."""

    activity_id: Id
    occurred_at: When
    type: Annotated[str, Field(min_length=1)]
    opportunity_id: Id | None = None
    duration_s: Count | None = None
    direction: str | None = None
    replied: bool | None = None


class OpportunityIn(_Record):
    """An open deal with its current state, its account and (optionally) its history and activities."""

    opportunity_id: Id
    account_id: Id
    created_at: When
    owner_id: Id | None = None
    product: str | None = None
    type: Literal["new", "renewal", "expansion"] | None = None
    lead_source: str | None = None
    amount: Money | None = None
    expected_close_date: When | None = None
    stage: str | None = None
    closed_at: When | None = None
    outcome: Literal["won", "lost", ""] | None = None
    won_amount: Money | None = None
    account: AccountIn | None = None
    history: list[HistoryIn] = Field(default_factory=list, max_length=MAX_NESTED_ROWS)
    activities: list[ActivityIn] = Field(default_factory=list, max_length=MAX_NESTED_ROWS)


class SubscriptionIn(_Record):
    """A subscription (one row per contract or per billing period)."""

    subscription_id: Id
    start_date: When
    mrr: Money
    end_date: When | None = None
    product: str | None = None
    auto_renew: bool | None = None


class UsageIn(_Record):
    """Usage on one day; every further numeric field is a product metric and gets features."""

    date: When
    active_users: Count | None = None
    events: Count | None = None


class TicketIn(_Record):
    """A support ticket."""

    ticket_id: Id
    opened_at: When
    resolved_at: When | None = None
    priority: str | None = None
    csat: Number | None = None
    first_contact_resolved: bool | None = None


class SurveyIn(_Record):
    """A survey answer."""

    responded_at: When
    kind: Literal["nps", "csat", "ces"]
    score: Number


class AccountOpportunityIn(_Record):
    """A deal of the account (its renewal and expansion deals matter), as the CRM holds it now.

    The churn features read a deal's type and dates, its outcome once closed at or before ``as_of``,
    and its stage and amount as of ``as_of`` from ``history`` -- the rule of batch churn scoring
    (``revcast score accounts``), which does not read the deals' current stage and amount either. Send
    the current stage and amount as the latest history row, dated when they were entered.
    """

    opportunity_id: Id
    account_id: Id | None = Field(
        default=None, description="Defaults to the enclosing account; a different account is rejected."
    )
    created_at: When
    type: Literal["new", "renewal", "expansion"] | None = None
    closed_at: When | None = Field(
        default=None, description="When the deal was won or lost; required when outcome is won/lost."
    )
    outcome: Literal["won", "lost", ""] | None = None
    owner_id: Id | None = None
    product: str | None = None
    lead_source: str | None = None
    stage: str | None = Field(default=None, description="Current stage (not a churn feature: see history).")
    amount: Money | None = Field(
        default=None, description="Current amount (not a churn feature: see history)."
    )
    expected_close_date: When | None = None
    won_amount: Money | None = None
    history: list[HistoryIn] = Field(
        default_factory=list,
        max_length=MAX_NESTED_ROWS,
        description="Stage/amount changes up to as_of; the source of the deal's state as of as_of.",
    )


class ChurnAccountIn(AccountIn):
    """An account with everything known about it up to ``as_of``."""

    subscriptions: list[SubscriptionIn] = Field(default_factory=list, max_length=MAX_NESTED_ROWS)
    usage: list[UsageIn] = Field(default_factory=list, max_length=MAX_NESTED_ROWS)
    tickets: list[TicketIn] = Field(default_factory=list, max_length=MAX_NESTED_ROWS)
    surveys: list[SurveyIn] = Field(default_factory=list, max_length=MAX_NESTED_ROWS)
    activities: list[ActivityIn] = Field(default_factory=list, max_length=MAX_NESTED_ROWS)
    opportunities: list[AccountOpportunityIn] = Field(
        default_factory=list,
        max_length=MAX_NESTED_ROWS,
        description="The account's deals (renewal and expansion deals feed the churn features).",
    )


class OpportunityScoreRequest(BaseModel):
    """Body of ``POST /v1/opportunities/score``."""

    model_config = ConfigDict(extra="forbid")

    as_of: When | None = Field(default=None, description="Score as of this time (default: now, UTC).")
    opportunities: list[OpportunityIn] = Field(min_length=1, description="One or many open deals.")


class AccountChurnRequest(BaseModel):
    """Body of ``POST /v1/accounts/churn``."""

    model_config = ConfigDict(extra="forbid")

    as_of: When | None = Field(default=None, description="Score as of this time (default: now, UTC).")
    accounts: list[ChurnAccountIn] = Field(min_length=1, description="One or many accounts.")


class Factor(BaseModel):
    """One signed contribution to a score, in the model's log-odds (or amount) units."""

    feature: str
    value: float | str | None
    contribution: float


class OpportunityScore(BaseModel):
    """The scores of one open deal."""

    opportunity_id: str
    win_probability: float = Field(ge=0, le=1, description="Calibrated probability that the deal is won.")
    score: int = Field(ge=1, le=99)
    grade: Literal["A", "B", "C", "D"]
    expected_amount: float | None = Field(description="Expected won amount (amount model or as-of amount).")
    expected_amount_source: Literal["amount_model", "as_of_amount", "unavailable"]
    expected_revenue: float | None = Field(description="win_probability x expected_amount.")
    top_factors: list[Factor]


class RejectedOpportunity(BaseModel):
    """A record that could not be scored, with every reason found."""

    index: int = Field(description="Position of the record in the request (0-based).")
    opportunity_id: str | None
    errors: list[str]


class OpportunityScoreResponse(BaseModel):
    """Answer of ``POST /v1/opportunities/score``."""

    model: str
    model_version: str
    amount_model_version: str | None = Field(
        description="Version of the amount model, null when none is served."
    )
    as_of: datetime
    track_records: str | None = Field(
        default=None,
        description=(
            "Where the deals' rep, account, product and lead-source track records and the rep's and "
            "account's open-deal counts came from: 'dataset@<latest timestamp>' (the service's "
            "REVCAST_DATA_DIR, as of as_of, or as of its end for a later as_of), or null without a "
            "dataset (the records alone: those features are then missing and scores differ from "
            "batch scores)."
        ),
    )
    results: list[OpportunityScore]
    rejected: list[RejectedOpportunity]


class ChurnScore(BaseModel):
    """The churn risk of one account."""

    account_id: str
    churn_probability: float = Field(ge=0, le=1)
    risk_band: Literal["high", "medium", "low"]
    arr: float = Field(description="Annual recurring revenue active at as_of (12 x MRR).")
    revenue_at_risk: float = Field(description="arr x churn_probability.")
    top_factors: list[Factor]


class RejectedAccount(BaseModel):
    """An account that could not be scored, with every reason found."""

    index: int
    account_id: str | None
    errors: list[str]


class AccountChurnResponse(BaseModel):
    """Answer of ``POST /v1/accounts/churn``."""

    model: str
    model_version: str
    as_of: datetime
    results: list[ChurnScore]
    rejected: list[RejectedAccount]


class ErrorResponse(BaseModel):
    """Any 4xx/5xx answer: a one-line reason and, when known, the offending field."""

    error: str
    field: str | None = None
    details: list[Any] = Field(default_factory=list)


class ModelInfo(BaseModel):
    """What is being served for one model kind."""

    name: str
    version: str | None
    alias: str
    run_id: str | None = None
    sha256: str | None = None
    loaded: bool
    error: str | None = None


class ModelsResponse(BaseModel):
    """Answer of ``GET /v1/models`` and ``POST /v1/admin/reload``."""

    ready: bool
    models: dict[str, ModelInfo]
    reload: dict[str, str] | None = Field(
        default=None,
        description="After a reload: per model kind, 'swapped', 'unchanged' or 'kept old: <why>'.",
    )


# A small valid request, used as the OpenAPI example and to warm the models at start-up.
EXAMPLE_OPPORTUNITY_REQUEST: dict[str, Any] = {
    "as_of": "2026-11-01",
    "opportunities": [
        {
            "opportunity_id": "o-1",
            "account_id": "a-9",
            "created_at": "2026-08-02",
            "stage": "proposal",
            "amount": 42000,
            "expected_close_date": "2026-12-15",
            "owner_id": "r-3",
            "product": "pro",
            "type": "new",
            "lead_source": "inbound",
            "account": {
                "account_id": "a-9",
                "created_at": "2021-03-01",
                "industry": "retail",
                "employees": 120,
            },
            "history": [{"changed_at": "2026-09-01", "stage": "qualification", "amount": 40000}],
            "activities": [{"activity_id": "x-1", "occurred_at": "2026-10-20", "type": "meeting"}],
        }
    ],
}

EXAMPLE_CHURN_REQUEST: dict[str, Any] = {
    "as_of": "2026-11-01",
    "accounts": [
        {
            "account_id": "a-9",
            "created_at": "2021-03-01",
            "industry": "retail",
            "subscriptions": [
                {"subscription_id": "s-1", "start_date": "2025-01-01", "mrr": 440.0, "auto_renew": True}
            ],
            "usage": [{"date": "2026-10-01", "active_users": 12, "events": 340}],
            "tickets": [{"ticket_id": "t-1", "opened_at": "2026-09-03", "priority": "high"}],
            "surveys": [{"responded_at": "2026-06-01", "kind": "nps", "score": 7}],
            "activities": [{"activity_id": "x-2", "occurred_at": "2026-10-11", "type": "call"}],
            "opportunities": [
                {
                    "opportunity_id": "o-7",
                    "created_at": "2026-09-15",
                    "type": "renewal",
                    "history": [
                        {"changed_at": "2026-09-15", "stage": "prospecting", "amount": 5280},
                        {"changed_at": "2026-10-20", "stage": "negotiation", "amount": 5000},
                    ],
                }
            ],
        }
    ],
}
