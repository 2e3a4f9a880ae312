"""Probability calibrators whose learned state is plain JSON (applied by ``serving.bundle.apply_calibration``).

The JSON format is documented once, in the ``serving.bundle`` module docstring. Fit a calibrator on
out-of-time scores that the model did not train on (e.g. the last slice of the training period),
never on the test period.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.bundle import apply_calibration, logit


def _check_inputs(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if scores.shape != y.shape:
        raise ValueError(f"scores ({scores.size}) and y ({y.size}) differ in length")
    if scores.size == 0:
        raise ValueError("cannot fit a calibrator on zero rows")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values")
    if not np.all(np.isin(y, (0.0, 1.0))):
        raise ValueError("y must hold only 0/1 labels")
    return scores, y


class IsotonicCalibrator:
    """Monotone, piecewise-linear map from model probability to calibrated probability.

    Wraps ``sklearn.isotonic.IsotonicRegression`` (increasing, clipped to [0, 1]) and keeps only its
    thresholds, so that prediction is ``np.interp(p, x_, y_)`` -- exactly what serving does.

    Args:
        min_rows: Fewer rows than this raises ``ValueError`` (isotonic fits overfit tiny sets).
    """

    method = "isotonic"

    def __init__(self, min_rows: int = 20) -> None:
        self.min_rows = min_rows

    def fit(self, scores: np.ndarray, y: np.ndarray) -> IsotonicCalibrator:
        """Learn thresholds from uncalibrated probabilities ``scores`` and 0/1 labels ``y``."""
        from sklearn.isotonic import IsotonicRegression

        scores, y = _check_inputs(scores, y)
        if scores.size < self.min_rows:
            raise ValueError(f"isotonic calibration needs at least {self.min_rows} rows, got {scores.size}")
        regression = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        regression.fit(scores, y)
        self.x_ = np.asarray(regression.X_thresholds_, dtype=float)
        self.y_ = np.asarray(regression.y_thresholds_, dtype=float)
        return self

    def predict(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated probabilities."""
        return apply_calibration(self.to_json(), scores)

    def to_json(self) -> dict[str, Any]:
        """``{"method": "isotonic", "x": [...], "y": [...]}``."""
        return {"method": self.method, "x": self.x_.tolist(), "y": self.y_.tolist()}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> IsotonicCalibrator:
        """Rebuild a fitted calibrator from ``to_json`` output."""
        if document.get("method") != cls.method:
            raise ValueError(f"not an isotonic calibration: method={document.get('method')!r}")
        calibrator = cls()
        calibrator.x_ = np.asarray(document["x"], dtype=float)
        calibrator.y_ = np.asarray(document["y"], dtype=float)
        return calibrator


class PlattCalibrator:
    """Logistic recalibration on the log-odds: ``sigmoid(a * logit(p) + b)``.

    Smoother than isotonic and safer on small calibration sets.

    Args:
        regularization_c: Inverse L2 strength of the underlying logistic regression.
    """

    method = "platt"

    def __init__(self, regularization_c: float = 1e4) -> None:
        self.regularization_c = regularization_c

    def fit(self, scores: np.ndarray, y: np.ndarray) -> PlattCalibrator:
        """Learn ``a`` and ``b`` from uncalibrated probabilities and 0/1 labels."""
        from sklearn.linear_model import LogisticRegression

        scores, y = _check_inputs(scores, y)
        if np.unique(y).size < 2:
            raise ValueError("Platt calibration needs both classes in y")
        regression = LogisticRegression(C=self.regularization_c)
        regression.fit(logit(scores).reshape(-1, 1), y.astype(int))
        self.a_ = float(regression.coef_[0, 0])
        self.b_ = float(regression.intercept_[0])
        return self

    def predict(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated probabilities."""
        return apply_calibration(self.to_json(), scores)

    def to_json(self) -> dict[str, Any]:
        """``{"method": "platt", "a": float, "b": float}``."""
        return {"method": self.method, "a": self.a_, "b": self.b_}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> PlattCalibrator:
        """Rebuild a fitted calibrator from ``to_json`` output."""
        if document.get("method") != cls.method:
            raise ValueError(f"not a Platt calibration: method={document.get('method')!r}")
        calibrator = cls()
        calibrator.a_ = float(document["a"])
        calibrator.b_ = float(document["b"])
        return calibrator


def calibrator_from_json(document: dict[str, Any] | None) -> IsotonicCalibrator | PlattCalibrator | None:
    """Rebuild whichever calibrator a calibration JSON describes (``None`` stays ``None``)."""
    if document is None:
        return None
    method = document.get("method")
    if method == IsotonicCalibrator.method:
        return IsotonicCalibrator.from_json(document)
    if method == PlattCalibrator.method:
        return PlattCalibrator.from_json(document)
    raise ValueError(f"unknown calibration method {method!r}")


CALIBRATORS: dict[str, type[IsotonicCalibrator] | type[PlattCalibrator]] = {
    IsotonicCalibrator.method: IsotonicCalibrator,
    PlattCalibrator.method: PlattCalibrator,
}


def make_calibrator(method: str) -> IsotonicCalibrator | PlattCalibrator:
    """An unfitted calibrator by name (``isotonic`` or ``platt``).

    Raises:
        ValueError: Unknown method (the message lists the known ones).
    """
    if method not in CALIBRATORS:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {', '.join(CALIBRATORS)}")
    return CALIBRATORS[method]()


def choose_calibrator(
    scores: np.ndarray,
    y: np.ndarray,
    times: np.ndarray,
    methods: tuple[str, ...] = ("isotonic", "platt"),
    min_rows: int = 40,
) -> tuple[IsotonicCalibrator | PlattCalibrator, dict[str, Any]]:
    """Pick a calibration method out of time inside the calibration slice, then fit it on the whole slice.

    Each method is fitted on the rows of the earlier half of the slice's dates and scored by log loss
    on the later half (the test slice plays no part); the lowest wins (ties: the first listed). When
    a half is too small or holds one class only, the first method is used without a comparison.

    Args:
        scores: Uncalibrated probabilities of the calibration slice.
        y: Its 0/1 labels.
        times: Its as-of dates (anything ``np.sort`` orders; splits at the median distinct date).
        methods: Candidate methods, in order of preference.
        min_rows: Rows needed in each half for a comparison.

    Returns:
        ``(calibrator fitted on all rows, {"method", "chosen_by", "inner_log_loss": {method: value}, ...})``.

    Raises:
        ValueError: No methods, or an unknown one.
    """
    from training.evaluate import log_loss_score

    if not methods:
        raise ValueError("choose_calibrator needs at least one method")
    for method in methods:
        make_calibrator(method)  # validates the name before any fitting
    scores, y = _check_inputs(scores, y)
    times = np.asarray(times)
    distinct = np.unique(times)
    cut = distinct[len(distinct) // 2] if distinct.size >= 2 else None
    report: dict[str, Any] = {"candidates": list(methods)}
    if cut is not None:
        early, late = times < cut, times >= cut
        halves_ok = all(mask.sum() >= min_rows and np.unique(y[mask]).size == 2 for mask in (early, late))
    else:
        halves_ok = False
    if len(methods) == 1 or not halves_ok:
        chosen = methods[0]
        report.update(
            method=chosen,
            chosen_by="only candidate" if len(methods) == 1 else "fallback: a half of the slice is too small",
        )
        return make_calibrator(chosen).fit(scores, y), report
    inner = {
        method: log_loss_score(
            y[late], make_calibrator(method).fit(scores[early], y[early]).predict(scores[late])
        )
        for method in methods
    }
    chosen = min(methods, key=lambda method: inner[method])
    report.update(
        method=chosen,
        chosen_by="log loss on the later half of the calibration slice, fitted on the earlier half",
        inner_log_loss=inner,
        inner_split_at=str(cut),
    )
    return make_calibrator(chosen).fit(scores, y), report
