"""Configuration of the prediction service: defaults from `serving/serving.yaml`, overrides from env.

Only the service edge (serving/service.py, training/cmd_serve.py) reads the environment; everything
else receives a `ServiceConfig`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULTS_FILE = Path(__file__).with_name("serving.yaml")

# Current-stage values that say a deal is closed, as common CRMs spell them (Salesforce "Closed Won" /
# "Closed Lost", HubSpot "closedwon" / "closedlost", plain won / lost / closed), in the form they are
# compared in (closed_stage_key: "Closed - Won", "closed_won" and "closed-won" all read "closed won").
# serving.yaml carries the same list.
DEFAULT_CLOSED_STAGES: frozenset[str] = frozenset(
    {"closed won", "closed lost", "closedwon", "closedlost", "won", "lost", "closed"}
)

# Runs of anything but letters and digits (any script): the separators CRMs put between a stage's words.
_STAGE_SEPARATORS = re.compile(r"[\W_]+")


class ConfigError(ValueError):
    """A configuration value (file or environment variable) is invalid."""


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the service needs to know that is not a request.

    Attributes:
        api_token: Bearer token required on prediction and admin endpoints (None = not configured).
        model_alias: Registry alias to serve (``champion`` by default).
        tracking_uri: MLflow tracking URI (None = MLflow's own default).
        data_dir: Dataset directory used by ``GET /v1/forecast`` (None = forecast unavailable).
        model_names: Model kind (win/amount/churn) -> registered model name.
        required_models: Model kinds that must load before ``/readyz`` answers 200.
        max_records: Largest number of records accepted in one request.
        max_body_bytes: Largest request body accepted, in bytes.
        request_timeout_s: Time after which a request is answered 504.
        workers: Number of BentoML worker processes.
        scoring_threads: Threads scoring small requests in one worker (the rest wait their turn).
        coalesce_max_records: Requests waiting for a scoring thread are scored together in one
            feature build while their records stay within this many (0: each request alone).
        coalesce_linger_ms: Right after a merged build, how long a scoring thread may wait for more
            requests before scoring the few that are waiting (0: never waits).
        large_request_records: Requests with at least this many records are scored on a thread of
            their own, one at a time, so that they never hold up small ones (0: no separate thread).
        grade_cuts: Lower win-probability bound of grades A, B and C (D is everything below).
        risk_band_cuts: Lower churn-probability bound of the ``high`` and ``medium`` bands.
        top_k_factors: Number of signed contributions returned per record (>= 0; 0 returns an
            empty ``top_factors`` list).
        closed_stages: Stages (in ``closed_stage_key`` form) that mean a deal is closed; a deal sent
            for scoring with one of them and no outcome is rejected, not scored as open.
    """

    api_token: str | None = None
    model_alias: str = "champion"
    tracking_uri: str | None = None
    data_dir: Path | None = None
    model_names: Mapping[str, str] = field(
        default_factory=lambda: {"win": "revcast-win", "amount": "revcast-amount", "churn": "revcast-churn"}
    )
    required_models: tuple[str, ...] = ("win", "churn")
    max_records: int = 2000
    max_body_bytes: int = 16 * 1024 * 1024
    request_timeout_s: float = 60.0
    workers: int = 1
    scoring_threads: int = 1
    coalesce_max_records: int = 1000
    coalesce_linger_ms: float = 20.0
    large_request_records: int = 100
    grade_cuts: Mapping[str, float] = field(default_factory=lambda: {"A": 0.6, "B": 0.4, "C": 0.2})
    risk_band_cuts: Mapping[str, float] = field(default_factory=lambda: {"high": 0.5, "medium": 0.2})
    top_k_factors: int = 5
    closed_stages: frozenset[str] = DEFAULT_CLOSED_STAGES

    def __post_init__(self) -> None:
        """Check the values that would otherwise fail only at request time."""
        if self.max_records < 1:
            raise ConfigError(f"max_records must be >= 1, got {self.max_records}")
        if self.scoring_threads < 1:
            raise ConfigError(f"scoring_threads must be >= 1, got {self.scoring_threads}")
        if self.coalesce_max_records < 0:
            raise ConfigError(f"coalesce_max_records must be >= 0, got {self.coalesce_max_records}")
        if not (0 <= self.coalesce_linger_ms <= 1000):
            raise ConfigError(f"coalesce_linger_ms must be within 0-1000, got {self.coalesce_linger_ms}")
        if self.large_request_records < 0:
            raise ConfigError(f"large_request_records must be >= 0, got {self.large_request_records}")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        # A negative count would slice from the end and list all but that many factors.
        if self.top_k_factors < 0:
            raise ConfigError(
                f"top_k_factors (REVCAST_TOP_FACTORS) must be >= 0 (0: no factors), got {self.top_k_factors}"
            )
        if not (self.request_timeout_s > 0 and math.isfinite(self.request_timeout_s)):
            raise ConfigError(f"request_timeout_s must be a positive number, got {self.request_timeout_s}")
        _check_cuts("grade_cuts", self.grade_cuts, ["A", "B", "C"])
        _check_cuts("risk_band_cuts", self.risk_band_cuts, ["high", "medium"])
        unknown = set(self.required_models) - set(self.model_names)
        if unknown:
            raise ConfigError(f"required_models names unknown model kinds: {sorted(unknown)}")
        # Compared with keyed stages: a value that is not a key itself would never match.
        odd = sorted(
            repr(stage)
            for stage in self.closed_stages
            if not isinstance(stage, str) or not stage or closed_stage_key(stage) != stage
        )
        if odd:
            raise ConfigError(
                "closed_stages must be non-empty, lower case, words separated by one space "
                f"(see closed_stage_key), got {odd}"
            )


def normalise_stage(value: str) -> str:
    """A stage as it is used as a feature: stripped, lower case (as every category label)."""
    return value.strip().lower()


def closed_stage_key(value: str) -> str:
    """A stage as it is matched against the closed-stage vocabulary.

    Lower case, with every run of characters other than letters and digits read as one space, so
    that the spellings of one stage match ("Closed - Won", "closed_won", "closed-won" -> "closed won").
    Only the closed-stage check uses this; the stage feature keeps ``normalise_stage``, the model
    was trained on it. Words written together stay apart from spaced ones ("closedwon").

    Args:
        value: A stage as sent or configured.

    Returns:
        The key ("" when the text has no letter or digit).
    """
    return _STAGE_SEPARATORS.sub(" ", value.lower()).strip()


def parse_closed_stages(name: str, value: Any) -> frozenset[str]:
    """Closed stages from a list (serving.yaml) or comma-separated text (environment), as keys.

    Args:
        name: Where the value comes from, for the error message.
        value: A list of stage names, or text such as ``"Closed Won,Closed Lost"``.

    Returns:
        The stages in ``closed_stage_key`` form (an empty set: no stage means closed).

    Raises:
        ConfigError: A list item that is not text, or a stage with no letter or digit.
    """
    if isinstance(value, str):
        # Blank parts of the text (a trailing comma) are not stages.
        items: list[Any] = [part for part in value.split(",") if part.strip()]
    elif isinstance(value, list | tuple | set | frozenset):
        items = list(value)
    else:
        raise ConfigError(f"{name} must be a list of stage names, got {type(value).__name__}")
    # A stage with no letter or digit would have an empty key, which no stage can mean.
    bad = [item for item in items if not isinstance(item, str) or not closed_stage_key(item)]
    if bad:
        raise ConfigError(f"{name}: every stage must be text with a letter or digit, got {bad[0]!r}")
    return frozenset(closed_stage_key(item) for item in items)


def _check_cuts(name: str, cuts: Mapping[str, float], order: list[str]) -> None:
    """Cut points must name every band, lie in (0, 1) and decrease from the best band down."""
    if sorted(cuts) != sorted(order):
        raise ConfigError(f"{name} must give exactly {order}, got {sorted(cuts)}")
    values = [float(cuts[key]) for key in order]
    if not all(0.0 < value < 1.0 for value in values):
        raise ConfigError(f"{name} must lie strictly between 0 and 1, got {dict(cuts)}")
    if any(a <= b for a, b in zip(values, values[1:], strict=False)):
        raise ConfigError(f"{name} must decrease in the order {order}, got {dict(cuts)}")


def _parse_cuts(name: str, text: str, order: list[str]) -> dict[str, float]:
    """Parse ``"0.6,0.4,0.2"`` into ``{"A": 0.6, "B": 0.4, "C": 0.2}``."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if len(parts) != len(order):
        raise ConfigError(
            f"{name} needs {len(order)} comma-separated numbers ({', '.join(order)}), got {text!r}"
        )
    try:
        return {key: float(part) for key, part in zip(order, parts, strict=True)}
    except ValueError as exc:
        raise ConfigError(f"{name}: not a number in {text!r}") from exc


def _int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {text!r}") from exc


def _float(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {text!r}") from exc


def load_defaults(path: Path = DEFAULTS_FILE) -> dict[str, Any]:
    """Read the default service settings shipped with the package."""
    with open(path, encoding="utf-8") as handle:
        return dict(yaml.safe_load(handle) or {})


def config_from_env(
    environ: Mapping[str, str] | None = None, defaults: Mapping[str, Any] | None = None
) -> ServiceConfig:
    """Build the service configuration from the defaults file and environment variables.

    Environment variables (all optional): ``REVCAST_API_TOKEN``, ``REVCAST_MODEL_ALIAS``,
    ``MLFLOW_TRACKING_URI``, ``REVCAST_DATA_DIR``, ``REVCAST_MAX_RECORDS``, ``REVCAST_MAX_BODY_BYTES``,
    ``REVCAST_REQUEST_TIMEOUT_S``, ``REVCAST_WORKERS``, ``REVCAST_SCORING_THREADS``, ``REVCAST_GRADE_CUTS`` (``"0.6,0.4,0.2"``),
    ``REVCAST_RISK_BAND_CUTS`` (``"0.5,0.2"``), ``REVCAST_TOP_FACTORS``, ``REVCAST_REQUIRED_MODELS``
    (``"win,churn"``), ``REVCAST_CLOSED_STAGES`` (``"Closed Won,Closed Lost"``, replaces the
    list).

    Args:
        environ: The environment to read (default: ``os.environ``).
        defaults: Default settings (default: ``serving/serving.yaml``).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: When a value is malformed; the message names the variable.
    """
    env = os.environ if environ is None else environ
    base = dict(load_defaults() if defaults is None else defaults)
    values: dict[str, Any] = {
        "model_alias": base.get("model_alias", "champion"),
        "model_names": dict(base.get("model_names", ServiceConfig().model_names)),
        "required_models": tuple(base.get("required_models", ServiceConfig.required_models)),
        "max_records": int(base.get("max_records", ServiceConfig.max_records)),
        "max_body_bytes": int(base.get("max_body_bytes", ServiceConfig.max_body_bytes)),
        "request_timeout_s": float(base.get("request_timeout_s", ServiceConfig.request_timeout_s)),
        "workers": int(base.get("workers", ServiceConfig.workers)),
        "scoring_threads": int(base.get("scoring_threads", ServiceConfig.scoring_threads)),
        "coalesce_max_records": int(base.get("coalesce_max_records", ServiceConfig.coalesce_max_records)),
        "coalesce_linger_ms": float(base.get("coalesce_linger_ms", ServiceConfig.coalesce_linger_ms)),
        "large_request_records": int(base.get("large_request_records", ServiceConfig.large_request_records)),
        "grade_cuts": dict(base.get("grade_cuts", ServiceConfig().grade_cuts)),
        "risk_band_cuts": dict(base.get("risk_band_cuts", ServiceConfig().risk_band_cuts)),
        "top_k_factors": int(base.get("top_k_factors", ServiceConfig.top_k_factors)),
        "closed_stages": parse_closed_stages(
            "closed_stages", base.get("closed_stages", sorted(DEFAULT_CLOSED_STAGES))
        ),
    }
    if env.get("REVCAST_API_TOKEN"):
        values["api_token"] = env["REVCAST_API_TOKEN"]
    if env.get("REVCAST_MODEL_ALIAS"):
        values["model_alias"] = env["REVCAST_MODEL_ALIAS"]
    if env.get("MLFLOW_TRACKING_URI"):
        values["tracking_uri"] = env["MLFLOW_TRACKING_URI"]
    if env.get("REVCAST_DATA_DIR"):
        values["data_dir"] = Path(env["REVCAST_DATA_DIR"])
    if env.get("REVCAST_MAX_RECORDS"):
        values["max_records"] = _int("REVCAST_MAX_RECORDS", env["REVCAST_MAX_RECORDS"])
    if env.get("REVCAST_MAX_BODY_BYTES"):
        values["max_body_bytes"] = _int("REVCAST_MAX_BODY_BYTES", env["REVCAST_MAX_BODY_BYTES"])
    if env.get("REVCAST_REQUEST_TIMEOUT_S"):
        values["request_timeout_s"] = _float("REVCAST_REQUEST_TIMEOUT_S", env["REVCAST_REQUEST_TIMEOUT_S"])
    if env.get("REVCAST_WORKERS"):
        values["workers"] = _int("REVCAST_WORKERS", env["REVCAST_WORKERS"])
    if env.get("REVCAST_SCORING_THREADS"):
        values["scoring_threads"] = _int("REVCAST_SCORING_THREADS", env["REVCAST_SCORING_THREADS"])
    if env.get("REVCAST_COALESCE_LINGER_MS"):
        values["coalesce_linger_ms"] = _float("REVCAST_COALESCE_LINGER_MS", env["REVCAST_COALESCE_LINGER_MS"])
    if env.get("REVCAST_LARGE_REQUEST_RECORDS"):
        values["large_request_records"] = _int(
            "REVCAST_LARGE_REQUEST_RECORDS", env["REVCAST_LARGE_REQUEST_RECORDS"]
        )
    if env.get("REVCAST_COALESCE_MAX_RECORDS"):
        values["coalesce_max_records"] = _int(
            "REVCAST_COALESCE_MAX_RECORDS", env["REVCAST_COALESCE_MAX_RECORDS"]
        )
    if env.get("REVCAST_GRADE_CUTS"):
        values["grade_cuts"] = _parse_cuts("REVCAST_GRADE_CUTS", env["REVCAST_GRADE_CUTS"], ["A", "B", "C"])
    if env.get("REVCAST_RISK_BAND_CUTS"):
        values["risk_band_cuts"] = _parse_cuts(
            "REVCAST_RISK_BAND_CUTS", env["REVCAST_RISK_BAND_CUTS"], ["high", "medium"]
        )
    if env.get("REVCAST_TOP_FACTORS"):
        values["top_k_factors"] = _int("REVCAST_TOP_FACTORS", env["REVCAST_TOP_FACTORS"])
    if env.get("REVCAST_CLOSED_STAGES"):
        values["closed_stages"] = parse_closed_stages("REVCAST_CLOSED_STAGES", env["REVCAST_CLOSED_STAGES"])
    if env.get("REVCAST_REQUIRED_MODELS") is not None:
        values["required_models"] = tuple(
            part.strip() for part in env["REVCAST_REQUIRED_MODELS"].split(",") if part.strip()
        )
    return ServiceConfig(**values)


def grade_for(probability: float, cuts: Mapping[str, float]) -> str:
    """Map a win probability to a grade A-D using the configured lower bounds.

    The grade is read off the score the user sees (`score_for`), so a deal shown as 20 is graded as
    20 % even when its unrounded probability is 19.6 %: a score and a grade never disagree at a cut.
    """
    score = score_for(probability)
    for grade in ("A", "B", "C"):
        if score >= cuts[grade] * 100 - _CUT_TOLERANCE:
            return grade
    return "D"


# Cuts are probabilities: 0.29 * 100 is 28.999999999999996 in floating point, which must still admit 29.
_CUT_TOLERANCE = 1e-9


def risk_band_for(probability: float, cuts: Mapping[str, float]) -> str:
    """Map a churn probability to ``high``/``medium``/``low`` using the configured lower bounds."""
    if probability >= cuts["high"]:
        return "high"
    if probability >= cuts["medium"]:
        return "medium"
    return "low"


def score_for(probability: float) -> int:
    """The 1-99 score shown to users: the probability in percent, clipped so it never reads as certain."""
    return int(min(99, max(1, round(probability * 100))))
