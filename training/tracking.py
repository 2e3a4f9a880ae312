"""MLflow tracking, registration and promotion of revcast models (aliases only, never stages).

One experiment per model (``revcast-win``, ``revcast-amount``, ``revcast-churn``,
``revcast-forecast``; any other model name ``m`` gets ``revcast-m``). A training run logs params,
the data fingerprint, every metric (baselines as ``baseline.<name>.<metric>``), the CONTRACT §2
metrics JSON (``metrics.json``), plots, the out-of-time test set (``evaluation/test_set.parquet``
with ids and labels, plus ``evaluation/test_set.json`` describing it) and the bundle as a
models-from-code pyfunc model. When given, the effective configuration is logged too: the resolved
training parameters (``config/training_params.yaml`` and params ``config.<a.b>``) and the feature
parameters file (``config/feature_params.yaml``); every run carries the tags ``git_commit`` and
``git_dirty`` when the code runs from a git checkout. The model version is registered as
``revcast-<model>`` with alias ``challenger``; ``promote`` moves ``champion`` after a paired
comparison on the challenger's test set.

Every function takes ``tracking_uri`` (default ``tracking_uri()``) and points the MLflow fluent API
at it, so the CLI and tests can use separate stores.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.bundle import ModelBundle, json_safe
from serving.registry import (
    BUNDLE_ARTIFACT,
    CHALLENGER,
    CHAMPION,
    SHA256_TAG,
    ModelNotFoundError,
    load_version_bundle,
    local_artifact_root,
    mlflow_client,
    model_version_by_alias,
    registered_name,
)
from serving.registry import tracking_uri as _registry_tracking_uri
from training.evaluate import PRIMARY_METRICS, interval_excludes_no_gain, is_gain, paired_bootstrap_delta

PYFUNC_MODEL_FILE = Path(__file__).with_name("pyfunc_model.py")
METRICS_ARTIFACT = "metrics.json"
TEST_SET_ARTIFACT = "evaluation/test_set.parquet"
TEST_SPEC_ARTIFACT = "evaluation/test_set.json"
TRAINING_PARAMS_ARTIFACT = "config/training_params.yaml"
FEATURE_PARAMS_ARTIFACT = "config/feature_params.yaml"
#: Prefix of the flattened training parameters among a run's params (``config.lightgbm.max_boost_rounds``).
CONFIG_PARAM_PREFIX = "config"
GIT_COMMIT_TAG = "git_commit"
GIT_DIRTY_TAG = "git_dirty"
_MAX_PARAM_LENGTH = 6000
_GIT_TIMEOUT_S = 10


def tracking_uri(cwd: str | Path | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` or ``sqlite:///<absolute cwd>/mlflow.db`` (artifacts in ``<cwd>/mlartifacts``)."""
    return _registry_tracking_uri(cwd)


def _activate(uri: str | None) -> str:
    """Point the MLflow fluent API (tracking and registry) at ``uri``; return it."""
    import mlflow

    resolved = uri or tracking_uri()
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    return resolved


def experiment_name(model: str) -> str:
    """``revcast-<model>``."""
    return registered_name(model)


def experiment_for(model: str, tracking_uri: str | None = None) -> str:
    """Id of the model's experiment, created on first use.

    With a local SQLite store the experiment's artifacts go to ``<db dir>/mlartifacts/<experiment>``
    (MLflow would otherwise use ``./mlruns`` relative to the current directory); with a tracking
    server the server's artifact root is used.
    """
    uri = tracking_uri or _registry_tracking_uri()
    client = mlflow_client(uri)
    name = experiment_name(model)
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    root = local_artifact_root(uri)
    location = (root / name).as_uri() if root is not None else None
    return client.create_experiment(name, artifact_location=location, tags={"revcast.model": model})


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = value


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Nested params as ``{"a.b": "value"}`` strings (lists JSON-encoded, long values truncated)."""
    flat: dict[str, Any] = {}
    _flatten("", params, flat)
    result = {}
    for key, value in flat.items():
        text = value if isinstance(value, str) else json.dumps(json_safe(value))
        result[key] = text[:_MAX_PARAM_LENGTH]
    return result


def metrics_for_mlflow(document: Mapping[str, Any]) -> dict[str, float]:
    """Numeric metrics of a CONTRACT §2 document: top-level numbers, ``baseline.<name>.<metric>``
    and ``<metric>.ci_lo`` / ``<metric>.ci_hi`` from ``intervals``. NaN/None are skipped."""

    def number(value: Any) -> float | None:
        if isinstance(value, bool) or value is None:
            return None
        if isinstance(value, int | float | np.integer | np.floating) and np.isfinite(value):
            return float(value)
        return None

    metrics: dict[str, float] = {}
    for key, value in document.items():
        if (v := number(value)) is not None:
            metrics[key] = v
    for baseline, values in (document.get("baselines") or {}).items():
        for metric, value in values.items():
            if (v := number(value)) is not None:
                metrics[f"baseline.{baseline}.{metric}"] = v
    for metric, bounds in (document.get("intervals") or {}).items():
        for suffix, value in zip(("ci_lo", "ci_hi"), bounds, strict=False):
            if (v := number(value)) is not None:
                metrics[f"{metric}.{suffix}"] = v
    return metrics


def _git(args: list[str], cwd: Path) -> str | None:
    """Stdout of ``git <args>`` run in ``cwd``; None when git is missing, fails or hangs."""
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_tags(code_file: str | Path | None = None) -> dict[str, str]:
    """``git_commit`` and ``git_dirty`` of the git checkout the code runs from; ``{}`` outside one.

    The checkout counts only when it tracks ``code_file``: an installed copy of the package that
    merely sits below some repository (e.g. a virtualenv inside one) is not that repository's code.
    ``git_dirty`` is ``true`` when tracked files differ from the commit; untracked files (data,
    ``mlflow.db``, outputs) do not count.

    Args:
        code_file: A source file of the code that runs (default: this module).

    Returns:
        ``{"git_commit": <sha>, "git_dirty": "true"|"false"}`` or ``{}``.
    """
    source = Path(code_file or __file__).resolve()
    if _git(["ls-files", "--error-unmatch", "--", source.name], source.parent) is None:
        return {}
    commit = _git(["rev-parse", "HEAD"], source.parent)
    status = _git(["status", "--porcelain", "--untracked-files=no"], source.parent)
    if not commit or status is None:
        return {}
    return {GIT_COMMIT_TAG: commit.strip(), GIT_DIRTY_TAG: str(bool(status.strip())).lower()}


def log_run_config(
    training_params: Mapping[str, Any] | None = None,
    feature_params_file: str | Path | None = None,
) -> None:
    """Log a run's effective configuration into the active MLflow run.

    Args:
        training_params: The resolved training configuration (after any override file was merged):
            logged as ``config/training_params.yaml`` and as flattened params ``config.<a.b>`` so
            runs with different settings differ in the run table, not only in an artifact.
        feature_params_file: The feature parameters YAML the run's features were built with,
            logged verbatim as ``config/feature_params.yaml``.
    """
    import mlflow
    import yaml

    if training_params is not None:
        resolved = json_safe(dict(training_params))
        mlflow.log_text(
            yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True), TRAINING_PARAMS_ARTIFACT
        )
        mlflow.log_params(flatten_params({CONFIG_PARAM_PREFIX: resolved}))
    if feature_params_file is not None:
        mlflow.log_text(Path(feature_params_file).read_text(encoding="utf-8"), FEATURE_PARAMS_ARTIFACT)


def _pip_requirements() -> list[str]:
    # Explicit requirements: MLflow's inference loads the model in a subprocess, which is slow.
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "lightgbm", "pandas", "numpy", "pyarrow")]


def log_bundle_model(
    bundle_dir: str | Path,
    name: str = "model",
    signature_frame: pd.DataFrame | None = None,
    input_example: pd.DataFrame | None = None,
    tracking_uri: str | None = None,
) -> str:
    """Log a bundle directory as a models-from-code pyfunc model in the active run.

    Args:
        bundle_dir: Saved bundle (``ModelBundle.save``).
        name: Model name inside the run.
        signature_frame: Feature rows to infer the signature from (default: none).
        input_example: A few feature rows stored as the input example.
        tracking_uri: MLflow URI.

    Returns:
        The logged model's URI (``models:/m-...``), for ``register``.
    """
    import mlflow
    from mlflow.models import infer_signature

    _activate(tracking_uri)
    bundle = ModelBundle.load(bundle_dir)
    signature = None
    if signature_frame is not None and len(signature_frame):
        features = signature_frame[bundle.feature_names]
        signature = infer_signature(features, bundle.predict(features))
    if input_example is not None:
        input_example = input_example[bundle.feature_names]
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=str(PYFUNC_MODEL_FILE),
        artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
        signature=signature,
        input_example=input_example,
        pip_requirements=_pip_requirements(),
    )
    return info.model_uri


def register(
    model_uri: str,
    model: str,
    tags: Mapping[str, str] | None = None,
    tracking_uri: str | None = None,
) -> str:
    """Register a logged model as a new version of ``revcast-<model>`` and point ``challenger`` at it.

    Returns:
        The new version number (string).
    """
    import mlflow

    uri = _activate(tracking_uri)
    client = mlflow_client(uri)
    version = mlflow.register_model(model_uri, registered_name(model), tags=dict(tags or {}))
    client.set_registered_model_alias(registered_name(model), CHALLENGER, version.version)
    return str(version.version)


def _alias_info(model: str, alias: str, uri: str) -> dict[str, Any] | None:
    try:
        version = model_version_by_alias(model, alias, uri)
    except ModelNotFoundError:
        return None
    tags = dict(version.tags or {})
    return {
        "name": registered_name(model),
        "version": str(version.version),
        "run_id": version.run_id,
        "alias": alias,
        "sha256": tags.get(SHA256_TAG),
        "verdict": tags.get("verdict"),
        "promoted_by": tags.get("promoted_by"),
        "promotion_reason": tags.get("promotion_reason"),
        "promoted_at": tags.get("promoted_at"),
        "tags": tags,
    }


def champion_info(model: str, tracking_uri: str | None = None) -> dict[str, Any] | None:
    """The champion version of ``revcast-<model>`` (name, version, run_id, sha256, verdict, promotion tags) or None."""
    return _alias_info(model, CHAMPION, tracking_uri or _registry_tracking_uri())


def challenger_info(model: str, tracking_uri: str | None = None) -> dict[str, Any] | None:
    """The challenger version of ``revcast-<model>`` or None."""
    return _alias_info(model, CHALLENGER, tracking_uri or _registry_tracking_uri())


@dataclass
class LoggedRun:
    """What ``log_training_run`` recorded."""

    run_id: str
    experiment_id: str
    model_uri: str | None
    version: str | None
    metrics_document: dict[str, Any]


def log_training_run(
    model: str,
    *,
    bundle: ModelBundle,
    metrics_document: Mapping[str, Any],
    test_set: pd.DataFrame,
    label_column: str,
    group_column: str | None = None,
    params: Mapping[str, Any] | None = None,
    data_fingerprint: str | None = None,
    plots: Mapping[str, str | Path] | None = None,
    tags: Mapping[str, str] | None = None,
    register_model: bool = True,
    run_name: str | None = None,
    tracking_uri: str | None = None,
    training_params: Mapping[str, Any] | None = None,
    feature_params_file: str | Path | None = None,
) -> LoggedRun:
    """Log one training run and (by default) register its model as the new challenger.

    Args:
        model: ``win``, ``amount``, ``churn``, ... (experiment and registry name ``revcast-<model>``).
        bundle: The evaluated model bundle.
        metrics_document: CONTRACT §2 document (``training.evaluate.metrics_document``); its
            ``run_id`` is filled in here.
        test_set: Out-of-time test rows: ids, feature columns and the label column (stored as
            Parquet; ``promote`` scores challenger and champion on it).
        label_column: Label column of ``test_set``.
        group_column: Cluster id column for paired bootstraps (e.g. ``opportunity_id``).
        params: Training parameters (nested dicts are flattened to ``a.b``).
        data_fingerprint: Digest of the training data (tag and param ``data_fingerprint``).
        plots: ``{file name: path}`` of PNG files, logged under ``plots/``.
        tags: Extra run tags (they win over ``git_commit`` / ``git_dirty``).
        register_model: Register the logged model and set alias ``challenger``.
        run_name: Optional MLflow run name.
        tracking_uri: MLflow URI.
        training_params: The resolved training configuration (see ``log_run_config``).
        feature_params_file: The feature parameters file the features were built with.

    Returns:
        A ``LoggedRun`` whose ``metrics_document`` carries the ``run_id``.
    """
    import mlflow

    uri = _activate(tracking_uri)
    if label_column not in test_set.columns:
        raise ValueError(f"test set has no label column {label_column!r}")
    missing = [c for c in bundle.feature_names if c not in test_set.columns]
    if missing:
        raise ValueError(f"test set lacks feature columns: {missing}")
    experiment_id = experiment_for(model, uri)
    verdict = str(metrics_document.get("verdict", "unknown"))
    run_tags = {
        "revcast.model": model,
        "revcast.kind": bundle.kind,
        "verdict": verdict,
        "evaluation": str(metrics_document.get("evaluation", "")),
        SHA256_TAG: bundle.sha256,
        **({"data_fingerprint": data_fingerprint} if data_fingerprint else {}),
        **git_tags(),
        **dict(tags or {}),
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=run_tags) as run:
        run_id = run.info.run_id
        all_params = dict(params or {})
        if data_fingerprint:
            all_params["data_fingerprint"] = data_fingerprint
        if all_params:
            mlflow.log_params(flatten_params(all_params))
        log_run_config(training_params, feature_params_file)
        document = dict(metrics_document)
        document["run_id"] = run_id
        mlflow.log_metrics(metrics_for_mlflow(document))
        mlflow.log_dict(json_safe(document), METRICS_ARTIFACT)
        spec = {
            "model": model,
            "kind": bundle.kind,
            "label_column": label_column,
            "group_column": group_column,
            "primary_metric": PRIMARY_METRICS[bundle.kind][0],
            "n_rows": int(len(test_set)),
        }
        with tempfile.TemporaryDirectory(prefix="revcast-run-") as tmp:
            test_path = Path(tmp) / Path(TEST_SET_ARTIFACT).name
            test_set.reset_index(drop=True).to_parquet(test_path, index=False)
            mlflow.log_artifact(str(test_path), artifact_path=str(Path(TEST_SET_ARTIFACT).parent))
            mlflow.log_dict(spec, TEST_SPEC_ARTIFACT)
            for plot_path in (plots or {}).values():
                mlflow.log_artifact(str(plot_path), artifact_path="plots")
            bundle_dir = bundle.save(Path(tmp) / BUNDLE_ARTIFACT)
            features = test_set[bundle.feature_names]
            model_uri = log_bundle_model(
                bundle_dir,
                name="model",
                signature_frame=features.head(200),
                input_example=features.head(3),
                tracking_uri=uri,
            )
        version = None
        if register_model:
            version = register(
                model_uri, model, tags={SHA256_TAG: bundle.sha256, "verdict": verdict}, tracking_uri=uri
            )
            mlflow.set_tag("registered_version", version)
    return LoggedRun(run_id, experiment_id, model_uri, version, document)


def log_evaluation_run(
    model: str,
    *,
    metrics_document: Mapping[str, Any],
    params: Mapping[str, Any] | None = None,
    artifacts: Mapping[str, str | Path] | None = None,
    tags: Mapping[str, str] | None = None,
    run_name: str | None = None,
    tracking_uri: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """Log a run without a model (e.g. a forecast backtest) into the ``revcast-<model>`` experiment.

    Args:
        model: Model name (``forecast`` -> experiment ``revcast-forecast``).
        metrics_document: JSON document; logged as ``metrics.json`` (with ``run_id`` filled in) and
            its numbers as metrics (see ``metrics_for_mlflow``).
        params: Parameters (flattened ``a.b``).
        artifacts: ``{name: path}`` of files to log (directory ``artifacts/``).
        tags: Run tags.
        run_name: Optional run name.
        tracking_uri: MLflow URI.

    Returns:
        ``(run_id, document with run_id)``.
    """
    import mlflow

    uri = _activate(tracking_uri)
    experiment_id = experiment_for(model, uri)
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name,
        tags={"revcast.model": model, **git_tags(), **dict(tags or {})},
    ) as run:
        if params:
            mlflow.log_params(flatten_params(params))
        document = dict(metrics_document)
        document["run_id"] = run.info.run_id
        mlflow.log_metrics(metrics_for_mlflow(document))
        mlflow.log_dict(json_safe(document), METRICS_ARTIFACT)
        for path in (artifacts or {}).values():
            mlflow.log_artifact(str(path), artifact_path="artifacts")
    return run.info.run_id, document


def load_test_set(run_id: str, tracking_uri: str | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The out-of-time test set and its description (``test_set.json``) stored by a training run."""
    import mlflow.artifacts

    uri = tracking_uri or _registry_tracking_uri()
    with tempfile.TemporaryDirectory(prefix="revcast-test-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="evaluation", dst_path=tmp, tracking_uri=uri
        )
        frame = pd.read_parquet(Path(local) / Path(TEST_SET_ARTIFACT).name)
        spec = json.loads((Path(local) / Path(TEST_SPEC_ARTIFACT).name).read_text())
    return frame, spec


def current_user() -> str:
    """Who is promoting: ``$REVCAST_USER``, ``$USER``, ``$LOGNAME`` or the OS login."""
    for variable in ("REVCAST_USER", "USER", "LOGNAME"):
        if os.environ.get(variable):
            return os.environ[variable]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@dataclass
class PromotionResult:
    """Outcome of ``promote``."""

    model: str
    promoted: bool
    challenger_version: str
    previous_champion_version: str | None
    verdict: str
    forced: bool
    comparison: dict[str, Any] | None
    reasons: list[str] = field(default_factory=list)
    #: Why the rules refuse (a subset of ``reasons``); empty when they allow it or nothing was to do.
    refusals: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (for ``--json`` output and logs)."""
        return json_safe(self.__dict__)


#: ``evaluate_fn(test_set, spec, challenger, champion) -> {"metric", "delta", "lo", "hi"}``.
EvaluateFn = Callable[[pd.DataFrame, Mapping[str, Any], ModelBundle, ModelBundle], Mapping[str, Any]]


def paired_comparison(
    test_set: pd.DataFrame,
    spec: Mapping[str, Any],
    challenger: ModelBundle,
    champion: ModelBundle,
    n_boot: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """Default ``evaluate_fn``: paired bootstrap of the primary metric, challenger minus champion."""
    metric = spec.get("primary_metric") or PRIMARY_METRICS[challenger.kind][0]
    labels = test_set[spec["label_column"]].to_numpy(dtype=float)
    group_column = spec.get("group_column")
    groups = test_set[group_column].to_numpy() if group_column and group_column in test_set.columns else None
    delta, lo, hi = paired_bootstrap_delta(
        labels,
        challenger.predict(test_set),
        champion.predict(test_set),
        metric,
        n_boot=n_boot,
        seed=seed,
        groups=groups,
    )
    return {"metric": metric, "delta": delta, "lo": lo, "hi": hi, "n": int(len(labels))}


def promote(
    model: str,
    force: bool = False,
    reason: str | None = None,
    evaluate_fn: EvaluateFn | None = None,
    tracking_uri: str | None = None,
) -> PromotionResult:
    """Move alias ``champion`` to the current ``challenger`` when it is demonstrably better.

    Rules (without ``force``): the challenger's verdict must be ``ready``; when a champion exists,
    both are scored on the challenger's stored out-of-time test set and the paired 95 % interval of
    the primary metric (AUC for classifiers, WAPE for regressors; challenger minus champion) must lie
    entirely on the gain side. No champion + ``ready`` = promote. ``force`` promotes regardless and
    records ``promoted_by`` / ``promotion_reason`` tags on the version; it needs a ``reason``, so
    that every forced champion says why.

    Args:
        model: ``win``, ``amount``, ``churn``, ...
        force: Promote even when the rules refuse.
        reason: Free-text reason recorded as ``promotion_reason`` (required with ``force``).
        evaluate_fn: Comparison function (default ``paired_comparison``).
        tracking_uri: MLflow URI.

    Returns:
        A ``PromotionResult``: ``promoted`` False with ``refusals`` when the rules refuse, or with
        empty ``refusals`` when the challenger already is the champion.

    Raises:
        ModelNotFoundError: No challenger registered.
        ValueError: ``force`` without a (non-blank) ``reason``.
    """
    if force and not (reason and reason.strip()):
        raise ValueError("a forced promotion needs a reason")
    uri = _activate(tracking_uri)
    client = mlflow_client(uri)
    name = registered_name(model)
    challenger_version = model_version_by_alias(model, CHALLENGER, uri)
    champion_version = None
    try:
        champion_version = model_version_by_alias(model, CHAMPION, uri)
    except ModelNotFoundError:
        champion_version = None
    previous = str(champion_version.version) if champion_version is not None else None
    verdict = str((challenger_version.tags or {}).get("verdict") or "unknown")
    if challenger_version.run_id:
        run_verdict = client.get_run(challenger_version.run_id).data.tags.get("verdict")
        verdict = run_verdict or verdict
    result = PromotionResult(
        model=model,
        promoted=False,
        challenger_version=str(challenger_version.version),
        previous_champion_version=previous,
        verdict=verdict,
        forced=force,
        comparison=None,
    )
    if previous == result.challenger_version:
        result.reasons.append(f"version {previous} is already the champion")
        return result

    def refuse(why: str) -> None:
        result.reasons.append(why)
        result.refusals.append(why)

    if verdict != "ready":
        refuse(f"challenger verdict is {verdict!r}, not 'ready'")
    if champion_version is not None:
        challenger = load_version_bundle(model, challenger_version, uri)
        champion = load_version_bundle(model, champion_version, uri)
        try:
            test_set, spec = load_test_set(challenger_version.run_id, uri)
            comparison = dict((evaluate_fn or paired_comparison)(test_set, spec, challenger, champion))
        except (ValueError, KeyError, OSError) as exc:
            comparison = None
            refuse(f"champion and challenger could not be compared: {exc}")
        if comparison is not None:
            result.comparison = json_safe(comparison)
            metric, delta, lo, hi = (
                comparison["metric"],
                comparison["delta"],
                comparison["lo"],
                comparison["hi"],
            )
            summary = f"{metric} challenger - champion = {delta:+.4f} (95% interval {lo:+.4f} to {hi:+.4f})"
            if interval_excludes_no_gain(metric, lo, hi):
                result.reasons.append(f"challenger beats champion v{previous}: {summary}")
            else:
                gain_word = "gain" if is_gain(metric, delta) else "no gain"
                refuse(f"challenger not shown better than champion v{previous} ({gain_word}): {summary}")
    else:
        result.reasons.append("no champion yet")

    if result.refusals and not force:
        return result
    if force and result.refusals:
        result.reasons.append("promotion forced")
    promotion_reason = reason or "; ".join(result.reasons)
    client.set_registered_model_alias(name, CHAMPION, result.challenger_version)
    version_tags = {
        "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "promoted_by": current_user(),
        "promotion_reason": promotion_reason[:5000],
        "promotion_forced": str(force).lower(),
        "previous_champion": previous or "",
    }
    for key, value in version_tags.items():
        client.set_model_version_tag(name, result.challenger_version, key, value)
    result.promoted = True
    return result
