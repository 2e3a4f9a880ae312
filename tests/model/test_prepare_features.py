"""prepare_features: the all-numeric fast path gives exactly the frame of the general path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving.bundle import prepare_features


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "opp_amount": [1000.0, np.nan, np.inf, -np.inf],
            "opp_calls_30d": np.array([1, 2, 3, 4], dtype=np.int64),
            "opp_stage": ["demo", None, "unseen-stage", "proposal"],
            "ignored": ["x", "y", "z", "w"],
            "opp_has_history": np.array([1, 0, 1, 0], dtype=np.int32),
        },
        index=[10, 11, 12, 13],
    )


FEATURES = ["opp_stage", "opp_amount", "opp_calls_30d", "opp_has_history"]
CATEGORIES = {"opp_stage": ["demo", "proposal"]}


def test_fast_path_equals_general_path() -> None:
    frame = _frame()
    fast = prepare_features(frame, FEATURES, CATEGORIES)
    # An object-typed numeric column sends the same data through the per-column path.
    general_input = frame.assign(opp_amount=frame["opp_amount"].astype(object))
    general = prepare_features(general_input, FEATURES, CATEGORIES)
    pd.testing.assert_frame_equal(fast, general)
    assert list(fast.columns) == FEATURES
    assert fast["opp_amount"].isna().tolist() == [False, True, True, True]  # inf becomes missing
    assert fast["opp_stage"].iloc[0] == "demo"
    assert pd.isna(fast["opp_stage"].iloc[1])
    assert pd.isna(fast["opp_stage"].iloc[2])  # unseen category -> missing
    assert list(fast["opp_stage"].cat.categories) == ["demo", "proposal"]
    assert fast.index.tolist() == [10, 11, 12, 13]


def test_fast_path_does_not_modify_the_input() -> None:
    frame = _frame()
    prepare_features(frame, FEATURES, CATEGORIES)
    assert np.isinf(frame["opp_amount"].iloc[2])


def test_non_numbers_are_still_refused_with_the_column_named() -> None:
    frame = _frame().assign(opp_amount=["1", "two", 3.0, None])
    with pytest.raises(ValueError, match="opp_amount"):
        prepare_features(frame, FEATURES, CATEGORIES)
