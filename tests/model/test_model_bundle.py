"""Bundle format: round trip, integrity checks, categorical handling, explanations."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from serving.bundle import (
    BundleIntegrityError,
    ModelBundle,
    apply_calibration,
    prepare_features,
    sigmoid,
)


def test_save_load_round_trip_gives_identical_predictions(bundle, frame, tmp_path):
    path = bundle.save(tmp_path / "b")
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "model.txt", "state.json"]
    loaded = ModelBundle.load(path)
    np.testing.assert_array_equal(loaded.predict(frame), bundle.predict(frame))
    np.testing.assert_array_equal(loaded.predict_raw(frame), bundle.predict_raw(frame))
    assert loaded.sha256 == bundle.sha256
    assert loaded.state["trained_as_of"] == "2026-01-01"
    assert loaded.kind == "classifier" and loaded.feature_names == bundle.feature_names


def test_manifest_lists_sha256_of_each_file(bundle, tmp_path):
    import hashlib

    path = bundle.save(tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    for name in ("model.txt", "state.json"):
        assert manifest["files"][name] == hashlib.sha256((path / name).read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["model.txt", "state.json"])
def test_tampering_raises_integrity_error_naming_the_file(bundle, tmp_path, name):
    path = bundle.save(tmp_path / "b")
    target = path / name
    target.write_text(target.read_text().replace("1", "2", 1))
    with pytest.raises(BundleIntegrityError, match=name):
        ModelBundle.load(path)


@pytest.mark.parametrize("name", ["model.txt", "state.json", "manifest.json"])
def test_missing_file_raises_integrity_error(bundle, tmp_path, name):
    path = bundle.save(tmp_path / "b")
    (path / name).unlink()
    with pytest.raises(BundleIntegrityError, match=name):
        ModelBundle.load(path)


def test_no_pickle_files_written(bundle, tmp_path):
    path = bundle.save(tmp_path / "b")
    for file in path.iterdir():
        assert not file.read_bytes().startswith(b"\x80"), f"{file.name} looks like a pickle"


def test_unseen_and_missing_category_become_nan_not_an_error(bundle, frame):
    rows = frame.head(3).copy()
    rows["cat_segment"] = ["never-seen-before", None, "enterprise"]
    prepared = bundle.prepare(rows)
    assert isinstance(prepared["cat_segment"].dtype, pd.CategoricalDtype)
    assert list(prepared["cat_segment"].cat.categories) == ["enterprise", "mid", "smb"]
    assert prepared["cat_segment"].isna().tolist() == [True, True, False]
    unseen = bundle.predict(rows)
    missing = rows.copy()
    missing["cat_segment"] = [None, None, "enterprise"]
    # An unseen value must behave exactly like a missing one.
    np.testing.assert_array_equal(unseen, bundle.predict(missing))


def test_category_encoding_does_not_depend_on_row_order_or_subset(bundle, frame):
    # A frame holding only one category would get different codes without the stored lists.
    only_smb = frame[frame["cat_segment"] == "smb"].head(5)
    full = bundle.predict(frame)
    np.testing.assert_allclose(bundle.predict(only_smb), full[only_smb.index.to_numpy()])


def test_pandas_categorical_mismatch_is_refused(bundle):
    import lightgbm as lgb

    with pytest.raises(ValueError, match="pandas_categorical"):
        ModelBundle.from_booster(
            lgb.Booster(model_str=bundle.model_text),
            model="win",
            kind="classifier",
            feature_names=bundle.feature_names,
            categorical={"cat_segment": ["mid", "enterprise", "smb"]},
            calibration=None,
        )


def test_missing_feature_columns_are_named(bundle, frame):
    with pytest.raises(ValueError, match="num_signal, cat_segment"):
        bundle.predict(frame.drop(columns=["num_signal", "cat_segment"]))


def test_non_numeric_value_in_numeric_feature_names_column_and_row(bundle, frame):
    rows = frame.head(4).copy()
    rows["num_noise"] = rows["num_noise"].astype(object)
    rows.loc[rows.index[2], "num_noise"] = "abc"
    with pytest.raises(ValueError, match=r"'num_noise'.*'abc'.*\[2\]"):
        bundle.predict(rows)


def test_numeric_strings_and_extra_columns_are_accepted(bundle, frame):
    rows = frame.head(5).copy()
    as_text = rows.assign(num_signal=rows["num_signal"].map(repr), unrelated="x")
    np.testing.assert_allclose(bundle.predict(as_text), bundle.predict(rows))


def test_explain_contributions_plus_expected_value_sum_to_raw_margin(bundle, frame):
    contributions = bundle.contributions(frame)
    np.testing.assert_allclose(contributions.sum(axis=1).to_numpy(), bundle.predict_raw(frame), atol=1e-9)
    uncalibrated = bundle.predict_uncalibrated(frame)
    np.testing.assert_allclose(sigmoid(bundle.predict_raw(frame)), uncalibrated, atol=1e-12)


def test_explain_top_factors_sorted_signed_and_json_safe(bundle, frame):
    rows = frame.head(20)
    explanations = bundle.explain(rows, top_k=2)
    contributions = bundle.contributions(rows)
    assert len(explanations) == 20
    for position, factors in enumerate(explanations):
        assert len(factors) == 2
        magnitudes = [abs(f["contribution"]) for f in factors]
        assert magnitudes == sorted(magnitudes, reverse=True)
        row = contributions.iloc[position].drop("expected_value")
        assert magnitudes[0] == pytest.approx(row.abs().max())
        json.dumps(factors, allow_nan=False)
    # display names are used, raw values are reported (None for missing)
    all_features = {f["feature"] for factors in bundle.explain(frame, top_k=3) for f in factors}
    assert "signal strength" in all_features and "num_signal" not in all_features
    missing_row = frame[frame["cat_segment"].isna()].head(1)
    values = {f["feature"]: f["value"] for f in bundle.explain(missing_row, top_k=3)[0]}
    assert values["cat_segment"] is None


def test_calibration_is_applied_and_stored(frame, bundle_factory, tmp_path):
    calibration = {"method": "isotonic", "x": [0.0, 0.5, 1.0], "y": [0.1, 0.2, 0.9]}
    calibrated = bundle_factory(frame, calibration=calibration)
    raw = calibrated.predict_uncalibrated(frame)
    np.testing.assert_allclose(calibrated.predict(frame), np.interp(raw, [0, 0.5, 1], [0.1, 0.2, 0.9]))
    reloaded = ModelBundle.load(calibrated.save(tmp_path / "c"))
    assert reloaded.state["calibration"] == calibration
    assert reloaded.sha256 != bundle_factory(frame).sha256


def test_apply_calibration_platt_and_unknown_method():
    scores = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(apply_calibration({"method": "platt", "a": 1.0, "b": 0.0}, scores), scores)
    np.testing.assert_allclose(apply_calibration(None, scores), scores)
    with pytest.raises(ValueError, match="unknown calibration"):
        apply_calibration({"method": "beta"}, scores)


def test_regressor_bundle_predicts_values(frame, bundle_factory, tmp_path):
    regressor = bundle_factory(frame, kind="regressor")
    predictions = regressor.predict(frame)
    assert predictions.min() > 0 and predictions.max() > 1000  # amounts, not probabilities
    np.testing.assert_array_equal(
        ModelBundle.load(regressor.save(tmp_path / "r")).predict(frame), predictions
    )
    contributions = regressor.contributions(frame)
    np.testing.assert_allclose(contributions.sum(axis=1).to_numpy(), predictions, rtol=1e-9)


def test_empty_frame_predicts_empty(bundle, frame):
    assert bundle.predict(frame.head(0)).shape == (0,)


def test_prepare_features_numeric_dtype_and_order(frame):
    prepared = prepare_features(frame, ["num_noise", "num_signal"], {})
    assert list(prepared.columns) == ["num_noise", "num_signal"]
    assert all(dtype == np.float64 for dtype in prepared.dtypes)


def test_json_safe_handles_numpy_pandas_and_missing_values():
    from serving.bundle import json_safe

    converted = json_safe(
        {
            "array": np.array([1.0, np.nan]),
            "timestamp": pd.Timestamp("2026-01-01"),
            "integer": np.int64(3),
            "missing": pd.NaT,
            "labels": {"b", "a"},
            "flag": np.bool_(True),
        }
    )
    assert converted == {
        "array": [1.0, None],
        "timestamp": "2026-01-01T00:00:00",
        "integer": 3,
        "missing": None,
        "labels": ["a", "b"],
        "flag": True,
    }
    json.dumps(converted, allow_nan=False)


def test_linear_tree_model_predicts_but_refuses_contributions_clearly(frame, tmp_path):
    import lightgbm as lgb

    x = prepare_features(frame, ["num_signal", "num_noise"], {})
    booster = lgb.train(
        {"objective": "regression", "linear_tree": True, "verbosity": -1, "num_threads": 1},
        lgb.Dataset(x, frame["amount"]),
        num_boost_round=5,
    )
    linear = ModelBundle.from_booster(
        booster,
        model="amount",
        kind="regressor",
        feature_names=["num_signal", "num_noise"],
        categorical={},
        calibration=None,
    )
    assert not linear.supports_contributions
    reloaded = ModelBundle.load(linear.save(tmp_path / "linear"))
    np.testing.assert_allclose(reloaded.predict(frame), booster.predict(x))
    with pytest.raises(ValueError, match="linear trees"):
        reloaded.explain(frame.head(2))


# ---------------------------------------------------------------------- target transform (ratio)


def _ratio_bundle(frame: pd.DataFrame, fallback_value: float = 1234.5) -> tuple[ModelBundle, pd.DataFrame]:
    """A regressor learning amount / deal_amount, with the ratio target stored in its state."""
    import lightgbm as lgb

    rng = np.random.default_rng(3)
    data = frame.assign(deal_amount=frame["amount"] * np.exp(rng.normal(scale=0.1, size=len(frame))))
    features = ["num_signal", "num_noise", "deal_amount"]
    x = prepare_features(data, features, {})
    booster = lgb.train(
        {"objective": "regression", "num_leaves": 7, "verbosity": -1, "num_threads": 1, "seed": 1},
        lgb.Dataset(x, data["amount"] / data["deal_amount"]),
        num_boost_round=20,
    )
    target = {
        "kind": "ratio_to_feature",
        "feature": "deal_amount",
        "fallback": {"kind": "constant", "value": fallback_value},
        "explain_space": "ratio",
    }
    bundle = ModelBundle.from_booster(
        booster,
        model="amount",
        kind="regressor",
        feature_names=features,
        categorical={},
        calibration=None,
        extra={"target": target},
    )
    return bundle, data


def test_ratio_target_round_trip_multiplies_by_the_feature(frame, tmp_path):
    bundle, data = _ratio_bundle(frame)
    ratio = bundle.booster.predict(bundle.prepare(data))
    predictions = bundle.predict(data)
    np.testing.assert_allclose(predictions, ratio * data["deal_amount"].to_numpy(), rtol=1e-12)
    assert 0.5 < np.median(ratio) < 2.0  # the booster really learned a ratio, not an amount
    loaded = ModelBundle.load(bundle.save(tmp_path / "ratio"))
    assert loaded.state["target"]["feature"] == "deal_amount"
    np.testing.assert_array_equal(loaded.predict(data), predictions)
    # Raw outputs and contributions stay in the ratio space.
    np.testing.assert_allclose(loaded.predict_uncalibrated(data), ratio)
    contributions = loaded.contributions(data.head(20))
    np.testing.assert_allclose(contributions.sum(axis=1).to_numpy(), ratio[:20], rtol=1e-9)
    factors = loaded.explain(data.head(3), top_k=2)
    assert len(factors) == 3 and all(len(row) == 2 for row in factors)


def test_ratio_target_missing_zero_or_negative_feature_gets_the_fallback(frame):
    bundle, data = _ratio_bundle(frame, fallback_value=777.0)
    rows = data.head(5).copy()
    rows["deal_amount"] = [np.nan, 0.0, -5.0, np.inf, 1000.0]
    predictions = bundle.predict(rows)
    np.testing.assert_array_equal(predictions[:4], [777.0] * 4)
    ratio_last = bundle.predict_uncalibrated(rows)[4]
    assert predictions[4] == pytest.approx(1000.0 * ratio_last)
    assert bundle.predict(rows.head(0)).shape == (0,)


def test_bundle_without_target_key_predicts_the_booster_output(frame, bundle_factory):
    regressor = bundle_factory(frame, kind="regressor")
    assert "target" not in regressor.state
    np.testing.assert_array_equal(
        regressor.predict(frame), regressor.booster.predict(regressor.prepare(frame))
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "log"}, "unknown target transform kind"),
        ({"feature": "not_a_feature"}, "not among the model's feature_names"),
        ({"fallback": {"kind": "constant", "value": None}}, "fallback must be"),
        ({"fallback": {"kind": "direct_model"}}, "fallback must be"),
    ],
)
def test_invalid_target_transform_is_refused(frame, change, message):
    bundle, _ = _ratio_bundle(frame)
    state = {**bundle.state, "target": {**bundle.state["target"], **change}}
    with pytest.raises(ValueError, match=message):
        ModelBundle(bundle.model_text, state)


def test_target_transform_on_a_classifier_is_refused(bundle):
    target = {
        "kind": "ratio_to_feature",
        "feature": "num_signal",
        "fallback": {"kind": "constant", "value": 1.0},
    }
    with pytest.raises(ValueError, match="needs a regressor"):
        ModelBundle(bundle.model_text, {**bundle.state, "target": target})
