"""Bodies of `revcast data ...`: file I/O at the edge, logic in features/."""

from __future__ import annotations

from pathlib import Path


def cmd_data_generate(out: Path, accounts: int, seed: int, scale: float, fmt: str) -> None:
    """Write a synthetic CRM dataset (and its truth/) to `out`."""
    raise NotImplementedError("data generate: being built (features/generate.py)")


def cmd_data_import(source: str, src_dir: Path, out: Path) -> None:
    """Import a CRM export into canonical tables."""
    raise NotImplementedError("data import: being built (features/importers/)")


def cmd_data_validate(directory: Path) -> None:
    """Validate a dataset directory and print the report."""
    raise NotImplementedError("data validate: being built (features/data.py)")
