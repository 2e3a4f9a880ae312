"""As-of features of open deals (win probability and deal-revenue models).

One DuckDB query computes a whole series of as-of dates: the population (deals open at each date) is
a range join of opportunities with the dates table; history, activities and track records are joined
with `event_time <= as_of` conditions, so nothing dated after an as-of date can reach its row.
The opportunities table's current-state columns (stage, amount, expected_close_date, closed_at,
outcome, won_amount) are never read as features: state comes from opportunity_history, plus the
current state as one history row dated `current_state_as_of` when that is <= as_of. Outcomes and
won amounts are read only for deals closed at or before the as-of date (track records).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.params import FeatureParams, load_params
from features.sql import (
    AsOfArg,
    canonical_frame,
    dates_frame,
    days_between,
    fetch_canonical,
    registered,
    shaped_table,
    to_timestamps,
)

ID_COLUMNS = ["opportunity_id", "account_id", "owner_id", "as_of"]
CATEGORICAL_OUTPUT = [
    "opp_stage",
    "opp_type",
    "opp_product",
    "opp_lead_source",
    "acct_industry",
    "acct_segment",
    "acct_region",
]

OPPORTUNITY_COLUMNS = {
    "opportunity_id": "str",
    "account_id": "str",
    "owner_id": "str",
    "created_at": "ts",
    "product": "lstr",
    "type": "lstr",
    "lead_source": "lstr",
    "closed_at": "ts",
    "outcome": "lstr",
    "won_amount": "num",
}
STRING_OUTPUT = ["opportunity_id", "account_id", "owner_id", *CATEGORICAL_OUTPUT]
CURRENT_STATE_COLUMNS = {"stage": "lstr", "amount": "num", "expected_close_date": "ts"}
HISTORY_COLUMNS = {
    "opportunity_id": "str",
    "changed_at": "ts",
    "stage": "lstr",
    "amount": "num",
    "expected_close_date": "ts",
}
ACTIVITY_COLUMNS = {
    "account_id": "str",
    "opportunity_id": "str",
    "occurred_at": "ts",
    "type": "lstr",
    "direction": "lstr",
    "replied": "num",
    "duration_s": "num",
}
ACCOUNT_COLUMNS = {
    "account_id": "str",
    "created_at": "ts",
    "industry": "lstr",
    "segment": "lstr",
    "region": "lstr",
    "employees": "num",
    "annual_revenue": "num",
}


def plural(activity_type: str) -> str:
    """Feature-name form of an activity type: call -> calls, email -> emails."""
    name = "".join(ch if ch.isalnum() else "_" for ch in activity_type)
    return name if name.endswith("s") else f"{name}s"


def history_with_current_state(
    tables: dict[str, pd.DataFrame], current_state_as_of: pd.Timestamp | None
) -> pd.DataFrame:
    """opportunity_history (shaped), plus the current state as a history row dated current_state_as_of.

    Args:
        tables: Canonical tables.
        current_state_as_of: When given, every opportunity's current stage/amount/expected_close_date
            becomes a history row dated this timestamp (visible only to as-of dates >= it).

    Returns:
        Columns opportunity_id, changed_at, stage, amount, expected_close_date, src_order (a stable
        tie-breaker for rows with the same changed_at; the current-state row sorts last).
    """
    history = shaped_table(tables, "opportunity_history", HISTORY_COLUMNS)
    history["src_order"] = range(len(history))
    if current_state_as_of is None:
        return history
    opps = shaped_table(tables, "opportunities", {"opportunity_id": "str", **CURRENT_STATE_COLUMNS})
    current = opps.assign(changed_at=current_state_as_of)[list(HISTORY_COLUMNS)]
    current["src_order"] = range(len(history), len(history) + len(current))
    if history.empty:
        # What the concat gives (pandas leaves empty frames out of the dtype decision), without its
        # cost and its FutureWarning; the serving path's records often carry no history at all.
        return current.reset_index(drop=True)
    return pd.concat([history, current], ignore_index=True)


def reply_rate_prior(params: FeatureParams) -> dict[str, float]:
    """Prior of the smoothed reply rate: ``smoothing.reply_rate`` (pseudo-count) and ``reply_rate_prior`` (rate).

    Both are read from features/params.yaml when present (defaults: 2 pseudo-emails at 50 %).
    """
    smoothing = params.smoothing
    return {
        "strength": float(smoothing.get("reply_rate", 2.0)),
        "rate": float(smoothing.get("reply_rate_prior", 0.5)),
    }


def _activity_sql(params: FeatureParams) -> str:
    windows = sorted(set(params.activity_windows_days))
    parts = []
    for activity_type in params.activity_types:
        for window in windows:
            parts.append(
                f"SUM(CASE WHEN a.type = '{activity_type}' AND a.occurred_at > p.start_{window}d THEN 1 ELSE 0 END)"
                f" AS opp_{plural(activity_type)}_{window}d"
            )
    for window in windows:
        parts.append(
            f"SUM(CASE WHEN a.occurred_at > p.start_{window}d THEN 1 ELSE 0 END) AS opp_activities_{window}d"
        )
    parts += [
        "COUNT(a.occurred_at) AS opp_activities_total",
        f"MIN({days_between('a.occurred_at', 'p.as_of')}) AS opp_days_since_activity",
        f"MIN(CASE WHEN a.type = 'meeting' THEN {days_between('a.occurred_at', 'p.as_of')} END) AS opp_days_since_meeting",
        "AVG(a.replied) AS opp_reply_rate",
        "AVG(CASE WHEN a.direction IS NULL THEN NULL WHEN a.direction = 'inbound' THEN 1.0 ELSE 0.0 END)"
        " AS opp_inbound_share",
        "SUM(a.replied) AS n_replied",
        "COUNT(a.replied) AS n_reply_known",
    ]
    # Mean log duration per type: engaged buyers take longer calls and demos (log: durations are skewed).
    for activity_type in params.activity_types:
        parts.append(
            f"AVG(CASE WHEN a.type = '{activity_type}' AND a.duration_s > 0 THEN LN(a.duration_s) END)"
            f" AS opp_{plural(activity_type)}_log_duration_mean"
        )
    return ",\n        ".join(parts)


def _track_record_sql(key: str, alias: str) -> str:
    """Cumulative closed/won counts per (key, as_of) over deals closed at or before as_of.

    Closed deals are bucketed into the first as-of date on or after their close (a range join on
    the disjoint (prev_as_of, as_of] intervals), then summed cumulatively per key.
    """
    key_expr = "'__all__'" if key == "__all__" else f"c.{key}"
    pop_key = "'__all__'" if key == "__all__" else key
    return f"""
{alias}_bucket AS (
    SELECT {key_expr} AS k, d.as_of,
           COUNT(*) AS n_closed,
           SUM(CASE WHEN c.outcome = 'won' THEN 1 ELSE 0 END) AS n_won,
           SUM(CASE WHEN c.outcome = 'won' THEN COALESCE(c.won_amount, 0) ELSE 0 END) AS won_amount
    FROM closed c JOIN dates d ON c.closed_at > d.prev_as_of AND c.closed_at <= d.as_of
    WHERE {key_expr} IS NOT NULL
    GROUP BY 1, 2
),
{alias}_grid AS (
    -- Only the (key, as_of) pairs that are looked up or carry closes: the cumulative sum needs
    -- every bucket, and every looked-up pair gets its running total from the rows before it.
    SELECT k, as_of FROM {alias}_bucket
    UNION
    SELECT {pop_key} AS k, as_of FROM pop WHERE {pop_key} IS NOT NULL
),
{alias} AS (
    SELECT g.k, g.as_of,
           SUM(COALESCE(b.n_closed, 0)) OVER w AS n_closed,
           SUM(COALESCE(b.n_won, 0)) OVER w AS n_won,
           SUM(COALESCE(b.won_amount, 0)) OVER w AS won_amount
    FROM {alias}_grid g LEFT JOIN {alias}_bucket b ON b.k = g.k AND b.as_of = g.as_of
    WINDOW w AS (PARTITION BY g.k ORDER BY g.as_of ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)"""


def _smoothed(alias: str, strength: float) -> str:
    return (
        f"CASE WHEN gall.n_closed > 0 THEN (COALESCE({alias}.n_won, 0) + {strength} * gall.n_won / gall.n_closed)"
        f" / (COALESCE({alias}.n_closed, 0) + {strength}) END"
    )


# The track-record relations `opportunity_query` joins, with the opps column each is keyed by.
TRACK_RECORD_KEYS = {
    "glob_tr": None,
    "rep_tr": "owner_id",
    "acct_tr": "account_id",
    "prod_tr": "product",
    "src_tr": "lead_source",
}
# Deals of the CRM open at as_of that a context-scored build does not hold itself (open counts).
CONTEXT_OPEN_DEALS = "ctx_open"


def _track_record_ctes() -> str:
    """The CTEs `closed` and the five track records (TRACK_RECORD_KEYS), over the deals in `opps`."""
    return f"""
closed AS (
    SELECT owner_id, account_id, product, lead_source, closed_at, outcome, won_amount
    FROM opps WHERE closed_at IS NOT NULL AND outcome IN ('won', 'lost')
),
{_track_record_sql("__all__", "glob_tr")},
{_track_record_sql("owner_id", "rep_tr")},
{_track_record_sql("account_id", "acct_tr")},
{_track_record_sql("product", "prod_tr")},
{_track_record_sql("lead_source", "src_tr")},"""


def opportunity_query(params: FeatureParams, closed_deals: bool = True, context: bool = False) -> str:
    """The SQL text computing opportunity features for every (open deal, as_of) pair.

    Expects registered relations: opps, hist, acts, accts, dates, stage_order (and with `context`,
    the five TRACK_RECORD_KEYS relations and CONTEXT_OPEN_DEALS, see `track_record_context`).

    Args:
        params: Feature parameters.
        closed_deals: False when `opps` holds no deal closed as won or lost (always so for the API's
            records, which are open deals): the track records then read an empty set, and the text
            states their values (no closes: counts 0, rates unknown) instead of computing them from
            no rows. Binding the fifteen track-record CTEs is about half of a one-record build.
        context: The deals in `opps` come without the rest of their CRM (the API's records), and
            the CRM's track records and other open deals are registered relations computed from a
            dataset by `track_record_context` (with these same CTEs): the joins and columns below
            read them instead of the CTEs, and the open counts add the CRM's other open deals.
            Ignores `closed_deals` (deals closed in `opps` are the dataset's business then).
    """
    smoothing = params.smoothing
    reply_prior = reply_rate_prior(params)
    if closed_deals or context:
        track_record_ctes = "" if context else _track_record_ctes()
        track_record_joins = """
LEFT JOIN glob_tr gall ON gall.as_of = p.as_of
LEFT JOIN rep_tr rep ON rep.k = p.owner_id AND rep.as_of = p.as_of
LEFT JOIN acct_tr acct ON acct.k = p.account_id AND acct.as_of = p.as_of
LEFT JOIN prod_tr prod ON prod.k = p.product AND prod.as_of = p.as_of
LEFT JOIN src_tr src ON src.k = p.lead_source AND src.as_of = p.as_of"""
        track_record_columns = f"""
       {_smoothed("prod", smoothing.get("product", 20.0))} AS opp_product_win_rate_prior,
       {_smoothed("src", smoothing.get("lead_source", 20.0))} AS opp_lead_source_win_rate_prior,
       CASE WHEN p.owner_id IS NOT NULL THEN {_smoothed("rep", smoothing.get("rep", 10.0))} END AS rep_win_rate_closed,
       CASE WHEN p.owner_id IS NOT NULL THEN COALESCE(rep.n_closed, 0) END AS rep_closed_deals_prior,
       CASE WHEN rep.n_won > 0 THEN rep.won_amount / rep.n_won END AS rep_avg_won_amount_prior,
       oc.rep_open_deals,
       CASE WHEN p.account_id IS NOT NULL THEN COALESCE(acct.n_won, 0) END AS acct_won_deals_prior,
       CASE WHEN p.account_id IS NOT NULL THEN COALESCE(acct.won_amount, 0) END AS acct_won_amount_prior,
       CASE WHEN p.account_id IS NOT NULL THEN {_smoothed("acct", smoothing.get("account", 5.0))} END
           AS acct_win_rate_closed,"""
    else:
        # The values the block above gives when `closed` is empty: every track record counts 0
        # closes, so the smoothed rates (which need gall.n_closed > 0) and the average are NULL.
        track_record_ctes = track_record_joins = ""
        track_record_columns = """
       CAST(NULL AS DOUBLE) AS opp_product_win_rate_prior,
       CAST(NULL AS DOUBLE) AS opp_lead_source_win_rate_prior,
       CAST(NULL AS DOUBLE) AS rep_win_rate_closed,
       CASE WHEN p.owner_id IS NOT NULL THEN 0 END AS rep_closed_deals_prior,
       CAST(NULL AS DOUBLE) AS rep_avg_won_amount_prior,
       oc.rep_open_deals,
       CASE WHEN p.account_id IS NOT NULL THEN 0 END AS acct_won_deals_prior,
       CASE WHEN p.account_id IS NOT NULL THEN CAST(0 AS DOUBLE) END AS acct_won_amount_prior,
       CAST(NULL AS DOUBLE) AS acct_win_rate_closed,"""
    open_deals = "pop"
    if context:
        open_deals = f"""(SELECT opportunity_id, owner_id, account_id, as_of FROM pop
          UNION ALL SELECT opportunity_id, owner_id, account_id, as_of FROM {CONTEXT_OPEN_DEALS})"""
    return f"""
WITH
pop AS (
    SELECT o.opportunity_id, o.account_id, o.owner_id, o.created_at, o.type, o.product, o.lead_source,
           d.*
    FROM opps o JOIN dates d ON o.created_at <= d.as_of AND (o.closed_at IS NULL OR o.closed_at > d.as_of)
),
h AS (
    SELECT h.*, ROW_NUMBER() OVER (PARTITION BY h.opportunity_id ORDER BY h.changed_at, h.src_order) AS seq
    FROM hist h
),
h_stage AS (
    SELECT h.opportunity_id, h.changed_at, h.seq, h.stage, so.stage_index,
           LAG(h.stage) OVER (PARTITION BY h.opportunity_id ORDER BY h.seq) AS prev_stage,
           LAG(so.stage_index) OVER (PARTITION BY h.opportunity_id ORDER BY h.seq) AS prev_stage_index
    FROM h LEFT JOIN stage_order so ON so.stage = h.stage
    WHERE h.stage IS NOT NULL
),
h_amount AS (
    SELECT opportunity_id, changed_at, seq, amount,
           LAG(amount) OVER (PARTITION BY opportunity_id ORDER BY seq) AS prev_amount
    FROM h WHERE amount IS NOT NULL
),
h_close AS (
    SELECT opportunity_id, changed_at, seq, expected_close_date,
           LAG(expected_close_date) OVER (PARTITION BY opportunity_id ORDER BY seq) AS prev_close
    FROM h WHERE expected_close_date IS NOT NULL
),
h_all AS (
    SELECT opportunity_id, changed_at, seq, 'stage' AS kind, stage, stage_index,
           CASE WHEN prev_stage IS NULL OR stage <> prev_stage THEN 1 ELSE 0 END AS is_entry,
           CASE WHEN prev_stage IS NOT NULL AND stage <> prev_stage THEN 1 ELSE 0 END AS is_change,
           CASE WHEN stage_index < prev_stage_index THEN 1 ELSE 0 END AS is_regression,
           CAST(NULL AS DOUBLE) AS amount, 0 AS is_revision,
           CAST(NULL AS TIMESTAMP) AS close_date, 0 AS is_slip, 0.0 AS slip_days
    FROM h_stage
    UNION ALL
    SELECT opportunity_id, changed_at, seq, 'amount', NULL, NULL, 0, 0, 0,
           amount, CASE WHEN prev_amount IS NOT NULL AND amount <> prev_amount THEN 1 ELSE 0 END,
           NULL, 0, 0.0
    FROM h_amount
    UNION ALL
    SELECT opportunity_id, changed_at, seq, 'close', NULL, NULL, 0, 0, 0, NULL, 0,
           expected_close_date,
           CASE WHEN expected_close_date > prev_close THEN 1 ELSE 0 END,
           CASE WHEN expected_close_date > prev_close
                THEN {days_between("prev_close", "expected_close_date")} ELSE 0.0 END
    FROM h_close
),
state AS (
    SELECT p.opportunity_id, p.as_of,
           MAX_BY(CASE WHEN x.kind = 'stage' THEN x.stage END, CASE WHEN x.kind = 'stage' THEN x.seq END) AS opp_stage,
           MAX_BY(CASE WHEN x.kind = 'stage' THEN x.stage_index END, CASE WHEN x.kind = 'stage' THEN x.seq END)
               AS opp_stage_index,
           MAX(CASE WHEN x.kind = 'stage' AND x.is_entry = 1 THEN x.changed_at END) AS stage_entered_at,
           SUM(x.is_change) AS opp_stage_changes,
           SUM(x.is_regression) AS opp_stage_regressions,
           MAX_BY(x.amount, CASE WHEN x.kind = 'amount' THEN x.seq END) AS opp_amount,
           MIN_BY(x.amount, CASE WHEN x.kind = 'amount' THEN x.seq END) AS opp_amount_first,
           SUM(x.is_revision) AS opp_amount_revisions,
           MAX_BY(x.close_date, CASE WHEN x.kind = 'close' THEN x.seq END) AS close_date,
           SUM(x.is_slip) AS opp_close_date_slips,
           SUM(x.slip_days) AS opp_close_date_days_slipped,
           COUNT(*) AS n_history
    FROM pop p JOIN h_all x ON x.opportunity_id = p.opportunity_id AND x.changed_at <= p.as_of
    GROUP BY p.opportunity_id, p.as_of
),
act AS (
    SELECT p.opportunity_id, p.as_of,
        {_activity_sql(params)}
    FROM pop p JOIN acts a ON a.opportunity_id = p.opportunity_id AND a.occurred_at <= p.as_of
    GROUP BY p.opportunity_id, p.as_of
),
stage_act AS (
    -- Activities since the deal entered its current stage (for the in-stage activity rate).
    SELECT s.opportunity_id, s.as_of, COUNT(*) AS n_stage_activities
    FROM state s JOIN acts a ON a.opportunity_id = s.opportunity_id
        AND a.occurred_at > s.stage_entered_at AND a.occurred_at <= s.as_of
    GROUP BY s.opportunity_id, s.as_of
),
{track_record_ctes}
open_counts AS (
    SELECT opportunity_id, as_of,
           CASE WHEN owner_id IS NOT NULL THEN COUNT(*) OVER (PARTITION BY owner_id, as_of) END AS rep_open_deals,
           CASE WHEN account_id IS NOT NULL THEN COUNT(*) OVER (PARTITION BY account_id, as_of) END AS acct_open_deals
    FROM {open_deals}
)
SELECT p.opportunity_id, p.account_id, p.owner_id, p.as_of,
       s.opp_stage, p.type AS opp_type, p.product AS opp_product, p.lead_source AS opp_lead_source,
       CASE WHEN ac.account_id IS NOT NULL THEN ac.industry END AS acct_industry,
       CASE WHEN ac.account_id IS NOT NULL THEN ac.segment END AS acct_segment,
       CASE WHEN ac.account_id IS NOT NULL THEN ac.region END AS acct_region,
       {days_between("p.created_at", "p.as_of")} AS opp_age_days,
       {days_between("s.stage_entered_at", "p.as_of")} AS opp_days_in_stage,
       s.opp_stage_index,
       COALESCE(s.opp_stage_changes, 0) AS opp_stage_changes,
       COALESCE(s.opp_stage_regressions, 0) AS opp_stage_regressions,
       s.opp_amount, s.opp_amount_first,
       COALESCE(s.opp_amount_revisions, 0) AS opp_amount_revisions,
       CASE WHEN s.opp_amount_first > 0 THEN (s.opp_amount - s.opp_amount_first) / s.opp_amount_first END
           AS opp_amount_change_rel,
       {days_between("p.as_of", "s.close_date")} AS opp_days_to_expected_close,
       COALESCE(s.opp_close_date_slips, 0) AS opp_close_date_slips,
       COALESCE(s.opp_close_date_days_slipped, 0) AS opp_close_date_days_slipped,
       CASE WHEN s.close_date IS NULL THEN NULL WHEN s.close_date < p.as_of THEN 1 ELSE 0 END AS opp_close_date_past,
       CASE WHEN s.n_history > 0 THEN 1 ELSE 0 END AS opp_has_history,
       a.* EXCLUDE (opportunity_id, as_of, n_replied, n_reply_known),
       -- Engagement rates normalised by exposure, log-scaled (+1 smoothing: a week-old deal with no
       -- activity is not yet a dead one): how busy a deal is, comparable across ages.
       LN((COALESCE(a.opp_activities_total, 0) + 1) / ({days_between("p.created_at", "p.as_of")} / 7.0 + 1))
           AS opp_activities_per_week_log,
       CASE WHEN s.stage_entered_at IS NOT NULL
            THEN LN((COALESCE(sa.n_stage_activities, 0) + 1) / ({days_between("s.stage_entered_at", "p.as_of")} / 7.0 + 1))
       END AS opp_stage_activities_per_week_log,
       -- Reply rate shrunk towards a prior so that two emails do not make a 0 % or 100 % deal.
       (COALESCE(a.n_replied, 0) + {reply_prior["strength"]} * {reply_prior["rate"]})
           / (COALESCE(a.n_reply_known, 0) + {reply_prior["strength"]}) AS opp_reply_rate_smoothed,
       -- Velocity: days of deal age per stage reached (slow deals are weak deals).
       CASE WHEN s.n_history > 0
            THEN {days_between("p.created_at", "p.as_of")} / (COALESCE(s.opp_stage_changes, 0) + 1)
       END AS opp_days_per_stage,
       {track_record_columns}
       oc.acct_open_deals,
       ac.employees AS acct_employees,
       ac.annual_revenue AS acct_annual_revenue,
       CASE WHEN ac.account_id IS NOT NULL THEN {days_between("ac.created_at", "p.as_of")} END AS acct_tenure_days
FROM pop p
LEFT JOIN state s ON s.opportunity_id = p.opportunity_id AND s.as_of = p.as_of
LEFT JOIN act a ON a.opportunity_id = p.opportunity_id AND a.as_of = p.as_of
LEFT JOIN stage_act sa ON sa.opportunity_id = p.opportunity_id AND sa.as_of = p.as_of
LEFT JOIN open_counts oc ON oc.opportunity_id = p.opportunity_id AND oc.as_of = p.as_of{track_record_joins}
LEFT JOIN accts ac ON ac.account_id = p.account_id AND ac.created_at <= p.as_of
ORDER BY p.as_of, p.opportunity_id
"""


def build_opportunity_features(
    tables: dict[str, pd.DataFrame],
    as_of: AsOfArg,
    params: FeatureParams | None = None,
    *,
    current_state_as_of: dt.date | dt.datetime | str | pd.Timestamp | None = None,
    context: dict[str, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Features of every deal open at each as-of date, from data visible at that date only.

    Args:
        tables: Canonical tables (features.data.Tables); needs `opportunities`, uses
            `opportunity_history`, `activities` and `accounts` when present.
        as_of: One as-of date or a sequence (one query computes them all).
        params: Feature parameters; None loads features/params.yaml.
        current_state_as_of: When given, the opportunities table's current stage, amount and
            expected close date count as a history row dated this timestamp (only for as-of dates
            on or after it). Batch scoring of "now" passes the export date; training leaves it None.
        context: For deals that come without the rest of their CRM (API records): the CRM's track
            records and other open deals as of the (one) as_of, `track_record_context_for` of an indexed
            `track_record_context`; the track-record features then read it instead of `tables`.

    Returns:
        One row per (opportunity_id, as_of) for deals open at as_of (created_at <= as_of and not
        closed_at <= as_of), sorted by as_of then opportunity_id. Columns: opportunity_id,
        account_id, owner_id, as_of, then opp_*/rep_*/acct_* features (str categoricals or float64;
        NaN where not knowable, e.g. stage without history).
    """
    params = params or load_params()
    if "opportunities" not in tables:
        raise KeyError("build_opportunity_features needs the 'opportunities' table")
    frames = opportunity_frames(tables, as_of, params, current_state_as_of=current_state_as_of)
    if context is not None:
        if len(frames["dates"]) != 1:
            raise ValueError("build_opportunity_features: a track-record context is for one as_of date")
        frames = {**frames, **context}
    query = opportunity_query(params, has_closed_deals(frames["opps"]), context=context is not None)
    with registered(frames) as con:
        result = con.execute(query)
        columns = fetch_canonical(result, STRING_OUTPUT)
    # The dates table's helper columns (as_of windows) are never features.
    columns = {k: v for k, v in columns.items() if not (k.startswith("start_") or k == "prev_as_of")}
    # A deal without any activity row has zero activities, not an unknown count.
    for name, values in columns.items():
        if _is_activity_count(name):
            columns[name] = np.where(np.isnan(values), 0.0, values)
    return canonical_frame(columns)


def track_record_context(
    tables: dict[str, pd.DataFrame], as_of: dt.date | dt.datetime | str | pd.Timestamp
) -> dict[str, pd.DataFrame]:
    """The CRM's track records and open deals as of one date, for deals scored without their CRM.

    An API request carries a deal or a few, not the CRM's closed deals: its rep, account, product
    and lead-source track records and the rep's and account's open-deal counts are facts about the
    rest of the CRM. This computes them from a dataset with the same SQL the batch build runs
    (`_track_record_ctes`, and `pop`'s definition of an open deal), so that
    `build_opportunity_features(request_tables, as_of, context=track_record_context_for(...))` gives
    a deal the features the batch build gives it over the whole dataset.

    Args:
        tables: Canonical tables of the CRM (needs `opportunities`).
        as_of: The one as-of date: only deals closed at or before it count, and deals open at it.

    Returns:
        Relation name -> frame: the TRACK_RECORD_KEYS relations (k, as_of, n_closed, n_won,
        won_amount; every key of the dataset) and CONTEXT_OPEN_DEALS (opportunity_id, owner_id,
        account_id, as_of: deals open at as_of).
    """
    stamps = to_timestamps(as_of)
    if len(stamps) != 1:
        raise ValueError("track_record_context: one as_of date")
    frames = {
        "opps": shaped_table(tables, "opportunities", OPPORTUNITY_COLUMNS),
        "dates": dates_frame(stamps),
    }
    # Every key of a deal created by as_of is looked up (a request may name any rep, account,
    # product or source); a key the context lacks has no closes, which the joins read as such.
    keys = """
pop AS (
    SELECT DISTINCT o.owner_id, o.account_id, o.product, o.lead_source, d.as_of
    FROM opps o JOIN dates d ON o.created_at <= d.as_of
),"""
    track_query = (
        "WITH"
        + keys
        + _track_record_ctes().rstrip(",")
        + "\n"
        + "\nUNION ALL\n".join(
            f"SELECT '{relation}' AS relation, k, as_of, CAST(n_closed AS DOUBLE) AS n_closed,"
            f" CAST(n_won AS DOUBLE) AS n_won, CAST(won_amount AS DOUBLE) AS won_amount FROM {relation}"
            for relation in TRACK_RECORD_KEYS
        )
    )
    open_query = """
SELECT o.opportunity_id, o.owner_id, o.account_id, d.as_of
FROM opps o JOIN dates d ON o.created_at <= d.as_of AND (o.closed_at IS NULL OR o.closed_at > d.as_of)
"""
    with registered(frames) as con:
        track = con.execute(track_query).df()
        open_deals = con.execute(open_query).df()
    context = {
        relation: track.loc[
            track["relation"] == relation, ["k", "as_of", "n_closed", "n_won", "won_amount"]
        ].reset_index(drop=True)
        for relation in TRACK_RECORD_KEYS
    }
    context[CONTEXT_OPEN_DEALS] = open_deals
    return context


_TRACK_COLUMNS = ("n_closed", "n_won", "won_amount")
_OPEN_COLUMNS = ("opportunity_id", "owner_id", "account_id")


@dataclass(frozen=True)
class TrackRecordIndex:
    """A `track_record_context` indexed for cutting it per build (`track_record_context_for`).

    The per-build cut is then dictionary lookups over the build's few keys: pandas spends ~2 ms per
    merge on frames of a few rows, more than the lookups' whole work.

    Attributes:
        records: Relation name (TRACK_RECORD_KEYS) -> key -> (n_closed, n_won, won_amount).
        open_by: ``owner_id`` / ``account_id`` -> key -> open deals (opportunity, owner, account).
    """

    records: dict[str, dict[str, tuple[float, float, float]]]
    open_by: dict[str, dict[str, list[tuple[Any, Any, Any]]]]


def _present(value: Any) -> bool:
    return value is not None and value == value  # NaN != NaN


def index_track_record_context(context: dict[str, pd.DataFrame]) -> TrackRecordIndex:
    """Index a `track_record_context` (once per date; see TrackRecordIndex)."""
    records = {
        name: dict(
            zip(
                context[name]["k"].tolist(),
                zip(*(context[name][c].astype(float).tolist() for c in _TRACK_COLUMNS), strict=True),
                strict=True,
            )
        )
        for name in TRACK_RECORD_KEYS
    }
    open_by: dict[str, dict[str, list[tuple[Any, Any, Any]]]] = {"owner_id": {}, "account_id": {}}
    for row in zip(*(context[CONTEXT_OPEN_DEALS][c].tolist() for c in _OPEN_COLUMNS), strict=True):
        for column, position in (("owner_id", 1), ("account_id", 2)):
            if _present(row[position]):
                open_by[column].setdefault(row[position], []).append(row)
    return TrackRecordIndex(records=records, open_by=open_by)


def track_record_context_for(
    index: TrackRecordIndex,
    opps: pd.DataFrame,
    as_of: dt.date | dt.datetime | str | pd.Timestamp,
    split_id: Callable[[str], tuple[str, str]] | None = None,
) -> dict[str, pd.DataFrame]:
    """The context relations one feature build over the deals `opps` reads, dated `as_of`.

    Args:
        index: `index_track_record_context` of the CRM's context as of (or, after its data ends,
            before) `as_of`.
        opps: The deals of the build (canonical opportunities: opportunity_id, owner_id, account_id).
        as_of: The build's one as-of date (the relations' as_of column).
        split_id: Maps a build id to ``(prefix, CRM id)`` when the build's ids are not the CRM's
            (the service prefixes ids per request in merged builds); rows found for a CRM id carry
            the prefix. Default: ids are the CRM's (prefix "").

    Returns:
        The relations `opportunity_query(..., context=True)` reads: the global, product and
        lead-source track records whole (one row per product or source), those of the deals' reps
        and accounts, and the CRM's other deals open at as_of of the same reps or accounts (the
        build's own deals are counted from the build, in their request's state).
    """
    stamp = to_timestamps(as_of)[0]

    def split(value: Any) -> tuple[str, Any]:
        if not _present(value):
            return "", None
        return split_id(str(value)) if split_id is not None else ("", value)

    own_ids = set(opps["opportunity_id"].tolist())
    looked_up: dict[str, dict[str, tuple[float, float, float]]] = {"rep_tr": {}, "acct_tr": {}}
    others: dict[str, tuple[Any, Any, Any]] = {}
    for owner, account in zip(opps["owner_id"].tolist(), opps["account_id"].tolist(), strict=True):
        for value, name, column in ((owner, "rep_tr", "owner_id"), (account, "acct_tr", "account_id")):
            prefix, crm_id = split(value)
            if crm_id is None:
                continue
            record = index.records[name].get(crm_id)
            if record is not None:
                looked_up[name][prefix + crm_id] = record
            for opportunity, deal_owner, deal_account in index.open_by[column].get(crm_id, ()):
                build_id = prefix + opportunity
                if build_id not in own_ids and build_id not in others:
                    others[build_id] = (
                        build_id,
                        prefix + deal_owner if _present(deal_owner) else None,
                        prefix + deal_account if _present(deal_account) else None,
                    )
    frames = {name: _records_frame(index.records[name], stamp) for name in ("glob_tr", "prod_tr", "src_tr")}
    for name, records in looked_up.items():
        frames[name] = _records_frame(records, stamp)
    rows = list(others.values())
    frames[CONTEXT_OPEN_DEALS] = pd.DataFrame(
        {
            **{
                column: pd.Series([row[i] for row in rows], dtype=object)
                for i, column in enumerate(_OPEN_COLUMNS)
            },
            "as_of": pd.Series([stamp] * len(rows), dtype="datetime64[ns]"),
        }
    )
    return frames


def _records_frame(records: dict[str, tuple[float, float, float]], as_of: pd.Timestamp) -> pd.DataFrame:
    """A track-record relation (k, as_of, n_closed, n_won, won_amount) from key -> counts."""
    values = np.array(list(records.values()), dtype=float).reshape(len(records), len(_TRACK_COLUMNS))
    return pd.DataFrame(
        {
            "k": pd.Series(list(records), dtype=object),
            "as_of": pd.Series([as_of] * len(records), dtype="datetime64[ns]"),
            **{column: values[:, i] for i, column in enumerate(_TRACK_COLUMNS)},
        }
    )


def opportunity_frames(
    tables: dict[str, pd.DataFrame],
    as_of: AsOfArg,
    params: FeatureParams,
    *,
    current_state_as_of: dt.date | dt.datetime | str | pd.Timestamp | None = None,
) -> dict[str, pd.DataFrame]:
    """The relations `opportunity_query` reads, shaped from canonical tables.

    Args:
        tables: Canonical tables (as for `build_opportunity_features`).
        as_of: One as-of date or a sequence.
        params: Feature parameters.
        current_state_as_of: As for `build_opportunity_features`.

    Returns:
        Relation name -> frame: opps, hist, acts, accts, dates, stage_order.
    """
    current_ts = None if current_state_as_of is None else to_timestamps(current_state_as_of)[0]
    dates = dates_frame(as_of, set(params.activity_windows_days))
    stage_order = pd.DataFrame(
        {"stage": list(params.stage_order), "stage_index": [float(i) for i in range(len(params.stage_order))]}
    )
    if stage_order.empty:
        stage_order = pd.DataFrame(
            {"stage": pd.Series([], dtype=object), "stage_index": pd.Series([], dtype=float)}
        )
    return {
        "opps": shaped_table(tables, "opportunities", OPPORTUNITY_COLUMNS),
        "hist": history_with_current_state(tables, current_ts),
        "acts": shaped_table(tables, "activities", ACTIVITY_COLUMNS),
        "accts": shaped_table(tables, "accounts", ACCOUNT_COLUMNS),
        "dates": dates,
        "stage_order": stage_order,
    }


def has_closed_deals(opps: pd.DataFrame) -> bool:
    """Whether the (shaped) opportunities hold a deal closed as won or lost: a track-record input."""
    closed = ~np.isnat(opps["closed_at"].to_numpy(dtype="datetime64[ns]"))
    return any(outcome in ("won", "lost") for outcome in opps["outcome"].to_numpy()[closed].tolist())


def _is_activity_count(column: str) -> bool:
    """Windowed activity counts (opp_<type>_<w>d) and the total, which are 0 for a deal without activity."""
    return column == "opp_activities_total" or (
        column.startswith("opp_") and column.endswith("d") and column[-2].isdigit()
    )
