"""Fixtures for the forecast tests."""

from __future__ import annotations

import pandas as pd
import pytest

from .crm_builder import make_crm


@pytest.fixture(scope="session")
def crm() -> dict[str, pd.DataFrame]:
    """A small CRM (about 2,000 deals over 33 months)."""
    return make_crm()
