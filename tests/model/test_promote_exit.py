"""`revcast promote` exit codes: 0 promoted (or already the champion), 1 refused, 2 bad input.

Runs against a temporary SQLite MLflow store with small LightGBM bundles logged as challengers.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from training import tracking
from training.cli import app
from training.evaluate import classification_metrics, metrics_document


def _log(bundle, frame: pd.DataFrame, verdict: str, uri: str) -> str:
    """Log ``bundle`` as a new ``revcast-win`` challenger with ``verdict``; return its version."""
    document = metrics_document(
        "win",
        "out_of_time",
        600,
        len(frame),
        0,
        classification_metrics(frame["label"].to_numpy(), bundle.predict(frame)),
        {},
        {},
        verdict,
        [f"constructed {verdict} verdict for the test"],
        None,
    )
    logged = tracking.log_training_run(
        "win",
        bundle=bundle,
        metrics_document=document,
        test_set=frame,
        label_column="label",
        group_column="opportunity_id",
        tracking_uri=uri,
    )
    return str(logged.version)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("REVCAST_USER", "pytest")
    monkeypatch.chdir(tmp_path)
    return uri


def _promote(*args: str):
    return CliRunner().invoke(app, ["promote", "win", *args])


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def _champion_version(uri: str) -> str | None:
    info = tracking.champion_info("win", tracking_uri=uri)
    return None if info is None else info["version"]


def test_force_without_a_reason_is_bad_input_and_moves_nothing(store: str, frame, bundle) -> None:
    _log(bundle, frame, "weak", store)
    for args in (["--force"], ["--force", "--reason", "   "]):
        result = _promote(*args)
        assert result.exit_code == 2, result.output
        assert _error_lines(result.output) == [
            'error: --force needs --reason "..." (recorded on the version as promotion_reason)'
        ]
        assert _champion_version(store) is None


def test_a_verdict_that_is_not_ready_exits_1_with_the_reason(store: str, frame, bundle) -> None:
    _log(bundle, frame, "weak", store)
    result = _promote()
    assert result.exit_code == 1, result.output
    assert "decision: not promoted" in result.output
    assert _error_lines(result.output) == ["error: not promoted: challenger verdict is 'weak', not 'ready'"]
    assert _champion_version(store) is None


def test_promote_refuse_force_and_already_champion_exit_codes(store: str, frame, bundle) -> None:
    assert _log(bundle, frame, "ready", store) == "1"
    first = _promote()
    assert first.exit_code == 0, first.output
    assert "decision: promoted v1 to champion" in first.output and not _error_lines(first.output)
    assert _champion_version(store) == "1"

    # The same model again: the paired delta is exactly 0, so it is not shown better.
    assert _log(bundle, frame, "ready", store) == "2"
    refused = _promote()
    assert refused.exit_code == 1, refused.output
    (line,) = _error_lines(refused.output)
    assert line.startswith("error: not promoted: challenger not shown better than champion v1")
    assert "auc challenger - champion = +0.0000" in line
    assert _champion_version(store) == "1"

    forced = _promote("--force", "--reason", "pytest: same model, new run")
    assert forced.exit_code == 0, forced.output
    assert "decision: promoted v2 to champion (forced)" in forced.output
    champion = tracking.champion_info("win", tracking_uri=store)
    assert champion["version"] == "2"
    assert champion["promotion_reason"] == "pytest: same model, new run"
    assert champion["tags"]["promotion_forced"] == "true"

    # Nothing left to do is not a refusal: the challenger is what the caller wants as champion.
    again = _promote()
    assert again.exit_code == 0, again.output
    assert "already the champion" in again.output and not _error_lines(again.output)


def test_library_promote_refuses_force_without_a_reason(store: str, frame, bundle) -> None:
    _log(bundle, frame, "weak", store)
    with pytest.raises(ValueError, match="needs a reason"):
        tracking.promote("win", force=True, tracking_uri=store)
    with pytest.raises(ValueError, match="needs a reason"):
        tracking.promote("win", force=True, reason=" ", tracking_uri=store)
    assert _champion_version(store) is None
    result = tracking.promote("win", tracking_uri=store)
    assert not result.promoted
    assert result.refusals == ["challenger verdict is 'weak', not 'ready'"]
