"""`revcast serve` as an operator runs it: warnings for missing champions, and SIGTERM stops the server."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.servers import BIN, free_port, stop, wait_for


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _descendants(pid: int) -> list[int]:
    """Process ids below `pid` (Linux /proc): BentoML's workers run in process groups of their own."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_serve_warns_about_missing_champions_and_stops_on_sigterm(tmp_path: Path) -> None:
    from features.generate import generate_crm

    # A dataset named relative to the operator's directory (the server itself runs from the repo).
    generate_crm(out_dir=tmp_path / "crm", n_accounts=40, seed=3, scale=1.0, fmt="csv")
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'empty-registry.db'}",
        "REVCAST_API_TOKEN": "test-token",
        "REVCAST_DATA_DIR": "crm",
        "BENTOML_DO_NOT_TRACK": "True",
    }
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        # Its own session, like a process manager's child: only the signal sent to its pid may stop it.
        process = subprocess.Popen(
            [str(BIN / "revcast"), "serve", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/livez"
    spawned: list[int] = []
    try:
        wait_for(url, 120, process, log)
        text = log.read_text()
        for model in ("win", "churn"):  # the models /readyz waits for by default
            assert f"warning: revcast-{model} has no 'champion' version (nothing registered)" in text
            assert f"revcast promote {model}" in text
        assert "revcast-amount has no" not in text  # not required for readiness: no warning
        deadline = time.monotonic() + 90
        while True:  # the dataset loads in the background after start-up
            forecast = httpx.get(
                f"http://127.0.0.1:{port}/v1/forecast",
                headers={"Authorization": "Bearer test-token"},
                timeout=60.0,
            )
            if "still loading" not in forecast.text or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert forecast.status_code == 200, forecast.text  # the relative REVCAST_DATA_DIR was found

        spawned = _descendants(process.pid)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        deadline = time.monotonic() + 30
        while _answers(url) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _answers(url), "the service kept answering after SIGTERM to `revcast serve`"
    finally:
        stop(process)
        for pid in spawned:  # whatever outlived it (the failure this test is about)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
