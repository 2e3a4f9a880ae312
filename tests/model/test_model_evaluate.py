"""Metrics against scikit-learn, ECE behaviour, bootstraps, verdict rules, documents."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from training.evaluate import (
    VerdictRules,
    auc_score,
    bootstrap_intervals,
    bootstrap_resamples,
    classification_metrics,
    evaluate_model,
    expected_calibration_error,
    metrics_document,
    oracle_summary,
    paired_bootstrap_delta,
    regression_metrics,
    revenue_capture_top_decile,
    verdict,
)


@pytest.fixture(scope="module")
def scored():
    rng = np.random.default_rng(3)
    p = rng.uniform(0.02, 0.98, 3000)
    y = (rng.uniform(size=p.size) < p).astype(int)
    return y, p


def test_classification_metrics_match_sklearn(scored):
    y, p = scored
    metrics = classification_metrics(y, p)
    assert metrics["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert metrics["pr_auc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert metrics["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert metrics["log_loss"] == pytest.approx(log_loss(y, p), abs=1e-9)
    assert metrics["n"] == 3000 and metrics["n_pos"] == int(y.sum())
    assert metrics["base_rate"] == pytest.approx(y.mean())


def test_auc_with_ties_matches_sklearn():
    y = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    p = np.array([0.2, 0.2, 0.5, 0.5, 0.9, 0.1, 0.9, 0.3])
    assert classification_metrics(y, p)["auc"] == pytest.approx(roc_auc_score(y, p))


def test_top_decile_lift_on_known_input():
    y = np.array([1] * 10 + [0] * 90)
    p = np.linspace(1, 0, 100)  # the 10 positives get the 10 highest scores
    assert classification_metrics(y, p)["top_decile_lift"] == pytest.approx(1.0 / 0.1)
    assert classification_metrics(y, p[::-1])["top_decile_lift"] == pytest.approx(0.0)


def test_one_class_gives_nan_auc_not_an_error():
    metrics = classification_metrics(np.zeros(20), np.linspace(0, 1, 20))
    assert math.isnan(metrics["auc"]) and math.isnan(metrics["pr_auc"])


def test_ece_small_for_calibrated_large_for_miscalibrated(scored):
    y, p = scored
    calibrated = expected_calibration_error(y, p)
    overconfident = expected_calibration_error(y, np.clip(p * 1.6 - 0.3, 0, 1))
    shifted = expected_calibration_error(y, np.clip(p + 0.2, 0, 1))
    assert calibrated < 0.03
    assert overconfident > 0.08
    assert shifted > 0.1


def test_ece_known_value_equal_mass_bins():
    # Two bins of two rows: |0.5 - 0.1| and |0.5 - 0.9| -> ECE 0.4.
    y = np.array([0, 1, 0, 1])
    p = np.array([0.1, 0.1, 0.9, 0.9])
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.4)


def test_regression_metrics_known_values():
    metrics = regression_metrics([100, 200, 300], [110, 190, 330])
    assert metrics["mae"] == pytest.approx(50 / 3)
    assert metrics["rmse"] == pytest.approx(math.sqrt((100 + 100 + 900) / 3))
    assert metrics["wape"] == pytest.approx(50 / 600)
    assert metrics["bias"] == pytest.approx(30 / 600)


def test_bootstrap_intervals_cover_point_and_shrink_with_n(scored):
    y, p = scored
    intervals = bootstrap_intervals(y, p, n_boot=100, seed=1)
    point = classification_metrics(y, p)
    for metric in ("auc", "brier", "ece", "pr_auc"):
        lo, hi = intervals[metric]
        assert lo <= point[metric] <= hi
    small = bootstrap_intervals(y[:300], p[:300], n_boot=100, seed=1)
    assert (small["auc"][1] - small["auc"][0]) > (intervals["auc"][1] - intervals["auc"][0])
    assert bootstrap_intervals(y, p, n_boot=50, seed=7) == bootstrap_intervals(y, p, n_boot=50, seed=7)


def test_group_resamples_keep_groups_whole():
    groups = np.array(["a", "b", "b", "c", "c", "c", "d"] * 3)
    sizes = {"a": 3, "b": 6, "c": 9, "d": 3}
    for sample in bootstrap_resamples(groups.size, groups, n_boot=30, seed=4):
        picked = groups[sample]
        names, counts = np.unique(picked, return_counts=True)
        for name, count in zip(names, counts, strict=True):
            assert count % sizes[name] == 0
        # rows of one group are taken together, i.e. every row of a picked group appears equally often
        for name in names:
            rows, row_counts = np.unique(sample[picked == name], return_counts=True)
            assert rows.size == sizes[name] and np.all(row_counts == row_counts[0])
    plain = bootstrap_resamples(50, None, n_boot=5, seed=1)
    assert len(plain) == 5 and all(s.size == 50 and s.max() < 50 for s in plain)


def test_group_bootstrap_is_wider_for_duplicated_rows(scored):
    y, p = scored
    # Each example repeated 5 times (like weekly snapshots of one deal): row bootstrap is too narrow.
    y5, p5 = np.repeat(y[:600], 5), np.repeat(p[:600], 5)
    groups = np.repeat(np.arange(600), 5)
    auc_only = lambda a, b: {"auc": auc_score(a, b)}  # noqa: E731
    rows = bootstrap_intervals(y5, p5, auc_only, n_boot=200, seed=2)["auc"]
    clustered = bootstrap_intervals(y5, p5, auc_only, n_boot=200, seed=2, groups=groups)["auc"]
    assert (clustered[1] - clustered[0]) > 1.5 * (rows[1] - rows[0])


def test_paired_delta_detects_better_model_and_not_identical(scored):
    y, p = scored
    rng = np.random.default_rng(5)
    worse = np.clip(p + rng.normal(scale=0.3, size=p.size), 0.01, 0.99)
    delta, lo, hi = paired_bootstrap_delta(y, p, worse, "auc", n_boot=200, seed=0)
    assert delta > 0 and lo > 0 and lo <= delta <= hi
    delta, lo, hi = paired_bootstrap_delta(y, p, p, "auc", n_boot=50)
    assert delta == 0 and lo == 0 and hi == 0
    d_brier, _, hi_brier = paired_bootstrap_delta(y, p, worse, "brier", n_boot=200)
    assert d_brier < 0 and hi_brier < 0
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap_delta(y, p, worse, "accuracy")


def _paired(auc=(0.05, 0.02, 0.08), brier=(-0.01, -0.02, -0.005)):
    return {"auc": auc, "brier": brier}


def test_verdict_not_ready_when_too_few_examples():
    decision, reasons = verdict(
        "classifier",
        {"auc": 0.8, "brier": 0.1, "ece": 0.01},
        {"base_rate": {"auc": 0.5, "brier": 0.2}},
        {"base_rate": _paired()},
        n_positive=39,
        n_negative=500,
    )
    assert decision == "not_ready" and "39 positive" in reasons[0]


def test_verdict_not_ready_when_not_beating_best_baseline():
    decision, reasons = verdict(
        "classifier",
        {"auc": 0.70, "brier": 0.1, "ece": 0.01},
        {"base_rate": {"auc": 0.5}, "stage_rate": {"auc": 0.72}},
        {"base_rate": _paired(), "stage_rate": _paired(auc=(-0.02, -0.04, 0.0))},
        n_positive=100,
        n_negative=100,
    )
    assert decision == "not_ready" and "stage_rate" in reasons[0]


def test_verdict_ready_weak_rules():
    model = {"auc": 0.8, "brier": 0.1, "ece": 0.02}
    baselines = {"base_rate": {"auc": 0.5}, "stage_rate": {"auc": 0.7}}
    counts = {"n_positive": 100, "n_negative": 100}
    ready, reasons = verdict(
        "classifier", model, baselines, {"base_rate": _paired(), "stage_rate": _paired()}, **counts
    )
    assert ready == "ready" and any("ece" in r for r in reasons)
    # interval of one baseline includes no gain -> weak
    weak, reasons = verdict(
        "classifier",
        model,
        baselines,
        {"base_rate": _paired(), "stage_rate": _paired(brier=(-0.01, -0.02, 0.001))},
        **counts,
    )
    assert weak == "weak" and any("brier gain over stage_rate not established" in r for r in reasons)
    # calibration too poor -> weak
    weak, reasons = verdict(
        "classifier",
        {**model, "ece": 0.09},
        baselines,
        {"base_rate": _paired(), "stage_rate": _paired()},
        **counts,
    )
    assert weak == "weak" and any("above 0.05" in r for r in reasons)
    # configurable threshold
    relaxed, _ = verdict(
        "classifier",
        {**model, "ece": 0.09},
        baselines,
        {"base_rate": _paired(), "stage_rate": _paired()},
        rules=VerdictRules(max_ece=0.1),
        **counts,
    )
    assert relaxed == "ready"


def test_verdict_regressor_uses_wape():
    baselines = {"as_of_amount": {"wape": 0.3}}
    ready, _ = verdict(
        "regressor",
        {"wape": 0.2},
        baselines,
        {"as_of_amount": {"wape": (-0.1, -0.15, -0.05)}},
        n_examples=200,
    )
    assert ready == "ready"
    weak, _ = verdict(
        "regressor",
        {"wape": 0.28},
        baselines,
        {"as_of_amount": {"wape": (-0.02, -0.05, 0.01)}},
        n_examples=200,
    )
    assert weak == "weak"
    not_ready, _ = verdict(
        "regressor", {"wape": 0.35}, baselines, {"as_of_amount": {"wape": (0.05, 0.0, 0.1)}}, n_examples=200
    )
    assert not_ready == "not_ready"


def test_evaluate_model_end_to_end(scored):
    y, p = scored
    rng = np.random.default_rng(0)
    evaluation = evaluate_model(
        "classifier",
        y,
        p,
        {
            "base_rate": np.full(p.size, y.mean()),
            "noisy": np.clip(p + rng.normal(scale=0.3, size=p.size), 0.01, 0.99),
        },
        n_positive=int(y.sum()),
        n_negative=int((1 - y).sum()),
        n_boot=100,
    )
    assert evaluation.verdict == "ready", evaluation.reasons
    assert set(evaluation.paired) == {"base_rate", "noisy"}


def test_oracle_summary_and_revenue_capture(scored):
    y, p = scored
    summary = oracle_summary(y, p, p)
    assert summary["lift_captured"] == pytest.approx(1.0)
    half = oracle_summary(y, np.full(p.size, 0.3), p)
    assert half["lift_captured"] == pytest.approx(0.0)
    churned = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 1000.0])
    assert revenue_capture_top_decile(np.arange(10.0), churned) == pytest.approx(1.0)
    assert revenue_capture_top_decile(np.arange(10.0)[::-1], churned) == pytest.approx(0.0)
    assert math.isnan(revenue_capture_top_decile(np.arange(10.0), np.zeros(10)))


def test_metrics_document_is_contract_shaped_json(scored):
    y, p = scored
    metrics = classification_metrics(y, p)
    document = metrics_document(
        "win",
        "out_of_time",
        1000,
        len(y),
        3,
        metrics,
        {"base_rate": classification_metrics(y, np.full(y.size, 0.5))},
        bootstrap_intervals(y, p, n_boot=20),
        "weak",
        ["because"],
        "abc123",
        test_period="2026-Q1",
    )
    for key in (
        "model",
        "evaluation",
        "n_train",
        "n_test",
        "n_rows_rejected",
        "auc",
        "pr_auc",
        "brier",
        "ece",
        "top_decile_lift",
        "baselines",
        "verdict",
        "run_id",
    ):
        assert key in document
    assert document["baselines"]["base_rate"]["auc"] == pytest.approx(0.5)
    assert document["test_period"] == "2026-Q1"
    json.dumps(document, allow_nan=False)


@pytest.mark.parametrize("metric", ["auc", "brier", "log_loss", "mae", "rmse", "wape"])
def test_weighted_bootstrap_path_equals_scoring_the_resampled_rows(metric):
    from training.evaluate import METRIC_FUNCTIONS

    rng = np.random.default_rng(8)
    y = (rng.uniform(size=400) < 0.3).astype(float)
    if metric in ("mae", "rmse", "wape"):
        y = rng.lognormal(5, 1, 400)
    p_model = np.round(rng.uniform(0.01, 0.99, 400), 2)  # rounding creates ties
    p_other = np.round(rng.uniform(0.01, 0.99, 400), 1)
    groups = rng.integers(0, 120, 400)
    resamples = bootstrap_resamples(400, groups, n_boot=40, seed=3)
    function = METRIC_FUNCTIONS[metric]
    expected = np.quantile(
        [function(y[i], p_model[i]) - function(y[i], p_other[i]) for i in resamples], [0.025, 0.975]
    )
    delta, lo, hi = paired_bootstrap_delta(y, p_model, p_other, metric, resamples=resamples)
    assert delta == pytest.approx(function(y, p_model) - function(y, p_other))
    assert (lo, hi) == pytest.approx(tuple(expected), abs=1e-10)
