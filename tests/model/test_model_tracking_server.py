"""MLflow tracking, registration, promotion and registry look-up against a real `mlflow server`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serving.registry import ModelNotFoundError, resolve_bundle
from training import tracking
from training.evaluate import classification_metrics, metrics_document

pytestmark = pytest.mark.server


def _document(bundle, test_set, verdict: str) -> dict:
    from training.baselines import BaseRateBaseline

    y = test_set["label"].to_numpy()
    base = BaseRateBaseline().fit(test_set, y).predict_proba(test_set)[:, 1]
    return metrics_document(
        "win",
        "out_of_time",
        600,
        len(test_set),
        0,
        classification_metrics(y, bundle.predict(test_set)),
        {"base_rate": classification_metrics(y, base)},
        {"auc": (0.6, 0.8)},
        verdict,
        [f"constructed {verdict} verdict for the test"],
        None,
    )


def _log(bundle, test_set, verdict, uri, model="win"):
    return tracking.log_training_run(
        model,
        bundle=bundle,
        metrics_document=_document(bundle, test_set, verdict),
        test_set=test_set,
        label_column="label",
        group_column="opportunity_id",
        params={"lightgbm": {"num_leaves": 7, "rounds": 40}, "features": bundle.feature_names},
        data_fingerprint="sha256:test",
        tags={"purpose": "test"},
        tracking_uri=uri,
    )


@pytest.fixture(scope="module")
def runs(mlflow_server, frame, bundle, bundle_factory, frame_factory, monkeypatch_module):
    """Log a good model (v1), a bad one with a weak verdict (v2), the good one again (v3); promote along the way."""
    monkeypatch_module.setenv("REVCAST_USER", "test-user")
    uri = mlflow_server
    test_set = frame_factory(n_rows=1500, seed=1, n_groups=500)
    good = bundle
    bad = bundle_factory(frame, features=["num_noise"], rounds=15)
    results = {"uri": uri, "test_set": test_set, "good": good, "bad": bad}
    results["run1"] = _log(good, test_set, "ready", uri)
    results["promote1"] = tracking.promote("win", tracking_uri=uri)
    results["run2"] = _log(bad, test_set, "weak", uri)
    results["promote2_refused"] = tracking.promote("win", tracking_uri=uri)
    results["champion_after_refusal"] = tracking.champion_info("win", tracking_uri=uri)
    results["promote2_forced"] = tracking.promote("win", force=True, reason="testing force", tracking_uri=uri)
    results["champion_after_force"] = tracking.champion_info("win", tracking_uri=uri)
    results["resolved_forced"] = resolve_bundle("win", "champion", tracking_uri=uri)
    results["run3"] = _log(good, test_set, "ready", uri)
    results["promote3"] = tracking.promote("win", tracking_uri=uri)
    results["promote3_again"] = tracking.promote("win", tracking_uri=uri)
    return results


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


def test_run_is_logged_with_metrics_artifacts_and_registered_as_challenger(runs):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=runs["uri"], registry_uri=runs["uri"])
    run1 = runs["run1"]
    assert run1.version == "1" and run1.model_uri.startswith("models:/")
    assert run1.metrics_document["run_id"] == run1.run_id
    run = client.get_run(run1.run_id)
    assert client.get_experiment(run.info.experiment_id).name == "revcast-win"
    assert run.data.tags["verdict"] == "ready"
    assert run.data.tags["bundle_sha256"] == runs["good"].sha256
    assert run.data.params["lightgbm.num_leaves"] == "7"
    assert run.data.params["data_fingerprint"] == "sha256:test"
    assert run.data.metrics["auc"] == pytest.approx(run1.metrics_document["auc"])
    assert "baseline.base_rate.auc" in run.data.metrics
    assert run.data.metrics["auc.ci_lo"] == pytest.approx(0.6)
    artifacts = {a.path for a in client.list_artifacts(run1.run_id)} | {
        a.path for a in client.list_artifacts(run1.run_id, "evaluation")
    }
    assert {"metrics.json", "evaluation/test_set.parquet", "evaluation/test_set.json"} <= artifacts
    test_set, spec = tracking.load_test_set(run1.run_id, tracking_uri=runs["uri"])
    assert spec["label_column"] == "label" and spec["group_column"] == "opportunity_id"
    assert test_set["opportunity_id"].tolist() == runs["test_set"]["opportunity_id"].tolist()
    # the latest version carries the challenger alias
    assert client.get_model_version_by_alias("revcast-win", "challenger").version == "3"


def test_first_ready_challenger_becomes_champion(runs):
    result = runs["promote1"]
    assert result.promoted and result.previous_champion_version is None
    assert "no champion yet" in result.reasons


def test_worse_challenger_with_weak_verdict_is_refused(runs):
    refused = runs["promote2_refused"]
    assert not refused.promoted
    assert refused.verdict == "weak" and any("'weak'" in r for r in refused.reasons)
    assert refused.comparison["metric"] == "auc" and refused.comparison["delta"] < 0
    assert any("not shown better than champion v1" in r for r in refused.reasons)
    assert runs["champion_after_refusal"]["version"] == "1"


def test_force_promotes_and_records_who_and_why(runs):
    forced = runs["promote2_forced"]
    assert forced.promoted and forced.forced
    champion = runs["champion_after_force"]
    assert champion["version"] == "2"
    assert champion["promoted_by"] == "test-user"
    assert champion["promotion_reason"] == "testing force"
    assert champion["tags"]["promotion_forced"] == "true"
    assert champion["tags"]["previous_champion"] == "1"


def test_better_challenger_replaces_champion_with_paired_evidence(runs):
    promoted = runs["promote3"]
    assert promoted.promoted and not promoted.forced
    assert promoted.previous_champion_version == "2"
    assert promoted.comparison["lo"] > 0
    assert any("challenger beats champion v2" in r for r in promoted.reasons)


def test_promoting_the_champion_again_is_a_no_op(runs):
    again = runs["promote3_again"]
    assert not again.promoted and any("already the champion" in r for r in again.reasons)
    assert tracking.champion_info("win", tracking_uri=runs["uri"])["version"] == "3"


def test_resolve_bundle_by_alias_gives_identical_predictions(runs):
    bundle, info = runs["resolved_forced"]
    assert info["version"] == "2" and info["alias"] == "champion" and info["name"] == "revcast-win"
    assert info["sha256"] == runs["bad"].sha256
    np.testing.assert_array_equal(bundle.predict(runs["test_set"]), runs["bad"].predict(runs["test_set"]))
    champion, info = resolve_bundle("win", tracking_uri=runs["uri"])
    assert info["version"] == "3" and info["run_id"] == runs["run3"].run_id
    np.testing.assert_array_equal(champion.predict(runs["test_set"]), runs["good"].predict(runs["test_set"]))
    _, info = resolve_bundle("win", "challenger", tracking_uri=runs["uri"])
    assert info["version"] == "3"


def test_resolve_unknown_model_names_what_to_do(runs):
    with pytest.raises(ModelNotFoundError, match="revcast-churn@champion"):
        resolve_bundle("churn", tracking_uri=runs["uri"])
    with pytest.raises(ModelNotFoundError):
        tracking.promote("churn", tracking_uri=runs["uri"])


def test_pyfunc_models_from_code_predicts_like_the_bundle(runs):
    import mlflow

    mlflow.set_tracking_uri(runs["uri"])
    loaded = mlflow.pyfunc.load_model(runs["run1"].model_uri)
    features = runs["test_set"][runs["good"].feature_names]
    np.testing.assert_allclose(np.asarray(loaded.predict(features)), runs["good"].predict(features))


def test_local_default_store_pins_artifacts_next_to_the_database(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = tracking.tracking_uri()
    assert uri == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    experiment_id = tracking.experiment_for("amount", tracking_uri=uri)
    from mlflow import MlflowClient

    experiment = MlflowClient(tracking_uri=uri).get_experiment(experiment_id)
    assert experiment.name == "revcast-amount"
    assert (
        Path(experiment.artifact_location.removeprefix("file://"))
        == tmp_path.resolve() / "mlartifacts" / "revcast-amount"
    )
    assert tracking.experiment_for("amount", tracking_uri=uri) == experiment_id


def test_metrics_for_mlflow_flattens_and_skips_missing():
    document = {
        "auc": 0.7,
        "ece": None,
        "model": "win",
        "baselines": {"b": {"auc": 0.5, "ece": float("nan")}},
        "intervals": {"auc": [0.6, 0.8]},
        "n_test": 10,
    }
    assert tracking.metrics_for_mlflow(document) == {
        "auc": 0.7,
        "n_test": 10.0,
        "baseline.b.auc": 0.5,
        "auc.ci_lo": 0.6,
        "auc.ci_hi": 0.8,
    }
    assert json.loads(tracking.flatten_params({"a": {"b": [1, 2]}})["a.b"]) == [1, 2]


def test_resolve_bundle_uses_the_given_uri_not_the_process_default(runs, tmp_path, monkeypatch):
    import mlflow

    previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    other = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    mlflow.set_tracking_uri(other)
    mlflow.set_registry_uri(other)
    try:
        champion, info = resolve_bundle("win", tracking_uri=runs["uri"])
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    assert info["version"] == "3"
    np.testing.assert_array_equal(champion.predict(runs["test_set"]), runs["good"].predict(runs["test_set"]))
