"""`revcast score`: records that validation skipped are rejected with a reason, never silently lost.

Also the scoring / training input checks found by a black-box CLI review: an --as-of outside the
data, a --time-col that holds no dates, the churn-table promote hint and `train` without --data.
The scoring bundles are stubs (the point is the bookkeeping around them, not the model).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from train_data import generate_small_crm, load_small_crm
from typer.testing import CliRunner

import training.cmd_model as cmd_model
from training.cli import app
from training.score import active_accounts_at, open_deals_at, validation_rejects

BAD_DATE = "31/02/2026"


class _StubBundle:
    """Scores every row 0.3 with no explanation: enough for the scoring bookkeeping."""

    state: dict[str, Any] = {}
    feature_names: list[str] = []  # reads no feature: whatever the data provides is enough

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return np.full(len(frame), 0.3)

    def explain(self, frame: pd.DataFrame, top_k: int = 5) -> list[list[dict[str, Any]]]:
        return [[] for _ in range(len(frame))]


def _stub_resolve(model: str, alias: str, required: bool) -> tuple[Any, Any]:
    if model == "amount":
        return None, None
    return _StubBundle(), {"version": "1"}


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _write(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_small_crm(tmp_path_factory.mktemp("clean") / "data")


@pytest.fixture(scope="module")
def corrupted(clean: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A copy of the clean CRM with bad dates in five open deals and in one active account.

    Five bad deals: more than an issue quotes (3 rows), so some reasons come from unquoted rows.
    The account has open deals and subscriptions that validation drops with it (the cascade).
    """
    tables, _ = load_small_crm(clean)
    export = pd.Timestamp(
        max(tables["opportunities"]["created_at"].max(), tables["opportunities"]["closed_at"].max())
    )
    data = tmp_path_factory.mktemp("corrupted") / "data"
    shutil.copytree(clean, data, ignore=shutil.ignore_patterns("truth"))
    deals = _read(data / "opportunities.csv")
    accounts = _read(data / "accounts.csv")
    open_now = set(open_deals_at(tables, export)["opportunity_id"])
    active = set(active_accounts_at(tables, export))
    # An active account that also has open deals; then five open deals of other accounts.
    deal_owner = deals.set_index("opportunity_id")["account_id"]
    account = sorted(a for a in active if a in set(deal_owner[sorted(open_now)]))[0]
    bad_deals = [d for d in sorted(open_now) if deal_owner[d] != account][:5]
    deals.loc[deals["opportunity_id"].isin(bad_deals), "created_at"] = BAD_DATE
    accounts.loc[accounts["account_id"] == account, "created_at"] = BAD_DATE
    _write(deals, data / "opportunities.csv")
    _write(accounts, data / "accounts.csv")
    cascaded = sorted(d for d in open_now if deal_owner[d] == account)
    rows = {d: int(i) + 2 for i, d in zip(deals.index, deals["opportunity_id"], strict=True)}
    return {
        "data": data,
        "clean_tables": tables,
        "account": account,
        "account_row": int(accounts.index[accounts["account_id"] == account][0]) + 2,
        "bad_deals": bad_deals,
        "cascaded": cascaded,
        "deal_rows": rows,
    }


def test_validation_rejects_name_every_skipped_deal_with_file_row_column_and_value(
    corrupted: dict[str, Any],
) -> None:
    from features.data import load_tables

    tables, report = load_tables(corrupted["data"], require=("accounts", "opportunities"))
    rejects = validation_rejects(tables, report, "opportunities").set_index("opportunity_id")
    for deal in corrupted["bad_deals"]:
        reason = rejects.loc[deal, "reason"]
        row = corrupted["deal_rows"][deal]
        assert f"opportunities.csv row {row}:" in reason, reason
        assert "column 'created_at'" in reason and "ISO-8601" in reason and BAD_DATE in reason, reason
        assert rejects.loc[deal, "row"] == row and rejects.loc[deal, "file"] == "opportunities.csv"
    for deal in corrupted["cascaded"]:
        reason = rejects.loc[deal, "reason"]
        assert "column 'account_id'" in reason and corrupted["account"] in reason, reason
        assert "itself skipped" in reason, reason
    assert rejects.index.is_unique


def test_validation_rejects_name_the_skipped_account(corrupted: dict[str, Any]) -> None:
    from features.data import load_tables

    tables, report = load_tables(corrupted["data"], require=("accounts", "subscriptions"))
    rejects = validation_rejects(tables, report, "accounts").set_index("account_id")
    reason = rejects.loc[corrupted["account"], "reason"]
    assert f"accounts.csv row {corrupted['account_row']}:" in reason and BAD_DATE in reason, reason
    assert rejects.index.is_unique


def test_score_opportunities_lists_every_open_deal_in_scores_or_rejected(
    corrupted: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(cmd_model, "_resolve", _stub_resolve)
    out = tmp_path / "deals.csv"
    result = CliRunner().invoke(
        app, ["score", "opportunities", "--data", str(corrupted["data"]), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "loading" in result.output and "scoring open deals" in result.output
    scores = pd.read_csv(out, dtype={"opportunity_id": str})
    rejected = pd.read_csv(out.with_name("deals.rejected.csv"), dtype={"opportunity_id": str})
    lost = set(corrupted["bad_deals"]) | set(corrupted["cascaded"])
    assert lost <= set(rejected["opportunity_id"])
    assert not set(scores["opportunity_id"]) & set(rejected["opportunity_id"])
    as_of = pd.Timestamp(scores["as_of"].iloc[0])
    expected = set(open_deals_at(corrupted["clean_tables"], as_of)["opportunity_id"])
    assert expected <= set(scores["opportunity_id"]) | set(rejected["opportunity_id"])
    assert f"{len(rejected):,} opportunities could not be scored" in result.output
    assert str(out.with_name("deals.rejected.csv")) in result.output


def test_score_accounts_rejects_the_skipped_account(
    corrupted: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(cmd_model, "_resolve", _stub_resolve)
    out = tmp_path / "accounts.csv"
    result = CliRunner().invoke(
        app, ["score", "accounts", "--data", str(corrupted["data"]), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(out, dtype={"account_id": str})
    rejected = pd.read_csv(out.with_name("accounts.rejected.csv"), dtype={"account_id": str})
    assert corrupted["account"] in set(rejected["account_id"])
    assert corrupted["account"] not in set(scores["account_id"])
    assert "could not be scored" in result.output


def test_score_clean_data_has_no_validation_rejects(clean: Path) -> None:
    from features.data import load_tables

    tables, report = load_tables(clean, require=("accounts", "subscriptions"))
    assert validation_rejects(tables, report, "accounts").empty
    assert validation_rejects(tables, report, "opportunities").empty


@pytest.mark.parametrize(
    ("as_of", "words"),
    [
        ("2099-01-01", ["--as-of", "after the data's last timestamp"]),
        ("1999-01-01", ["--as-of", "before the data's first date"]),
        ("2026-13-01", ["--as-of", "month must be in 1..12"]),
    ],
)
@pytest.mark.parametrize("what", ["opportunities", "accounts"])
def test_score_refuses_an_as_of_outside_the_data(
    clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_of: str, words: list[str], what: str
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(cmd_model, "_resolve", _stub_resolve)
    out = tmp_path / "s.csv"
    result = CliRunner().invoke(
        app, ["score", what, "--data", str(clean), "--out", str(out), "--as-of", as_of]
    )
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(word in errors[0] for word in words), result.output
    assert not out.exists()


def test_score_accepts_the_export_date_itself(
    clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.train import export_timestamp

    tables, _ = load_small_crm(clean)
    export = export_timestamp(tables)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(cmd_model, "_resolve", _stub_resolve)
    out = tmp_path / "s.csv"
    result = CliRunner().invoke(
        app,
        ["score", "opportunities", "--data", str(clean), "--out", str(out), "--as-of", export.isoformat()],
    )
    assert result.exit_code == 0, result.output
    assert "(current state included)" in result.output


def test_train_table_with_a_non_date_time_column_is_a_one_line_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 80
    table = pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(n)],
            "tenure": rng.integers(1, 70, n),
            "plan": rng.choice(["basic", "pro"], n),
            "Churn": rng.choice(["Yes", "No"], n),
        }
    )
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    result = CliRunner().invoke(
        app,
        [
            "train", "churn", "--table", str(path), "--id-col", "customer_id", "--label-col", "Churn",
            "--positive", "Yes", "--time-col", "plan", "--no-register",
        ],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, IndexError)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "--time-col 'plan'" in errors[0] and f"{n} labelled rows" in errors[0]
    assert table["plan"].iloc[0] in errors[0]  # the first value shows what the column holds


def test_train_without_data_does_not_print_loading_none() -> None:
    result = CliRunner().invoke(app, ["train", "win"])
    assert result.exit_code == 2
    assert "loading None" not in result.output and "--data DIR is required" in result.output


def test_promote_churn_table_hint_names_a_command_that_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = CliRunner().invoke(app, ["promote", "churn-table"])
    assert result.exit_code == 2, result.output
    assert "revcast train churn-table" not in result.output
    assert "revcast train churn --table" in result.output
