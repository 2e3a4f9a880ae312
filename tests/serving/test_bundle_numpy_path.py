"""The bundle's numpy prediction path gives exactly the numbers of the pandas path it replaces.

The reference is what the bundle did before: ``booster.predict(bundle.prepare(frame))``, i.e. the
``pd.Categorical`` frame converted by LightGBM itself. Equality is exact (``np.array_equal``): the matrix
holds the same float64 values LightGBM's pandas conversion produces, so no last-bit difference is
expected anywhere.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from serving.bundle import ModelBundle, learn_categories, prepare_features

NAMES = ["x", "count", "flag", "stage", "region"]
CATEGORICAL = ["stage", "region"]


def _training_frame(n: int = 500, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    stage = rng.choice(["a", "b", "c", "d"], n).astype(object)
    stage[rng.random(n) < 0.1] = None
    region = rng.choice([1, 2, 3], n).astype(object)  # non-string categories: matched as str(value)
    return pd.DataFrame(
        {
            "x": np.where(rng.random(n) < 0.15, np.nan, rng.normal(size=n)),
            "count": rng.integers(0, 20, n),
            "flag": rng.random(n) < 0.4,
            "stage": stage,
            "region": region,
        }
    )


def _label(frame: pd.DataFrame, objective: str) -> np.ndarray:
    signal = (
        frame["x"].fillna(0).to_numpy()
        + (frame["stage"] == "b").to_numpy()
        - 0.1 * frame["count"].to_numpy()
        + frame["flag"].to_numpy()
    )
    return (signal > 0).astype(float) if objective == "binary" else 100.0 + 10.0 * signal


def _synthetic_bundle(objective: str, names: list[str] = NAMES) -> ModelBundle:
    frame = _training_frame()
    categorical = [c for c in CATEGORICAL if c in names]
    categories = learn_categories(frame, categorical)
    booster = lgb.train(
        {"objective": objective, "num_leaves": 7, "min_data_in_leaf": 5, "verbose": -1, "num_threads": 1},
        lgb.Dataset(prepare_features(frame, names, categories), label=_label(frame, objective)),
        num_boost_round=25,
    )
    return ModelBundle.from_booster(
        booster,
        model="win" if objective == "binary" else "amount",
        kind="classifier" if objective == "binary" else "regressor",
        feature_names=names,
        categorical=categories,
        calibration=None,
    )


def _awkward_rows() -> pd.DataFrame:
    """Rows covering every conversion rule: NaN, +-inf, None/NaN/unseen categories, int and bool."""
    return pd.DataFrame(
        {
            "x": [0.3, np.nan, np.inf, -np.inf, -1.2, 2.5, 0.0],
            "count": np.array([0, 3, 19, 7, 25, 1, 2], dtype=np.int64),
            "flag": [True, False, True, False, True, False, True],
            "stage": ["a", None, "b", "unseen", np.nan, "d", "c"],
            "region": [1, 2, None, 3, "2", 7, 3],  # "2" (a string) and 2 both mean category "2"
            "ignored": ["extra", "columns", "are", "not", "features", "at", "all"],
        },
        index=[10, 11, 12, 13, 14, 15, 16],
    )


def _reference(bundle: ModelBundle, frame: pd.DataFrame, **kwargs: bool) -> np.ndarray:
    return np.asarray(bundle.booster.predict(bundle.prepare(frame), **kwargs), dtype=float)


def _assert_paths_equal(bundle: ModelBundle, frame: pd.DataFrame) -> None:
    assert bundle.feature_matrix(frame) is not None  # otherwise both sides would be the pandas path
    raw = bundle.predict_raw(frame)
    assert np.array_equal(raw, _reference(bundle, frame, raw_score=True))
    assert np.array_equal(bundle.predict_uncalibrated(frame), _reference(bundle, frame))
    contributions = bundle.contributions(frame)
    assert list(contributions.index) == list(frame.index)
    assert np.array_equal(contributions.to_numpy(), _reference(bundle, frame, pred_contrib=True))
    # The rows differ in their predictions: a path that ignored the features would not pass.
    assert len(frame) == 1 or len(np.unique(raw)) > 1


@pytest.mark.parametrize("objective", ["binary", "regression"])
@pytest.mark.parametrize("rows", ["one", "awkward", "many"])
def test_synthetic_bundles_numpy_path_equals_pandas_path(objective: str, rows: str) -> None:
    bundle = _synthetic_bundle(objective)
    frame = {
        "one": _awkward_rows().iloc[[3]],
        "awkward": _awkward_rows(),
        "many": _training_frame(n=300, seed=11),
    }[rows]
    _assert_paths_equal(bundle, frame)


def test_feature_matrix_encodes_codes_nan_and_float64() -> None:
    bundle = _synthetic_bundle("binary")
    matrix = bundle.feature_matrix(_awkward_rows())
    assert matrix is not None and matrix.dtype == np.float64 and matrix.shape == (7, len(NAMES))
    assert bundle.state["categorical"] == {"stage": ["a", "b", "c", "d"], "region": ["1", "2", "3"]}
    x, count, flag, stage, region = matrix.T
    np.testing.assert_array_equal(x, [0.3, np.nan, np.nan, np.nan, -1.2, 2.5, 0.0])
    np.testing.assert_array_equal(count, [0, 3, 19, 7, 25, 1, 2])
    np.testing.assert_array_equal(flag, [1, 0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(stage, [0, np.nan, 1, np.nan, np.nan, 3, 2])
    np.testing.assert_array_equal(region, [0, 1, np.nan, 2, 1, np.nan, 2])


def test_categorical_only_bundle_equals_pandas_path() -> None:
    # Without numeric features and missing values LightGBM's pandas path hands the booster float32
    # codes; whole numbers are exact in float32, so the float64 matrix must still agree exactly.
    bundle = _synthetic_bundle("binary", names=CATEGORICAL)
    frame = _training_frame(n=200, seed=8).dropna(subset=["stage"])
    _assert_paths_equal(bundle, frame)


@pytest.mark.parametrize("kind", ["win", "amount", "churn"])
def test_real_feature_bundles_numpy_path_equals_pandas_path(crm_tables: dict, kind: str) -> None:
    from tests.serving.models import train_bundle, training_frames

    frames = training_frames(crm_tables["tables"])
    bundle = train_bundle(kind, frames, n_trees=30)
    frame = frames["churn" if kind == "churn" else "win"].iloc[::7].copy()
    first_categorical = next(iter(bundle.state["categorical"]))
    first_numeric = next(name for name in bundle.feature_names if name not in bundle.state["categorical"])
    frame.loc[frame.index[0], first_categorical] = "never-seen-in-training"
    frame.loc[frame.index[1], first_categorical] = None
    frame.loc[frame.index[2], first_numeric] = np.inf
    _assert_paths_equal(bundle, frame)
    _assert_paths_equal(bundle, frame.iloc[[5]])


def test_frames_the_matrix_cannot_convert_take_the_pandas_path() -> None:
    bundle = _synthetic_bundle("regression")
    rows = _awkward_rows()

    nullable = rows.assign(count=pd.array([1, None, 3, 4, 5, 6, 7], dtype="Int64"))
    assert bundle.feature_matrix(nullable) is None
    assert np.array_equal(bundle.predict_uncalibrated(nullable), _reference(bundle, nullable))

    numeric_text = rows.assign(x=["0.5", None, "3", "-1", "2", "0", "1e3"])
    assert bundle.feature_matrix(numeric_text) is None
    assert np.array_equal(bundle.predict_raw(numeric_text), _reference(bundle, numeric_text, raw_score=True))

    duplicated = pd.concat([rows, rows[["x"]]], axis=1)
    assert bundle.feature_matrix(duplicated) is None

    for broken in (rows.assign(x=["0.5", "oops", 1, 2, 3, 4, 5]), rows.drop(columns=["stage", "flag"])):
        with pytest.raises(ValueError) as expected:
            bundle.prepare(broken)
        assert bundle.feature_matrix(broken) is None
        with pytest.raises(ValueError) as got:
            bundle.predict(broken)
        assert str(got.value) == str(expected.value)


def test_booster_with_non_string_categories_keeps_the_pandas_path() -> None:
    # The bundle's consistency check compares str() forms, but LightGBM re-maps the prepared
    # (string) categories onto the booster's own integer list, so list positions are not its codes.
    frame = _training_frame()
    prepared = prepare_features(frame, NAMES, learn_categories(frame, CATEGORICAL))
    prepared["region"] = pd.Categorical(frame["region"].astype(int), categories=[1, 2, 3])
    booster = lgb.train(
        {"objective": "regression", "num_leaves": 7, "min_data_in_leaf": 5, "verbose": -1, "num_threads": 1},
        lgb.Dataset(prepared, label=_label(frame, "regression")),
        num_boost_round=10,
    )
    assert booster.pandas_categorical[1] == [1, 2, 3]
    bundle = ModelBundle.from_booster(
        booster,
        model="amount",
        kind="regressor",
        feature_names=NAMES,
        categorical={"stage": ["a", "b", "c", "d"], "region": [1, 2, 3]},
        calibration=None,
    )
    rows = _awkward_rows()
    assert bundle.feature_matrix(rows) is None
    assert np.array_equal(bundle.predict_raw(rows), _reference(bundle, rows, raw_score=True))


def test_predict_matrix_checks_its_input() -> None:
    bundle = _synthetic_bundle("binary")
    matrix = bundle.feature_matrix(_awkward_rows())
    assert matrix is not None
    assert np.array_equal(bundle.predict_matrix(matrix, raw_score=True), bundle.predict_raw(_awkward_rows()))
    with pytest.raises(ValueError, match="5 feature columns, got 4"):
        bundle.predict_matrix(matrix[:, :4])
    with pytest.raises(ValueError, match="2-D float64"):
        bundle.predict_matrix(matrix.astype(np.float32))
    assert bundle.predict_matrix(matrix[:0]).shape == (0,)
    assert bundle.predict_matrix(matrix[:0], pred_contrib=True).shape == (0, len(NAMES) + 1)


def test_duplicate_categories_keep_the_pandas_paths_error() -> None:
    # pd.Categorical refuses duplicate categories; the matrix path must not quietly accept them.
    bundle = _synthetic_bundle("binary")
    text = bundle.model_text.replace(
        'pandas_categorical:[["a", "b", "c", "d"], ["1", "2", "3"]]',
        'pandas_categorical:[["a", "b", "c", "d"], ["1", "2", "2"]]',
    )
    assert text != bundle.model_text
    state = {**bundle.state, "categorical": {"stage": ["a", "b", "c", "d"], "region": ["1", "2", "2"]}}
    duplicated = ModelBundle(text, state)
    rows = _awkward_rows()
    assert duplicated.feature_matrix(rows) is None
    with pytest.raises(ValueError, match="unique"):
        duplicated.predict_raw(rows)
