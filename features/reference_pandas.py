"""Straightforward pandas implementation of the opportunity features (one as-of date at a time).

This is the correctness cross-check of the DuckDB pipeline (tests compare both on the same data) and
the baseline of benchmarks/features.py. It filters every table to rows visible at T, then uses
ordinary groupby operations: the obvious way to write as-of features in pandas. It is not used by
any product path.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.opportunity import (
    ACCOUNT_COLUMNS,
    ACTIVITY_COLUMNS,
    CATEGORICAL_OUTPUT,
    OPPORTUNITY_COLUMNS,
    history_with_current_state,
    plural,
    reply_rate_prior,
)
from features.params import FeatureParams, load_params
from features.sql import AsOfArg, shaped_table, to_timestamps

DAY = pd.Timedelta(days=1)


def _days(start: pd.Series, end: pd.Series | pd.Timestamp) -> pd.Series:
    return (end - start) / DAY


def _smoothed(
    n_won: pd.Series, n_closed: pd.Series, global_won: float, global_closed: float, strength: float
) -> pd.Series:
    if global_closed <= 0:
        return pd.Series(np.nan, index=n_won.index)
    prior = global_won / global_closed
    return (n_won.fillna(0) + strength * prior) / (n_closed.fillna(0) + strength)


def _history_state(history: pd.DataFrame, as_of: pd.Timestamp, stage_index: dict[str, float]) -> pd.DataFrame:
    visible = history[history["changed_at"] <= as_of].sort_values(
        ["opportunity_id", "changed_at", "src_order"], kind="mergesort"
    )
    out = pd.DataFrame(index=pd.Index(visible["opportunity_id"].unique(), name="opportunity_id"))
    stages = visible[visible["stage"].notna()].copy()
    stages["idx"] = stages["stage"].map(stage_index).astype("float64")
    grouped = stages.groupby("opportunity_id", sort=False)
    stages["prev"] = grouped["stage"].shift()
    stages["prev_idx"] = grouped["idx"].shift()
    stages["entry"] = stages["prev"].isna() | (stages["stage"] != stages["prev"])
    stages["change"] = stages["prev"].notna() & (stages["stage"] != stages["prev"])
    stages["regression"] = stages["idx"] < stages["prev_idx"]
    last = stages.groupby("opportunity_id").tail(1).set_index("opportunity_id")
    out["opp_stage"] = last["stage"]
    out["opp_stage_index"] = last["idx"]
    out["stage_entered_at"] = stages[stages["entry"]].groupby("opportunity_id")["changed_at"].max()
    out["opp_stage_changes"] = stages.groupby("opportunity_id")["change"].sum()
    out["opp_stage_regressions"] = stages.groupby("opportunity_id")["regression"].sum()
    amounts = visible[visible["amount"].notna()].copy()
    amounts["prev"] = amounts.groupby("opportunity_id", sort=False)["amount"].shift()
    amounts["revision"] = amounts["prev"].notna() & (amounts["amount"] != amounts["prev"])
    by_opp = amounts.groupby("opportunity_id")
    out["opp_amount"] = by_opp["amount"].last()
    out["opp_amount_first"] = by_opp["amount"].first()
    out["opp_amount_revisions"] = by_opp["revision"].sum()
    closes = visible[visible["expected_close_date"].notna()].copy()
    closes["prev"] = closes.groupby("opportunity_id", sort=False)["expected_close_date"].shift()
    closes["slip"] = closes["expected_close_date"] > closes["prev"]
    closes["slip_days"] = _days(closes["prev"], closes["expected_close_date"]).where(closes["slip"], 0.0)
    by_opp = closes.groupby("opportunity_id")
    out["close_date"] = by_opp["expected_close_date"].last()
    out["opp_close_date_slips"] = by_opp["slip"].sum()
    out["opp_close_date_days_slipped"] = by_opp["slip_days"].sum()
    has_any = visible[visible[["stage", "amount", "expected_close_date"]].notna().any(axis=1)]
    out["n_history"] = has_any.groupby("opportunity_id").size()
    return out


def _activity_features(acts: pd.DataFrame, as_of: pd.Timestamp, params: FeatureParams) -> pd.DataFrame:
    visible = acts[acts["opportunity_id"].notna() & (acts["occurred_at"] <= as_of)]
    grouped = visible.groupby("opportunity_id")
    out = pd.DataFrame(index=pd.Index(visible["opportunity_id"].unique(), name="opportunity_id"))
    windows = sorted(set(params.activity_windows_days))
    for activity_type in params.activity_types:
        for window in windows:
            hit = (visible["type"] == activity_type) & (
                visible["occurred_at"] > as_of - pd.Timedelta(days=window)
            )
            out[f"opp_{plural(activity_type)}_{window}d"] = hit.groupby(visible["opportunity_id"]).sum()
    for window in windows:
        hit = visible["occurred_at"] > as_of - pd.Timedelta(days=window)
        out[f"opp_activities_{window}d"] = hit.groupby(visible["opportunity_id"]).sum()
    out["opp_activities_total"] = grouped.size()
    out["opp_days_since_activity"] = _days(grouped["occurred_at"].max(), as_of)
    meetings = visible[visible["type"] == "meeting"]
    out["opp_days_since_meeting"] = _days(meetings.groupby("opportunity_id")["occurred_at"].max(), as_of)
    out["opp_reply_rate"] = grouped["replied"].mean()
    inbound = (visible["direction"] == "inbound").astype(float).where(visible["direction"].notna())
    out["opp_inbound_share"] = inbound.groupby(visible["opportunity_id"]).mean()
    out["n_replied"] = grouped["replied"].sum()
    out["n_reply_known"] = grouped["replied"].count()
    for activity_type in params.activity_types:
        timed = visible[(visible["type"] == activity_type) & (visible["duration_s"] > 0)]
        out[f"opp_{plural(activity_type)}_log_duration_mean"] = (
            np.log(timed["duration_s"].astype(float)).groupby(timed["opportunity_id"]).mean()
        )
    return out


def _stage_activity_counts(acts: pd.DataFrame, frame: pd.DataFrame, as_of: pd.Timestamp) -> pd.Series:
    """Activities of each deal after it entered its current stage, up to as_of (NaN: entry unknown)."""
    entered = frame.set_index("opportunity_id")["stage_entered_at"]
    visible = acts[acts["opportunity_id"].isin(entered.index) & (acts["occurred_at"] <= as_of)]
    after = visible["occurred_at"] > visible["opportunity_id"].map(entered)
    counts = after.groupby(visible["opportunity_id"]).sum()
    result = counts.reindex(frame["opportunity_id"].values).fillna(0.0)
    result.index = frame.index
    return result.where(frame["stage_entered_at"].notna())


def _one_date(
    opps: pd.DataFrame,
    history: pd.DataFrame,
    acts: pd.DataFrame,
    accounts: pd.DataFrame,
    as_of: pd.Timestamp,
    params: FeatureParams,
) -> pd.DataFrame:
    pop = opps[(opps["created_at"] <= as_of) & ~(opps["closed_at"] <= as_of)].copy()
    pop["as_of"] = as_of
    stage_index = {stage: float(i) for i, stage in enumerate(params.stage_order)}
    state = _history_state(history, as_of, stage_index)
    act = _activity_features(acts, as_of, params)
    frame = pop.join(state, on="opportunity_id").join(act, on="opportunity_id")
    out = pd.DataFrame(
        {
            "opportunity_id": frame["opportunity_id"],
            "account_id": frame["account_id"],
            "owner_id": frame["owner_id"],
            "as_of": as_of,
            "opp_stage": frame["opp_stage"],
            "opp_type": frame["type"],
            "opp_product": frame["product"],
            "opp_lead_source": frame["lead_source"],
        }
    )
    visible_accounts = (
        accounts[accounts["created_at"] <= as_of].drop_duplicates("account_id").set_index("account_id")
    )
    acct = visible_accounts.reindex(frame["account_id"].values)
    acct.index = frame.index
    for col in ("industry", "segment", "region"):
        out[f"acct_{col}"] = acct[col]
    out["opp_age_days"] = _days(frame["created_at"], as_of)
    out["opp_days_in_stage"] = _days(frame["stage_entered_at"], as_of)
    out["opp_stage_index"] = frame["opp_stage_index"]
    out["opp_stage_changes"] = frame["opp_stage_changes"].fillna(0)
    out["opp_stage_regressions"] = frame["opp_stage_regressions"].fillna(0)
    out["opp_amount"] = frame["opp_amount"]
    out["opp_amount_first"] = frame["opp_amount_first"]
    out["opp_amount_revisions"] = frame["opp_amount_revisions"].fillna(0)
    first_ok = frame["opp_amount_first"] > 0
    out["opp_amount_change_rel"] = (
        (frame["opp_amount"] - frame["opp_amount_first"]) / frame["opp_amount_first"]
    ).where(first_ok)
    out["opp_days_to_expected_close"] = _days(pd.Series(as_of, index=frame.index), frame["close_date"])
    out["opp_close_date_slips"] = frame["opp_close_date_slips"].fillna(0)
    out["opp_close_date_days_slipped"] = frame["opp_close_date_days_slipped"].fillna(0)
    out["opp_close_date_past"] = (
        (frame["close_date"] < as_of).astype(float).where(frame["close_date"].notna())
    )
    out["opp_has_history"] = (frame["n_history"].fillna(0) > 0).astype(float)
    for col in act.columns:
        if col not in ("n_replied", "n_reply_known"):
            out[col] = frame[col]
    weeks = out["opp_age_days"] / 7.0
    n_total = frame["opp_activities_total"].fillna(0)
    out["opp_activities_per_week_log"] = np.log((n_total + 1) / (weeks + 1))
    n_stage = _stage_activity_counts(acts, frame, as_of)
    out["opp_stage_activities_per_week_log"] = np.log((n_stage + 1) / (out["opp_days_in_stage"] / 7.0 + 1))
    prior = reply_rate_prior(params)
    out["opp_reply_rate_smoothed"] = (frame["n_replied"].fillna(0) + prior["strength"] * prior["rate"]) / (
        frame["n_reply_known"].fillna(0) + prior["strength"]
    )
    out["opp_days_per_stage"] = (out["opp_age_days"] / (out["opp_stage_changes"] + 1)).where(
        frame["n_history"].fillna(0) > 0
    )
    # Track records from deals closed at or before T.
    closed = opps[(opps["closed_at"] <= as_of) & opps["outcome"].isin(["won", "lost"])].copy()
    closed["won"] = (closed["outcome"] == "won").astype(float)
    closed["won_amt"] = closed["won_amount"].fillna(0).where(closed["won"] == 1.0, 0.0)
    global_won, global_closed = closed["won"].sum(), float(len(closed))
    smoothing = params.smoothing

    def record(key: str) -> pd.DataFrame:
        grouped = closed[closed[key].notna()].groupby(key)
        stats = pd.DataFrame(
            {
                "n_closed": grouped.size(),
                "n_won": grouped["won"].sum(),
                "won_amount": grouped["won_amt"].sum(),
            }
        )
        stats = stats.reindex(frame[key].values)
        stats.index = frame.index
        return stats

    prod, src, rep, acc = record("product"), record("lead_source"), record("owner_id"), record("account_id")
    out["opp_product_win_rate_prior"] = _smoothed(
        prod["n_won"], prod["n_closed"], global_won, global_closed, smoothing.get("product", 20.0)
    )
    out["opp_lead_source_win_rate_prior"] = _smoothed(
        src["n_won"], src["n_closed"], global_won, global_closed, smoothing.get("lead_source", 20.0)
    )
    has_owner = frame["owner_id"].notna()
    has_account = frame["account_id"].notna()
    out["rep_win_rate_closed"] = _smoothed(
        rep["n_won"], rep["n_closed"], global_won, global_closed, smoothing.get("rep", 10.0)
    ).where(has_owner)
    out["rep_closed_deals_prior"] = rep["n_closed"].fillna(0).where(has_owner)
    out["rep_avg_won_amount_prior"] = (rep["won_amount"] / rep["n_won"]).where(rep["n_won"] > 0)
    out["rep_open_deals"] = frame.groupby("owner_id")["opportunity_id"].transform("size").where(has_owner)
    out["acct_won_deals_prior"] = acc["n_won"].fillna(0).where(has_account)
    out["acct_won_amount_prior"] = acc["won_amount"].fillna(0).where(has_account)
    out["acct_win_rate_closed"] = _smoothed(
        acc["n_won"], acc["n_closed"], global_won, global_closed, smoothing.get("account", 5.0)
    ).where(has_account)
    out["acct_open_deals"] = (
        frame.groupby("account_id")["opportunity_id"].transform("size").where(has_account)
    )
    out["acct_employees"] = acct["employees"]
    out["acct_annual_revenue"] = acct["annual_revenue"]
    out["acct_tenure_days"] = _days(acct["created_at"], as_of)
    return out


def reference_opportunity_features(
    tables: dict[str, pd.DataFrame],
    as_of: AsOfArg,
    params: FeatureParams | None = None,
    *,
    current_state_as_of: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Opportunity features computed date by date in pandas (same columns and values as the SQL).

    Args:
        tables: Canonical tables.
        as_of: One or many as-of dates.
        params: Feature parameters; None loads features/params.yaml.
        current_state_as_of: As in features.opportunity.build_opportunity_features.

    Returns:
        The same frame build_opportunity_features returns (up to floating-point summation order).
    """
    params = params or load_params()
    current_ts = None if current_state_as_of is None else to_timestamps(current_state_as_of)[0]
    opps = shaped_table(tables, "opportunities", OPPORTUNITY_COLUMNS)
    history = history_with_current_state(tables, current_ts)
    acts = shaped_table(tables, "activities", ACTIVITY_COLUMNS)
    accounts = shaped_table(tables, "accounts", ACCOUNT_COLUMNS)
    frames = [_one_date(opps, history, acts, accounts, ts, params) for ts in to_timestamps(as_of)]
    out = pd.concat(frames, ignore_index=True).sort_values(["as_of", "opportunity_id"], kind="mergesort")
    count_columns = [c for c in out.columns if c.startswith("opp_") and c.endswith("d") and c[-2].isdigit()]
    count_columns.append("opp_activities_total")
    out[count_columns] = out[count_columns].fillna(0)
    string_columns = {"opportunity_id", "account_id", "owner_id", *CATEGORICAL_OUTPUT}
    for col in out.columns:
        if col in string_columns:
            out[col] = out[col].astype(object).where(out[col].notna(), None)
        elif col != "as_of":
            out[col] = pd.to_numeric(out[col]).astype("float64")
    out["as_of"] = out["as_of"].astype("datetime64[ns]")
    return out.reset_index(drop=True)


def _months_between(start: pd.Series, end: pd.Timestamp) -> pd.Series:
    """Calendar-month boundaries crossed from start to end (as SQL DATE_DIFF('month', ...))."""
    return (end.year - start.dt.year) * 12 + (end.month - start.dt.month)


def _next_renewals(active: pd.DataFrame, as_of: pd.Timestamp) -> pd.Series:
    """First start_date + k * term months after as_of, per active subscription (NaT without a term)."""
    out = pd.Series(pd.NaT, index=active.index, dtype="datetime64[ns]")
    months = _months_between(active["start_date"], as_of)
    for idx, start, term, elapsed in zip(
        active.index, active["start_date"], active["term"], months, strict=True
    ):
        if pd.isna(term):
            continue
        k = int(np.floor(elapsed / term))
        candidate = start + pd.DateOffset(months=int(k * term))
        if candidate <= as_of:
            candidate = start + pd.DateOffset(months=int((k + 1) * term))
        out[idx] = candidate
    return out


def _usage_stats(
    usage: pd.DataFrame, mrr: pd.Series, as_of: pd.Timestamp, params: FeatureParams
) -> pd.DataFrame:
    ap = params.account
    recent = ap.usage_recent_days
    trend = recent + ap.usage_previous_days
    baseline = recent + ap.usage_baseline_days
    start_recent = as_of - pd.Timedelta(days=recent)
    start_trend = as_of - pd.Timedelta(days=trend)
    start_baseline = as_of - pd.Timedelta(days=baseline)
    window_start = as_of - pd.Timedelta(days=max(trend, baseline))
    rows = usage[
        usage["account_id"].isin(mrr.index) & (usage["date"] <= as_of) & (usage["date"] > window_start)
    ].copy()
    rows["x"] = _days(pd.Series(start_trend, index=rows.index), rows["date"])
    keys = ["account_id", "metric"]
    grouped = rows.groupby(keys)
    stats = pd.DataFrame(
        {
            "mean_recent": rows["value"]
            .where(rows["date"] > start_recent)
            .groupby([rows[k] for k in keys])
            .mean(),
            "mean_previous": rows["value"]
            .where((rows["date"] > start_trend) & (rows["date"] <= start_recent))
            .groupby([rows[k] for k in keys])
            .mean(),
            "mean_baseline": rows["value"]
            .where((rows["date"] > start_baseline) & (rows["date"] <= start_recent))
            .groupby([rows[k] for k in keys])
            .mean(),
            "days_since": _days(grouped["date"].max(), as_of),
        }
    )
    in_trend = rows[rows["date"] > start_trend].copy()
    g = in_trend.groupby(keys)
    in_trend["dx"] = in_trend["x"] - g["x"].transform("mean")
    in_trend["dy"] = in_trend["value"] - g["value"].transform("mean")
    in_trend["sxy"] = in_trend["dx"] * in_trend["dy"]
    in_trend["sxx"] = in_trend["dx"] ** 2
    sums = in_trend.groupby(keys)[["sxy", "sxx"]].sum()
    stats["slope"] = (sums["sxy"] / sums["sxx"]).where(sums["sxx"] > 0)
    last_date = grouped["date"].transform("max")
    stats["mean_last"] = (
        rows["value"].where(rows["date"] == last_date).groupby([rows[k] for k in keys]).mean()
    )
    account_mrr = mrr.reindex(stats.index.get_level_values("account_id")).to_numpy()
    per_kmrr = np.where(account_mrr > 0, 1000.0 / np.where(account_mrr > 0, account_mrr, 1.0), np.nan)
    stats["recent_per_kmrr"] = stats["mean_recent"] * per_kmrr
    stats["previous_per_kmrr"] = stats["mean_previous"] * per_kmrr
    stats["last_per_kmrr"] = stats.pop("mean_last") * per_kmrr
    stats = stats.reset_index()
    stats["as_of"] = as_of
    return stats


def reference_account_features(
    tables: dict[str, pd.DataFrame],
    as_of: AsOfArg,
    params: FeatureParams | None = None,
) -> pd.DataFrame:
    """Account features computed date by date in pandas (same columns and values as the SQL).

    Args:
        tables: Canonical tables.
        as_of: One or many as-of dates.
        params: Feature parameters; None loads features/params.yaml.

    Returns:
        The same frame build_account_features returns (up to floating-point summation order).
    """
    from features.account import (
        ACCOUNT_COLUMNS as ACCT_COLUMNS,
    )
    from features.account import (
        DAYS_PER_MONTH,
        HISTORY_COLUMNS,
        OPEN_OPP_COLUMNS,
        SUBSCRIPTION_COLUMNS,
        SURVEY_COLUMNS,
        TICKET_COLUMNS,
        TOUCH_COLUMNS,
        _usage_wide,
        usage_long,
    )

    params = params or load_params()
    ap = params.account
    subs = shaped_table(tables, "subscriptions", SUBSCRIPTION_COLUMNS)
    tickets = shaped_table(tables, "tickets", TICKET_COLUMNS)
    surveys = shaped_table(tables, "surveys", SURVEY_COLUMNS)
    surveys["src_order"] = range(len(surveys))
    surveys = surveys[surveys["score"].notna()].sort_values(
        ["account_id", "kind", "responded_at", "src_order"]
    )
    surveys["prev_score"] = surveys.groupby(["account_id", "kind"])["score"].shift()
    touches = shaped_table(tables, "activities", TOUCH_COLUMNS)
    open_opps = shaped_table(tables, "opportunities", OPEN_OPP_COLUMNS)
    history = shaped_table(tables, "opportunity_history", HISTORY_COLUMNS)
    history["src_order"] = range(len(history))
    history = history.sort_values(["opportunity_id", "changed_at", "src_order"])
    stage_rows = history[history["stage"].notna()]
    history = history[history["amount"].notna()]
    stage_index = {stage: float(i) for i, stage in enumerate(params.stage_order)}
    horizon = float(params.labels.churn_horizon_days)
    accounts = shaped_table(tables, "accounts", ACCT_COLUMNS)
    long, metrics = usage_long(tables)
    frames, usage_frames = [], []
    for ts in to_timestamps(as_of):
        active = subs[(subs["start_date"] <= ts) & ~(subs["end_date"] <= ts)].copy()
        if active.empty:
            continue
        ended = subs[(subs["end_date"] <= ts) & (subs["end_date"] > subs["start_date"])]
        months = _days(ended["start_date"], ended["end_date"]) / DAYS_PER_MONTH
        inferred = np.floor(months.groupby(ended["account_id"]).mean() + 0.5)
        term = active["term_months"].fillna(active["account_id"].map(inferred))
        active["term"] = term.where(term >= 1).round()
        active["next_renewal"] = _next_renewals(active, ts)
        to_renewal = _days(pd.Series(ts, index=active.index), active["next_renewal"])
        active["term_ends"] = np.where(
            to_renewal > horizon,
            0.0,
            1.0 + np.floor((horizon - to_renewal) / (active["term"] * DAYS_PER_MONTH)),
        )
        active.loc[to_renewal.isna(), "term_ends"] = np.nan
        by = active.groupby("account_id")
        out = pd.DataFrame({"acct_mrr": by["mrr"].sum(min_count=1)})
        out.index.name = "account_id"
        acct = accounts[accounts["created_at"] <= ts].drop_duplicates("account_id").set_index("account_id")
        acct = acct.reindex(out.index)
        out["as_of"] = ts
        for col in ("industry", "segment", "region"):
            out[f"acct_{col}"] = acct[col]
        out["acct_tenure_days"] = _days(acct["created_at"], ts)
        first = subs[subs["start_date"] <= ts].groupby("account_id")["start_date"].min().reindex(out.index)
        out["acct_subscription_tenure_days"] = _days(first, ts)
        out["acct_mrr"] = by["mrr"].sum(min_count=1)
        for window in ap.mrr_change_windows_days:
            then = ts - pd.Timedelta(days=window)
            past = subs[(subs["start_date"] <= then) & ~(subs["end_date"] <= then)]
            out[f"acct_mrr_change_{window}d"] = out["acct_mrr"] - past.groupby("account_id")[
                "mrr"
            ].sum().reindex(out.index).fillna(0)
        out["acct_active_subscriptions"] = by.size()
        out["acct_auto_renew_share"] = by["auto_renew"].mean()
        out["acct_term_months"] = by["term"].max()
        out["acct_days_to_renewal"] = _days(pd.Series(ts, index=out.index), by["next_renewal"].min())
        out["acct_term_ends_in_horizon"] = by["term_ends"].max()
        seen = tickets[(tickets["opened_at"] <= ts) & tickets["account_id"].isin(out.index)]
        tg = seen.groupby("account_id")
        for window in ap.ticket_windows_days:
            hit = seen["opened_at"] > ts - pd.Timedelta(days=window)
            out[f"acct_tickets_{window}d"] = (
                hit.groupby(seen["account_id"]).sum().reindex(out.index).fillna(0)
            )
        still_open = seen["resolved_at"].isna() | (seen["resolved_at"] > ts)
        out["acct_tickets_open_at_asof"] = (
            still_open.groupby(seen["account_id"]).sum().reindex(out.index).fillna(0)
        )
        resolved = seen[seen["resolved_at"] <= ts]
        rg = resolved.groupby("account_id")
        out["acct_ticket_resolution_hours_mean"] = (
            (_days(resolved["opened_at"], resolved["resolved_at"]) * 24.0)
            .groupby(resolved["account_id"])
            .mean()
        )
        share_start = ts - pd.Timedelta(days=max(ap.ticket_windows_days))
        recent = seen[(seen["opened_at"] > share_start) & seen["priority"].notna()]
        out["acct_tickets_high_priority_share"] = (
            recent["priority"].isin(ap.high_priorities).astype(float).groupby(recent["account_id"]).mean()
        )
        out["acct_ticket_csat_mean"] = rg["csat"].mean()
        out["acct_ticket_fcr_rate"] = rg["first_contact_resolved"].mean()
        del tg
        sv = surveys[(surveys["responded_at"] <= ts) & surveys["account_id"].isin(out.index)]
        latest = sv.groupby(["account_id", "kind"]).tail(1).set_index(["account_id", "kind"])
        for kind, name in (
            ("nps", "acct_nps_latest"),
            ("csat", "acct_csat_latest"),
            ("ces", "acct_ces_latest"),
        ):
            part = (
                latest.xs(kind, level="kind")
                if kind in latest.index.get_level_values("kind")
                else latest.iloc[:0]
            )
            if name == "acct_nps_latest":
                out["acct_nps_latest"] = part["score"]
                out["acct_nps_change"] = part["score"] - part["prev_score"]
                out["acct_days_since_nps"] = _days(part["responded_at"], ts)
            else:
                out[name] = part["score"]
        tc = touches[(touches["occurred_at"] <= ts) & touches["account_id"].isin(out.index)]
        for window in ap.touch_windows_days:
            hit = tc["occurred_at"] > ts - pd.Timedelta(days=window)
            out[f"acct_touches_{window}d"] = hit.groupby(tc["account_id"]).sum().reindex(out.index).fillna(0)
        out["acct_days_since_touch"] = _days(tc.groupby("account_id")["occurred_at"].max(), ts)
        ro = open_opps[
            open_opps["type"].isin(ap.open_opportunity_types)
            & (open_opps["created_at"] <= ts)
            & ~(open_opps["closed_at"] <= ts)
            & open_opps["account_id"].isin(out.index)
        ]
        amounts = history[history["changed_at"] <= ts].groupby("opportunity_id")["amount"].last()
        ro_amount = ro["opportunity_id"].map(amounts)
        out["acct_open_renewal_opps"] = ro.groupby("account_id").size().reindex(out.index).fillna(0)
        summed = ro_amount.groupby(ro["account_id"]).sum(min_count=1).reindex(out.index)
        out["acct_open_renewal_amount"] = summed.where(out["acct_open_renewal_opps"] > 0, 0.0)
        renewal_deals = open_opps[
            open_opps["type"].isin(ap.renewal_opportunity_types) & open_opps["account_id"].isin(out.index)
        ]
        open_renewals = renewal_deals[
            (renewal_deals["created_at"] <= ts) & ~(renewal_deals["closed_at"] <= ts)
        ]
        latest = stage_rows[stage_rows["changed_at"] <= ts].groupby("opportunity_id").tail(1)
        latest = latest.set_index("opportunity_id").reindex(open_renewals["opportunity_id"])
        out["acct_renewal_stage_index"] = (
            latest["stage"].map(stage_index).groupby(open_renewals["account_id"].values).max()
        )
        out["acct_renewal_days_since_update"] = (
            _days(latest["changed_at"], ts).groupby(open_renewals["account_id"].values).max()
        )
        for window in ap.renewal_closed_windows_days:
            decided = renewal_deals[
                (renewal_deals["closed_at"] <= ts)
                & (renewal_deals["closed_at"] > ts - pd.Timedelta(days=window))
            ]
            for outcome in ("lost", "won"):
                hit = decided["outcome"] == outcome
                out[f"acct_renewals_{outcome}_{window}d"] = (
                    hit.groupby(decided["account_id"]).sum().reindex(out.index).fillna(0)
                )
        out["acct_employees"] = acct["employees"]
        out["acct_annual_revenue"] = acct["annual_revenue"]
        out["arr"] = 12.0 * out["acct_mrr"]
        frames.append(out.reset_index())
        if metrics:
            usage_frames.append(_usage_stats(long, out["acct_mrr"], ts, params))
    result = pd.concat(frames, ignore_index=True)
    if metrics:
        stats = pd.concat(usage_frames, ignore_index=True)
        result = result.merge(_usage_wide(stats, metrics, params), on=["account_id", "as_of"], how="left")
    value = result.pop("arr")
    result["arr"] = value
    for col in result.columns:
        if col in {"account_id", "acct_industry", "acct_segment", "acct_region"}:
            result[col] = result[col].astype(object).where(result[col].notna(), None)
        elif col == "as_of":
            result[col] = result[col].astype("datetime64[ns]")
        else:
            result[col] = pd.to_numeric(result[col]).astype("float64")
    return result.sort_values(["as_of", "account_id"], kind="mergesort").reset_index(drop=True)
