"""Requests scored together in one feature build get exactly the answers they get alone."""

from __future__ import annotations

import copy
import math
import threading
import time

import pandas as pd
import pytest

from serving.coalesce import RequestCoalescer, ScoringJob, merge_batches, split_body
from serving.config import config_from_env
from serving.requests import prepare_accounts
from serving.service import LoadedModel, ModelSet, ScoringRequest, score_request_jobs
from serving.track_records import TrackRecordSource
from tests.serving.crm import EXPORT, account_records, opportunity_records


@pytest.fixture(scope="module")
def models(crm_tables: dict) -> ModelSet:
    from tests.serving.models import train_bundle, training_frames

    frames = training_frames(crm_tables["tables"])
    bundles = {kind: train_bundle(kind, frames) for kind in ("win", "amount", "churn")}
    return ModelSet(
        models={kind: LoadedModel(bundle, {"version": "7"}) for kind, bundle in bundles.items()}, warmed=True
    )


def _jobs(requests: list[ScoringRequest]) -> list[ScoringJob]:
    return [ScoringJob(key=r.merge_key(), n_records=len(r.records), payload=r) for r in requests]


def _alone(requests: list[ScoringRequest]) -> list[dict]:
    return [score_request_jobs(_jobs([request]))[0] for request in requests]


def _same(a: object, b: object, rel: float) -> bool:
    """Equal, or (numbers) equal up to summation order: the merged build sums a group's rows in
    another order, which moves a float's last bits (e.g. a usage slope by 1e-16)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, rel) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=rel, abs_tol=rel)
    return a == b


def _assert_same_bodies(merged: list[dict], alone: list[dict]) -> None:
    assert len(merged) == len(alone)
    for together, separate in zip(merged, alone, strict=True):
        assert together["rejected"] == separate["rejected"]
        assert {k: v for k, v in together.items() if k != "results"} == {
            k: v for k, v in separate.items() if k != "results"
        }
        assert len(together["results"]) == len(separate["results"])
        for a, b in zip(together["results"], separate["results"], strict=True):
            assert _same(a["features"], b["features"], 1e-9), (a["features"], b["features"])
            # Outputs are rounded to 6 decimals: a last-bit difference may move the 6th by one.
            assert _same(
                {k: v for k, v in a.items() if k != "features"},
                {k: v for k, v in b.items() if k != "features"},
                2e-6,
            ), (a, b)


def _renamed(records: list[dict], opportunity_ids: list[str], account_ids: list[str]) -> list[dict]:
    """Other deals under the given ids: same ids as another request, different facts."""
    out = copy.deepcopy(records)
    for record, opp_id, account_id in zip(out, opportunity_ids, account_ids, strict=True):
        record["opportunity_id"] = opp_id
        record["account_id"] = account_id
        if "account" in record:
            record["account"]["account_id"] = account_id
        for activity in record.get("activities", []):
            activity["activity_id"] = f"{opp_id}-{activity['activity_id']}"
            if "opportunity_id" in activity:
                activity["opportunity_id"] = opp_id
    return out


@pytest.mark.parametrize("with_dataset", [False, True], ids=["records-only", "dataset-track-records"])
def test_merged_opportunity_requests_equal_separate_ones(
    crm_tables: dict, models: ModelSet, with_dataset: bool
) -> None:
    # With a dataset, each request's deals read the CRM's track records and other open deals under
    # their own request's ids (a merged build prefixes ids per request).
    tables = crm_tables["tables"]
    track_records = TrackRecordSource(tables, EXPORT) if with_dataset else None
    opps = tables["opportunities"]
    open_ids = opps[(opps["created_at"] <= EXPORT) & opps["closed_at"].isna()]["opportunity_id"].tolist()
    assert len(open_ids) >= 16
    first = opportunity_records(tables, open_ids[:6], EXPORT)
    other = opportunity_records(tables, open_ids[6:12], EXPORT)
    # Request 2 reuses request 1's deal, account and owner ids for other deals: merged, they must not
    # share history, activities, accounts or per-owner/per-account open-deal counts.
    colliding = _renamed(other, [r["opportunity_id"] for r in first], [r["account_id"] for r in first])
    for record in colliding:
        record["owner_id"] = first[0]["owner_id"]
    invalid = copy.deepcopy(first[:2]) + [{"opportunity_id": "bad", "stage": 3}]
    invalid[0]["created_at"] = "2099-01-01T00:00:00"
    config = config_from_env({})
    requests = [
        ScoringRequest("opportunities", models, records, EXPORT, config, True, track_records)
        for records in (first, colliding, invalid, opportunity_records(tables, open_ids[12:16], EXPORT))
    ]
    merged = score_request_jobs(_jobs(requests))
    _assert_same_bodies(merged, _alone(requests))
    assert [len(body["results"]) for body in merged] == [6, 6, 1, 4], merged[1]["rejected"]
    assert [item["index"] for item in merged[2]["rejected"]] == [0, 2]
    # The collision is real: the same ids score differently in the two requests.
    assert merged[0]["results"][0]["opportunity_id"] == merged[1]["results"][0]["opportunity_id"]
    assert merged[0]["results"][0]["features"] != merged[1]["results"][0]["features"]
    if with_dataset:
        assert all(body["track_records"] == track_records.label for body in merged)
        # the CRM's other open deals of the rep count in every request (not only the request's own)
        assert merged[3]["results"][0]["features"]["rep_open_deals"] > 1
        assert merged[3]["results"][0]["features"]["rep_closed_deals_prior"] > 0


def test_merged_account_requests_equal_separate_ones(crm_tables: dict, models: ModelSet) -> None:
    tables = crm_tables["tables"]
    subs = tables["subscriptions"]
    active = subs[(subs["start_date"] <= EXPORT) & (subs["end_date"].isna() | (subs["end_date"] > EXPORT))]
    account_ids = sorted(set(active["account_id"]))
    assert len(account_ids) >= 8
    first = account_records(tables, account_ids[:4], EXPORT)
    second = account_records(tables, account_ids[4:8], EXPORT)
    for record, target in zip(second, first, strict=True):  # same account ids, other customers
        record["account_id"] = target["account_id"]
    # An account whose subscriptions all ended before as_of is rejected by the build, not by validation:
    # its index must come back in its own request's numbering.
    lapsed = copy.deepcopy(first[:1]) + copy.deepcopy(first[1:3])
    lapsed[0]["subscriptions"] = [
        {**sub, "end_date": "2020-01-01", "start_date": "2019-01-01"} for sub in lapsed[0]["subscriptions"]
    ]
    lapsed[0]["usage"], lapsed[0]["opportunities"] = [], []
    assert prepare_accounts(lapsed, EXPORT).accepted, "the lapsed account passes validation"
    config = config_from_env({})
    requests = [
        ScoringRequest("accounts", models, records, EXPORT, config, True)
        for records in (first, second, lapsed)
    ]
    merged = score_request_jobs(_jobs(requests))
    _assert_same_bodies(merged, _alone(requests))
    assert [item["index"] for item in merged[2]["rejected"]] == [0]
    assert "no subscription is active" in merged[2]["rejected"][0]["errors"][0]
    assert merged[0]["results"][0]["features"] != merged[1]["results"][0]["features"]


def test_merge_refuses_different_as_of(crm_tables: dict) -> None:
    tables = crm_tables["tables"]
    records = account_records(tables, sorted(set(tables["subscriptions"]["account_id"]))[:1], EXPORT)
    batches = [prepare_accounts(records, EXPORT), prepare_accounts(records, EXPORT + pd.Timedelta(days=1))]
    with pytest.raises(ValueError, match="different as_of"):
        merge_batches(batches, [1, 1])
    merged = merge_batches([batches[0], batches[0]], [1, 1])
    ids = set(merged.batch.tables["subscriptions"]["account_id"])
    assert len(ids) == 2 and all("\x1f" in value for value in ids)
    body = {"model": "churn", "results": [], "rejected": []}
    assert [b["results"] for b in split_body(body, merged, "account_id")] == [[], []]


class RecordingScorer:
    """Records each build's payloads; a build starting with "first" blocks until ``release`` is set,
    and one holding "boom" fails."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.builds: list[list[str]] = []

    def __call__(self, jobs: list[ScoringJob]) -> list[str]:
        self.builds.append([job.payload for job in jobs])
        if jobs[0].payload == "first":
            self.release.wait(10)
        if any(job.payload == "boom" for job in jobs):
            raise RuntimeError("bad request")
        return [f"answer {job.payload}" for job in jobs]


def test_coalescer_merges_waiting_jobs_by_key_within_the_record_limit() -> None:
    score = RecordingScorer()
    release, builds = score.release, score.builds
    coalescer = RequestCoalescer(score, threads=1, max_records=5)
    futures = {"first": coalescer.submit("a", 1, "first").future}
    deadline = time.monotonic() + 10
    while not builds and time.monotonic() < deadline:  # the only thread is now busy with "first"
        time.sleep(0.01)
    for payload, key, n in [("a1", "a", 2), ("b1", "b", 1), ("a2", "a", 2), ("a3", "a", 2), ("boom", "b", 1)]:
        futures[payload] = coalescer.submit(key, n, payload).future
    release.set()
    assert futures["a1"].result(10) == "answer a1"
    assert futures["a3"].result(10) == "answer a3"
    assert futures["b1"].result(10) == "answer b1"
    with pytest.raises(RuntimeError, match="bad request"):
        futures["boom"].result(10)
    coalescer.shutdown()
    # a1+a2 fill the 5-record limit, a3 waits; b1 and boom merge, fail together, then run alone.
    assert builds == [["first"], ["a1", "a2"], ["b1", "boom"], ["b1"], ["boom"], ["a3"]]
    assert coalescer.requests == 6 and coalescer.builds == 4


def test_coalescer_lingers_only_after_a_merged_build() -> None:
    score = RecordingScorer()
    release, builds = score.release, score.builds
    coalescer = RequestCoalescer(score, threads=1, max_records=100, linger_s=1.0)
    # A lone request after a lone build: scored at once, however long the linger allowance.
    started = time.monotonic()
    assert coalescer.submit("a", 1, "alone").future.result(10) == "answer alone"
    assert time.monotonic() - started < 0.9
    first = coalescer.submit("a", 1, "first")
    deadline = time.monotonic() + 10
    while len(builds) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    wave = [coalescer.submit("a", 1, f"w{i}") for i in range(4)]
    release.set()
    first.future.result(10)
    for job in wave:
        job.future.result(10)
    # The wave of 4 was merged; the next lone request lingers for the rest of its wave.
    late = coalescer.submit("a", 1, "late")
    time.sleep(0.2)
    later = coalescer.submit("a", 1, "later")
    assert later.future.result(10) == "answer later" and late.future.result(10) == "answer late"
    coalescer.shutdown()
    assert builds == [["alone"], ["first"], ["w0", "w1", "w2", "w3"], ["late", "later"]]
    assert late.scored_with == 2


def test_requests_without_as_of_merge_and_share_the_time_they_are_scored(
    crm_tables: dict, models: ModelSet
) -> None:
    tables = crm_tables["tables"]
    opps = tables["opportunities"]
    open_ids = opps[(opps["created_at"] <= EXPORT) & opps["closed_at"].isna()]["opportunity_id"].tolist()
    config = config_from_env({})
    requests = [
        ScoringRequest("opportunities", models, opportunity_records(tables, ids, EXPORT), None, config, True)
        for ids in (open_ids[:2], open_ids[2:5])
    ]
    assert requests[0].merge_key() == requests[1].merge_key()
    before = pd.Timestamp.now(tz="UTC").tz_localize(None)
    merged = score_request_jobs(_jobs(requests))
    after = pd.Timestamp.now(tz="UTC").tz_localize(None)
    as_of = pd.Timestamp(merged[0]["as_of"])
    assert merged[1]["as_of"] == merged[0]["as_of"]
    assert before <= as_of <= after, "no as_of: scored as of the time the build ran"
    assert [len(body["results"]) for body in merged] == [2, 3]
    # Exactly the answers of the same requests naming that time.
    named = [ScoringRequest(r.endpoint, models, r.records, as_of, config, True) for r in requests]
    _assert_same_bodies(merged, _alone(named))


def test_the_configured_closed_stages_apply_alone_and_merged(crm_tables: dict, models: ModelSet) -> None:
    tables = crm_tables["tables"]
    opps = tables["opportunities"]
    open_ids = opps[(opps["created_at"] <= EXPORT) & opps["closed_at"].isna()]["opportunity_id"].tolist()
    records = opportunity_records(tables, open_ids[:4], EXPORT)
    records[1]["stage"] = "Contract Signed"  # this CRM's closed stage: not in the default vocabulary
    config = config_from_env({"REVCAST_CLOSED_STAGES": "contract signed"})
    requests = [
        ScoringRequest("opportunities", models, records[:2], EXPORT, config, False),
        ScoringRequest("opportunities", models, records[2:], EXPORT, config, False),
    ]
    for bodies in (_alone(requests), score_request_jobs(_jobs(requests))):
        assert [r["opportunity_id"] for r in bodies[0]["rejected"]] == [open_ids[1]]
        assert "stage" in bodies[0]["rejected"][0]["errors"][0]
        assert [len(body["results"]) for body in bodies] == [1, 2]
    default = ScoringRequest("opportunities", models, records[:2], EXPORT, config_from_env({}), False)
    assert len(_alone([default])[0]["results"]) == 2  # without the setting it is an open deal's stage
