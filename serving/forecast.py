"""Revenue forecast engine: won revenue per period with a P10-P50-P90 range, as of a date T.

Everything here is a pure function of the canonical tables (``features.data.Tables``) and parameters.
The engine reads only what was known at T (ARCHITECTURE.md, as-of rules): the tables are first cut
down to an *as-of view* (:func:`as_of_view`) and every later step reads the view only, so that rows
after T cannot influence the result by construction.

Components of the forecast of one period ``[period_start, period_end)`` made at T:

* **won to date** — won revenue of deals with ``closed_at`` in ``[period_start, T]``.
* **open pipeline** — for every deal open at T: P(won inside the period) x expected amount.
  The timing is *learned*, never read from ``expected_close_date``: the engine replays the same
  forecast at *analog dates* (T shifted back by whole periods, so the analog stands at the same point
  of its own period — this captures calendar effects such as end-of-quarter pushes), takes the state
  of each deal open at the analog date (stage, deal age, close-date slip bucket, as-of amount), and
  counts how often deals in the same state were won inside the corresponding (shifted) period.
  State matching blends a hierarchy of levels (type x stage x age x close-date bucket, ..., stage,
  everything): each level's rate is shrunk towards the next, more general one with the weight of
  ``min_count`` pseudo-rows, so that sparse but telling cells (renewal deals in a stage) count as
  much as their rows justify (``level_shrinkage=False`` restores the old fall-back that stops at the
  first level with ``min_count`` analog rows).
  When win probabilities are supplied (e.g. by the champion win model), the engine uses
  ``p_win x P(closes inside the period | won)`` with the conditional timing learned the same way.
  The expected amount is the as-of amount times the historical won/expected ratio.
* **not yet created** — revenue won inside the period from deals created after the forecast date,
  learned at the same analog dates (with a damped linear trend) and simulated as a Gamma variable.
  Where subscriptions and renewal deals exist, renewals are forecast account by account instead:
  each renewal-bound account's term end is predicted from its subscription rows known at T, the
  renewal deal is expected a learned lead time before it, and it is simulated like an open deal
  (historical renewal win rate, learned creation-to-close timing, amount from the MRR).
* **recurring** (where subscriptions exist) — MRR in force at T x months remaining in the period,
  less expected churn (supplied per-account churn probabilities, else the historical MRR churn
  rate). It is reported *beside* the won-revenue figures, not inside them: renewals and expansions
  are already opportunities, so adding it would double-count.

The range comes from a Monte-Carlo simulation over deal outcomes and timing (one categorical draw
per deal: won in period k, or not won inside the horizon), a common rate shock per simulation
(over-dispersion measured on the analog dates) and the not-yet-created component. Group rows are
sums of the same simulated deals, so in every simulation the groups add up to the total.

How the figures relate: ``expected = won_to_date + open_pipeline_expected + not_yet_created_expected``
exactly (analytic means); ``mean`` is the simulated mean (equal to ``expected`` up to Monte-Carlo
error); ``p50`` is the simulated median, which differs from the mean by the skew of the distribution
(a few lumpy deals make it right-skewed, so typically ``p50 <= mean``). Quantiles are not additive:
group P50s do not sum to the total P50, while every other money column does.

Categories (cumulative, each includes won to date; thresholds in :class:`ForecastParams`):
``commit`` adds open deals with ``p_win >= commit_threshold`` in a late stage, ``best_case`` adds
deals with ``p_win >= best_case_threshold``, ``pipeline`` adds every open deal; open deals count
with their expected amount times the probability that, if won, they close inside the period.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

Tables = dict[str, pd.DataFrame]
PeriodKind = Literal["month", "quarter"]

_MONTHS_PER_PERIOD = {"month": 1, "quarter": 3}
_UNKNOWN = "(unknown)"
_UNASSIGNED = "(unassigned)"
TOTAL = "total"
_DAYS_PER_MONTH = 30.4375


# --------------------------------------------------------------------------- parameters and result


@dataclass(frozen=True)
class ForecastParams:
    """Tunable settings of the forecast engine (all documented; none is learned).

    Attributes:
        n_analogs: How many past analog dates (whole periods back) to learn from; None = 8 for
            quarters, 12 for months.
        monthly_same_position: For monthly forecasts, learn only from analog months at the same
            position in their quarter (captures the month-of-quarter pattern) when at least
            ``min_same_position`` of them exist.
        min_same_position: See ``monthly_same_position``.
        min_analogs: Quarterly forecasts with fewer whole-quarter analogs add month-shifted ones.
        renewals_from_subscriptions: Forecast not-yet-created renewal deals from subscription terms
            predicted to end inside the period (when subscriptions and renewal deals exist).
        levels: The state-matching hierarchy, most specific first (deal type, as-of stage, deal-age
            bucket, expected-close-date bucket); the last level (no keys) matches everything.
        min_count: Minimum analog rows for a level of the state-matching hierarchy to be used
            (without ``level_shrinkage``), or the pseudo-row weight of the next level (with it).
        level_shrinkage: Blend the levels of the hierarchy (each level's rate shrunk towards the
            next, more general one) instead of using only the first level with ``min_count`` rows.
        age_bins_days: Deal-age bucket edges (days since creation).
        close_date_bins_days: Buckets of (as-of expected close date - date), in days.
        commit_threshold: Minimum win probability for the commit category (with a late stage).
        best_case_threshold: Minimum win probability for the best-case category.
        late_stages: Stages counted as late for commit; None = stages whose historical win rate is at
            least the median stage win rate.
        nyc_half_life: Half-life (in analogs) of the weights of the not-yet-created component.
        nyc_trend_damping: Fraction of the fitted linear trend of not-yet-created revenue extrapolated
            (0 = no trend).
        nyc_max_trend: Cap on the trend adjustment, as a fraction of the weighted mean.
        nyc_min_cv: Floor on the coefficient of variation of the not-yet-created component.
        rate_shock_sd: Standard deviation of the common log-normal rate shock; "auto" estimates the
            over-dispersion (beyond independent deals) on the analog dates.
        max_rate_shock_sd: Cap on the estimated rate shock.
        deal_block: Deals simulated per block (bounds memory: block x n_sims floats).
    """

    n_analogs: int | None = None
    monthly_same_position: bool = True
    min_same_position: int = 3
    min_analogs: int = 3
    renewals_from_subscriptions: bool = True
    levels: tuple[tuple[str, ...], ...] = (
        ("type", "stage", "age_bucket", "close_bucket"),
        ("type", "stage", "close_bucket"),
        ("type", "stage"),
        ("stage", "age_bucket"),
        ("stage",),
        (),
    )
    min_count: int = 30
    level_shrinkage: bool = True
    age_bins_days: tuple[float, ...] = (0, 14, 30, 60, 90, 180, 365)
    close_date_bins_days: tuple[float, ...] = (0, 30, 90)
    commit_threshold: float = 0.7
    best_case_threshold: float = 0.4
    late_stages: tuple[str, ...] | None = None
    nyc_half_life: float = 4.0
    nyc_trend_damping: float = 0.5
    nyc_max_trend: float = 0.25
    nyc_min_cv: float = 0.10
    rate_shock_sd: float | Literal["auto"] = "auto"
    max_rate_shock_sd: float = 0.5
    deal_block: int = 2000


@dataclass
class ForecastResult:
    """A revenue forecast as of one date.

    Attributes:
        as_of: The forecast date T.
        period: "month" or "quarter".
        by: Grouping (None, "rep", "team" or "region").
        frame: One row per (group, period) — see the module docstring for the columns.
        totals: One row per period, the sum over groups (group == "total").
        deals: One row per deal open at T with its probabilities and expected revenue.
        notes: Plain-language notes (fallbacks used, data that was missing).
        simulations: Optional (n_groups, n_periods, n_sims) simulated totals, when requested.
        groups: Group names in the order of ``simulations``' first axis.
    """

    as_of: pd.Timestamp
    period: str
    by: str | None
    frame: pd.DataFrame
    totals: pd.DataFrame
    deals: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    simulations: np.ndarray | None = None
    groups: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (dates as ISO strings, money rounded to cents)."""

        def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
            out = []
            for row in frame.to_dict(orient="records"):
                clean: dict[str, Any] = {}
                for key, value in row.items():
                    if isinstance(value, pd.Timestamp):
                        clean[key] = value.date().isoformat()
                    elif isinstance(value, float | np.floating):
                        clean[key] = None if math.isnan(value) else round(float(value), 2)
                    elif isinstance(value, np.integer):
                        clean[key] = int(value)
                    else:
                        clean[key] = value
                out.append(clean)
            return out

        return {
            "as_of": self.as_of.isoformat(),
            "period": self.period,
            "by": self.by,
            "groups": records(self.frame),
            "totals": records(self.totals),
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- API answer

# The service's forecast learns win rates, timing and amounts from the dataset's own history at request
# time; no registered model is involved (the CLI's --as-of forecast may use the win champion instead).
FORECAST_METHOD = "historical-rates"


class ForecastRow(BaseModel):
    """One (group, period) row of a forecast; money in the data's currency (see the module docstring)."""

    group: str = Field(description="Rep, team or region name; 'total' for the totals.")
    period: str = Field(description="Period label, e.g. '2026-Q4' or '2026-11'.")
    period_start: str = Field(description="First day of the period (ISO date).")
    period_end: str = Field(description="Last day of the period (ISO date).")
    won_to_date: float | None = Field(description="Won revenue with closed_at in [period_start, as_of].")
    open_pipeline_expected: float | None = Field(description="Expected won revenue of deals open at as_of.")
    not_yet_created_expected: float | None = Field(
        description="Expected won revenue of deals created after as_of."
    )
    expected: float | None = Field(
        description="won_to_date + open_pipeline_expected + not_yet_created_expected."
    )
    mean: float | None = Field(description="Mean of the simulated won revenue.")
    p10: float | None = Field(description="10th percentile of the simulated won revenue.")
    p50: float | None = Field(description="Median of the simulated won revenue (not additive over groups).")
    p90: float | None = Field(description="90th percentile of the simulated won revenue.")
    commit: float | None = Field(description="Won to date plus open late-stage deals with a high p_win.")
    best_case: float | None = Field(description="Won to date plus open deals with p_win above the threshold.")
    pipeline: float | None = Field(description="Won to date plus every open deal.")
    n_open_deals: int = Field(description="Deals open at as_of.")
    recurring_expected: float | None = Field(
        default=None, description="MRR in force x months left, less expected churn (beside, not inside, p50)."
    )
    quota: float | None = Field(default=None, description="Quota of the group for the period, if known.")
    attainment_p50: float | None = Field(default=None, description="p50 / quota.")


class ForecastResponse(BaseModel):
    """Answer of ``GET /v1/forecast``.

    ``model`` is always ``forecast``. ``model_version`` is ``<method>@<data_through>``, e.g.
    ``historical-rates@2026-10-31T23:34:45``: the method names where the win rates come from (today
    always the dataset's own history; no registered model is used) and ``data_through`` identifies
    the loaded dataset. A CRM that logs ``model_version`` with ``as_of``, ``period`` and ``by`` can
    tell which answers were computed from the same inputs: the simulation is seeded, so equal inputs
    give equal numbers on the same revcast release.
    """

    model: str = Field(description="Always 'forecast'.")
    model_version: str = Field(
        description="'<method>@<data_through>', e.g. 'historical-rates@2026-10-31T23:34:45'."
    )
    data_from: str = Field(
        description="Creation time of the dataset's first deal: the earliest accepted as_of."
    )
    data_through: str = Field(
        description="Latest timestamp in the dataset: the default and latest accepted as_of."
    )
    as_of: str = Field(description="The forecast date.")
    period: str = Field(description="'month' or 'quarter'.")
    by: str | None = Field(description="Grouping: null, 'rep', 'team' or 'region'.")
    groups: list[ForecastRow] = Field(description="One row per (group, period).")
    totals: list[ForecastRow] = Field(description="One row per period, summed over groups (group 'total').")
    notes: list[str] = Field(description="Plain-language notes: what was learned from, fallbacks used.")


def forecast_data_range(tables: Tables) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The dates a forecast of these tables can be made as of.

    Before the first deal was created there is nothing to learn from; after the dataset's latest
    timestamp the open deals' states and the won revenue are unknown (they would silently count as
    frozen at the export), so both ends bound ``as_of``.

    Args:
        tables: Canonical tables (opportunities required).

    Returns:
        ``(first opportunity created_at, latest event timestamp in any table)``, timezone-naive UTC.

    Raises:
        ValueError: No opportunities (or none with a creation time).
    """
    from features.labels import data_export_date

    opps = tables.get("opportunities")
    if opps is None or "created_at" not in opps.columns or not opps["created_at"].notna().any():
        raise ValueError("forecast: the 'opportunities' table with created_at values is required")
    return pd.Timestamp(opps["created_at"].min()), data_export_date(tables)


# --------------------------------------------------------------------------- periods


def period_floor(ts: pd.Timestamp, period: PeriodKind) -> pd.Timestamp:
    """Return the start of the month/quarter containing ``ts``."""
    months = _MONTHS_PER_PERIOD[_check_period(period)]
    ts = pd.Timestamp(ts)
    first_month = (ts.month - 1) // months * months + 1
    return pd.Timestamp(year=ts.year, month=first_month, day=1)


def shift_period(start: pd.Timestamp, n: int, period: PeriodKind) -> pd.Timestamp:
    """Return ``start`` moved by ``n`` whole periods (negative = back)."""
    return pd.Timestamp(start) + pd.DateOffset(months=n * _MONTHS_PER_PERIOD[_check_period(period)])


def period_label(start: pd.Timestamp, period: PeriodKind) -> str:
    """Human label of a period: '2017-Q4' or '2017-11'."""
    start = pd.Timestamp(start)
    if period == "quarter":
        return f"{start.year}-Q{(start.month - 1) // 3 + 1}"
    return f"{start.year}-{start.month:02d}"


def _check_period(period: str) -> PeriodKind:
    if period not in _MONTHS_PER_PERIOD:
        raise ValueError(f"period: expected 'month' or 'quarter', got {period!r}")
    return period  # type: ignore[return-value]


# --------------------------------------------------------------------------- as-of view


_OPP_REQUIRED = ("opportunity_id", "account_id", "created_at")


def as_of_view(tables: Tables, as_of: pd.Timestamp) -> Tables:
    """Cut the tables down to what was known at ``as_of``.

    Opportunities created after T are dropped; ``closed_at``/``outcome``/``won_amount`` are blanked
    for deals that closed after T; the other current-state columns (stage, amount,
    expected_close_date) are removed entirely (state comes from opportunity_history). History,
    quotas, subscriptions keep rows dated <= T (subscription end dates after T are blanked).

    Args:
        tables: Canonical tables.
        as_of: The date T.

    Returns:
        New tables; the inputs are not modified.

    Raises:
        ValueError: The opportunities table or one of its required columns is missing.
    """
    as_of = pd.Timestamp(as_of)
    if "opportunities" not in tables:
        raise ValueError("forecast: the 'opportunities' table is required (none was loaded)")
    opps = tables["opportunities"]
    missing = [c for c in _OPP_REQUIRED if c not in opps.columns]
    if missing:
        raise ValueError(f"opportunities: missing required column(s) {missing}")
    opps = opps.loc[opps["created_at"] <= as_of].copy()
    for column in ("closed_at", "outcome", "won_amount", "owner_id", "product", "type"):
        if column not in opps.columns:
            opps[column] = pd.NaT if column == "closed_at" else None
    closed_later = ~(opps["closed_at"] <= as_of)
    opps.loc[closed_later, "closed_at"] = pd.NaT
    opps.loc[closed_later, "outcome"] = None
    opps.loc[closed_later, "won_amount"] = np.nan
    opps["won_amount"] = pd.to_numeric(opps["won_amount"], errors="coerce").astype("float64")
    opps = opps.drop(columns=[c for c in ("stage", "amount", "expected_close_date") if c in opps.columns])

    view: Tables = {"opportunities": opps.reset_index(drop=True)}
    history = tables.get("opportunity_history")
    if history is not None and len(history):
        keep = history.loc[history["changed_at"] <= as_of].copy()
        keep = keep.loc[keep["opportunity_id"].isin(opps["opportunity_id"])]
        for column in ("stage", "amount", "expected_close_date"):
            if column not in keep.columns:
                keep[column] = pd.NaT if column == "expected_close_date" else np.nan
        view["opportunity_history"] = keep.reset_index(drop=True)
    if tables.get("reps") is not None:
        view["reps"] = tables["reps"]
    if tables.get("accounts") is not None:
        accounts = tables["accounts"]
        view["accounts"] = accounts.loc[accounts["created_at"] <= as_of].reset_index(drop=True)
    if tables.get("quotas") is not None:
        # A quota is a plan set in advance: all rows are readable (they carry no outcome).
        view["quotas"] = tables["quotas"]
    subs = tables.get("subscriptions")
    if subs is not None and len(subs):
        subs = subs.loc[subs["start_date"] <= as_of].copy()
        if "end_date" in subs.columns:
            subs.loc[~(subs["end_date"] <= as_of), "end_date"] = pd.NaT
        else:
            subs["end_date"] = pd.NaT
        view["subscriptions"] = subs.reset_index(drop=True)
    return view


def _with_current_state(
    tables: Tables, current_state_as_of: pd.Timestamp | None, as_of: pd.Timestamp
) -> Tables:
    """Append each deal's current state as a history row dated ``current_state_as_of`` (if <= T)."""
    if current_state_as_of is None or pd.Timestamp(current_state_as_of) > as_of:
        return tables
    opps = tables["opportunities"]
    cols = [c for c in ("stage", "amount", "expected_close_date") if c in opps.columns]
    if not cols:
        return tables
    current = opps.loc[opps["created_at"] <= current_state_as_of, ["opportunity_id", *cols]].copy()
    current["changed_at"] = pd.Timestamp(current_state_as_of)
    history = tables.get("opportunity_history")
    merged = dict(tables)
    merged["opportunity_history"] = (
        current if history is None else pd.concat([history, current], ignore_index=True)
    )
    return merged


def _current_state_date(tables: Tables, current_state_as_of: Any) -> pd.Timestamp | None:
    """``current_state_as_of`` if the export's current state was known then, else None.

    The current-state columns are each deal's state at the export (the latest timestamp in any
    table, as ``revcast score`` and the API define the data's end). Dated earlier, they would claim a
    stage or amount the deal may only have reached later, so a past forecast date must not see them,
    whichever surface asks (the CLI, the API and the managers' page pass their own ``as_of``).
    """
    if current_state_as_of is None or (isinstance(current_state_as_of, str) and not current_state_as_of):
        return None
    from features.labels import data_export_date

    when = pd.Timestamp(current_state_as_of)
    if pd.isna(when):
        return None
    return when if when >= data_export_date(tables) else None


# --------------------------------------------------------------------------- deal states


def _deal_states(view: Tables, dates: list[pd.Timestamp]) -> pd.DataFrame:
    """State of every deal open at each date (rows: snapshot x open deal), from history <= date."""
    opps = view["opportunities"]
    frames = []
    for index, date in enumerate(dates):
        open_now = opps.loc[(opps["created_at"] <= date) & ~(opps["closed_at"] <= date)]
        frames.append(open_now.assign(snap=date, snap_index=index))
    if not frames:
        return pd.DataFrame()
    states = pd.concat(frames, ignore_index=True)
    if states.empty:
        for column in ("stage", "amount", "expected_close_date"):
            states[column] = pd.Series(dtype="object" if column == "stage" else "float64")
        return states
    history = view.get("opportunity_history")
    if history is not None and len(history):
        hist = history[["opportunity_id", "changed_at", "stage", "amount", "expected_close_date"]].copy()
        hist = hist.sort_values(["opportunity_id", "changed_at"], kind="mergesort")
        # Carry the last known value forward within a deal (a row may change one column only);
        # only earlier rows feed later ones, so this never looks ahead.
        hist[["stage", "amount", "expected_close_date"]] = hist.groupby("opportunity_id")[
            ["stage", "amount", "expected_close_date"]
        ].ffill()
        hist["changed_at"] = hist["changed_at"].astype("datetime64[ns]")
        states["snap"] = states["snap"].astype("datetime64[ns]")
        hist = hist.sort_values("changed_at", kind="mergesort")
        states = states.sort_values("snap", kind="mergesort")
        states = pd.merge_asof(
            states, hist, left_on="snap", right_on="changed_at", by="opportunity_id", direction="backward"
        )
    else:
        states["stage"] = None
        states["amount"] = np.nan
        states["expected_close_date"] = pd.NaT
    states["stage"] = states["stage"].where(states["stage"].notna(), _UNKNOWN).astype(str).str.lower()
    states["amount"] = pd.to_numeric(states["amount"], errors="coerce").astype("float64")
    states["expected_close_date"] = pd.to_datetime(states["expected_close_date"], errors="coerce")
    return states.sort_values(["snap_index", "opportunity_id"], kind="mergesort").reset_index(drop=True)


def _bucketize(states: pd.DataFrame, params: ForecastParams) -> pd.DataFrame:
    states["type"] = states["type"].astype(object).where(states["type"].notna(), _UNKNOWN).astype(str)
    age_days = (states["snap"] - states["created_at"]).dt.total_seconds() / 86400.0
    age_edges = [*params.age_bins_days, np.inf]
    states["age_bucket"] = pd.cut(age_days, bins=age_edges, right=False, labels=False).fillna(-1).astype(int)
    slack = (states["expected_close_date"] - states["snap"]).dt.total_seconds() / 86400.0
    close_edges = [-np.inf, *params.close_date_bins_days, np.inf]
    bucket = pd.cut(slack, bins=close_edges, right=False, labels=False)
    states["close_bucket"] = bucket.fillna(-1).astype(int)  # -1 = no expected close date known
    return states


def _hierarchical_sums(
    train: pd.DataFrame,
    target: pd.DataFrame,
    value_cols: list[str],
    count_col: str,
    min_count: int,
    levels: tuple[tuple[str, ...], ...],
    shrink: bool = False,
) -> pd.DataFrame:
    """Sum ``value_cols`` and ``count_col`` over the analog rows matching each target row.

    Without ``shrink``: uses the most specific level of ``levels`` whose matching count reaches
    ``min_count`` (the last level, no keys, is always used when nothing else qualifies).

    With ``shrink``: every level contributes. Going from the last level (everything) to the first,
    the rate value/count at a level is the level's own rate shrunk towards the rate of the level
    after it with the weight of ``min_count`` pseudo-rows: ``(S + min_count x rate_next) / (N +
    min_count)``. A sparse but telling cell (e.g. renewal deals in one stage) then moves the rate
    by as much as its rows justify instead of being discarded for a more general cell. The result
    holds the rates as values with a count of 1, so value / count keeps its meaning.

    Returns a frame aligned with ``target``'s index holding the sums (or rates) and a ``level``
    column (index into ``levels``: the level used, or with ``shrink`` the most specific level with
    matching rows).
    """
    cols = [*value_cols, count_col]
    if shrink:
        return _shrunk_rates(train, target, value_cols, count_col, float(min_count), levels)
    out = pd.DataFrame(np.nan, index=target.index, columns=cols)
    out["level"] = -1
    for level_index, keys in enumerate(levels):
        todo = out["level"] < 0
        if not todo.any():
            break
        if keys:
            agg = train.groupby(list(keys), sort=False)[cols].sum().reset_index()
            matched = target.loc[todo, list(keys)].merge(agg, on=list(keys), how="left")
            matched.index = target.index[todo]
        else:
            sums = train[cols].sum() if len(train) else pd.Series(0.0, index=cols)
            matched = pd.DataFrame(
                np.tile(sums.to_numpy(dtype=float), (int(todo.sum()), 1)),
                columns=cols,
                index=target.index[todo],
            )
        last = level_index == len(levels) - 1
        ok = matched[count_col].fillna(0) >= min_count if not last else pd.Series(True, index=matched.index)
        rows = matched.index[ok.to_numpy()]
        out.loc[rows, cols] = matched.loc[rows, cols].fillna(0.0).to_numpy()
        out.loc[rows, "level"] = level_index
    return out


def _shrunk_rates(
    train: pd.DataFrame,
    target: pd.DataFrame,
    value_cols: list[str],
    count_col: str,
    prior_count: float,
    levels: tuple[tuple[str, ...], ...],
) -> pd.DataFrame:
    """Rates value/count for each target row, shrunk level by level (see ``_hierarchical_sums``)."""
    cols = [*value_cols, count_col]
    totals = train[cols].sum() if len(train) else pd.Series(0.0, index=cols)
    root_count = float(totals[count_col])
    root = (
        totals[value_cols].to_numpy(dtype=float) / root_count if root_count > 0 else np.zeros(len(value_cols))
    )
    rates = np.tile(root, (len(target), 1))
    level = np.full(len(target), len(levels) - 1, dtype=int)
    for level_index in range(len(levels) - 1, -1, -1):
        keys = list(levels[level_index])
        if not keys:
            continue
        agg = train.groupby(keys, sort=False)[cols].sum().reset_index()
        matched = target[keys].merge(agg, on=keys, how="left")
        sums = matched[value_cols].fillna(0.0).to_numpy(dtype=float)
        counts = matched[count_col].fillna(0.0).to_numpy(dtype=float)
        rates = (sums + prior_count * rates) / (counts[:, None] + prior_count)
        level = np.where(counts > 0, level_index, level)
    out = pd.DataFrame(rates, index=target.index, columns=value_cols)
    out[count_col] = 1.0
    out["level"] = level
    return out


# --------------------------------------------------------------------------- groups


def _group_of_owner(view: Tables, owners: pd.Series, by: str | None) -> pd.Series:
    """Map owner (rep) ids to group names for ``by``."""
    if by is None:
        return pd.Series(TOTAL, index=owners.index, dtype=object)
    filled = owners.where(owners.notna(), None)
    if by == "rep":
        return filled.fillna(_UNASSIGNED).astype(str)
    if by not in ("team", "region"):
        raise ValueError(f"by: expected None, 'rep', 'team' or 'region', got {by!r}")
    reps = view.get("reps")
    if reps is None or by not in reps.columns:
        raise ValueError(f"by={by!r} needs the 'reps' table with a {by!r} column (not loaded)")
    mapping = reps.drop_duplicates("rep_id").set_index("rep_id")[by]
    return filled.map(mapping).where(lambda s: s.notna(), _UNASSIGNED).astype(str)


# --------------------------------------------------------------------------- components


@dataclass
class _Analogs:
    """Analog dates and the windows of each (t_j, [window starts], [window ends])."""

    dates: list[pd.Timestamp]
    starts: list[list[pd.Timestamp]]
    ends: list[list[pd.Timestamp]]


def _analogs(
    view: Tables, as_of: pd.Timestamp, period: PeriodKind, n_periods: int, params: ForecastParams
) -> _Analogs:
    """Past analog dates: T moved back by whole periods (so every label window is complete by T).

    Quarterly forecasts with fewer than ``min_analogs`` whole-quarter analogs also use analogs moved
    back by whole months (same window length, different position in the quarter).
    """
    first_start = period_floor(as_of, period)
    offset = as_of - first_start
    earliest = view["opportunities"]["created_at"].min()
    months = _MONTHS_PER_PERIOD[period]
    n_analogs = params.n_analogs or (8 if period == "quarter" else 12)
    min_shift = n_periods * months

    def candidates(step: int, limit: int) -> list[int]:
        found, shift = [], min_shift
        while len(found) < limit and pd.notna(earliest):
            if _analog_date(first_start, offset, shift) < earliest:
                break
            found.append(shift)
            shift += step
        return found

    shifts = candidates(months, n_analogs)
    if period == "month" and params.monthly_same_position:
        same = [m for m in candidates(1, 3 * n_analogs) if m % 3 == 0]
        if len(same) >= params.min_same_position:
            shifts = same[:n_analogs]
    if period == "quarter" and len(shifts) < params.min_analogs:
        shifts = candidates(1, 3 * n_analogs)
    dates, starts, ends = [], [], []
    for shift in shifts:
        window_starts = [
            shift_period(first_start, k, period) - pd.DateOffset(months=shift) for k in range(n_periods)
        ]
        window_ends = [shift_period(w, 1, period) for w in window_starts]
        # Keep the analog inside its first window (a short month can push start + offset past it).
        dates.append(min(_analog_date(first_start, offset, shift), window_ends[0] - pd.Timedelta(seconds=1)))
        starts.append(window_starts)
        ends.append(window_ends)
    return _Analogs(dates=dates, starts=starts, ends=ends)


def _analog_date(first_start: pd.Timestamp, offset: pd.Timedelta, shift_months: int) -> pd.Timestamp:
    """T moved back ``shift_months`` (the same offset into its window)."""
    start = pd.Timestamp(first_start) - pd.DateOffset(months=shift_months)
    return start + offset


def _label_analog_rows(rows: pd.DataFrame, analogs: _Analogs, n_periods: int) -> pd.DataFrame:
    """Add won_k (won inside shifted window k), won_any and closed_any (by T) to analog rows."""
    won = rows["outcome"].astype(object).eq("won").to_numpy()
    closed = rows["outcome"].notna().to_numpy()
    closed_at = rows["closed_at"].to_numpy()
    idx = rows["snap_index"].to_numpy()
    for k in range(n_periods):
        lo = np.array([analogs.starts[j][k] for j in range(len(analogs.dates))], dtype="datetime64[ns]")[idx]
        hi = np.array([analogs.ends[j][k] for j in range(len(analogs.dates))], dtype="datetime64[ns]")[idx]
        with np.errstate(invalid="ignore"):
            inside = (closed_at >= lo) & (closed_at < hi)
        rows[f"won_{k}"] = (won & inside).astype(float)
    rows["won_any"] = won.astype(float)
    rows["closed_any"] = closed.astype(float)
    rows["one"] = 1.0
    return rows


def _won_amount_known(view: Tables) -> pd.Series:
    """Won amount of each deal closed (won) by T; NaN won_amount falls back to the last known amount."""
    opps = view["opportunities"]
    amount = opps["won_amount"].copy()
    history = view.get("opportunity_history")
    if amount.isna().any() and history is not None and len(history):
        last = (
            history.dropna(subset=["amount"])
            .sort_values("changed_at")
            .groupby("opportunity_id")["amount"]
            .last()
        )
        amount = amount.fillna(opps["opportunity_id"].map(last))
    return amount.fillna(0.0).where(opps["outcome"].astype(object).eq("won"), 0.0)


def _amount_model(
    rows: pd.DataFrame, won_amount_by_id: pd.Series, min_count: int
) -> tuple[dict[str, float], float]:
    """Historical won/expected amount ratio by stage (ratio of sums) from analog rows that were won."""
    won_rows = rows.loc[(rows["won_any"] > 0) & (rows["amount"] > 0)].copy()
    won_rows["won_amount_final"] = won_rows["opportunity_id"].map(won_amount_by_id)
    won_rows = won_rows.loc[won_rows["won_amount_final"] > 0]
    overall = won_rows["won_amount_final"].sum() / won_rows["amount"].sum() if len(won_rows) else 1.0
    by_stage = won_rows.groupby("stage").agg(
        n=("amount", "size"), a=("amount", "sum"), w=("won_amount_final", "sum")
    )
    ratios = {s: r.w / r.a for s, r in by_stage.iterrows() if r.n >= min_count and r.a > 0}
    return ratios, float(overall)


def _fallback_amounts(view: Tables, won_amount_by_id: pd.Series) -> tuple[pd.Series, float]:
    """Median won amount by product (and overall) among deals won by T: for deals with no known amount."""
    opps = view["opportunities"]
    won = opps.assign(w=opps["opportunity_id"].map(won_amount_by_id))
    won = won.loc[won["w"] > 0]
    overall = float(won["w"].median()) if len(won) else 0.0
    by_product = won.groupby(won["product"].astype(object).fillna(_UNKNOWN))["w"].median()
    return by_product, overall


def _expected_amounts(
    states: pd.DataFrame,
    ratios: dict[str, float],
    overall_ratio: float,
    by_product: pd.Series,
    overall_median: float,
) -> pd.Series:
    ratio = states["stage"].map(ratios).fillna(overall_ratio)
    expected = states["amount"] * ratio
    missing = ~(states["amount"] > 0)
    fallback = states["product"].astype(object).fillna(_UNKNOWN).map(by_product).fillna(overall_median)
    return expected.where(~missing, fallback).astype(float)


def _not_yet_created(
    view: Tables,
    analogs: _Analogs,
    n_periods: int,
    won_amount_by_id: pd.Series,
    deal_groups: pd.Series,
    params: ForecastParams,
    deal_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, list[pd.Series]]:
    """Mean, sd and group shares of revenue from deals created after T and won inside each period.

    ``deal_mask`` restricts the deals counted (e.g. everything but renewals when those are
    forecast from subscriptions).
    """
    opps = view["opportunities"]
    won_amount = opps["opportunity_id"].map(won_amount_by_id).fillna(0.0).to_numpy()
    if deal_mask is not None:
        won_amount = np.where(deal_mask, won_amount, 0.0)
    created = opps["created_at"].to_numpy()
    closed = opps["closed_at"].to_numpy()
    groups = deal_groups.to_numpy()
    n = len(analogs.dates)
    means, sds, shares = np.zeros(n_periods), np.zeros(n_periods), []
    for k in range(n_periods):
        values = np.zeros(n)
        by_group: dict[str, float] = {}
        for j, date in enumerate(analogs.dates):
            with np.errstate(invalid="ignore"):
                mask = (
                    (created > np.datetime64(date))
                    & (closed >= np.datetime64(analogs.starts[j][k]))
                    & (closed < np.datetime64(analogs.ends[j][k]))
                    & (won_amount > 0)
                )
            values[j] = won_amount[mask].sum()
            for g, v in pd.Series(won_amount[mask]).groupby(groups[mask]).sum().items():
                by_group[g] = by_group.get(g, 0.0) + v
        if n == 0:
            shares.append(pd.Series(dtype=float))
            continue
        # Analog j is j-th most recent: exponential weights by recency.
        weights = 0.5 ** (np.arange(n) / params.nyc_half_life)
        weights = weights / weights.sum()
        mean = float(np.sum(weights * values))
        if n >= 3 and params.nyc_trend_damping > 0 and mean > 0:
            # Weighted least squares of value on time (analog 0 is one step back from now).
            x = -(np.arange(n) + 1.0)
            xm = np.sum(weights * x)
            slope = np.sum(weights * (x - xm) * (values - mean)) / max(np.sum(weights * (x - xm) ** 2), 1e-12)
            trend = params.nyc_trend_damping * slope * (0.0 - xm)
            trend = float(np.clip(trend, -params.nyc_max_trend * mean, params.nyc_max_trend * mean))
            mean = max(mean + trend, 0.0)
        sd = float(np.sqrt(np.sum(weights * (values - np.sum(weights * values)) ** 2) * n / max(n - 1, 1)))
        sd = max(sd, params.nyc_min_cv * mean)
        means[k], sds[k] = mean, sd
        total = sum(by_group.values())
        shares.append(
            pd.Series({g: v / total for g, v in by_group.items()}) if total > 0 else pd.Series(dtype=float)
        )
    return means, sds, shares


def _add_months(dates: pd.Series, months: np.ndarray) -> pd.Series:
    """Calendar arithmetic: each date moved by whole months (day of month clipped to the month's end)."""
    if len(dates) == 0:
        return dates.copy()
    values = dates.to_numpy(dtype="datetime64[ns]")
    days = values.astype("datetime64[D]")
    month = values.astype("datetime64[M]")
    day_of_month = days - month.astype("datetime64[D]")
    target = month + np.asarray(months, dtype=np.int64)
    month_length = (target + 1).astype("datetime64[D]") - target.astype("datetime64[D]")
    shifted = target.astype("datetime64[D]") + np.minimum(day_of_month, month_length - np.timedelta64(1, "D"))
    return pd.Series(
        shifted.astype("datetime64[ns]") + (values - days.astype("datetime64[ns]")), index=dates.index
    )


def _term_ends(lines: pd.DataFrame) -> pd.DataFrame:
    """Predicted end of the current term and renewal-bound MRR, per ``key``, as of each key's ``date``.

    ``lines`` holds subscription rows (start_date, end_date, mrr, optional auto_renew) labelled with
    a ``key`` and the ``date`` at which the prediction is made (one date per key). The current term's
    end is not visible before it happens, so it is predicted from what is: the term starts with the
    earliest active line (lines added during a term are co-termed to it) and lasts as long as the
    longest line that had finished by the date, in whole years (one year when none had: one row per
    contract then repeats yearly). Auto-renewing lines (no renewal deal needed) and keys whose
    finished lines were all shorter than ``_MIN_TERM_DAYS`` (monthly billing) are left out.

    Returns:
        Frame indexed by key with ``term_end`` and ``mrr``.
    """
    known = lines.loc[lines["start_date"] <= lines["date"]]
    finished = known["end_date"] <= known["date"]
    active = known.loc[~finished]
    if "auto_renew" in active.columns:
        active = active.loc[~(active["auto_renew"] == 1)]
    empty = pd.DataFrame(
        {
            "term_end": pd.Series(dtype="datetime64[ns]"),
            "mrr": pd.Series(dtype=float),
            "term_months": pd.Series(dtype=np.int64),
        }
    )
    if active.empty:
        return empty
    ended = known.loc[finished]
    longest = (ended["end_date"] - ended["start_date"]).dt.days.groupby(ended["key"]).max()
    per_key = active.groupby("key").agg(
        start=("start_date", "min"), mrr=("mrr", "sum"), date=("date", "first")
    )
    longest = longest.reindex(per_key.index)
    per_key = per_key.loc[~(longest < _MIN_TERM_DAYS).to_numpy()]
    if per_key.empty:
        return empty
    longest = longest.loc[per_key.index].fillna(365.25).to_numpy()
    term_months = (12 * np.maximum(np.round(longest / 365.25), 1)).astype(np.int64)
    start, date = per_key["start"], per_key["date"]
    elapsed_months = ((date.dt.year - start.dt.year) * 12 + (date.dt.month - start.dt.month)).to_numpy()
    n_terms = np.maximum(elapsed_months // term_months, 1)
    term_end = _add_months(start, n_terms * term_months)
    # Step on to the first term end strictly after the date (at most a couple of steps).
    for _ in range(4):
        passed = (term_end <= date).to_numpy()
        if not passed.any():
            break
        n_terms = n_terms + passed
        term_end = _add_months(start, n_terms * term_months)
    per_key["term_end"] = term_end
    per_key["term_months"] = term_months
    return per_key[["term_end", "mrr", "term_months"]]


def _upcoming_term_ends(subs: pd.DataFrame, date: pd.Timestamp) -> pd.DataFrame:
    """Per account with renewal-bound subscriptions active at ``date``: predicted term end and MRR."""
    return _term_ends(subs.assign(key=subs["account_id"], date=pd.Timestamp(date)))


def _renewal_lead_days(subs: pd.DataFrame, opps: pd.DataFrame, date: pd.Timestamp) -> float | None:
    """Median days between a renewal deal's creation and the end of the term it renews (deals created <= date).

    Uses the term end when it is already visible at ``date`` (the earliest end after the deal's
    creation among the account's lines active then), else the end predicted as of the deal's creation.
    """
    renewals = opps.loc[
        opps["type"].astype(object).eq("renewal") & (opps["created_at"] <= date),
        ["opportunity_id", "account_id", "created_at"],
    ]
    if renewals.empty:
        return None
    pairs = renewals.merge(subs, on="account_id")
    pairs = pairs.assign(key=pairs["opportunity_id"], date=pairs["created_at"])
    created = renewals.set_index("opportunity_id")["created_at"]
    after = pairs.loc[
        (pairs["start_date"] <= pairs["created_at"]) & (pairs["end_date"] > pairs["created_at"])
    ]
    visible = after.groupby("key")["end_date"].min()
    predicted = _term_ends(pairs.loc[~pairs["key"].isin(visible.index)])["term_end"]
    ends = pd.concat([visible, predicted])
    leads = (ends - created.reindex(ends.index)).dt.total_seconds().to_numpy() / 86400.0
    leads = leads[leads > 0]
    return float(np.median(leads)) if len(leads) >= _MIN_RENEWALS else None


def _close_within(durations: np.ndarray, days: np.ndarray) -> np.ndarray:
    """Empirical P(duration <= days) for each value of ``days`` (durations sorted ascending)."""
    if len(durations) == 0:
        return np.ones_like(days, dtype=float)
    return np.searchsorted(durations, days, side="right") / len(durations)


def _future_renewals(
    subs: pd.DataFrame,
    date: pd.Timestamp,
    windows: list[tuple[pd.Timestamp, pd.Timestamp]],
    lead_days: float,
    durations: np.ndarray,
) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Renewal deals expected to be created after ``date`` and before the last window ends.

    A renewal deal is expected ``lead_days`` before each predicted term end (the current term's and,
    within the horizon, the following ones: one term length apart); it closes, if won, after a
    creation-to-close duration drawn from ``durations`` (won renewal deals closed by T).

    Returns:
        MRR by account (one row per expected deal; an account may repeat), P(closes in window k |
        won) per row, and the number of renewals each row needs to have been won first.
    """
    upcoming = _upcoming_term_ends(subs, date)
    horizon_end = windows[-1][1]
    parts, later_terms = [], []
    for renewals_before in range(_MAX_TERMS_AHEAD):
        term_end = _add_months(upcoming["term_end"], upcoming["term_months"].to_numpy() * renewals_before)
        creation = term_end - pd.Timedelta(days=lead_days)
        inside = (creation > date) & (creation < horizon_end)
        if inside.any():
            parts.append(pd.DataFrame({"mrr": upcoming["mrr"], "creation": creation}).loc[inside])
            later_terms.append(np.full(int(inside.sum()), renewals_before))
        if not (creation < horizon_end).any():
            break
    if not parts:
        return pd.Series(dtype=float), np.zeros((0, len(windows))), np.zeros(0, dtype=int)
    expected = pd.concat(parts)
    creation = expected["creation"]
    timing = np.zeros((len(expected), len(windows)))
    for k, (lo, hi) in enumerate(windows):
        to_hi = (hi - creation).dt.total_seconds().to_numpy() / 86400.0
        to_lo = (lo - creation).dt.total_seconds().to_numpy() / 86400.0
        timing[:, k] = _close_within(durations, to_hi) - np.where(
            to_lo > 0, _close_within(durations, to_lo), 0.0
        )
    return expected["mrr"], np.clip(timing, 0.0, 1.0), np.concatenate(later_terms)


_MAX_TERMS_AHEAD = 8
_MIN_TERM_DAYS = 300
_MIN_RENEWALS = 5


@dataclass
class _Renewals:
    """Renewal deals not yet created at T, one row per expected deal, simulated like open deals."""

    account_id: np.ndarray
    amount_if_won: np.ndarray
    close_probability: np.ndarray  # (deal, period): P(won and closed inside period k)
    win_rate: float
    value_per_mrr: float


def _renewals_not_yet_created(
    view: Tables,
    as_of: pd.Timestamp,
    windows: list[tuple[pd.Timestamp, pd.Timestamp]],
    analogs: _Analogs,
    won_amount_by_id: pd.Series,
) -> _Renewals | None:
    """Renewal deals not yet created, forecast account by account from the subscription terms.

    Each account with renewal-bound lines gets a predicted term end (:func:`_upcoming_term_ends`),
    hence a predicted renewal-deal creation date (``lead_days`` before it, learned from past renewal
    deals) and a probability of closing inside each period if won (the empirical creation-to-close
    durations of won renewal deals). Revenue per unit of timing-weighted MRR is learned at the analog
    dates (renewal deals created after the analog date and won inside its window, over the
    timing-weighted MRR predicted then), so win rate and amount-to-MRR ratio need no separate
    assumptions; for the simulation it is split into the historical renewal win rate and the amount
    if won. None when there are no subscriptions, too few renewal deals or too little history.
    """
    subs = view.get("subscriptions")
    opps = view["opportunities"]
    is_renewal = opps["type"].astype(object).eq("renewal").to_numpy()
    if subs is None or subs.empty or is_renewal.sum() < _MIN_RENEWALS or len(analogs.dates) < 3:
        return None
    closed = opps.loc[is_renewal & opps["outcome"].notna().to_numpy()]
    won = closed.loc[closed["outcome"].astype(object).eq("won")]
    if len(won) < _MIN_RENEWALS:
        return None
    lead_days = _renewal_lead_days(subs, opps, as_of)
    if lead_days is None:
        return None
    durations = np.sort((won["closed_at"] - won["created_at"]).dt.total_seconds().to_numpy() / 86400.0)
    win_rate = float(len(won) / len(closed))

    won_amount = np.where(
        is_renewal, opps["opportunity_id"].map(won_amount_by_id).fillna(0.0).to_numpy(), 0.0
    )
    created, closed_at = opps["created_at"].to_numpy(), opps["closed_at"].to_numpy()
    value, exposure = 0.0, 0.0
    for j, date in enumerate(analogs.dates):
        analog_windows = list(zip(analogs.starts[j], analogs.ends[j], strict=True))
        mrr, timing, later = _future_renewals(subs, date, analog_windows, lead_days, durations)
        # A later term's renewal happens only if the earlier ones were won.
        exposure += float(((mrr.to_numpy() * win_rate**later)[:, None] * timing).sum())
        for lo, hi in analog_windows:
            with np.errstate(invalid="ignore"):
                mask = (
                    (created > np.datetime64(date))
                    & (closed_at >= np.datetime64(lo))
                    & (closed_at < np.datetime64(hi))
                )
            value += float(won_amount[mask].sum())
    if exposure <= 0 or value <= 0:
        return None
    value_per_mrr = value / exposure
    mrr, timing, later = _future_renewals(subs, as_of, windows, lead_days, durations)
    return _Renewals(
        account_id=mrr.index.to_numpy(),
        amount_if_won=mrr.to_numpy() * value_per_mrr / win_rate,
        close_probability=np.clip(win_rate ** (later + 1)[:, None] * timing, 0.0, 1.0),
        win_rate=win_rate,
        value_per_mrr=value_per_mrr,
    )


def _rate_shock_sd(
    rows: pd.DataFrame, expected_amount: np.ndarray, won_value: np.ndarray, r0: np.ndarray, cap: float
) -> float:
    """Over-dispersion of period-0 pipeline revenue across analog dates (method of moments).

    For each analog date j: actual A_j = won revenue in window 0 from deals open at j; expected
    E_j = sum(r * amount); independent-deal variance V_j = sum(r (1 - r) amount^2). The share of the
    squared error not explained by V_j, relative to E_j^2, is the variance of a common rate shock.
    """
    frame = pd.DataFrame(
        {
            "j": rows["snap_index"].to_numpy(),
            "a": won_value,
            "e": r0 * expected_amount,
            "v": r0 * (1 - r0) * expected_amount**2,
        }
    )
    per = frame.groupby("j").sum()
    per = per.loc[per["e"] > 0]
    if len(per) < 3:
        return 0.0
    excess = ((per["a"] - per["e"]) ** 2 - per["v"]).sum()
    variance = max(excess, 0.0) / (per["e"] ** 2).sum()
    return float(min(math.sqrt(variance), cap))


def _recurring(
    view: Tables,
    as_of: pd.Timestamp,
    windows: list[tuple[pd.Timestamp, pd.Timestamp]],
    by: str | None,
    churn_probability: pd.Series | None,
    notes: list[str],
) -> pd.DataFrame | None:
    """Expected recurring revenue per group and period: MRR in force at T, less expected churn."""
    subs = view.get("subscriptions")
    if subs is None or subs.empty:
        return None
    active = subs.loc[subs["end_date"].isna()]
    mrr = active.groupby("account_id")["mrr"].sum()
    if mrr.empty:
        return None
    # Historical monthly MRR churn: accounts active at a month start with nothing active a month later.
    rates = []
    for m in range(1, 13):
        start = as_of - pd.DateOffset(months=m + 1)
        end = as_of - pd.DateOffset(months=m)
        live_start = subs.loc[(subs["start_date"] <= start) & ~(subs["end_date"] <= start)]
        live_end = subs.loc[(subs["start_date"] <= end) & ~(subs["end_date"] <= end)]
        base = live_start.groupby("account_id")["mrr"].sum()
        if base.sum() <= 0:
            continue
        lost = base.loc[~base.index.isin(live_end["account_id"])].sum()
        rates.append(lost / base.sum())
    monthly_rate = float(np.mean(rates)) if rates else 0.0
    if churn_probability is not None:
        # Supplied probabilities are read as churn within ~3 months: convert to a monthly hazard.
        p = churn_probability.reindex(mrr.index).clip(0, 1)
        hazard = (1 - (1 - p) ** (1 / 3)).fillna(monthly_rate)
    else:
        hazard = pd.Series(monthly_rate, index=mrr.index)
        notes.append(
            f"recurring: historical monthly MRR churn rate {monthly_rate:.2%} (no churn probabilities given)"
        )
    owners = (
        view["accounts"].drop_duplicates("account_id").set_index("account_id")["owner_id"]
        if "accounts" in view and "owner_id" in view["accounts"].columns
        else pd.Series(dtype=object)
    )
    groups = _group_of_owner(view, pd.Series(mrr.index.map(owners), index=mrr.index), by)
    rows = []
    for k, (lo, hi) in enumerate(windows):
        start = max(lo, as_of)
        months_in = max((hi - start).days, 0) / _DAYS_PER_MONTH
        months_to_mid = ((start - as_of).days / _DAYS_PER_MONTH) + months_in / 2
        survival = (1 - hazard) ** months_to_mid
        value = mrr * months_in * survival
        for g, v in value.groupby(groups.to_numpy()).sum().items():
            rows.append({"group": g, "k": k, "recurring_expected": float(v)})
    return pd.DataFrame(rows)


def _quota(
    view: Tables, windows: list[tuple[pd.Timestamp, pd.Timestamp]], by: str | None
) -> pd.DataFrame | None:
    """Quota per group and period: quotas overlapping the period, pro-rated by overlapping days."""
    quotas = view.get("quotas")
    if quotas is None or quotas.empty:
        return None
    rows = []
    groups = _group_of_owner(view, quotas["rep_id"], by)
    q_start = quotas["period_start"]
    q_end = quotas["period_end"] + pd.Timedelta(days=1)  # period_end is the last day of the quota
    length = (q_end - q_start).dt.days.clip(lower=1)
    for k, (lo, hi) in enumerate(windows):
        overlap = (q_end.clip(upper=hi) - q_start.clip(lower=lo)).dt.days.clip(lower=0)
        value = quotas["amount"].astype(float) * overlap / length
        covered = (
            overlap > 0
        ).to_numpy()  # a group without a quota overlapping the period has none (NaN), not 0
        for g, v in value[covered].groupby(groups.to_numpy()[covered]).sum().items():
            rows.append({"group": g, "k": k, "quota": float(v)})
    return pd.DataFrame(rows)


def _simulate_deals(
    amounts: np.ndarray,
    probabilities: np.ndarray,
    deal_group: np.ndarray,
    n_groups: int,
    n_sims: int,
    rng: np.random.Generator,
    block: int,
) -> np.ndarray:
    """Simulated revenue (group, period, simulation) of independent deals.

    One categorical draw per deal and simulation: won inside period k with ``probabilities[:, k]``
    (rows summing to at most 1), else not won inside the horizon. ``block`` deals at a time bound the
    memory (block x n_sims floats).
    """
    n_periods = probabilities.shape[1]
    out = np.zeros((n_groups, n_periods, n_sims))
    cum = np.cumsum(probabilities, axis=1)
    for lo in range(0, len(amounts), block):
        hi = min(lo + block, len(amounts))
        u = rng.random((hi - lo, n_sims))
        onehot = np.zeros((n_groups, hi - lo))
        onehot[deal_group[lo:hi], np.arange(hi - lo)] = 1.0
        previous = np.zeros((hi - lo, 1))
        for k in range(n_periods):
            upper = cum[lo:hi, k : k + 1]
            inside = (u >= previous) & (u < upper)
            out[:, k, :] += onehot @ (inside * amounts[lo:hi, None])
            previous = upper
    return out


# --------------------------------------------------------------------------- the forecast


def forecast_revenue(
    tables: Tables,
    as_of: Any,
    *,
    period: PeriodKind = "quarter",
    by: str | None = None,
    n_periods: int = 1,
    win_probability: pd.Series | None = None,
    churn_probability: pd.Series | None = None,
    n_sims: int = 2000,
    seed: int = 0,
    params: ForecastParams | None = None,
    current_state_as_of: Any = None,
    keep_simulations: bool = False,
) -> ForecastResult:
    """Forecast won revenue for the period containing ``as_of`` and the next ``n_periods - 1``.

    Args:
        tables: Canonical tables (opportunities required; history, reps, quotas, subscriptions,
            accounts optional).
        as_of: Forecast date T (anything ``pd.Timestamp`` accepts).
        period: "month" or "quarter".
        by: None (one total row per period), "rep", "team" or "region".
        n_periods: Number of periods forecast, the current one included.
        win_probability: Optional P(win) per open deal, indexed by opportunity_id; deals missing
            from it use the historical as-of rate.
        churn_probability: Optional churn probability per account (recurring component).
        n_sims: Monte-Carlo simulations.
        seed: Random seed (same inputs + seed = same result).
        params: Engine settings, see :class:`ForecastParams`.
        current_state_as_of: Treat the opportunities' current-state columns as a history row of
            this date (only when <= T and at or after the data's export date, the latest timestamp
            in any table: before it the current state was not known yet).
        keep_simulations: Keep the (group, period, simulation) array in the result.

    Returns:
        A :class:`ForecastResult`.

    Raises:
        ValueError: Bad arguments, missing tables/columns, or no past period to learn from.
    """
    params = params or ForecastParams()
    period = _check_period(period)
    if n_periods < 1:
        raise ValueError(f"n_periods: expected >= 1, got {n_periods}")
    if n_sims < 10:
        raise ValueError(f"n_sims: expected >= 10, got {n_sims}")
    as_of = pd.Timestamp(as_of)
    if pd.isna(as_of):
        raise ValueError("as_of: not a date")
    notes: list[str] = []
    source = _with_current_state(tables, _current_state_date(tables, current_state_as_of), as_of)
    view = as_of_view(source, as_of)
    opps = view["opportunities"]
    if "opportunity_history" not in view:
        notes.append("no opportunity_history: open deals' stage and amount as of T are unknown")

    first_start = period_floor(as_of, period)
    windows = [
        (shift_period(first_start, k, period), shift_period(first_start, k + 1, period))
        for k in range(n_periods)
    ]
    analogs = _analogs(view, as_of, period, n_periods, params)
    if not analogs.dates:
        first_deal = opps["created_at"].min()
        raise ValueError(
            f"forecast as of {as_of.date()}: no complete past {period} to learn from "
            + (
                "(no opportunity was created by then)"
                if pd.isna(first_deal)
                else f"(opportunities start {first_deal})"
            )
        )

    won_amount_by_id = pd.Series(_won_amount_known(view).to_numpy(), index=opps["opportunity_id"].to_numpy())
    won_amount_by_id = won_amount_by_id[~won_amount_by_id.index.duplicated()]

    # Analog rows (deal states at past analog dates) and the current open deals.
    rows = _bucketize(_deal_states(view, analogs.dates), params)
    rows = _label_analog_rows(rows, analogs, n_periods)
    current = _bucketize(_deal_states(view, [as_of]), params)
    won_cols = [f"won_{k}" for k in range(n_periods)]

    ratios, overall_ratio = _amount_model(rows, won_amount_by_id, params.min_count)
    by_product, overall_median = _fallback_amounts(view, won_amount_by_id)
    current["expected_amount"] = _expected_amounts(current, ratios, overall_ratio, by_product, overall_median)
    rows["expected_amount"] = _expected_amounts(rows, ratios, overall_ratio, by_product, overall_median)

    levels = params.levels
    shrink = params.level_shrinkage
    uncond = _hierarchical_sums(rows, current, won_cols, "one", params.min_count, levels, shrink)
    cond = _hierarchical_sums(rows, current, won_cols, "won_any", params.min_count, levels, shrink)
    closed = _hierarchical_sums(rows, current, ["won_any"], "closed_any", params.min_count, levels, shrink)
    with np.errstate(invalid="ignore", divide="ignore"):
        r_hist = uncond[won_cols].to_numpy() / uncond[["one"]].to_numpy()
        q_cond = cond[won_cols].to_numpy() / cond[["won_any"]].to_numpy()
        p_hist = (closed["won_any"] / closed["closed_any"]).to_numpy()
    r_hist = np.nan_to_num(r_hist)
    q_cond = np.nan_to_num(q_cond)
    p_hist = np.nan_to_num(p_hist)
    # Eventual win probability implied by the unconditional path (for categories when none supplied).
    p_win = p_hist.copy()
    r = r_hist.copy()
    source_col = np.array(["historical"] * len(current), dtype=object)
    if win_probability is not None and len(current):
        supplied = current["opportunity_id"].map(win_probability.astype(float)).to_numpy()
        has = ~np.isnan(supplied)
        p_win[has] = np.clip(supplied[has], 0.0, 1.0)
        r[has] = p_win[has, None] * q_cond[has]
        source_col[has] = "supplied"
        if (~has).any():
            notes.append(
                f"win probability: {int((~has).sum())} open deal(s) not in the supplied series use historical rates"
            )
    r = np.clip(r, 0.0, 1.0)
    overflow = r.sum(axis=1)
    r = np.where(overflow[:, None] > 1.0, r / np.maximum(overflow[:, None], 1e-12), r)

    # Groups.
    all_groups_of_deal = _group_of_owner(view, opps["owner_id"], by)
    current["group"] = _group_of_owner(view, current["owner_id"], by).to_numpy()
    deal_group_by_id = pd.Series(all_groups_of_deal.to_numpy(), index=opps["opportunity_id"].to_numpy())

    account_owner = (
        view["accounts"].drop_duplicates("account_id").set_index("account_id")["owner_id"]
        if "accounts" in view and "owner_id" in view["accounts"].columns
        else pd.Series(dtype=object)
    )
    account_groups = (
        _group_of_owner(view, account_owner, by) if len(account_owner) else pd.Series(dtype=object)
    )
    renewals = (
        _renewals_not_yet_created(view, as_of, windows, analogs, won_amount_by_id)
        if params.renewals_from_subscriptions
        else None
    )
    is_renewal = opps["type"].astype(object).eq("renewal").to_numpy()
    nyc_mean, nyc_sd, nyc_shares = _not_yet_created(
        view,
        analogs,
        n_periods,
        won_amount_by_id,
        all_groups_of_deal,
        params,
        deal_mask=~is_renewal if renewals is not None else None,
    )
    if renewals is not None:
        notes.append(
            f"not-yet-created renewals forecast account by account from subscription terms predicted to end "
            f"({len(renewals.account_id)} account(s); renewal win rate {renewals.win_rate:.0%})"
        )
        renewal_groups = (
            account_groups.reindex(renewals.account_id).fillna(_UNASSIGNED).astype(str).to_numpy()
            if by is not None
            else np.full(len(renewals.account_id), TOTAL, dtype=object)
        )
    else:
        renewal_groups = np.array([], dtype=object)

    # Won to date per group in the current period.
    won_mask = (opps["closed_at"] >= windows[0][0]) & (opps["closed_at"] <= as_of)
    won_now = pd.Series(
        won_amount_by_id.reindex(opps.loc[won_mask, "opportunity_id"]).to_numpy(),
        index=deal_group_by_id.reindex(opps.loc[won_mask, "opportunity_id"]).to_numpy(),
    )
    won_now = won_now.groupby(level=0).sum() if len(won_now) else pd.Series(dtype=float)

    # Rate shock.
    if params.rate_shock_sd == "auto":
        rows_r = _hierarchical_sums(
            rows, rows, won_cols[:1], "one", params.min_count, params.levels, params.level_shrinkage
        )
        r0_rows = np.nan_to_num(rows_r[won_cols[0]].to_numpy() / rows_r["one"].to_numpy())
        won_value = (
            rows["won_0"].to_numpy() * rows["opportunity_id"].map(won_amount_by_id).fillna(0.0).to_numpy()
        )
        shock_sd = _rate_shock_sd(
            rows, rows["expected_amount"].to_numpy(), won_value, r0_rows, params.max_rate_shock_sd
        )
    else:
        shock_sd = float(params.rate_shock_sd)

    group_names = sorted(
        set(current["group"])
        | set(won_now.index)
        | {g for s in nyc_shares for g in s.index}
        | set(renewal_groups)
        | ({TOTAL} if by is None else set())
    )
    if by is None:
        group_names = [TOTAL]
    gindex = {g: i for i, g in enumerate(group_names)}
    n_groups = len(group_names)

    rng = np.random.default_rng(seed)
    sims = np.zeros((n_groups, n_periods, n_sims))
    # Won to date is certain.
    for g, v in won_now.items():
        sims[gindex[g], 0, :] += v
    # Pipeline: one categorical draw per deal and simulation; a common shock per simulation.
    shock = (
        np.exp(shock_sd * rng.standard_normal(n_sims) - shock_sd**2 / 2) if shock_sd > 0 else np.ones(n_sims)
    )
    amounts = current["expected_amount"].to_numpy()
    deal_g = np.array([gindex[g] for g in current["group"]], dtype=int)
    pipe = _simulate_deals(amounts, r, deal_g, n_groups, n_sims, rng, params.deal_block)
    sims += pipe * shock[None, None, :]
    # Renewal deals not yet created: simulated account by account like open deals (win and timing).
    renewal_expected = np.zeros((len(renewal_groups), n_periods))
    if renewals is not None and len(renewal_groups):
        renewal_g = np.array([gindex[g] for g in renewal_groups], dtype=int)
        sims += _simulate_deals(
            renewals.amount_if_won,
            renewals.close_probability,
            renewal_g,
            n_groups,
            n_sims,
            rng,
            params.deal_block,
        )
        renewal_expected = renewals.close_probability * renewals.amount_if_won[:, None]
    # Other deals not yet created: total per period ~ Gamma, split over groups by historical shares.
    for k in range(n_periods):
        if nyc_mean[k] <= 0:
            continue
        shape = (nyc_mean[k] / nyc_sd[k]) ** 2
        scale = nyc_sd[k] ** 2 / nyc_mean[k]
        draws = rng.gamma(shape, scale, size=n_sims)
        shares = nyc_shares[k]
        if by is None or shares.empty:
            sims[0, k, :] += draws
        else:
            for g, share in shares.items():
                sims[gindex[g], k, :] += draws * share

    # Analytic components.
    exp_pipe = r * amounts[:, None]
    deals = pd.DataFrame(
        {
            "opportunity_id": current["opportunity_id"].to_numpy(),
            "group": current["group"].to_numpy(),
            "owner_id": current["owner_id"].to_numpy(),
            "stage": current["stage"].to_numpy(),
            "as_of_amount": current["amount"].to_numpy(),
            "expected_amount": amounts,
            "win_probability": p_win,
            "win_probability_source": source_col,
            "match_level": uncond["level"].to_numpy(),
        }
    )
    q_in = np.where(p_win[:, None] > 0, r / np.maximum(p_win[:, None], 1e-12), q_cond)
    q_in = np.clip(q_in, 0.0, 1.0)
    for k in range(n_periods):
        deals[f"p_close_in_period_{k}"] = q_in[:, k]
        deals[f"expected_revenue_{k}"] = exp_pipe[:, k]

    stage_rates = _stage_win_rates(rows)
    late = (
        set(params.late_stages)
        if params.late_stages is not None
        else {s for s, v in stage_rates.items() if v >= np.median(list(stage_rates.values()))}
        if stage_rates
        else set()
    )
    late_mask = deals["stage"].isin(late).to_numpy()
    commit_mask = late_mask & (p_win >= params.commit_threshold)
    best_mask = commit_mask | (p_win >= params.best_case_threshold)
    deals["category"] = np.where(commit_mask, "commit", np.where(best_mask, "best_case", "pipeline"))

    recurring = _recurring(view, as_of, windows, by, churn_probability, notes)
    quota = _quota(view, windows, by)

    out_rows = []
    for g in group_names:
        gi = gindex[g]
        in_group = deal_g == gi
        for k, (lo, hi) in enumerate(windows):
            won_k = float(won_now.get(g, 0.0)) if k == 0 else 0.0
            pipe_k = float(exp_pipe[in_group, k].sum())
            share = 1.0 if by is None else float(nyc_shares[k].get(g, 0.0))
            nyc_k = float(nyc_mean[k]) * share + float(renewal_expected[renewal_groups == g, k].sum())
            weighted = amounts * q_in[:, k]
            sim = sims[gi, k]
            out_rows.append(
                {
                    "group": g,
                    "period": period_label(lo, period),
                    "period_start": lo,
                    "period_end": hi - pd.Timedelta(days=1),
                    "won_to_date": won_k,
                    "open_pipeline_expected": pipe_k,
                    "not_yet_created_expected": nyc_k,
                    "expected": won_k + pipe_k + nyc_k,
                    "mean": float(sim.mean()),
                    "p10": float(np.quantile(sim, 0.10)),
                    "p50": float(np.quantile(sim, 0.50)),
                    "p90": float(np.quantile(sim, 0.90)),
                    "commit": won_k + float(weighted[in_group & commit_mask].sum()),
                    "best_case": won_k + float(weighted[in_group & best_mask].sum()),
                    "pipeline": won_k + float(weighted[in_group].sum()),
                    "n_open_deals": int(in_group.sum()),
                }
            )
    frame = pd.DataFrame(out_rows)
    frame = _attach(frame, recurring, "recurring_expected", windows)
    frame = _attach(frame, quota, "quota", windows, absent=np.nan)
    frame["attainment_p50"] = frame["p50"] / frame["quota"].where(frame["quota"] > 0)

    totals = _totals(frame, sims, windows, period)
    notes.append(
        f"learned from {len(analogs.dates)} analog date(s) ({analogs.dates[-1].date()} .. {analogs.dates[0].date()}), "
        f"{len(rows)} analog deal states; rate shock sd {shock_sd:.3f}"
    )
    return ForecastResult(
        as_of=as_of,
        period=period,
        by=by,
        frame=frame,
        totals=totals,
        deals=deals,
        notes=notes,
        simulations=sims if keep_simulations else None,
        groups=group_names,
    )


def _stage_win_rates(rows: pd.DataFrame) -> dict[str, float]:
    """Historical win rate per as-of stage among analog deal states that closed by T."""
    closed = rows.loc[rows["closed_any"] > 0]
    if closed.empty:
        return {}
    return closed.groupby("stage")["won_any"].mean().to_dict()


def _attach(
    frame: pd.DataFrame, extra: pd.DataFrame | None, column: str, windows: list, absent: float = 0.0
) -> pd.DataFrame:
    """Add ``extra``'s per (group, period) values as ``column``; ``absent`` where it has none.

    Recurring revenue a group does not have is 0; a quota nobody set is unknown (NaN), not a target of 0.
    """
    if extra is None or extra.empty:
        frame[column] = np.nan
        return frame
    extra = extra.groupby(["group", "k"], as_index=False)[column].sum()
    labels = {k: lo for k, (lo, _hi) in enumerate(windows)}
    extra["period_start"] = extra["k"].map(labels)
    merged = frame.merge(extra[["group", "period_start", column]], on=["group", "period_start"], how="left")
    merged[column] = merged[column].fillna(absent)
    return merged


_ADDITIVE = (
    "won_to_date",
    "open_pipeline_expected",
    "not_yet_created_expected",
    "expected",
    "mean",
    "commit",
    "best_case",
    "pipeline",
    "n_open_deals",
    "recurring_expected",
    "quota",
)


def _totals(frame: pd.DataFrame, sims: np.ndarray, windows: list, period: PeriodKind) -> pd.DataFrame:
    """Per-period totals: additive columns summed over groups, quantiles from the summed simulations."""
    rows = []
    total_sims = sims.sum(axis=0)
    for k, (lo, _hi) in enumerate(windows):
        part = frame.loc[frame["period_start"] == lo]
        row: dict[str, Any] = {
            "group": TOTAL,
            "period": period_label(lo, period),
            "period_start": lo,
            "period_end": part["period_end"].iloc[0],
        }
        for column in _ADDITIVE:
            values = part[column]
            row[column] = float(values.sum()) if values.notna().any() else np.nan
        sim = total_sims[k]
        row["mean"] = float(sim.mean())
        row["p10"], row["p50"], row["p90"] = (float(np.quantile(sim, q)) for q in (0.1, 0.5, 0.9))
        row["attainment_p50"] = row["p50"] / row["quota"] if row["quota"] and row["quota"] > 0 else np.nan
        rows.append(row)
    totals = pd.DataFrame(rows)
    totals["n_open_deals"] = totals["n_open_deals"].astype(int)
    return totals[[c for c in frame.columns if c in totals.columns]]


def with_params(params: ForecastParams | None, **changes: Any) -> ForecastParams:
    """Return ``params`` (or the defaults) with some fields changed."""
    return replace(params or ForecastParams(), **changes)


def win_probabilities_from_bundle(
    bundle: Any, tables: Tables, as_of: Any, current_state_as_of: Any = None
) -> pd.Series:
    """Calibrated P(win) of every deal open at ``as_of`` from a win-model bundle, by opportunity_id.

    Args:
        bundle: A loaded ``serving.bundle.ModelBundle`` of the win model.
        tables: Canonical tables.
        as_of: Scoring date.
        current_state_as_of: Passed to the feature builder (export date when forecasting "now").

    Returns:
        Series of probabilities indexed by opportunity_id (empty when no deal is open).
    """
    from features.opportunity import build_opportunity_features

    frame = build_opportunity_features(tables, pd.Timestamp(as_of), current_state_as_of=current_state_as_of)
    if frame.empty:
        return pd.Series(dtype=float)
    probabilities = np.asarray(bundle.predict(frame), dtype=float)
    return pd.Series(
        probabilities, index=frame["opportunity_id"].astype(str).to_numpy(), name="win_probability"
    )
