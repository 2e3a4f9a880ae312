"""/metrics stays bounded whatever paths clients ask for, and services on one host keep their metrics apart.

BentoML labels its request metrics with the request path; serving.metrics_labels makes the label the
route template (``other`` for paths no route answers). ``revcast serve`` gives every address its own
BentoML home, where BentoML keeps (and at start-up empties) the files /metrics is read from.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from tests.servers import BIN, free_port, stop, wait_for
from tests.serving.conftest import Registry, start_service
from training.cmd_serve import instance_home

pytestmark = pytest.mark.server

_ENDPOINT = re.compile(r'endpoint="([^"]*)"')


def _samples(http: httpx.Client) -> list[str]:
    """The sample lines (one per series) of the service's /metrics."""
    response = http.get("/metrics")
    assert response.status_code == 200, response.text
    return [line for line in response.text.splitlines() if line and not line.startswith("#")]


def _not_found_count(http: httpx.Client) -> float:
    """Requests the service answered 404, summed over its request counter's series."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in _samples(http)
        if re.match(r"\w+_request_total\{", line) and 'http_response_code="404"' in line
    )


def test_unknown_paths_and_account_pages_do_not_grow_metrics(
    registry: Registry, crm_tables: dict, tmp_path: Path
) -> None:
    # A BentoML home of its own: other tests' services must not empty this one's metrics files.
    server = start_service(
        {
            "MLFLOW_TRACKING_URI": registry.uri,
            "REVCAST_DATA_DIR": str(crm_tables["dir"]),
            "BENTOML_HOME": str(tmp_path / "bentoml"),
        },
        tmp_path,
    )
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert http.get("/v1/openapi.json").status_code == 200  # known routes, once each
            assert http.get("/v1/models").status_code == 401  # no token; still the route's label
            before = _samples(http)
            ids = [uuid.uuid4().hex for _ in range(100)]
            for random_id in ids:
                assert http.get(f"/scan/{random_id}").status_code == 404
                http.get(f"/ui/accounts/{random_id}")  # signed out: a redirect; the route is what counts
            after = _samples(http)
    finally:
        stop(server.process)

    text = "\n".join(after)
    assert not [random_id for random_id in ids if random_id in text], "request paths leaked into labels"
    endpoints = {match.group(1) for line in after for match in _ENDPOINT.finditer(line)}
    assert "/ui/accounts/{account_id:str}" in endpoints
    assert {"/v1/openapi.json", "/v1/models"} <= endpoints
    assert "other" in endpoints
    assert not [e for e in endpoints if e.startswith("/scan")]
    # 200 requests on 200 distinct paths: each raw path would add a counter, a gauge and a histogram
    # (thousands of series); two route labels add a few dozen.
    assert len(after) - len(before) < 100, (len(before), len(after), sorted(endpoints))


def _serve(port: int, env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(BIN / "revcast"), "serve", "--port", str(port)],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_two_services_on_one_host_keep_their_metrics(tmp_path: Path) -> None:
    # Both operators' services share one BentoML home, as two services under one user share ~/bentoml.
    env = {
        **{k: v for k, v in os.environ.items() if k != "REVCAST_DATA_DIR"},
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'empty-registry.db'}",
        "REVCAST_API_TOKEN": "test-token",
        "BENTOML_DO_NOT_TRACK": "True",
        "BENTOML_HOME": str(tmp_path / "bentoml"),
    }
    port_a, port_b = free_port(), free_port()
    while port_b == port_a:
        port_b = free_port()
    home_a, home_b = (instance_home("127.0.0.1", port, env) for port in (port_a, port_b))
    assert home_a != home_b
    url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    a = _serve(port_a, env, tmp_path, tmp_path / "a.log")
    b: subprocess.Popen | None = None
    try:
        wait_for(f"{url_a}/livez", 120, a, tmp_path / "a.log")
        with httpx.Client(base_url=url_a, timeout=30) as http_a:
            for _ in range(25):
                assert http_a.get(f"/scan/{uuid.uuid4().hex}").status_code == 404
            assert _not_found_count(http_a) == 25

            b = _serve(port_b, env, tmp_path, tmp_path / "b.log")
            wait_for(f"{url_b}/livez", 120, b, tmp_path / "b.log")
            with httpx.Client(base_url=url_b, timeout=30) as http_b:
                assert _not_found_count(http_b) == 0  # none of A's requests
            assert _not_found_count(http_a) == 25  # B's start-up left A's metrics alone

            # A second server on A's address is refused before BentoML would empty A's directory.
            again = subprocess.run(
                [str(BIN / "revcast"), "serve", "--port", str(port_a)],
                env=env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert again.returncode != 0
            assert "already in use" in again.stderr + again.stdout
            assert _not_found_count(http_a) == 25
        for home in (home_a, home_b):
            assert any((home / "prometheus_multiproc_dir").iterdir()), f"BentoML did not use {home}"
    finally:
        stop(a)
        if b is not None:
            stop(b)
