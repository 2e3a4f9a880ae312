"""A small synthetic CRM written as raw CSV files, and helpers to turn its rows into API records.

The serving tests load it with the real loader (`features.data.load_tables`), train tiny models on
features from the real builders, and send its rows to the API as JSON records, so that the API's
JSON -> tables conversion is checked against the batch path on exactly the same facts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

EXPORT = pd.Timestamp("2025-12-31")
START = pd.Timestamp("2023-01-01")
STAGES = ["prospecting", "qualification", "demo", "proposal", "negotiation"]


def write_crm_csv(directory: Path, n_accounts: int = 60, seed: int = 3) -> Path:
    """Write accounts, opportunities, opportunity_history, activities, subscriptions, usage, tickets
    and surveys as CSV files (mixed-case labels and date-only/datetime strings, like real exports)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    span = (EXPORT - START).days
    accounts = pd.DataFrame(
        {
            "account_id": [f"A{i:03d}" for i in range(n_accounts)],
            "created_at": [
                (START + pd.Timedelta(days=int(d))).date().isoformat()
                for d in rng.integers(0, 200, n_accounts)
            ],
            "name": [f"Company {i}" for i in range(n_accounts)],
            "industry": rng.choice(["Retail", "tech", "Finance"], n_accounts),
            "region": rng.choice(["emea", "amer"], n_accounts),
            "segment": rng.choice(["SMB", "mid", "ent"], n_accounts),
            "employees": rng.integers(10, 5000, n_accounts),
            "annual_revenue": rng.integers(1, 500, n_accounts) * 100000,
        }
    )
    opps, history, activities = [], [], []
    for i in range(n_accounts * 4):
        opp_id = f"O{i:04d}"
        account = int(rng.integers(n_accounts))
        created = START + pd.Timedelta(days=int(rng.integers(200, span - 20)), hours=int(rng.integers(0, 24)))
        duration = int(rng.integers(20, 200))
        closed = created + pd.Timedelta(days=duration)
        # A weak real signal (meetings and stage progress help), so the tiny models are not constant.
        n_meetings = int(rng.integers(0, 6))
        won = rng.random() < 0.2 + 0.1 * n_meetings
        outcome: str | None = "won" if won else "lost"
        if closed > EXPORT:
            closed, outcome = pd.NaT, None
        amount = float(rng.integers(5, 100) * 1000)
        stage = 0
        close_date = created + pd.Timedelta(days=int(rng.integers(30, 120)))
        for k in range(int(rng.integers(0, 5))):
            changed = created + pd.Timedelta(days=int(rng.integers(1, max(2, duration))), hours=k)
            if changed > EXPORT or (not pd.isna(closed) and changed > closed):
                continue
            stage = min(len(STAGES) - 1, stage + 1)
            amount = round(amount * float(rng.uniform(0.8, 1.2)), 2)
            history.append(
                {
                    "opportunity_id": opp_id,
                    "changed_at": changed.isoformat(),
                    "stage": STAGES[stage].title() if rng.random() < 0.3 else STAGES[stage],
                    "amount": amount,
                    "expected_close_date": close_date.date().isoformat(),
                }
            )
        for k in range(n_meetings + int(rng.integers(0, 5))):
            occurred = created + pd.Timedelta(
                days=int(rng.integers(0, duration)), minutes=int(rng.integers(0, 1440))
            )
            if occurred > EXPORT:
                continue
            activities.append(
                {
                    "activity_id": f"X{len(activities):05d}",
                    "account_id": f"A{account:03d}",
                    "opportunity_id": opp_id,
                    "occurred_at": occurred.isoformat(),
                    "type": "meeting" if k < n_meetings else rng.choice(["call", "Email", "demo"]),
                    "direction": rng.choice(["inbound", "outbound", ""]),
                    "replied": rng.choice(["true", "false", ""]),
                    "duration_s": int(rng.integers(60, 3600)),
                }
            )
        opps.append(
            {
                "opportunity_id": opp_id,
                "account_id": f"A{account:03d}",
                "created_at": created.isoformat(),
                "owner_id": f"R{int(rng.integers(5))}",
                "product": rng.choice(["basic", "pro", "enterprise"]),
                "type": rng.choice(["new", "renewal", "expansion"]),
                "lead_source": rng.choice(["web", "Referral", "event"]),
                "amount": amount,
                "expected_close_date": close_date.date().isoformat(),
                "stage": STAGES[stage] if outcome is None else f"closed_{outcome}",
                "closed_at": "" if pd.isna(closed) else closed.isoformat(),
                "outcome": outcome or "",
                "won_amount": round(amount * float(rng.uniform(0.9, 1.1)), 2) if outcome == "won" else "",
            }
        )
    subscriptions, usage, tickets, surveys = [], [], [], []
    for a in range(n_accounts):
        account_id = f"A{a:03d}"
        begin = pd.Timestamp(accounts.loc[a, "created_at"]) + pd.Timedelta(days=int(rng.integers(0, 60)))
        mrr = float(rng.integers(1, 20) * 100)
        churn_at = begin + pd.Timedelta(days=int(rng.integers(200, 1100)))
        for p in range(4):
            start = begin + pd.DateOffset(months=12 * p)
            if start > EXPORT or start >= churn_at:
                break
            end = min(start + pd.DateOffset(months=12), churn_at)
            subscriptions.append(
                {
                    "subscription_id": f"S{a:03d}-{p}",
                    "account_id": account_id,
                    "start_date": start.date().isoformat(),
                    "mrr": mrr,
                    "end_date": "" if end > EXPORT else end.date().isoformat(),
                    "product": "pro",
                    "auto_renew": rng.choice(["yes", "no"]),
                }
            )
        for d in pd.date_range(begin, min(EXPORT, churn_at), freq="14D"):
            usage.append(
                {
                    "account_id": account_id,
                    "date": d.date().isoformat(),
                    "active_users": int(rng.integers(1, 50)),
                    "events": int(rng.integers(10, 2000)),
                    "reports_run": int(rng.integers(0, 30)),
                }
            )
        for t in range(int(rng.integers(0, 6))):
            opened = begin + pd.Timedelta(days=int(rng.integers(0, 700)), hours=t)
            if opened > EXPORT:
                continue
            tickets.append(
                {
                    "ticket_id": f"T{a:03d}-{t}",
                    "account_id": account_id,
                    "opened_at": opened.isoformat(),
                    "resolved_at": (opened + pd.Timedelta(days=int(rng.integers(0, 10)))).isoformat(),
                    "priority": rng.choice(["High", "low", "urgent"]),
                    "csat": int(rng.integers(1, 6)),
                    "first_contact_resolved": rng.choice(["1", "0"]),
                }
            )
        for s in range(int(rng.integers(0, 3))):
            responded = begin + pd.Timedelta(days=int(rng.integers(0, 700)), hours=s)
            if responded <= EXPORT:
                surveys.append(
                    {
                        "account_id": account_id,
                        "responded_at": responded.isoformat(),
                        "kind": rng.choice(["NPS", "csat"]),
                        "score": int(rng.integers(0, 10)),
                    }
                )
    for name, rows in {
        "accounts": accounts,
        "opportunities": pd.DataFrame(opps),
        "opportunity_history": pd.DataFrame(history),
        "activities": pd.DataFrame(activities),
        "subscriptions": pd.DataFrame(subscriptions),
        "usage": pd.DataFrame(usage),
        "tickets": pd.DataFrame(tickets),
        "surveys": pd.DataFrame(surveys),
    }.items():
        rows.to_csv(directory / f"{name}.csv", index=False)
    return directory


def _value(value: Any) -> Any:
    """A canonical cell as a JSON value (NaN/NaT -> None, timestamps -> ISO strings)."""
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _records(frame: pd.DataFrame, drop: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    return [
        {k: _value(v) for k, v in row.items() if k not in drop and _value(v) is not None}
        for row in frame.to_dict("records")
    ]


def opportunity_records(
    tables: dict[str, pd.DataFrame], opportunity_ids: list[str], as_of: pd.Timestamp
) -> list[dict]:
    """API records for deals: their row (current state as of as_of), account, history and activities
    up to as_of. The opportunity rows' current-state columns are replaced by the last history state
    at as_of so that the record describes the deal *at* as_of."""
    opps = tables["opportunities"].set_index("opportunity_id", drop=False)
    accounts = tables["accounts"].set_index("account_id", drop=False)
    history = tables["opportunity_history"]
    activities = tables["activities"]
    records = []
    for opp_id in opportunity_ids:
        row = opps.loc[opp_id]
        record = {
            k: _value(row[k])
            for k in (
                "opportunity_id",
                "account_id",
                "created_at",
                "owner_id",
                "product",
                "type",
                "lead_source",
                "amount",
                "expected_close_date",
                "stage",
            )
        }
        record = {k: v for k, v in record.items() if v is not None}
        past = history[(history["opportunity_id"] == opp_id) & (history["changed_at"] <= as_of)]
        if row["account_id"] in accounts.index:
            record["account"] = _records(accounts.loc[[row["account_id"]]])[0]
        record["history"] = _records(past, drop=("opportunity_id",))
        acts = activities[(activities["opportunity_id"] == opp_id) & (activities["occurred_at"] <= as_of)]
        record["activities"] = _records(acts, drop=("account_id",))
        records.append(record)
    return records


_DEAL_FIELDS = (
    "opportunity_id",
    "created_at",
    "type",
    "owner_id",
    "product",
    "lead_source",
    "stage",
    "amount",
    "expected_close_date",
    "closed_at",
    "outcome",
    "won_amount",
)


def account_records(
    tables: dict[str, pd.DataFrame],
    account_ids: list[str],
    as_of: pd.Timestamp,
    with_opportunities: bool = True,
) -> list[dict]:
    """API records for accounts with their subscriptions, usage, tickets, surveys and activities up to
    as_of, and (``with_opportunities``) their deals created by as_of with their history up to as_of.
    A deal closed after as_of is sent as it was at as_of: open, without closed_at/outcome/won_amount."""
    accounts = tables["accounts"].set_index("account_id", drop=False)
    opps = tables["opportunities"]
    history = tables["opportunity_history"]
    records = []
    for account_id in account_ids:
        record = _records(accounts.loc[[account_id]])[0]
        for name, time_column in (
            ("subscriptions", "start_date"),
            ("usage", "date"),
            ("tickets", "opened_at"),
            ("surveys", "responded_at"),
            ("activities", "occurred_at"),
        ):
            frame = tables[name]
            rows = frame[(frame["account_id"] == account_id) & (frame[time_column] <= as_of)]
            record[name] = _records(rows, drop=("account_id",))
        if with_opportunities:
            deals = opps[(opps["account_id"] == account_id) & (opps["created_at"] <= as_of)]
            record["opportunities"] = []
            for deal in _records(deals[list(_DEAL_FIELDS)]):
                if "closed_at" in deal and pd.Timestamp(deal["closed_at"]) > as_of:
                    for later in ("closed_at", "outcome", "won_amount"):
                        deal.pop(later, None)
                past = history[
                    (history["opportunity_id"] == deal["opportunity_id"]) & (history["changed_at"] <= as_of)
                ]
                deal["history"] = _records(past, drop=("opportunity_id",))
                record["opportunities"].append(deal)
        records.append(record)
    return records
