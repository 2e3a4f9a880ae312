"""The revcast prediction service (BentoML 1.4): CONTRACT §3.

Run it with ``revcast serve`` (or ``bentoml serve serving.service:RevcastService``). The HTTP API is a
FastAPI app mounted under ``/v1`` on the BentoML service, so that status codes (401/413/415/422/503),
per-record rejections and the OpenAPI page (``/v1/docs``, ``/v1/openapi.json``) are exactly as
documented; the managers' web page (serving/ui) is mounted under ``/ui`` and reads ``config``,
``_forecast_tables`` and ``_forecast_error`` of the running service; BentoML provides ``/livez``, ``/readyz`` (wired to the models being loaded and warmed via
``__is_ready__``), ``/metrics`` and the request timeout.

Models are loaded once, in a background thread started at start-up, from the MLflow registry by alias
(``serving.registry.resolve_bundle``: bundle files hash-checked, never pickle), then warmed with one
prediction. ``POST /v1/admin/reload`` (or SIGHUP to a worker) loads the models now behind the alias and
swaps them in atomically: a request holds a reference to one immutable ``ModelSet`` for its whole
life, so in-flight requests finish on the models they started with; a model that fails to load keeps
its previous version.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import hmac
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import bentoml
import numpy as np
import pandas as pd
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from serving.coalesce import RequestCoalescer, ScoringJob, merge_batches, split_body
from serving.config import ServiceConfig, config_from_env, grade_for, risk_band_for, score_for
from serving.forecast import ForecastResponse
from serving.metrics_labels import install_route_labels
from serving.requests import (
    PreparedBatch,
    RequestError,
    parse_envelope,
    parse_json_body,
    prepare_accounts,
    prepare_opportunities,
    to_timestamp,
)
from serving.schemas import (
    EXAMPLE_CHURN_REQUEST,
    EXAMPLE_OPPORTUNITY_REQUEST,
    AccountChurnRequest,
    AccountChurnResponse,
    ErrorResponse,
    ModelInfo,
    ModelsResponse,
    OpportunityScoreRequest,
    OpportunityScoreResponse,
)
from serving.ui import ui_app

if TYPE_CHECKING:
    from serving.track_records import TrackRecordSource

logger = logging.getLogger("revcast.api")

MODEL_KINDS = ("win", "amount", "churn")

# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class LoadedModel:
    """A bundle with the registry facts about it.

    Attributes:
        bundle: The ``serving.bundle.ModelBundle``.
        info: ``{"name", "version", "run_id", "alias", "sha256"}`` from ``resolve_bundle``.
    """

    bundle: Any
    info: Mapping[str, Any]

    @property
    def version(self) -> str:
        """Registered model version."""
        return str(self.info.get("version"))


@dataclass(frozen=True)
class LoadAttempt:
    """What the last (re)load did for one model kind, for operators (``GET /v1/models``).

    Attributes:
        at: When the attempt finished (ISO 8601, UTC).
        outcome: ``loaded``, ``unchanged``, ``swapped ...``, ``kept old (...): ...`` or ``not loaded: ...``.
        error: The full error text when the kind failed to load (None when it loaded).
        alias_version: The version the registry alias pointed to (None: the registry was not reached).
    """

    at: str
    outcome: str
    error: str | None = None
    alias_version: str | None = None


@dataclass(frozen=True)
class ModelSet:
    """The models served together; replaced as a whole (never mutated) on reload.

    Attributes:
        models: Model kind -> loaded model, for the kinds that loaded.
        errors: Model kind -> why it is not loaded (first line of the error).
        warmed: Whether a warm-up prediction succeeded for every loaded model.
        attempts: Model kind -> what the (re)load that produced this set did for it.
    """

    models: Mapping[str, LoadedModel] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)
    warmed: bool = False
    attempts: Mapping[str, LoadAttempt] = field(default_factory=dict)

    def ready(self, required: tuple[str, ...]) -> bool:
        """Every required model is loaded and the set has been warmed."""
        return self.warmed and all(kind in self.models for kind in required)


Resolver = Callable[[str, str, str | None], tuple[Any, Mapping[str, Any]]]


def _default_resolver(model: str, alias: str, tracking_uri: str | None) -> tuple[Any, Mapping[str, Any]]:
    from serving.registry import resolve_bundle

    return resolve_bundle(model, alias=alias, tracking_uri=tracking_uri)


def load_model_set(
    config: ServiceConfig, previous: ModelSet | None = None, resolver: Resolver = _default_resolver
) -> tuple[ModelSet, dict[str, str]]:
    """Load every model kind behind the configured alias, warm them, and keep old ones on failure.

    Args:
        config: Service configuration (alias, tracking URI, scoring settings).
        previous: The set currently served (None at start-up).
        resolver: ``(model, alias, tracking_uri) -> (bundle, info)``; the MLflow registry by default.

    Returns:
        ``(new_set, outcome)`` where outcome says per kind ``swapped``, ``unchanged``, ``loaded``,
        ``kept old: <reason>`` or ``not loaded: <reason>`` (first line of the reason; the set's
        ``attempts`` hold the full error and the version the alias points to).
    """
    models: dict[str, LoadedModel] = {}
    errors: dict[str, str] = {}
    outcome: dict[str, str] = {}
    attempts: dict[str, LoadAttempt] = {}

    def load_one(kind: str) -> LoadedModel | Exception:
        try:
            bundle, info = resolver(kind, config.model_alias, config.tracking_uri)
            candidate = LoadedModel(bundle=bundle, info=dict(info))
            old = previous.models.get(kind) if previous is not None else None
            if old is None or old.info.get("sha256") != candidate.info.get("sha256"):
                _warm_one(kind, candidate, config)
            return candidate
        except Exception as exc:  # any failure must leave the previous model serving
            return exc

    # The kinds load in parallel: start-up time is the slowest download, not the sum of them.
    with ThreadPoolExecutor(max_workers=len(MODEL_KINDS), thread_name_prefix="revcast-load") as pool:
        loaded = dict(zip(MODEL_KINDS, pool.map(load_one, MODEL_KINDS), strict=True))
    finished = datetime.now(UTC).isoformat(timespec="seconds")
    for kind, result in loaded.items():
        old = previous.models.get(kind) if previous is not None else None
        if isinstance(result, LoadedModel):
            if old is not None and old.info.get("sha256") == result.info.get("sha256"):
                if old.version == result.version:
                    models[kind], outcome[kind] = old, "unchanged"
                else:
                    # The same bytes promoted under another version: the warmed bundle stays, but
                    # answers, /v1/models and the version gauge must name the version the alias holds.
                    models[kind] = LoadedModel(bundle=old.bundle, info=result.info)
                    outcome[kind] = f"swapped {old.version} -> {result.version} (same bundle bytes)"
            else:
                models[kind] = result
                outcome[kind] = "loaded" if old is None else f"swapped {old.version} -> {result.version}"
            attempts[kind] = LoadAttempt(finished, outcome[kind], None, result.version)
            continue
        text = str(result).strip()
        reason = f"{type(result).__name__}: {text.splitlines()[0] if text else ''}"
        full = f"{type(result).__name__}: {text}"[:_MAX_ERROR_CHARS]
        if old is not None:
            models[kind] = old
            outcome[kind] = f"kept old ({old.version}): {reason}"
        else:
            errors[kind] = reason
            outcome[kind] = f"not loaded: {reason}"
        alias_version = getattr(result, "registry_version", None)  # set by serving.registry.resolve_bundle
        attempts[kind] = LoadAttempt(finished, outcome[kind], full, alias_version)
    return ModelSet(models=models, errors=errors, warmed=True, attempts=attempts), outcome


# An error text is kept whole for operators, but a pathological one (a dumped HTML page) stays bounded.
_MAX_ERROR_CHARS = 4000


def freeze_long_lived_objects() -> None:
    """Exempt everything alive now (modules, models, caches) from the cyclic garbage collector's scans.

    A full (generation 2) collection walks every tracked object: in a service process that has
    imported BentoML, MLflow, pandas and DuckDB that is millions of objects and 80-180 ms with the
    GIL held, every few seconds under load, which every request in flight waits for (the p99 of
    one-record requests). Frozen objects are skipped by later collections. Objects that die later are
    still freed by reference counting; the unfreeze + collect first lets the cycles of a replaced
    model set be collected before the survivors are frozen again.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _warm_one(kind: str, model: LoadedModel, config: ServiceConfig) -> None:
    """One prediction through the full request path, so the first real request is not the slow one."""
    if kind in ("win", "amount"):
        batch = prepare_opportunities(
            EXAMPLE_OPPORTUNITY_REQUEST["opportunities"],
            pd.Timestamp("2026-11-01"),
            closed_stages=config.closed_stages,
        )
        frame = opportunity_feature_frame(batch)
    else:
        batch = prepare_accounts(EXAMPLE_CHURN_REQUEST["accounts"], pd.Timestamp("2026-11-01"))
        frame = account_feature_frame(batch)
    if frame.empty:
        raise RuntimeError(f"warm-up record produced no {kind} feature row")
    frame = with_model_columns(frame, model.bundle)
    values, _ = predict_and_explain(model.bundle, frame, config.top_k_factors)
    if not np.all(np.isfinite(values)):
        raise RuntimeError(f"warm-up prediction of the {kind} model is not finite: {values.tolist()}")


# --------------------------------------------------------------------------- scoring (pure)


@functools.cache
def feature_params() -> Any:
    """features/params.yaml, read once per process (the batch path reads the same file)."""
    from features.params import load_params

    return load_params()


def opportunity_feature_frame(
    batch: PreparedBatch, track_records: TrackRecordSource | None = None
) -> pd.DataFrame:
    """Features of the accepted deals, computed by the batch path's builder; unscorable deals rejected.

    The records' current state counts as history as of the request's as_of. With ``track_records``
    the deals' rep, account, product and lead-source track records and open-deal counts come from
    that dataset as of the request's as_of (serving.track_records), as in a batch build over it.
    """
    from features.opportunity import build_opportunity_features

    if not batch.accepted:
        return pd.DataFrame()
    context = None
    if track_records is not None:
        context = track_records.frames_for(batch.tables["opportunities"], batch.as_of, batch.namespaced)
    features = build_opportunity_features(
        batch.tables, batch.as_of, feature_params(), current_state_as_of=batch.as_of, context=context
    )
    scored = set(features["opportunity_id"])
    for index, opp_id in list(batch.accepted):
        if opp_id not in scored:
            batch.reject(index, opp_id, "opportunity_id", ["the deal is not open as of as_of"])
    return features.set_index("opportunity_id", drop=False)


def account_feature_frame(batch: PreparedBatch) -> pd.DataFrame:
    """Features of the accepted accounts; accounts without an active subscription at as_of are rejected."""
    from features.account import build_account_features

    if not batch.accepted:
        return pd.DataFrame()
    features = build_account_features(batch.tables, batch.as_of, feature_params())
    scored = set(features["account_id"])
    for index, account_id in list(batch.accepted):
        if account_id not in scored:
            batch.reject(
                index,
                account_id,
                "account_id",
                ["subscriptions: no subscription is active at as_of (churn is scored for customers only)"],
            )
    return features.set_index("account_id", drop=False)


def with_model_columns(frame: pd.DataFrame, bundle: Any) -> pd.DataFrame:
    """Add feature columns the model knows but the request could not provide (e.g. a usage metric
    the caller does not send) as missing values, which LightGBM routes down its 'missing' branch."""
    missing = [name for name in bundle.feature_names if name not in frame.columns]
    if not missing:
        return frame
    return frame.assign(**{name: np.nan for name in missing})


# The objective line LightGBM writes for a plain binary model: its predict is sigmoid(raw margin).
_PLAIN_BINARY_OBJECTIVE = "\nobjective=binary sigmoid:1\n"


def predict_and_explain(
    bundle: Any, frame: pd.DataFrame, top_k: int
) -> tuple[np.ndarray, list[list[dict[str, Any]]]]:
    """``(bundle.predict(frame), bundle.explain(frame, top_k))``, from one pass over the trees when possible.

    ``predict`` and ``explain`` each prepare the rows and walk the trees. For a plain binary classifier
    the TreeSHAP contributions already hold the raw margin (each row sums to ``predict_raw``, see
    serving.bundle), and ``predict`` is ``clip(apply_calibration(calibration, sigmoid(raw)), 0, 1)``,
    so one ``contributions`` call gives both. Any other bundle (regressors, target transforms, a
    non-default sigmoid, linear trees) uses the bundle's own two methods. Equality with the separate
    calls is a test (tests/serving/test_units.py).

    Args:
        bundle: A ``serving.bundle.ModelBundle``.
        frame: Rows holding at least the bundle's feature columns.
        top_k: Number of factors per row.

    Returns:
        Predictions (float array) and, per row, the top factors as ``ModelBundle.explain`` gives them.
    """
    from serving.bundle import apply_calibration, json_safe, sigmoid

    one_pass = (
        bundle.kind == "classifier"
        and bundle.supports_contributions
        and _PLAIN_BINARY_OBJECTIVE in bundle.model_text
        and len(frame) > 0
    )
    if not one_pass:
        return np.asarray(bundle.predict(frame), dtype=float), bundle.explain(frame, top_k)
    contributions = bundle.contributions(frame)
    names = bundle.feature_names
    matrix = contributions[names].to_numpy()
    raw = contributions.to_numpy().sum(axis=1)
    probabilities = np.clip(apply_calibration(bundle.state.get("calibration"), sigmoid(raw)), 0.0, 1.0)
    display = bundle.state.get("display_names") or {}
    order = np.argsort(-np.abs(matrix), axis=1, kind="stable")[:, :top_k]
    explanations = [
        [
            {
                "feature": display.get(names[position], names[position]),
                "value": json_safe(frame[names[position]].iloc[row_position]),
                "contribution": float(matrix[row_position, position]),
            }
            for position in feature_positions
        ]
        for row_position, feature_positions in enumerate(order)
    ]
    return np.asarray(probabilities, dtype=float), explanations


def _factors(explanations: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    return [
        [
            {
                "feature": str(item["feature"]),
                "value": item["value"],
                "contribution": round(float(item["contribution"]), 6),
            }
            for item in row
        ]
        for row in explanations
    ]


def _feature_values(frame: pd.DataFrame, names: list[str]) -> list[dict[str, Any]]:
    from serving.bundle import json_safe

    return [
        {name: json_safe(value) for name, value in row.items()} for row in frame[names].to_dict("records")
    ]


def score_opportunities(
    models: ModelSet,
    batch: PreparedBatch,
    config: ServiceConfig,
    include_features: bool = False,
    track_records: TrackRecordSource | None = None,
) -> dict[str, Any]:
    """Score the accepted deals of a batch (the body of the ``/v1/opportunities/score`` answer).

    Args:
        models: The model set to use for the whole request.
        batch: Prepared request records.
        config: Grade cut points and number of factors.
        include_features: Add each deal's model input features (for parity checks and debugging).
        track_records: The dataset the deals' track records come from; None: the records alone
            (no closed deals: those features are missing).

    Returns:
        The response body as a dict (``OpportunityScoreResponse`` shape).
    """
    win = models.models["win"]
    amount_model = models.models.get("amount")
    features = opportunity_feature_frame(batch, track_records)
    results: list[dict[str, Any]] = []
    if batch.accepted:
        ids = [opp_id for _, opp_id in batch.accepted]
        frame = with_model_columns(features.loc[ids], win.bundle)
        probabilities, explanations = predict_and_explain(win.bundle, frame, config.top_k_factors)
        factors = _factors(explanations)
        if amount_model is not None:
            amount_frame = with_model_columns(features.loc[ids], amount_model.bundle)
            amounts = np.asarray(amount_model.bundle.predict(amount_frame), dtype=float)
            amounts = np.clip(amounts, 0.0, None)
        feature_rows = _feature_values(frame, win.bundle.feature_names) if include_features else None
        for position, opp_id in enumerate(ids):
            probability = float(probabilities[position])
            if amount_model is not None:
                expected_amount: float | None = float(amounts[position])
                source = "amount_model"
            else:
                as_of_amount = batch.values[opp_id].get("amount")
                expected_amount = None if as_of_amount is None else float(as_of_amount)
                source = "as_of_amount" if expected_amount is not None else "unavailable"
            result = {
                "opportunity_id": opp_id,
                "win_probability": round(probability, 6),
                "score": score_for(probability),
                "grade": grade_for(probability, config.grade_cuts),
                "expected_amount": None if expected_amount is None else round(expected_amount, 2),
                "expected_amount_source": source,
                "expected_revenue": None
                if expected_amount is None
                else round(probability * expected_amount, 2),
                "top_factors": factors[position],
            }
            if feature_rows is not None:
                result["features"] = feature_rows[position]
            results.append(result)
    return {
        "model": "win",
        "model_version": win.version,
        "amount_model_version": amount_model.version if amount_model is not None else None,
        "as_of": batch.as_of.isoformat(),
        "track_records": None if track_records is None else track_records.label,
        "results": results,
        "rejected": batch.rejected,
    }


def score_accounts(
    models: ModelSet, batch: PreparedBatch, config: ServiceConfig, include_features: bool = False
) -> dict[str, Any]:
    """Score the accepted accounts of a batch (the body of the ``/v1/accounts/churn`` answer)."""
    churn = models.models["churn"]
    features = account_feature_frame(batch)
    results: list[dict[str, Any]] = []
    if batch.accepted:
        ids = [account_id for _, account_id in batch.accepted]
        frame = with_model_columns(features.loc[ids], churn.bundle)
        probabilities, explanations = predict_and_explain(churn.bundle, frame, config.top_k_factors)
        factors = _factors(explanations)
        arr = features.loc[ids, "arr"].astype(float).fillna(0.0).to_numpy()
        feature_rows = _feature_values(frame, churn.bundle.feature_names) if include_features else None
        for position, account_id in enumerate(ids):
            probability = float(probabilities[position])
            result = {
                "account_id": account_id,
                "churn_probability": round(probability, 6),
                "risk_band": risk_band_for(probability, config.risk_band_cuts),
                "arr": round(float(arr[position]), 2),
                "revenue_at_risk": round(float(arr[position]) * probability, 2),
                "top_factors": factors[position],
            }
            if feature_rows is not None:
                result["features"] = feature_rows[position]
            results.append(result)
    return {
        "model": "churn",
        "model_version": churn.version,
        "as_of": batch.as_of.isoformat(),
        "results": results,
        "rejected": batch.rejected,
    }


# --------------------------------------------------------------------------- HTTP layer

api = FastAPI(
    title="revcast prediction API",
    version="1",
    description=(
        "Calibrated deal win probability and revenue, churn risk and the revenue forecast, computed "
        "from the CRM records sent in the request (CONTRACT §3). Prediction and admin endpoints need "
        "`Authorization: Bearer <REVCAST_API_TOKEN>`. Health: `/livez`, `/readyz`; metrics: `/metrics`."
    ),
    openapi_url="/openapi.json",
    docs_url=None,  # served below with BentoML's bundled Swagger UI files instead of a CDN's
    redoc_url=None,
)

# BentoML mounts its Swagger UI files at /static_content on the service root (bentoml
# _internal/server/http_app.py); FastAPI's default page loads them from cdn.jsdelivr.net, which a
# service inside a company network often cannot reach, leaving the API docs blank.
SWAGGER_ASSETS = "/static_content"


@api.get("/docs", include_in_schema=False)
async def api_docs(request: Request) -> HTMLResponse:
    """The OpenAPI page (Swagger UI), with its script and style from this service."""
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(
        openapi_url=f"{root}{api.openapi_url}",
        title=f"{api.title} - docs",
        swagger_js_url=f"{SWAGGER_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{SWAGGER_ASSETS}/favicon-light-32x32.png",
    )


_bearer = HTTPBearer(auto_error=False, description="The service's REVCAST_API_TOKEN.")

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Body is not JSON",
        401: "Missing or wrong bearer token",
        413: "Body or batch too large",
        415: "Body is not application/json",
        422: "Invalid request (the message names the field)",
        503: "Models not loaded yet, or feature unavailable",
    }.items()
}


class LastLoad(BaseModel):
    """The last (re)load attempt of one model kind in the worker that answers."""

    at: str = Field(description="When it finished (ISO 8601, UTC).")
    outcome: str = Field(description="loaded, unchanged, swapped a -> b, kept old (v): why, not loaded: why.")
    error: str | None = Field(default=None, description="The whole error when the kind failed to load.")


class ServedModelInfo(ModelInfo):
    """``ModelInfo`` with what the registry holds and how the last load went."""

    alias_version: str | None = Field(
        default=None,
        description="Version the alias pointed to at the last load attempt (None: the registry was not reached).",
    )
    alias_differs: bool | None = Field(
        default=None,
        description="True when the alias points to another version than the one served (its load "
        "failed and the served one was kept); None when unknown.",
    )
    last_load: LastLoad | None = None


class ServiceModelsResponse(ModelsResponse):
    """Answer of ``GET /v1/models`` and ``POST /v1/admin/reload`` (from the worker that answers)."""

    models: dict[str, ServedModelInfo]  # type: ignore[assignment]
    workers: int = Field(description="Worker processes of the service (REVCAST_WORKERS).")
    note: str | None = Field(default=None, description="After a reload: what the other workers do.")


class ApiError(Exception):
    """An answer other than 200, with a one-line reason."""

    def __init__(self, status: int, message: str, field: str | None = None, details: list[Any] | None = None):
        super().__init__(message)
        self.status = status
        self.field = field
        self.details = details or []


def _error_response(status: int, message: str, field: str | None = None, details: list[Any] | None = None):
    """The error shape of every non-200 answer (``X-Request-ID`` is added by ``_RequestEnvelope``)."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = ErrorResponse(error=message, field=field, details=details or []).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


def _note_reason(request: Request, reason: str) -> None:
    """Keep an error answer's reason for the request's log line (``_RequestEnvelope`` writes it)."""
    request.scope.setdefault("state", {})["reason"] = reason


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    _note_reason(request, str(exc))
    return _error_response(exc.status, str(exc), exc.field, exc.details)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("query", "body", "path"))
    details = [
        {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")} for e in errors
    ]
    _note_reason(request, f"{where}: {first.get('msg')}")
    return _error_response(422, f"{where}: {first.get('msg')}", where or None, details)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 404:
        # Without the path a client cannot tell a typo from a missing resource.
        message = f"no such endpoint: {request.method} {request.url.path} (the API is listed at /v1/docs)"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path} (see /v1/docs)"
    else:
        message = str(exc.detail)
    _note_reason(request, message)
    return _error_response(exc.status_code, message)


def _status_of(exc: BaseException) -> int:
    return exc.status if isinstance(exc, ApiError | RequestError) else 500


async def _read_json_body(request: Request, limit: int) -> Any:
    """Read at most ``limit`` bytes of a JSON body; 415/413/400/422 with a reason otherwise."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, got {content_type or 'nothing'!r}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body of {int(declared)} bytes is larger than the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise ApiError(400, "body is empty; expected a JSON object")
    return parse_json_body(body)


def _openapi_body(model: type, example: dict[str, Any]) -> dict[str, Any]:
    """Document a request body whose records are validated one by one inside the handler."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{model.__name__}"},
                    "example": example,
                }
            },
        }
    }


def _install_openapi(app: FastAPI) -> None:
    """Add the request-body models (validated by hand, per record) to the generated OpenAPI document."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (OpportunityScoreRequest, AccountChurnRequest):
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in model_schema.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components[model.__name__] = model_schema
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


_install_openapi(api)


def _log_request(fields: dict[str, Any], request: Request | None = None) -> None:
    """One structured line per request; holds ids, counts and reasons only, never record contents (PII).

    With ``request``, the request is marked as logged so that ``_RequestEnvelope`` adds no second line.
    """
    if request is not None:
        request.scope.setdefault("state", {})["logged"] = True
    logger.info(json.dumps(fields, separators=(",", ":"), default=str))


def _request_id_from(headers: Headers) -> str:
    given = headers.get("x-request-id", "")
    if 0 < len(given) <= 64 and all(ch.isalnum() or ch in "-_." for ch in given):
        return given
    return uuid.uuid4().hex


def _request_id(request: Request) -> str:
    """The request's id: the caller's ``X-Request-ID`` when usable, else a new one (one per request)."""
    state = request.scope.setdefault("state", {})
    if "request_id" not in state:
        state["request_id"] = _request_id_from(request.headers)
    return state["request_id"]


def _service_timeout() -> float:
    try:
        return config_from_env().request_timeout_s
    except ValueError:
        return ServiceConfig.request_timeout_s


# BentoML's own request timeout answers 504 with a body of another shape, no request id and no log
# line of ours, and the handler it cancels would log a 500; it stays as a backstop this much later
# than the API's own timeout (``_RequestEnvelope``), which answers first.
_BENTOML_TIMEOUT_GRACE_S = 2.0


class _RequestEnvelope:
    """ASGI middleware of the /v1 app: request id header, the request timeout, a log line for every answer.

    Every answer carries ``X-Request-ID`` (the caller's when usable). A request not answered within
    ``REVCAST_REQUEST_TIMEOUT_S`` is cancelled and answered 504 in the usual error shape. Answers
    whose handler wrote no log line (unknown paths, rejected query parameters, timeouts before the
    handler logged) get one here, with the reason of an error answer.
    """

    def __init__(self, app: Any, timeout_s: Callable[[], float] = _service_timeout) -> None:
        self.app = app
        self._timeout_of = timeout_s
        self._timeout_s: float | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._timeout_s is None:
            self._timeout_s = self._timeout_of()
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        request_id = state.setdefault("request_id", _request_id_from(Headers(scope=scope)))
        answer = {"status": 500, "started": False}

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answer.update(status=message["status"], started=True)
                headers = MutableHeaders(scope=message)
                if "x-request-id" not in headers:
                    headers.append("X-Request-ID", request_id)
            await send(message)

        try:
            async with asyncio.timeout(self._timeout_s):
                await self.app(scope, receive, send_with_id)
        except TimeoutError:
            reason = (
                f"not answered within {self._timeout_s:g} s (REVCAST_REQUEST_TIMEOUT_S); the request "
                "was cancelled: send fewer records per request or raise the timeout"
            )
            state.setdefault("reason", reason)
            if not answer["started"]:
                await _error_response(504, reason)(scope, receive, send_with_id)
            answer["status"] = 504
        finally:
            if not state.get("logged"):
                fields: dict[str, Any] = {
                    "event": "request",
                    "request_id": request_id,
                    "endpoint": scope.get("path", ""),
                    "method": scope.get("method", ""),
                    "status": answer["status"],
                    "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                }
                if answer["status"] >= 400 and state.get("reason"):
                    fields["reason"] = state["reason"]
                _log_request(fields)


api.add_middleware(_RequestEnvelope)


def _service_workers() -> int:
    try:
        return config_from_env().workers
    except ValueError:
        return ServiceConfig.workers


#: How often each worker looks at the reload signal (seconds); the others follow a reload this fast.
RELOAD_POLL_S = 1.0
#: While a required model is not loaded (e.g. the registry was unreachable at start-up), each worker
#: tries again without being told to: after this many seconds, doubling after each failed try up to
#: ``LOAD_RETRY_MAX_S`` (every try logs its failure at WARNING).
LOAD_RETRY_S = 15.0
LOAD_RETRY_MAX_S = 300.0


def runtime_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Directory shared by the workers of this service instance, and by no other instance.

    BentoML starts the workers of one ``bentoml serve`` as children of its main process, so the main
    process's id (with user and host) names the instance; ``REVCAST_RUNTIME_DIR`` moves the directory
    (default: the system's temporary directory).

    Args:
        environ: Environment to read (default: ``os.environ``).

    Returns:
        The directory (not created here).
    """
    env = os.environ if environ is None else environ
    base = Path(env.get("REVCAST_RUNTIME_DIR") or tempfile.gettempdir())
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return base / f"revcast-{uid}-{socket.gethostname()}-{os.getppid()}"


@dataclass(frozen=True)
class ReloadSignal:
    """The "reload now" token the workers of one instance share through a small file.

    A worker told to reload (admin endpoint, SIGHUP) writes a new token with the time; every worker
    polls the file and reloads when the token changed, unless its own last load started after that
    time (then it already resolved the alias as it is now).

    Attributes:
        path: The file (in ``runtime_dir()``).
    """

    path: Path

    def read(self) -> tuple[str, float] | None:
        """``(token, unix time written)``, or None when no worker was told to reload yet."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return str(data["token"]), float(data["at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def bump(self, reason: str, token: str | None = None) -> tuple[str, float]:
        """Write a new token (atomically: readers see the old file or the new one, never half of one).

        Args:
            reason: What asked for the reload (kept in the file for operators).
            token: The token to write (default: a new random one).

        Returns:
            ``(token, unix time written)``.
        """
        token, at = token or uuid.uuid4().hex, time.time()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.{token}")
        temporary.write_text(
            json.dumps({"token": token, "at": at, "pid": os.getpid(), "reason": reason}), encoding="utf-8"
        )
        os.replace(temporary, self.path)
        return token, at


# BentoML labels /metrics by route template, not raw path (serving/metrics_labels.py); it builds the
# app right after importing this module, so the middleware is swapped here, before the service exists.
install_route_labels()


@bentoml.service(
    name="revcast",
    workers=_service_workers(),
    traffic={"timeout": _service_timeout() + _BENTOML_TIMEOUT_GRACE_S},
)
@bentoml.asgi_app(api, path="/v1")
@bentoml.asgi_app(ui_app, path="/ui")  # managers' web page (owner: serving/ui); same token, session cookie
class RevcastService:
    """Win probability, deal revenue, churn risk and the revenue forecast over HTTP (CONTRACT §3)."""

    def __init__(self) -> None:
        """Read the configuration; models load in the background (see ``start_loading``)."""
        self.config = config_from_env()
        if not self.config.api_token:
            raise RuntimeError(
                "REVCAST_API_TOKEN is not set: the prediction endpoints need a bearer token "
                "(revcast serve generates one when it is missing)"
            )
        _configure_logging()
        # Download progress bars would flood the service log at every (re)load.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # One OpenMP thread per LightGBM call: requests are small and run side by side, and an OpenMP
        # team per call mostly waits for cores other requests hold (p50 of a one-row predict 28 ms ->
        # 9 ms on a loaded 2-core machine). Read when LightGBM loads, i.e. with the first model;
        # an explicit OMP_NUM_THREADS wins (`revcast serve` also sets it before the process starts).
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        from serving.registry import SERVICE_HTTP_ENV

        # Bounded MLflow retries: an unreachable registry is reported in seconds, not after ~4 minutes.
        for name, value in SERVICE_HTTP_ENV.items():
            os.environ.setdefault(name, value)
        self.models: ModelSet = ModelSet()
        self.load_error: str | None = None
        self._reload_lock = threading.Lock()
        # Workers of one instance tell each other to reload through this file (see ReloadSignal).
        self._reload_signal = ReloadSignal(runtime_dir() / "reload-signal.json")
        self._seen_signal: str | None = None
        self._reload_task: asyncio.Future[dict[str, str]] | None = None
        self._load_started = 0.0  # unix time the last (re)load started resolving the alias
        self._last_load_finished = 0.0
        self._forecast_tables: dict[str, pd.DataFrame] | None = None
        self._forecast_error: str | None = None
        # Track records of deals scored through the API, from the same dataset (serving.track_records).
        self._track_record_source: TrackRecordSource | None = None
        self._start_up_done = False  # models and the forecast dataset have been read (see __is_ready__)
        # (first deal created, latest timestamp) of the forecast dataset: the as_of values it can answer.
        self._forecast_range: tuple[pd.Timestamp, pd.Timestamp] | None = None
        self._metrics = _metrics()
        # Scoring runs on its own few threads rather than the server's shared thread pool: dozens of
        # CPU-bound requests interleaving on a few cores make every one of them slow. Requests that
        # wait meanwhile are scored together in one feature build (serving.coalesce). Big requests
        # have a lane of their own so that a 1,000-deal batch never holds up interactive calls.
        # Prediction endpoints only; health and docs never wait for either.
        self._coalescer = RequestCoalescer(
            score_request_jobs,
            threads=self.config.scoring_threads,
            max_records=self.config.coalesce_max_records,
            linger_s=self.config.coalesce_linger_ms / 1000.0,
        )
        self._large_requests = RequestCoalescer(score_request_jobs, threads=1, max_records=0)

    # ------------------------------------------------------------------ lifecycle

    @bentoml.on_startup
    def start_loading(self) -> None:
        """Load and warm the models (and the forecast dataset) without blocking /livez."""
        threading.Thread(target=self._initial_load, name="revcast-model-load", daemon=True).start()
        if threading.current_thread() is threading.main_thread():
            try:
                signal.signal(
                    signal.SIGHUP,
                    lambda *_: threading.Thread(
                        target=self.reload_everywhere, args=("sighup",), daemon=True
                    ).start(),
                )
            except (ValueError, OSError):  # not allowed here: the admin endpoint still works
                logger.info(json.dumps({"event": "sighup_not_installed"}))

    def _initial_load(self) -> None:
        started = time.perf_counter()
        # Before loading: a reload signalled from now on must still reach this worker.
        current = self._reload_signal.read()
        self._seen_signal = current[0] if current else None
        with self._reload_lock:
            self._load_started = time.time()
            models, outcome = load_model_set(self.config)
            self.models = models
            self._last_load_finished = time.time()
        self._export_versions()
        _log_request(
            {
                "event": "models_loaded",
                "ready": models.ready(self.config.required_models),
                "outcome": outcome,
                "versions": {kind: m.version for kind, m in models.models.items()},
                "seconds": round(time.perf_counter() - started, 3),
                "pid": os.getpid(),
            }
        )
        self._warn_failures(models)
        threading.Thread(target=self._watch_reload_signal, name="revcast-reload-watch", daemon=True).start()
        if self.config.data_dir is not None:
            try:
                from features.data import load_tables
                from serving.forecast import forecast_data_range
                from serving.track_records import TrackRecordSource

                tables, _report = load_tables(self.config.data_dir)
                # Range first: the endpoint reads the tables as the sign that both are set.
                self._forecast_range = forecast_data_range(tables)
                self._forecast_tables = tables
                source = TrackRecordSource(tables, self._forecast_range[1])
                source.warm(self._forecast_range[1])  # the date requests without as_of read
                self._track_record_source = source
            except Exception as exc:  # the forecast answers 503 with this reason
                self._forecast_error = f"{type(exc).__name__}: {exc}"
        freeze_long_lived_objects()
        self._start_up_done = True

    def __is_ready__(self) -> bool:
        """/readyz: 200 only when the required models are loaded and warmed and start-up has finished.

        Start-up includes reading the forecast dataset when one is configured (``REVCAST_DATA_DIR``):
        before, a client that waited for /readyz could still get "the forecast dataset is still
        loading". Whether it loaded does not matter here: a dataset that fails makes only the forecast
        and the page answer with the reason, and predictions stay available.
        """
        return self._start_up_done and self.models.ready(self.config.required_models)

    def reload(self, source: str = "call") -> dict[str, str]:
        """Load the models now behind the alias and swap them in; keep any that fail (outcome per kind).

        Only this worker; ``reload_everywhere`` tells the other workers too.

        Args:
            source: What asked for it, for the log (``admin``, ``sighup``, ``signal``, ``retry``).

        Returns:
            Outcome per model kind (see ``load_model_set``).
        """
        started = time.perf_counter()
        with self._reload_lock:
            self._load_started = time.time()
            models, outcome = load_model_set(self.config, previous=self.models)
            self.models = models  # one reference assignment: requests in flight keep their set
            self._last_load_finished = time.time()
        freeze_long_lived_objects()
        self._export_versions()
        _log_request(
            {
                "event": "models_reloaded",
                "source": source,
                "outcome": outcome,
                "versions": {kind: m.version for kind, m in models.models.items()},
                "seconds": round(time.perf_counter() - started, 3),
                "pid": os.getpid(),
            }
        )
        self._warn_failures(models)
        return outcome

    def reload_everywhere(self, source: str) -> dict[str, str]:
        """Reload this worker now and signal the other workers of the instance to follow.

        Args:
            source: ``admin`` or ``sighup`` (logged).

        Returns:
            This worker's outcome per model kind.
        """
        token = uuid.uuid4().hex
        self._seen_signal = token  # before the file says so: this worker reloads right below anyway
        try:
            self._reload_signal.bump(source, token)
        except OSError as exc:  # the others then keep their models until told themselves
            logger.warning(
                json.dumps(
                    {
                        "event": "reload_signal_failed",
                        "path": str(self._reload_signal.path),
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                )
            )
        return self.reload(source)

    def _watch_reload_signal(self) -> None:
        """Reload when another worker signalled a reload, or retry while a required model is missing."""
        failed_tries = 0
        while True:
            time.sleep(RELOAD_POLL_S)
            try:
                current = self._reload_signal.read()
                if current is not None and current[0] != self._seen_signal:
                    self._seen_signal = current[0]
                    if current[1] >= self._load_started:  # not already resolved after the signal
                        self.reload("signal")
                elif self.models.ready(self.config.required_models):
                    failed_tries = 0
                elif time.time() - self._last_load_finished >= min(
                    LOAD_RETRY_S * 2 ** min(failed_tries, 8), LOAD_RETRY_MAX_S
                ):
                    failed_tries += 1
                    self.reload("retry")
            except Exception as exc:  # the watcher must outlive any one failure
                logger.warning(
                    json.dumps({"event": "reload_watch_failed", "error": f"{type(exc).__name__}: {exc}"})
                )

    def _warn_failures(self, models: ModelSet) -> None:
        """One WARNING line per model kind that failed to load, with the whole error."""
        for kind, attempt in models.attempts.items():
            if attempt.error is None:
                continue
            served = models.models.get(kind)
            logger.warning(
                json.dumps(
                    {
                        "event": "model_load_failed",
                        "model": kind,
                        "served_version": served.version if served else None,
                        "alias": self.config.model_alias,
                        "alias_version": attempt.alias_version,
                        "outcome": attempt.outcome,
                        "error": attempt.error,
                        "pid": os.getpid(),
                    },
                    default=str,
                )
            )

    def _export_versions(self) -> None:
        for kind in MODEL_KINDS:
            model = self.models.models.get(kind)
            self._metrics["loaded"].labels(model=kind).set(
                float(model.version) if model and model.version.isdigit() else 0.0
            )

    # ------------------------------------------------------------------ helpers

    def _check_token(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        token = self.config.api_token or ""
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <REVCAST_API_TOKEN>'")
        if not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise ApiError(401, "wrong bearer token")

    def _track_records(self) -> TrackRecordSource | None:
        """The dataset deals' track records come from, once start-up has read it (None: no dataset)."""
        return self._track_record_source

    def _models_for(self, kinds: tuple[str, ...]) -> ModelSet:
        models = self.models  # the whole request uses this one set, even if a reload swaps it meanwhile
        if not models.warmed:
            raise ApiError(503, "models are still loading; retry when /readyz answers 200")
        for kind in kinds:
            if kind not in models.models:
                reason = models.errors.get(kind, "not loaded")
                raise ApiError(503, f"the {kind} model is not available: {reason}")
        return models

    async def _predict(
        self,
        request: Request,
        credentials: HTTPAuthorizationCredentials | None,
        endpoint: Literal["opportunities", "accounts"],
        include_features: bool,
    ) -> JSONResponse:
        started = time.perf_counter()
        request_id = _request_id(request)
        log: dict[str, Any] = {"event": "request", "request_id": request_id, "endpoint": endpoint}
        status = 500
        try:
            self._check_token(credentials)
            kind = "win" if endpoint == "opportunities" else "churn"
            models = self._models_for((kind,))
            if endpoint == "opportunities" and self.config.data_dir is not None and not self._start_up_done:
                # Scored now, the deals would miss the dataset's track records and get other scores
                # than a moment later.
                raise ApiError(
                    503, "the dataset (REVCAST_DATA_DIR) is still loading; retry when /readyz answers 200"
                )
            payload = await _read_json_body(request, self.config.max_body_bytes)
            as_of, records = parse_envelope(payload, endpoint, self.config.max_records)
            log["n_records"] = len(records)
            # Without an as_of the records are scored as of "now" at scoring time, which all requests
            # scored in one build share: a CRM that leaves as_of out still gets its concurrent calls
            # merged (an arrival time each, to the microsecond, would never match another's).
            explicit_as_of = as_of if payload.get("as_of") is not None else None
            job = ScoringRequest(
                endpoint,
                models,
                records,
                explicit_as_of,
                self.config,
                include_features,
                self._track_records(),
            )
            large = 0 < self.config.large_request_records <= len(records)
            lane = self._large_requests if large else self._coalescer
            log["lane"] = "large" if large else "small"
            queued = lane.submit(job.merge_key(), len(records), job)
            body = await asyncio.wrap_future(queued.future)
            log["scored_with"] = queued.scored_with
            log.update(
                model_version=body["model_version"],
                n_scored=len(body["results"]),
                n_rejected=len(body["rejected"]),
            )
            if not body["results"]:
                # Nothing could be scored: that is an invalid request, and the reasons name the fields.
                first = (
                    body["rejected"][0]["errors"][0]
                    if body["rejected"] and body["rejected"][0]["errors"]
                    else ""
                )
                status = 422
                # The record's own reasons can quote its values: the log names only the field.
                log["reason"] = (
                    f"no record could be scored (first rejected: {endpoint}[{body['rejected'][0]['index']}])"
                )
                return _error_response(
                    422,
                    f"no record could be scored; first reason: {endpoint}[{body['rejected'][0]['index']}].{first}",
                    field=f"{endpoint}[{body['rejected'][0]['index']}]",
                    details=body["rejected"],
                )
            status = 200
            self._metrics["records"].labels(endpoint=endpoint, outcome="scored").inc(len(body["results"]))
            self._metrics["records"].labels(endpoint=endpoint, outcome="rejected").inc(len(body["rejected"]))
            return JSONResponse(body, headers={"X-Request-ID": request_id})
        except (ApiError, RequestError) as exc:
            status = _status_of(exc)
            log["reason"] = str(exc)
            return _error_response(status, str(exc), getattr(exc, "field", None))
        except asyncio.CancelledError:
            # Cancelled by the request timeout (_RequestEnvelope), which answers 504.
            status = 504
            log["reason"] = (
                f"not answered within {self.config.request_timeout_s:g} s (REVCAST_REQUEST_TIMEOUT_S)"
            )
            raise
        except Exception as exc:
            logger.exception("request %s failed: %s", request_id, type(exc).__name__)
            log["reason"] = f"internal error: {type(exc).__name__}"
            return _error_response(500, f"internal error (request id {request_id})")
        finally:
            log.update(status=status, latency_ms=round((time.perf_counter() - started) * 1000, 2))
            _log_request(log, request)

    # ------------------------------------------------------------------ endpoints

    @api.post(
        "/opportunities/score",
        response_model=OpportunityScoreResponse,
        responses=_ERRORS,
        openapi_extra=_openapi_body(OpportunityScoreRequest, EXAMPLE_OPPORTUNITY_REQUEST),
        summary="Score open deals: win probability, score, grade, expected amount and revenue",
        tags=["predictions"],
    )
    async def score_opportunities(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        include_features: Annotated[
            bool, Query(description="Return each deal's model input features.")
        ] = False,
    ) -> JSONResponse:
        """Records that cannot be scored are listed in ``rejected`` with every reason; the others are scored."""
        return await self._predict(request, credentials, "opportunities", include_features)

    @api.post(
        "/accounts/churn",
        response_model=AccountChurnResponse,
        responses=_ERRORS,
        openapi_extra=_openapi_body(AccountChurnRequest, EXAMPLE_CHURN_REQUEST),
        summary="Churn risk of accounts: probability, risk band, revenue at risk",
        tags=["predictions"],
    )
    async def churn_accounts(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        include_features: Annotated[
            bool, Query(description="Return each account's model input features.")
        ] = False,
    ) -> JSONResponse:
        """Records that cannot be scored are listed in ``rejected`` with every reason; the others are scored."""
        return await self._predict(request, credentials, "accounts", include_features)

    @api.get(
        "/forecast",
        response_model=ForecastResponse,
        responses=_ERRORS,
        summary="Revenue forecast (P10/P50/P90) for the current period, optionally by rep/team/region",
        tags=["predictions"],
    )
    async def forecast(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        period: Annotated[Literal["month", "quarter"], Query()] = "quarter",
        by: Annotated[Literal["rep", "team", "region"] | None, Query()] = None,
        as_of: Annotated[
            str | None,
            Query(
                description="ISO date or datetime inside the dataset (`data_from` .. `data_through` of "
                "the answer; default: `data_through`, the latest timestamp in the dataset)."
            ),
        ] = None,
    ) -> JSONResponse:
        """Forecast from the service's configured dataset (``REVCAST_DATA_DIR``).

        No registered model is used: win rates, close timing and amounts are learned from the
        dataset's own history (``serving.forecast``), so ``model`` is ``forecast`` and
        ``model_version`` is ``historical-rates@<data_through>`` (see ``ForecastResponse``).
        An ``as_of`` outside the dataset answers 422: after its end the deals' states and won revenue
        are unknown, before its first deal there is nothing to learn from.
        """
        started = time.perf_counter()
        request_id = _request_id(request)
        status = 500
        reason: str | None = None
        try:
            self._check_token(credentials)
            if self.config.data_dir is None:
                raise ApiError(503, "no dataset is configured: set REVCAST_DATA_DIR to a dataset directory")
            if self._forecast_tables is None:
                raise ApiError(503, self._forecast_error or "the forecast dataset is still loading")
            from serving.requests import parse_as_of

            tables = self._forecast_tables
            data_range = self._forecast_range
            assert data_range is not None  # set before the tables (see _initial_load)
            when = _check_forecast_as_of(parse_as_of(as_of), data_range) if as_of is not None else None
            result = await run_in_threadpool(_forecast, tables, when, period, by, data_range)
            status = 200
            return JSONResponse(result, headers={"X-Request-ID": request_id})
        except (ApiError, RequestError) as exc:
            status, reason = _status_of(exc), str(exc)
            return _error_response(status, str(exc), getattr(exc, "field", None))
        except ValueError as exc:  # the engine's own message (e.g. no history to learn from)
            status = 422
            message = reason = str(exc).splitlines()[0]
            about_as_of = as_of is not None and "to learn from" in message
            return _error_response(422, message, "as_of" if about_as_of else None)
        except asyncio.CancelledError:  # the request timeout (_RequestEnvelope answers 504)
            status = 504
            reason = f"not answered within {self.config.request_timeout_s:g} s (REVCAST_REQUEST_TIMEOUT_S)"
            raise
        except Exception as exc:
            logger.exception("forecast %s failed: %s", request_id, type(exc).__name__)
            reason = f"internal error: {type(exc).__name__}"
            return _error_response(500, f"internal error (request id {request_id})")
        finally:
            fields: dict[str, Any] = {
                "event": "request",
                "request_id": request_id,
                "endpoint": "forecast",
                "status": status,
                "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            }
            if reason is not None:
                fields["reason"] = reason
            _log_request(fields, request)

    @api.get(
        "/examples/opportunities/score",
        response_model=OpportunityScoreRequest,
        tags=["service"],
        summary="A valid request body for POST /v1/opportunities/score",
    )
    async def example_opportunity_request(self) -> OpportunityScoreRequest:
        """Also puts the request schema into every OpenAPI document built from the routes."""
        return OpportunityScoreRequest.model_validate(EXAMPLE_OPPORTUNITY_REQUEST)

    @api.get(
        "/examples/accounts/churn",
        response_model=AccountChurnRequest,
        tags=["service"],
        summary="A valid request body for POST /v1/accounts/churn",
    )
    async def example_churn_request(self) -> AccountChurnRequest:
        """Also puts the request schema into every OpenAPI document built from the routes."""
        return AccountChurnRequest.model_validate(EXAMPLE_CHURN_REQUEST)

    @api.get(
        "/models",
        response_model=ServiceModelsResponse,
        responses=_ERRORS,
        tags=["service"],
        summary="Models being served",
    )
    async def models_info(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> JSONResponse:
        """Name, version, alias and sha256 of every model kind, and why one is missing.

        Also, per kind, the last load attempt (time, outcome, whole error) and the version the alias
        pointed to then: ``alias_differs`` is true when a newer champion failed to load and the old
        one is still served. With several workers, this is the state of the worker that answers.

        Needs the token like the prediction endpoints: run ids, hashes and load errors (which can
        name registry paths) are for operators, not for anyone who can reach the port.
        """
        try:
            self._check_token(credentials)
        except ApiError as exc:
            _note_reason(request, str(exc))
            return _error_response(exc.status, str(exc))
        return JSONResponse(_models_response(self.models, self.config).model_dump())

    @api.post(
        "/admin/reload",
        response_model=ServiceModelsResponse,
        responses=_ERRORS,
        tags=["service"],
        summary="Load the models now behind the alias in every worker; keep the old one of any kind that fails",
    )
    async def admin_reload(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> JSONResponse:
        """Swap to newly promoted champions without dropping requests in flight.

        The worker that takes the call reloads before answering (``reload`` holds its outcome); it
        signals the other workers, which start the same reload within about a second. A reload
        that outlasts the request timeout goes on in the background: the answer (202) says so and
        ``GET /v1/models`` shows its outcome once done.
        """
        try:
            self._check_token(credentials)
        except ApiError as exc:
            _note_reason(request, str(exc))
            return _error_response(exc.status, str(exc))
        started = time.perf_counter()
        task = asyncio.ensure_future(run_in_threadpool(self.reload_everywhere, "admin"))
        self._reload_task = task  # keeps a reload that outlives this request referenced
        # Leave time to answer before the request timeout (_RequestEnvelope) would cancel the call.
        budget = max(self.config.request_timeout_s * 0.8, self.config.request_timeout_s - 2.0)
        done, _ = await asyncio.wait({task}, timeout=budget)
        others = self.config.workers - 1
        if not done:
            response = _models_response(self.models, self.config)
            response.note = (
                f"the reload is still running after {budget:g} s and goes on in the background; "
                "GET /v1/models shows each model's last_load once it is done"
                + (f"; the other {others} worker(s) were signalled to reload too" if others else "")
            )
            return JSONResponse(response.model_dump(), status_code=202)
        outcome = task.result()
        seconds = time.perf_counter() - started
        response = _models_response(self.models, self.config)
        response.reload = outcome
        if others:
            response.note = (
                f"this worker has reloaded; the other {others} worker(s) check every {RELOAD_POLL_S:g} s "
                f"and serve the same models once their own load is done (this one took {seconds:.1f} s)"
            )
        return JSONResponse(response.model_dump())


@dataclass(frozen=True)
class ScoringRequest:
    """What one prediction request asks the scoring threads for.

    Attributes:
        endpoint: ``opportunities`` or ``accounts``.
        models: The model set the whole request uses.
        records: The request's records (decoded JSON, not yet validated).
        as_of: The timestamp they are scored as of; None: the time they are scored (the build's start).
        config: Service settings (grade cuts, number of factors).
        include_features: Return each record's model features too.
        track_records: The dataset deals' track records are read from (None: no dataset).
    """

    endpoint: Literal["opportunities", "accounts"]
    models: ModelSet
    records: list[Any]
    as_of: pd.Timestamp | None
    config: ServiceConfig
    include_features: bool
    track_records: TrackRecordSource | None = None

    def merge_key(self) -> tuple[Any, ...]:
        """Requests are scored in one build only when these are equal (the model set by identity)."""
        return (
            self.endpoint,
            id(self.models),
            self.as_of,
            self.include_features,
            id(self.config),
            id(self.track_records),
        )


_SCORERS: dict[str, tuple[Callable[..., PreparedBatch], Callable[..., dict[str, Any]], str]] = {
    "opportunities": (prepare_opportunities, score_opportunities, "opportunity_id"),
    "accounts": (prepare_accounts, score_accounts, "account_id"),
}


def score_request_jobs(jobs: list[ScoringJob]) -> list[dict[str, Any]]:
    """Answer bodies of requests with one merge key, from one feature build (see serving.coalesce).

    Each request's records are validated on their own (its rejections stay its own); the accepted
    ones of all requests are scored together with ids namespaced per request, and the answer is cut
    back per request.

    Args:
        jobs: Coalescer jobs whose payloads are ``ScoringRequest`` with equal ``merge_key()``.

    Returns:
        One response body per job, in order.
    """
    requests: list[ScoringRequest] = [job.payload for job in jobs]
    first = requests[0]
    prepare, score, id_field = _SCORERS[first.endpoint]
    if first.endpoint == "opportunities":  # the configured closed-stage vocabulary (serving.yaml)
        prepare = functools.partial(prepare, closed_stages=first.config.closed_stages)
        score = functools.partial(score, track_records=first.track_records)
    # Equal merge keys: either every request names the same as_of or none does (then: now, once).
    as_of = first.as_of if first.as_of is not None else to_timestamp(datetime.now(UTC))
    if len(requests) == 1:
        return [score(first.models, prepare(first.records, as_of), first.config, first.include_features)]
    batches = [prepare(request.records, as_of, with_tables=False) for request in requests]
    merged = merge_batches(batches, [len(request.records) for request in requests])
    body = score(first.models, merged.batch, first.config, first.include_features)
    return split_body(body, merged, id_field)


def _check_forecast_as_of(as_of: pd.Timestamp, data_range: tuple[pd.Timestamp, pd.Timestamp]) -> pd.Timestamp:
    """Refuse (422, field ``as_of``) a forecast date outside the dataset.

    After the data ends, the open deals would count as frozen in their exported state and nothing
    would be won: wrong numbers with a 200. Before the first deal there is nothing to learn from.
    """
    first, last = data_range
    span = f"the dataset runs from {first.isoformat()} (first deal created) to {last.isoformat()}"
    if as_of > last:
        raise ApiError(
            422,
            f"as_of {as_of.isoformat()} is after the end of the data: {span}; leave as_of out to "
            "forecast as of the data's end, or load a newer export (REVCAST_DATA_DIR) and restart",
            field="as_of",
        )
    if as_of < first:
        raise ApiError(
            422,
            f"as_of {as_of.isoformat()} is before the first deal: {span}; pass an as_of inside that "
            "range, or leave it out to forecast as of the data's end",
            field="as_of",
        )
    return as_of


def _forecast(
    tables: dict[str, pd.DataFrame],
    as_of: pd.Timestamp | None,
    period: str,
    by: str | None,
    data_range: tuple[pd.Timestamp, pd.Timestamp],
) -> dict[str, Any]:
    """The ``ForecastResponse`` body: the engine's result with the model fields a CRM logs."""
    from serving.forecast import FORECAST_METHOD, forecast_revenue

    first, last = data_range
    if as_of is None:
        as_of = last
    result = forecast_revenue(tables, as_of, period=period, by=by, current_state_as_of=as_of)  # type: ignore[arg-type]
    return {
        "model": "forecast",
        "model_version": f"{FORECAST_METHOD}@{last.isoformat()}",
        "data_from": first.isoformat(),
        "data_through": last.isoformat(),
        **result.to_dict(),
    }


def _models_response(models: ModelSet, config: ServiceConfig) -> ServiceModelsResponse:
    infos = {}
    for kind in MODEL_KINDS:
        loaded = models.models.get(kind)
        attempt = models.attempts.get(kind)
        alias_version = attempt.alias_version if attempt else None
        infos[kind] = ServedModelInfo(
            name=str(loaded.info.get("name")) if loaded else config.model_names.get(kind, kind),
            version=loaded.version if loaded else None,
            alias=config.model_alias,
            run_id=loaded.info.get("run_id") if loaded else None,
            sha256=loaded.info.get("sha256") if loaded else None,
            loaded=loaded is not None,
            error=models.errors.get(kind) or (attempt.error if attempt else None),
            alias_version=alias_version,
            alias_differs=None
            if alias_version is None
            else (loaded is None or alias_version != loaded.version),
            last_load=LastLoad(at=attempt.at, outcome=attempt.outcome, error=attempt.error)
            if attempt
            else None,
        )
    return ServiceModelsResponse(
        ready=models.ready(config.required_models), models=infos, workers=config.workers
    )


_ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


async def _unknown_endpoint(request: Request) -> JSONResponse:
    """Any other path under /v1: 405 when another method would be served there, else 404 (JSON).

    BentoML mounts the API "passively": a path no route of the API matches went to BentoML's own
    router, which answers a plain-text 404 without a request id. This route, added last, matches
    every path, so the mount takes all of /v1 and such answers get the API's error shape.
    """
    for route in api.routes:
        if getattr(route, "endpoint", None) is _unknown_endpoint:
            continue
        if route.matches(request.scope)[0] == Match.PARTIAL:
            raise StarletteHTTPException(405)
    raise StarletteHTTPException(404)


# After the service's own routes (added when the class above was decorated): routes match in order.
api.add_api_route("/{path:path}", _unknown_endpoint, methods=_ANY_METHOD, include_in_schema=False)


_METRICS: dict[str, Any] = {}


def _metrics() -> dict[str, Any]:
    """Prometheus metrics (exported on /metrics), created once per process."""
    if not _METRICS:
        _METRICS["records"] = bentoml.metrics.Counter(
            name="revcast_records_total",
            documentation="Records received by the prediction endpoints, by outcome (scored/rejected).",
            labelnames=["endpoint", "outcome"],
        )
        _METRICS["loaded"] = bentoml.metrics.Gauge(
            name="revcast_model_version",
            documentation="Registered version of each served model (0 = not loaded).",
            labelnames=["model"],
        )
    return _METRICS


def _configure_logging() -> None:
    """Request lines go to stderr as JSON (one per request), whatever BentoML does with other loggers."""
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JsonLineFormatter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


class _JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        try:
            fields = json.loads(message)
            if not isinstance(fields, dict):
                fields = {"message": message}
        except ValueError:
            fields = {"message": message}
        fields = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            **fields,
        }
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(fields, separators=(",", ":"), default=str)
