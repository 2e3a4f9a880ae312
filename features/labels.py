"""Labels of as-of snapshots: deal won (win/amount models) and account churned (churn model).

Labels read only what happens strictly after the as-of date T (closes, outcomes, subscription ends
and starts), plus the population at T. A label that cannot be observed yet at the export date (the
latest timestamp in the data) is flagged `label_observed = False` with a NaN label, never called 0.
"""

from __future__ import annotations

import pandas as pd

from features.sql import connect, shaped_table

# Event-time columns that bound the export date. Planned dates are deliberately absent because
# they may lie in the future: expected_close_date, quota periods, and subscription end_date (some
# exports write the scheduled end of the current billing term).
EVENT_TIME_COLUMNS = {
    "accounts": ["created_at"],
    "opportunities": ["created_at", "closed_at"],
    "opportunity_history": ["changed_at"],
    "activities": ["occurred_at"],
    "subscriptions": ["start_date"],
    "usage": ["date"],
    "tickets": ["opened_at", "resolved_at"],
    "surveys": ["responded_at"],
}


def data_export_date(tables: dict[str, pd.DataFrame]) -> pd.Timestamp:
    """The export date of a dataset: the latest event timestamp in any table.

    Args:
        tables: Canonical tables.

    Returns:
        The latest timestamp (timezone-naive UTC).

    Raises:
        ValueError: no table has any timestamp.
    """
    latest = []
    for name, columns in EVENT_TIME_COLUMNS.items():
        frame = tables.get(name)
        if frame is None:
            continue
        for col in columns:
            if col in frame.columns and frame[col].notna().any():
                latest.append(pd.to_datetime(frame[col]).max())
    if not latest:
        raise ValueError("cannot determine the export date: no event timestamps in any table")
    return pd.Timestamp(max(latest))


def win_labels(
    tables: dict[str, pd.DataFrame],
    snapshots: pd.DataFrame,
    horizon_days: int | None = None,
    *,
    export_date: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Won / won-amount labels of (opportunity_id, as_of) snapshots.

    label_won is 1 when the deal's outcome is 'won' with closed_at after T (and at or before
    T + horizon_days when a horizon is given), 0 when it was lost after T (or, with a horizon, closed
    after T + horizon, or is still open at a T + horizon the data has reached). Deals still open at
    the export date without a decided horizon are unobserved (NaN, label_observed False), as are
    snapshots of deals already closed at T (they are not in the population).

    Args:
        tables: Canonical tables (opportunities).
        snapshots: Frame with opportunity_id and as_of (e.g. the feature frame).
        horizon_days: Optional horizon after T within which the deal must be won.
        export_date: Latest timestamp of the data; None derives it with data_export_date.

    Returns:
        opportunity_id, as_of, label_won (float 0/1/NaN), label_won_amount (won_amount when
        label_won == 1, else NaN), label_observed (bool), in the snapshots' row order.
    """
    export_date = data_export_date(tables) if export_date is None else pd.Timestamp(export_date)
    opps = shaped_table(
        tables,
        "opportunities",
        {"opportunity_id": "str", "closed_at": "ts", "outcome": "lstr", "won_amount": "num"},
    ).drop_duplicates("opportunity_id")
    snap = snapshots[["opportunity_id", "as_of"]].copy()
    snap["as_of"] = pd.to_datetime(snap["as_of"]).astype("datetime64[ns]")
    merged = snap.merge(opps, on="opportunity_id", how="left", validate="many_to_one")
    after = merged["closed_at"] > merged["as_of"]
    decided = after & merged["outcome"].isin(["won", "lost"])
    won = decided & (merged["outcome"] == "won")
    if horizon_days is None:
        observed = decided
        label = won.astype("float64")
    else:
        horizon_end = merged["as_of"] + pd.Timedelta(days=int(horizon_days))
        within = merged["closed_at"] <= horizon_end
        open_at_as_of = merged["closed_at"].isna() | after
        closed_after_horizon = merged["closed_at"] > horizon_end
        still_open_past_horizon = merged["closed_at"].isna() & (export_date >= horizon_end)
        observed = (decided & within) | (open_at_as_of & (closed_after_horizon | still_open_past_horizon))
        label = (won & within).astype("float64")
    label = label.where(observed)
    amount = merged["won_amount"].where(label == 1.0)
    return pd.DataFrame(
        {
            "opportunity_id": merged["opportunity_id"],
            "as_of": merged["as_of"],
            "label_won": label.astype("float64"),
            "label_won_amount": amount.astype("float64"),
            "label_observed": observed.astype(bool),
        }
    )


def churn_labels(
    tables: dict[str, pd.DataFrame],
    snapshots: pd.DataFrame,
    horizon_days: int = 90,
    grace_days: int = 30,
    *,
    export_date: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Churn labels of (account_id, as_of) snapshots per CONTRACT §1.

    Churned (1): every subscription active at T has ended by T + horizon_days and no subscription
    of the account started after T and within grace_days after the last of them ended. Not churned
    (0): some active subscription is still running after T + horizon, or a subscription started in
    that window. Unobserved (NaN, label_observed False): no subscription active at T, or
    T + horizon + grace is after the export date (the outcome is not known yet).

    Args:
        tables: Canonical tables (subscriptions).
        snapshots: Frame with account_id and as_of.
        horizon_days: Churn horizon after T.
        grace_days: Grace period after the last end within which a new start means "renewed late".
        export_date: Latest timestamp of the data; None derives it with data_export_date.

    Returns:
        account_id, as_of, label_churn (float 0/1/NaN), label_observed (bool), in snapshot row order.
    """
    export_date = data_export_date(tables) if export_date is None else pd.Timestamp(export_date)
    subs = shaped_table(tables, "subscriptions", {"account_id": "str", "start_date": "ts", "end_date": "ts"})
    snap = snapshots[["account_id", "as_of"]].copy()
    snap["as_of"] = pd.to_datetime(snap["as_of"]).astype("datetime64[ns]")
    keys = snap.drop_duplicates().reset_index(drop=True)
    keys["horizon_end"] = keys["as_of"] + pd.Timedelta(days=int(horizon_days))
    con = connect()
    try:
        con.register("snap", keys)
        con.register("subs", subs)
        result = con.execute(
            f"""
WITH act AS (
    SELECT s.account_id, s.as_of, s.horizon_end,
           COUNT(x.account_id) AS n_active,
           SUM(CASE WHEN x.account_id IS NOT NULL AND (x.end_date IS NULL OR x.end_date > s.horizon_end)
                    THEN 1 ELSE 0 END) AS n_surviving,
           MAX(x.end_date) AS last_end
    FROM snap s LEFT JOIN subs x ON x.account_id = s.account_id AND x.start_date <= s.as_of
        AND (x.end_date IS NULL OR x.end_date > s.as_of)
    GROUP BY s.account_id, s.as_of, s.horizon_end
),
restarts AS (
    SELECT a.account_id, a.as_of, COUNT(*) AS n_restart
    FROM act a JOIN subs x ON x.account_id = a.account_id AND x.start_date > a.as_of
        AND x.start_date <= a.last_end + INTERVAL {int(grace_days)} DAY
    GROUP BY a.account_id, a.as_of
)
SELECT a.account_id, a.as_of, a.n_active, a.n_surviving, COALESCE(r.n_restart, 0) AS n_restart
FROM act a LEFT JOIN restarts r ON r.account_id = a.account_id AND r.as_of = a.as_of
"""
        ).df()
    finally:
        con.close()
    result["as_of"] = pd.to_datetime(result["as_of"]).astype("datetime64[ns]")
    churned = (result["n_surviving"] == 0) & (result["n_restart"] == 0)
    known_by = result["as_of"] + pd.Timedelta(days=int(horizon_days) + int(grace_days))
    observed = (result["n_active"] > 0) & (known_by <= export_date)
    result["label_churn"] = churned.astype("float64").where(observed)
    result["label_observed"] = observed.astype(bool)
    out = snap.merge(
        result[["account_id", "as_of", "label_churn", "label_observed"]],
        on=["account_id", "as_of"],
        how="left",
    )
    out["label_observed"] = out["label_observed"].fillna(False).astype(bool)
    return out.reset_index(drop=True)
