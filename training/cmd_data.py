"""Bodies of `revcast data ...`: file I/O at the edge, logic in features/."""

from __future__ import annotations

from pathlib import Path


def cmd_data_generate(out: Path, accounts: int, seed: int, scale: float, fmt: str) -> None:
    """Write a synthetic CRM dataset (and its truth/) to `out`."""
    import typer

    from features.generate import generate_crm

    summary = generate_crm(out_dir=out, n_accounts=accounts, seed=seed, scale=scale, fmt=fmt)
    for table, n_rows in summary["rows"].items():
        typer.echo(f"{table:>22}: {n_rows:>10,} rows")
    typer.echo(f"wrote {out} (ground truth in {out / 'truth'}; no feature may read it)")


def cmd_data_import(source: str, src_dir: Path, out: Path) -> None:
    """Import a CRM export into canonical tables."""
    raise NotImplementedError("data import: being built (features/importers/)")


def cmd_data_validate(directory: Path) -> None:
    """Validate a dataset directory and print the report."""
    raise NotImplementedError("data validate: being built (features/data.py)")
