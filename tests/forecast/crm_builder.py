"""Small hand-made canonical CRM tables for the forecast tests (canonical dtypes, see ARCHITECTURE.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

STAGES = ("qualification", "proposal", "negotiation")


def make_crm(
    seed: int = 0,
    start: str = "2023-01-01",
    end: str = "2025-10-15",
    deals_per_month: int = 60,
    n_reps: int = 8,
) -> dict[str, pd.DataFrame]:
    """Build a small CRM with stage history, reps (team, region), monthly quotas and subscriptions.

    Deals advance qualification -> proposal -> negotiation and close won (about 35 %) or lost after a
    log-normal cycle; won amounts are the quoted amount +-10 %. Deals closing after ``end`` are open at
    the export date (no outcome). Returns canonical tables.
    """
    rng = np.random.default_rng(seed)
    t0, t1 = pd.Timestamp(start), pd.Timestamp(end)
    n_months = (t1.year - t0.year) * 12 + t1.month - t0.month + 1
    n = deals_per_month * n_months
    created = t0 + pd.to_timedelta(rng.uniform(0, (t1 - t0).days, n), unit="D")
    created = created.floor("D")
    cycle = np.exp(rng.normal(np.log(50), 0.6, n))
    won = rng.random(n) < 0.35
    closed = created + pd.to_timedelta(np.round(cycle), unit="D")
    amount0 = np.round(np.exp(rng.normal(np.log(20000), 0.7, n)), -2)
    won_amount = np.where(won, np.round(amount0 * rng.uniform(0.9, 1.1, n), 2), np.nan)
    reps = [f"r-{i}" for i in range(n_reps)]
    owner = rng.choice(reps, n)
    ids = [f"o-{i}" for i in range(n)]
    accounts = [f"a-{i % 150}" for i in range(n)]
    is_open = closed > t1

    hist_rows = []
    final_stage = []
    for i in range(n):
        # Losers drop out at a random stage; winners pass all three.
        reached = 3 if won[i] else rng.integers(1, 4)
        for s in range(reached):
            changed = created[i] + pd.Timedelta(days=round(cycle[i] * s / 3))
            if changed > t1:
                break
            hist_rows.append(
                (ids[i], changed, STAGES[s], float(amount0[i]), created[i] + pd.Timedelta(days=45 + 15 * s))
            )
            stage_now = STAGES[s]
        if not is_open[i]:
            hist_rows.append((ids[i], closed[i], "won" if won[i] else "lost", float(amount0[i]), closed[i]))
            stage_now = "won" if won[i] else "lost"
        final_stage.append(stage_now)
    history = pd.DataFrame(
        hist_rows, columns=["opportunity_id", "changed_at", "stage", "amount", "expected_close_date"]
    )
    opportunities = pd.DataFrame(
        {
            "opportunity_id": ids,
            "account_id": accounts,
            "created_at": created,
            "owner_id": owner,
            "product": rng.choice(["basic", "pro"], n),
            "type": rng.choice(["new", "renewal", "expansion"], n, p=[0.7, 0.2, 0.1]),
            "lead_source": "web",
            "amount": amount0.astype(float),
            "expected_close_date": created + pd.Timedelta(days=45),
            "stage": final_stage,
            "closed_at": pd.Series(closed).where(~is_open, pd.NaT).to_numpy(),
            "outcome": np.where(is_open, None, np.where(won, "won", "lost")).astype(object),
            "won_amount": np.where(is_open, np.nan, won_amount),
        }
    )
    opportunities.loc[opportunities["outcome"].isna(), "outcome"] = None
    reps_table = pd.DataFrame(
        {
            "rep_id": reps,
            "manager_id": None,
            "team": [f"team-{i % 3}" for i in range(n_reps)],
            "region": [("emea" if i % 2 else "amer") for i in range(n_reps)],
            "hired_at": pd.Timestamp("2020-01-01"),
        }
    )
    months = pd.date_range(t0, t1 + pd.offsets.MonthBegin(6), freq="MS")
    quotas = pd.DataFrame(
        [(r, m, m + pd.offsets.MonthEnd(0), 60000.0) for r in reps for m in months],
        columns=["rep_id", "period_start", "period_end", "amount"],
    )
    account_ids = sorted(set(accounts))
    accounts_table = pd.DataFrame(
        {
            "account_id": account_ids,
            "created_at": pd.Timestamp("2022-01-01"),
            "owner_id": [reps[i % n_reps] for i in range(len(account_ids))],
        }
    )
    sub_start = pd.Timestamp("2022-06-01") + pd.to_timedelta(rng.integers(0, 700, len(account_ids)), unit="D")
    sub_end = sub_start + pd.to_timedelta(rng.integers(200, 1500, len(account_ids)), unit="D")
    subscriptions = pd.DataFrame(
        {
            "subscription_id": [f"s-{i}" for i in range(len(account_ids))],
            "account_id": account_ids,
            "start_date": sub_start,
            "mrr": rng.uniform(500, 3000, len(account_ids)).round(2),
            "end_date": pd.Series(sub_end).where(sub_end <= t1, pd.NaT).to_numpy(),
            "auto_renew": (rng.random(len(account_ids)) < 0.3).astype(float),
        }
    )
    for table in (opportunities, history, reps_table, accounts_table, subscriptions):
        for column in table.columns:
            if column.endswith("_id"):
                table[column] = table[column].astype(object)
    return {
        "opportunities": opportunities,
        "opportunity_history": history,
        "reps": reps_table,
        "quotas": quotas,
        "accounts": accounts_table,
        "subscriptions": subscriptions,
    }
