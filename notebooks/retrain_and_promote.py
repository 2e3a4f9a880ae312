# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Retrain and promote the win model
#
# A walk through what `revcast train win` and `revcast promote win` do, one step at a time:
#
# 1. load a CRM dataset through the data contract (validation report included);
# 2. look at the tables and at the **as-of** features of one deal on two dates: everything a
#    feature reads is dated on or before the as-of date;
# 3. retrain on out-of-time snapshots (train on the oldest dates, calibrate on the next slice,
#    test on the latest), log to MLflow and register the model as `challenger`;
# 4. read the evaluation against the baselines (same test rows, paired bootstrap intervals);
# 5. promote: the challenger becomes `champion` only if it is `ready` and beats the champion.
#
# Pair this file with a notebook: `jupytext --to ipynb notebooks/retrain_and_promote.py`
# (the `.ipynb` is git-ignored). Settings come from the environment:
# `REVCAST_NOTEBOOK_DATA` (a dataset directory; default: a small generated CRM in a temp dir),
# `MLFLOW_TRACKING_URI` (default `sqlite:///<cwd>/mlflow.db`) and `REVCAST_TRAINING_PARAMS`
# (a training config YAML; default `training/params.yaml`).

# %%
import os
import tempfile
from pathlib import Path

import pandas as pd

from features.data import load_tables
from features.opportunity import build_opportunity_features
from training.cmd_model import load_truth, rows_rejected, train_and_log
from training.tracking import champion_info, promote, tracking_uri
from training.train import export_timestamp, load_training_params

pd.set_option("display.width", 160)
pd.set_option("display.max_columns", 20)

data_dir = os.environ.get("REVCAST_NOTEBOOK_DATA")
if not data_dir:
    from features.generate import generate_crm

    data_dir = str(Path(tempfile.mkdtemp(prefix="revcast-nb-")) / "crm")
    generate_crm(out_dir=data_dir, n_accounts=150, seed=7, scale=1.0, fmt="csv")
params = load_training_params(os.environ.get("REVCAST_TRAINING_PARAMS") or None)
print("data:", data_dir)
print("tracking:", tracking_uri())

# %% [markdown]
# ## 1. Load through the data contract

# %%
tables, report = load_tables(data_dir, require=("accounts", "opportunities"))
for line in report.summary_lines()[:15]:
    print(line)
print("rows skipped by validation:", rows_rejected(report))
export_at = export_timestamp(tables)
print("export date (latest timestamp in the data):", export_at)

# %% [markdown]
# ## 2. Explore the tables and the as-of features

# %%
deals = tables["opportunities"]
closed = deals[deals["outcome"].notna()]
summary = pd.DataFrame(
    {
        "deals": [len(deals)],
        "closed": [len(closed)],
        "win rate of closed deals": [round(float((closed["outcome"] == "won").mean()), 3)],
        "open at export": [int(deals["outcome"].isna().sum())],
    }
)
print(summary.to_string(index=False))

# %%
# One deal that lived for a while: its features as of two dates. Only rows dated on or before each
# date are read, so the later snapshot knows more (activities, stage changes, close-date slips).
lived = closed.assign(days=(closed["closed_at"] - closed["created_at"]).dt.days).sort_values("days")
deal = lived.iloc[len(lived) // 2]
dates = [deal["created_at"] + pd.Timedelta(days=7), deal["closed_at"] - pd.Timedelta(days=1)]
snapshots = build_opportunity_features(tables, dates)
snapshots = snapshots[snapshots["opportunity_id"] == deal["opportunity_id"]]
columns = [
    "as_of",
    "opp_stage",
    "opp_age_days",
    "opp_days_in_stage",
    "opp_meetings_30d",
    "opp_close_date_slips",
]
print(snapshots[[c for c in columns if c in snapshots.columns]].to_string(index=False))

# %% [markdown]
# ## 3. Retrain (out-of-time), log to MLflow, register as challenger

# %%
document = train_and_log(
    "win",
    tables,
    truth=load_truth(Path(data_dir)),
    params=params,
    n_rows_rejected=rows_rejected(report),
)
print("run", document["run_id"], "registered version", document["model_version"])
print("split:", {k: v for k, v in document["split"].items() if k != "rule"})

# %% [markdown]
# ## 4. The evaluation against the baselines (same out-of-time test rows)

# %%
metrics = ["auc", "brier", "ece", "log_loss", "top_decile_lift"]
table = pd.DataFrame(
    [{"model": "model", **{m: document[m] for m in metrics}}]
    + [
        {"model": name, **{m: values.get(m) for m in metrics}}
        for name, values in document["baselines"].items()
    ]
).set_index("model")
print(table.round(4).to_string())

# %%
print("verdict:", document["verdict"])
for reason in document["reasons"]:
    print(" -", reason)
if document.get("oracle"):
    print(
        "oracle AUC",
        round(document["oracle"]["oracle_auc"], 4),
        "lift captured",
        round(document["lift_captured"], 3),
    )

# %% [markdown]
# ## 5. Promote (only a `ready` challenger that beats the champion moves the alias)

# %%
result = promote("win")
print("promoted:", result.promoted)
for reason in result.reasons:
    print(" -", reason)
print("champion now:", champion_info("win"))
