"""The `revcast` command line: the only place (with the service) where files are read and written.

Every command body imports its implementation lazily so that `revcast --help` stays fast and the
package has no side effects at import.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="revcast: calibrated win, deal-revenue, forecast and churn predictions from CRM tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Generate, import and validate CRM datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


class CliError(Exception):
    """An error that ends a command with a one-line reason and a non-zero exit code."""


def fail(message: str, code: int = 2) -> None:
    """Print a one-line reason on stderr and exit non-zero."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def _run(fn, *args, **kwargs):
    """Call an implementation, turning expected input errors into a one-line reason."""
    from features.data import DataValidationError

    try:
        return fn(*args, **kwargs)
    except (DataValidationError, CliError, FileNotFoundError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        fail(first_line)


# --------------------------------------------------------------------------- data


@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Option(help="Directory to write the canonical tables (and truth/) to.")],
    accounts: Annotated[int, typer.Option(help="Number of accounts.")] = 800,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, byte-identical output.")] = 7,
    scale: Annotated[float, typer.Option(help="Multiply opportunity and activity volume per account.")] = 1.0,
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet")] = "csv",
    activity_rate: Annotated[
        float, typer.Option(help="Multiply activity density per deal and account (deals unchanged).")
    ] = 1.0,
) -> None:
    """Write a realistic synthetic CRM (every table of the contract) plus its ground truth."""
    from training.cmd_data import cmd_data_generate

    _run(
        cmd_data_generate,
        out=out,
        accounts=accounts,
        seed=seed,
        scale=scale,
        fmt=fmt,
        activity_rate=activity_rate,
    )


@data_app.command("import")
def data_import(
    source: Annotated[str, typer.Argument(help="Export kind: maven")],
    src_dir: Annotated[Path, typer.Argument(help="Directory holding the export's files.")],
    out: Annotated[Path, typer.Option(help="Directory to write the canonical tables to.")],
) -> None:
    """Turn a real CRM export into canonical tables, reporting what was mapped and skipped."""
    from training.cmd_data import cmd_data_import

    _run(cmd_data_import, source=source, src_dir=src_dir, out=out)


@data_app.command("validate")
def data_validate(
    directory: Annotated[Path, typer.Argument(help="Dataset directory (one CSV/Parquet file per table).")],
) -> None:
    """Check a dataset against the CRM data contract; exit 2 with the first error when it fails."""
    from training.cmd_data import cmd_data_validate

    _run(cmd_data_validate, directory=directory)


# --------------------------------------------------------------------------- train / promote


@app.command("train")
def train(
    model: Annotated[str, typer.Argument(help="win, amount or churn")],
    data: Annotated[Path | None, typer.Option(help="Dataset directory (canonical tables).")] = None,
    table: Annotated[Path | None, typer.Option(help="churn only: one-row-per-customer CSV/Parquet.")] = None,
    id_col: Annotated[str | None, typer.Option(help="--table: the customer id column.")] = None,
    label_col: Annotated[str | None, typer.Option(help="--table: the churn label column.")] = None,
    positive: Annotated[str | None, typer.Option(help="--table: label value meaning 'churned'.")] = None,
    time_col: Annotated[
        str | None, typer.Option(help="--table: a date column for an out-of-time split.")
    ] = None,
    tune: Annotated[int, typer.Option(help="Optuna trials (0 = no tuning).")] = 0,
    metrics_out: Annotated[Path | None, typer.Option(help="Write the evaluation as JSON here.")] = None,
    register: Annotated[bool, typer.Option(help="Register the model with alias 'challenger'.")] = True,
) -> None:
    """Train a model on out-of-time snapshots, compare it with baselines and log it to MLflow."""
    from training.cmd_model import cmd_train

    _run(
        cmd_train,
        model=model,
        data=data,
        table=table,
        id_col=id_col,
        label_col=label_col,
        positive=positive,
        time_col=time_col,
        tune=tune,
        metrics_out=metrics_out,
        register=register,
    )


@app.command("promote")
def promote(
    model: Annotated[str, typer.Argument(help="win, amount, churn or churn-table (bring-your-own table)")],
    force: Annotated[bool, typer.Option(help="Promote even if the challenger does not win.")] = False,
    reason: Annotated[
        str | None, typer.Option(help="Why (recorded as a tag; required with --force).")
    ] = None,
) -> None:
    """Make the challenger the champion when it beats the champion on the same test set.

    Exit codes: 0 promoted (or already the champion), 1 refused by the rules (verdict not 'ready',
    not shown better than the champion, no comparison possible), 2 bad input.
    """
    from training.cmd_model import cmd_promote, promotion_refusal

    outcome = _run(cmd_promote, model=model, force=force, reason=reason)
    refusal = promotion_refusal(outcome)
    if refusal is not None:
        # Scripts (CI, cron retrains) must see a refusal without parsing the output.
        fail(refusal, code=1)


# --------------------------------------------------------------------------- score / forecast


@app.command("score")
def score(
    what: Annotated[str, typer.Argument(help="opportunities or accounts")],
    out: Annotated[Path, typer.Option(help="Output file (.csv, .parquet or .json).")],
    data: Annotated[Path | None, typer.Option(help="Dataset directory (canonical tables).")] = None,
    table: Annotated[Path | None, typer.Option(help="accounts only: a one-row-per-customer table.")] = None,
    as_of: Annotated[
        str | None, typer.Option(help="Score as of this date (default: latest in data).")
    ] = None,
    alias: Annotated[str, typer.Option(help="Registry alias to score with.")] = "champion",
) -> None:
    """Batch-score open deals or accounts with the registered champion."""
    from training.cmd_model import cmd_score

    _run(cmd_score, what=what, out=out, data=data, table=table, as_of=as_of, alias=alias)


@app.command("forecast")
def forecast(
    data: Annotated[Path, typer.Option(help="Dataset directory (canonical tables).")],
    as_of: Annotated[str | None, typer.Option(help="Forecast as of this date (default: latest).")] = None,
    period: Annotated[str, typer.Option(help="month or quarter")] = "quarter",
    by: Annotated[str | None, typer.Option(help="rep, team or region")] = None,
    backtest: Annotated[bool, typer.Option(help="Re-run the forecast at past period starts.")] = False,
    metrics_out: Annotated[Path | None, typer.Option(help="Write the (backtest) result as JSON.")] = None,
    min_history_days: Annotated[
        int, typer.Option(help="--backtest: history (days) required before the first evaluated period.")
    ] = 365,
) -> None:
    """Forecast won revenue per period with a P10-P50-P90 range, or backtest the forecast."""
    from training.cmd_forecast import cmd_forecast

    _run(
        cmd_forecast,
        data=data,
        as_of=as_of,
        period=period,
        by=by,
        backtest=backtest,
        metrics_out=metrics_out,
        min_history_days=min_history_days,
    )


# --------------------------------------------------------------------------- serve / quickstart


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 3000,
) -> None:
    """Start the prediction service (BentoML) with the registered champions."""
    from training.cmd_serve import cmd_serve

    _run(cmd_serve, host=host, port=port)


@app.command("quickstart")
def quickstart(
    workdir: Annotated[Path, typer.Option(help="Where data, tracking store and outputs go.")] = Path(
        "revcast_home"
    ),
    accounts: Annotated[int, typer.Option(help="Synthetic accounts to generate.")] = 800,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    serve_after: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Start the service at the end.")
    ] = False,
) -> None:
    """Synthetic CRM -> validation -> features -> train all models -> register -> (serve)."""
    from training.quickstart import cmd_quickstart

    _run(cmd_quickstart, workdir=workdir, accounts=accounts, seed=seed, serve_after=serve_after)


def main() -> None:
    """Console-script entry point."""
    # MLflow draws a download progress bar per model load: ten lines of noise per scored model in
    # quickstart and batch-scoring output. An explicit setting wins.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
