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
    return out


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
        out[col] = frame[col]
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
