"""In-process checks of the serving pieces that need no server: config, request parsing, model loading."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from serving.config import ConfigError, config_from_env, grade_for, risk_band_for, score_for
from serving.requests import (
    RequestError,
    find_non_finite,
    parse_envelope,
    parse_json_body,
    prepare_accounts,
    prepare_opportunities,
)
from serving.schemas import EXAMPLE_CHURN_REQUEST, EXAMPLE_OPPORTUNITY_REQUEST, MAX_NESTED_ROWS

AS_OF = pd.Timestamp("2026-11-01")


def test_config_from_env_overrides_and_validates() -> None:
    config = config_from_env(
        {
            "REVCAST_API_TOKEN": "t",
            "REVCAST_GRADE_CUTS": "0.7,0.5,0.3",
            "REVCAST_MAX_RECORDS": "10",
            "REVCAST_REQUIRED_MODELS": "win",
        }
    )
    assert config.api_token == "t" and config.max_records == 10 and config.required_models == ("win",)
    assert grade_for(0.69, config.grade_cuts) == "B" and grade_for(0.7, config.grade_cuts) == "A"
    assert grade_for(0.29, config.grade_cuts) == "D"
    with pytest.raises(ConfigError, match="REVCAST_GRADE_CUTS"):
        config_from_env({"REVCAST_GRADE_CUTS": "0.7,0.5"})
    with pytest.raises(ConfigError, match="decrease"):
        config_from_env({"REVCAST_GRADE_CUTS": "0.3,0.5,0.7"})
    with pytest.raises(ConfigError, match="REVCAST_MAX_RECORDS"):
        config_from_env({"REVCAST_MAX_RECORDS": "many"})
    with pytest.raises(ConfigError, match="unknown model kinds"):
        config_from_env({"REVCAST_REQUIRED_MODELS": "win,forecast"})
    assert config_from_env({}).scoring_threads == 1  # serving.yaml
    assert config_from_env({}).large_request_records == 100
    assert config_from_env({"REVCAST_COALESCE_LINGER_MS": "0"}).coalesce_linger_ms == 0
    with pytest.raises(ConfigError, match="coalesce_linger_ms"):
        config_from_env({"REVCAST_COALESCE_LINGER_MS": "5000"})
    assert config_from_env({"REVCAST_LARGE_REQUEST_RECORDS": "0"}).large_request_records == 0
    with pytest.raises(ConfigError, match="large_request_records must be >= 0"):
        config_from_env({"REVCAST_LARGE_REQUEST_RECORDS": "-1"})
    assert config_from_env({"REVCAST_SCORING_THREADS": "3"}).scoring_threads == 3
    with pytest.raises(ConfigError, match="scoring_threads must be >= 1"):
        config_from_env({"REVCAST_SCORING_THREADS": "0"})


def test_grade_never_disagrees_with_the_score_shown_and_batch_agrees_with_api() -> None:
    # A seller compares the 1-99 score with the grade: 0.196 shows as 20, so it is graded at the
    # C cut of 0.2 like any other deal shown as 20 (graded D before, beside a 20).
    from training.score import grade_of, score_1_99

    cuts = {"A": 0.6, "B": 0.4, "C": 0.2}
    assert score_for(0.196) == 20 and grade_for(0.196, cuts) == "C"
    assert score_for(0.194) == 19 and grade_for(0.194, cuts) == "D"
    probabilities = np.concatenate([np.linspace(0.0, 1.0, 2001), [0.195, 0.395, 0.595, 0.29, 0.57]])
    for grid_cuts in (cuts, {"A": 0.57, "B": 0.29, "C": 0.07}):
        batch_grades = grade_of(probabilities, grid_cuts)
        batch_scores = score_1_99(probabilities)
        api = [(score_for(p), grade_for(p, grid_cuts)) for p in probabilities.tolist()]
        assert [s for s, _ in api] == batch_scores.tolist()
        assert [g for _, g in api] == batch_grades.tolist()
        by_score: dict[int, set[str]] = {}
        for score, grade in api:
            by_score.setdefault(score, set()).add(grade)
        assert all(len(grades) == 1 for grades in by_score.values())
        # 0.29 * 100 is 28.999999999999996: a deal shown as 29 still makes a 0.29 cut
        assert grade_for(0.29, grid_cuts) == ("B" if grid_cuts["B"] == 0.29 else "C")


def test_score_and_band_edges() -> None:
    assert score_for(0.0) == 1 and score_for(1.0) == 99 and score_for(0.374) == 37
    cuts = {"high": 0.5, "medium": 0.2}
    assert [risk_band_for(p, cuts) for p in (0.5, 0.49, 0.2, 0.19)] == ["high", "medium", "medium", "low"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{", 400, "not valid JSON"),
        (b"\xff\xfe", 400, "UTF-8"),
        (b'{"a": [1, {"b": NaN}]}', 422, "a[1].b"),
        (b'{"a": -Infinity}', 422, "a:"),
        (b'{"a": 1e999}', 422, "a:"),
    ],
)
def test_parse_json_body_errors(body: bytes, status: int, needle: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_json_body(body)
    assert info.value.status == status
    assert needle in str(info.value)


def test_find_non_finite_returns_none_for_clean_json() -> None:
    assert find_non_finite(json.loads(json.dumps(EXAMPLE_OPPORTUNITY_REQUEST))) is None


def test_envelope_limits_and_default_as_of() -> None:
    with pytest.raises(RequestError) as info:
        parse_envelope({"opportunities": [{}] * 3}, "opportunities", max_records=2)
    assert info.value.status == 413
    as_of, records = parse_envelope(
        {"opportunities": [{}]}, "opportunities", 5, now=pd.Timestamp("2026-01-02T03:04:05Z")
    )
    assert as_of == pd.Timestamp("2026-01-02 03:04:05") and records == [{}]
    as_of, _ = parse_envelope(
        {"as_of": "2026-01-02T10:00:00+02:00", "opportunities": [{}]}, "opportunities", 5
    )
    assert as_of == pd.Timestamp("2026-01-02 08:00:00")


def test_prepare_opportunities_canonical_tables() -> None:
    record = copy.deepcopy(EXAMPLE_OPPORTUNITY_REQUEST["opportunities"][0])
    record.update(stage=" Proposal ", lead_source="Inbound", unknown_extra="kept")
    record["activities"][0]["type"] = "Meeting"
    batch = prepare_opportunities([record], AS_OF)
    assert batch.accepted == [(0, "o-1")] and batch.rejected == []
    opps = batch.tables["opportunities"]
    assert opps.loc[0, "stage"] == "proposal" and opps.loc[0, "lead_source"] == "inbound"
    assert str(opps["created_at"].dtype) == "datetime64[ns]" and opps["amount"].dtype == "float64"
    assert batch.tables["activities"].loc[0, "type"] == "meeting"
    assert batch.tables["activities"].loc[0, "opportunity_id"] == "o-1"
    assert batch.tables["opportunity_history"].loc[0, "opportunity_id"] == "o-1"
    assert batch.values["o-1"]["amount"] == 42000.0


def test_prepare_opportunities_reports_every_reason_per_record() -> None:
    good = EXAMPLE_OPPORTUNITY_REQUEST["opportunities"][0]
    bad = {**good, "opportunity_id": "o-2", "type": "upsell", "amount": -1, "created_at": "2026-13-01"}
    other_account = {**good, "opportunity_id": "o-3", "account": {**good["account"], "industry": "tech"}}
    batch = prepare_opportunities([good, bad, other_account, 7], AS_OF)
    assert batch.accepted == [(0, "o-1")]
    rejected = {item["index"]: item for item in batch.rejected}
    assert sorted(rejected) == [1, 2, 3]
    fields = sorted(error.split(":")[0] for error in rejected[1]["errors"])
    assert fields == ["amount", "created_at", "type"]
    assert rejected[2]["errors"][0].startswith("account: differs")
    assert rejected[3] == {
        "index": 3,
        "opportunity_id": None,
        "errors": ["<record>: expected a JSON object, got int"],
    }
    # Only accepted records reach the tables.
    assert batch.tables["opportunities"]["opportunity_id"].tolist() == ["o-1"]


def test_prepare_accounts_keeps_usage_metrics_numeric() -> None:
    record = copy.deepcopy(EXAMPLE_CHURN_REQUEST["accounts"][0])
    record["usage"][0]["reports_run"] = 4
    batch = prepare_accounts(
        [record, {**record, "account_id": "a-2", "usage": [{"date": "2026-10-01", "seats": "many"}]}], AS_OF
    )
    assert batch.accepted == [(0, "a-9")]
    assert batch.tables["usage"]["reports_run"].dtype == "float64"
    assert batch.rejected[0]["errors"][0].startswith("usage[0].seats:")


def test_prepare_accounts_builds_the_deal_tables_without_a_current_state_row() -> None:
    record = copy.deepcopy(EXAMPLE_CHURN_REQUEST["accounts"][0])
    deal = record["opportunities"][0]
    deal.update(stage="Commit", amount=9999)  # current state: not a history row (batch churn rule)
    closed = {
        "opportunity_id": "o-8",
        "created_at": "2025-11-01",
        "type": "renewal",
        "closed_at": "2026-10-01",
        "outcome": "lost",
    }
    record["opportunities"].append(closed)
    batch = prepare_accounts([record], AS_OF)
    assert batch.rejected == []
    opps = batch.tables["opportunities"]
    assert opps["opportunity_id"].tolist() == ["o-7", "o-8"]
    assert opps["account_id"].tolist() == ["a-9", "a-9"]  # defaults to the enclosing account
    assert opps["type"].tolist() == ["renewal", "renewal"]
    assert opps["outcome"].tolist() == [None, "lost"]
    assert str(opps["closed_at"].dtype) == "datetime64[ns]"
    history = batch.tables["opportunity_history"]
    assert history["opportunity_id"].tolist() == ["o-7", "o-7"]
    assert history["stage"].tolist() == ["prospecting", "negotiation"]
    assert 9999 not in history["amount"].tolist()


def test_prepare_accounts_rejects_deal_conflicts_per_record() -> None:
    first = copy.deepcopy(EXAMPLE_CHURN_REQUEST["accounts"][0])
    second = copy.deepcopy(first)
    second.update(account_id="a-2", subscriptions=[], tickets=[], activities=[])
    # The same deal id under two accounts, and twice in one account.
    third = {**copy.deepcopy(second), "account_id": "a-3", "opportunities": []}
    third["opportunities"] = [
        {"opportunity_id": "o-30", "created_at": "2026-01-01"},
        {"opportunity_id": "o-30", "created_at": "2026-02-01"},
    ]
    batch = prepare_accounts([first, second, third], AS_OF)
    assert batch.accepted == [(0, "a-9")]
    errors = {item["account_id"]: item["errors"] for item in batch.rejected}
    assert errors["a-2"] == ["opportunities[0].opportunity_id: 'o-7' is also given with account 'a-9'"]
    assert errors["a-3"] == ["opportunities[1].opportunity_id: 'o-30' is also given as opportunities[0]"]


def test_nested_lists_are_limited_per_record() -> None:
    record = copy.deepcopy(EXAMPLE_CHURN_REQUEST["accounts"][0])
    change = {"changed_at": "2026-10-01", "stage": "demo"}
    record["opportunities"][0]["history"] = [change] * (MAX_NESTED_ROWS + 1)
    small = {**copy.deepcopy(EXAMPLE_CHURN_REQUEST["accounts"][0]), "account_id": "a-2", "opportunities": []}
    small["subscriptions"][0]["subscription_id"] = "s-2"
    small["tickets"], small["activities"] = [], []
    batch = prepare_accounts([record, small], AS_OF)
    assert batch.accepted == [(1, "a-2")]
    (error,) = batch.rejected[0]["errors"]
    assert error.startswith("opportunities.0.history: List should have at most 10000 items"), error


class _FakeBundle:
    feature_names: list[str] = []

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail


def test_load_model_set_swaps_keeps_and_reports(monkeypatch) -> None:
    import serving.service as service

    monkeypatch.setattr(service, "_warm_one", lambda kind, model, config: None)
    config = config_from_env({"REVCAST_API_TOKEN": "t"})
    registry = {"win": ("1", "aaa"), "amount": ("1", "bbb"), "churn": ("1", "ccc")}

    def resolver(kind, alias, uri):
        version, sha = registry[kind]
        if sha == "broken":
            raise RuntimeError(f"{kind} bundle sha256 mismatch")
        return _FakeBundle(), {"name": f"revcast-{kind}", "version": version, "sha256": sha}

    first, outcome = service.load_model_set(config, resolver=resolver)
    assert outcome == {"win": "loaded", "amount": "loaded", "churn": "loaded"} and first.ready(
        ("win", "churn")
    )
    registry.update(win=("2", "ddd"), churn=("2", "broken"))
    second, outcome = service.load_model_set(config, previous=first, resolver=resolver)
    assert outcome["win"] == "swapped 1 -> 2"
    assert outcome["amount"] == "unchanged" and second.models["amount"] is first.models["amount"]
    assert outcome["churn"].startswith("kept old (1): RuntimeError")
    assert second.models["churn"] is first.models["churn"]
    assert first.models["win"].version == "1"  # the old set is untouched: requests in flight keep it
    registry.update(churn=("3", "broken"))
    third, outcome = service.load_model_set(config, previous=None, resolver=resolver)
    assert "churn" not in third.models and not third.ready(("win", "churn"))
    assert third.errors["churn"].startswith("RuntimeError")


def _tiny_bundle(objective: str, calibration: dict | None, sigmoid: float | None = None):
    import lightgbm as lgb
    import numpy as np

    from serving.bundle import ModelBundle, learn_categories, prepare_features

    rng = np.random.default_rng(5)
    n = 400
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "y": np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n)),
            "stage": rng.choice(["a", "b", "c"], n).astype(object),
        }
    )
    label = (frame["x"] + (frame["stage"] == "b") + rng.normal(scale=0.5, size=n) > 0.5).astype(float)
    categories = learn_categories(frame, ["stage"])
    names = ["x", "y", "stage"]
    params = {"objective": objective, "num_leaves": 7, "verbose": -1, "num_threads": 1, "min_data_in_leaf": 5}
    if sigmoid is not None:
        params["sigmoid"] = sigmoid
    booster = lgb.train(
        params,
        lgb.Dataset(prepare_features(frame, names, categories), label=label, categorical_feature=["stage"]),
        num_boost_round=20,
    )
    bundle = ModelBundle.from_booster(
        booster,
        model="win" if objective == "binary" else "amount",
        kind="classifier" if objective == "binary" else "regressor",
        feature_names=names,
        categorical=categories,
        calibration=calibration,
        display_names={"x": "Plain x"},
    )
    rows = frame.head(7).copy()
    rows.loc[rows.index[0], "stage"] = "unseen"
    return bundle, rows


@pytest.mark.parametrize(
    ("objective", "calibration", "sigmoid"),
    [
        ("binary", {"method": "isotonic", "x": [0.0, 0.3, 0.6, 1.0], "y": [0.05, 0.2, 0.7, 0.9]}, None),
        ("binary", None, None),
        ("binary", None, 2.0),  # a non-default sigmoid: the bundle's own methods are used
        ("regression", None, None),
    ],
)
def test_predict_and_explain_equals_the_bundles_two_calls(objective, calibration, sigmoid) -> None:
    import numpy as np

    import serving.service as service
    from serving.service import predict_and_explain

    bundle, rows = _tiny_bundle(objective, calibration, sigmoid)
    one_pass = objective == "binary" and sigmoid is None
    assert (service._PLAIN_BINARY_OBJECTIVE in bundle.model_text) == one_pass  # both paths are tested
    values, explanations = predict_and_explain(bundle, rows, 2)
    np.testing.assert_allclose(values, bundle.predict(rows), rtol=0, atol=1e-12)
    expected = bundle.explain(rows, 2)
    assert [[f["feature"] for f in row] for row in explanations] == [
        [f["feature"] for f in row] for row in expected
    ]
    assert [[f["value"] for f in row] for row in explanations] == [
        [f["value"] for f in row] for row in expected
    ]
    np.testing.assert_allclose(
        [[f["contribution"] for f in row] for row in explanations],
        [[f["contribution"] for f in row] for row in expected],
        rtol=0,
        atol=1e-12,
    )
    # The calibrated probabilities are not the raw sigmoid: a calibration that were skipped would show.
    if calibration is not None:
        assert not np.allclose(values, bundle.predict_uncalibrated(rows))
