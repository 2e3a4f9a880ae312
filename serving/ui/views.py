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


#: Words of a feature name that say what kind of number its value is (checked in this order).
_DAY_WORDS = frozenset({"days", "day"})
_SHARE_WORDS = frozenset({"rate", "share", "rel", "pct", "percent"})
_MONEY_WORDS = frozenset({"mrr", "arr", "amount", "revenue"})
_COUNT_WORDS = frozenset({"revisions", "count", "deals", "opps", "changes", "slips", "regressions"})


def _significant(number: float, digits: int = 3) -> str:
    """``number`` to ``digits`` significant digits, never in exponent notation (12345.6 -> 12,346)."""
    if number == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(number)))
    if magnitude >= digits - 1:
        return f"{round(number):,}"
    decimals = digits - 1 - magnitude
    return f"{number:.{decimals}f}".rstrip("0").rstrip(".")


def _value_kind(feature: str) -> str:
    """``days``, ``share``, ``money`` or ``number``, from the words of a raw or display feature name."""
    words = set(re.split(r"[\s_]+", feature.lower()))
    if "per" in words or words & _COUNT_WORDS:  # "activities per week", "amount revisions": not days/money
        return "number"
    if words & _DAY_WORDS:
        return "days"
    if words & _SHARE_WORDS:
        return "share"
    if words & _MONEY_WORDS:
        return "money"
    return "number"


def _plain_value(value: Any, feature: str = "") -> str:
    """A driver's value as a person reads it: whole days, rates as %, money with separators."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "missing"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, int | float):
        return str(value)
    number = float(value)
    kind = _value_kind(feature)
    if kind == "days":
        # Day counts are computed from timestamps, so 25 minutes reads 0.0175 days: people count days.
        if 0 <= number < 1:
            return "less than a day"
        if -1 < number < 0:
            return "less than a day ago"
        days = round(abs(number))
        text = f"{days:,} day{'s' if days != 1 else ''}"
        return f"{text} ago" if number < 0 else text
    if kind == "share":
        return f"{_significant(number * 100, 2 if abs(number) < 0.1 else 3)}%"
    if kind == "money":
        return f"{number:,.0f}" if abs(number) >= 10 else f"{number:,.2f}"
    if number.is_integer() and abs(number) < 1e15:
        return f"{int(number):,}"
    return _significant(number)


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
        feature = str(factor.get("feature"))
        effect = raises if contribution > 0 else opposite
        name, value = plain_feature_name(feature), _plain_value(factor.get("value"), feature)
        if value.endswith(("day", "days", "days ago")) and name.endswith(" days"):
            name = name[: -len(" days")]  # "tenure days is 986 days" says days twice
        out.append(
            {
                "text": f"{name} is {value}: {effect}",
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
        # Accounts without an action map to NaN, which templates and CSVs would show as a value.
        for column, source in (("last_action", "action"), ("last_action_at", "at")):
            mapped = frame["account_id"].map(newest[source]).astype(object)
            frame[column] = mapped.where(mapped.notna(), None)
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


# --------------------------------------------------------------------------- what the numbers are


#: Data older than this (days before today) gets a visible "data as of" notice.
STALE_AFTER_DAYS = 7


def staleness_notice(data_end: Any, today: pd.Timestamp, max_days: int = STALE_AFTER_DAYS) -> str | None:
    """``"data as of 2026-10-31 (36 days old)"`` when the data ends more than ``max_days`` before today.

    Args:
        data_end: The data's latest timestamp (anything ``pd.Timestamp`` reads; None: no notice).
        today: The current date (UTC).
        max_days: Age in whole days above which the notice is shown.

    Returns:
        The notice, or None when the data is recent or its end is unknown.
    """
    if data_end is None or (isinstance(data_end, float) and math.isnan(data_end)):
        return None
    end = pd.Timestamp(data_end)
    end = end.tz_convert(None) if end.tzinfo is not None else end
    now = today.tz_convert(None) if today.tzinfo is not None else today
    age = (now.normalize() - end.normalize()).days
    if age <= max_days:
        return None
    return f"data as of {end.date().isoformat()} ({age} days old)"


def period_nearly_over(period_end: Any, as_of: Any) -> str | None:
    """A note when the forecast period ends within a day of ``as_of``: its P10-P90 are (nearly) actuals.

    Args:
        period_end: Last day of the period (ISO date, inclusive).
        as_of: The forecast date.

    Returns:
        The note, or None while more than a day of the period remains.
    """
    if not period_end or not as_of:
        return None
    end = pd.Timestamp(period_end).normalize() + pd.Timedelta(days=1)
    when = pd.Timestamp(as_of)
    left = end - when
    if left > pd.Timedelta(days=1):
        return None
    if left <= pd.Timedelta(0):
        return (
            f"This period ended before the forecast date ({when.date().isoformat()}): the figures are "
            "actuals (won revenue), not a forecast."
        )
    hours = left.total_seconds() / 3600
    remaining = f"{hours:.0f} hours" if hours >= 1 else f"{max(1, round(hours * 60))} minutes"
    return (
        f"Only {remaining} of this period remained at the forecast date ({when.isoformat(sep=' ')}): "
        "P10, P50 and P90 are (nearly) actuals, the revenue already won, not a forecast."
    )


def model_versions(rows: pd.DataFrame, column: str) -> str | None:
    """The distinct model versions of a scoring run's rows (``"3"``, or ``"3, 4"``), None if unrecorded."""
    if rows.empty or column not in rows.columns:
        return None
    versions = sorted({str(v) for v in rows[column].dropna()})
    return ", ".join(versions) or None


def normalise_filter(name: str, wanted: str, allowed: Sequence[str]) -> str:
    """The allowed value ``wanted`` means: itself, or its only case-insensitive match (``HIGH`` -> ``high``).

    Args:
        name: The filter's name, for the error.
        wanted: The requested value ("" = no filter).
        allowed: The values the filter accepts.

    Returns:
        The allowed value ("" when ``wanted`` is empty).

    Raises:
        ValueError: No (or no single) allowed value matches; the message names the filter and the values.
    """
    if not wanted or wanted in allowed:
        return wanted
    folded = [value for value in allowed if value.casefold() == wanted.casefold()]
    if len(folded) == 1:
        return folded[0]
    shown = ", ".join(allowed[:40]) + (f", … ({len(allowed)} in all)" if len(allowed) > 40 else "")
    raise ValueError(f"{name}: no such value {wanted!r}; expected one of {shown or '(none yet)'}")
