"""Evaluation plots saved as PNG files (for ``mlflow.log_artifact`` / ``log_training_run(plots=...)``).

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly: no pyplot global
state, no backend switching, nothing happens at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.bundle import ModelBundle
from training.evaluate import calibration_bins

# SHAP's usual blue -> red scale; its midpoint is purple, so no feature value looks grey.
LOW_COLOUR = "#1e88e5"
HIGH_COLOUR = "#ff0051"
# Neither colour lies on the blue -> red scale, so a missing or categorical value never reads as a
# middle value.
MISSING_COLOUR = "#e69f00"
CATEGORY_COLOUR = "#6b6b6b"


def _figure(width: float = 6.0, height: float = 4.5, layout: str | None = None) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if figure.get_layout_engine() is None:
        figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def _reliability_figure(
    y: Sequence[float],
    p: Sequence[float],
    n_bins: int = 10,
    others: dict[str, Sequence[float]] | None = None,
    title: str = "Reliability (equal-mass bins)",
) -> Any:
    """The reliability diagram as a Figure (see ``reliability_diagram``)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    curves = {
        name: calibration_bins(np.asarray(y), np.asarray(values), n_bins)
        for name, values in {"model": p, **(others or {})}.items()
    }
    plotted = np.array(
        [v for bins in curves.values() for b in bins for v in (b["mean_predicted"], b["observed_rate"])]
    )
    # Both axes share the limits so the diagonal stays the 45-degree "perfect" line; the limit follows
    # the data because a rare outcome (churn ~5 %) on 0-1 axes leaves every point in one corner.
    highest = float(plotted.max()) if plotted.size else 0.0
    upper = min(1.0, 1.15 * highest) if highest > 0 else 1.0
    positive = plotted[plotted > 0]
    model_means = [b["mean_predicted"] for b in curves["model"]]
    # Skewed scores (most bins far below the top one) stay crowded in a corner even on zoomed linear
    # axes, so they get log axes; bins without positives are then drawn on the bottom edge.
    log_axes = bool(model_means) and positive.size > 0 and float(np.median(model_means)) < 0.15 * upper
    lower = float(positive.min()) / 1.6 if log_axes else 0.0

    figure = _figure(6.0, 5.0)
    axes = figure.add_subplot(1, 1, 1)
    if log_axes:
        ticks = [
            t for t in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0) if lower <= t <= upper
        ]
        axes.set_xscale("log")
        axes.set_yscale("log")
        for axis in (axes.xaxis, axes.yaxis):
            axis.set_major_locator(FixedLocator(ticks))
            axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            axis.set_minor_formatter(NullFormatter())
    axes.plot([lower, upper], [lower, upper], linestyle="--", color="grey", linewidth=1, label="perfect")
    any_empty = False
    for name, bins in curves.items():
        x = np.array([b["mean_predicted"] for b in bins])
        observed = np.array([b["observed_rate"] for b in bins])
        if log_axes:
            x, drawn = np.maximum(x, lower), np.maximum(observed, lower)
        else:
            drawn = observed
        is_model = name == "model"
        (line,) = axes.plot(
            x,
            drawn,
            marker="o",
            markersize=5 if is_model else 4,
            linewidth=1.8 if is_model else 1,
            label=name,
            zorder=3 if is_model else 2,
        )
        empty = observed <= 0
        if log_axes and empty.any():
            any_empty = True
            line.set_markevery(np.flatnonzero(~empty).tolist())
            axes.plot(
                x[empty],
                drawn[empty],
                linestyle="",
                marker="v",
                markersize=6 if is_model else 5,
                markerfacecolor="white",
                markeredgecolor=line.get_color(),
                zorder=line.get_zorder(),
                clip_on=False,
            )
    if any_empty:
        axes.plot(
            [],
            [],
            linestyle="",
            marker="v",
            markerfacecolor="white",
            markeredgecolor="black",
            label="no positives (drawn at bottom)",
        )
    # Positives / rows per model bin: how much evidence each point stands on. Vertical text, so the
    # labels of neighbouring bins (a few pixels apart at the low end) do not overprint each other.
    for b in curves["model"]:
        positives = int(round(b["observed_rate"] * b["n"]))
        axes.annotate(
            f"{positives}/{b['n']}",
            (max(b["mean_predicted"], lower), max(b["observed_rate"], lower)),
            xytext=(0, 6),
            textcoords="offset points",
            rotation=90,
            ha="center",
            va="bottom",
            fontsize=7,
            color="#1f4e79",
            annotation_clip=False,
        )
    scale_note = " (log scale)" if log_axes else ""
    axes.set_xlabel(f"mean predicted probability{scale_note}")
    axes.set_ylabel(f"observed rate{scale_note}")
    axes.set_xlim(lower, upper)
    axes.set_ylim(lower, upper)
    axes.set_title(title)
    axes.legend(loc="upper left", fontsize=8, title="numbers: positives/rows per model bin", title_fontsize=7)
    return figure


def reliability_diagram(
    y: Sequence[float],
    p: Sequence[float],
    path: str | Path,
    n_bins: int = 10,
    others: dict[str, Sequence[float]] | None = None,
    title: str = "Reliability (equal-mass bins)",
) -> Path:
    """Observed rate vs mean predicted probability per equal-mass bin (diagonal = perfect).

    Both axes end just above the largest plotted value (not at 1) and switch to log scales when most
    bins sit far below the top one, so a rare outcome is readable; bins with no positives are then
    drawn as hollow triangles on the bottom edge.
    The model's points are labelled with positives/rows of their bin.

    Args:
        y: 0/1 labels.
        p: Model probabilities.
        path: PNG file to write.
        n_bins: Number of bins.
        others: Optional further curves (e.g. baselines) by name.
        title: Figure title.
    """
    return _save(_reliability_figure(y, p, n_bins, others, title), path)


def lift_chart(
    y: Sequence[float],
    p: Sequence[float],
    path: str | Path,
    n_groups: int = 10,
    title: str = "Lift by score decile",
) -> Path:
    """Positive rate per score decile (highest scores first) relative to the overall rate."""
    y_arr = np.asarray(y, dtype=float)
    order = np.argsort(-np.asarray(p, dtype=float), kind="stable")
    base = y_arr.mean() if y_arr.size and y_arr.mean() > 0 else np.nan
    lifts = [
        y_arr[chunk].mean() / base if chunk.size else np.nan for chunk in np.array_split(order, n_groups)
    ]
    figure = _figure()
    axes = figure.add_subplot(1, 1, 1)
    axes.bar(np.arange(1, len(lifts) + 1), lifts, color="#4c72b0")
    axes.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    axes.set_xlabel("score decile (1 = highest scores)")
    axes.set_ylabel("lift (rate / overall rate)")
    axes.set_title(title)
    return _save(figure, path)


def _predicted_vs_actual_figure(
    y: Sequence[float], p: Sequence[float], n_bins: int = 10, title: str = "Predicted vs actual"
) -> Any:
    """The predicted-vs-actual plot as a Figure (see ``predicted_vs_actual``)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    y_arr = np.asarray(y, dtype=float)
    p_arr = np.asarray(p, dtype=float)
    shown = np.isfinite(y_arr) & np.isfinite(p_arr) & (y_arr > 0) & (p_arr > 0)
    hidden = int((~shown).sum())
    figure = _figure(5.5, 5.5)
    axes = figure.add_subplot(1, 1, 1)
    axes.set_xscale("log")
    axes.set_yscale("log")
    if shown.any():
        x_values, y_values = p_arr[shown], y_arr[shown]
        axes.scatter(x_values, y_values, s=7, alpha=0.35, color="#4c72b0", label="row", linewidths=0)
        order = np.argsort(x_values, kind="stable")
        chunks = [c for c in np.array_split(order, max(1, min(n_bins, order.size))) if c.size]
        axes.plot(
            [x_values[c].mean() for c in chunks],
            [y_values[c].mean() for c in chunks],
            marker="o",
            color="#c44e52",
            label=f"mean per equal-mass bin ({len(chunks)})",
            zorder=3,
        )
        # A small margin in log space so the extreme points are not cut by the frame.
        low = min(x_values.min(), y_values.min()) / 1.15
        high = max(x_values.max(), y_values.max()) * 1.15
        axes.plot([low, high], [low, high], linestyle="--", color="grey", linewidth=1, label="y = x")
        axes.set_xlim(low, high)
        axes.set_ylim(low, high)
        axes.set_aspect("equal")
        # 1-2-5 ticks in plain numbers: amounts read as "20k", not as powers of ten.
        ticks = _one_two_five(low, high)
        for axis in (axes.xaxis, axes.yaxis):
            axis.set_major_locator(FixedLocator(ticks))
            axis.set_major_formatter(FuncFormatter(lambda value, _: _short_number(value)))
            axis.set_minor_formatter(NullFormatter())
        axes.legend(loc="upper left", fontsize=8)
    else:
        axes.text(0.5, 0.5, "no positive values to plot", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("predicted (log scale)")
    axes.set_ylabel("actual (log scale)")
    axes.set_title(title + (f"\n{hidden} rows with a value <= 0 not shown" if hidden else ""))
    return figure


def _one_two_five(low: float, high: float) -> list[float]:
    """1, 2, 5 x powers of ten between ``low`` and ``high`` (both positive)."""
    exponents = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
    return [m * 10.0**e for e in exponents for m in (1, 2, 5) if low <= m * 10.0**e <= high]


def _short_number(value: float) -> str:
    """``20000`` -> ``20k``, ``1500000`` -> ``1.5M``; small numbers as ``%g``."""
    for divisor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= divisor:
            return f"{value / divisor:g}{suffix}"
    return f"{value:g}"


def predicted_vs_actual(
    y: Sequence[float],
    p: Sequence[float],
    path: str | Path,
    n_bins: int = 10,
    title: str = "Predicted vs actual",
) -> Path:
    """Log-log scatter of actual against predicted values with the y = x line and binned means.

    Amounts span orders of magnitude, so linear axes would show only the largest deals. Rows whose
    actual or predicted value is not positive cannot be drawn on log axes; their count is in the title.

    Args:
        y: Actual values.
        p: Predicted values.
        path: PNG file to write.
        n_bins: Equal-mass bins of the predicted value for the mean-actual curve.
        title: Figure title.
    """
    return _save(_predicted_vs_actual_figure(y, p, n_bins, title), path)


def feature_importance_plot(bundle: ModelBundle, path: str | Path, top: int = 20) -> Path:
    """Horizontal bar chart of LightGBM gain importance (top features)."""
    importance = bundle.feature_importance("gain").head(top)[::-1]
    display = bundle.state.get("display_names") or {}
    figure = _figure(7.0, max(3.0, 0.3 * len(importance) + 1))
    axes = figure.add_subplot(1, 1, 1)
    axes.barh([display.get(n, n) for n in importance.index], importance.to_numpy(), color="#55a868")
    axes.set_xlabel("total gain")
    axes.set_title("Feature importance (gain)")
    return _save(figure, path)


def value_scale(column: pd.Series) -> np.ndarray:
    """Each row's place on a feature's low-to-high colour scale, in [0, 1]; NaN where missing.

    The place is the value's percentile rank (ties share their mean rank) stretched so the lowest
    value maps to 0 and the highest to 1. Ranks instead of values keep skewed features from
    collapsing onto one colour, and the stretch gives a binary feature exactly the two end colours
    however rare either value is (24 ones in 1,600 rows are as red as a common one).

    Args:
        column: A numeric (or boolean) feature column.

    Returns:
        Float array aligned with ``column``: 0.5 for every row of a constant feature.
    """
    values = pd.to_numeric(pd.Series(column), errors="coerce").astype(float)
    ranks = values.rank(method="average", pct=True, na_option="keep").to_numpy()
    present = ~np.isnan(ranks)
    if not present.any():
        return ranks
    low, high = ranks[present].min(), ranks[present].max()
    if high == low:
        return np.where(present, 0.5, np.nan)
    return (ranks - low) / (high - low)


def point_colours(column: pd.Series, colour_map: Any | None = None) -> np.ndarray:
    """RGBA colour per row of a feature for the SHAP summary: value scale, missing, or category.

    Args:
        column: The prepared feature column (``pd.Categorical`` for categorical features).
        colour_map: Low-to-high colour map (default blue -> purple -> red).

    Returns:
        ``(len(column), 4)`` float array: missing rows get ``MISSING_COLOUR``; categorical features
        get ``CATEGORY_COLOUR`` because category codes have no order; others follow ``value_scale``.
    """
    from matplotlib.colors import to_rgba

    colour_map = colour_map or _value_colour_map()
    column = pd.Series(column)
    missing = column.isna().to_numpy()
    if isinstance(column.dtype, pd.CategoricalDtype):
        colours = np.tile(to_rgba(CATEGORY_COLOUR), (len(column), 1))
    else:
        colours = np.asarray(colour_map(np.nan_to_num(value_scale(column), nan=0.0)), dtype=float)
    colours[missing] = to_rgba(MISSING_COLOUR)
    return colours


def _value_colour_map() -> Any:
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("revcast_low_high", [LOW_COLOUR, HIGH_COLOUR])


def _beeswarm_figure(
    contributions: pd.DataFrame,
    prepared: pd.DataFrame,
    names: Sequence[str],
    labels: Sequence[str],
    seed: int = 0,
) -> Any:
    """Scatter of contributions per row for ``names`` (first on top), coloured by feature value."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    colour_map = _value_colour_map()
    # Constrained layout sizes the colour bar and its labels too; tight layout cut them off.
    figure = _figure(7.5, max(3.5, 0.35 * len(names) + 1.6), layout="constrained")
    axes = figure.add_subplot(1, 1, 1)
    rng = np.random.default_rng(seed)
    seen_missing = seen_category = False
    for position, name in zip(range(len(names) - 1, -1, -1), names, strict=True):
        column = prepared[name].reset_index(drop=True)
        values = contributions[name].to_numpy()
        colours = point_colours(column, colour_map)
        # Rare values are drawn last, so a handful of ones among thousands of zeros is not buried.
        frequency = column.map(column.value_counts(dropna=False)).to_numpy(dtype=float)
        frequency[column.isna().to_numpy()] = column.isna().sum()
        order = np.argsort(-frequency, kind="stable")
        jitter = rng.uniform(-0.3, 0.3, values.size)
        axes.scatter(values[order], position + jitter[order], c=colours[order], s=6, alpha=0.8, linewidths=0)
        seen_missing |= bool(column.isna().any())
        seen_category |= isinstance(column.dtype, pd.CategoricalDtype)
    axes.set_yticks(np.arange(len(names)))
    axes.set_yticklabels(list(labels)[::-1])
    axes.set_ylim(-0.6, len(names) - 0.4)
    axes.axvline(0, color="grey", linewidth=1)
    axes.set_xlabel("contribution (raw margin)")
    axes.set_title("Contribution per row (TreeSHAP)")
    colourbar = figure.colorbar(ScalarMappable(Normalize(0, 1), colour_map), ax=axes, ticks=[0, 1])
    colourbar.ax.set_yticklabels(["low", "high"])
    colourbar.set_label("feature value (rank within feature)")
    handles = []
    if seen_missing:
        handles.append(Line2D([], [], marker="o", linestyle="", color=MISSING_COLOUR, label="missing"))
    if seen_category:
        handles.append(
            Line2D([], [], marker="o", linestyle="", color=CATEGORY_COLOUR, label="categorical (unordered)")
        )
    if handles:
        # Outside the axes: inside, it hid the points of the bottom feature.
        figure.legend(
            handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False
        )
    return figure


def shap_summary_plots(
    bundle: ModelBundle,
    frame: pd.DataFrame,
    directory: str | Path,
    top: int = 15,
    max_rows: int = 2000,
    seed: int = 0,
) -> list[Path]:
    """Mean |contribution| bar chart and a beeswarm-like scatter of TreeSHAP contributions.

    In the scatter a point's colour is its feature value's rank within the feature (blue low, red
    high; see ``value_scale``), ``MISSING_COLOUR`` where the value is missing and
    ``CATEGORY_COLOUR`` for categorical features.

    Args:
        bundle: The model.
        frame: Rows to explain (e.g. the test set); at most ``max_rows`` are sampled.
        directory: Output directory (``shap_importance.png``, ``shap_summary.png``).
        top: Number of features shown.
        max_rows: Row sample size (contributions cost grows with rows).
        seed: Sampling seed.

    Returns:
        The two PNG paths.
    """
    directory = Path(directory)
    if len(frame) > max_rows:
        frame = frame.sample(max_rows, random_state=seed)
    contributions = bundle.contributions(frame).drop(columns="expected_value")
    mean_abs = contributions.abs().mean().sort_values(ascending=False).head(top)
    display = bundle.state.get("display_names") or {}
    labels = [display.get(n, n) for n in mean_abs.index]

    bar = _figure(7.0, max(3.0, 0.3 * len(mean_abs) + 1))
    axes = bar.add_subplot(1, 1, 1)
    axes.barh(labels[::-1], mean_abs.to_numpy()[::-1], color="#8172b2")
    axes.set_xlabel("mean |contribution| (raw margin)")
    axes.set_title("Feature contributions (TreeSHAP)")
    bar_path = _save(bar, directory / "shap_importance.png")

    swarm = _beeswarm_figure(contributions, bundle.prepare(frame), list(mean_abs.index), labels, seed)
    swarm_path = _save(swarm, directory / "shap_summary.png")
    return [bar_path, swarm_path]


def evaluation_plots(
    bundle: ModelBundle,
    test_set: pd.DataFrame,
    labels: Sequence[float],
    directory: str | Path,
    baseline_predictions: dict[str, Sequence[float]] | None = None,
) -> dict[str, Path]:
    """All standard plots of a model into ``directory``; returns ``{file name: path}`` for MLflow.

    Classifiers get reliability and lift charts, regressors a predicted-vs-actual plot; every model
    gets gain importance and, unless it uses linear trees, SHAP plots.
    """
    directory = Path(directory)
    predictions = bundle.predict(test_set)
    paths: list[Path] = []
    if bundle.kind == "classifier":
        paths.append(
            reliability_diagram(
                labels, predictions, directory / "reliability.png", others=baseline_predictions
            )
        )
        paths.append(lift_chart(labels, predictions, directory / "lift.png"))
    else:
        paths.append(predicted_vs_actual(labels, predictions, directory / "predicted_vs_actual.png"))
    paths.append(feature_importance_plot(bundle, directory / "feature_importance.png"))
    if bundle.supports_contributions:  # linear-tree models have no TreeSHAP
        paths.extend(shap_summary_plots(bundle, test_set, directory))
    return {path.name: path for path in paths}
