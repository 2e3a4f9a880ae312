"""Coalescing of concurrent scoring requests into one feature build.

A one-record request spends most of its time in the fixed cost of a feature build (DuckDB binds and
plans the whole feature query whatever the number of rows), so requests that wait while another is
being scored are merged and scored together: N waiting requests cost about one build, not N. A
request arriving at a service called one request at a time is scored at once; merging collects what
has queued up meanwhile, and only right after a merged build does a thread linger a few milliseconds
for the rest of the clients' next wave (``RequestCoalescer._take``), so it pays under concurrency and
adds no latency at concurrency 1.

Merged requests must not see each other. Every ``*_id`` value of request ``k`` is rewritten to
``"k<US>id"`` (US = the ASCII unit separator) before the build, so each request's deals, accounts,
owners, activities... join only with its own rows (identical ids in two requests stay two entities),
and the prefix is removed from the answer. The rewrite is one-to-one within a request, so a feature
that treats ids as opaque keys gets the same value. Features that aggregate across entities without
an id key (the opportunity builder's global/product/lead-source track records) read only closed deals,
which the API never accepts as opportunity records. Only requests with the same endpoint, model set,
``as_of`` and ``include_features`` are merged. tests/serving/test_coalesce.py checks that merged
answers equal separate ones, with colliding ids across requests.
"""

from __future__ import annotations

import bisect
import collections
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from serving.requests import PreparedBatch, build_tables, canonical_text

ID_SEPARATOR = "\x1f"


def namespaced(request_index: int, value: str) -> str:
    """The id ``value`` of request ``request_index`` as it appears in a merged build."""
    return f"{request_index}{ID_SEPARATOR}{value}"


def split_namespaced(value: str) -> tuple[int, str]:
    """Inverse of ``namespaced``: ``(request index, caller's id)``."""
    prefix, _, original = value.partition(ID_SEPARATOR)
    return int(prefix), original


def _namespace_row(row: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A table row with every ``*_id`` value prefixed (after the canonical text clean-up, so that the
    table builder's own clean-up leaves the prefixed value as it is)."""
    out = dict(row)
    for name, value in row.items():
        if name.endswith("_id"):
            text = canonical_text(value)
            out[name] = None if text is None else prefix + text
    return out


@dataclass
class MergedBatch:
    """Several requests' prepared batches as one batch with namespaced ids.

    Attributes:
        batch: The merged batch: tables of every request (ids namespaced), ``accepted`` with global
            indices (request ``k``'s record ``i`` has index ``offsets[k] + i``), no rejections
            (each request keeps its own validation rejections).
        offsets: Global index of each request's first record.
        sources: The requests' own batches, in order.
    """

    batch: PreparedBatch
    offsets: list[int]
    sources: list[PreparedBatch]


def merge_batches(batches: Sequence[PreparedBatch], n_records: Sequence[int]) -> MergedBatch:
    """Merge prepared batches of requests with the same ``as_of`` into one (ids namespaced).

    Args:
        batches: Each request's prepared batch (``serving.requests.prepare_*``); only their ``rows``
            are read (they may be prepared ``with_tables=False``).
        n_records: Number of records each request sent (accepted or not), for the global indices.

    Returns:
        The merged batch with its offsets.

    Raises:
        ValueError: the batches do not share one ``as_of``.
    """
    as_of = batches[0].as_of
    if any(batch.as_of != as_of for batch in batches):
        raise ValueError("merge_batches: requests with different as_of are never merged")
    offsets = [0]
    for count in n_records[:-1]:
        offsets.append(offsets[-1] + count)
    names = list(dict.fromkeys(name for batch in batches for name in batch.rows))
    rows = {
        name: [
            _namespace_row(row, f"{k}{ID_SEPARATOR}")
            for k, batch in enumerate(batches)
            for row in batch.rows.get(name, ())
        ]
        for name in names
    }
    accepted = [
        (offsets[k] + index, namespaced(k, caller_id))
        for k, batch in enumerate(batches)
        for index, caller_id in batch.accepted
    ]
    values = {
        namespaced(k, caller_id): item
        for k, batch in enumerate(batches)
        for caller_id, item in batch.values.items()
    }
    merged = PreparedBatch(
        tables=build_tables(rows),
        accepted=accepted,
        rejected=[],
        as_of=as_of,
        values=values,
        rows=rows,
        namespaced=True,
    )
    return MergedBatch(batch=merged, offsets=offsets, sources=list(batches))


def split_body(body: dict[str, Any], merged: MergedBatch, id_field: str) -> list[dict[str, Any]]:
    """Cut the answer of a merged build into each request's own answer.

    Args:
        body: What the scorer answered for ``merged.batch``.
        merged: The merge the body answers.
        id_field: ``opportunity_id`` or ``account_id``.

    Returns:
        One body per request, in order: the same model fields, its results (ids restored) in its
        own record order, and its validation rejections plus the records the build rejected.
    """
    n_requests = len(merged.sources)
    results: list[list[dict[str, Any]]] = [[] for _ in range(n_requests)]
    for result in body["results"]:
        k, caller_id = split_namespaced(result[id_field])
        results[k].append({**result, id_field: caller_id})
    rejected: list[list[dict[str, Any]]] = [list(source.rejected) for source in merged.sources]
    for item in body["rejected"]:
        k = bisect.bisect_right(merged.offsets, item["index"]) - 1
        _, caller_id = split_namespaced(item[id_field])
        rejected[k].append({**item, "index": item["index"] - merged.offsets[k], id_field: caller_id})
    shared = {key: value for key, value in body.items() if key not in ("results", "rejected")}
    return [
        {**shared, "results": results[k], "rejected": sorted(rejected[k], key=lambda item: item["index"])}
        for k in range(n_requests)
    ]


@dataclass
class ScoringJob:
    """One request waiting to be scored.

    Attributes:
        key: Requests are merged only when their keys are equal (endpoint, model set, as_of, ...).
        n_records: Records the request sent.
        payload: Whatever the scoring function needs for this request.
        future: Receives the request's answer (or its exception).
        scored_with: Number of requests in the build that scored this one (itself included), set
            when a scoring thread takes it.
    """

    key: Hashable
    n_records: int
    payload: Any
    future: Future = field(default_factory=Future)
    scored_with: int = 0


class RequestCoalescer:
    """A few scoring threads that each take every compatible waiting request and score them at once.

    Args:
        score_jobs: Scores a list of jobs with equal keys and returns one answer per job, in order.
        threads: Scoring threads (requests scored side by side).
        max_records: A thread takes waiting requests into one build while the records stay within this
            many; a larger request is still scored, alone. 0 scores every request alone.
        linger_s: Longest wait for more requests after a merged build (see ``_take``); 0 never waits.
    """

    def __init__(
        self,
        score_jobs: Callable[[list[ScoringJob]], list[Any]],
        threads: int,
        max_records: int,
        linger_s: float = 0.0,
    ) -> None:
        self.score_jobs = score_jobs
        self.linger_s = linger_s
        self._last_build_size = 0
        self._previous_build_size = 0
        self.threads = threads
        self.max_records = max_records
        self._queue: collections.deque[ScoringJob] = collections.deque()
        self._condition = threading.Condition()
        self._workers: list[threading.Thread] = []
        self._closed = False
        self.builds = 0
        self.requests = 0

    def submit(self, key: Hashable, n_records: int, payload: Any) -> ScoringJob:
        """Queue one request; the returned job's ``future`` gets its answer."""
        job = ScoringJob(key=key, n_records=n_records, payload=payload)
        with self._condition:
            if self._closed:
                raise RuntimeError("the request coalescer is shut down")
            # Threads start on first use (not in __init__): a server may fork after building the service.
            if not self._workers:
                for number in range(self.threads):
                    worker = threading.Thread(target=self._work, name=f"revcast-score-{number}", daemon=True)
                    worker.start()
                    self._workers.append(worker)
            self._queue.append(job)
            self._condition.notify()
        return job

    def shutdown(self) -> None:
        """Let the threads finish what is queued, then stop them."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        for worker in self._workers:
            worker.join()

    def _gather(self, head: ScoringJob, jobs: list[ScoringJob], total: int) -> int:
        """Move every queued job with ``head``'s key into ``jobs`` while the records fit; new total."""
        left: collections.deque[ScoringJob] = collections.deque()
        while self._queue:
            job = self._queue.popleft()
            if job.key == head.key and total + job.n_records <= self.max_records:
                jobs.append(job)
                total += job.n_records
            else:
                left.append(job)
        self._queue = left
        return total

    def _take(self) -> list[ScoringJob] | None:
        """The oldest waiting job plus every later one with its key, within max_records (None: stop).

        When the previous build merged several requests, clients are evidently sending concurrently
        and more of them are on their way (those just answered send their next request): the thread
        lingers up to ``linger_s`` until as many are waiting as the last two builds held, rather than
        pay a whole build's fixed cost for part of them. Without it, concurrent clients settle into
        alternating half-size builds (e.g. 4 + 4 requests for 8 clients: twice the builds). A service
        called one request at a time never lingers.
        """
        with self._condition:
            while not self._queue:
                if self._closed:
                    return None
                self._condition.wait()
            head = self._queue.popleft()
            jobs = [head]
            total = self._gather(head, jobs, head.n_records)
            target = self._last_build_size + self._previous_build_size
            if self.linger_s > 0 and self._last_build_size > 1 and len(jobs) < target:
                deadline = time.monotonic() + self.linger_s
                while len(jobs) < target and total < self.max_records and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._condition.wait(remaining)
                    total = self._gather(head, jobs, total)
            self._previous_build_size, self._last_build_size = self._last_build_size, len(jobs)
            for job in jobs:
                job.scored_with = len(jobs)
            self.builds += 1
            self.requests += len(jobs)
            return jobs

    def _work(self) -> None:
        while (jobs := self._take()) is not None:
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            if jobs:
                self._run(jobs)

    def _run(self, jobs: list[ScoringJob]) -> None:
        try:
            answers = self.score_jobs(jobs)
        except Exception as exc:  # a merged build failed: score each request alone, to fail only its own
            if len(jobs) == 1:
                jobs[0].future.set_exception(exc)
                return
            for job in jobs:
                self._run([job])
            return
        for job, answer in zip(jobs, answers, strict=True):
            job.future.set_result(answer)
