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


def _figure(width: float = 6.0, height: float = 4.5) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def reliability_diagram(
    y: Sequence[float],
    p: Sequence[float],
    path: str | Path,
    n_bins: int = 10,
    others: dict[str, Sequence[float]] | None = None,
    title: str = "Reliability (equal-mass bins)",
) -> Path:
    """Observed rate vs mean predicted probability per equal-mass bin (diagonal = perfect).

    Args:
        y: 0/1 labels.
        p: Model probabilities.
        path: PNG file to write.
        n_bins: Number of bins.
        others: Optional further curves (e.g. baselines) by name.
        title: Figure title.
    """
    figure = _figure()
    axes = figure.add_subplot(1, 1, 1)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
    for name, values in {"model": p, **(others or {})}.items():
        bins = calibration_bins(np.asarray(y), np.asarray(values), n_bins)
        axes.plot(
            [b["mean_predicted"] for b in bins], [b["observed_rate"] for b in bins], marker="o", label=name
        )
    axes.set_xlabel("mean predicted probability")
    axes.set_ylabel("observed rate")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_title(title)
    axes.legend(loc="upper left")
    return _save(figure, path)


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


def shap_summary_plots(
    bundle: ModelBundle,
    frame: pd.DataFrame,
    directory: str | Path,
    top: int = 15,
    max_rows: int = 2000,
    seed: int = 0,
) -> list[Path]:
    """Mean |contribution| bar chart and a beeswarm-like scatter of TreeSHAP contributions.

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

    swarm = _figure(7.5, max(3.0, 0.35 * len(mean_abs) + 1))
    axes = swarm.add_subplot(1, 1, 1)
    from matplotlib import colormaps

    colour_map = colormaps["coolwarm"].with_extremes(bad="grey")
    rng = np.random.default_rng(seed)
    prepared = bundle.prepare(frame)
    scatter = None
    for position, name in enumerate(mean_abs.index[::-1]):
        values = contributions[name].to_numpy()
        column = prepared[name]
        if isinstance(column.dtype, pd.CategoricalDtype):
            colour = column.cat.codes.to_numpy(dtype=float)
            colour[colour < 0] = np.nan
        else:
            colour = column.to_numpy(dtype=float)
        finite = np.isfinite(colour)
        if finite.any():
            low, high = np.nanpercentile(colour[finite], [5, 95])
            colour = np.clip((colour - low) / (high - low), 0, 1) if high > low else np.full_like(colour, 0.5)
        jitter = rng.uniform(-0.3, 0.3, values.size)
        scatter = axes.scatter(
            values, position + jitter, c=colour, cmap=colour_map, s=6, vmin=0, vmax=1, alpha=0.7
        )
    axes.set_yticks(np.arange(len(mean_abs)))
    axes.set_yticklabels(labels[::-1])
    axes.axvline(0, color="grey", linewidth=1)
    axes.set_xlabel("contribution (raw margin)")
    axes.set_title("Contribution per row (colour: feature value, low to high; grey: missing)")
    if scatter is not None:
        swarm.colorbar(scatter, ax=axes, label="feature value (scaled)")
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

    Classifiers get reliability and lift charts; every model gets gain importance and, unless it
    uses linear trees, SHAP plots.
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
    paths.append(feature_importance_plot(bundle, directory / "feature_importance.png"))
    if bundle.supports_contributions:  # linear-tree models have no TreeSHAP
        paths.extend(shap_summary_plots(bundle, test_set, directory))
    return {path.name: path for path in paths}
