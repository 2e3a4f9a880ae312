"""Batch scoring of data that lacks a table the model was trained with: missing values, and a note.

The API fills such features with missing values (serving.service.with_model_columns); the batch path
used to stop with "missing feature columns" instead (e.g. a dataset exported without usage.csv).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from train_data import generate_small_crm, load_small_crm

from training.score import score_accounts, with_missing_features

USAGE_FEATURE = "acct_usage_events_mean_30d"


class _RecordingBundle:
    """Reads exactly its feature columns (as the real bundle's prepare does) and remembers them."""

    state: dict[str, Any] = {}

    def __init__(self, feature_names: list[str]) -> None:
        self.feature_names = feature_names
        self.seen: pd.DataFrame | None = None

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        self.seen = frame[self.feature_names]  # a KeyError here is the old failure
        return np.full(len(frame), 0.2)

    def explain(self, frame: pd.DataFrame, top_k: int = 5) -> list[list[dict[str, Any]]]:
        return [[] for _ in range(len(frame))]


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    loaded, _ = load_small_crm(generate_small_crm(tmp_path_factory.mktemp("crm") / "data"))
    return loaded


def test_with_missing_features_adds_only_absent_columns_in_model_order() -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0]})
    bundles = [_RecordingBundle(["a", "z", "b"]), _RecordingBundle(["b", "c"])]
    out, missing = with_missing_features(frame, bundles)
    assert missing == ["z", "b", "c"]
    assert list(out.columns) == ["a", "z", "b", "c"] and out[missing].isna().all().all()
    assert "z" not in frame.columns  # the caller's frame is left alone
    same, none = with_missing_features(out, bundles)
    assert none == [] and same is out


def test_accounts_without_a_usage_table_are_scored_with_usage_missing_and_a_note(
    tables: dict[str, pd.DataFrame],
) -> None:
    complete = _RecordingBundle(["acct_mrr", USAGE_FEATURE])
    with_usage = score_accounts(tables, complete)
    assert not with_usage.notes  # the data provides every feature: nothing added, nothing to say
    assert complete.seen is not None and complete.seen[USAGE_FEATURE].notna().any()

    without = {name: table for name, table in tables.items() if name != "usage"}
    bundle = _RecordingBundle(["acct_mrr", USAGE_FEATURE])
    result = score_accounts(without, bundle)
    assert len(result.scores) == len(with_usage.scores) > 0
    assert bundle.seen is not None and bundle.seen[USAGE_FEATURE].isna().all()
    assert bundle.seen["acct_mrr"].notna().any()
    assert len(result.notes) == 1 and USAGE_FEATURE in result.notes[0] and "missing" in result.notes[0]
