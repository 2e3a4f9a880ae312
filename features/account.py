"""As-of features of subscribed accounts (churn model).

One DuckDB query per block computes a whole series of as-of dates. An account is in the population at
T when at least one subscription is active at T (start_date <= T and not end_date <= T). An end_date
after T is never visible at T: renewal dates come from start_date + term (the `term_months` column when
present, else the typical length of the account's subscriptions that had already ended by T).
Usage features are computed for every numeric usage column, including unknown extra metrics: level,
trend, drop against the account's own baseline, and the level per 1,000 of MRR and per active user
(usage alone mostly measures account size). Renewal deals add the stage of the open one as of T (from
opportunity_history) and the renewals lost / won shortly before T (closed_at <= T, like the win-rate
track records); `acct_term_ends_in_horizon` counts the renewal decisions within the churn horizon.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

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
)

CATEGORICAL_OUTPUT = ["acct_industry", "acct_segment", "acct_region"]
DAYS_PER_MONTH = 30.4375

SUBSCRIPTION_COLUMNS = {
    "subscription_id": "str",
    "account_id": "str",
    "start_date": "ts",
    "end_date": "ts",
    "mrr": "num",
    "auto_renew": "num",
    "term_months": "num",
}
TICKET_COLUMNS = {
    "account_id": "str",
    "opened_at": "ts",
    "resolved_at": "ts",
    "priority": "lstr",
    "csat": "num",
    "first_contact_resolved": "num",
}
SURVEY_COLUMNS = {"account_id": "str", "responded_at": "ts", "kind": "lstr", "score": "num"}
TOUCH_COLUMNS = {"account_id": "str", "occurred_at": "ts"}
# `outcome` is read only for deals closed at or before the as-of date (like the win-rate track records).
OPEN_OPP_COLUMNS = {
    "opportunity_id": "str",
    "account_id": "str",
    "created_at": "ts",
    "closed_at": "ts",
    "type": "lstr",
    "outcome": "lstr",
}
HISTORY_COLUMNS = {"opportunity_id": "str", "changed_at": "ts", "amount": "num", "stage": "lstr"}
ACCOUNT_COLUMNS = {
    "account_id": "str",
    "created_at": "ts",
    "industry": "lstr",
    "segment": "lstr",
    "region": "lstr",
    "employees": "num",
    "annual_revenue": "num",
}
USAGE_KEY_COLUMNS = ("account_id", "date")


def metric_feature_name(column: str) -> str:
    """Feature-name form of a usage column: lower case, non-alphanumerics as underscores."""
    return re.sub(r"[^0-9a-z]+", "_", str(column).lower()).strip("_")


def usage_long(tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, list[str]]:
    """Usage in long form (account_id, date, metric, value) for every numeric usage column.

    Args:
        tables: Canonical tables; a missing usage table gives an empty frame.

    Returns:
        The long frame (rows with a missing value dropped, they carry no measurement) and the metric
        names in column order.
    """
    usage = tables.get("usage")
    metric_columns = (
        []
        if usage is None
        else [
            c for c in usage.columns if c not in USAGE_KEY_COLUMNS and pd.api.types.is_numeric_dtype(usage[c])
        ]
    )
    if usage is None or usage.empty or not metric_columns:
        empty = pd.DataFrame(
            {
                "account_id": pd.Series([], dtype=object),
                "date": pd.Series([], dtype="datetime64[ns]"),
                "metric": pd.Series([], dtype=object),
                "value": pd.Series([], dtype="float64"),
            }
        )
        return empty, []
    keys = shaped_table(tables, "usage", {"account_id": "str", "date": "ts"})
    names = {c: metric_feature_name(c) for c in metric_columns}
    metrics = list(dict.fromkeys(names.values()))
    if len(metrics) < len(metric_columns):
        # Two columns with one feature name (e.g. "Events" and "events"): melt decides what that means.
        wide = pd.concat([keys, usage[metric_columns].reset_index(drop=True).astype("float64")], axis=1)
        wide = wide.rename(columns=names)
        long = wide.melt(
            id_vars=["account_id", "date"], value_vars=metrics, var_name="metric", value_name="value"
        )
        return long.dropna(subset=["value"]).reset_index(drop=True), metrics
    # What melt + dropna give (metric by metric, rows in table order, missing values left out), from
    # arrays: melt's fixed cost is most of a one-account build's Python time.
    account_ids, dates = keys["account_id"].to_numpy(), keys["date"].to_numpy()
    parts: dict[str, list[np.ndarray]] = {"account_id": [], "date": [], "metric": [], "value": []}
    for column in metric_columns:
        values = usage[column].astype("float64").to_numpy()
        measured = ~np.isnan(values)
        parts["account_id"].append(account_ids[measured])
        parts["date"].append(dates[measured])
        parts["metric"].append(np.full(int(measured.sum()), names[column], dtype=object))
        parts["value"].append(values[measured])
    long = pd.DataFrame({name: np.concatenate(arrays) for name, arrays in parts.items()})
    return long, metrics


def _windows(params: FeatureParams) -> dict[str, int]:
    ap = params.account
    return {
        "recent": ap.usage_recent_days,
        "trend": ap.usage_recent_days + ap.usage_previous_days,
        "baseline": ap.usage_recent_days + ap.usage_baseline_days,
    }


def _sql_list(values: tuple[str, ...]) -> str:
    """A SQL IN-list of string literals (NULL for an empty list, which matches nothing)."""
    return ", ".join("'" + str(v).replace("'", "''") + "'" for v in values) or "NULL"


def _in_fixed_order(aggregate: str, *args: str) -> str:
    """SQL `aggregate(args)` fed each group's rows sorted by the aggregated values themselves.

    A floating-point sum (SUM, AVG, REGR_SLOPE...) depends on the order of its additions, and DuckDB's
    threads hand a group its rows in a different order from one run to the next: two builds of the
    same tables differed by ~1e-14 and a churn retrain on identical data scored differently. Sorted by
    its own arguments the order is the same every run, whatever the threads: rows that tie hold equal
    values, so which of them comes first changes nothing. Integer counts are exact in any order and do
    not need it.

    Args:
        aggregate: Aggregate function name.
        *args: Its argument expressions.

    Returns:
        The aggregate call with an ORDER BY over its arguments.
    """
    values = ", ".join(args)
    return f"{aggregate}({values} ORDER BY {values})"


def account_query(params: FeatureParams) -> str:
    """SQL computing the non-usage account features for every (active account, as_of) pair.

    Expects registered relations: subs, tickets, surveys, touches, open_opps, hist, stage_order, accts,
    dates.
    """
    ap = params.account
    high = _sql_list(ap.high_priorities)
    opp_types = _sql_list(ap.open_opportunity_types)
    renewal_types = _sql_list(ap.renewal_opportunity_types)
    horizon = float(params.labels.churn_horizon_days)
    renewal_outcomes = ",\n           ".join(
        f"SUM(CASE WHEN o.closed_at > p.start_{w}d AND o.outcome = '{outcome}' THEN 1 ELSE 0 END)"
        f" AS acct_renewals_{outcome}_{w}d"
        for w in ap.renewal_closed_windows_days
        for outcome in ("lost", "won")
    )
    renewal_window = max(ap.renewal_closed_windows_days)
    mrr_changes = ",\n       ".join(
        f"pop.mrr - COALESCE(m{w}.mrr, 0) AS acct_mrr_change_{w}d" for w in ap.mrr_change_windows_days
    )
    mrr_joins = "\n".join(
        f"""LEFT JOIN (
    SELECT s.account_id, d.as_of, {_in_fixed_order("SUM", "s.mrr")} AS mrr
    FROM subs s JOIN dates d
      ON s.start_date <= d.start_{w}d AND (s.end_date IS NULL OR s.end_date > d.start_{w}d)
    GROUP BY s.account_id, d.as_of
) m{w} ON m{w}.account_id = pop.account_id AND m{w}.as_of = pop.as_of"""
        for w in ap.mrr_change_windows_days
    )
    ticket_counts = ",\n           ".join(
        f"SUM(CASE WHEN t.opened_at > p.start_{w}d THEN 1 ELSE 0 END) AS acct_tickets_{w}d"
        for w in ap.ticket_windows_days
    )
    touch_counts = ",\n           ".join(
        f"SUM(CASE WHEN a.occurred_at > p.start_{w}d THEN 1 ELSE 0 END) AS acct_touches_{w}d"
        for w in ap.touch_windows_days
    )
    share_window = max(ap.ticket_windows_days)
    term_mean = _in_fixed_order("AVG", f"{days_between('s.start_date', 's.end_date')} / {DAYS_PER_MONTH}")
    resolution_hours = _in_fixed_order(
        "AVG",
        f"CASE WHEN t.resolved_at <= p.as_of THEN {days_between('t.opened_at', 't.resolved_at')} * 24.0 END",
    )
    high_priority_share = _in_fixed_order(
        "AVG",
        f"CASE WHEN t.opened_at > p.start_{share_window}d AND t.priority IS NOT NULL"
        f" THEN (CASE WHEN t.priority IN ({high}) THEN 1.0 ELSE 0.0 END) END",
    )
    csat_mean = _in_fixed_order("AVG", "CASE WHEN t.resolved_at <= p.as_of THEN t.csat END")
    fcr_rate = _in_fixed_order("AVG", "CASE WHEN t.resolved_at <= p.as_of THEN t.first_contact_resolved END")
    return f"""
WITH
active AS (
    SELECT s.*, d.as_of
    FROM subs s JOIN dates d ON s.start_date <= d.as_of AND (s.end_date IS NULL OR s.end_date > d.as_of)
),
ended_terms AS (
    -- Typical term of the account's subscriptions that had ended by T (their end_date is visible).
    SELECT s.account_id, d.as_of,
           ROUND({term_mean}) AS term_months
    FROM subs s JOIN dates d ON s.end_date <= d.as_of
    WHERE s.end_date > s.start_date
    GROUP BY s.account_id, d.as_of
),
active_terms AS (
    SELECT a.account_id, a.as_of, a.start_date, a.mrr, a.auto_renew,
           CASE WHEN COALESCE(a.term_months, e.term_months) >= 1
                THEN CAST(COALESCE(a.term_months, e.term_months) AS INTEGER) END AS term,
           DATE_DIFF('month', a.start_date, a.as_of) AS months_elapsed
    FROM active a LEFT JOIN ended_terms e ON e.account_id = a.account_id AND e.as_of = a.as_of
),
renewals AS (
    SELECT account_id, as_of, mrr, auto_renew, term,
           CASE WHEN term IS NULL THEN NULL
                WHEN start_date + TO_MONTHS(CAST(FLOOR(months_elapsed / term) AS INTEGER) * term) > as_of
                THEN start_date + TO_MONTHS(CAST(FLOOR(months_elapsed / term) AS INTEGER) * term)
                ELSE start_date + TO_MONTHS((CAST(FLOOR(months_elapsed / term) AS INTEGER) + 1) * term)
           END AS next_renewal
    FROM active_terms
),
renewal_counts AS (
    -- Term ends (renewal decisions) within the churn horizon: a month-to-month subscription meets
    -- about three in 90 days, an annual one at most one.
    SELECT *,
           CASE WHEN next_renewal IS NULL THEN NULL
                WHEN {days_between("as_of", "next_renewal")} > {horizon} THEN 0
                ELSE 1 + FLOOR(({horizon} - {days_between("as_of", "next_renewal")}) / (term * {DAYS_PER_MONTH}))
           END AS term_ends
    FROM renewals
),
pop AS (
    SELECT r.account_id, r.as_of,
           {_in_fixed_order("SUM", "r.mrr")} AS mrr,
           COUNT(*) AS n_active,
           {_in_fixed_order("AVG", "r.auto_renew")} AS auto_renew_share,
           MAX(r.term) AS term_months,
           MIN(r.next_renewal) AS next_renewal,
           MAX(r.term_ends) AS term_ends_in_horizon
    FROM renewal_counts r
    GROUP BY r.account_id, r.as_of
),
p AS (
    SELECT pop.account_id, d.* FROM pop JOIN dates d ON d.as_of = pop.as_of
),
first_start AS (
    SELECT s.account_id, d.as_of, MIN(s.start_date) AS first_start
    FROM subs s JOIN dates d ON s.start_date <= d.as_of
    GROUP BY s.account_id, d.as_of
),
tix AS (
    SELECT p.account_id, p.as_of,
           {ticket_counts},
           SUM(CASE WHEN t.resolved_at IS NULL OR t.resolved_at > p.as_of THEN 1 ELSE 0 END)
               AS acct_tickets_open_at_asof,
           {resolution_hours} AS acct_ticket_resolution_hours_mean,
           {high_priority_share} AS acct_tickets_high_priority_share,
           {csat_mean} AS acct_ticket_csat_mean,
           {fcr_rate} AS acct_ticket_fcr_rate
    FROM p JOIN tickets t ON t.account_id = p.account_id AND t.opened_at <= p.as_of
    GROUP BY p.account_id, p.as_of
),
sv AS (
    SELECT account_id, kind, responded_at, score,
           ROW_NUMBER() OVER (PARTITION BY account_id, kind ORDER BY responded_at, src_order) AS seq,
           LAG(score) OVER (PARTITION BY account_id, kind ORDER BY responded_at, src_order) AS prev_score
    FROM surveys WHERE score IS NOT NULL
),
surv AS (
    SELECT p.account_id, p.as_of,
           MAX_BY(CASE WHEN s.kind = 'nps' THEN s.score END, CASE WHEN s.kind = 'nps' THEN s.seq END) AS acct_nps_latest,
           MAX_BY(CASE WHEN s.kind = 'nps' THEN s.score - s.prev_score END, CASE WHEN s.kind = 'nps' THEN s.seq END)
               AS acct_nps_change,
           MIN(CASE WHEN s.kind = 'nps' THEN {days_between("s.responded_at", "p.as_of")} END) AS acct_days_since_nps,
           MAX_BY(CASE WHEN s.kind = 'csat' THEN s.score END, CASE WHEN s.kind = 'csat' THEN s.seq END)
               AS acct_csat_latest,
           MAX_BY(CASE WHEN s.kind = 'ces' THEN s.score END, CASE WHEN s.kind = 'ces' THEN s.seq END) AS acct_ces_latest
    FROM p JOIN sv s ON s.account_id = p.account_id AND s.responded_at <= p.as_of
    GROUP BY p.account_id, p.as_of
),
tch AS (
    SELECT p.account_id, p.as_of,
           {touch_counts},
           MIN({days_between("a.occurred_at", "p.as_of")}) AS acct_days_since_touch
    FROM p JOIN touches a ON a.account_id = p.account_id AND a.occurred_at <= p.as_of
    GROUP BY p.account_id, p.as_of
),
open_ro AS (
    SELECT p.account_id, p.as_of, o.opportunity_id
    FROM p JOIN open_opps o ON o.account_id = p.account_id AND o.created_at <= p.as_of
        AND (o.closed_at IS NULL OR o.closed_at > p.as_of)
    WHERE o.type IN ({opp_types})
),
open_ro_amount AS (
    SELECT r.account_id, r.as_of, r.opportunity_id,
           MAX_BY(h.amount, h.seq) AS amount
    FROM open_ro r LEFT JOIN (
        SELECT opportunity_id, changed_at, amount,
               ROW_NUMBER() OVER (PARTITION BY opportunity_id ORDER BY changed_at, src_order) AS seq
        FROM hist WHERE amount IS NOT NULL
    ) h ON h.opportunity_id = r.opportunity_id AND h.changed_at <= r.as_of
    GROUP BY r.account_id, r.as_of, r.opportunity_id
),
ropp AS (
    SELECT account_id, as_of, COUNT(*) AS acct_open_renewal_opps,
           {_in_fixed_order("SUM", "amount")} AS acct_open_renewal_amount
    FROM open_ro_amount GROUP BY account_id, as_of
),
renewal_state AS (
    -- Stage of each open renewal deal as of T (its latest history row with a stage dated <= T).
    SELECT p.account_id, p.as_of, o.opportunity_id,
           MAX_BY(h.stage, h.seq) AS stage,
           MAX(h.changed_at) AS last_change
    FROM p JOIN open_opps o ON o.account_id = p.account_id AND o.created_at <= p.as_of
        AND (o.closed_at IS NULL OR o.closed_at > p.as_of)
    LEFT JOIN (
        SELECT opportunity_id, changed_at, stage,
               ROW_NUMBER() OVER (PARTITION BY opportunity_id ORDER BY changed_at, src_order) AS seq
        FROM hist WHERE stage IS NOT NULL
    ) h ON h.opportunity_id = o.opportunity_id AND h.changed_at <= p.as_of
    WHERE o.type IN ({renewal_types})
    GROUP BY p.account_id, p.as_of, o.opportunity_id
),
ren AS (
    SELECT r.account_id, r.as_of,
           MAX(so.stage_index) AS acct_renewal_stage_index,
           MAX({days_between("r.last_change", "r.as_of")}) AS acct_renewal_days_since_update
    FROM renewal_state r LEFT JOIN stage_order so ON so.stage = r.stage
    GROUP BY r.account_id, r.as_of
),
ren_closed AS (
    -- Renewal deals decided shortly before T: a lost renewal announces a churn at the term end.
    SELECT p.account_id, p.as_of,
           {renewal_outcomes}
    FROM p JOIN open_opps o ON o.account_id = p.account_id AND o.closed_at <= p.as_of
        AND o.closed_at > p.start_{renewal_window}d
    WHERE o.type IN ({renewal_types})
    GROUP BY p.account_id, p.as_of
)
SELECT pop.account_id, pop.as_of,
       CASE WHEN ac.account_id IS NOT NULL THEN ac.industry END AS acct_industry,
       CASE WHEN ac.account_id IS NOT NULL THEN ac.segment END AS acct_segment,
       CASE WHEN ac.account_id IS NOT NULL THEN ac.region END AS acct_region,
       CASE WHEN ac.account_id IS NOT NULL THEN {days_between("ac.created_at", "pop.as_of")} END AS acct_tenure_days,
       {days_between("fs.first_start", "pop.as_of")} AS acct_subscription_tenure_days,
       pop.mrr AS acct_mrr,
       {mrr_changes},
       pop.n_active AS acct_active_subscriptions,
       pop.auto_renew_share AS acct_auto_renew_share,
       pop.term_months AS acct_term_months,
       {days_between("pop.as_of", "pop.next_renewal")} AS acct_days_to_renewal,
       pop.term_ends_in_horizon AS acct_term_ends_in_horizon,
       tix.* EXCLUDE (account_id, as_of),
       surv.* EXCLUDE (account_id, as_of),
       tch.* EXCLUDE (account_id, as_of),
       COALESCE(ropp.acct_open_renewal_opps, 0) AS acct_open_renewal_opps,
       CASE WHEN ropp.acct_open_renewal_opps > 0 THEN ropp.acct_open_renewal_amount ELSE 0 END
           AS acct_open_renewal_amount,
       ren.acct_renewal_stage_index,
       ren.acct_renewal_days_since_update,
       ren_closed.* EXCLUDE (account_id, as_of),
       ac.employees AS acct_employees,
       ac.annual_revenue AS acct_annual_revenue,
       12.0 * pop.mrr AS arr
FROM pop
{mrr_joins}
LEFT JOIN first_start fs ON fs.account_id = pop.account_id AND fs.as_of = pop.as_of
LEFT JOIN tix ON tix.account_id = pop.account_id AND tix.as_of = pop.as_of
LEFT JOIN surv ON surv.account_id = pop.account_id AND surv.as_of = pop.as_of
LEFT JOIN tch ON tch.account_id = pop.account_id AND tch.as_of = pop.as_of
LEFT JOIN ropp ON ropp.account_id = pop.account_id AND ropp.as_of = pop.as_of
LEFT JOIN ren ON ren.account_id = pop.account_id AND ren.as_of = pop.as_of
LEFT JOIN ren_closed ON ren_closed.account_id = pop.account_id AND ren_closed.as_of = pop.as_of
LEFT JOIN accts ac ON ac.account_id = pop.account_id AND ac.created_at <= pop.as_of
ORDER BY pop.as_of, pop.account_id
"""


def usage_query(params: FeatureParams) -> str:
    """SQL computing per-metric usage statistics for every (active account, as_of, metric).

    Usage is also read per 1,000 of MRR at T: the same number of active users means a healthy small
    account and a dormant large one, so the level alone mostly measures size.

    The averages and the trend slope add floating-point numbers, whose result depends on the order of
    the additions; grouped aggregates get their rows in a different order from run to run on several
    threads (the slopes of two builds of the same tables differed by ~1e-14). So each group's
    observations are collected once, sorted by (date, value), and every statistic is computed from
    that list in its order: the same bits on every build (rows that tie are equal). One sorted list
    per group costs less than one sorted aggregate per statistic (see `_in_fixed_order`).

    Expects registered relations: usage_long, population (account_id, as_of, mrr), dates.
    """
    w = _windows(params)
    recent, trend, baseline = w["recent"], w["trend"], w["baseline"]
    per_kmrr = "CASE WHEN mrr > 0 THEN 1000.0 / mrr END"
    return f"""
WITH p AS (
    SELECT pop.account_id, pop.mrr, d.* FROM population pop JOIN dates d ON d.as_of = pop.as_of
),
g AS (
    SELECT p.account_id, p.as_of, u.metric,
           LIST({{'date': u.date, 'value': u.value}} ORDER BY u.date, u.value) AS obs
    FROM p JOIN usage_long u ON u.account_id = p.account_id AND u.date <= p.as_of
        AND u.date > p.start_{max(trend, baseline)}d
    GROUP BY p.account_id, p.as_of, u.metric
),
o AS (
    SELECT g.account_id, g.as_of, g.metric, p.mrr, g.obs[-1].date AS last_date,
           list_avg([x.value FOR x IN g.obs IF x.date > p.start_{recent}d]) AS mean_recent,
           list_avg([x.value FOR x IN g.obs IF x.date > p.start_{trend}d AND x.date <= p.start_{recent}d])
               AS mean_previous,
           list_avg([x.value FOR x IN g.obs IF x.date > p.start_{baseline}d AND x.date <= p.start_{recent}d])
               AS mean_baseline,
           [{{'x': {days_between(f"p.start_{trend}d", "x.date")}, 'y': x.value}}
            FOR x IN g.obs IF x.date > p.start_{trend}d] AS trend,
           g.obs
    FROM g JOIN p ON p.account_id = g.account_id AND p.as_of = g.as_of
),
t AS (
    SELECT *,
           list_avg([x.value FOR x IN obs IF x.date = last_date]) AS mean_last,
           list_avg([q.x FOR q IN trend]) AS x_mean,
           list_avg([q.y FOR q IN trend]) AS y_mean,
           {per_kmrr} AS per_kmrr
    FROM o
)
SELECT account_id, as_of, metric, mean_recent, mean_previous, mean_baseline,
       -- least squares from centred sums: raw sums of x*y lose digits to cancellation
       list_sum([(q.x - x_mean) * (q.y - y_mean) FOR q IN trend])
           / list_sum([(q.x - x_mean) * (q.x - x_mean) FOR q IN trend]) AS slope,
       {days_between("last_date", "as_of")} AS days_since,
       mean_recent * per_kmrr AS recent_per_kmrr,
       mean_previous * per_kmrr AS previous_per_kmrr,
       mean_last * per_kmrr AS last_per_kmrr
FROM t
"""


def _usage_stat_suffixes(params: FeatureParams) -> dict[str, str]:
    """Per-metric statistic -> feature-name suffix (`acct_usage_<metric>_<suffix>`), in column order."""
    ap = params.account
    w = _windows(params)
    return {
        "mean_recent": f"mean_{ap.usage_recent_days}d",
        "mean_previous": f"mean_prev{ap.usage_previous_days}d",
        "trend": f"trend_{w['trend']}d",
        "slope": f"slope_{w['trend']}d",
        "drop": "drop_vs_baseline",
        "recent_per_kmrr": f"per_kmrr_{ap.usage_recent_days}d",
        "previous_per_kmrr": f"per_kmrr_prev{ap.usage_previous_days}d",
        "last_per_kmrr": "last_per_kmrr",
        "per_user": f"per_user_{ap.usage_recent_days}d",
    }


def _usage_wide(long_stats: pd.DataFrame, metrics: list[str], params: FeatureParams) -> pd.DataFrame:
    ap = params.account
    stats = long_stats.copy()
    ratio_ok = stats["mean_previous"] > 0
    stats["trend"] = (stats["mean_recent"] / stats["mean_previous"] - 1.0).where(ratio_ok)
    base_ok = stats["mean_baseline"] > 0
    stats["drop"] = (1.0 - stats["mean_recent"] / stats["mean_baseline"]).where(base_ok)
    # Intensity per user (events per active user...): how much each user does, whatever the size.
    users = stats.loc[stats["metric"] == ap.usage_users_metric, ["account_id", "as_of", "mean_recent"]]
    users = stats[["account_id", "as_of"]].merge(users, on=["account_id", "as_of"], how="left")["mean_recent"]
    users_ok = (users.to_numpy() > 0) & (stats["metric"] != ap.usage_users_metric).to_numpy()
    stats["per_user"] = (stats["mean_recent"] / users.to_numpy()).where(users_ok)
    names = _usage_stat_suffixes(params)
    wide = stats.pivot(index=["account_id", "as_of"], columns="metric", values=list(names))
    columns = {}
    for metric in metrics:
        for stat, suffix in names.items():
            key = (stat, metric)
            columns[f"acct_usage_{metric}_{suffix}"] = wide[key] if key in wide.columns else float("nan")
    out = pd.DataFrame(columns, index=wide.index)
    out["acct_usage_days_since_last"] = stats.groupby(["account_id", "as_of"])["days_since"].min()
    return out.reset_index()


# Up to this many usage statistics rows, the per-metric columns are laid out by `_usage_columns`
# (numpy, one pass) instead of pandas' pivot + merge, whose fixed cost dominates a one-account build.
SMALL_USAGE_STATS = 20_000
# Up to this many rows the final order is checked in Python before (only if needed) sorting.
SMALL_SORT_CHECK = 256


def _usage_columns(
    keys: tuple[np.ndarray, np.ndarray],
    stats: Mapping[str, np.ndarray],
    metrics: list[str],
    params: FeatureParams,
) -> dict[str, np.ndarray]:
    """The usage features of `_usage_wide`, merged onto the rows `keys`, computed with numpy.

    Gives exactly what `base.merge(_usage_wide(stats, ...), on=["account_id", "as_of"], how="left")`
    adds to `base` (same arithmetic on the same float64 values; NaN where a row has no statistics).

    Args:
        keys: The population rows' account_id and as_of arrays (unique pairs).
        stats: `usage_query`'s columns (canonical arrays).
        metrics: Metric names in column order.
        params: Feature parameters.

    Returns:
        Feature name -> float64 array aligned with `keys`, in `_usage_wide`'s column order.
    """
    ap = params.account
    row_of = {key: i for i, key in enumerate(zip(keys[0].tolist(), keys[1].tolist(), strict=True))}
    stat_rows = np.array(
        [row_of[key] for key in zip(stats["account_id"].tolist(), stats["as_of"].tolist(), strict=True)],
        dtype=np.intp,
    )
    metric_of = {metric: j for j, metric in enumerate(metrics)}
    stat_metrics = stats["metric"]
    stat_cols = np.array([metric_of.get(metric, -1) for metric in stat_metrics.tolist()], dtype=np.intp)
    recent, previous, baseline = stats["mean_recent"], stats["mean_previous"], stats["mean_baseline"]
    is_users = stat_metrics == ap.usage_users_metric
    # The users metric's recent mean of each statistics row's (account, as_of), NaN when there is none.
    users_by_row = np.full(len(keys[0]), np.nan)
    users_by_row[stat_rows[is_users]] = recent[is_users]
    users = users_by_row[stat_rows]
    with np.errstate(divide="ignore", invalid="ignore"):
        values = {
            "mean_recent": recent,
            "mean_previous": previous,
            "trend": np.where(previous > 0, recent / previous - 1.0, np.nan),
            "slope": stats["slope"],
            "drop": np.where(baseline > 0, 1.0 - recent / baseline, np.nan),
            "recent_per_kmrr": stats["recent_per_kmrr"],
            "previous_per_kmrr": stats["previous_per_kmrr"],
            "last_per_kmrr": stats["last_per_kmrr"],
            "per_user": np.where((users > 0) & ~is_users, recent / users, np.nan),
        }
    known = stat_cols >= 0
    out: dict[str, np.ndarray] = {}
    for j, metric in enumerate(metrics):
        in_metric = known & (stat_cols == j)
        for stat, suffix in _usage_stat_suffixes(params).items():
            column = np.full(len(keys[0]), np.nan)
            column[stat_rows[in_metric]] = values[stat][in_metric]
            out[f"acct_usage_{metric}_{suffix}"] = column
    days_since = np.full(len(keys[0]), np.nan)
    np.fmin.at(days_since, stat_rows, stats["days_since"])  # NaN-skipping minimum per row
    out["acct_usage_days_since_last"] = days_since
    return out


def account_frames(
    tables: dict[str, pd.DataFrame], as_of: AsOfArg, params: FeatureParams
) -> dict[str, pd.DataFrame]:
    """The relations `account_query` reads, shaped from canonical tables.

    Args:
        tables: Canonical tables (as for `build_account_features`).
        as_of: One as-of date or a sequence.
        params: Feature parameters.

    Returns:
        Relation name -> frame: subs, tickets, surveys, touches, open_opps, hist, stage_order, accts,
        dates (whose window columns also serve `usage_query`).
    """
    ap = params.account
    windows = _windows(params)
    dates = dates_frame(
        as_of,
        {
            *ap.mrr_change_windows_days,
            *ap.ticket_windows_days,
            *ap.touch_windows_days,
            *ap.renewal_closed_windows_days,
            *windows.values(),
            max(windows["trend"], windows["baseline"]),
        },
    )
    surveys = shaped_table(tables, "surveys", SURVEY_COLUMNS)
    surveys["src_order"] = range(len(surveys))
    history = shaped_table(tables, "opportunity_history", HISTORY_COLUMNS)
    history["src_order"] = range(len(history))
    stage_order = pd.DataFrame(
        {"stage": list(params.stage_order), "stage_index": [float(i) for i in range(len(params.stage_order))]}
    )
    return {
        "subs": shaped_table(tables, "subscriptions", SUBSCRIPTION_COLUMNS),
        "tickets": shaped_table(tables, "tickets", TICKET_COLUMNS),
        "surveys": surveys,
        "touches": shaped_table(tables, "activities", TOUCH_COLUMNS),
        "open_opps": shaped_table(tables, "opportunities", OPEN_OPP_COLUMNS),
        "hist": history,
        "stage_order": stage_order,
        "accts": shaped_table(tables, "accounts", ACCOUNT_COLUMNS),
        "dates": dates,
    }


def build_account_features(
    tables: dict[str, pd.DataFrame],
    as_of: AsOfArg,
    params: FeatureParams | None = None,
) -> pd.DataFrame:
    """Features of every account with an active subscription at each as-of date.

    Args:
        tables: Canonical tables; needs `subscriptions`, uses accounts, usage, tickets, surveys,
            activities, opportunities and opportunity_history when present.
        as_of: One as-of date or a sequence (computed together).
        params: Feature parameters; None loads features/params.yaml.

    Returns:
        One row per (account_id, as_of), sorted by as_of then account_id: account_id, as_of, the
        acct_* features (str categoricals or float64), per-metric `acct_usage_<metric>_*` features
        for every numeric usage column, and `arr` (12 x MRR at as_of; a value column, not a feature).
    """
    params = params or load_params()
    if "subscriptions" not in tables:
        raise KeyError("build_account_features needs the 'subscriptions' table")
    ap = params.account
    frames = account_frames(tables, as_of, params)
    dates = frames["dates"]
    long, metrics = usage_long(tables)
    usage_stats = None
    with registered(frames) as con:
        columns = fetch_canonical(con.execute(account_query(params)), ["account_id", *CATEGORICAL_OUTPUT])
    # An account without tickets, touches or decided renewals has zero of them, not an unknown count.
    count_columns = [f"acct_tickets_{w}d" for w in ap.ticket_windows_days] + ["acct_tickets_open_at_asof"]
    count_columns += [f"acct_touches_{w}d" for w in ap.touch_windows_days]
    count_columns += [
        f"acct_renewals_{outcome}_{w}d" for w in ap.renewal_closed_windows_days for outcome in ("lost", "won")
    ]
    for name in count_columns:
        columns[name] = np.where(np.isnan(columns[name]), 0.0, columns[name])
    usage_stats = None
    if metrics:
        population = pd.DataFrame(
            {"account_id": columns["account_id"], "as_of": columns["as_of"], "mrr": columns["acct_mrr"]}
        )
        usage_frames = {"usage_long": long, "population": population, "dates": dates}
        with registered(usage_frames) as con:
            usage_stats = fetch_canonical(con.execute(usage_query(params)), ["account_id", "metric"])
    if usage_stats is not None and len(usage_stats["metric"]) <= SMALL_USAGE_STATS:
        arr = columns.pop("arr")
        columns.update(
            _usage_columns((columns["account_id"], columns["as_of"]), usage_stats, metrics, params)
        )
        columns["arr"] = arr
        return _sorted_by_as_of_and_account(canonical_frame(columns))
    base = canonical_frame(columns)
    if usage_stats is not None:
        stats = canonical_frame(usage_stats)
        stats["as_of"] = pd.to_datetime(stats["as_of"]).astype("datetime64[ns]")
        wide = _usage_wide(stats, metrics, params)
        base = base.merge(wide, on=["account_id", "as_of"], how="left")
    value = base.pop("arr")
    base["arr"] = value
    return _sorted_by_as_of_and_account(base)


def _sorted_by_as_of_and_account(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` sorted by as_of then account_id, with a fresh RangeIndex.

    The query already returns that order; checking it on a few rows is cheaper than pandas' sort,
    and when it holds the (stable) sort would change nothing.
    """
    if len(frame) <= SMALL_SORT_CHECK:
        keys = list(zip(frame["as_of"].tolist(), frame["account_id"].tolist(), strict=True))
        if all(isinstance(account, str) for _, account in keys) and all(
            earlier <= later for earlier, later in zip(keys, keys[1:], strict=False)
        ):
            return frame.reset_index(drop=True)
    return frame.sort_values(["as_of", "account_id"]).reset_index(drop=True)
