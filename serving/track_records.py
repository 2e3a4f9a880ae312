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
    TrackRecordIndex,
    index_track_record_context,
    track_record_context,
    track_record_context_for,
)
from serving.coalesce import ID_SEPARATOR

# Indexed contexts per as_of date kept; requests without as_of (now) all share the dataset end's.
_CACHED_DATES = 8


def _split_namespaced(value: str) -> tuple[str, str]:
    """A merged build's id ``<request><ID_SEPARATOR><CRM id>`` as ``(prefix, CRM id)``."""
    prefix, _, crm_id = value.partition(ID_SEPARATOR)
    return prefix + ID_SEPARATOR, crm_id


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
        self._cache: OrderedDict[pd.Timestamp, TrackRecordIndex] = OrderedDict()

    @property
    def label(self) -> str:
        """What the answers name as their track records' source: ``dataset@<latest timestamp>``."""
        return f"dataset@{self.data_end.isoformat()}"

    def _index(self, as_of: pd.Timestamp) -> TrackRecordIndex:
        """The indexed context of the facts known at ``as_of`` (those at the data's end after it)."""
        known = min(pd.Timestamp(as_of), self.data_end)
        with self._lock:
            index = self._cache.get(known)
            if index is not None:
                self._cache.move_to_end(known)
                return index
        index = index_track_record_context(track_record_context(self.tables, known))
        with self._lock:
            self._cache[known] = index
            while len(self._cache) > _CACHED_DATES:
                self._cache.popitem(last=False)
        return index

    def warm(self, as_of: pd.Timestamp) -> None:
        """Compute (and keep) the context of ``as_of`` now, e.g. the data's end at start-up."""
        self._index(as_of)

    def frames_for(
        self, opps: pd.DataFrame, as_of: pd.Timestamp, namespaced: bool
    ) -> dict[str, pd.DataFrame]:
        """The context relations of one feature build over ``opps`` (``track_record_context_for``).

        Args:
            opps: The build's opportunities table.
            as_of: The build's one as_of.
            namespaced: The build merges requests (``serving.coalesce``): its ids are prefixed per
                request, so the CRM's rows are looked up by the CRM id and carry that prefix.
        """
        split = _split_namespaced if namespaced else None
        return track_record_context_for(self._index(as_of), opps, as_of, split)
