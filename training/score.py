"""Batch scoring of open deals and active accounts with registered bundles, plus the scores store.

Scoring "as of T" builds the same as-of features the models trained on. The opportunities
table's current-state columns count as one more history row dated the export date (the latest
timestamp in the data) only when ``T >= export``; scoring a past date therefore sees exactly what
was known then (tests/model/test_leakage_blackbox.py alters everything after T and checks).

Every deal open at T (``created_at <= T`` and not ``closed_at <= T``) appears exactly once: in the
scores, or in the rejected list with a reason. Likewise every account with a subscription active
at T.

Scores store: a small SQLite database (SQLAlchemy) next to the tracking DB (``scores.db``) with
tables ``opportunity_scores`` and ``account_scores``; each scoring run appends its rows, and the
accounts' ``change_since_previous`` is the difference to the latest earlier stored probability.
The managers' web page reads the same tables.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

OPPORTUNITY_SCORE_COLUMNS = [
    "opportunity_id",
    "account_id",
    "owner_id",
    "as_of",
    "win_probability",
    "score",
    "grade",
    "expected_amount",
    "expected_amount_source",
    "expected_revenue",
    "top_factors",
    "win_model_version",
    "amount_model_version",
]
ACCOUNT_SCORE_COLUMNS = [
    "account_id",
    "as_of",
    "churn_probability",
    "risk_band",
    "arr",
    "revenue_at_risk",
    "change_since_previous",
    "previous_churn_probability",
    "previous_scored_at",
    "top_factors",
    "churn_model_version",
]


@dataclass
class ScoreResult:
    """Scores plus the entities that could not be scored (with a reason each)."""

    scores: pd.DataFrame
    rejected: pd.DataFrame
    as_of: pd.Timestamp
    current_state_as_of: pd.Timestamp | None
    notes: list[str] = field(default_factory=list)


# ============================================================================ helpers


def grade_of(probability: np.ndarray, cuts: Mapping[str, float]) -> np.ndarray:
    """Grade A-D from win probabilities, read off the 1-99 score shown beside it (as the API does).

    A if the score >= 100 cuts['A'], B if >= 100 cuts['B'], C if >= 100 cuts['C'], else D; a deal
    shown as 20 is graded as 20 % even when its unrounded probability is 19.6 %.
    """
    score = score_1_99(probability)
    grades = np.full(score.shape, "D", dtype=object)
    for grade in ("C", "B", "A"):
        grades[score >= float(cuts[grade]) * 100 - _CUT_TOLERANCE] = grade
    return grades


# Cuts are probabilities: 0.29 * 100 is 28.999999999999996 in floating point, which must still admit 29.
_CUT_TOLERANCE = 1e-9


def risk_band_of(probability: np.ndarray, cuts: Mapping[str, float]) -> np.ndarray:
    """Risk band from churn probabilities: high if p >= cuts['high'], medium if >= cuts['medium'], else low."""
    p = np.asarray(probability, dtype=float)
    bands = np.full(p.shape, "low", dtype=object)
    bands[p >= float(cuts["medium"])] = "medium"
    bands[p >= float(cuts["high"])] = "high"
    return bands


def score_1_99(probability: np.ndarray) -> np.ndarray:
    """The 1-99 score shown to sellers: ``round(100 p)`` clipped to [1, 99]."""
    return np.clip(np.rint(np.asarray(probability, dtype=float) * 100), 1, 99).astype(int)


def _scoring_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    if params is not None:
        return dict(params)
    from training.train import load_training_params

    return load_training_params()


def resolve_as_of(
    tables: Mapping[str, pd.DataFrame], as_of: str | pd.Timestamp | None
) -> tuple[pd.Timestamp, pd.Timestamp | None]:
    """The scoring date and the current-state date.

    Args:
        tables: Canonical tables.
        as_of: Requested date (None = the export date, i.e. the latest timestamp in the data).

    Returns:
        ``(as_of, current_state_as_of)``: the current state counts (dated the export) only when
        ``as_of >= export``; otherwise None.
    """
    from training.train import export_timestamp

    export_at = export_timestamp(tables)
    if as_of is None or (isinstance(as_of, str) and not as_of.strip()):
        return export_at, export_at
    try:
        resolved = pd.Timestamp(as_of)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--as-of: not a date: {as_of!r} (expected ISO-8601, e.g. 2026-10-01)") from exc
    if resolved.tzinfo is not None:
        resolved = resolved.tz_convert("UTC").tz_localize(None)
    return resolved, (export_at if resolved >= export_at else None)


def _explanations(bundle: Any, frame: pd.DataFrame, top_k: int) -> list[str]:
    return [json.dumps(factors, allow_nan=False) for factors in bundle.explain(frame, top_k=top_k)]


def with_missing_features(frame: pd.DataFrame, bundles: list[Any]) -> tuple[pd.DataFrame, list[str]]:
    """``frame`` plus, as missing values, the features a bundle knows but the data cannot provide.

    A dataset without a table the model was trained with (e.g. no usage.csv, or a usage metric the
    export no longer has) yields no such feature columns; LightGBM sends missing values down each
    split's learned "missing" branch, which is what the API does for records that lack them
    (serving.service.with_model_columns). The caller reports the names.

    Args:
        frame: Feature rows.
        bundles: Model bundles that will read ``frame``.

    Returns:
        The frame (a new one when columns were added) and the added column names, in model order.
    """
    missing: list[str] = []
    for bundle in bundles:
        missing += [
            name for name in bundle.feature_names if name not in frame.columns and name not in missing
        ]
    if not missing:
        return frame, []
    return frame.assign(**{name: np.nan for name in missing}), missing


def _missing_note(missing: list[str]) -> str:
    shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
    return (
        f"{len(missing)} feature(s) the model was trained with cannot be computed from this data and are "
        f"scored as missing: {shown} (is a table or usage metric absent?)"
    )


def _rejected(ids: pd.Series, id_column: str, reason: str) -> pd.DataFrame:
    return pd.DataFrame({id_column: ids.astype(str).to_numpy(), "reason": reason})


def open_deals_at(tables: Mapping[str, pd.DataFrame], as_of: pd.Timestamp) -> pd.DataFrame:
    """Deals open at T: created_at <= T and not closed_at <= T (ids only)."""
    deals = tables["opportunities"]
    created = pd.to_datetime(deals["created_at"])
    closed = (
        pd.to_datetime(deals["closed_at"])
        if "closed_at" in deals.columns
        else pd.Series(pd.NaT, index=deals.index)
    )
    is_open = (created <= as_of) & ~(closed <= as_of)
    return deals.loc[is_open, ["opportunity_id", "account_id"]].reset_index(drop=True)


def active_accounts_at(tables: Mapping[str, pd.DataFrame], as_of: pd.Timestamp) -> pd.Series:
    """Accounts with a subscription active at T: start_date <= T and not end_date <= T."""
    subs = tables["subscriptions"]
    start = pd.to_datetime(subs["start_date"])
    end = (
        pd.to_datetime(subs["end_date"])
        if "end_date" in subs.columns
        else pd.Series(pd.NaT, index=subs.index)
    )
    active = (start <= as_of) & ~(end <= as_of)
    return pd.Series(
        sorted(subs.loc[active, "account_id"].astype(str).unique()), name="account_id", dtype=object
    )


# ============================================================================ input checks


def check_as_of_in_span(
    as_of: pd.Timestamp, first: pd.Timestamp, last: pd.Timestamp, *, first_what: str, last_what: str
) -> None:
    """Refuse a scoring / forecasting date outside the data, with what to do instead.

    After the last timestamp nothing is known (scores would silently reuse the export's state and a
    forecast would print zeros); before the first date nothing existed yet (0 deals, no error).

    Args:
        as_of: The requested date.
        first: The data's first date (e.g. the earliest deal creation).
        last: The data's last timestamp (the export date).
        first_what: What ``first`` is, for the message.
        last_what: What ``last`` is, for the message.

    Raises:
        ValueError: ``as_of`` is after ``last`` or before ``first`` (one line naming --as-of).
    """
    span = f"pass a date from {first.isoformat()} to {last.isoformat()}, or omit --as-of to use the latter"
    if pd.notna(last) and as_of > last:
        raise ValueError(
            f"--as-of {as_of.isoformat()} is after the data's last timestamp {last.isoformat()} "
            f"({last_what}): nothing is known after it; {span}"
        )
    if pd.notna(first) and as_of < first:
        raise ValueError(
            f"--as-of {as_of.isoformat()} is before the data's first date {first.isoformat()} "
            f"({first_what}): nothing existed yet; {span}"
        )


def parse_as_of(as_of: str) -> pd.Timestamp:
    """``--as-of`` text -> naive UTC timestamp; a one-line error naming the flag otherwise."""
    try:
        resolved = pd.Timestamp(as_of.strip())
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError(
            f"--as-of: not a date: {as_of!r} ({exc}; expected ISO-8601, e.g. 2026-10-01)"
        ) from exc
    if pd.isna(resolved):
        raise ValueError(f"--as-of: not a date: {as_of!r} (expected ISO-8601, e.g. 2026-10-01)")
    if resolved.tzinfo is not None:
        resolved = resolved.tz_convert("UTC").tz_localize(None)
    return resolved


def _first_per_id(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """One row per id (the first); rows without an id are all kept (each is its own lost record)."""
    keep = frame[key].isna() | ~frame[key].duplicated(keep="first")
    return frame.loc[keep].reset_index(drop=True)


def validation_rejects(tables: Mapping[str, pd.DataFrame], report: Any, what: str) -> pd.DataFrame:
    """The records a scoring run can no longer see because validation skipped them (or their parent).

    ``opportunities``: every skipped deal row whose deal is gone (bad value, orphan -- e.g. its
    account row was skipped). Whether such a deal was open at as_of is unknown, so all are listed.
    ``accounts``: every skipped account row, then the account of every skipped subscription row
    (a bad subscription, or one cascaded from a skipped account) -- the account may have been
    active through it, unless it is still scored through another subscription.

    Args:
        tables: The canonical tables ``load_tables`` returned.
        report: Its validation report (``report.dropped`` holds the lost rows with their reasons).
        what: ``opportunities`` or ``accounts``.

    Returns:
        Columns ``<id>``, ``file``, ``row``, ``reason``; one row per id (the first reason kept).
    """
    key = "opportunity_id" if what == "opportunities" else "account_id"
    columns = [key, "file", "row", "reason"]

    def lost(table: str) -> pd.DataFrame:
        frame = report.dropped.get(table)
        if frame is None or frame.empty:
            return pd.DataFrame(columns=[*columns, "subscription_id"])
        return frame.assign(file=report.sources.get(table, table))

    if what == "opportunities":
        deals = lost("opportunities")
        return _first_per_id(deals[columns], key) if not deals.empty else pd.DataFrame(columns=columns)
    frames = []
    accounts = lost("accounts")
    if not accounts.empty:
        frames.append(accounts[columns])
    subscriptions = lost("subscriptions")
    if not subscriptions.empty:
        subscriptions = subscriptions.dropna(subset=["account_id"])
        frames.append(
            subscriptions.assign(reason="its subscription was " + subscriptions["reason"].astype(str))[
                columns
            ]
        )
    if not frames:
        return pd.DataFrame(columns=columns)
    return _first_per_id(pd.concat(frames, ignore_index=True), key)


# ============================================================================ opportunities


def score_opportunities(
    tables: Mapping[str, pd.DataFrame],
    win_bundle: Any,
    amount_bundle: Any | None = None,
    *,
    as_of: str | pd.Timestamp | None = None,
    params: Mapping[str, Any] | None = None,
    feature_params: Any = None,
    versions: Mapping[str, str | None] | None = None,
) -> ScoreResult:
    """Score every deal open at ``as_of`` with the win (and amount) bundles.

    Args:
        tables: Canonical tables.
        win_bundle: The win model bundle (calibrated probabilities).
        amount_bundle: The amount model bundle; None falls back to the deal's as-of amount
            (``expected_amount_source`` says which was used).
        as_of: Scoring date (default: the export date).
        params: Training configuration (grade cut points, number of factors); the bundle's stored
            ``grades`` win when present, so batch scores match the model's own config.
        feature_params: Feature parameters (default features/params.yaml).
        versions: ``{"win": version, "amount": version}`` written next to each score.

    Returns:
        A ScoreResult: one row per open deal in ``scores`` or ``rejected`` (never both, never dropped).
    """
    from features.opportunity import build_opportunity_features

    params = _scoring_params(params)
    versions = dict(versions or {})
    as_of_ts, current = resolve_as_of(tables, as_of)
    population = open_deals_at(tables, as_of_ts)
    features = build_opportunity_features(
        dict(tables), as_of_ts, feature_params, current_state_as_of=current
    ).reset_index(drop=True)
    features["opportunity_id"] = features["opportunity_id"].astype(str)
    rejected = [
        _rejected(
            population.loc[
                ~population["opportunity_id"].astype(str).isin(features["opportunity_id"]), "opportunity_id"
            ],
            "opportunity_id",
            "open at as_of but the feature pipeline produced no row for it",
        )
    ]
    duplicated = features["opportunity_id"].duplicated(keep="first")
    if duplicated.any():
        raise ValueError(
            f"feature pipeline returned duplicate deals: {features.loc[duplicated, 'opportunity_id'].head().tolist()}"
        )
    top_k = int(params["scoring"].get("top_factors", 5))
    cuts = win_bundle.state.get("grades") or params["scoring"]["grades"]
    features, missing = with_missing_features(
        features, [b for b in (win_bundle, amount_bundle) if b is not None]
    )
    p_win = win_bundle.predict(features)
    if amount_bundle is not None:
        expected_amount = amount_bundle.predict(features)
        source = np.full(len(features), "amount_model", dtype=object)
    else:
        expected_amount = pd.to_numeric(features.get("opp_amount"), errors="coerce").to_numpy(dtype=float)
        source = np.full(len(features), "as_of_amount", dtype=object)
    scores = pd.DataFrame(
        {
            "opportunity_id": features["opportunity_id"],
            "account_id": features["account_id"],
            "owner_id": features["owner_id"],
            "as_of": as_of_ts,
            "win_probability": p_win,
            "score": score_1_99(p_win),
            "grade": grade_of(p_win, cuts),
            "expected_amount": expected_amount,
            "expected_amount_source": source,
            "expected_revenue": p_win * expected_amount,
            "top_factors": _explanations(win_bundle, features, top_k),
            "win_model_version": versions.get("win"),
            "amount_model_version": versions.get("amount") if amount_bundle is not None else None,
        },
        columns=OPPORTUNITY_SCORE_COLUMNS,
    )
    no_amount = ~np.isfinite(scores["expected_amount"].to_numpy(dtype=float))
    notes = [_missing_note(missing)] if missing else []
    if no_amount.any():
        notes.append(
            f"{int(no_amount.sum())} deals have no expected amount (no amount as of T and no amount model)"
        )
    return ScoreResult(scores, pd.concat(rejected, ignore_index=True), as_of_ts, current, notes)


# ============================================================================ accounts


def score_accounts(
    tables: Mapping[str, pd.DataFrame],
    churn_bundle: Any,
    *,
    as_of: str | pd.Timestamp | None = None,
    params: Mapping[str, Any] | None = None,
    feature_params: Any = None,
    version: str | None = None,
    previous: pd.DataFrame | None = None,
) -> ScoreResult:
    """Score every account with a subscription active at ``as_of`` with the churn bundle.

    Args:
        tables: Canonical tables.
        churn_bundle: The churn model bundle.
        as_of: Scoring date (default: the export date).
        params: Training configuration (risk-band cut points; the bundle's stored ``risk_bands`` win).
        feature_params: Feature parameters.
        version: Churn model version written next to each score.
        previous: Latest earlier scores per account (``account_id``, ``churn_probability``,
            ``scored_at``) from the scores store, for ``change_since_previous``.

    Returns:
        A ScoreResult with ``revenue_at_risk = arr x churn_probability``.
    """
    from features.account import build_account_features

    params = _scoring_params(params)
    as_of_ts, current = resolve_as_of(tables, as_of)
    population = active_accounts_at(tables, as_of_ts)
    features = build_account_features(dict(tables), as_of_ts, feature_params).reset_index(drop=True)
    features["account_id"] = features["account_id"].astype(str)
    rejected = [
        _rejected(
            population[~population.isin(features["account_id"])],
            "account_id",
            "subscription active at as_of but the feature pipeline produced no row for it",
        )
    ]
    top_k = int(params["scoring"].get("top_factors", 5))
    cuts = churn_bundle.state.get("risk_bands") or params["scoring"]["risk_bands"]
    features, missing = with_missing_features(features, [churn_bundle])
    p_churn = churn_bundle.predict(features)
    arr = pd.to_numeric(features["arr"], errors="coerce").to_numpy(dtype=float)
    scores = pd.DataFrame(
        {
            "account_id": features["account_id"],
            "as_of": as_of_ts,
            "churn_probability": p_churn,
            "risk_band": risk_band_of(p_churn, cuts),
            "arr": arr,
            "revenue_at_risk": arr * p_churn,
            "top_factors": _explanations(churn_bundle, features, top_k),
            "churn_model_version": version,
        }
    )
    if previous is not None and not previous.empty:
        last = previous.drop_duplicates("account_id", keep="last").set_index("account_id")
        scores["previous_churn_probability"] = (
            scores["account_id"].map(last["churn_probability"]).astype(float)
        )
        scores["previous_scored_at"] = scores["account_id"].map(last["scored_at"])
    else:
        scores["previous_churn_probability"] = np.nan
        scores["previous_scored_at"] = None
    scores["change_since_previous"] = scores["churn_probability"] - scores["previous_churn_probability"]
    return ScoreResult(
        scores[ACCOUNT_SCORE_COLUMNS],
        pd.concat(rejected, ignore_index=True),
        as_of_ts,
        current,
        [_missing_note(missing)] if missing else [],
    )


# ============================================================================ scores store


def default_scores_url() -> str:
    """SQLite scores store next to the tracking DB (``scores.db``), or in the cwd for remote trackers.

    The rule lives with its reader, the managers' page (serving must not import training).
    """
    from serving.ui.store import default_scores_url as serving_default_scores_url

    return serving_default_scores_url()


class ScoresStore:
    """Append-only store of batch scores (SQLAlchemy; SQLite by default).

    Tables:
        ``account_scores(account_id, scored_at, as_of, churn_probability, revenue_at_risk, risk_band,
        top_factors, model_version)`` and ``opportunity_scores(opportunity_id, account_id, owner_id,
        scored_at, as_of, win_probability, score, grade, expected_amount, expected_revenue,
        top_factors, model_version)``.

    Args:
        url: SQLAlchemy URL (default ``default_scores_url()``).
    """

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_scores_url()

    def _tables(self) -> tuple[Any, Any, Any]:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url)
        metadata = sa.MetaData()
        accounts = sa.Table(
            "account_scores",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("account_id", sa.String, nullable=False, index=True),
            sa.Column("scored_at", sa.String, nullable=False, index=True),
            sa.Column("as_of", sa.String, nullable=False),
            sa.Column("churn_probability", sa.Float, nullable=False),
            sa.Column("revenue_at_risk", sa.Float),
            sa.Column("risk_band", sa.String),
            sa.Column("top_factors", sa.Text),
            sa.Column("model_version", sa.String),
        )
        opportunities = sa.Table(
            "opportunity_scores",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("opportunity_id", sa.String, nullable=False, index=True),
            sa.Column("account_id", sa.String),
            sa.Column("owner_id", sa.String),
            sa.Column("scored_at", sa.String, nullable=False, index=True),
            sa.Column("as_of", sa.String, nullable=False),
            sa.Column("win_probability", sa.Float, nullable=False),
            sa.Column("score", sa.Integer),
            sa.Column("grade", sa.String),
            sa.Column("expected_amount", sa.Float),
            sa.Column("expected_revenue", sa.Float),
            sa.Column("top_factors", sa.Text),
            sa.Column("model_version", sa.String),
        )
        metadata.create_all(engine)
        return engine, accounts, opportunities

    def previous_account_scores(self) -> pd.DataFrame:
        """Latest stored score per account (``account_id``, ``churn_probability``, ``scored_at``)."""
        import sqlalchemy as sa

        engine, accounts, _ = self._tables()
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(accounts.c.account_id, accounts.c.churn_probability, accounts.c.scored_at).order_by(
                    accounts.c.scored_at, accounts.c.id
                )
            ).fetchall()
        engine.dispose()
        frame = pd.DataFrame(rows, columns=["account_id", "churn_probability", "scored_at"])
        return frame.drop_duplicates("account_id", keep="last").reset_index(drop=True)

    def append_account_scores(self, scores: pd.DataFrame, scored_at: str | None = None) -> int:
        """Append a scoring run's account scores; returns the number of rows written."""
        scored_at = scored_at or datetime.now(UTC).isoformat(timespec="microseconds")
        records = [
            {
                "account_id": str(row.account_id),
                "scored_at": scored_at,
                "as_of": pd.Timestamp(row.as_of).isoformat(),
                "churn_probability": float(row.churn_probability),
                "revenue_at_risk": None if pd.isna(row.revenue_at_risk) else float(row.revenue_at_risk),
                "risk_band": row.risk_band,
                "top_factors": row.top_factors,
                "model_version": None if row.churn_model_version is None else str(row.churn_model_version),
            }
            for row in scores.itertuples(index=False)
        ]
        return self._insert("accounts", records)

    def append_opportunity_scores(self, scores: pd.DataFrame, scored_at: str | None = None) -> int:
        """Append a scoring run's deal scores; returns the number of rows written."""
        scored_at = scored_at or datetime.now(UTC).isoformat(timespec="microseconds")
        records = [
            {
                "opportunity_id": str(row.opportunity_id),
                "account_id": None if row.account_id is None else str(row.account_id),
                "owner_id": None if row.owner_id is None else str(row.owner_id),
                "scored_at": scored_at,
                "as_of": pd.Timestamp(row.as_of).isoformat(),
                "win_probability": float(row.win_probability),
                "score": int(row.score),
                "grade": row.grade,
                "expected_amount": None if pd.isna(row.expected_amount) else float(row.expected_amount),
                "expected_revenue": None if pd.isna(row.expected_revenue) else float(row.expected_revenue),
                "top_factors": row.top_factors,
                "model_version": None if row.win_model_version is None else str(row.win_model_version),
            }
            for row in scores.itertuples(index=False)
        ]
        return self._insert("opportunities", records)

    def _insert(self, which: str, records: list[dict[str, Any]]) -> int:
        engine, accounts, opportunities = self._tables()
        table = accounts if which == "accounts" else opportunities
        if records:
            with engine.begin() as connection:
                connection.execute(table.insert(), records)
        engine.dispose()
        return len(records)
