"""Plots are real PNG files and importing the module has no matplotlib side effects."""

from __future__ import annotations

import subprocess
import sys

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
    assert "reliability.png" not in paths and "feature_importance.png" in paths


def test_import_has_no_pyplot_side_effect():
    code = (
        "import sys, training.plots; print('matplotlib.pyplot' in sys.modules, 'matplotlib' in sys.modules)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert output == ["False", "False"]
