"""Real server processes on loopback for the tests and benchmarks: ports, readiness, shutdown, mlflow.

Shared by tests/model, tests/serving, tests/ui and benchmarks/serving.py so that there is one way to
start and stop a real `mlflow server`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    url: str, timeout_s: float, process: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    """Poll ``url`` until it answers 200; fail with the process log when it dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"process exited with {process.returncode} before {url} was ready:\n{tail}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"{url} not ready after {timeout_s} s:\n{tail}")


def stop(process: subprocess.Popen) -> None:
    """Terminate a process group started by these fixtures (and only that group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@dataclass
class MlflowServer:
    """A `mlflow server` process on loopback (started, maybe not ready yet)."""

    uri: str
    process: subprocess.Popen
    log: Path

    def wait_ready(self, timeout_s: float = 300) -> str:
        """Block until /health answers; return the tracking URI."""
        wait_for(f"{self.uri}/health", timeout_s, self.process, self.log)
        return self.uri


def start_mlflow_server(root: Path) -> MlflowServer:
    """Start a real `mlflow server` (SQLite store, proxied artifacts under ``root``) without waiting."""
    port = free_port()
    log = root / "mlflow-server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{root / 'mlflow.db'}",
                "--artifacts-destination",
                str(root / "artifacts"),
            ],
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return MlflowServer(uri=f"http://127.0.0.1:{port}", process=process, log=log)
