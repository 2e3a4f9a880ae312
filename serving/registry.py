"""Look up registered models in MLflow and load their bundles directly (never unpickled, never via pyfunc).

Registered models are named ``revcast-<model>``; versions move between the aliases ``challenger``
(every new training run) and ``champion`` (what the service uses; moved by ``revcast promote``).
Stages are never used.

Tracking URI resolution (shared with ``training.tracking``): ``$MLFLOW_TRACKING_URI`` when set,
otherwise ``sqlite:///<absolute cwd>/mlflow.db`` with run artifacts in ``<cwd>/mlartifacts``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from serving.bundle import BundleIntegrityError, ModelBundle

REGISTERED_NAME_PREFIX = "revcast-"
CHAMPION = "champion"
CHALLENGER = "challenger"
#: Model-version tag holding the bundle's sha256 (set at registration, checked at resolution).
SHA256_TAG = "bundle_sha256"
#: Artifact key / sub-directory of the logged model holding the bundle.
BUNDLE_ARTIFACT = "bundle"


#: MLflow's HTTP client retries a failed call 7 times with exponential backoff by default (about 4
#: minutes against an unreachable server); the service reports the failure after a few seconds instead
#: and tries again later. Applied with ``os.environ.setdefault`` by the service: explicit values win.
SERVICE_HTTP_ENV: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}

# MLflow error codes that mean "the registry answered: there is no such model or alias".
_NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"})


class ModelNotFoundError(LookupError):
    """No registered model version under the requested name and alias."""


class RegistryUnavailableError(ConnectionError):
    """The registry could not be asked (unreachable tracking server, server error, timeout)."""


def registered_name(model: str) -> str:
    """Registry name of a revcast model: ``revcast-<model>``."""
    return f"{REGISTERED_NAME_PREFIX}{model}"


def tracking_uri(cwd: str | Path | None = None) -> str:
    """MLflow tracking (and registry) URI: ``$MLFLOW_TRACKING_URI`` or a SQLite file in ``cwd``."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    base = Path(cwd) if cwd is not None else Path.cwd()
    return f"sqlite:///{(base / 'mlflow.db').resolve()}"


def local_artifact_root(uri: str) -> Path | None:
    """Directory for run artifacts when ``uri`` is a local SQLite store (``<db dir>/mlartifacts``), else None.

    MLflow's own default for a SQLite store without an explicit artifact location is ``./mlruns``
    relative to whatever the working directory is at logging time; revcast pins artifacts next to the
    database instead so that later runs from another directory still find them.
    """
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).resolve().parent / "mlartifacts"
    return None


def mlflow_client(uri: str | None = None) -> Any:
    """An ``MlflowClient`` for tracking and registry at ``uri`` (default ``tracking_uri()``)."""
    from mlflow import MlflowClient

    resolved = uri or tracking_uri()
    return MlflowClient(tracking_uri=resolved, registry_uri=resolved)


def model_version_by_alias(model: str, alias: str, uri: str | None = None) -> Any:
    """The ``ModelVersion`` behind ``revcast-<model>@<alias>``.

    Raises:
        ModelNotFoundError: The registry answered that there is no such registered model or alias.
        RegistryUnavailableError: The registry did not answer (connection refused, timeout, 5xx).
    """
    from mlflow.exceptions import MlflowException

    where = uri or tracking_uri()
    client = mlflow_client(uri)
    try:
        return client.get_model_version_by_alias(registered_name(model), alias)
    except MlflowException as exc:
        if getattr(exc, "error_code", None) in _NOT_FOUND_CODES:
            raise ModelNotFoundError(
                f"no model registered as {registered_name(model)}@{alias} at {where}: "
                f"train it (revcast train {model}) and promote it (revcast promote {model})"
            ) from exc
        # Anything else (a connection error comes as INTERNAL_ERROR) says nothing about the model:
        # telling the operator to train one would send them the wrong way.
        raise RegistryUnavailableError(
            f"cannot look up {registered_name(model)}@{alias}: the MLflow tracking server at {where} "
            f"did not answer ({_first_line(exc)})"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def download_bundle(model: str, version: str | int, destination: str | Path, uri: str | None = None) -> Path:
    """Download the bundle directory of ``revcast-<model>`` version ``version`` into ``destination``.

    Returns:
        Path of the local bundle directory.
    """
    import mlflow.artifacts
    from mlflow import MlflowClient

    resolved = uri or tracking_uri()
    # A `models:/` URI is resolved by MLflow against the process-wide registry URI whatever
    # `registry_uri` says, so the version's own location is looked up with a client bound to
    # `resolved` and downloaded from there.
    client = MlflowClient(tracking_uri=resolved, registry_uri=resolved)
    source = client.get_model_version_download_uri(registered_name(model), str(version))
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=source, dst_path=str(destination), tracking_uri=resolved
    )
    bundle_dir = Path(local) / "artifacts" / BUNDLE_ARTIFACT
    if not bundle_dir.is_dir():
        raise BundleIntegrityError(
            f"{registered_name(model)} version {version} has no '{BUNDLE_ARTIFACT}' artifact directory"
        )
    return bundle_dir


def load_version_bundle(model: str, version_info: Any, uri: str | None = None) -> ModelBundle:
    """Download, hash-check and load the bundle of a ``ModelVersion``; check its registered sha256."""
    with tempfile.TemporaryDirectory(prefix="revcast-bundle-") as tmp:
        bundle = ModelBundle.load(download_bundle(model, version_info.version, tmp, uri))
    expected = (version_info.tags or {}).get(SHA256_TAG)
    if expected and expected != bundle.sha256:
        raise BundleIntegrityError(
            f"{registered_name(model)} version {version_info.version}: bundle sha256 {bundle.sha256} "
            f"differs from the registered {expected}"
        )
    return bundle


def resolve_bundle(
    model: str, alias: str = CHAMPION, tracking_uri: str | None = None
) -> tuple[ModelBundle, dict[str, Any]]:
    """Load the bundle registered as ``revcast-<model>@<alias>``.

    Args:
        model: ``win``, ``amount``, ``churn``, ...
        alias: ``champion`` (default) or ``challenger``.
        tracking_uri: MLflow URI (default: ``tracking_uri()`` of this module).

    Returns:
        ``(bundle, info)`` with info ``{"name", "version", "run_id", "alias", "sha256"}``.

    Raises:
        ModelNotFoundError: Nothing registered under that alias.
        RegistryUnavailableError: The registry could not be asked.
        BundleIntegrityError: The downloaded bundle fails its hash checks.

    Any error raised once the alias has been resolved carries the version it points to as the
    attribute ``registry_version`` (so a caller keeping an older model can say which one it refused).
    """
    version_info = model_version_by_alias(model, alias, tracking_uri)
    try:
        bundle = load_version_bundle(model, version_info, tracking_uri)
    except Exception as exc:
        exc.registry_version = str(version_info.version)  # type: ignore[attr-defined]
        raise
    info = {
        "name": registered_name(model),
        "version": str(version_info.version),
        "run_id": version_info.run_id,
        "alias": alias,
        "sha256": bundle.sha256,
    }
    return bundle, info
