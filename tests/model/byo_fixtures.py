"""Synthetic one-row-per-customer churn tables for the bring-your-own tests and benchmark.

The table looks like the public telco churn exports (ids, yes/no flags, numbers stored as text,
missing markers, a few categorical plans) and its churn label is drawn from a known probability:
a logistic model plus a few non-linear effects (a step in early tenure, an interaction, a U-shape),
so a test can check that a model recovers the signal and is calibrated.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def true_churn_logit(frame: pd.DataFrame) -> np.ndarray:
    """Log-odds of churn used to draw the label (ground truth for the quality test)."""
    tenure = frame["tenure_months"].to_numpy(dtype=float)
    monthly = frame["monthly_charges"].to_numpy(dtype=float)
    calls = frame["support_calls"].to_numpy(dtype=float)
    month_to_month = (frame["contract"] == "Month-to-month").to_numpy(dtype=float)
    two_year = (frame["contract"] == "Two year").to_numpy(dtype=float)
    fiber = (frame["internet"] == "Fiber optic").to_numpy(dtype=float)
    e_check = (frame["payment_method"] == "Electronic check").to_numpy(dtype=float)
    senior = frame["senior_citizen"].to_numpy(dtype=float)
    partner = (frame["partner"] == "Yes").to_numpy(dtype=float)
    return (
        -1.6
        + 1.1 * month_to_month
        - 0.8 * two_year
        - 0.025 * tenure
        + 0.5 * fiber
        + 0.012 * (monthly - 70.0)
        + 0.45 * e_check
        - 0.35 * partner
        + 0.9 * (tenure < 6)  # non-linear: the first months are fragile
        + 0.7 * senior * fiber  # interaction
        + 0.12 * (calls - 2.0) ** 2  # U-shape: no contact and many tickets are both bad signs
    )


def make_churn_table(
    n_rows: int = 3000, seed: int = 0, *, with_time: bool = False, messy: bool = True
) -> pd.DataFrame:
    """A telco-like churn table with a known churn probability.

    Args:
        n_rows: Customers.
        seed: Random seed.
        with_time: Add ``snapshot_date`` (the row's observation date, spread over two years) and
            ``signup_date`` (a date column that becomes a days-since feature).
        messy: Store numbers as text with blanks and a few bad values, use missing markers, and add
            a constant column, a leaky ``churn_reason`` column and an id-like ``row_number``.

    Returns:
        The table as strings (``messy``) or typed columns, with ``Churn`` = ``Yes``/``No`` and a
        ``true_p`` column holding the generating probability (drop it before training).
    """
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 73, n_rows)
    contract = rng.choice(["Month-to-month", "One year", "Two year"], n_rows, p=[0.55, 0.25, 0.2])
    internet = rng.choice(["DSL", "Fiber optic", "No"], n_rows, p=[0.35, 0.45, 0.2])
    base_charge = np.select([internet == "Fiber optic", internet == "DSL"], [85.0, 55.0], 22.0)
    monthly = np.round(base_charge + rng.normal(0, 12, n_rows), 2).clip(18.0, 120.0)
    frame = pd.DataFrame(
        {
            "customerID": [
                f"{rng.integers(1000, 9999)}-{''.join(rng.choice(list('ABCDEFGHJKLMNPQRSTUVWXYZ'), 5))}{i}"
                for i in range(n_rows)
            ],
            "gender": rng.choice(["Female", "Male"], n_rows),
            "senior_citizen": rng.choice([0, 1], n_rows, p=[0.84, 0.16]),
            "partner": rng.choice(["Yes", "No"], n_rows),
            "tenure_months": tenure,
            "contract": contract,
            "internet": internet,
            "payment_method": rng.choice(
                ["Electronic check", "Mailed check", "Bank transfer (automatic)", "Credit card (automatic)"],
                n_rows,
            ),
            "paperless_billing": rng.choice(["Yes", "No"], n_rows, p=[0.6, 0.4]),
            "monthly_charges": monthly,
            "total_charges": np.round(monthly * np.maximum(tenure, 0) * rng.uniform(0.95, 1.05, n_rows), 2),
            "support_calls": rng.poisson(2.0, n_rows),
        }
    )
    p = 1.0 / (1.0 + np.exp(-true_churn_logit(frame)))
    churned = rng.random(n_rows) < p
    frame["Churn"] = np.where(churned, "Yes", "No")
    frame["true_p"] = p
    if with_time:
        snapshot = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 730, n_rows), unit="D")
        frame["snapshot_date"] = snapshot.strftime("%Y-%m-%d")
        signup = snapshot - pd.to_timedelta(tenure * 30 + rng.integers(0, 30, n_rows), unit="D")
        frame["signup_date"] = signup.strftime("%Y-%m-%d")
    if not messy:
        return frame
    out = frame.astype(str)
    out["monthly_charges"] = [f" {v}" for v in frame["monthly_charges"]]  # numbers stored as padded text
    out.loc[frame["tenure_months"] == 0, "total_charges"] = " "  # blank, like the Telco export
    bad_rows = rng.choice(n_rows, 3, replace=False)
    out.loc[bad_rows, "total_charges"] = "n.a."  # three bad numeric values
    na_rows = rng.choice(n_rows, max(1, n_rows // 50), replace=False)
    out.loc[na_rows, "paperless_billing"] = rng.choice(["NA", "?", "null", ""], len(na_rows))
    out["region"] = "EU"  # constant
    out["row_number"] = [str(i + 1) for i in range(n_rows)]  # id-like integer column
    reasons = rng.choice(["Price", "Competitor", "Moved", "Service"], n_rows)
    out["churn_reason"] = np.where(churned, reasons, "")  # leaky: only filled after a churn
    return out
