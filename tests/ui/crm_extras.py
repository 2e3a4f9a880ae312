"""The serving tests' synthetic CRM plus what the managers' page needs on top: account owners, a
reps table with teams and quarterly quotas (so the forecast has teams to show)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tests.serving.crm import write_crm_csv

#: Team of each rep in the CRM (the CRM's owners are R0..R4).
TEAMS = {"R0": "East", "R1": "East", "R2": "West", "R3": "West", "R4": "Partners"}
QUARTERLY_QUOTA = 150_000.0


def write_ui_crm(directory: Path) -> Path:
    """Write the serving CRM into ``directory`` and add owners, reps and quotas; returns the directory."""
    write_crm_csv(directory)
    accounts = pd.read_csv(directory / "accounts.csv")
    reps = sorted(TEAMS)
    accounts["owner_id"] = [reps[i % len(reps)] for i in range(len(accounts))]
    accounts.to_csv(directory / "accounts.csv", index=False)
    pd.DataFrame(
        {
            "rep_id": reps,
            "team": [TEAMS[r] for r in reps],
            "region": ["amer" if TEAMS[r] == "East" else "emea" for r in reps],
        }
    ).to_csv(directory / "reps.csv", index=False)
    quarters = pd.date_range("2023-01-01", "2026-12-01", freq="QS")
    pd.DataFrame(
        [
            {
                "rep_id": rep,
                "period_start": start.date().isoformat(),
                "period_end": (start + pd.offsets.QuarterEnd(0)).date().isoformat(),
                "amount": QUARTERLY_QUOTA,
            }
            for rep in reps
            for start in quarters
        ]
    ).to_csv(directory / "quotas.csv", index=False)
    return directory
