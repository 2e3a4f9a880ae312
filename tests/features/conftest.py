"""Hand-made canonical CRM tables for the feature tests (no dependency on the loader/generator)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

STAGES = ["prospecting", "qualification", "demo", "proposal", "negotiation"]
EXPORT = pd.Timestamp("2025-12-31")


def make_random_crm(
    n_accounts: int = 40, seed: int = 0, export: pd.Timestamp = EXPORT
) -> dict[str, pd.DataFrame]:
    """A small random but coherent CRM in canonical dtypes (ids str, ns timestamps, float64 numbers).

    Covers every table: accounts, reps, quotas, opportunities (+ leakage-trap column close_reason),
    opportunity_history, activities, subscriptions (period shape, with churned_at trap), usage (with an
    extra metric `reports_run`), tickets and surveys.
    """
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2023-01-01")
    span_days = (export - start).days
    reps = pd.DataFrame({"rep_id": [f"r-{i}" for i in range(5)], "team": ["t1", "t1", "t2", "t2", "t2"]})
    quotas = pd.DataFrame(
        {
            "rep_id": ["r-0", "r-1"],
            "period_start": pd.to_datetime(["2025-01-01", "2025-01-01"]),
            "period_end": pd.to_datetime(["2025-03-31", "2025-03-31"]),
            "amount": [1e5, 2e5],
        }
    )
    accounts = pd.DataFrame(
        {
            "account_id": [f"a-{i}" for i in range(n_accounts)],
            "created_at": start + pd.to_timedelta(rng.integers(0, 200, n_accounts), unit="D"),
            "name": [f"Company {i}" for i in range(n_accounts)],
            "industry": rng.choice(["retail", "tech", "finance"], n_accounts).astype(object),
            "region": rng.choice(["emea", "amer"], n_accounts).astype(object),
            "segment": rng.choice(["smb", "mid", "ent"], n_accounts).astype(object),
            "employees": rng.integers(10, 5000, n_accounts).astype(float),
            "annual_revenue": rng.integers(1, 500, n_accounts).astype(float) * 1e5,
        }
    )
    opp_rows, hist_rows, act_rows = [], [], []
    for i in range(n_accounts * 3):
        opp_id = f"o-{i}"
        acct = f"a-{rng.integers(n_accounts)}"
        created = start + pd.Timedelta(
            days=int(rng.integers(0, span_days - 30)), hours=int(rng.integers(0, 24))
        )
        duration = int(rng.integers(10, 200))
        closed = created + pd.Timedelta(days=duration)
        outcome = rng.choice(["won", "lost"])
        if closed > export:
            closed, outcome = pd.NaT, None
        amount = float(rng.integers(5, 100) * 1000)
        stage_times = sorted(rng.integers(0, duration, int(rng.integers(0, 5))))
        stage_idx = 0
        close_date = created + pd.Timedelta(days=int(rng.integers(30, 120)))
        cur_amount = amount
        for k, offset in enumerate(stage_times):
            ts = created + pd.Timedelta(days=int(offset), hours=int(rng.integers(0, 24)))
            if ts > export:
                break
            stage_idx = max(0, min(len(STAGES) - 1, stage_idx + int(rng.choice([1, 1, 1, -1]))))
            if k > 0 and rng.random() < 0.4:
                cur_amount = cur_amount * float(rng.uniform(0.7, 1.3))
            if rng.random() < 0.3:
                close_date = close_date + pd.Timedelta(days=int(rng.integers(-10, 40)))
            hist_rows.append(
                {
                    "opportunity_id": opp_id,
                    "changed_at": ts,
                    "stage": STAGES[stage_idx] if rng.random() < 0.9 else None,
                    "amount": cur_amount if rng.random() < 0.8 else np.nan,
                    "expected_close_date": close_date,
                }
            )
        for _ in range(int(rng.integers(0, 12))):
            ts = created + pd.Timedelta(
                days=int(rng.integers(0, duration + 10)), minutes=int(rng.integers(0, 1440))
            )
            if ts > export:
                continue
            act_rows.append(
                {
                    "activity_id": f"x-{len(act_rows)}",
                    "account_id": acct,
                    "opportunity_id": opp_id if rng.random() < 0.85 else None,
                    "occurred_at": ts,
                    "type": rng.choice(["call", "email", "meeting", "demo", "note"]),
                    "direction": rng.choice(["inbound", "outbound", None]),
                    "replied": float(rng.choice([0.0, 1.0, np.nan])),
                    "duration_s": float(rng.integers(60, 3600)),
                }
            )
        opp_rows.append(
            {
                "opportunity_id": opp_id,
                "account_id": acct,
                "created_at": created,
                "owner_id": f"r-{rng.integers(5)}",
                "product": rng.choice(["basic", "pro", "enterprise"]),
                "type": rng.choice(["new", "renewal", "expansion"]),
                "lead_source": rng.choice(["web", "referral", "event"]),
                "amount": cur_amount,
                "expected_close_date": close_date,
                "stage": STAGES[stage_idx]
                if outcome is None
                else ("closed_won" if outcome == "won" else "closed_lost"),
                "closed_at": closed,
                "outcome": outcome,
                "won_amount": cur_amount * float(rng.uniform(0.9, 1.1)) if outcome == "won" else np.nan,
                "close_reason": "price" if outcome == "lost" else None,
            }
        )
    sub_rows, usage_rows, ticket_rows, survey_rows = [], [], [], []
    for acct_id, acct_created in zip(accounts["account_id"], accounts["created_at"], strict=True):
        begin = acct_created + pd.Timedelta(days=int(rng.integers(0, 60)))
        mrr = float(rng.integers(1, 20) * 100)
        n_periods = int(rng.integers(1, 5))
        period_start = begin
        for p in range(n_periods):
            period_end = period_start + pd.DateOffset(months=12)
            last = p == n_periods - 1
            ends = period_end if (not last or rng.random() < 0.5) else pd.NaT
            if not pd.isna(ends) and ends > export:
                ends = pd.NaT
            sub_rows.append(
                {
                    "subscription_id": f"s-{acct_id}-{p}",
                    "account_id": acct_id,
                    "start_date": period_start,
                    "end_date": ends,
                    "mrr": mrr,
                    "product": "pro",
                    "auto_renew": float(rng.choice([0.0, 1.0])),
                    "churned_at": ends if last else pd.NaT,
                }
            )
            if pd.isna(ends) or period_end > export:
                break
            period_start = period_end
            mrr = mrr * float(rng.choice([1.0, 1.0, 1.2, 0.8]))
        sub_end = sub_rows[-1]["end_date"]
        last_day = export if pd.isna(sub_end) else sub_end
        days = pd.date_range(begin, last_day, freq="7D")
        level = float(rng.integers(5, 50))
        for day in days:
            level = max(0.0, level + float(rng.normal(0, 2)))
            usage_rows.append(
                {
                    "account_id": acct_id,
                    "date": day,
                    "active_users": round(level),
                    "events": level * 10.0,
                    "reports_run": float(rng.integers(0, 5)),
                }
            )
        for t in range(int(rng.integers(0, 8))):
            opened = begin + pd.Timedelta(days=int(rng.integers(0, 900)), hours=int(rng.integers(0, 24)))
            if opened > export:
                continue
            resolved = opened + pd.Timedelta(hours=int(rng.integers(1, 400)))
            if resolved > export or rng.random() < 0.1:
                resolved = pd.NaT
            ticket_rows.append(
                {
                    "ticket_id": f"t-{acct_id}-{t}",
                    "account_id": acct_id,
                    "opened_at": opened,
                    "resolved_at": resolved,
                    "priority": rng.choice(["low", "medium", "high"]),
                    "csat": float(rng.integers(1, 6)) if not pd.isna(resolved) else np.nan,
                    "first_contact_resolved": float(rng.choice([0.0, 1.0]))
                    if not pd.isna(resolved)
                    else np.nan,
                }
            )
        for s in range(int(rng.integers(0, 6))):
            responded = begin + pd.Timedelta(days=int(rng.integers(0, 900)))
            if responded > export:
                continue
            kind = rng.choice(["nps", "csat", "ces"])
            survey_rows.append(
                {
                    "account_id": acct_id,
                    "responded_at": responded + pd.Timedelta(minutes=s),
                    "kind": kind,
                    "score": float(rng.integers(0, 11)),
                }
            )
    tables = {
        "accounts": accounts,
        "reps": reps,
        "quotas": quotas,
        "opportunities": pd.DataFrame(opp_rows),
        "opportunity_history": pd.DataFrame(hist_rows),
        "activities": pd.DataFrame(act_rows),
        "subscriptions": pd.DataFrame(sub_rows),
        "usage": pd.DataFrame(usage_rows),
        "tickets": pd.DataFrame(ticket_rows),
        "surveys": pd.DataFrame(survey_rows),
    }
    return canonicalize(tables)


def canonicalize(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Canonical dtypes per ARCHITECTURE.md: str/None ids and enums, ns timestamps, float64 numbers."""
    ts_cols = {
        "created_at", "changed_at", "expected_close_date", "closed_at", "occurred_at", "start_date", "end_date",
        "date", "opened_at", "resolved_at", "responded_at", "period_start", "period_end", "churned_at",
    }  # fmt: skip
    out = {}
    for name, frame in tables.items():
        frame = frame.copy()
        for col in frame.columns:
            if col in ts_cols:
                frame[col] = pd.to_datetime(frame[col]).astype("datetime64[ns]")
            elif frame[col].dtype == object or col.endswith("_id"):
                frame[col] = frame[col].astype(object).where(frame[col].notna(), None)
                frame[col] = frame[col].map(lambda v: v if v is None else str(v))
            else:
                frame[col] = frame[col].astype("float64")
        out[name] = frame
    return out


@pytest.fixture(scope="session")
def crm() -> dict[str, pd.DataFrame]:
    """A ~40-account random CRM (fresh copies must be taken before mutating)."""
    return make_random_crm(40, seed=7)


@pytest.fixture(scope="session")
def snapshot_dates() -> list[pd.Timestamp]:
    """Monthly as-of dates through the data."""
    return list(pd.date_range("2023-03-01", "2025-12-01", freq="MS"))
