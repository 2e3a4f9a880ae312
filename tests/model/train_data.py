"""Shared helpers of the training / scoring tests: a small generated CRM and fast training settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

#: Accounts of the small generated CRM used by the pipeline tests (seconds to generate and train).
SMALL_ACCOUNTS = 120
SMALL_SEED = 11

#: Training overrides that keep every pipeline test fast (fewer boosting rounds and resamples).
FAST_OVERRIDES: dict[str, Any] = {
    "evaluation": {"n_boot": 60},
    # one thread: on a shared machine OpenMP spin-waiting makes 2 threads far slower than 1
    "lightgbm": {
        "max_boost_rounds": 300,
        "early_stopping_rounds": 30,
        "common": {"learning_rate": 0.1, "num_threads": 1},
    },
    "tuning": {"n_folds": 2},
}


def fast_params() -> dict[str, Any]:
    """training/params.yaml with FAST_OVERRIDES merged in."""
    from training.train import load_training_params

    return load_training_params(overrides=FAST_OVERRIDES)


def generate_small_crm(directory: Path, n_accounts: int = SMALL_ACCOUNTS, seed: int = SMALL_SEED) -> Path:
    """Write a small synthetic CRM (with truth/) into ``directory`` with the project's generator."""
    from features.generate import generate_crm

    generate_crm(out_dir=directory, n_accounts=n_accounts, seed=seed, scale=1.0, fmt="csv")
    return directory


def load_small_crm(directory: Path) -> tuple[dict[str, pd.DataFrame], Any]:
    """Load a generated CRM through the contract loader (as the CLI does)."""
    from features.data import load_tables

    return load_tables(directory, require=("accounts", "opportunities", "subscriptions"))


CONTRACT_CLASSIFIER_KEYS = (
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
    "log_loss",
    "baselines",
    "intervals",
    "verdict",
    "reasons",
    "run_id",
    "split",
)
CONTRACT_REGRESSOR_KEYS = (
    "model",
    "evaluation",
    "n_train",
    "n_test",
    "n_rows_rejected",
    "mae",
    "rmse",
    "wape",
    "baselines",
    "intervals",
    "verdict",
    "reasons",
    "run_id",
    "split",
)
