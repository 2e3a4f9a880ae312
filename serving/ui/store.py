"""Where the web page reads scores and keeps managers' actions (SQLAlchemy; SQLite by default).

The scores store is written by ``revcast score accounts|opportunities`` (``training.score.ScoresStore``).
``serving`` must not import ``training``, so :func:`default_scores_url` restates that module's location
rule (``scores.db`` next to the SQLite tracking DB, else in the working directory) on top of the
shared ``serving.registry.tracking_uri``; ``tests/ui/test_ui_data.py`` checks both give the same URL.

The action store is a separate database (``REVCAST_UI_DB_URL``, default ``ui_actions.db`` next to the
scores store), so that the scores store stays append-only batch output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

#: Actions a manager can record on an account.
ACTIONS = ("contacted", "saved", "false alarm")
#: Longest note accepted with an action (characters).
MAX_NOTE_CHARS = 2000

ACCOUNT_SCORES = "account_scores"
OPPORTUNITY_SCORES = "opportunity_scores"


def default_scores_url() -> str:
    """URL of the scores store that ``revcast score`` writes (same rule as ``training.score``)."""
    from serving.registry import tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri[len('sqlite:///') :]).resolve().with_name('scores.db')}"
    return f"sqlite:///{(Path.cwd() / 'scores.db').resolve()}"


def default_actions_url(scores_url: str | None = None, environ: dict[str, str] | None = None) -> str:
    """``$REVCAST_UI_DB_URL``, else ``ui_actions.db`` in the scores store's directory (or the cwd)."""
    env = os.environ if environ is None else environ
    if env.get("REVCAST_UI_DB_URL"):
        return env["REVCAST_UI_DB_URL"]
    scores_url = scores_url or default_scores_url()
    if scores_url.startswith("sqlite:///"):
        return f"sqlite:///{Path(scores_url[len('sqlite:///') :]).resolve().with_name('ui_actions.db')}"
    return f"sqlite:///{(Path.cwd() / 'ui_actions.db').resolve()}"


# --------------------------------------------------------------------------- scores (read-only)


class ScoresReader:
    """Read-only queries on the scores store; missing tables read as empty (nothing scored yet).

    Args:
        url: SQLAlchemy URL of the scores store.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = sa.create_engine(url)

    def _has(self, table: str) -> bool:
        return sa.inspect(self._engine).has_table(table)

    def _read(self, sql: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
        with self._engine.connect() as connection:
            result = connection.execute(sa.text(sql), params or {})
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))

    def runs(self, table: str) -> pd.DataFrame:
        """Scoring runs of ``table``: ``scored_at``, ``as_of``, ``n``, oldest first by (as_of, scored_at)."""
        if not self._has(table):
            return pd.DataFrame(columns=["scored_at", "as_of", "n"])
        frame = self._read(
            f"SELECT scored_at, MAX(as_of) AS as_of, COUNT(*) AS n FROM {table} GROUP BY scored_at"
        )
        return frame.sort_values(["as_of", "scored_at"], kind="stable").reset_index(drop=True)

    def run_rows(self, table: str, scored_at: str) -> pd.DataFrame:
        """Every row of one scoring run."""
        return self._read(
            f"SELECT * FROM {table} WHERE scored_at = :scored_at ORDER BY id", {"scored_at": scored_at}
        )

    def account_rows_before(self, as_of: str, scored_at: str) -> pd.DataFrame:
        """Account scores of runs ordered before the run ``(as_of, scored_at)``."""
        return self._read(
            f"SELECT account_id, churn_probability, as_of, scored_at FROM {ACCOUNT_SCORES} "
            "WHERE as_of < :as_of OR (as_of = :as_of AND scored_at < :scored_at)",
            {"as_of": as_of, "scored_at": scored_at},
        )

    def account_history(self, account_id: str) -> pd.DataFrame:
        """Every stored score of one account, oldest first."""
        if not self._has(ACCOUNT_SCORES):
            return pd.DataFrame()
        frame = self._read(
            f"SELECT * FROM {ACCOUNT_SCORES} WHERE account_id = :account_id", {"account_id": account_id}
        )
        return frame.sort_values(["as_of", "scored_at", "id"], kind="stable").reset_index(drop=True)

    def close(self) -> None:
        """Release the connection pool."""
        self._engine.dispose()


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class RecordedAction:
    """One manager action on an account."""

    account_id: str
    action: str
    note: str
    at: str
    churn_probability: float | None
    risk_band: str | None
    score_as_of: str | None


class ActionStore:
    """Managers' actions on accounts (table ``account_actions``), any SQLAlchemy database.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:////path/ui_actions.db`` or a PostgreSQL URL.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = sa.create_engine(url)
        metadata = sa.MetaData()
        self._table = sa.Table(
            "account_actions",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("account_id", sa.String(200), nullable=False, index=True),
            sa.Column("action", sa.String(40), nullable=False),
            sa.Column("note", sa.Text, nullable=False, default=""),
            sa.Column("at", sa.String(40), nullable=False),
            sa.Column("churn_probability", sa.Float),
            sa.Column("risk_band", sa.String(20)),
            sa.Column("score_as_of", sa.String(40)),
        )
        metadata.create_all(self._engine)

    def record(
        self,
        account_id: str,
        action: str,
        note: str,
        *,
        churn_probability: float | None = None,
        risk_band: str | None = None,
        score_as_of: str | None = None,
        at: datetime | None = None,
    ) -> RecordedAction:
        """Store one action, with the account's score at that moment.

        Raises:
            ValueError: Unknown action, or a note longer than ``MAX_NOTE_CHARS``.
        """
        if action not in ACTIONS:
            raise ValueError(f"action: expected one of {', '.join(ACTIONS)}, got {action!r}")
        note = (note or "").strip()
        if len(note) > MAX_NOTE_CHARS:
            raise ValueError(f"note: at most {MAX_NOTE_CHARS} characters, got {len(note)}")
        row = RecordedAction(
            account_id=str(account_id),
            action=action,
            note=note,
            at=(at or datetime.now(UTC)).isoformat(timespec="seconds"),
            churn_probability=churn_probability,
            risk_band=risk_band,
            score_as_of=score_as_of,
        )
        with self._engine.begin() as connection:
            connection.execute(self._table.insert(), [row.__dict__])
        return row

    def actions(self, account_id: str | None = None) -> pd.DataFrame:
        """Stored actions (one account's, or all), newest first."""
        query = sa.select(self._table).order_by(self._table.c.at.desc(), self._table.c.id.desc())
        if account_id is not None:
            query = query.where(self._table.c.account_id == str(account_id))
        with self._engine.connect() as connection:
            result = connection.execute(query)
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))

    def close(self) -> None:
        """Release the connection pool."""
        self._engine.dispose()
