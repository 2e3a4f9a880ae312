"""What an operator sees from outside, on real servers: reloads reach every worker, an unreachable
registry is named, failed and same-bytes reloads are visible, timeouts and errors carry the usual
shape, a request id and a logged reason."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.schemas import EXAMPLE_OPPORTUNITY_REQUEST
from tests.servers import free_port, stop, wait_for
from tests.serving.conftest import TOKEN, Server, start_service
from tests.serving.test_reload import _worker_pids

pytestmark = pytest.mark.server

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _json_lines(server: Server) -> list[dict]:
    return [
        json.loads(line)
        for line in server.log.read_text(errors="replace").splitlines()
        if line.startswith('{"')
    ]


def _wait_lines(server: Server, match, count: int = 1, timeout_s: float = 30) -> list[dict]:
    """The service's JSON log lines for which ``match(line)`` holds, once there are ``count`` of them."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [line for line in _json_lines(server) if match(line)]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


def _request_line(server: Server, request_id: str) -> dict:
    lines = _wait_lines(server, lambda line: line.get("request_id") == request_id, timeout_s=10)
    assert len(lines) == 1, lines
    return lines[0]


def _score(http: httpx.Client, request_id: str | None = None) -> httpx.Response:
    headers = {**AUTH, "X-Request-ID": request_id} if request_id else AUTH
    return http.post("/v1/opportunities/score", json=EXAMPLE_OPPORTUNITY_REQUEST, headers=headers)


# --------------------------------------------------------------------------- the shared service


@pytest.mark.parametrize(
    ("case", "status", "reason"),
    [
        ("no token", 401, "missing bearer token"),
        ("text body", 415, "Content-Type must be application/json"),
        ("too many records", 413, "more than the limit"),
        ("bad envelope", 422, "unknown field"),
        ("unknown path", 404, "no such endpoint: POST /v1/opportunities/scores"),
        ("bad query", 422, "period"),
    ],
)
def test_error_answers_carry_the_request_id_and_log_the_reason(service, case, status, reason) -> None:
    request_id = f"ops-{case.replace(' ', '-')}"
    headers = {**AUTH, "X-Request-ID": request_id}
    with httpx.Client(base_url=service.url, timeout=60) as http:
        if case == "no token":
            response = http.post(
                "/v1/opportunities/score",
                json=EXAMPLE_OPPORTUNITY_REQUEST,
                headers={"X-Request-ID": request_id},
            )
        elif case == "text body":
            response = http.post("/v1/opportunities/score", content=b"{}", headers=headers)
        elif case == "too many records":
            body = {"opportunities": [EXAMPLE_OPPORTUNITY_REQUEST["opportunities"][0]] * 1501}
            response = http.post("/v1/opportunities/score", json=body, headers=headers)
        elif case == "bad envelope":
            response = http.post(
                "/v1/opportunities/score", json={**EXAMPLE_OPPORTUNITY_REQUEST, "x": 1}, headers=headers
            )
        elif case == "unknown path":
            response = http.post(
                "/v1/opportunities/scores", json=EXAMPLE_OPPORTUNITY_REQUEST, headers=headers
            )
        else:
            response = http.get("/v1/forecast", params={"period": "decade"}, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id") == request_id
    body = response.json()
    assert set(body) == {"error", "field", "details"} and reason in body["error"], body
    line = _request_line(service, request_id)
    assert line["status"] == status and reason in line["reason"], line


def test_the_same_bytes_promoted_again_are_served_under_the_new_version(service, registry) -> None:
    from tests.serving.models import register_bundle

    old_version = registry.versions["win"]
    new_version = register_bundle(registry.bundles["win"], "win", registry.uri)  # same bytes, next version
    assert new_version != old_version
    with httpx.Client(base_url=service.url, timeout=120) as http:
        reload = http.post("/v1/admin/reload", headers=AUTH)
        assert reload.status_code == 200, reload.text
        registry.versions["win"] = new_version
        assert reload.json()["reload"]["win"] == f"swapped {old_version} -> {new_version} (same bundle bytes)"
        assert _score(http).json()["model_version"] == new_version
        info = http.get("/v1/models", headers=AUTH).json()["models"]["win"]
        assert info["version"] == new_version and info["alias_differs"] is False
        metrics = http.get("/metrics").text
    gauge = [
        line for line in metrics.splitlines() if line.startswith("revcast_model_version") and '"win"' in line
    ]
    assert gauge and float(gauge[0].rsplit(" ", 1)[1]) == float(new_version), gauge


def test_a_failed_reload_shows_its_error_and_the_version_the_alias_holds(service, registry) -> None:
    from serving.registry import mlflow_client, registered_name
    from tests.serving.models import register_bundle, train_bundle

    old_version = registry.versions["churn"]
    broken = train_bundle("churn", registry.frames, n_trees=6, seed=11)
    broken_version = register_bundle(broken, "churn", registry.uri, sha256_tag="f" * 64)
    try:
        with httpx.Client(base_url=service.url, timeout=120) as http:
            reload = http.post("/v1/admin/reload", headers=AUTH)
            assert reload.status_code == 200, reload.text
            info = http.get("/v1/models", headers=AUTH).json()["models"]["churn"]
    finally:
        mlflow_client(registry.uri).set_registered_model_alias(
            registered_name("churn"), "champion", old_version
        )
    assert info["version"] == old_version and info["loaded"]
    assert info["alias_version"] == broken_version and info["alias_differs"] is True
    last = info["last_load"]
    assert last["outcome"].startswith(f"kept old ({old_version}): BundleIntegrityError")
    assert last["error"].startswith("BundleIntegrityError") and "f" * 64 in last["error"]
    warnings = _wait_lines(
        service,
        lambda line: line.get("event") == "model_load_failed" and line.get("alias_version") == broken_version,
    )
    assert warnings and warnings[-1]["level"] == "WARNING"
    assert warnings[-1]["error"] == last["error"] and warnings[-1]["served_version"] == old_version


# --------------------------------------------------------------------------- two workers


@pytest.fixture(scope="module")
def two_workers(registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_service(
        {"MLFLOW_TRACKING_URI": registry.uri, "REVCAST_WORKERS": "2"}, tmp_path_factory.mktemp("two")
    )
    try:
        yield server
    finally:
        stop(server.process)


def _served_versions(server: Server, n: int = 24) -> set[str]:
    # New connections each time: a kept-alive connection would stay with one worker.
    versions = set()
    for _ in range(n):
        with httpx.Client(base_url=server.url, timeout=60) as http:
            response = _score(http)
            assert response.status_code == 200, response.text
            versions.add(response.json()["model_version"])
    return versions


def _promote_new_win(registry, seed: int) -> str:
    from tests.serving.models import register_bundle, train_bundle

    bundle = train_bundle("win", registry.frames, n_trees=8, seed=seed)
    return register_bundle(bundle, "win", registry.uri)


def test_admin_reload_reaches_every_worker(two_workers, registry) -> None:
    from serving.registry import mlflow_client, registered_name

    assert len(_worker_pids(two_workers.process.pid)) == 2
    old_version = registry.versions["win"]
    assert _served_versions(two_workers) == {old_version}
    new_version = _promote_new_win(registry, seed=21)
    try:
        with httpx.Client(base_url=two_workers.url, timeout=120) as http:
            reload = http.post("/v1/admin/reload", headers=AUTH)
        assert reload.status_code == 200, reload.text
        body = reload.json()
        assert body["reload"]["win"] == f"swapped {old_version} -> {new_version}"
        assert body["workers"] == 2 and "other 1 worker(s)" in body["note"]
        followed = _wait_lines(
            two_workers,
            lambda line: line.get("event") == "models_reloaded" and line.get("source") == "signal",
        )
        assert followed and followed[-1]["versions"]["win"] == new_version, followed
        admin = [line for line in _json_lines(two_workers) if line.get("source") == "admin"]
        assert admin and admin[-1]["pid"] != followed[-1]["pid"]
        assert _served_versions(two_workers) == {new_version}
    finally:
        mlflow_client(registry.uri).set_registered_model_alias(
            registered_name("win"), "champion", old_version
        )


def test_sighup_to_one_worker_reaches_every_worker(two_workers, registry) -> None:
    from serving.registry import mlflow_client, registered_name

    old_version = registry.versions["win"]
    new_version = _promote_new_win(registry, seed=23)
    workers = _worker_pids(two_workers.process.pid)
    try:
        os.kill(workers[0], signal.SIGHUP)
        hup = _wait_lines(
            two_workers,
            lambda line: (
                line.get("source") == "sighup" and line.get("versions", {}).get("win") == new_version
            ),
        )
        followed = _wait_lines(
            two_workers,
            lambda line: (
                line.get("source") == "signal" and line.get("versions", {}).get("win") == new_version
            ),
        )
        assert hup and hup[-1]["pid"] == workers[0]
        assert followed and followed[-1]["pid"] == workers[1]
        assert _served_versions(two_workers) == {new_version}
    finally:
        mlflow_client(registry.uri).set_registered_model_alias(
            registered_name("win"), "champion", old_version
        )


# --------------------------------------------------------------------------- registry unreachable


def _start_live(env_overrides: dict[str, str], workdir: Path) -> Server:
    """The service started like conftest.start_service, waited for on /livez (it will not be ready)."""
    return start_service(env_overrides, workdir, wait_path="/livez")


def _forward(listen_port: int, target: str) -> socket.socket:
    """Forward TCP connections from a loopback port to ``target`` (``http://host:port``); close() stops it."""
    host, port = target.removeprefix("http://").rsplit(":", 1)
    listener = socket.create_server(("127.0.0.1", listen_port))

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection((host, int(port)))
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener


def test_an_unreachable_registry_is_named_and_reload_answers_with_the_reason(registry, tmp_path) -> None:
    port = free_port()  # nothing listens there until the forwarder below starts
    uri = f"http://127.0.0.1:{port}"
    server = _start_live({"MLFLOW_TRACKING_URI": uri}, tmp_path)
    forwarder = None
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                info = http.get("/v1/models", headers=AUTH).json()
                if info["models"]["win"]["error"]:
                    break
                time.sleep(0.5)
            win = info["models"]["win"]
            assert not info["ready"] and not win["loaded"]
            assert win["error"].startswith("RegistryUnavailableError")
            assert uri in win["error"] and "did not answer" in win["error"], win
            assert "train it" not in win["error"]
            reload = http.post("/v1/admin/reload", headers=AUTH)
            assert reload.status_code == 200, reload.text
            assert reload.json()["reload"]["win"].startswith("not loaded: RegistryUnavailableError")
            scored = http.post(
                "/v1/opportunities/score",
                json=EXAMPLE_OPPORTUNITY_REQUEST,
                headers={**AUTH, "X-Request-ID": "ops-unready"},
            )
            assert http.get("/readyz").status_code != 200
            assert scored.status_code == 503 and scored.headers["x-request-id"] == "ops-unready"
            line = _request_line(server, "ops-unready")
            assert line["status"] == 503 and "RegistryUnavailableError" in line["reason"]
            # The registry comes back: the service retries on its own and becomes ready.
            forwarder = _forward(port, registry.uri)
            wait_for(f"{server.url}/readyz", 120, server.process, server.log)
            info = http.get("/v1/models", headers=AUTH).json()
        assert info["ready"] and info["models"]["win"]["version"] == registry.versions["win"]
        assert _wait_lines(server, lambda line: line.get("source") == "retry" and line.get("versions"))
    finally:
        stop(server.process)
        if forwarder is not None:
            forwarder.close()


# --------------------------------------------------------------------------- request timeout


def test_a_timed_out_request_answers_504_in_the_error_shape_and_logs_504(registry, tmp_path) -> None:
    server = start_service(
        {"MLFLOW_TRACKING_URI": registry.uri, "REVCAST_REQUEST_TIMEOUT_S": "0.5"}, tmp_path
    )

    def slow_body() -> Iterator[bytes]:
        yield b'{"opportunities": ['
        time.sleep(2.0)  # the body is still arriving when the timeout is due
        yield json.dumps(EXAMPLE_OPPORTUNITY_REQUEST["opportunities"][0]).encode() + b"]}"

    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            response = http.post(
                "/v1/opportunities/score",
                content=slow_body(),
                headers={**AUTH, "Content-Type": "application/json", "X-Request-ID": "ops-slow"},
            )
        assert response.status_code == 504, response.text
        body = response.json()
        assert set(body) == {"error", "field", "details"} and "REVCAST_REQUEST_TIMEOUT_S" in body["error"]
        assert response.headers["x-request-id"] == "ops-slow"
        line = _request_line(server, "ops-slow")
        assert line["status"] == 504 and "0.5 s" in line["reason"], line
    finally:
        stop(server.process)
