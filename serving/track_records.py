"""The CRM's track records for deals scored through the API, read from the service's dataset.

A request carries the deals a CRM asks about, not the CRM's closed deals, so on their own its
records have no rep, account, product or lead-source track record and each deal is its rep's only
open deal: scores that differ from the batch scores of the same deals (on the quickstart data, by
0.05 on average and a different grade for one deal in five). With a dataset (``REVCAST_DATA_DIR``)
the service computes those facts from it, with the batch build's own SQL
(``features.opportunity.track_record_context``), as of the request's ``as_of``: a deal sent as the
dataset holds it gets the batch path's features and score.

Facts dated after the dataset's end are unknown to it: a request dated later reads the track
records as of the dataset's end (``TrackRecordSource.label`` says which).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.opportunity import CONTEXT_OPEN_DEALS, TRACK_RECORD_KEYS, track_record_context
from serving.coalesce import ID_SEPARATOR

# Context per as_of date kept; requests without as_of (now) all share the dataset end's.
_CACHED_DATES = 8
_TRACK_COLUMNS = ("n_closed", "n_won", "won_amount")
_OPEN_COLUMNS = ("opportunity_id", "owner_id", "account_id")


@dataclass(frozen=True)
class _Context:
    """``track_record_context`` of one date, indexed for cutting per build.

    Attributes:
        records: Relation name -> key -> (n_closed, n_won, won_amount).
        open_by: ``owner_id`` / ``account_id`` -> key -> open deals (opportunity, owner, account).
    """

    records: dict[str, dict[str, tuple[float, float, float]]]
    open_by: dict[str, dict[str, list[tuple[Any, Any, Any]]]]


def _present(value: Any) -> bool:
    return value is not None and value == value  # NaN != NaN


def _indexed(context: dict[str, pd.DataFrame]) -> _Context:
    """Index a context once per date (the per-build cut is then dictionary lookups, not frame joins:
    pandas spends ~2 ms per merge on frames of a few rows, more than the lookups' whole work)."""
    records = {
        name: dict(
            zip(
                context[name]["k"].tolist(),
                zip(*(context[name][c].astype(float).tolist() for c in _TRACK_COLUMNS), strict=True),
                strict=True,
            )
        )
        for name in TRACK_RECORD_KEYS
    }
    rows = list(zip(*(context[CONTEXT_OPEN_DEALS][c].tolist() for c in _OPEN_COLUMNS), strict=True))
    open_by: dict[str, dict[str, list[tuple[Any, Any, Any]]]] = {"owner_id": {}, "account_id": {}}
    for row in rows:
        for column, position in (("owner_id", 1), ("account_id", 2)):
            if _present(row[position]):
                open_by[column].setdefault(row[position], []).append(row)
    return _Context(records=records, open_by=open_by)


class TrackRecordSource:
    """Track records and open deals of a CRM dataset, as of any date, for API feature builds.

    Attributes:
        tables: The dataset's canonical tables.
        data_end: Its latest timestamp: nothing after it is known.
    """

    def __init__(self, tables: dict[str, pd.DataFrame], data_end: pd.Timestamp) -> None:
        """A source over ``tables`` whose facts end at ``data_end``."""
        self.tables = tables
        self.data_end = pd.Timestamp(data_end)
        self._lock = threading.Lock()
        self._cache: OrderedDict[pd.Timestamp, _Context] = OrderedDict()

    @property
    def label(self) -> str:
        """What the answers name as their track records' source: ``dataset@<latest timestamp>``."""
        return f"dataset@{self.data_end.isoformat()}"

    def _context(self, as_of: pd.Timestamp) -> _Context:
        """The indexed context of the facts known at ``as_of`` (those at the data's end after it)."""
        known = min(pd.Timestamp(as_of), self.data_end)
        with self._lock:
            context = self._cache.get(known)
            if context is not None:
                self._cache.move_to_end(known)
                return context
        context = _indexed(track_record_context(self.tables, known))
        with self._lock:
            self._cache[known] = context
            while len(self._cache) > _CACHED_DATES:
                self._cache.popitem(last=False)
        return context

    def warm(self, as_of: pd.Timestamp) -> None:
        """Compute (and keep) the context of ``as_of`` now, e.g. the data's end at start-up."""
        self._context(as_of)

    def frames_for(
        self, opps: pd.DataFrame, as_of: pd.Timestamp, namespaced: bool
    ) -> dict[str, pd.DataFrame]:
        """The context relations of one feature build over ``opps``, dated ``as_of``.

        The same cut as ``features.opportunity.track_record_context_for`` (the global, product and
        lead-source records whole; the deals' reps' and accounts' records; the CRM's other deals
        open at as_of of those reps or accounts), keyed by the build's ids.

        Args:
            opps: The build's opportunities table.
            as_of: The build's one as_of.
            namespaced: The build merges requests (``serving.coalesce``): every id is
                ``<request><ID_SEPARATOR><CRM id>``, so the CRM's rows are looked up by the CRM id
                and carry their request's prefix.
        """
        context = self._context(as_of)
        as_of = pd.Timestamp(as_of)

        def split(value: Any) -> tuple[str, Any]:
            if not _present(value):
                return "", None
            if not namespaced:
                return "", value
            prefix, _, crm_id = str(value).partition(ID_SEPARATOR)
            return prefix + ID_SEPARATOR, crm_id

        own_ids = set(opps["opportunity_id"].tolist())
        looked_up: dict[str, dict[str, tuple[float, float, float]]] = {"rep_tr": {}, "acct_tr": {}}
        others: dict[str, tuple[Any, Any, Any]] = {}
        for owner, account in zip(opps["owner_id"].tolist(), opps["account_id"].tolist(), strict=True):
            for value, name, column in ((owner, "rep_tr", "owner_id"), (account, "acct_tr", "account_id")):
                prefix, crm_id = split(value)
                if crm_id is None:
                    continue
                record = context.records[name].get(crm_id)
                if record is not None:
                    looked_up[name][prefix + crm_id] = record
                for opportunity, deal_owner, deal_account in context.open_by[column].get(crm_id, ()):
                    build_id = prefix + opportunity
                    if build_id not in own_ids and build_id not in others:
                        others[build_id] = (
                            build_id,
                            prefix + deal_owner if _present(deal_owner) else None,
                            prefix + deal_account if _present(deal_account) else None,
                        )
        frames = {
            name: _records_frame(context.records[name], as_of) for name in ("glob_tr", "prod_tr", "src_tr")
        }
        for name, records in looked_up.items():
            frames[name] = _records_frame(records, as_of)
        rows = list(others.values())
        frames[CONTEXT_OPEN_DEALS] = pd.DataFrame(
            {
                **{
                    column: pd.Series([row[i] for row in rows], dtype=object)
                    for i, column in enumerate(_OPEN_COLUMNS)
                },
                "as_of": pd.Series([as_of] * len(rows), dtype="datetime64[ns]"),
            }
        )
        return frames


def _records_frame(records: dict[str, tuple[float, float, float]], as_of: pd.Timestamp) -> pd.DataFrame:
    """A track-record relation (k, as_of, n_closed, n_won, won_amount) from key -> counts."""
    values = np.array(list(records.values()), dtype=float).reshape(len(records), len(_TRACK_COLUMNS))
    return pd.DataFrame(
        {
            "k": pd.Series(list(records), dtype=object),
            "as_of": pd.Series([as_of] * len(records), dtype="datetime64[ns]"),
            **{column: values[:, i] for i, column in enumerate(_TRACK_COLUMNS)},
        }
    )
