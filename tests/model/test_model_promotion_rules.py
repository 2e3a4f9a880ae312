"""The champion/challenger comparison used by `promote`, without a server."""

from __future__ import annotations

import pytest

from training.evaluate import interval_excludes_no_gain
from training.tracking import paired_comparison


def test_regressor_comparison_uses_wape_lower_is_better(frame, frame_factory, bundle_factory):
    test_set = frame_factory(n_rows=800, seed=5, n_groups=300)
    better = bundle_factory(frame, kind="regressor", rounds=60)
    worse = bundle_factory(frame, kind="regressor", features=["num_noise"], rounds=10)
    spec = {"label_column": "amount", "group_column": "opportunity_id", "primary_metric": "wape"}
    forward = paired_comparison(test_set, spec, better, worse, n_boot=100)
    assert forward["metric"] == "wape" and forward["delta"] < 0
    assert interval_excludes_no_gain("wape", forward["lo"], forward["hi"])
    backward = paired_comparison(test_set, spec, worse, better, n_boot=100)
    assert not interval_excludes_no_gain("wape", backward["lo"], backward["hi"])


def test_champion_that_cannot_score_the_test_set_raises_value_error(frame, frame_factory, bundle_factory):
    test_set = frame_factory(n_rows=200, seed=6).drop(columns=["num_noise"])
    challenger = bundle_factory(frame, features=["num_signal", "cat_segment"])
    champion = bundle_factory(frame)  # needs num_noise, which the challenger's test set lacks
    spec = {"label_column": "label", "group_column": "opportunity_id", "primary_metric": "auc"}
    with pytest.raises(ValueError, match="num_noise"):
        paired_comparison(test_set, spec, challenger, champion, n_boot=20)
