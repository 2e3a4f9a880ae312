"""Held-out metrics, bootstrap intervals, paired comparisons and the ready/weak/not_ready verdict.

Conventions:

- Every function takes plain arrays (labels, scores) and returns plain Python values, so the
  results go straight into the CONTRACT §2 metrics JSON (``metrics_document``).
- ECE uses **equal-mass bins** (default 10): rows sorted by predicted probability are split into
  bins of (nearly) equal size; ECE = sum over bins of (bin share of rows) * |mean label - mean
  prediction|. Equal-mass bins keep every bin populated when probabilities are skewed (win rates of
  10-30 % put most equal-width bins near empty).
- ``top_decile_lift`` = positive rate among the 10 % highest-scored rows (ceil) / overall positive rate.
- Regression: ``wape = sum|y - yhat| / sum|y|``; ``bias = (sum yhat - sum y) / sum|y|`` (signed,
  positive = over-forecast).
- Bootstraps resample rows, or whole groups when ``groups`` is given (snapshots of one deal are
  correlated, so resampling rows independently gives intervals that are too narrow).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from serving.bundle import json_safe

Verdict = Literal["ready", "weak", "not_ready"]

#: Whether a larger value of the metric is better.
HIGHER_IS_BETTER: dict[str, bool] = {
    "auc": True,
    "pr_auc": True,
    "top_decile_lift": True,
    "brier": False,
    "ece": False,
    "log_loss": False,
    "mae": False,
    "rmse": False,
    "wape": False,
}

#: Primary metrics per model kind: the model must beat every baseline on each of them to be ``ready``.
PRIMARY_METRICS: dict[str, tuple[str, ...]] = {"classifier": ("auc", "brier"), "regressor": ("wape",)}


# --------------------------------------------------------------------------- point metrics


def _as_arrays(y: Sequence[float], p: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y, dtype=float).ravel()
    p_arr = np.asarray(p, dtype=float).ravel()
    if y_arr.shape != p_arr.shape:
        raise ValueError(f"labels ({y_arr.size}) and predictions ({p_arr.size}) differ in length")
    if not np.all(np.isfinite(p_arr)):
        raise ValueError("predictions contain NaN or infinite values")
    return y_arr, p_arr


def auc_score(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC via the rank (Mann-Whitney) formula with tie correction; NaN if one class is absent."""
    y, p = _as_arrays(y, p)
    n_pos = float(y.sum())
    n_neg = float(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(p)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def brier_score(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared difference between probability and 0/1 label."""
    y, p = _as_arrays(y, p)
    return float(np.mean((p - y) ** 2))


def log_loss_score(y: np.ndarray, p: np.ndarray, eps: float = 1e-15) -> float:
    """Mean negative log-likelihood with probabilities clipped to [eps, 1 - eps]."""
    y, p = _as_arrays(y, p)
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def pr_auc_score(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision (step-wise area under the precision-recall curve); NaN without positives."""
    y, p = _as_arrays(y, p)
    if y.sum() == 0:
        return float("nan")
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, p))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """ECE with equal-mass bins (see module docstring)."""
    y, p = _as_arrays(y, p)
    if y.size == 0:
        return float("nan")
    order = np.argsort(p, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, min(n_bins, y.size)):
        if chunk.size:
            total += chunk.size * abs(y[chunk].mean() - p[chunk].mean())
    return float(total / y.size)


def calibration_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> list[dict[str, float]]:
    """Equal-mass bins ``{"mean_predicted", "observed_rate", "n"}`` (reliability diagram data)."""
    y, p = _as_arrays(y, p)
    order = np.argsort(p, kind="stable")
    bins = []
    for chunk in np.array_split(order, max(1, min(n_bins, y.size))):
        if chunk.size:
            bins.append(
                {
                    "mean_predicted": float(p[chunk].mean()),
                    "observed_rate": float(y[chunk].mean()),
                    "n": int(chunk.size),
                }
            )
    return bins


def top_fraction_lift(y: np.ndarray, p: np.ndarray, fraction: float = 0.1) -> float:
    """Positive rate among the top ``fraction`` of rows by score divided by the overall rate."""
    y, p = _as_arrays(y, p)
    base = y.mean() if y.size else float("nan")
    if not y.size or base == 0:
        return float("nan")
    n_top = max(1, math.ceil(fraction * y.size))
    top = np.argsort(-p, kind="stable")[:n_top]
    return float(y[top].mean() / base)


def classification_metrics(y: Sequence[float], p: Sequence[float], n_bins: int = 10) -> dict[str, float]:
    """Metrics of probabilities ``p`` against 0/1 labels ``y``.

    Returns:
        ``auc``, ``pr_auc``, ``brier``, ``ece`` (equal-mass, ``n_bins``), ``log_loss``,
        ``top_decile_lift``, ``base_rate``, ``mean_predicted``, ``n``, ``n_pos``. Metrics undefined on
        the data (e.g. AUC with one class) are NaN.
    """
    y_arr, p_arr = _as_arrays(y, p)
    if not np.all(np.isin(y_arr, (0.0, 1.0))):
        raise ValueError("classification labels must be 0/1")
    return {
        "auc": auc_score(y_arr, p_arr),
        "pr_auc": pr_auc_score(y_arr, p_arr),
        "brier": brier_score(y_arr, p_arr),
        "ece": expected_calibration_error(y_arr, p_arr, n_bins),
        "log_loss": log_loss_score(y_arr, p_arr),
        "top_decile_lift": top_fraction_lift(y_arr, p_arr, 0.1),
        "base_rate": float(y_arr.mean()) if y_arr.size else float("nan"),
        "mean_predicted": float(p_arr.mean()) if p_arr.size else float("nan"),
        "n": int(y_arr.size),
        "n_pos": int(y_arr.sum()),
    }


def regression_metrics(y: Sequence[float], yhat: Sequence[float]) -> dict[str, float]:
    """``mae``, ``rmse``, ``wape``, ``bias`` (relative, signed; see module docstring) and ``n``."""
    y_arr, yhat_arr = _as_arrays(y, yhat)
    if not np.all(np.isfinite(y_arr)):
        raise ValueError("regression labels contain NaN or infinite values")
    errors = yhat_arr - y_arr
    scale = float(np.abs(y_arr).sum())
    return {
        "mae": float(np.mean(np.abs(errors))) if y_arr.size else float("nan"),
        "rmse": float(np.sqrt(np.mean(errors**2))) if y_arr.size else float("nan"),
        "wape": float(np.abs(errors).sum() / scale) if scale > 0 else float("nan"),
        "bias": float(errors.sum() / scale) if scale > 0 else float("nan"),
        "n": int(y_arr.size),
    }


#: Single-metric functions by name, used by ``paired_bootstrap_delta``.
METRIC_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auc": auc_score,
    "pr_auc": pr_auc_score,
    "brier": brier_score,
    "ece": expected_calibration_error,
    "log_loss": log_loss_score,
    "top_decile_lift": top_fraction_lift,
    "mae": lambda y, p: float(np.mean(np.abs(np.asarray(p) - np.asarray(y)))),
    "rmse": lambda y, p: float(np.sqrt(np.mean((np.asarray(p) - np.asarray(y)) ** 2))),
    "wape": lambda y, p: regression_metrics(y, p)["wape"],
}


# --------------------------------------------------------------------------- bootstrap


def bootstrap_resamples(
    n_rows: int, groups: Sequence[Any] | None = None, n_boot: int = 500, seed: int = 0
) -> list[np.ndarray]:
    """Row indices of ``n_boot`` bootstrap samples; whole groups are resampled when ``groups`` is given.

    Compute once and pass as ``resamples=`` to score several predictions on the same samples.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        return [rng.integers(0, n_rows, n_rows) for _ in range(n_boot)]
    group_array = np.asarray(groups, dtype=object).ravel()
    if group_array.size != n_rows:
        raise ValueError(f"groups ({group_array.size}) and rows ({n_rows}) differ in length")
    import pandas as pd

    codes, uniques = pd.factorize(pd.Series(group_array), use_na_sentinel=False)
    n_groups = len(uniques)
    order = np.argsort(codes, kind="stable")
    boundaries = np.searchsorted(codes[order], np.arange(n_groups + 1))
    sizes = np.diff(boundaries)
    samples = []
    for _ in range(n_boot):
        chosen = rng.integers(0, n_groups, n_groups)
        lengths = sizes[chosen]
        ends = np.cumsum(lengths)
        # position p of group k in the sample maps to order[boundaries[k] + (p - start of k in sample)]
        offsets = np.repeat(boundaries[chosen] - (ends - lengths), lengths) + np.arange(
            ends[-1] if n_groups else 0
        )
        samples.append(order[offsets])
    return samples


def bootstrap_intervals(
    y: Sequence[float],
    p: Sequence[float],
    metric_fn: Callable[[np.ndarray, np.ndarray], Mapping[str, float]] = classification_metrics,
    n_boot: int = 500,
    seed: int = 0,
    groups: Sequence[Any] | None = None,
    alpha: float = 0.05,
    metrics: Sequence[str] | None = None,
    resamples: Sequence[np.ndarray] | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of every metric ``metric_fn`` returns.

    Args:
        y: Labels.
        p: Predictions.
        metric_fn: ``(y, p) -> {metric: value}``, e.g. ``classification_metrics``.
        n_boot: Number of resamples.
        seed: Random seed (same seed, same intervals).
        groups: Optional cluster id per row (e.g. opportunity_id); whole clusters are resampled.
        alpha: 1 - coverage (0.05 = 95 % intervals).
        metrics: Keep only these metric names (default: all float metrics except counts).
        resamples: Precomputed indices from ``bootstrap_resamples`` (then ``groups``, ``n_boot`` and
            ``seed`` are not used).

    Returns:
        ``{metric: (lo, hi)}``; NaN bounds when the metric was undefined in most resamples.
    """
    y_arr, p_arr = _as_arrays(y, p)
    values: dict[str, list[float]] = {}
    for index in (
        resamples if resamples is not None else bootstrap_resamples(y_arr.size, groups, n_boot, seed)
    ):
        for name, value in metric_fn(y_arr[index], p_arr[index]).items():
            if name in ("n", "n_pos") or (metrics is not None and name not in metrics):
                continue
            values.setdefault(name, []).append(float(value))
    intervals = {}
    for name, series in values.items():
        finite = np.asarray(series)[np.isfinite(series)]
        if finite.size < 0.5 * len(series):
            intervals[name] = (float("nan"), float("nan"))
        else:
            lo, hi = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
            intervals[name] = (float(lo), float(hi))
    return intervals


class _WeightedMetric:
    """A metric evaluated on bootstrap *weights* (how often each row was drawn) instead of copies.

    Scoring a resample as per-row multiplicities gives exactly the metric of the resampled rows but
    avoids re-sorting: AUC sorts the scores once and then needs only ``bincount``/``cumsum`` per
    resample (weighted Mann-Whitney with ties counted as one half).
    """

    supported = ("auc", "brier", "log_loss", "mae", "rmse", "wape")

    def __init__(self, metric: str, y: np.ndarray, p: np.ndarray) -> None:
        self.metric = metric
        self.y = y
        self.p = p
        if metric == "auc":
            self.order = np.argsort(p, kind="stable")
            p_sorted = p[self.order]
            starts = np.r_[True, p_sorted[1:] != p_sorted[:-1]] if p.size else np.zeros(0, dtype=bool)
            self.tie_group = np.cumsum(starts) - 1
            self.n_tie_groups = int(self.tie_group[-1]) + 1 if p.size else 0
            self.y_sorted = y[self.order]
        elif metric == "log_loss":
            clipped = np.clip(p, 1e-15, 1 - 1e-15)
            self.loss = -(y * np.log(clipped) + (1 - y) * np.log1p(-clipped))

    def __call__(self, weights: np.ndarray) -> float:
        total = weights.sum()
        if total == 0:
            return float("nan")
        if self.metric == "auc":
            w = weights[self.order]
            positives = np.bincount(self.tie_group, w * self.y_sorted, self.n_tie_groups)
            negatives = np.bincount(self.tie_group, w * (1 - self.y_sorted), self.n_tie_groups)
            n_pos, n_neg = positives.sum(), negatives.sum()
            if n_pos == 0 or n_neg == 0:
                return float("nan")
            below = np.cumsum(negatives) - negatives
            return float((positives * (below + 0.5 * negatives)).sum() / (n_pos * n_neg))
        errors = self.p - self.y
        if self.metric == "brier":
            return float((weights * errors**2).sum() / total)
        if self.metric == "log_loss":
            return float((weights * self.loss).sum() / total)
        if self.metric == "mae":
            return float((weights * np.abs(errors)).sum() / total)
        if self.metric == "rmse":
            return float(np.sqrt((weights * errors**2).sum() / total))
        scale = (weights * np.abs(self.y)).sum()  # wape
        return float((weights * np.abs(errors)).sum() / scale) if scale > 0 else float("nan")


def paired_bootstrap_delta(
    y: Sequence[float],
    p_model: Sequence[float],
    p_other: Sequence[float],
    metric: str = "auc",
    n_boot: int = 500,
    seed: int = 0,
    groups: Sequence[Any] | None = None,
    alpha: float = 0.05,
    resamples: Sequence[np.ndarray] | None = None,
) -> tuple[float, float, float]:
    """Difference ``metric(model) - metric(other)`` with a paired percentile bootstrap interval.

    Both predictions are scored on the *same* resampled rows (or groups), so shared noise cancels.

    Args:
        y: Labels.
        p_model: The model's predictions.
        p_other: The competitor's predictions (baseline or champion) on the same rows.
        metric: A name in ``METRIC_FUNCTIONS``.
        n_boot: Number of resamples.
        seed: Random seed.
        groups: Optional cluster id per row; whole clusters are resampled.
        alpha: 1 - coverage.
        resamples: Precomputed indices from ``bootstrap_resamples``.

    Returns:
        ``(delta, lo, hi)``: point difference on all rows and its interval. Whether a positive delta
        is a gain depends on ``HIGHER_IS_BETTER[metric]``.
    """
    if metric not in METRIC_FUNCTIONS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(METRIC_FUNCTIONS)}")
    function = METRIC_FUNCTIONS[metric]
    y_arr, model_arr = _as_arrays(y, p_model)
    _, other_arr = _as_arrays(y, p_other)
    delta = function(y_arr, model_arr) - function(y_arr, other_arr)
    samples = resamples if resamples is not None else bootstrap_resamples(y_arr.size, groups, n_boot, seed)
    deltas = []
    if metric in _WeightedMetric.supported:
        model_metric = _WeightedMetric(metric, y_arr, model_arr)
        other_metric = _WeightedMetric(metric, y_arr, other_arr)
        for index in samples:
            weights = np.bincount(index, minlength=y_arr.size).astype(float)
            deltas.append(model_metric(weights) - other_metric(weights))
    else:
        for index in samples:
            deltas.append(function(y_arr[index], model_arr[index]) - function(y_arr[index], other_arr[index]))
    finite = np.asarray(deltas)[np.isfinite(deltas)]
    if finite.size < 0.5 * len(deltas):
        return float(delta), float("nan"), float("nan")
    lo, hi = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return float(delta), float(lo), float(hi)


def is_gain(metric: str, delta: float) -> bool:
    """Whether ``delta = metric(model) - metric(other)`` favours the model (False for NaN)."""
    if not np.isfinite(delta):
        return False
    return delta > 0 if HIGHER_IS_BETTER[metric] else delta < 0


def interval_excludes_no_gain(metric: str, lo: float, hi: float) -> bool:
    """Whether the whole interval of ``metric(model) - metric(other)`` lies on the gain side of 0."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return False
    return lo > 0 if HIGHER_IS_BETTER[metric] else hi < 0


# --------------------------------------------------------------------------- verdict


@dataclass(frozen=True)
class VerdictRules:
    """Thresholds of ``verdict`` (config; defaults follow Dynamics 365 predictive scoring).

    Attributes:
        min_positive: Minimum closed positive examples (won deals / churned accounts) for training.
        min_negative: Minimum closed negative examples (lost deals / retained accounts) for training.
        min_regression_examples: Minimum training rows for a regressor (e.g. won deals with an amount).
        max_ece: Largest acceptable ECE of a ``ready`` classifier.
        primary_metrics: Metrics the model must beat every baseline on, per kind.
    """

    min_positive: int = 40
    min_negative: int = 40
    min_regression_examples: int = 40
    max_ece: float = 0.05
    primary_metrics: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(PRIMARY_METRICS))


def verdict(
    kind: Literal["classifier", "regressor"],
    model_metrics: Mapping[str, float],
    baseline_metrics: Mapping[str, Mapping[str, float]],
    paired: Mapping[str, Mapping[str, tuple[float, float, float]]],
    *,
    n_positive: int | None = None,
    n_negative: int | None = None,
    n_examples: int | None = None,
    rules: VerdictRules | None = None,
) -> tuple[Verdict, list[str]]:
    """Decide whether a model is fit to use, with the reasons.

    Rules (first match wins):

    1. ``not_ready`` when training had fewer than ``rules.min_positive`` positive or
       ``rules.min_negative`` negative closed examples (classifier), or fewer than
       ``rules.min_regression_examples`` rows (regressor).
    2. ``not_ready`` when the model's point estimate of the *first* primary metric (AUC; WAPE for
       regressors) is not better than the best baseline's (or there is no usable metric).
    3. ``ready`` when for every baseline and every primary metric (AUC and Brier; WAPE) the paired
       95 % interval lies entirely on the gain side of zero, and (classifier) ECE <= ``rules.max_ece``.
    4. ``weak`` otherwise.

    Args:
        kind: ``classifier`` or ``regressor``.
        model_metrics: Held-out metrics of the model.
        baseline_metrics: ``{baseline: metrics}`` on the same held-out rows.
        paired: ``{baseline: {metric: (delta, lo, hi)}}`` from ``paired_bootstrap_delta``
            (model minus baseline) for every primary metric.
        n_positive: Positive closed examples in the training data (classifier).
        n_negative: Negative closed examples in the training data (classifier).
        n_examples: Training rows (regressor).
        rules: Thresholds (default ``VerdictRules()``).

    Returns:
        ``(verdict, reasons)``: reasons are plain sentences naming the failing or passing checks.
    """
    rules = rules or VerdictRules()
    primary = tuple(rules.primary_metrics[kind])
    reasons: list[str] = []

    if kind == "classifier":
        if n_positive is not None and n_positive < rules.min_positive:
            reasons.append(
                f"only {n_positive} positive training examples (won deals / churned accounts, < {rules.min_positive})"
            )
        if n_negative is not None and n_negative < rules.min_negative:
            reasons.append(
                f"only {n_negative} negative training examples (lost deals / retained accounts, < {rules.min_negative})"
            )
    elif n_examples is not None and n_examples < rules.min_regression_examples:
        reasons.append(f"only {n_examples} training examples (< {rules.min_regression_examples})")
    if reasons:
        return "not_ready", reasons

    headline = primary[0]
    model_value = float(model_metrics.get(headline, float("nan")))
    if not np.isfinite(model_value):
        return "not_ready", [f"model {headline} is undefined on the held-out data"]
    baseline_values = {
        name: float(m.get(headline, float("nan")))
        for name, m in baseline_metrics.items()
        if np.isfinite(float(m.get(headline, float("nan"))))
    }
    if baseline_values:
        pick = max if HIGHER_IS_BETTER[headline] else min
        best_name = pick(baseline_values, key=baseline_values.get)
        best_value = baseline_values[best_name]
        if not is_gain(headline, model_value - best_value):
            return "not_ready", [
                f"{headline} {model_value:.4f} does not beat the best baseline {best_name} ({best_value:.4f})"
            ]

    ready = True
    for baseline in baseline_metrics:
        for metric in primary:
            comparison = paired.get(baseline, {}).get(metric)
            if comparison is None:
                ready = False
                reasons.append(f"no paired comparison of {metric} against {baseline}")
                continue
            delta, lo, hi = comparison
            if interval_excludes_no_gain(metric, lo, hi):
                reasons.append(
                    f"{metric} beats {baseline} by {delta:+.4f} (95% interval {lo:+.4f} to {hi:+.4f})"
                )
            else:
                ready = False
                reasons.append(
                    f"{metric} gain over {baseline} not established: {delta:+.4f} "
                    f"(95% interval {lo:+.4f} to {hi:+.4f})"
                )
    if kind == "classifier":
        ece = float(model_metrics.get("ece", float("nan")))
        if np.isfinite(ece) and ece <= rules.max_ece:
            reasons.append(f"ece {ece:.4f} <= {rules.max_ece}")
        else:
            ready = False
            reasons.append(f"ece {ece:.4f} above {rules.max_ece}")
    return ("ready" if ready else "weak"), reasons


@dataclass
class Evaluation:
    """Everything ``evaluate_model`` measured (inputs of ``metrics_document``)."""

    kind: str
    model_metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    intervals: dict[str, tuple[float, float]]
    paired: dict[str, dict[str, tuple[float, float, float]]]
    verdict: Verdict
    reasons: list[str]


def evaluate_model(
    kind: Literal["classifier", "regressor"],
    y: Sequence[float],
    prediction: Sequence[float],
    baseline_predictions: Mapping[str, Sequence[float]],
    *,
    groups: Sequence[Any] | None = None,
    n_positive: int | None = None,
    n_negative: int | None = None,
    n_examples: int | None = None,
    n_boot: int = 500,
    seed: int = 0,
    rules: VerdictRules | None = None,
) -> Evaluation:
    """Metrics, bootstrap intervals, paired deltas against every baseline and the verdict in one call.

    Args:
        kind: ``classifier`` (``prediction`` = probabilities) or ``regressor``.
        y: Held-out labels (out-of-time rows).
        prediction: The model's held-out predictions.
        baseline_predictions: ``{baseline name: predictions}`` on the same rows.
        groups: Cluster id per row (e.g. opportunity_id) for the bootstraps.
        n_positive, n_negative, n_examples: Training counts for the minimum-data rule of ``verdict``.
        n_boot: Bootstrap resamples.
        seed: Random seed.
        rules: Verdict thresholds.

    Returns:
        An ``Evaluation``.
    """
    rules = rules or VerdictRules()
    metric_fn = classification_metrics if kind == "classifier" else regression_metrics
    model_metrics = metric_fn(y, prediction)
    baselines = {name: metric_fn(y, values) for name, values in baseline_predictions.items()}
    resamples = bootstrap_resamples(np.asarray(y).ravel().size, groups, n_boot, seed)
    intervals = bootstrap_intervals(y, prediction, metric_fn, resamples=resamples)
    paired = {
        name: {
            metric: paired_bootstrap_delta(y, prediction, values, metric, resamples=resamples)
            for metric in rules.primary_metrics[kind]
        }
        for name, values in baseline_predictions.items()
    }
    decision, reasons = verdict(
        kind,
        model_metrics,
        baselines,
        paired,
        n_positive=n_positive,
        n_negative=n_negative,
        n_examples=n_examples,
        rules=rules,
    )
    return Evaluation(kind, model_metrics, baselines, intervals, paired, decision, reasons)


# --------------------------------------------------------------------------- other summaries


def oracle_summary(
    y: Sequence[float], p_model: Sequence[float], p_oracle: Sequence[float]
) -> dict[str, float]:
    """How much of the attainable signal the model captures (synthetic data knows the true probability).

    Returns:
        ``oracle_auc``, ``oracle_brier`` and ``lift_captured = (auc - 0.5) / (oracle_auc - 0.5)``
        (NaN when the oracle itself has no signal).
    """
    y_arr, model_arr = _as_arrays(y, p_model)
    _, oracle_arr = _as_arrays(y, p_oracle)
    auc = auc_score(y_arr, model_arr)
    oracle_auc = auc_score(y_arr, oracle_arr)
    denominator = oracle_auc - 0.5
    return {
        "oracle_auc": oracle_auc,
        "oracle_brier": brier_score(y_arr, oracle_arr),
        "lift_captured": float((auc - 0.5) / denominator)
        if np.isfinite(denominator) and denominator > 0
        else float("nan"),
    }


def revenue_capture_top_decile(values_at_risk: Sequence[float], churned_revenue: Sequence[float]) -> float:
    """Share of the revenue actually lost that sits in the 10 % of accounts ranked highest at risk.

    Args:
        values_at_risk: Ranking score per account (e.g. churn probability * ARR).
        churned_revenue: Revenue actually lost per account (ARR if churned, else 0).

    Returns:
        Captured share in [0, 1]; NaN when no revenue was lost.
    """
    lost, risk = _as_arrays(churned_revenue, values_at_risk)
    total = float(lost.sum())
    if total <= 0 or risk.size == 0:
        return float("nan")
    n_top = max(1, math.ceil(0.1 * risk.size))
    top = np.argsort(-risk, kind="stable")[:n_top]
    return float(lost[top].sum() / total)


def metrics_document(
    model: str,
    evaluation: str,
    n_train: int,
    n_test: int,
    n_rows_rejected: int,
    model_metrics: Mapping[str, float],
    baselines: Mapping[str, Mapping[str, float]],
    intervals: Mapping[str, tuple[float, float]],
    verdict: str,
    reasons: Sequence[str],
    run_id: str | None,
    **extra: Any,
) -> dict[str, Any]:
    """The CONTRACT §2 ``--metrics-out`` JSON document.

    Model metrics are top-level keys (``auc``, ``brier``, ... or ``mae``, ``rmse``, ``wape``);
    every baseline's metrics sit under ``baselines``; intervals as ``{metric: [lo, hi]}``;
    NaN becomes ``null``. ``extra`` keys (e.g. ``paired``, ``oracle``, ``test_period``) are added as given.
    """
    document: dict[str, Any] = {
        "model": model,
        "evaluation": evaluation,
        "n_train": int(n_train),
        "n_test": int(n_test),
        "n_rows_rejected": int(n_rows_rejected),
    }
    document.update({name: json_safe(value) for name, value in model_metrics.items()})
    document["baselines"] = {
        name: {metric: json_safe(value) for metric, value in metrics.items()}
        for name, metrics in baselines.items()
    }
    document["intervals"] = {name: [json_safe(lo), json_safe(hi)] for name, (lo, hi) in intervals.items()}
    document["verdict"] = verdict
    document["verdict_reasons"] = list(reasons)
    document["run_id"] = run_id
    document.update({key: json_safe(value) for key, value in extra.items()})
    return document


def paired_to_json(paired: Mapping[str, Mapping[str, tuple[float, float, float]]]) -> dict[str, Any]:
    """``{baseline: {metric: {"delta", "lo", "hi"}}}`` (JSON-safe) for ``metrics_document(paired=...)``."""
    return {
        name: {
            metric: {"delta": json_safe(d), "lo": json_safe(lo), "hi": json_safe(hi)}
            for metric, (d, lo, hi) in metrics.items()
        }
        for name, metrics in paired.items()
    }
