"""Plots are real PNG files, show what the review asked for, and importing the module has no side effects."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_evaluation_plots_write_png_files(bundle, frame, tmp_path):
    from training.plots import evaluation_plots

    paths = evaluation_plots(
        bundle,
        frame,
        frame["label"].to_numpy(),
        tmp_path,
        baseline_predictions={"truth": frame["true_p"].to_numpy()},
    )
    assert set(paths) == {
        "reliability.png",
        "lift.png",
        "feature_importance.png",
        "shap_importance.png",
        "shap_summary.png",
    }
    for path in paths.values():
        content = path.read_bytes()
        assert content.startswith(PNG_SIGNATURE) and len(content) > 5000, path.name


def test_regressor_gets_no_classification_plots(frame, bundle_factory, tmp_path):
    from training.plots import evaluation_plots

    paths = evaluation_plots(
        bundle_factory(frame, kind="regressor"), frame, frame["amount"].to_numpy(), tmp_path
    )
    assert "reliability.png" not in paths and "lift.png" not in paths
    assert {"feature_importance.png", "predicted_vs_actual.png"} <= set(paths)


def test_import_has_no_pyplot_side_effect():
    code = (
        "import sys, training.plots; print('matplotlib.pyplot' in sys.modules, 'matplotlib' in sys.modules)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert output == ["False", "False"]


# ------------------------------------------------------------------ SHAP summary colours


def _rgba(colour):
    from matplotlib.colors import to_rgba

    return np.asarray(to_rgba(colour))


def _rare_binary(n_rows: int = 1600, n_ones: int = 24, n_missing: int = 30) -> pd.Series:
    """A 0/1 feature like ``acct_renewals_lost_60d``: 1 in 24 of 1,600 rows, a few missing."""
    values = np.zeros(n_rows)
    values[:n_ones] = 1.0
    values[n_ones : n_ones + n_missing] = np.nan
    return pd.Series(values, name="rare")


def test_rare_binary_value_gets_the_high_end_colour_not_missing_or_middle():
    from training.plots import HIGH_COLOUR, LOW_COLOUR, MISSING_COLOUR, point_colours

    column = _rare_binary()
    colours = point_colours(column)
    ones, missing, zeros = colours[:24], colours[24:54], colours[54:]
    np.testing.assert_allclose(ones, np.tile(_rgba(HIGH_COLOUR), (24, 1)), atol=0.01)
    np.testing.assert_allclose(zeros, np.tile(_rgba(LOW_COLOUR), (len(zeros), 1)), atol=0.01)
    np.testing.assert_allclose(missing, np.tile(_rgba(MISSING_COLOUR), (30, 1)))
    assert np.abs(ones[0] - missing[0]).max() > 0.3


def test_value_scale_spreads_ranks_and_keeps_rare_ends_at_the_ends():
    from training.plots import value_scale

    # A common value at the top (ones in 1,576 of 1,600 rows) still leaves the zeros at the low end.
    common_ones = pd.Series(np.r_[np.zeros(24), np.ones(1576)])
    np.testing.assert_array_equal(np.unique(value_scale(common_ones)), [0.0, 1.0])
    # A heavy-tailed feature: ranks, not values, so the bulk is not crushed into one colour.
    skewed = pd.Series(np.r_[np.arange(1, 100, dtype=float), 1e6])
    scale = value_scale(skewed)
    assert scale[0] == 0.0 and scale[-1] == 1.0
    assert 0.45 < scale[49] < 0.55
    constant = value_scale(pd.Series([3.0, 3.0, np.nan]))
    assert constant[:2].tolist() == [0.5, 0.5] and np.isnan(constant[2])


def test_categorical_features_get_one_neutral_colour_and_missing_its_own():
    from training.plots import CATEGORY_COLOUR, MISSING_COLOUR, point_colours

    column = pd.Series(
        pd.Categorical(["smb", "enterprise", None, "mid", "zzz"], categories=["enterprise", "mid", "smb"])
    )
    colours = point_colours(column)
    present = ~column.isna().to_numpy()
    np.testing.assert_allclose(colours[present], np.tile(_rgba(CATEGORY_COLOUR), (int(present.sum()), 1)))
    np.testing.assert_allclose(colours[~present], np.tile(_rgba(MISSING_COLOUR), (int((~present).sum()), 1)))


def test_missing_and_category_colours_are_off_the_value_scale():
    from training.plots import CATEGORY_COLOUR, MISSING_COLOUR, _value_colour_map

    scale = np.asarray(_value_colour_map()(np.linspace(0, 1, 256)))[:, :3]
    for colour in (MISSING_COLOUR, CATEGORY_COLOUR):
        distance = np.sqrt(((scale - _rgba(colour)[:3]) ** 2).sum(axis=1)).min()
        assert distance > 0.25, colour
    assert np.abs(_rgba(MISSING_COLOUR) - _rgba(CATEGORY_COLOUR)).max() > 0.3


def test_beeswarm_draws_rare_values_last_and_names_missing_and_category():
    from training.plots import HIGH_COLOUR, MISSING_COLOUR, _beeswarm_figure

    rare = _rare_binary()
    segment = pd.Series(pd.Categorical(np.where(np.arange(1600) % 3 == 0, "a", "b"), categories=["a", "b"]))
    prepared = pd.DataFrame({"rare": rare, "segment": segment})
    rng = np.random.default_rng(0)
    contributions = pd.DataFrame({"rare": rng.normal(size=1600), "segment": rng.normal(size=1600)})
    figure = _beeswarm_figure(contributions, prepared, ["rare", "segment"], ["rare flag", "segment"])

    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_yticklabels()] == ["segment", "rare flag"]
    rare_points = axes.collections[0]  # features are drawn in the order given, first on the top row
    assert set(rare_points.get_offsets()[:, 1].round()) == {1.0}
    faces = rare_points.get_facecolors()
    # The 24 ones come last (on top of the 1,546 zeros); the 30 missing rows just before them.
    np.testing.assert_allclose(faces[-24:, :3], np.tile(_rgba(HIGH_COLOUR)[:3], (24, 1)), atol=0.01)
    np.testing.assert_allclose(faces[-54:-24, :3], np.tile(_rgba(MISSING_COLOUR)[:3], (30, 1)), atol=0.01)
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["missing", "categorical (unordered)"]
    assert len(axes.get_title()) <= 40


# ------------------------------------------------------------------ reliability diagram


def _rare_outcome(n_rows: int = 1600, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Churn-like probabilities (most near 0.3 %, a few high) and labels drawn from them (~5 %)."""
    rng = np.random.default_rng(seed)
    p = np.where(
        rng.uniform(size=n_rows) < 0.12, rng.uniform(0.1, 0.95, n_rows), rng.uniform(0.001, 0.01, n_rows)
    )
    return (rng.uniform(size=n_rows) < p).astype(float), p


def test_reliability_axes_follow_a_rare_outcome_and_keep_the_diagonal():
    from training.evaluate import calibration_bins
    from training.plots import _reliability_figure

    y, p = _rare_outcome()
    bins = calibration_bins(y, p, 10)
    figure = _reliability_figure(y, p, 10, others={"base_rate": np.full_like(p, y.mean())})
    axes = figure.axes[0]
    low, high = axes.get_xlim()
    assert axes.get_ylim() == (low, high)
    assert axes.get_xscale() == "log" and axes.get_yscale() == "log"
    plotted = [v for b in bins for v in (b["mean_predicted"], b["observed_rate"]) if v > 0]
    assert low <= min(plotted) and max(plotted) <= high < 0.75
    assert low > 0.0003  # not stretched down to a fixed floor either
    perfect = next(line for line in axes.get_lines() if line.get_label() == "perfect")
    np.testing.assert_allclose(perfect.get_xdata(), perfect.get_ydata())
    np.testing.assert_allclose([perfect.get_xdata()[0], perfect.get_xdata()[-1]], [low, high])
    # Positives/rows of every model bin are written beside its point.
    counts = [t.get_text() for t in axes.texts]
    assert counts == [f"{round(b['observed_rate'] * b['n'])}/{b['n']}" for b in bins]
    assert sum(int(c.split("/")[0]) for c in counts) == int(y.sum())


def test_reliability_axes_stay_linear_for_spread_probabilities():
    from training.plots import _reliability_figure

    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.6, 2000)
    y = (rng.uniform(size=p.size) < p).astype(float)
    axes = _reliability_figure(y, p, 10).axes[0]
    assert axes.get_xscale() == "linear"
    low, high = axes.get_xlim()
    assert low == 0.0 and 0.55 < high < 0.8  # zoomed to the data, not 0-1
    assert axes.get_ylim() == (low, high)


# ------------------------------------------------------------------ predicted vs actual


def test_predicted_vs_actual_is_log_log_with_the_identity_line_and_data_limits():
    from training.plots import _predicted_vs_actual_figure

    rng = np.random.default_rng(2)
    p = np.exp(rng.normal(9, 1, 500))
    y = p * np.exp(rng.normal(0, 0.3, 500))
    y[:3] = 0.0  # e.g. a zero amount: cannot sit on log axes, must be counted instead
    axes = _predicted_vs_actual_figure(y, p, 10).axes[0]
    assert axes.get_xscale() == "log" and axes.get_yscale() == "log"
    low, high = axes.get_xlim()
    assert axes.get_ylim() == (low, high)
    shown = y > 0
    assert low <= min(p[shown].min(), y[shown].min()) and high >= max(p.max(), y.max())
    assert high < 1.5 * max(p.max(), y.max())
    identity = next(line for line in axes.get_lines() if line.get_label() == "y = x")
    np.testing.assert_allclose(identity.get_xdata(), identity.get_ydata())
    assert len(axes.collections[0].get_offsets()) == 497
    assert "3 rows" in axes.get_title()


def test_regressor_plots_include_predicted_vs_actual(frame, bundle_factory, tmp_path):
    from training.plots import evaluation_plots

    paths = evaluation_plots(
        bundle_factory(frame, kind="regressor"), frame, frame["amount"].to_numpy(), tmp_path
    )
    content = paths["predicted_vs_actual.png"].read_bytes()
    assert content.startswith(PNG_SIGNATURE) and len(content) > 5000
