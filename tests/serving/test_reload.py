"""Reload: a newly promoted champion is swapped in while requests keep flowing; a broken one is refused."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from serving.schemas import EXAMPLE_OPPORTUNITY_REQUEST

pytestmark = pytest.mark.server


def test_reload_swaps_the_champion_without_failing_requests(service, registry) -> None:
    from tests.serving.models import register_bundle, train_bundle

    old_version = registry.versions["win"]
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()
    swapped = threading.Event()
    after_swap = [0]

    def keep_scoring() -> None:
        with httpx.Client(base_url=service.url, timeout=60) as http:
            while not stop.is_set():
                response = http.post(
                    "/v1/opportunities/score", json=EXAMPLE_OPPORTUNITY_REQUEST, headers=service.headers()
                )
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.append(response.json()["model_version"])
                if swapped.is_set():
                    after_swap[0] += 1
                    if after_swap[0] >= 3:
                        return

    client_thread = threading.Thread(target=keep_scoring)
    client_thread.start()
    try:
        new_bundle = train_bundle("win", registry.frames, n_trees=9, seed=5)
        assert new_bundle.sha256 != registry.bundles["win"].sha256
        new_version = register_bundle(new_bundle, "win", registry.uri)  # moves `champion`
        with httpx.Client(base_url=service.url, timeout=120) as http:
            response = http.post("/v1/admin/reload", headers=service.headers())
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["reload"]["win"] == f"swapped {old_version} -> {new_version}"
        assert body["reload"]["churn"] == "unchanged"
        assert body["models"]["win"]["version"] == new_version
        swapped.set()
        client_thread.join(timeout=120)
    finally:
        stop.set()
        client_thread.join(timeout=60)
    registry.versions["win"] = new_version
    registry.bundles["win"] = new_bundle
    assert statuses and set(statuses) == {200}, statuses
    assert versions[0] == old_version or old_version in versions
    assert versions[-1] == new_version


def test_reload_keeps_the_old_model_when_the_new_one_fails(service, registry) -> None:
    from serving.registry import mlflow_client, registered_name
    from tests.serving.models import register_bundle, train_bundle

    old_version = registry.versions["churn"]
    broken = train_bundle("churn", registry.frames, n_trees=7, seed=9)
    # Registered with a sha256 tag that does not match its files: the service must refuse it.
    register_bundle(broken, "churn", registry.uri, sha256_tag="0" * 64)
    try:
        with httpx.Client(base_url=service.url, timeout=120) as http:
            response = http.post("/v1/admin/reload", headers=service.headers())
            assert response.status_code == 200, response.text
            outcome = response.json()["reload"]["churn"]
            assert outcome.startswith(f"kept old ({old_version}): BundleIntegrityError"), outcome
            info = http.get("/v1/models", headers=service.headers()).json()
            assert info["models"]["churn"]["version"] == old_version
            assert info["ready"] is True
            assert http.get("/readyz").status_code == 200
    finally:
        mlflow_client(registry.uri).set_registered_model_alias(
            registered_name("churn"), "champion", old_version
        )


def _worker_pids(parent: int) -> list[int]:
    """The BentoML worker processes under the `bentoml serve` process this test session started."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [parent]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            todo.append(child)
            try:
                cmdline = (Path("/proc") / str(child) / "cmdline").read_bytes()
            except OSError:
                continue
            if b"_bentoml_impl.worker.service" in cmdline:
                found.append(child)
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the worker process")
def test_sighup_reloads_the_models(service) -> None:
    workers = _worker_pids(service.process.pid)
    assert workers, "no BentoML worker process found under the service"
    before = service.log.read_text(errors="replace").count('"event":"models_reloaded"')
    for pid in workers:
        os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text = service.log.read_text(errors="replace")
        if text.count('"event":"models_reloaded"') > before:
            break
        time.sleep(0.5)
    lines = [
        json.loads(line) for line in text.splitlines() if line.startswith('{"') and "models_reloaded" in line
    ]
    assert len(lines) > before, "SIGHUP did not trigger a reload"
    assert lines[-1]["outcome"]["win"] == "unchanged"
    with httpx.Client(base_url=service.url, timeout=60) as http:
        assert http.get("/readyz").status_code == 200
