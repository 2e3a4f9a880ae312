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

import pandas as pd

from features.opportunity import (
    CONTEXT_OPEN_DEALS,
    TRACK_RECORD_KEYS,
    track_record_context,
    track_record_context_for,
)
from serving.coalesce import ID_SEPARATOR

# Context frames per as_of date kept; requests without as_of (now) all share the dataset end's.
_CACHED_DATES = 8
# Relations keyed by ids (which a merged build prefixes per request) and their id columns.
_ID_KEYED = {
    "rep_tr": ["k"],
    "acct_tr": ["k"],
    CONTEXT_OPEN_DEALS: ["opportunity_id", "owner_id", "account_id"],
}


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
        self._cache: OrderedDict[pd.Timestamp, dict[str, pd.DataFrame]] = OrderedDict()

    @property
    def label(self) -> str:
        """What the answers name as their track records' source: ``dataset@<latest timestamp>``."""
        return f"dataset@{self.data_end.isoformat()}"

    def context(self, as_of: pd.Timestamp) -> dict[str, pd.DataFrame]:
        """``track_record_context`` of the dataset as of ``as_of`` (dated ``as_of``), cached.

        After the dataset's end the facts are those at its end (computed once, re-dated).
        """
        as_of = pd.Timestamp(as_of)
        known = min(as_of, self.data_end)
        with self._lock:
            context = self._cache.get(known)
            if context is not None:
                self._cache.move_to_end(known)
        if context is None:
            context = track_record_context(self.tables, known)
            with self._lock:
                self._cache[known] = context
                while len(self._cache) > _CACHED_DATES:
                    self._cache.popitem(last=False)
        if known == as_of:
            return context
        return {name: frame.assign(as_of=as_of) for name, frame in context.items()}

    def frames_for(
        self, opps: pd.DataFrame, as_of: pd.Timestamp, namespaced: bool
    ) -> dict[str, pd.DataFrame]:
        """The context relations of one feature build over ``opps`` (see ``track_record_context_for``).

        Args:
            opps: The build's opportunities table.
            as_of: The build's one as_of.
            namespaced: The build merges requests (``serving.coalesce``): every id is prefixed by its
                request, so the CRM's rows are looked up per request and carry that prefix.
        """
        context = self.context(as_of)
        if not namespaced or opps.empty:
            return track_record_context_for(context, opps)
        prefixes = opps["opportunity_id"].astype(str).str.partition(ID_SEPARATOR)[0] + ID_SEPARATOR
        parts: list[dict[str, pd.DataFrame]] = []
        for prefix, own in opps.groupby(prefixes, sort=False):
            crm_ids = own.assign(
                **{
                    column: own[column].str.slice(len(prefix))
                    for column in ("opportunity_id", "owner_id", "account_id")
                }
            )
            frames = track_record_context_for(context, crm_ids)
            for name, columns in _ID_KEYED.items():
                frames[name] = frames[name].assign(**{c: _prefixed(prefix, frames[name][c]) for c in columns})
            parts.append(frames)
        merged = {name: pd.concat([part[name] for part in parts], ignore_index=True) for name in parts[0]}
        # Product, lead-source and global records are not per request: one row per key.
        for name in TRACK_RECORD_KEYS:
            if name not in _ID_KEYED:
                merged[name] = merged[name].drop_duplicates(subset=["k"], ignore_index=True)
        return merged


def _prefixed(prefix: str, ids: pd.Series) -> pd.Series:
    """``prefix + id`` per value; a missing id stays missing."""
    text = ids.astype("string")
    return (prefix + text).astype(object).where(text.notna(), None)
