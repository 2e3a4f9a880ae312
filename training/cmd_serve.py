"""`revcast serve`: start the BentoML prediction service (serving/service.py) on a host and port."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import typer

SERVICE_IMPORT_PATH = "serving.service:RevcastService"


def serve_command(host: str, port: int) -> list[str]:
    """The `bentoml serve` command line that runs the service."""
    return [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        SERVICE_IMPORT_PATH,
        "--host",
        host,
        "--port",
        str(port),
    ]


def cmd_serve(host: str, port: int) -> None:
    """Start the prediction service in the foreground until interrupted.

    The configuration (serving/serving.yaml plus ``REVCAST_*`` and ``MLFLOW_TRACKING_URI`` environment
    variables) is checked first so that a bad value ends the command with a one-line reason. When
    ``REVCAST_API_TOKEN`` is not set, a random token is generated for this run and printed once.

    Args:
        host: Interface to bind (``127.0.0.1`` by default; ``0.0.0.0`` exposes it on the network).
        port: TCP port.

    Raises:
        ValueError: Bad port or configuration (the CLI prints the reason and exits non-zero).
    """
    from serving.config import config_from_env
    from serving.registry import tracking_uri

    if not 0 < port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {port}")
    env = dict(os.environ)
    generated_token = not env.get("REVCAST_API_TOKEN")
    if generated_token:
        env["REVCAST_API_TOKEN"] = secrets.token_urlsafe(24)
    # The service and the CLI must look at the same registry: pin the URI the CLI would use.
    env.setdefault("MLFLOW_TRACKING_URI", tracking_uri())
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # One OpenMP thread per LightGBM call (why: serving/service.py, RevcastService.__init__).
    env.setdefault("OMP_NUM_THREADS", "1")
    config = config_from_env(env)
    if generated_token:
        typer.echo(
            f"REVCAST_API_TOKEN was not set; this run's token is: {env['REVCAST_API_TOKEN']}", err=True
        )
    typer.echo(
        f"serving {config.model_alias} models from {env['MLFLOW_TRACKING_URI']} on http://{host}:{port} "
        f"(API docs: /v1/docs, health: /livez /readyz)",
        err=True,
    )
    working_dir = Path(__file__).resolve().parents[1]
    try:
        completed = subprocess.run(serve_command(host, port), env=env, cwd=working_dir, check=False)
    except KeyboardInterrupt:
        return
    if completed.returncode not in (0, -2, 130):
        raise typer.Exit(completed.returncode)
