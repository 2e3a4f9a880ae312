"""The amount model's optional ratio target: when it is compared, its rows, labels and weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving.bundle import apply_target_transform
from training.train import amount_ratio_rows, load_training_params, plan_amount_ratio_target


def _won_rows(n: int, amounts: list[float] | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    opp_amount = np.array(amounts, dtype=float) if amounts is not None else rng.uniform(1e3, 1e5, size=n)
    return pd.DataFrame(
        {"opp_amount": opp_amount, "label_won_amount": np.round(opp_amount * rng.uniform(0.8, 1.1, size=n))}
    )


def test_default_params_compare_ratio_candidates_with_a_median_fallback():
    params = load_training_params()
    train, calibration = _won_rows(100), _won_rows(60)
    plan = plan_amount_ratio_target(params, train, calibration, ["opp_amount", "opp_stage"])
    target = plan["target"]
    assert target["kind"] == "ratio_to_feature" and target["feature"] == "opp_amount"
    assert target["fallback"] == {
        "kind": "constant",
        "value": float(np.median(train["label_won_amount"])),
        "source": "median won amount of the training slice",
    }
    assert set(plan["candidates"]) == set(params["amount_target"]["candidates"])
    assert "ratio" in target["explain_space"]


def test_ratio_target_skipped_without_enough_positive_amounts():
    params = load_training_params()
    # Maven-like data: no amount history, so the as-of amount is missing everywhere.
    train = _won_rows(100).assign(opp_amount=np.nan)
    plan = plan_amount_ratio_target(params, train, _won_rows(60), ["opp_amount"])
    assert plan["target"] is None and "too few rows" in plan["note"] and "training 0" in plan["note"]
    plan = plan_amount_ratio_target(params, _won_rows(100), _won_rows(60), ["opp_stage"])
    assert plan["target"] is None and "not a model feature" in plan["note"]
    no_candidates = load_training_params(overrides={"amount_target": {"candidates": None}})
    assert (
        plan_amount_ratio_target(no_candidates, _won_rows(100), _won_rows(60), ["opp_amount"])["target"]
        is None
    )


def test_ratio_rows_labels_and_weights_invert_the_serving_transform():
    frame = _won_rows(5, amounts=[1000.0, np.nan, 0.0, 2500.0, -3.0])
    labels = np.array([900.0, 500.0, 400.0, 2600.0, 100.0])
    target = {
        "kind": "ratio_to_feature",
        "feature": "opp_amount",
        "fallback": {"kind": "constant", "value": 42.0},
    }
    rows, ratio, base = amount_ratio_rows(target, frame, labels)
    assert rows.tolist() == [True, False, False, True, False]
    np.testing.assert_allclose(ratio, [0.9, 2600.0 / 2500.0])
    np.testing.assert_allclose(base, [1000.0, 2500.0])
    # A perfect ratio model gives the labels back on usable rows and the fallback elsewhere.
    output = np.full(5, np.nan)
    output[rows] = ratio
    predicted = apply_target_transform(target, output, frame)
    np.testing.assert_allclose(predicted, [900.0, 42.0, 42.0, 2600.0, 42.0])


def test_unknown_ratio_feature_column_is_named():
    target = {
        "kind": "ratio_to_feature",
        "feature": "opp_amount",
        "fallback": {"kind": "constant", "value": 1.0},
    }
    with pytest.raises(ValueError, match="opp_amount"):
        amount_ratio_rows(target, pd.DataFrame({"x": [1.0]}), np.array([1.0]))
