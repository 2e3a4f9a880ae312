"""Bring-your-own churn table: parsing and refusal reports, label handling, OOF and out-of-time
evaluation, quality against the baselines, and the train -> register -> score round trip."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from byo_fixtures import make_churn_table  # noqa: E402

from training.byo import (  # noqa: E402
    BASELINE_NAMES,
    ByoTableError,
    apply_schema,
    evaluate_out_of_fold,
    evaluate_out_of_time,
    infer_schema,
    prepare_frame,
    read_table,
    score_byo_table,
    train_byo_table,
)
from training.evaluate import classification_metrics  # noqa: E402

CONTRACT_KEYS = {
    "model",
    "evaluation",
    "n_train",
    "n_test",
    "n_rows_rejected",
    "auc",
    "pr_auc",
    "brier",
    "ece",
    "top_decile_lift",
    "baselines",
    "intervals",
    "verdict",
    "verdict_reasons",
    "run_id",
    "features_used",
    "features_refused",
    "label_positive",
}


def _write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


@pytest.fixture()
def messy_table(tmp_path: Path) -> Path:
    """600 telco-like rows with a bad label value (line 7) and a missing label (line 11)."""
    frame = make_churn_table(600, seed=3).drop(columns="true_p")
    frame.loc[5, "Churn"] = "maybe"
    frame.loc[9, "Churn"] = "N/A"
    return _write(frame, tmp_path / "churn.csv")


# --------------------------------------------------------------------------- parsing and reports


def test_schema_reports_refused_columns_with_reasons(messy_table: Path) -> None:
    raw = read_table(messy_table)
    schema = infer_schema(raw, id_col="customerID", label_col="Churn", source=messy_table.name)

    assert (schema.positive, schema.negative) == ("Yes", "No")
    refused = schema.refused
    assert refused["customerID"] == "the id column"
    assert refused["Churn"] == "the label column"
    assert refused["region"].startswith("constant")
    assert refused["row_number"].startswith("id-like")
    assert refused["churn_reason"].startswith("leakage guard") and "AUC" in refused["churn_reason"]
    assert any("churn_reason" in note and "leaky" in note for note in schema.notes)

    kinds = {c.name: c.kind for c in schema.columns}
    assert kinds["monthly_charges"] == "numeric"  # numbers stored as padded text
    assert kinds["total_charges"] == "numeric"
    assert kinds["senior_citizen"] == "boolean" and kinds["partner"] == "boolean"
    assert kinds["paperless_billing"] == "boolean"  # NA / ? / null / '' are missing, not a category
    assert kinds["contract"] == "categorical"
    total = next(c for c in schema.columns if c.name == "total_charges")
    assert total.n_bad_values == 3 and total.bad_examples == ["n.a."]
    assert any("total_charges" in n and "3 value(s)" in n for n in schema.notes)


def test_bad_and_missing_labels_are_reported_with_file_lines(messy_table: Path) -> None:
    raw = read_table(messy_table)
    schema = infer_schema(raw, id_col="customerID", label_col="Churn")
    parsed = apply_schema(raw, schema, source=messy_table.name)

    lines = {r["line"]: r for r in parsed.rejected}
    assert set(lines) == {7, 11}  # header is line 1, data row 5 is line 7
    assert "'maybe'" in lines[7]["errors"][0] and "Churn" in lines[7]["errors"][0]
    assert "missing" in lines[11]["errors"][0]
    assert len(parsed.features) == len(raw) - 2 == len(parsed.y)
    assert parsed.features["paperless_billing"].isna().sum() > 0
    assert set(np.unique(parsed.y)) == {0, 1}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["1", "0"], "1"),
        (["True", "False"], "True"),
        (["Churned", "Retained"], "Churned"),
        (["Attrited Customer", "Existing Customer"], "Attrited Customer"),
    ],
)
def test_label_positive_is_inferred(values: list[str], expected: str) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"id": [f"c{i}" for i in range(200)], "x": rng.normal(size=200), "label": rng.choice(values, 200)}
    )
    schema = infer_schema(frame.astype(str), id_col="id", label_col="label")
    assert schema.positive == expected


def test_ambiguous_label_is_refused_listing_values() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "id": [f"c{i}" for i in range(200)],
            "x": rng.normal(size=200),
            "status": rng.choice(["A", "B"], 200),
        }
    ).astype(str)
    with pytest.raises(
        ByoTableError,
        match=r"'status'.*cannot tell which value means churned among '[AB]' \(\d+\), '[AB]' \(\d+\); pass --positive",
    ):
        infer_schema(frame, id_col="id", label_col="status", source="t.csv")
    assert infer_schema(frame, id_col="id", label_col="status", positive="B").negative == "A"
    with pytest.raises(ByoTableError, match=r"--positive 'Z' is not one of its values"):
        infer_schema(frame, id_col="id", label_col="status", positive="Z")


def test_unknown_column_names_are_refused() -> None:
    frame = pd.DataFrame({"id": ["a", "b"], "y": ["1", "0"]})
    with pytest.raises(ByoTableError, match=r"--label-col 'churn' is not a column"):
        infer_schema(frame, id_col="id", label_col="churn", source="t.csv")


def test_dates_free_text_and_copies_of_the_label() -> None:
    rng = np.random.default_rng(1)
    n = 400
    label = rng.choice(["yes", "no"], n)
    frame = pd.DataFrame(
        {
            "cust": [f"c{i}" for i in range(n)],
            "as_of": pd.Timestamp("2024-06-01").strftime("%Y-%m-%d"),
            "signup": (
                pd.Timestamp("2024-06-01") - pd.to_timedelta(rng.integers(10, 900, n), unit="D")
            ).strftime("%Y-%m-%d"),
            "comment": [f"free text number {rng.integers(0, 10**6)}" for _ in range(n)],
            "city": rng.choice([f"city{i}" for i in range(150)], n),
            "label_copy": np.where(label == "yes", "Y", "N"),
            "usage": rng.normal(size=n).round(3).astype(str),
            "churned": label,
        }
    )
    frame.loc[3, "as_of"] = "2024-07-01"  # not constant
    without_time = infer_schema(frame, id_col="cust", label_col="churned")
    assert "--time-col" in without_time.refused["signup"]
    assert without_time.refused["as_of"].startswith("date column without --time-col")
    assert without_time.refused["comment"].startswith("id-like")
    assert without_time.refused["city"].startswith("high-cardinality text")
    assert without_time.refused["label_copy"].startswith("leakage guard")

    with_time = infer_schema(frame, id_col="cust", label_col="churned", time_col="as_of")
    assert with_time.refused["as_of"].startswith("the time column")
    assert "days_since_signup" in with_time.feature_names
    parsed = apply_schema(frame, with_time)
    expected = (pd.Timestamp("2024-06-01") - pd.to_datetime(frame.loc[0, "signup"])).days
    assert parsed.features.loc[0, "days_since_signup"] == expected


def test_parquet_input_and_bad_time_values(tmp_path: Path) -> None:
    frame = make_churn_table(300, seed=5, with_time=True, messy=False).drop(columns="true_p")
    frame["tenure_months"] = frame["tenure_months"].astype("int64")  # typed Parquet column
    frame.loc[4, "snapshot_date"] = "31/02/2024"
    path = _write(frame, tmp_path / "t.parquet")
    raw = read_table(path)
    schema = infer_schema(raw, id_col="customerID", label_col="Churn", time_col="snapshot_date")
    parsed = apply_schema(raw, schema, source=path.name)
    assert [r["line"] for r in parsed.rejected] == [6]
    assert (
        "snapshot_date" in parsed.rejected[0]["errors"][0] and "31/02/2024" in parsed.rejected[0]["errors"][0]
    )


# --------------------------------------------------------------------------- evaluation


def test_out_of_fold_quality_against_baselines() -> None:
    """Known signal (logistic truth + non-linear effects): at least as good as both baselines, calibrated."""
    frame = make_churn_table(3000, seed=11)
    raw = frame.drop(columns="true_p")
    schema = infer_schema(raw, id_col="customerID", label_col="Churn")
    parsed = apply_schema(raw, schema)
    result = evaluate_out_of_fold(prepare_frame(parsed.features, schema), parsed.y)

    assert result.evaluation == "stratified_5fold_oof"
    assert set(result.predictions) == {"model", *BASELINE_NAMES}
    metrics = {name: classification_metrics(result.y, p) for name, p in result.predictions.items()}
    ours = metrics["model"]
    assert ours["auc"] >= metrics["logistic_regression"]["auc"] - 0.01
    assert ours["auc"] >= metrics["lightgbm_default"]["auc"] - 0.01
    assert ours["ece"] <= 0.05
    assert ours["auc"] > metrics["base_rate"]["auc"] + 0.15
    oracle_auc = classification_metrics(result.y, frame["true_p"].to_numpy())["auc"]
    assert ours["auc"] <= oracle_auc + 0.02  # no leakage: cannot beat the generating probability


def test_out_of_time_split_uses_latest_rows_for_test() -> None:
    frame = make_churn_table(1200, seed=4, with_time=True).drop(columns="true_p")
    schema = infer_schema(frame, id_col="customerID", label_col="Churn", time_col="snapshot_date")
    assert "days_since_signup_date" in schema.feature_names
    parsed = apply_schema(frame, schema)
    times = parsed.row_time.reset_index(drop=True)
    result = evaluate_out_of_time(
        prepare_frame(parsed.features, schema).reset_index(drop=True), parsed.y, times
    )

    assert result.evaluation == "out_of_time"
    test_times = times.iloc[result.test_positions]
    others = times.drop(index=result.test_positions)
    assert test_times.min() > others.max()
    assert 0.15 * len(times) <= len(result.test_positions) <= 0.25 * len(times)
    assert result.final_model is not None
    for p in result.predictions.values():
        assert p.shape == result.y.shape and np.all((p >= 0) & (p <= 1))
    assert pd.Timestamp(result.details["test_period"][0]) > pd.Timestamp(
        result.details["calibration_period"][1]
    )


# --------------------------------------------------------------------------- train -> register -> score


def test_train_register_and_score_round_trip(
    messy_table: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    metrics_path = tmp_path / "metrics.json"

    document = train_byo_table(
        messy_table,
        id_col="customerID",
        label_col="Churn",
        positive=None,
        time_col=None,
        tune=0,
        metrics_out=metrics_path,
        register=True,
    )
    on_disk = json.loads(metrics_path.read_text())
    assert set(on_disk) >= CONTRACT_KEYS
    assert on_disk["model"] == "churn" and on_disk["evaluation"] == "stratified_5fold_oof"
    assert on_disk["n_rows_rejected"] == 2 and on_disk["n_test"] == 598
    assert set(on_disk["baselines"]) == set(BASELINE_NAMES)
    assert on_disk["verdict"] in ("ready", "weak", "not_ready") and on_disk["verdict_reasons"]
    assert on_disk["run_id"] and on_disk["run_id"] == document["run_id"]
    assert on_disk["label_positive"] == "Yes"
    assert "churn_reason" in on_disk["features_refused"] and "region" in on_disk["features_refused"]
    assert {f["column"] for f in on_disk["features_used"]} >= {"tenure_months", "contract", "total_charges"}
    assert document["registered_version"] == "1"

    new = pd.read_csv(messy_table, dtype=str, keep_default_na=False).drop(columns="Churn").head(40)
    new.loc[2, "customerID"] = ""  # cannot be scored: reported, not dropped silently
    new.loc[3, "contract"] = "Lifetime"  # unseen category: scored, value treated as missing
    new_path = _write(new, tmp_path / "new.csv")
    out = tmp_path / "scores.csv"
    report = score_byo_table(new_path, out=out)

    assert report["alias"] == "challenger" and "no champion" in report["warnings"][0]
    assert report["n_scored"] == 39 and report["n_rejected"] == 1
    assert report["rejected"][0]["line"] == 4 and "customerID" in report["rejected"][0]["errors"][0]
    assert any("contract" in w and "Lifetime" in w for w in report["warnings"])
    scores = pd.read_csv(out)
    assert list(scores.columns[:4]) == ["customerID", "churn_probability", "risk_band", "top_factors"]
    assert new.loc[2, "customerID"] not in set(scores["customerID"]) and len(scores) == 39
    assert scores["churn_probability"].between(0, 1).all()
    assert set(scores["risk_band"]) <= {"low", "medium", "high"}
    factors = json.loads(scores["top_factors"].iloc[0])
    assert factors and {"feature", "value", "contribution"} <= set(factors[0])
    assert Path(report["rejected_file"]).exists()

    # the same rows scored through the training parse give the same probabilities
    from serving.registry import resolve_bundle

    bundle, _ = resolve_bundle("churn-table", "challenger")
    raw = read_table(messy_table)
    schema = infer_schema(raw, id_col="customerID", label_col="Churn")
    parsed = apply_schema(raw, schema)
    direct = bundle.predict(parsed.features.loc[[0, 1, 4]])
    np.testing.assert_allclose(scores["churn_probability"].iloc[[0, 1, 3]].to_numpy(), direct, atol=1e-6)


# --------------------------------------------------------------------------- promotion of churn-table


def _train_table(path: Path) -> dict:
    return train_byo_table(
        path,
        id_col="customerID",
        label_col="Churn",
        positive=None,
        time_col=None,
        tune=0,
        metrics_out=None,
        register=True,
    )


def test_promote_churn_table_with_the_paired_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`revcast promote churn-table`: verdict gate, force with a reason, no comparison on rows the
    champion was fitted on, and a paired AUC interval on unseen customers."""
    from training import byo
    from training.cmd_model import cmd_promote

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    # Three trainings: fewer folds, C values and resamples keep the test quick (the rules are the same).
    for key, value in {"n_folds": 3, "inner_folds": 3, "logreg_Cs": (0.1, 1.0), "n_boot": 100}.items():
        monkeypatch.setitem(byo.DEFAULT_CONFIG, key, value)
    seen = make_churn_table(400, seed=3).drop(columns="true_p")
    noise = seen.copy()
    noise["Churn"] = np.random.default_rng(0).permutation(noise["Churn"].to_numpy())
    noise = noise.drop(columns="churn_reason")  # a copy of the real label: would be refused anyway

    # v1: labels carry no signal -> not ready; only a forced promotion makes it the champion.
    junk = _train_table(_write(noise, tmp_path / "noise.csv"))
    assert junk["verdict"] != "ready"
    refused = cmd_promote("churn-table", force=False, reason=None)
    assert not refused["promoted"] and any("not 'ready'" in r for r in refused["reasons"])
    forced = cmd_promote("churn-table", force=True, reason="test: first table model")
    assert forced["promoted"] and forced["forced"]

    # v2: the same customers with real labels: the champion was fitted on every held-out row.
    _train_table(_write(seen, tmp_path / "seen.csv"))
    overlap = cmd_promote("churn-table", force=False, reason=None)
    assert not overlap["promoted"] and overlap["comparison"] is None
    assert any("fitted on 400 of the challenger's 400 held-out rows" in r for r in overlap["reasons"])

    # v3: new customers: challenger held-out scores vs the champion on rows it never saw.
    fresh = make_churn_table(400, seed=11).drop(columns="true_p")
    document = _train_table(_write(fresh, tmp_path / "fresh.csv"))
    result = cmd_promote("churn-table", force=False, reason=None)
    comparison = result["comparison"]
    assert comparison["metric"] == "auc" and comparison["n"] == 400 and comparison["n_excluded"] == 0
    assert comparison["lo"] > 0  # a real model against a label-noise champion
    assert any("challenger beats champion v1" in r for r in result["reasons"])
    assert result["promoted"] == (document["verdict"] == "ready")
    with pytest.raises(Exception, match="unknown model"):
        cmd_promote("churn-tables", force=False, reason=None)
