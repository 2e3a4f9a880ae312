"""Fixtures of the web-page tests: the serving tests' real MLflow server and tiny champions, a real
`revcast score` run (several dates) writing the scores store, the real service (`bentoml serve`) with
the page mounted under /ui, and headless Chromium driven by Playwright.

The service runs with its working directory in a temporary folder: with a remote tracking server the
scores store lives in the working directory (``scores.db``), exactly where `revcast score` run from
that folder wrote it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# The serving tests' session fixtures (CRM, MLflow server, registered champions) are reused by name;
# the star import follows their renames, the explicit one names what this module calls itself.
from tests.serving.conftest import *  # noqa: F403
from tests.serving.conftest import BIN, TOKEN, Registry, start_service, stop
from tests.ui.crm_extras import write_ui_crm

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "ui"
#: Scoring dates: the export is 2025-12-29 08:30; score drops compare with the latest run >= 7 days
#: older (2025-12-01), not with the run just before (2025-12-24).
ACCOUNT_DATES = ("2025-12-01", None)
DEAL_DATES = ("2025-12-01", "2025-12-24", None)


@dataclass
class UiService:
    """The running service, where its stores are, and the CRM it serves."""

    url: str
    token: str
    workdir: Path
    data_dir: Path
    scores_db: Path
    actions_db: Path
    log: Path
    process: subprocess.Popen


def _revcast(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        [str(BIN / "revcast"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"revcast {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="session")
def ui_service(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiService]:
    """Score deals and accounts with `revcast score` at several dates, then serve the page."""
    workdir = tmp_path_factory.mktemp("ui")
    data_dir = write_ui_crm(workdir / "data")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registry.uri,
        "REVCAST_API_TOKEN": TOKEN,
        "PYTHONUNBUFFERED": "1",
        "BENTOML_DO_NOT_TRACK": "True",
    }
    for i, as_of in enumerate(ACCOUNT_DATES):
        extra = ["--as-of", as_of] if as_of else []
        _revcast(
            ["score", "accounts", "--data", str(data_dir), "--out", f"accounts-{i}.csv", *extra], workdir, env
        )
    for i, as_of in enumerate(DEAL_DATES):
        extra = ["--as-of", as_of] if as_of else []
        _revcast(
            ["score", "opportunities", "--data", str(data_dir), "--out", f"deals-{i}.csv", *extra],
            workdir,
            env,
        )
    scores_db = workdir / "scores.db"
    assert scores_db.exists(), f"revcast score did not write the scores store in {workdir}"
    actions_db = workdir / "actions-store.db"
    server = start_service(
        {
            "MLFLOW_TRACKING_URI": registry.uri,
            "REVCAST_DATA_DIR": str(data_dir),
            "REVCAST_UI_DB_URL": f"sqlite:///{actions_db}",
        },
        workdir,
        cwd=workdir,
    )
    try:
        yield UiService(
            server.url, TOKEN, workdir, data_dir, scores_db, actions_db, server.log, server.process
        )
    finally:
        stop(server.process)


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Headless Debian Chromium (never a downloaded one); skipped when it is not installed."""
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run installs it in CI)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (dev extra) is not installed")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go (git-ignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
