"""Feature parameters (windows, vocabularies, smoothing, feature lists) loaded from params.yaml.

Models train on exactly the features listed in the YAML file; `feature_columns` expands the
per-metric usage features for the metrics actually present in a feature frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml

DEFAULT_PARAMS_PATH = Path(__file__).with_name("params.yaml")

# Columns of a feature frame that are never features, whatever the YAML says.
ID_COLUMNS = ("opportunity_id", "account_id", "owner_id", "as_of")
USAGE_PREFIX = "acct_usage_"


@dataclass(frozen=True)
class AccountParams:
    """Parameters of the account (churn) feature pipeline."""

    mrr_change_windows_days: tuple[int, ...] = (30, 90)
    ticket_windows_days: tuple[int, ...] = (30, 90)
    touch_windows_days: tuple[int, ...] = (30, 90)
    usage_recent_days: int = 30
    usage_previous_days: int = 60
    usage_baseline_days: int = 180
    high_priorities: tuple[str, ...] = ("high", "urgent", "critical", "p1")
    open_opportunity_types: tuple[str, ...] = ("renewal", "expansion")
    renewal_opportunity_types: tuple[str, ...] = ("renewal",)
    renewal_closed_windows_days: tuple[int, ...] = (60,)
    usage_users_metric: str = "active_users"


@dataclass(frozen=True)
class LabelParams:
    """Label horizons: win horizon (None = any time after T), churn horizon and grace period."""

    win_horizon_days: int | None = None
    churn_horizon_days: int = 90
    churn_grace_days: int = 30


@dataclass(frozen=True)
class FeatureList:
    """The exact categorical and numeric features a model trains on."""

    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    usage_per_metric: tuple[str, ...] = ()
    usage_days_since: str | None = None


@dataclass(frozen=True)
class FeatureParams:
    """All feature-pipeline parameters; see features/params.yaml for meanings."""

    activity_windows_days: tuple[int, ...] = (7, 30, 90)
    activity_types: tuple[str, ...] = ("call", "email", "meeting", "demo")
    stage_order: tuple[str, ...] = ()
    smoothing: dict[str, float] = field(default_factory=dict)
    account: AccountParams = field(default_factory=AccountParams)
    labels: LabelParams = field(default_factory=LabelParams)
    opportunity_features: FeatureList = field(default_factory=FeatureList)
    account_features: FeatureList = field(default_factory=FeatureList)


def _tuple(values: Any) -> tuple:
    return tuple(values or ())


def _feature_list(raw: dict[str, Any] | None) -> FeatureList:
    raw = raw or {}
    return FeatureList(
        categorical=_tuple(raw.get("categorical")),
        numeric=_tuple(raw.get("numeric")),
        usage_per_metric=_tuple(raw.get("usage_per_metric")),
        usage_days_since=raw.get("usage_days_since"),
    )


def params_from_dict(raw: dict[str, Any]) -> FeatureParams:
    """Build FeatureParams from a parsed YAML mapping.

    Args:
        raw: Mapping with the keys of params.yaml (missing keys take the dataclass defaults).

    Returns:
        The parameters as a frozen dataclass.
    """
    account_raw = dict(raw.get("account") or {})
    for key, value in list(account_raw.items()):
        if isinstance(value, list):
            account_raw[key] = tuple(value)
    return FeatureParams(
        activity_windows_days=_tuple(raw.get("activity_windows_days", (7, 30, 90))),
        activity_types=tuple(str(t).lower() for t in raw.get("activity_types", ())),
        stage_order=tuple(str(s).lower() for s in raw.get("stage_order", ())),
        smoothing={str(k): float(v) for k, v in (raw.get("smoothing") or {}).items()},
        account=AccountParams(**account_raw),
        labels=LabelParams(**(raw.get("labels") or {})),
        opportunity_features=_feature_list(raw.get("opportunity_features")),
        account_features=_feature_list(raw.get("account_features")),
    )


def load_params(path: str | Path | None = None) -> FeatureParams:
    """Load feature parameters from YAML.

    Args:
        path: YAML file; None loads the packaged features/params.yaml.

    Returns:
        The parsed FeatureParams.
    """
    with open(path or DEFAULT_PARAMS_PATH, encoding="utf-8") as handle:
        return params_from_dict(yaml.safe_load(handle) or {})


def usage_metrics_in_frame(frame: pd.DataFrame) -> list[str]:
    """Names of the usage metrics that have per-metric features in an account feature frame.

    Args:
        frame: Output of build_account_features.

    Returns:
        Metric names in column order (from the `acct_usage_<metric>_mean_30d` columns).
    """
    suffix = "_mean_30d"
    return [
        col[len(USAGE_PREFIX) : -len(suffix)]
        for col in frame.columns
        if col.startswith(USAGE_PREFIX) and col.endswith(suffix)
    ]


def feature_columns(
    kind: Literal["opportunity", "account"],
    frame: pd.DataFrame,
    params: FeatureParams | None = None,
) -> list[str]:
    """The exact model features of a feature frame, in a stable order.

    Args:
        kind: "opportunity" (win/amount models) or "account" (churn model).
        frame: Feature frame from the matching builder; per-metric usage features are expanded for
            the metrics present in it.
        params: Parameters; None loads the packaged defaults.

    Returns:
        Categorical features first, then numeric ones.

    Raises:
        ValueError: unknown kind.
        KeyError: a listed feature is missing from the frame (names the missing columns).
    """
    params = params or load_params()
    if kind == "opportunity":
        flist = params.opportunity_features
    elif kind == "account":
        flist = params.account_features
    else:
        raise ValueError(f"kind must be 'opportunity' or 'account', got {kind!r}")
    columns = list(flist.categorical) + list(flist.numeric)
    if kind == "account":
        for metric in usage_metrics_in_frame(frame):
            columns += [
                template.format(metric=metric)
                for template in flist.usage_per_metric
                # the users metric divided by itself is empty by construction: not a feature
                if not (metric == params.account.usage_users_metric and "_per_user_" in template)
            ]
        if flist.usage_days_since and flist.usage_days_since in frame.columns:
            columns.append(flist.usage_days_since)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{kind} feature frame lacks listed features: {missing}")
    forbidden = [c for c in columns if c in ID_COLUMNS or c.startswith("label_") or c == "arr"]
    if forbidden:
        raise ValueError(f"params list ids/labels/values as features: {forbidden}")
    return columns


def categorical_columns(
    kind: Literal["opportunity", "account"], params: FeatureParams | None = None
) -> list[str]:
    """The categorical features of a model kind (string columns to encode as categories)."""
    params = params or load_params()
    flist = params.opportunity_features if kind == "opportunity" else params.account_features
    return list(flist.categorical)
