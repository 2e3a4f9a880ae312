"""Bodies of `revcast data ...`: file I/O at the edge, logic in features/."""

from __future__ import annotations

from pathlib import Path


def cmd_data_generate(
    out: Path, accounts: int, seed: int, scale: float, fmt: str, activity_rate: float = 1.0
) -> None:
    """Write a synthetic CRM dataset (and its truth/) to `out`."""
    import typer

    from features.generate import generate_crm

    summary = generate_crm(
        out_dir=out, n_accounts=accounts, seed=seed, scale=scale, fmt=fmt, activity_rate=activity_rate
    )
    for table, n_rows in summary["rows"].items():
        typer.echo(f"{table:>22}: {n_rows:>10,} rows")
    typer.echo(f"wrote {out} (ground truth in {out / 'truth'}; no feature may read it)")


def _progress(message: str) -> None:
    """Progress lines go to stderr so that stdout stays the report."""
    import typer

    typer.secho(f"... {message}", err=True, dim=True)


def cmd_data_import(source: str, src_dir: Path, out: Path) -> None:
    """Import a CRM export into canonical CSV tables in `out` and print the mapping report.

    Raises:
        ValueError: unknown export kind (one-line reason from the CLI).
        FileNotFoundError: `src_dir` is not a directory or lacks a file of the export.
        DataValidationError: the export lacks a needed column.
    """
    import typer

    from features.data import write_tables
    from features.importers import IMPORTERS, run_importer

    if source.strip().lower() not in IMPORTERS:
        raise ValueError(f"unknown source kind '{source}': expected one of {', '.join(sorted(IMPORTERS))}")
    if not Path(src_dir).is_dir():
        raise FileNotFoundError(f"{src_dir}: not a directory (expected the {source} export's CSV files)")
    _progress(f"importing {source} export from {src_dir}")
    tables, report = run_importer(source, src_dir)
    _progress(f"writing {len(tables)} tables to {out}")
    written = write_tables(tables, out, fmt="csv")
    for line in report.summary_lines():
        typer.echo(line)
    typer.echo(f"wrote {len(written)} files to {out}: {', '.join(path.name for path in written)}")


def cmd_data_validate(directory: Path) -> None:
    """Validate a dataset directory and print per-table counts and the report.

    Fatal problems raise `DataValidationError`, which the CLI turns into exit code 2 with the first
    error as a one-line reason; skipped rows are listed as warnings and the exit code is 0.
    """
    import typer

    from features.contract import REQUIRED_TABLES_FOR
    from features.data import load_tables

    tables, report = load_tables(directory, progress=_progress)
    for line in report.summary_lines():
        typer.echo(line)
    for model, needed in REQUIRED_TABLES_FOR.items():
        missing = [name for name in needed if name not in tables]
        status = "ok" if not missing else f"needs {', '.join(missing)}"
        typer.echo(f"{model:>10}: {status}")
    if report.skipped:
        n_dropped = sum(issue.count for issue in report.skipped if issue.action == "dropped")
        typer.secho(
            f"valid with warnings: {n_dropped:,} rows skipped, {len(report.skipped)} warning(s) listed above",
            fg=typer.colors.YELLOW,
        )
    else:
        typer.secho(f"valid: {directory} follows the CRM data contract", fg=typer.colors.GREEN)
