"""Pure functions that turn stored scores, CRM tables and actions into what the pages show.

Nothing here reads files or databases: the app (``serving/ui/app.py``) fetches the rows and passes
them in, so every rule (ordering of runs, trend, score drops, plain-language drivers, filters) is
testable on small hand-made frames.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

#: Columns of the at-risk table (and of its CSV export), in display order.
AT_RISK_COLUMNS = [
    "account_id",
    "name",
    "owner_id",
    "region",
    "mrr",
    "churn_probability",
    "risk_band",
    "revenue_at_risk",
    "change_since_previous",
    "drivers",
    "last_action",
    "last_action_at",
    "as_of",
]
BANDS = ("high", "medium", "low")
GRADES = ("A", "B", "C", "D")
_PREFIXES = {"acct_": "", "opp_": "", "rep_": "rep "}
_UNITS = {"7d": "(7 days)", "30d": "(30 days)", "60d": "(60 days)", "90d": "(90 days)", "180d": "(180 days)"}


# --------------------------------------------------------------------------- runs


def latest_run(runs: pd.DataFrame) -> pd.Series | None:
    """The most recent run (runs are ordered oldest first by ``(as_of, scored_at)``)."""
    return None if runs.empty else runs.iloc[-1]


def comparison_run(runs: pd.DataFrame, min_days: int = 7) -> pd.Series | None:
    """The run to compare the latest with: the latest run whose ``as_of`` is at least ``min_days``
    before the latest run's ``as_of``, or, when there is none, the run just before the latest.

    Args:
        runs: Runs ordered oldest first by ``(as_of, scored_at)``.
        min_days: Minimum distance in days ("since last week" = 7).

    Returns:
        The run, or None when fewer than two runs exist.
    """
    if len(runs) < 2:
        return None
    latest_as_of = pd.Timestamp(runs.iloc[-1]["as_of"])
    earlier = runs.iloc[:-1]
    far_enough = earlier[pd.to_datetime(earlier["as_of"]) <= latest_as_of - pd.Timedelta(days=min_days)]
    return far_enough.iloc[-1] if not far_enough.empty else earlier.iloc[-1]


# --------------------------------------------------------------------------- drivers in plain words


def plain_feature_name(feature: str) -> str:
    """``acct_usage_active_users_trend_90d`` -> ``usage active users trend (90 days)``; display names
    that already read as words are returned unchanged."""
    if " " in feature or not re.fullmatch(r"[A-Za-z0-9_]+", feature):
        return feature
    name = feature
    for prefix, replacement in _PREFIXES.items():
        if name.startswith(prefix):
            name = replacement + name[len(prefix) :]
            break
    words = [_UNITS.get(word, word) for word in name.split("_") if word]
    return " ".join(words)


def _plain_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "missing"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        number = float(value)
        if number.is_integer() and abs(number) < 1e9:
            return f"{int(number):,}"
        return f"{number:,.2f}" if abs(number) >= 1 else f"{number:.3g}"
    return str(value)


def plain_drivers(top_factors: str | Sequence[Mapping[str, Any]] | None, raises: str) -> list[dict[str, Any]]:
    """Top factors as short sentences: ``"usage active users trend (90 days) is -0.35: raises risk"``.

    Args:
        top_factors: The stored JSON list (or the parsed list) of ``{feature, value, contribution}``.
        raises: What a positive contribution does, e.g. ``"raises risk"`` or ``"helps the deal"``;
            negative contributions read ``"lowers risk"``/``"hurts the deal"`` accordingly.

    Returns:
        ``[{"text", "direction" ("up"|"down"), "contribution"}]`` in stored order.
    """
    if top_factors is None or (isinstance(top_factors, float) and math.isnan(top_factors)):
        return []
    factors = json.loads(top_factors) if isinstance(top_factors, str) else list(top_factors)
    opposite = {"raises risk": "lowers risk", "helps the deal": "hurts the deal"}.get(raises, f"not {raises}")
    out = []
    for factor in factors:
        contribution = float(factor.get("contribution") or 0.0)
        effect = raises if contribution > 0 else opposite
        out.append(
            {
                "text": f"{plain_feature_name(str(factor.get('feature')))} is {_plain_value(factor.get('value'))}: {effect}",
                "direction": "up" if contribution > 0 else "down",
                "contribution": contribution,
            }
        )
    return out


# --------------------------------------------------------------------------- accounts


def active_mrr(tables: Mapping[str, pd.DataFrame] | None, as_of: pd.Timestamp) -> pd.Series:
    """MRR in force at ``as_of`` per account (subscriptions with start <= T and not end <= T)."""
    subs = None if tables is None else tables.get("subscriptions")
    if subs is None or subs.empty:
        return pd.Series(dtype=float)
    start = pd.to_datetime(subs["start_date"])
    end = (
        pd.to_datetime(subs["end_date"])
        if "end_date" in subs.columns
        else pd.Series(pd.NaT, index=subs.index)
    )
    active = (start <= as_of) & ~(end <= as_of)
    return subs.loc[active].groupby(subs.loc[active, "account_id"].astype(str))["mrr"].sum().astype(float)


def at_risk_table(
    latest: pd.DataFrame,
    previous: pd.DataFrame,
    tables: Mapping[str, pd.DataFrame] | None,
    actions: pd.DataFrame,
    n_drivers: int = 2,
) -> pd.DataFrame:
    """One row per account of the latest run, sorted by revenue at risk (largest first).

    Args:
        latest: Rows of the latest account scoring run (``account_scores``).
        previous: Earlier scores (``account_id``, ``churn_probability``, ``as_of``, ``scored_at``) of runs
            before the latest; the latest of them per account gives the trend.
        tables: Canonical CRM tables for name, owner, region and MRR (None: those columns stay empty).
        actions: Stored actions (newest first) for the last action per account.
        n_drivers: Number of drivers shown per account.

    Returns:
        Columns ``AT_RISK_COLUMNS``; ``drivers`` is a list of plain-language dicts.
    """
    if latest.empty:
        return pd.DataFrame(columns=AT_RISK_COLUMNS)
    frame = latest[
        ["account_id", "as_of", "churn_probability", "risk_band", "revenue_at_risk", "top_factors"]
    ].copy()
    frame["account_id"] = frame["account_id"].astype(str)
    if not previous.empty:
        last = previous.sort_values(["as_of", "scored_at"], kind="stable").drop_duplicates(
            "account_id", keep="last"
        )
        before = frame["account_id"].map(last.set_index(last["account_id"].astype(str))["churn_probability"])
        frame["change_since_previous"] = frame["churn_probability"] - before.astype(float)
    else:
        frame["change_since_previous"] = np.nan
    accounts = None if tables is None else tables.get("accounts")
    for column in ("name", "owner_id", "region"):
        if accounts is not None and column in accounts.columns:
            lookup = accounts.assign(account_id=accounts["account_id"].astype(str)).set_index("account_id")[
                column
            ]
            frame[column] = frame["account_id"].map(lookup)
        else:
            frame[column] = None
    as_of = pd.Timestamp(frame["as_of"].iloc[0])
    frame["mrr"] = frame["account_id"].map(active_mrr(tables, as_of)) if tables is not None else np.nan
    frame["drivers"] = [plain_drivers(f, "raises risk")[:n_drivers] for f in frame["top_factors"]]
    if not actions.empty:
        newest = actions.drop_duplicates("account_id", keep="first").set_index("account_id")
        frame["last_action"] = frame["account_id"].map(newest["action"])
        frame["last_action_at"] = frame["account_id"].map(newest["at"])
    else:
        frame["last_action"] = None
        frame["last_action_at"] = None
    frame = frame.sort_values(
        ["revenue_at_risk", "churn_probability"], ascending=False, kind="stable", na_position="last"
    )
    return frame[AT_RISK_COLUMNS].reset_index(drop=True)


def filter_rows(frame: pd.DataFrame, **equal_to: str | None) -> pd.DataFrame:
    """Rows whose columns equal the given non-empty values (``owner_id="R1", risk_band="high"``)."""
    mask = pd.Series(True, index=frame.index)
    for column, wanted in equal_to.items():
        if wanted:
            mask &= frame[column].astype(str) == str(wanted)
    return frame[mask]


def choices(frame: pd.DataFrame, column: str) -> list[str]:
    """Sorted distinct non-empty values of a column (for filter menus)."""
    if frame.empty or column not in frame.columns:
        return []
    return sorted({str(v) for v in frame[column].dropna()})


def score_history(history: pd.DataFrame) -> pd.DataFrame:
    """One point per scoring date (the latest run of each ``as_of``): ``as_of``, ``churn_probability``."""
    if history.empty:
        return pd.DataFrame(columns=["as_of", "churn_probability", "risk_band", "scored_at"])
    ordered = history.sort_values(["as_of", "scored_at"], kind="stable").drop_duplicates("as_of", keep="last")
    return ordered[["as_of", "churn_probability", "risk_band", "scored_at"]].reset_index(drop=True)


def later_churned(tables: Mapping[str, pd.DataFrame] | None, actions: pd.DataFrame) -> pd.Series:
    """Whether each action's account churned after the score it was taken on (CONTRACT §1 label at the
    score's ``as_of``): ``"yes"``, ``"no"``, or ``""`` when not known yet (or no data)."""
    if tables is None or "subscriptions" not in tables or actions.empty:
        return pd.Series("", index=actions.index, dtype=object)
    from features.labels import churn_labels

    known = actions["score_as_of"].notna()
    out = pd.Series("", index=actions.index, dtype=object)
    if not known.any():
        return out
    snapshots = pd.DataFrame(
        {
            "account_id": actions.loc[known, "account_id"].astype(str),
            "as_of": pd.to_datetime(actions.loc[known, "score_as_of"]),
        }
    )
    labels = churn_labels(dict(tables), snapshots)
    values = labels["label_churn"].to_numpy()
    observed = labels["label_observed"].to_numpy(dtype=bool)
    out.loc[known] = np.where(observed, np.where(values == 1, "yes", "no"), "")
    return out


# --------------------------------------------------------------------------- deals


def grade_summary(deals: pd.DataFrame) -> pd.DataFrame:
    """Open deals by grade: ``grade``, ``n``, ``mean_win_probability``, ``expected_revenue`` (A..D)."""
    rows = []
    for grade in GRADES:
        part = deals[deals["grade"] == grade] if not deals.empty else deals
        rows.append(
            {
                "grade": grade,
                "n": int(len(part)),
                "mean_win_probability": float(part["win_probability"].mean()) if len(part) else None,
                "expected_revenue": float(part["expected_revenue"].fillna(0).sum()) if len(part) else 0.0,
            }
        )
    return pd.DataFrame(rows)


def score_drops(latest: pd.DataFrame, earlier: pd.DataFrame, limit: int = 10) -> pd.DataFrame:
    """Deals of the latest run whose win probability fell most since the earlier run (drops only).

    Returns:
        ``opportunity_id``, ``account_id``, ``owner_id``, ``grade``, ``win_probability``,
        ``previous_win_probability``, ``change`` (negative), ``expected_revenue``; largest drop first.
    """
    columns = [
        "opportunity_id",
        "account_id",
        "owner_id",
        "grade",
        "win_probability",
        "previous_win_probability",
        "change",
        "expected_revenue",
    ]
    if latest.empty or earlier.empty:
        return pd.DataFrame(columns=columns)
    before = earlier.drop_duplicates("opportunity_id", keep="last").set_index("opportunity_id")[
        "win_probability"
    ]
    frame = latest.copy()
    frame["previous_win_probability"] = frame["opportunity_id"].map(before).astype(float)
    frame["change"] = frame["win_probability"] - frame["previous_win_probability"]
    drops = frame[frame["change"] < 0].sort_values("change", kind="stable")
    return drops[columns].head(limit).reset_index(drop=True)


def with_team(deals: pd.DataFrame, tables: Mapping[str, pd.DataFrame] | None) -> pd.DataFrame:
    """Add the owner's ``team`` from the reps table (empty when unknown)."""
    reps = None if tables is None else tables.get("reps")
    frame = deals.copy()
    if reps is not None and "team" in reps.columns and not frame.empty:
        frame["team"] = frame["owner_id"].astype(str).map(reps.set_index(reps["rep_id"].astype(str))["team"])
    else:
        frame["team"] = None
    return frame
