"""Training runs record their configuration: the resolved training parameters, the feature
parameters file and the git commit of the code (``git_commit`` / ``git_dirty`` tags)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from train_data import fast_params, generate_small_crm
from typer.testing import CliRunner

from features.params import DEFAULT_PARAMS_PATH
from training import tracking
from training.cli import app
from training.evaluate import classification_metrics, metrics_document
from training.train import TRAINING_PARAMS_PATH

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git checkout with one committed source file, ``mod.py``."""
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    _git(root, "config", "user.email", "pytest@example.com")
    _git(root, "config", "user.name", "pytest")
    (root / "mod.py").write_text("VALUE = 1\n")
    _git(root, "add", "mod.py")
    _git(root, "commit", "-q", "-m", "one")
    return root


@needs_git
def test_git_tags_name_the_commit_and_whether_tracked_files_changed(repo: Path) -> None:
    head = _git(repo, "rev-parse", "HEAD")
    assert tracking.git_tags(repo / "mod.py") == {"git_commit": head, "git_dirty": "false"}
    # Outputs lying around in the checkout (data, mlflow.db) do not make the code dirty ...
    (repo / "mlflow.db").write_text("not code")
    assert tracking.git_tags(repo / "mod.py") == {"git_commit": head, "git_dirty": "false"}
    # ... a changed source file does.
    (repo / "mod.py").write_text("VALUE = 2\n")
    assert tracking.git_tags(repo / "mod.py") == {"git_commit": head, "git_dirty": "true"}


@needs_git
def test_no_git_tags_outside_a_checkout_or_for_code_the_checkout_does_not_track(
    repo: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "installed" / "mod.py"
    outside.parent.mkdir()
    outside.write_text("VALUE = 1\n")
    assert tracking.git_tags(outside) == {}
    # e.g. a non-editable install in a virtualenv that lives inside some repository
    vendored = repo / ".venv" / "site-packages" / "mod.py"
    vendored.parent.mkdir(parents=True)
    vendored.write_text("VALUE = 1\n")
    assert tracking.git_tags(vendored) == {}


def test_no_git_tags_and_no_failure_without_git(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(repo / "no-such-bin"))
    assert tracking.git_tags(repo / "mod.py") == {}


def _document(bundle, frame: pd.DataFrame) -> dict:
    return metrics_document(
        "churn",
        "stratified_5fold_oof",
        600,
        len(frame),
        0,
        classification_metrics(frame["label"].to_numpy(), bundle.predict(frame)),
        {},
        {},
        "weak",
        ["constructed for the test"],
        None,
    )


def test_log_training_run_records_config_only_when_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frame, bundle
) -> None:
    """The bring-your-own table path logs through ``log_training_run`` without a config today:
    it still gets the git tags; a config, when passed, becomes the artifact and ``config.*`` params."""
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = {
        "bundle": bundle,
        "metrics_document": _document(bundle, frame),
        "test_set": frame,
        "label_column": "label",
        "params": {"source": "byo_table"},
        "register_model": False,
        "tracking_uri": uri,
    }
    plain = tracking.log_training_run("churn", **common)
    config = {"seed": 3, "lgbm_params": {"num_leaves": 5}, "logreg_Cs": [0.1, 1.0], "timeout_s": None}
    configured = tracking.log_training_run(
        "churn", training_params=config, feature_params_file=DEFAULT_PARAMS_PATH, **common
    )
    client = MlflowClient(uri)
    expected_git = tracking.git_tags()
    for logged in (plain, configured):
        tags = client.get_run(logged.run_id).data.tags
        assert {k: tags.get(k) for k in ("git_commit", "git_dirty")} == {
            "git_commit": expected_git.get("git_commit"),
            "git_dirty": expected_git.get("git_dirty"),
        }
    plain_params = client.get_run(plain.run_id).data.params
    assert not [k for k in plain_params if k.startswith("config.")]
    assert not [a.path for a in client.list_artifacts(plain.run_id) if a.path == "config"]

    params = client.get_run(configured.run_id).data.params
    assert params["config.seed"] == "3"
    assert params["config.lgbm_params.num_leaves"] == "5"
    assert params["config.logreg_Cs"] == "[0.1, 1.0]"
    assert params["source"] == "byo_table"
    local = Path(client.download_artifacts(configured.run_id, "config", str(tmp_path / "dl")))
    assert yaml.safe_load((local / "training_params.yaml").read_text()) == config
    assert (local / "feature_params.yaml").read_text() == DEFAULT_PARAMS_PATH.read_text()


@pytest.mark.slow
def test_train_with_an_override_file_logs_the_effective_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`revcast train win` with REVCAST_TRAINING_PARAMS: the run shows the file's values (not the
    packaged defaults) as params and artifact, the feature params file and the code's commit."""
    from mlflow import MlflowClient

    packaged_rounds = yaml.safe_load(TRAINING_PARAMS_PATH.read_text())["lightgbm"]["max_boost_rounds"]
    effective = fast_params()
    effective["lightgbm"]["max_boost_rounds"] = 15
    assert packaged_rounds != 15
    params_file = tmp_path / "params_15.yaml"
    params_file.write_text(yaml.safe_dump(effective))
    data = generate_small_crm(tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("REVCAST_TRAINING_PARAMS", str(params_file))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "win.json"

    result = CliRunner().invoke(app, ["train", "win", "--data", str(data), "--metrics-out", str(out)])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"

    run_id = yaml.safe_load(out.read_text())["run_id"]
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.params["config.lightgbm.max_boost_rounds"] == "15"
    assert run.data.params["config.evaluation.n_boot"] == str(effective["evaluation"]["n_boot"])
    assert run.data.tags["revcast.training_params_source"] == str(params_file)
    local = Path(client.download_artifacts(run_id, "config", str(tmp_path / "dl")))
    assert yaml.safe_load((local / "training_params.yaml").read_text()) == effective
    assert (local / "feature_params.yaml").read_text() == DEFAULT_PARAMS_PATH.read_text()
    expected_git = tracking.git_tags()
    assert run.data.tags.get("git_commit") == expected_git.get("git_commit")
    if expected_git:  # the tests run from a checkout: the tag is that checkout's HEAD
        head = _git(Path(tracking.__file__).parent, "rev-parse", "HEAD")
        assert run.data.tags["git_commit"] == head
        assert run.data.tags["git_dirty"] in ("true", "false")
