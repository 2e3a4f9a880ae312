"""Measurements that calibrate the generator: how good the oracles are, churn base rate, revenue.

These are pure functions of canonical tables (as returned by `features.data.load_tables`) and the
generator's truth/ tables. They are how the defaults in `features.generate.params` were chosen and
how the tests check that the data keeps the promised properties.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from features.generate.params import STAGES


def read_truth(directory: str | Path) -> dict[str, pd.DataFrame]:
    """Read `<directory>/truth/*.csv` with timestamps parsed."""
    truth_dir = Path(directory) / "truth"
    opportunities = pd.read_csv(truth_dir / "opportunities.csv", parse_dates=["simulated_closed_at"])
    churn = pd.read_csv(truth_dir / "accounts_churn.csv", parse_dates=["period_start"])
    return {"opportunities": opportunities, "accounts_churn": churn}


def win_snapshots(
    tables: dict[str, pd.DataFrame], truth: dict[str, pd.DataFrame], weeks: int = 52
) -> pd.DataFrame:
    """Weekly snapshots of open deals over the last `weeks` weeks with the oracle and the outcome.

    A deal is in the snapshot at T when created_at <= T and it closed after T; only deals whose
    outcome is known by the export are kept (deals still open at the export have no label).

    Returns:
        One row per (opportunity_id, as_of): stage at T (from history), ``p_oracle`` (truth
        probability of winning from that stage) and ``label_won``.
    """
    opportunities = tables["opportunities"]
    history = tables["opportunity_history"]
    export = max(opportunities["created_at"].max(), history["changed_at"].max()).normalize()
    dates = pd.DatetimeIndex([export - pd.Timedelta(days=7 * k) for k in range(weeks, 0, -1)])
    closed = opportunities[opportunities["outcome"].notna()]
    pairs = closed[["opportunity_id", "created_at", "closed_at", "outcome"]].merge(
        pd.DataFrame({"as_of": dates}), how="cross"
    )
    pairs = pairs[(pairs["created_at"] <= pairs["as_of"]) & (pairs["closed_at"] > pairs["as_of"])]
    pairs = pairs.sort_values("as_of", kind="stable")
    stages = history[["opportunity_id", "changed_at", "stage"]].sort_values("changed_at", kind="stable")
    snap = pd.merge_asof(
        pairs, stages, left_on="as_of", right_on="changed_at", by="opportunity_id", direction="backward"
    )
    snap = snap[snap["stage"].isin(STAGES)]
    oracle = truth["opportunities"].set_index("opportunity_id")
    p_by_stage = oracle[[f"p_win_from_{stage}" for stage in STAGES]].to_numpy()
    row = oracle.index.get_indexer(snap["opportunity_id"])
    column = snap["stage"].map({stage: i for i, stage in enumerate(STAGES)}).to_numpy()
    snap = snap.assign(p_oracle=p_by_stage[row, column], label_won=(snap["outcome"] == "won").astype(int))
    return snap.reset_index(drop=True)


def churn_labels(
    subscriptions: pd.DataFrame, as_of: pd.Timestamp, horizon_days: int = 90, grace_days: int = 30
) -> pd.DataFrame:
    """Accounts active at `as_of` and their churn label per CONTRACT section 1.

    Label 1 when every subscription active at T has ended by T + horizon and no subscription of the
    account is active within `grace_days` after the last of those ends.
    """
    subs = subscriptions
    active = subs[(subs["start_date"] <= as_of) & (subs["end_date"].isna() | (subs["end_date"] > as_of))]
    last_end = active.groupby("account_id")["end_date"].agg(lambda s: pd.NaT if s.isna().any() else s.max())
    frame = last_end.rename("last_end").reset_index()
    ended = frame["last_end"].notna() & (frame["last_end"] <= as_of + pd.Timedelta(days=horizon_days))
    candidates = subs.merge(frame[ended], on="account_id")
    restarted = candidates[
        (candidates["start_date"] <= candidates["last_end"] + pd.Timedelta(days=grace_days))
        & (candidates["end_date"].isna() | (candidates["end_date"] > candidates["last_end"]))
    ]["account_id"].unique()
    label = ended & ~frame["account_id"].isin(restarted)
    return pd.DataFrame({"account_id": frame["account_id"], "as_of": as_of, "label_churn": label.astype(int)})


def churn_snapshots(
    tables: dict[str, pd.DataFrame], truth: dict[str, pd.DataFrame], months: int = 24, horizon_days: int = 90
) -> pd.DataFrame:
    """Monthly snapshots of active accounts (labels from the subscriptions table) with the oracle."""
    subs = tables["subscriptions"]
    export = (
        tables["opportunities"]["created_at"].max().normalize()
        if "opportunities" in tables
        else subs["start_date"].max()
    )
    last = (export - pd.Timedelta(days=horizon_days)).to_period("M").to_timestamp()
    dates = pd.date_range(end=last, periods=months, freq="MS")
    labels = pd.concat([churn_labels(subs, date, horizon_days) for date in dates], ignore_index=True)
    oracle = truth["accounts_churn"].rename(columns={"period_start": "as_of"})
    return labels.merge(
        oracle[["account_id", "as_of", "p_churn_90d", "label_churn_90d"]],
        on=["account_id", "as_of"],
        how="left",
    )


def quarterly_won_revenue(opportunities: pd.DataFrame) -> pd.DataFrame:
    """Won revenue and number of won deals per calendar quarter of closed_at (complete quarters)."""
    won = opportunities[opportunities["outcome"] == "won"]
    quarter = won["closed_at"].dt.to_period("Q")
    frame = won.groupby(quarter).agg(won_revenue=("won_amount", "sum"), won_deals=("won_amount", "size"))
    export = opportunities["created_at"].max()
    history_start = opportunities.loc[opportunities["type"] == "new", "created_at"].min()
    complete = frame.index.map(lambda q: q.start_time >= history_start and q.end_time < export)
    return frame[np.asarray(complete, dtype=bool)]


def revenue_regularity(quarterly: pd.DataFrame) -> dict[str, float]:
    """How forecastable quarterly revenue is: fit log revenue = trend + quarter-of-year, report residuals.

    Returns:
        ``growth_per_year`` (fitted), ``residual_sd`` (log scale), and ``in_sample_accuracy`` =
        mean(1 - |fit - actual| / actual) of that simple fit.
    """
    y = np.log(quarterly["won_revenue"].to_numpy())
    n = len(y)
    quarter_of_year = np.array([p.quarter for p in quarterly.index])
    design = np.column_stack(
        [np.ones(n), np.arange(n)] + [(quarter_of_year == q).astype(float) for q in (2, 3, 4)]
    )
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    fit = design @ coef
    actual = np.exp(y)
    return {
        "growth_per_year": float(np.exp(4 * coef[1]) - 1),
        "residual_sd": float(np.std(y - fit, ddof=design.shape[1]) if n > design.shape[1] else np.nan),
        "in_sample_accuracy": float(np.mean(1 - np.abs(np.exp(fit) - actual) / actual)),
    }


def calibration_report(tables: dict[str, pd.DataFrame], truth: dict[str, pd.DataFrame]) -> dict[str, float]:
    """All calibration figures in one dictionary (see the functions above)."""
    win = win_snapshots(tables, truth)
    churn = churn_snapshots(tables, truth)
    quarterly = quarterly_won_revenue(tables["opportunities"])
    matched = churn["p_churn_90d"].notna()
    report = {
        "win_snapshots": float(len(win)),
        "win_rate_snapshots": float(win["label_won"].mean()),
        "oracle_win_auc": float(roc_auc_score(win["label_won"], win["p_oracle"])),
        "churn_snapshots": float(len(churn)),
        "churn_base_rate": float(churn["label_churn"].mean()),
        "churn_oracle_mean": float(churn.loc[matched, "p_churn_90d"].mean()),
        "churn_truth_matched_share": float(matched.mean()),
        "churn_label_agreement": float(
            (churn.loc[matched, "label_churn"] == churn.loc[matched, "label_churn_90d"]).mean()
        ),
        "oracle_churn_auc": float(
            roc_auc_score(churn.loc[matched, "label_churn"], churn.loc[matched, "p_churn_90d"])
        ),
        "won_deals_per_quarter": float(quarterly["won_deals"].mean()),
        "won_revenue_per_quarter": float(quarterly["won_revenue"].mean()),
    }
    report.update(revenue_regularity(quarterly))
    return report
