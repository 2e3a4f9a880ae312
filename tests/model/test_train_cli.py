"""End to end through the CLI on a small generated CRM: train win/amount/churn, promote, score.

Uses a temporary SQLite MLflow store (MLFLOW_TRACKING_URI) and fast training settings
(REVCAST_TRAINING_PARAMS); checks the CONTRACT §2 metrics documents, the registry aliases, the
promotion decision and that batch scores hold every open deal / active account exactly once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from train_data import (
    CONTRACT_CLASSIFIER_KEYS,
    CONTRACT_REGRESSOR_KEYS,
    fast_params,
    generate_small_crm,
    load_small_crm,
)
from typer.testing import CliRunner

from training.cli import app
from training.score import active_accounts_at, open_deals_at


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    data = generate_small_crm(root / "data")
    params_file = root / "fast_params.yaml"
    params_file.write_text(yaml.safe_dump(fast_params()))
    return {"root": root, "data": data, "params": params_file}


@pytest.fixture(scope="module")
def env(workspace: dict[str, Path]) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": f"sqlite:///{workspace['root'] / 'mlflow.db'}",
        "REVCAST_TRAINING_PARAMS": str(workspace["params"]),
        "REVCAST_USER": "pytest",
    }


def invoke(args: list[str], env: dict[str, str]) -> str:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"revcast {' '.join(args)} failed:\n{result.output}\n{result.exception!r}"
    return result.output


@pytest.fixture(scope="module")
def trained(workspace: dict[str, Path], env: dict[str, str]) -> dict[str, dict]:
    documents = {}
    for model in ("win", "amount", "churn"):
        out = workspace["root"] / f"{model}.json"
        invoke(["train", model, "--data", str(workspace["data"]), "--metrics-out", str(out)], env)
        documents[model] = json.loads(out.read_text())
    return documents


@pytest.mark.parametrize("model", ["win", "churn"])
def test_classifier_metrics_document_has_every_contract_key(trained: dict[str, dict], model: str) -> None:
    document = trained[model]
    missing = [key for key in CONTRACT_CLASSIFIER_KEYS if key not in document]
    assert not missing, missing
    assert document["model"] == model and document["evaluation"] == "out_of_time"
    assert document["verdict"] in ("ready", "weak", "not_ready") and document["reasons"]
    assert document["run_id"] and document["model_version"]
    assert document["n_train"] > 100 and document["n_test"] > 50
    assert 0.0 <= document["auc"] <= 1.0 and 0.0 <= document["ece"] <= 1.0
    expected_baselines = (
        {"base_rate", "stage_rate", "naive_bayes", "logistic_regression"}
        if model == "win"
        else {"base_rate", "logistic_regression", "rule_of_thumb"}
    )
    assert set(document["baselines"]) == expected_baselines
    for metrics in document["baselines"].values():
        assert {"auc", "brier", "ece", "pr_auc", "top_decile_lift"} <= set(metrics)
    lo, hi = document["intervals"]["auc"]
    assert lo <= document["auc"] <= hi
    split = document["split"]
    assert split["train_end"] < split["calibration_start"] <= split["calibration_end"] < split["test_start"]
    # the generator writes truth/: the oracle comparison is part of the document
    assert document["oracle"]["oracle_auc"] > 0.5
    assert document["lift_captured"] == document["oracle"]["lift_captured"]


def test_churn_document_compares_revenue_capture_with_every_baseline(trained: dict[str, dict]) -> None:
    capture = trained["churn"]["revenue_at_risk_capture_top_decile"]
    assert {"model", "base_rate", "logistic_regression", "rule_of_thumb"} <= set(capture)
    assert all(value is None or 0.0 <= value <= 1.0 for value in capture.values())


def test_amount_document_is_a_regression_document(trained: dict[str, dict]) -> None:
    document = trained["amount"]
    missing = [key for key in CONTRACT_REGRESSOR_KEYS if key not in document]
    assert not missing, missing
    assert "auc" not in document
    assert set(document["baselines"]) == {"as_of_amount", "list_price"}
    assert document["amount_objective"] in document["objective_candidates_calibration_wape"]
    assert document["wape"] >= 0
    # The generated CRM has an amount history, so ratio candidates are compared with the direct ones
    # and the chosen one is the lowest calibration WAPE among all of them.
    wapes = document["objective_candidates_calibration_wape"]
    assert {"ratio_l1", "ratio_l2", "tweedie"} <= set(wapes), document["amount_target_note"]
    assert wapes[document["amount_objective"]] == min(wapes.values())
    expected_target = "ratio_to_feature" if document["amount_objective"].startswith("ratio_") else "direct"
    assert document["amount_target"] == expected_target


def test_promote_then_score_every_open_deal_and_active_account_once(
    trained: dict[str, dict], workspace: dict[str, Path], env: dict[str, str]
) -> None:
    for model in ("win", "amount", "churn"):
        output = invoke(["promote", model, "--force", "--reason", "test run"], env)
        assert "decision: promoted" in output
    again = invoke(["promote", "win"], env)
    assert "already the champion" in again and "decision: not promoted" in again

    tables, _ = load_small_crm(workspace["data"])
    deals_out = workspace["root"] / "scores" / "opportunities.csv"
    invoke(["score", "opportunities", "--data", str(workspace["data"]), "--out", str(deals_out)], env)
    scores = pd.read_csv(deals_out, dtype={"opportunity_id": str})
    rejected = pd.read_csv(deals_out.with_name("opportunities.rejected.csv"), dtype={"opportunity_id": str})
    as_of = pd.Timestamp(scores["as_of"].iloc[0])
    expected = set(open_deals_at(tables, as_of)["opportunity_id"])
    assert scores["opportunity_id"].is_unique
    assert set(scores["opportunity_id"]) | set(rejected["opportunity_id"]) == expected
    assert (scores["expected_amount_source"] == "amount_model").all()
    assert (scores["win_model_version"].astype(str) == str(trained["win"]["model_version"])).all()
    factors = json.loads(scores["top_factors"].iloc[0])
    assert factors and {"feature", "value", "contribution"} <= set(factors[0])

    accounts_out = workspace["root"] / "scores" / "accounts.parquet"
    for _ in range(2):  # the second run sees the first one in the scores store
        invoke(["score", "accounts", "--data", str(workspace["data"]), "--out", str(accounts_out)], env)
    accounts = pd.read_parquet(accounts_out)
    assert accounts["account_id"].is_unique
    assert set(accounts["account_id"]) <= set(active_accounts_at(tables, as_of))
    assert (accounts["change_since_previous"].abs() < 1e-12).all()  # same data, same model: no change
    assert accounts["previous_scored_at"].notna().all()
    assert set(accounts["risk_band"]) <= {"low", "medium", "high"}
