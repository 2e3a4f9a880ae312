"""Session fixtures of the serving tests: a synthetic CRM, tiny real models in a real MLflow server on
loopback, and the real service started with `bentoml serve` as a subprocess."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.servers import BIN, MlflowServer, free_port, start_mlflow_server, stop, wait_for
from tests.serving.crm import write_crm_csv

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-token-7f3a"


@pytest.fixture(scope="session")
def crm_tables(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The synthetic CRM, loaded (validated, canonical dtypes) by the real loader."""
    from features.data import load_tables

    directory = write_crm_csv(tmp_path_factory.mktemp("crm") / "data")
    tables, report = load_tables(directory)
    assert report.ok, report.summary_lines()
    return {"dir": directory, "tables": tables}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real `mlflow server` on loopback; it starts while the models are being trained."""
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        stop(server.process)


@dataclass
class Registry:
    """The tiny models registered as champions, plus what is needed to register more."""

    uri: str
    frames: dict
    bundles: dict
    versions: dict


@pytest.fixture(scope="session")
def registry(mlflow_server: MlflowServer, crm_tables: dict) -> Registry:
    """win, amount and churn trained on the synthetic CRM and registered as `champion`."""
    from tests.serving.models import register_bundle, train_bundle, training_frames

    frames = training_frames(crm_tables["tables"])
    bundles = {kind: train_bundle(kind, frames) for kind in ("win", "amount", "churn")}
    uri = mlflow_server.wait_ready()
    versions = {kind: register_bundle(bundle, kind, uri) for kind, bundle in bundles.items()}
    return Registry(uri=uri, frames=frames, bundles=bundles, versions=versions)


@dataclass
class Server:
    """A running service."""

    url: str
    token: str
    log: Path
    process: subprocess.Popen

    def headers(self) -> dict[str, str]:
        """Authorization header for the prediction endpoints."""
        return {"Authorization": f"Bearer {self.token}"}


def start_service(
    env_overrides: dict[str, str],
    workdir: Path,
    timeout_s: float = 180,
    cwd: Path = REPO,
    wait_path: str = "/readyz",
) -> Server:
    """Start `bentoml serve serving.service:RevcastService` on a free loopback port and wait for /readyz.

    ``cwd`` is where the service runs (stores that default to the working directory land there); the
    repository stays importable through PYTHONPATH. ``wait_path="/livez"`` waits only for the process
    to answer (for services that are not meant to become ready).
    """
    port = free_port()
    env = {
        **os.environ,
        "REVCAST_API_TOKEN": TOKEN,
        "PYTHONUNBUFFERED": "1",
        "BENTOML_DO_NOT_TRACK": "True",
        "PYTHONPATH": str(REPO),
    }
    env.update(env_overrides)
    log = workdir / f"service-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                str(BIN / "bentoml"),
                "serve",
                "serving.service:RevcastService",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}{wait_path}", timeout_s, process, log)
    except Exception:
        stop(process)
        raise
    return Server(url=url, token=TOKEN, log=log, process=process)


@pytest.fixture(scope="session")
def service(
    registry: Registry, crm_tables: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The service with the champions loaded and the CRM configured for the forecast."""
    workdir = tmp_path_factory.mktemp("service")
    server = start_service(
        {
            "MLFLOW_TRACKING_URI": registry.uri,
            "REVCAST_DATA_DIR": str(crm_tables["dir"]),
            "REVCAST_MAX_RECORDS": "1500",
            "REVCAST_MAX_BODY_BYTES": str(8 * 1024 * 1024),
        },
        workdir,
    )
    try:
        yield server
    finally:
        stop(server.process)


@pytest.fixture()
def client(service: Server) -> Iterator[httpx.Client]:
    """An HTTP client for the running service (no auth header by default)."""
    with httpx.Client(base_url=service.url, timeout=120) as http:
        yield http
