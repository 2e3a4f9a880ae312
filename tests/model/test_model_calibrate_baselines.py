"""Calibrators (JSON round trip, monotone, effective) and baselines (fit/predict, sensible)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from serving.bundle import apply_calibration
from training.baselines import (
    AsOfAmountBaseline,
    BaseRateBaseline,
    ListPriceBaseline,
    LogisticRegressionBaseline,
    NaiveBayesFrequencyBaseline,
    RuleOfThumbChurnBaseline,
    StageRateBaseline,
)
from training.calibrate import (
    IsotonicCalibrator,
    PlattCalibrator,
    calibrator_from_json,
    choose_calibrator,
)
from training.evaluate import auc_score, expected_calibration_error


@pytest.fixture(scope="module")
def miscalibrated():
    rng = np.random.default_rng(11)
    true_p = rng.uniform(0.05, 0.95, 4000)
    y = (rng.uniform(size=true_p.size) < true_p).astype(int)
    scores = true_p**3  # monotone but badly calibrated
    return scores, y


@pytest.mark.parametrize("calibrator_class", [IsotonicCalibrator, PlattCalibrator])
def test_calibrator_round_trip_monotone_and_improves_ece(calibrator_class, miscalibrated):
    scores, y = miscalibrated
    fit_part, test_part = slice(0, 2000), slice(2000, None)
    calibrator = calibrator_class().fit(scores[fit_part], y[fit_part])
    assert calibrator.fit(scores[fit_part], y[fit_part]) is calibrator
    document = json.loads(json.dumps(calibrator.to_json()))
    rebuilt = calibrator_from_json(document)
    grid = np.linspace(0, 1, 201)
    np.testing.assert_allclose(rebuilt.predict(grid), calibrator.predict(grid))
    np.testing.assert_allclose(apply_calibration(document, grid), calibrator.predict(grid))
    assert np.all(np.diff(calibrator.predict(grid)) >= -1e-12)
    calibrated = calibrator.predict(scores[test_part])
    assert expected_calibration_error(y[test_part], scores[test_part]) > 0.1
    assert expected_calibration_error(y[test_part], calibrated) < 0.04
    assert calibrated.min() >= 0 and calibrated.max() <= 1


def _slice_with_truth(true_p, scores, seed):
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=true_p.size) < true_p).astype(int)
    times = np.sort(rng.integers(0, 12, true_p.size)).astype("datetime64[W]")
    return scores, y, times


def test_choose_calibrator_prefers_platt_when_the_miscalibration_is_logit_linear():
    rng = np.random.default_rng(3)
    scores = rng.uniform(0.02, 0.98, 400)
    true_p = 1 / (1 + np.exp(-(2.0 * np.log(scores / (1 - scores)) + 0.3)))
    scores, y, times = _slice_with_truth(true_p, scores, 4)
    calibrator, report = choose_calibrator(scores, y, times)
    assert report["method"] == "platt" and set(report["inner_log_loss"]) == {"isotonic", "platt"}
    assert report["inner_log_loss"]["platt"] < report["inner_log_loss"]["isotonic"]
    refit = PlattCalibrator().fit(scores, y)  # the winner is refitted on the whole slice
    assert isinstance(calibrator, PlattCalibrator) and calibrator.a_ == pytest.approx(refit.a_)


def test_choose_calibrator_prefers_isotonic_for_a_step():
    rng = np.random.default_rng(5)
    scores = rng.uniform(0.05, 0.95, 6000)
    true_p = np.where(scores < 0.5, 0.1, 0.9)  # a step no sigmoid of logit(score) can follow
    scores, y, times = _slice_with_truth(true_p, scores, 6)
    calibrator, report = choose_calibrator(scores, y, times)
    assert report["method"] == "isotonic" and isinstance(calibrator, IsotonicCalibrator)
    assert report["inner_log_loss"]["isotonic"] < report["inner_log_loss"]["platt"]


def test_choose_calibrator_falls_back_without_two_usable_halves():
    scores = np.linspace(0.1, 0.9, 100)
    y = (np.arange(100) % 2).astype(int)
    one_date = np.full(100, np.datetime64("2025-01-06"))
    calibrator, report = choose_calibrator(scores, y, one_date, methods=("platt", "isotonic"))
    assert report["method"] == "platt" and report["chosen_by"].startswith("fallback")
    assert isinstance(calibrator, PlattCalibrator)
    with pytest.raises(ValueError, match="unknown calibration method 'beta'"):
        choose_calibrator(scores, y, one_date, methods=("beta",))


def test_calibrators_reject_bad_input():
    with pytest.raises(ValueError, match="0/1"):
        IsotonicCalibrator().fit(np.linspace(0, 1, 50), np.full(50, 2))
    with pytest.raises(ValueError, match="at least"):
        IsotonicCalibrator(min_rows=20).fit(np.linspace(0, 1, 5), np.array([0, 1, 0, 1, 1]))
    with pytest.raises(ValueError, match="NaN"):
        PlattCalibrator().fit(np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="isotonic"):
        IsotonicCalibrator.from_json({"method": "platt", "a": 1, "b": 0})


@pytest.fixture(scope="module")
def deals():
    rng = np.random.default_rng(4)
    n = 3000
    stage = rng.choice(["prospecting", "proposal", "negotiation", None], n, p=[0.4, 0.3, 0.2, 0.1])
    product = rng.choice(["basic", "pro", "enterprise"], n)
    stage_p = (
        pd.Series(stage).map({"prospecting": 0.1, "proposal": 0.4, "negotiation": 0.7}).fillna(0.2).to_numpy()
    )
    product_shift = pd.Series(product).map({"basic": -0.05, "pro": 0.0, "enterprise": 0.1}).to_numpy()
    p = np.clip(stage_p + product_shift, 0.01, 0.99)
    frame = pd.DataFrame(
        {
            "opp_stage": pd.Series(stage, dtype=object),
            "opp_product": product,
            "opp_amount": np.where(rng.uniform(size=n) < 0.1, np.nan, rng.lognormal(9, 0.5, n)),
            "opp_age_days": rng.integers(0, 300, n).astype(float),
            "acct_empty": np.full(n, np.nan),
        }
    )
    y = (rng.uniform(size=n) < p).astype(int)
    return frame, y, p


@pytest.mark.parametrize(
    "baseline",
    [
        StageRateBaseline(),
        NaiveBayesFrequencyBaseline(),
        LogisticRegressionBaseline(),
        NaiveBayesFrequencyBaseline(columns=["opp_stage"]),
    ],
    ids=["stage", "naive_bayes", "logistic", "naive_bayes_stage_only"],
)
def test_classification_baselines_learn_the_stage_signal(baseline, deals):
    frame, y, p = deals
    train, test = slice(0, 2000), slice(2000, None)
    assert baseline.fit(frame.iloc[train], y[train]) is baseline
    probabilities = baseline.predict_proba(frame.iloc[test])
    assert probabilities.shape == (1000, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert auc_score(y[test], probabilities[:, 1]) > 0.7
    assert expected_calibration_error(y[test], probabilities[:, 1]) < 0.06


def test_base_rate_and_unseen_values(deals):
    frame, y, _ = deals
    base = BaseRateBaseline().fit(frame, y)
    assert np.all(base.predict_proba(frame.head(3))[:, 1] == pytest.approx(y.mean()))
    unseen = frame.head(2).assign(opp_stage=["closed-won-ish", "prospecting"], opp_product=["new", "new"])
    for model in (StageRateBaseline(), NaiveBayesFrequencyBaseline(), LogisticRegressionBaseline()):
        values = model.fit(frame, y).predict_proba(unseen)[:, 1]
        assert np.all(np.isfinite(values)) and np.all((values > 0) & (values < 1))
    stage = StageRateBaseline().fit(frame, y)
    assert stage.predict_proba(unseen)[0, 1] == pytest.approx(stage.rates_["__missing__"])


def test_stage_baseline_needs_its_column(deals):
    frame, y, _ = deals
    with pytest.raises(ValueError, match="opp_stage"):
        StageRateBaseline().fit(frame.drop(columns="opp_stage"), y)


def test_rule_of_thumb_churn_baseline_flags_and_absent_columns():
    rng = np.random.default_rng(2)
    n = 2000
    trend = rng.normal(0, 0.3, n)
    nps = rng.integers(0, 11, n).astype(float)
    nps[rng.uniform(size=n) < 0.2] = np.nan
    p = 0.05 + 0.25 * (trend < -0.2) + 0.2 * (np.nan_to_num(nps, nan=10) < 7)
    y = (rng.uniform(size=n) < p).astype(int)
    frame = pd.DataFrame({"acct_usage_active_users_trend_90d": trend, "acct_nps_latest": nps})
    rule = RuleOfThumbChurnBaseline().fit(frame, y)
    assert rule.missing_columns_ == []
    assert rule.rates_[0] < rule.rates_[1] < rule.rates_[2]
    assert auc_score(y, rule.predict_proba(frame)[:, 1]) > 0.65
    only_usage = RuleOfThumbChurnBaseline().fit(frame[["acct_usage_active_users_trend_90d"]], y)
    assert only_usage.missing_columns_ == ["acct_nps_latest"]
    assert only_usage.predict_proba(frame[["acct_usage_active_users_trend_90d"]]).shape == (n, 2)


def test_amount_baselines():
    frame = pd.DataFrame(
        {"opp_product": ["a", "a", "b", "b", "c"], "opp_amount": [100.0, np.nan, 300.0, 310.0, 50.0]}
    )
    y = np.array([90.0, 110.0, 280.0, 320.0, 60.0])
    as_of = AsOfAmountBaseline().fit(frame, y)
    np.testing.assert_allclose(as_of.predict(frame), [100.0, 110.0, 300.0, 310.0, 50.0])
    medians = ListPriceBaseline().fit(frame, y)
    assert medians.source_ == "training_median"
    np.testing.assert_allclose(medians.predict(frame), [100.0, 100.0, 300.0, 300.0, 60.0])
    products = pd.DataFrame({"product": ["a", "b"], "list_price": [95.0, 305.0]})
    listed = ListPriceBaseline(products=products).fit(frame, y)
    unknown = frame.assign(opp_product=["a", "b", "zzz", "b", "a"])
    np.testing.assert_allclose(listed.predict(unknown), [95.0, 305.0, 110.0, 305.0, 95.0])
    with pytest.raises(ValueError, match="list_price"):
        ListPriceBaseline(products=products.rename(columns={"list_price": "price"})).fit(frame, y)
