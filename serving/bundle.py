"""The model bundle: the only model format on the serving path (LightGBM text + JSON, hash-checked).

A bundle directory holds three files::

    model.txt       LightGBM ``Booster.model_to_string()`` text (includes ``pandas_categorical``)
    state.json      everything else needed to predict (see ``ModelBundle.state``)
    manifest.json   {"format": 1, "files": {"model.txt": "<sha256>", "state.json": "<sha256>"}}

``ModelBundle.load`` verifies every hash and refuses a mismatch or a missing file with
``BundleIntegrityError``. Nothing is ever pickled.

Categorical features are handled identically at train and predict time: training code calls
``learn_categories`` on the training frame and ``prepare_features`` with those categories before
building the ``lightgbm.Dataset``; the bundle stores the same category lists and ``prepare``
applies them again, so an unseen value becomes NaN (LightGBM's "missing" branch).
``ModelBundle.from_booster`` checks that the booster's ``pandas_categorical`` equals the stored lists.

Prediction does not hand LightGBM the prepared pandas frame when it can avoid it: converting that
frame (``pd.Categorical`` columns, then LightGBM's own ``_data_from_pandas``) cost far more than the
tree walk for small requests. ``ModelBundle.feature_matrix`` builds what LightGBM's pandas conversion
would produce directly: a float64 matrix in model feature order, numeric features as float64 with
+-inf as NaN, each categorical feature as its value's position in the stored category list (NaN for
missing or unseen values -- LightGBM maps pandas code -1 to NaN). Frames it cannot convert exactly
(non-numpy or non-numeric dtypes, missing or duplicate columns, odd categorical values) take the
pandas path, so its errors and results stay the reference.

Calibration JSON format (produced by ``training.calibrate``, applied here by ``apply_calibration``)
-- this is the single place where it is documented:

- ``None``: identity, the model's own probability ``sigmoid(raw margin)`` is returned.
- ``{"method": "isotonic", "x": [...], "y": [...]}``: ``np.interp(p, x, y)`` where ``p`` is the
  uncalibrated probability; ``x`` strictly increasing thresholds, ``y`` non-decreasing values in [0, 1];
  outside ``[x[0], x[-1]]`` the end values are used (clipping).
- ``{"method": "platt", "a": float, "b": float}``: ``sigmoid(a * logit(p) + b)``.

Target transform JSON (state key ``target``, regressors only; produced by ``training.train``, applied
here by ``apply_target_transform``) -- the single place where it is documented:

- key absent or ``None``: the booster predicts the value itself (bundles written before the key existed).
- ``{"kind": "ratio_to_feature", "feature": "<feature column>", "fallback": {"kind": "constant",
  "value": float}}``: the booster predicts the ratio ``value / frame[feature]`` (e.g. won amount /
  as-of amount ``opp_amount``); ``predict`` returns ``booster output * frame[feature]``. Rows whose
  feature value is missing, not finite or ``<= 0`` (no ratio can be formed) get ``fallback.value``
  instead (the training code stores the median training label). The feature must be one of the
  model's ``feature_names``. ``predict_raw``, ``predict_uncalibrated``, ``contributions`` and
  ``explain`` stay in the transformed space: their numbers are ratios (contributions sum to the
  predicted ratio, not to the predicted value) -- the optional ``"explain_space"`` text says so.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

MODEL_FILE = "model.txt"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
BUNDLE_FORMAT = 1
_PROBABILITY_EPS = 1e-12
_NAN = float("nan")
# Numeric feature dtypes whose float64 cast is what ``prepare_features`` gives (bool: 1.0 / 0.0).
_MATRIX_NUMERIC_KINDS = "fiub"

ModelKind = Literal["classifier", "regressor"]


class BundleIntegrityError(Exception):
    """A bundle file is missing, or its sha256 does not match the manifest."""


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _state_to_text(state: Mapping[str, Any]) -> str:
    # Sorted keys and a fixed layout make the digest a function of the content only.
    return json.dumps(state, sort_keys=True, indent=2, allow_nan=False, default=json_safe) + "\n"


def json_safe(value: Any) -> Any:
    """Turn a scalar (numpy, pandas, datetime, NaN) into a JSON-serialisable Python value.

    Args:
        value: Any scalar as found in a DataFrame cell.

    Returns:
        ``None`` for missing values (NaN, NaT, None, pd.NA), Python ``int``/``float``/``bool``/``str``
        for numbers, booleans and strings, ISO-8601 strings for dates and timestamps.
    """
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, pd.Timestamp | _dt.datetime | _dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray | pd.Series | pd.Index):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, set | frozenset):
        return [json_safe(v) for v in sorted(value, key=str)]  # sorted: digests must not vary per process
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def sigmoid(raw: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    raw = np.asarray(raw, dtype=float)
    return np.where(
        raw >= 0, 1.0 / (1.0 + np.exp(-np.abs(raw))), np.exp(-np.abs(raw)) / (1.0 + np.exp(-np.abs(raw)))
    )


def logit(p: np.ndarray) -> np.ndarray:
    """Log-odds of probabilities clipped away from 0 and 1."""
    p = np.clip(np.asarray(p, dtype=float), _PROBABILITY_EPS, 1 - _PROBABILITY_EPS)
    return np.log(p) - np.log1p(-p)


def apply_calibration(calibration: Mapping[str, Any] | None, scores: np.ndarray) -> np.ndarray:
    """Map uncalibrated probabilities to calibrated ones (format in the module docstring).

    Args:
        calibration: The calibration JSON object, or ``None`` for identity.
        scores: Uncalibrated probabilities in [0, 1].

    Returns:
        Calibrated probabilities, same shape as ``scores``.

    Raises:
        ValueError: Unknown method or malformed parameters.
    """
    scores = np.asarray(scores, dtype=float)
    if calibration is None:
        return scores
    method = calibration.get("method")
    if method == "isotonic":
        x = np.asarray(calibration["x"], dtype=float)
        y = np.asarray(calibration["y"], dtype=float)
        if x.ndim != 1 or x.shape != y.shape or x.size == 0:
            raise ValueError("isotonic calibration needs non-empty 'x' and 'y' lists of equal length")
        return np.interp(scores, x, y)
    if method == "platt":
        return sigmoid(float(calibration["a"]) * logit(scores) + float(calibration["b"]))
    raise ValueError(f"unknown calibration method {method!r}; expected 'isotonic' or 'platt'")


TARGET_RATIO_TO_FEATURE = "ratio_to_feature"


def validate_target_transform(target: Mapping[str, Any] | None, feature_names: Sequence[str]) -> None:
    """Check a target transform JSON object (format in the module docstring).

    Args:
        target: The ``target`` state value, or ``None`` (no transform).
        feature_names: The model's feature columns.

    Raises:
        ValueError: Unknown kind, a ratio feature that is not a model feature, or a fallback that is
            not ``{"kind": "constant", "value": <finite number>}``.
    """
    if target is None:
        return
    kind = target.get("kind")
    if kind != TARGET_RATIO_TO_FEATURE:
        raise ValueError(f"unknown target transform kind {kind!r}; expected {TARGET_RATIO_TO_FEATURE!r}")
    feature = target.get("feature")
    if feature not in feature_names:
        raise ValueError(f"target transform feature {feature!r} is not among the model's feature_names")
    fallback = target.get("fallback")
    value = fallback.get("value") if isinstance(fallback, Mapping) else None
    if (
        not isinstance(fallback, Mapping)
        or fallback.get("kind") != "constant"
        or not isinstance(value, int | float)
        or not math.isfinite(value)
    ):
        raise ValueError(
            f"target transform fallback must be {{'kind': 'constant', 'value': <finite number>}}, got {fallback!r}"
        )


def ratio_denominator(frame: pd.DataFrame, feature: str) -> np.ndarray:
    """The ratio base of each row: ``frame[feature]`` as float, NaN where missing, not finite or <= 0.

    Training divides the label by it and ``apply_target_transform`` multiplies by it, so both use
    exactly this rule for which rows can form a ratio.

    Raises:
        ValueError: ``feature`` is not a column of ``frame``.
    """
    if feature not in frame.columns:
        raise ValueError(f"target transform needs column {feature!r}, which the frame lacks")
    values = pd.to_numeric(frame[feature], errors="coerce").to_numpy(dtype=float)
    usable = np.isfinite(values) & (values > 0)
    return np.where(usable, values, np.nan)


def apply_target_transform(
    target: Mapping[str, Any] | None, model_output: np.ndarray, frame: pd.DataFrame
) -> np.ndarray:
    """Map booster outputs back to predicted values (format in the module docstring).

    Args:
        target: The ``target`` state value, or ``None`` (identity).
        model_output: The booster's predictions (ratios under ``ratio_to_feature``), one per row of ``frame``.
        frame: The rows predicted (holding the ratio feature column).

    Returns:
        Predicted values, same shape as ``model_output``.

    Raises:
        ValueError: Unknown transform (see ``validate_target_transform``) or missing feature column.
    """
    model_output = np.asarray(model_output, dtype=float)
    if target is None:
        return model_output
    validate_target_transform(target, [target.get("feature")])
    base = ratio_denominator(frame, str(target["feature"]))
    return np.where(np.isnan(base), float(target["fallback"]["value"]), model_output * base)


def learn_categories(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, list[str]]:
    """Category lists (sorted distinct non-missing values, as strings) of the given training columns.

    Args:
        frame: The training feature frame.
        columns: Names of its categorical feature columns.

    Returns:
        ``{column: [category, ...]}`` to store in the bundle and pass to ``prepare_features``.
    """
    categories: dict[str, list[str]] = {}
    for column in columns:
        values = frame[column]
        present = values[values.notna()].astype(str)
        categories[column] = sorted(present.unique().tolist())
    return categories


def prepare_features(
    frame: pd.DataFrame, feature_names: Sequence[str], categorical: Mapping[str, Sequence[str]]
) -> pd.DataFrame:
    """Select and order feature columns and give them the exact dtypes the model was trained with.

    Categorical columns become ``pd.Categorical`` with the stored categories (values not in the list,
    i.e. unseen at training time, become NaN); every other column becomes float64.
    Use the same function at training time so that train and predict agree.

    Args:
        frame: Any frame holding at least the feature columns (extra columns are ignored).
        feature_names: Feature columns in model order.
        categorical: ``{column: categories}`` for the categorical features.

    Returns:
        A new frame with exactly ``feature_names`` as columns and the original index.

    Raises:
        ValueError: Feature columns missing (all named), or a numeric feature holding values that are
            not numbers (column, first row positions and values named).
    """
    missing = [name for name in feature_names if name not in frame.columns]
    if missing:
        raise ValueError(f"missing feature columns: {', '.join(missing)}")
    numeric_names = [name for name in feature_names if name not in categorical]
    if all(frame[name].dtype.kind in "fiu" for name in numeric_names):
        # The feature builders' output is already numeric: one numpy conversion for all numeric
        # columns instead of several pandas calls per column (the per-column path dominated a
        # one-record API request).
        block = frame[numeric_names].to_numpy(dtype="float64", copy=True)
        block[np.isinf(block)] = np.nan
        fast: dict[str, Any] = {name: block[:, i] for i, name in enumerate(numeric_names)}
        for name in categorical:
            if name in fast or name not in feature_names:
                continue
            values = [None if pd.isna(v) else str(v) for v in frame[name].tolist()]
            fast[name] = pd.Categorical(values, categories=list(categorical[name]))
        return pd.DataFrame(
            {name: fast[name] for name in feature_names}, index=frame.index, columns=list(feature_names)
        )
    prepared: dict[str, pd.Series] = {}
    for name in feature_names:
        column = frame[name]
        if name in categorical:
            as_text = column.astype(object).where(column.notna(), None)
            as_text = as_text.map(lambda v: None if v is None else str(v))
            prepared[name] = pd.Series(
                pd.Categorical(as_text, categories=list(categorical[name])), index=frame.index, name=name
            )
        else:
            if isinstance(column.dtype, pd.CategoricalDtype):
                column = column.astype(object)
            if column.dtype == bool:
                column = column.astype(float)
            numeric = pd.to_numeric(column, errors="coerce")
            bad = numeric.isna() & column.notna()
            if bad.any():
                positions = np.flatnonzero(bad.to_numpy())[:5].tolist()
                samples = [column.iloc[i] for i in positions]
                raise ValueError(
                    f"feature column {name!r}: expected numbers, got {samples!r} at row positions {positions}"
                )
            prepared[name] = numeric.astype("float64").replace([np.inf, -np.inf], np.nan)
    return pd.DataFrame(prepared, index=frame.index, columns=list(feature_names))


@dataclass(frozen=True, eq=False)
class _MatrixLayout:
    """Where each feature goes in ``ModelBundle.feature_matrix`` output.

    Attributes:
        width: Number of features (matrix columns).
        numeric_names: Numeric feature columns, in model order.
        numeric_positions: Their matrix column positions.
        categorical: ``(column, matrix position, {category: code})`` per categorical feature.
    """

    width: int
    numeric_names: list[str]
    numeric_positions: np.ndarray
    categorical: tuple[tuple[str, int, dict[str, float]], ...]


class ModelBundle:
    """A LightGBM booster plus the JSON state needed to predict, explain and verify it.

    Build one with ``from_booster`` (training) or ``load`` (serving); never with pickle.

    Attributes:
        booster: The ``lightgbm.Booster``.
        state: The JSON state (``model``, ``kind``, ``feature_names``, ``categorical``,
            ``calibration``, ``display_names``, plus any ``extra`` keys such as ``grades``,
            ``trained_as_of`` or a regressor's ``target`` transform, see the module docstring).
    """

    def __init__(self, model_text: str, state: Mapping[str, Any]) -> None:
        """Build from the exact model text and state (prefer ``from_booster`` / ``load``)."""
        import lightgbm as lgb

        self._model_text = model_text
        self._state_text = _state_to_text(state)
        self.state: dict[str, Any] = json.loads(self._state_text)
        for key in ("model", "kind", "feature_names", "categorical"):
            if key not in self.state:
                raise ValueError(f"bundle state lacks required key {key!r}")
        if self.state["kind"] not in ("classifier", "regressor"):
            raise ValueError(f"bundle kind must be 'classifier' or 'regressor', got {self.state['kind']!r}")
        if self.state.get("target") is not None:
            if self.state["kind"] != "regressor":
                raise ValueError("a target transform ('target' in the bundle state) needs a regressor bundle")
            validate_target_transform(self.state["target"], self.state["feature_names"])
        self.booster = lgb.Booster(model_str=model_text)
        self._check_consistency()
        self._matrix_layout = self._build_matrix_layout()

    # ------------------------------------------------------------------ construction and files

    @classmethod
    def from_booster(
        cls,
        booster: Any,
        *,
        model: str,
        kind: ModelKind,
        feature_names: Sequence[str],
        categorical: Mapping[str, Sequence[str]],
        calibration: Mapping[str, Any] | None,
        display_names: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> ModelBundle:
        """Wrap a trained booster.

        Args:
            booster: A trained ``lightgbm.Booster`` (trained on ``prepare_features`` output).
            model: Model name: ``win``, ``amount``, ``churn``, ...
            kind: ``classifier`` (binary objective) or ``regressor``.
            feature_names: Feature columns in the booster's order.
            categorical: Category lists of the categorical features (from ``learn_categories``).
            calibration: Calibration JSON (see module docstring) or ``None``.
            display_names: Optional plain names for features shown in ``explain``.
            extra: Further JSON-safe state (grades, trained_as_of, data fingerprint, ...).

        Returns:
            The bundle.

        Raises:
            ValueError: The booster's features or categories differ from the ones given.
        """
        state: dict[str, Any] = dict(json_safe(dict(extra or {})))
        state.update(
            {
                "format": BUNDLE_FORMAT,
                "model": model,
                "kind": kind,
                "feature_names": list(feature_names),
                "categorical": {k: [str(c) for c in v] for k, v in categorical.items()},
                "calibration": json_safe(dict(calibration)) if calibration is not None else None,
                "display_names": dict(display_names or {}),
            }
        )
        return cls(booster.model_to_string(), state)

    def _check_consistency(self) -> None:
        feature_names = list(self.state["feature_names"])
        booster_features = list(self.booster.feature_name())
        if booster_features != feature_names:
            raise ValueError(
                f"booster features {booster_features} differ from the bundle's feature_names {feature_names}"
            )
        categorical = self.state["categorical"]
        unknown = [c for c in categorical if c not in feature_names]
        if unknown:
            raise ValueError(f"categorical columns not among the features: {unknown}")
        expected = [categorical[name] for name in feature_names if name in categorical]
        stored = [[str(c) for c in cats] for cats in (self.booster.pandas_categorical or [])]
        if stored != expected:
            raise ValueError(
                "the booster's pandas_categorical does not match the bundle's category lists; "
                "train on serving.bundle.prepare_features(frame, feature_names, categorical) output"
            )

    def _build_matrix_layout(self) -> _MatrixLayout | None:
        """The ``feature_matrix`` layout, or ``None`` when only the pandas path gives LightGBM's codes."""
        feature_names = list(self.state["feature_names"])
        categorical = self.state["categorical"]
        stored = [list(cats) for cats in (self.booster.pandas_categorical or [])]
        expected = [list(categorical[name]) for name in feature_names if name in categorical]
        # ``_check_consistency`` compares str() forms, but LightGBM re-maps the prepared (string)
        # categories onto its own list whenever the two differ at all (e.g. ints in the booster), and
        # ``pd.Categorical`` refuses duplicate categories: only then is a list position not the code
        # LightGBM uses, or ``prepare`` would raise.
        if stored != expected or any(len(set(cats)) != len(cats) for cats in stored):
            return None
        numeric = [(i, name) for i, name in enumerate(feature_names) if name not in categorical]
        return _MatrixLayout(
            width=len(feature_names),
            numeric_names=[name for _, name in numeric],
            numeric_positions=np.array([i for i, _ in numeric], dtype=np.intp),
            categorical=tuple(
                (name, i, {category: float(code) for code, category in enumerate(categorical[name])})
                for i, name in enumerate(feature_names)
                if name in categorical
            ),
        )

    def save(self, directory: str | Path) -> Path:
        """Write model.txt, state.json and manifest.json (with their sha256) into ``directory``.

        Returns:
            The directory path.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MODEL_FILE).write_bytes(self._model_text.encode("utf-8"))
        (directory / STATE_FILE).write_bytes(self._state_text.encode("utf-8"))
        (directory / MANIFEST_FILE).write_text(json.dumps(self._manifest(), indent=2, sort_keys=True) + "\n")
        return directory

    def _manifest(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "files": {MODEL_FILE: _sha256_text(self._model_text), STATE_FILE: _sha256_text(self._state_text)},
        }

    @classmethod
    def load(cls, directory: str | Path) -> ModelBundle:
        """Load a bundle, verifying every file against the manifest.

        Raises:
            BundleIntegrityError: manifest, model.txt or state.json missing or not matching its sha256.
        """
        directory = Path(directory)
        manifest_path = directory / MANIFEST_FILE
        if not manifest_path.is_file():
            raise BundleIntegrityError(f"{manifest_path}: missing bundle manifest")
        try:
            manifest = json.loads(manifest_path.read_text())
            expected_hashes = manifest["files"]
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleIntegrityError(f"{manifest_path}: unreadable manifest ({exc})") from exc
        texts: dict[str, str] = {}
        for name in (MODEL_FILE, STATE_FILE):
            path = directory / name
            if name not in expected_hashes:
                raise BundleIntegrityError(f"{manifest_path}: no sha256 listed for {name}")
            if not path.is_file():
                raise BundleIntegrityError(f"{path}: missing bundle file")
            raw = path.read_bytes()
            digest = hashlib.sha256(raw).hexdigest()
            if digest != expected_hashes[name]:
                raise BundleIntegrityError(
                    f"{path}: sha256 {digest} does not match the manifest ({expected_hashes[name]})"
                )
            texts[name] = raw.decode("utf-8")
        bundle = cls(texts[MODEL_FILE], json.loads(texts[STATE_FILE]))
        if bundle._state_text != texts[STATE_FILE]:
            # Re-serialising must give the hashed bytes back, otherwise sha256 would be ambiguous.
            raise BundleIntegrityError(f"{directory / STATE_FILE}: not in canonical form")
        return bundle

    # ------------------------------------------------------------------ identity

    @property
    def sha256(self) -> str:
        """Digest identifying the bundle: sha256 over the sorted file digests of the manifest."""
        files = self._manifest()["files"]
        joined = "\n".join(f"{name}:{files[name]}" for name in sorted(files))
        return hashlib.sha256(joined.encode("utf-8")).hexdigest()

    @property
    def model(self) -> str:
        """Model name (``win``, ``amount``, ``churn``, ...)."""
        return str(self.state["model"])

    @property
    def kind(self) -> ModelKind:
        """``classifier`` or ``regressor``."""
        return self.state["kind"]

    @property
    def feature_names(self) -> list[str]:
        """Feature columns in model order."""
        return list(self.state["feature_names"])

    @property
    def supports_contributions(self) -> bool:
        """False for linear-tree models: LightGBM cannot compute TreeSHAP contributions for them."""
        return "is_linear=1" not in self._model_text

    @property
    def model_text(self) -> str:
        """The LightGBM model text exactly as stored in model.txt."""
        return self._model_text

    # ------------------------------------------------------------------ prediction

    def prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Feature frame in model order with the training dtypes (see ``prepare_features``)."""
        return prepare_features(frame, self.state["feature_names"], self.state["categorical"])

    def feature_matrix(self, frame: pd.DataFrame) -> np.ndarray | None:
        """The float64 matrix LightGBM would build from ``prepare(frame)``, without building that frame.

        Columns follow ``feature_names``. Numeric features are cast to float64 with +-inf as NaN;
        a categorical feature holds its value's position in the stored category list (values are
        matched as ``str(value)``, like ``prepare_features``), NaN for missing or unseen values.

        Args:
            frame: Any frame holding at least the feature columns (extra columns are ignored).

        Returns:
            A C-ordered ``(len(frame), len(feature_names))`` float64 matrix, or ``None`` when the
            frame needs the pandas path to get exactly LightGBM's input or ``prepare``'s error: a
            feature column missing or duplicated, a numeric feature of a non-numpy or non-numeric
            dtype (object, nullable, datetime, ...), a categorical value ``pd.isna``/``str`` cannot
            handle, or a booster whose category lists are not the bundle's exact string lists.
        """
        layout = self._matrix_layout
        if layout is None or not frame.columns.is_unique:
            return None
        columns = frame.columns
        if any(name not in columns for name in self.state["feature_names"]):
            return None
        matrix = np.empty((len(frame), layout.width), dtype=np.float64)
        if layout.numeric_names:
            numeric = frame[layout.numeric_names]
            if not all(
                isinstance(dtype, np.dtype) and dtype.kind in _MATRIX_NUMERIC_KINDS
                for dtype in numeric.dtypes
            ):
                return None
            block = numeric.to_numpy(dtype=np.float64)
            block[np.isinf(block)] = np.nan
            matrix[:, layout.numeric_positions] = block
        for name, position, codes in layout.categorical:
            try:
                # The same per-value test and text form as prepare_features, so values match alike.
                matrix[:, position] = [
                    _NAN if pd.isna(value) else codes.get(str(value), _NAN) for value in frame[name].tolist()
                ]
            except (TypeError, ValueError):  # e.g. list-valued cells: pd.isna gives an array
                return None
        return matrix

    def predict_matrix(
        self, matrix: np.ndarray, *, raw_score: bool = False, pred_contrib: bool = False
    ) -> np.ndarray:
        """The booster's output for a ``feature_matrix``-style matrix.

        Args:
            matrix: 2-D float64 matrix, one column per feature in ``feature_names`` order, encoded as
                ``feature_matrix`` describes.
            raw_score: Return raw margins (as ``predict_raw``).
            pred_contrib: Return TreeSHAP contributions plus the expected value (as ``contributions``).

        Returns:
            The booster's predictions (float64): one per row, or ``len(feature_names) + 1`` per row for
            contributions.

        Raises:
            ValueError: ``matrix`` is not a 2-D float64 array with one column per feature.
        """
        width = len(self.state["feature_names"])
        if not isinstance(matrix, np.ndarray) or matrix.dtype != np.float64 or matrix.ndim != 2:
            raise ValueError("predict_matrix needs a 2-D float64 numpy matrix (see feature_matrix)")
        if matrix.shape[1] != width:
            raise ValueError(f"predict_matrix needs {width} feature columns, got {matrix.shape[1]}")
        if matrix.shape[0] == 0:
            return np.zeros((0, width + 1) if pred_contrib else 0, dtype=float)
        return np.asarray(
            self.booster.predict(matrix, raw_score=raw_score, pred_contrib=pred_contrib), dtype=float
        )

    def _booster_output(
        self, frame: pd.DataFrame, *, raw_score: bool = False, pred_contrib: bool = False
    ) -> np.ndarray:
        # Same numbers either way (tests/serving/test_bundle_numpy_path.py); the matrix skips two
        # pandas conversions that cost more than the tree walk for small requests.
        matrix = self.feature_matrix(frame)
        if matrix is None:
            output = self.booster.predict(self.prepare(frame), raw_score=raw_score, pred_contrib=pred_contrib)
            return np.asarray(output, dtype=float)
        return self.predict_matrix(matrix, raw_score=raw_score, pred_contrib=pred_contrib)

    def predict_raw(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw margin per row (log-odds for classifiers; link-scale value for regressors)."""
        if len(frame) == 0:
            return np.zeros(0, dtype=float)
        return self._booster_output(frame, raw_score=True)

    def predict_uncalibrated(self, frame: pd.DataFrame) -> np.ndarray:
        """Classifier: ``sigmoid(raw margin)`` before calibration; regressor: the booster's output.

        For a regressor with a ``target`` transform the booster's output is in the transformed space
        (e.g. a ratio); ``predict`` maps it back.
        """
        if len(frame) == 0:
            return np.zeros(0, dtype=float)
        return self._booster_output(frame)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Classifier: calibrated probability of the positive class; regressor: predicted value.

        A regressor's ``target`` transform (module docstring) is applied here, e.g. predicted ratio x
        as-of amount, with the stored fallback where the amount is missing or not positive.
        """
        values = self.predict_uncalibrated(frame)
        if self.kind == "classifier":
            return np.clip(apply_calibration(self.state.get("calibration"), values), 0.0, 1.0)
        if len(frame) == 0:
            return values
        return apply_target_transform(self.state.get("target"), values, frame)

    def contributions(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Per-row feature contributions (TreeSHAP, raw-margin scale) plus ``expected_value``.

        With a ``target`` transform the scale is the transformed target (e.g. the ratio to the
        as-of amount), not the predicted value.

        Returns:
            Frame with one column per feature and a last column ``expected_value``; each row sums
            to ``predict_raw`` of that row.

        Raises:
            ValueError: The model uses linear trees (see ``supports_contributions``).
        """
        if not self.supports_contributions:
            raise ValueError(
                f"{self.model} model uses linear trees; LightGBM cannot compute feature contributions for them"
            )
        columns = [*self.state["feature_names"], "expected_value"]
        if len(frame) == 0:
            return pd.DataFrame(columns=columns, dtype=float)
        values = self._booster_output(frame, pred_contrib=True)
        return pd.DataFrame(values, index=frame.index, columns=columns)

    def explain(self, frame: pd.DataFrame, top_k: int = 5) -> list[list[dict[str, Any]]]:
        """Top factors per row: the ``top_k`` features with the largest absolute contribution.

        Args:
            frame: Rows to explain (holding at least the feature columns).
            top_k: Number of factors per row.

        Returns:
            Per row, a list of ``{"feature": display name, "value": raw input value (JSON-safe),
            "contribution": signed float on the raw-margin scale (log-odds for classifiers; the
            transformed target, e.g. the ratio to the as-of amount, under a ``target`` transform)}``,
            largest absolute contribution first.
        """
        contributions = self.contributions(frame)
        names = self.state["feature_names"]
        display = self.state.get("display_names") or {}
        matrix = contributions[names].to_numpy()
        order = np.argsort(-np.abs(matrix), axis=1, kind="stable")[:, :top_k]
        explanations: list[list[dict[str, Any]]] = []
        for row_position, feature_positions in enumerate(order):
            factors = []
            for position in feature_positions:
                name = names[position]
                factors.append(
                    {
                        "feature": display.get(name, name),
                        "value": json_safe(frame[name].iloc[row_position]),
                        "contribution": float(matrix[row_position, position]),
                    }
                )
            explanations.append(factors)
        return explanations

    def feature_importance(self, importance_type: str = "gain") -> pd.Series:
        """Booster feature importance (``gain`` or ``split``) indexed by feature name, descending."""
        values = self.booster.feature_importance(importance_type=importance_type)
        return pd.Series(values, index=self.state["feature_names"], dtype=float).sort_values(ascending=False)
