"""`revcast serve`: start the BentoML prediction service (serving/service.py) on a host and port."""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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


def instance_home(host: str, port: int, env: Mapping[str, str]) -> Path:
    """BentoML's home directory for the server listening on ``host:port``.

    BentoML keeps the Prometheus files that ``/metrics`` reads in
    ``$BENTOML_HOME/prometheus_multiproc_dir`` (it overrides ``PROMETHEUS_MULTIPROC_DIR`` with that)
    and empties the directory when a server starts, so two services sharing a home would wipe and
    mix each other's metrics. Each address gets a home of its own, under the operator's ``BENTOML_HOME`` (``~/bentoml`` by
    default): only one server can listen on an address at a time (``cmd_serve`` refuses a busy one),
    and a restart on the same address reuses, and so cleans, the previous run's files instead of
    leaving them behind.

    Args:
        host: Interface the server binds.
        port: TCP port.
        env: The server's environment (``BENTOML_HOME`` is read).

    Returns:
        ``<BENTOML_HOME>/revcast-serve/<host>-<port>`` (not created here).
    """
    base = Path(env.get("BENTOML_HOME") or Path.home() / "bentoml").expanduser().resolve()
    # IPv6 addresses and host names become one safe path component.
    address = re.sub(r"[^A-Za-z0-9._-]", "_", host)
    return base / "revcast-serve" / f"{address}-{port}"


def address_in_use(host: str, port: int) -> bool:
    """Whether a server already listens on ``host:port`` (the port is probed by binding it).

    SO_REUSEADDR (``create_server``'s default on POSIX) lets the probe bind over connections left
    in TIME_WAIT by a server that just stopped, so only a live listener counts as in use.
    """
    try:
        with socket.create_server((host, port)):
            return False
    except OSError as exc:
        # Any other reason (a privileged port, an address not on this host) is BentoML's to report.
        return exc.errno == errno.EADDRINUSE


def models_without_alias(
    model_names: Mapping[str, str], kinds: Sequence[str], alias: str, uri: str
) -> dict[str, str]:
    """Which of `kinds` have no version behind `alias` in a local registry, and what the registry holds.

    Only local registries (``sqlite:``/``file:`` URIs, and plain paths) are checked: asking a remote
    tracking server that is down would hold the command up in MLflow's HTTP retries, and the service
    reports the same problem itself (``/v1/models``, its log).

    Args:
        model_names: Model kind -> registered model name (``ServiceConfig.model_names``).
        kinds: Model kinds to check (the ones ``/readyz`` waits for).
        alias: Alias the service will load (``champion`` by default).
        uri: Tracking and registry URI.

    Returns:
        Kind -> the registry's aliases for that model (empty text when none), for each kind missing the alias.
    """
    if uri.startswith(("http://", "https://", "databricks")):
        return {}
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    missing: dict[str, str] = {}
    for kind in kinds:
        name = model_names[kind]
        try:
            aliases: Any = client.get_registered_model(name).aliases or {}
        except MlflowException:
            missing[kind] = ""
            continue
        if alias not in aliases:
            missing[kind] = ", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items()))
    return missing


def cmd_serve(host: str, port: int) -> None:
    """Start the prediction service in the foreground until interrupted: this process becomes `bentoml serve`.

    The configuration (serving/serving.yaml plus ``REVCAST_*`` and ``MLFLOW_TRACKING_URI`` environment
    variables) is checked first so that a bad value ends the command with a one-line reason. When
    ``REVCAST_API_TOKEN`` is not set, a random token is generated for this run and printed once. A
    model that ``/readyz`` waits for but that has no version behind the served alias gets a warning
    saying what to do (quickstart leaves a model that is not ``ready`` without a champion).

    BentoML gets a home directory of its own per address (``instance_home``), so that services on
    one host keep their ``/metrics`` apart; an address already in use ends the command before
    BentoML's start-up would empty the running server's metrics directory.

    Args:
        host: Interface to bind (``127.0.0.1`` by default; ``0.0.0.0`` exposes it on the network).
        port: TCP port.

    Raises:
        ValueError: Bad port, busy address or bad configuration (the CLI prints the reason and exits
            non-zero).
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
    # The server runs from the repository (see the exec below): a relative dataset path means the
    # caller's directory, so it is made absolute here.
    if env.get("REVCAST_DATA_DIR"):
        env["REVCAST_DATA_DIR"] = str(Path(env["REVCAST_DATA_DIR"]).expanduser().resolve())
    # One OpenMP thread per LightGBM call (why: serving/service.py, RevcastService.__init__).
    env.setdefault("OMP_NUM_THREADS", "1")
    config = config_from_env(env)
    if address_in_use(host, port):
        raise ValueError(f"{host}:{port} is already in use (another revcast serve?); pick another --port")
    env["BENTOML_HOME"] = str(instance_home(host, port, env))
    if generated_token:
        typer.echo(
            f"REVCAST_API_TOKEN was not set; this run's token is: {env['REVCAST_API_TOKEN']}", err=True
        )
    typer.echo(
        f"serving {config.model_alias} models from {env['MLFLOW_TRACKING_URI']} on http://{host}:{port} "
        f"(API docs: /v1/docs, health: /livez /readyz)",
        err=True,
    )
    missing = models_without_alias(
        config.model_names, config.required_models, config.model_alias, env["MLFLOW_TRACKING_URI"]
    )
    for kind, aliases in missing.items():
        typer.echo(
            f"warning: {config.model_names[kind]} has no '{config.model_alias}' version"
            f" ({'aliases: ' + aliases if aliases else 'nothing registered'}); /readyz answers 503 until one is"
            f' promoted (revcast promote {kind}, or --force --reason "..."), or serve another alias'
            f" (REVCAST_MODEL_ALIAS) or leave {kind} out of readiness (REVCAST_REQUIRED_MODELS)",
            err=True,
        )
    if not env.get("REVCAST_DATA_DIR"):
        typer.echo(
            "note: REVCAST_DATA_DIR is not set: deals are scored from the request's records alone, without"
            " the CRM's rep, account, product and lead-source track records (their scores differ from"
            " `revcast score`'s), and /v1/forecast and /ui are off; set it to the CRM export's directory",
            err=True,
        )
    # The command becomes the server (exec, not a child process): a process manager's SIGTERM or a
    # Ctrl-C then reaches BentoML itself, which shuts its workers down; a parent left in between
    # would die and leave them serving.
    os.chdir(Path(__file__).resolve().parents[1])
    sys.stdout.flush()
    sys.stderr.flush()
    command = serve_command(host, port)
    os.execve(command[0], command, env)
