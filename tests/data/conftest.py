"""Fixtures for the data-contract tests: small raw datasets written as CSV, the shared Maven export."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

SHARED_MAVEN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "maven_crm"


def raw_dataset(n_opportunities: int = 40) -> dict[str, pd.DataFrame]:
    """A small, valid dataset in raw (all-text, as read from CSV) form."""
    accounts = pd.DataFrame(
        {
            "account_id": ["a-1", "a-2", "a-3"],
            "created_at": ["2024-01-01", "2024-02-01", "2024-03-01"],
            "industry": ["Retail", "software", "retail"],
            "employees": ["10", "200", ""],
        }
    )
    opportunities = pd.DataFrame(
        {
            "opportunity_id": [f"o-{i}" for i in range(n_opportunities)],
            "account_id": [f"a-{1 + i % 3}" for i in range(n_opportunities)],
            "created_at": [f"2025-01-{1 + i % 28:02d}" for i in range(n_opportunities)],
            "type": ["New", "renewal", "expansion", ""] * (n_opportunities // 4),
            "amount": [str(1000 + i) for i in range(n_opportunities)],
            "stage": ["Proposal"] * n_opportunities,
            "outcome": ["won", "lost", "", ""] * (n_opportunities // 4),
        }
    )
    history = pd.DataFrame(
        {
            "opportunity_id": ["o-0", "o-0", "o-1"],
            "changed_at": ["2025-01-02", "2025-01-09", "2025-01-03"],
            "stage": ["qualification", "proposal", "qualification"],
        }
    )
    return {"accounts": accounts, "opportunities": opportunities, "opportunity_history": history}


def write_raw(tables: dict[str, pd.DataFrame], directory: Path) -> Path:
    """Write raw tables as CSV files named after the tables."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        table.to_csv(directory / f"{name}.csv", index=False)
    return directory


@pytest.fixture
def raw() -> dict[str, pd.DataFrame]:
    """A fresh valid raw dataset (tests modify it)."""
    return raw_dataset()


@pytest.fixture
def maven_dir() -> Path:
    """The real Maven export, or a skip with the reason."""
    if not (SHARED_MAVEN / "sales_pipeline.csv").is_file():
        pytest.skip(f"shared Maven reference data not found at {SHARED_MAVEN}")
    return SHARED_MAVEN


def write_mini_maven(directory: Path, extra_pipeline_rows: list[str] | None = None) -> Path:
    """A tiny Maven-shaped export with the real files' quirks (CRLF, GTXPro, no account, no date)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "accounts.csv": [
            "account,sector,year_established,revenue,employees,office_location,subsidiary_of",
            "Acme Corporation,technolgy,1996,1100.04,2822,United States,",
            "Condax,medical,2017,4.54,9,Philipines,Acme Corporation",
        ],
        "products.csv": ["product,series,sales_price", "GTX Pro,GTX,4821", "MG Special,MG,55"],
        "sales_teams.csv": [
            "sales_agent,manager,regional_office",
            "Moses Frase,Dustin Brinkmann,Central",
            "Anna Snelling,Dustin Brinkmann,Central",
        ],
        "sales_pipeline.csv": [
            "opportunity_id,sales_agent,product,account,deal_stage,engage_date,close_date,close_value",
            "W1,Moses Frase,GTXPro,Acme Corporation,Won,2016-10-20,2017-03-01,4514",
            "L1,Moses Frase,MG Special,Condax,Lost,2016-11-02,2017-01-15,0",
            "E1,Anna Snelling,GTX Pro,,Engaging,2017-05-01,,",
            "P1,Anna Snelling,MG Special,,Prospecting,,,",
            "P2,Anna Snelling,MG Special,Acme Corporation,Prospecting,,,",
            *(extra_pipeline_rows or []),
        ],
    }
    for name, lines in files.items():
        (directory / name).write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return directory
