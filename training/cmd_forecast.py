"""Body of `revcast forecast`: the revenue forecast (or its backtest), printed, saved and tracked.

File I/O and printing happen here; the logic is in :mod:`serving.forecast` and
:mod:`training.backtest`. Runs are logged to the MLflow experiment ``revcast-forecast`` (fan chart
of the range; forecast vs actual for the backtest). A tracking failure never loses the forecast: it
is printed as a note.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Periods shown in the fan chart and the per-period totals (the current one included).
N_PERIODS = 4
EXPERIMENT = "forecast"


def _echo(message: str) -> None:
    import typer

    typer.echo(message)


def _money(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:,.0f}"


def _percent(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{100 * value:.1f}%"


def champion_win_probabilities(
    tables: dict[str, pd.DataFrame], as_of: pd.Timestamp, export_date: pd.Timestamp
) -> tuple[pd.Series | None, str]:
    """P(win) of the open deals from the registered win champion, or None and the reason why not."""
    try:
        from serving.forecast import win_probabilities_from_bundle
        from serving.registry import resolve_bundle

        bundle, info = resolve_bundle("win", "champion")
    except Exception as exc:  # noqa: BLE001 - no registry/champion is a normal state: fall back
        return None, f"no win champion available ({type(exc).__name__}): using historical as-of win rates"
    try:
        probabilities = win_probabilities_from_bundle(
            bundle, tables, as_of, current_state_as_of=export_date if export_date <= as_of else None
        )
    except Exception as exc:  # noqa: BLE001 - a scoring failure must not stop the forecast
        return (
            None,
            f"win champion {info['name']} v{info['version']} could not score ({exc}): historical rates used",
        )
    return probabilities, f"win probabilities from {info['name']} v{info['version']} (champion)"


def fan_chart(result: Any, path: Path) -> Path:
    """Fan chart of the total forecast: P10-P90 band, P50 and expected per period, quota if any."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    totals = result.totals
    figure = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    x = np.arange(len(totals))
    ax.fill_between(x, totals["p10"], totals["p90"], alpha=0.25, label="P10-P90")
    ax.plot(x, totals["p50"], marker="o", label="P50")
    ax.plot(x, totals["expected"], linestyle="--", label="expected")
    if totals["quota"].notna().any():
        ax.plot(x, totals["quota"], linestyle=":", color="black", label="quota")
    ax.set_xticks(x, totals["period"])
    ax.set_ylabel("won revenue")
    ax.set_title(f"Revenue forecast as of {result.as_of.date()}")
    ax.legend()
    figure.tight_layout()
    figure.savefig(path)
    return path


def backtest_chart(document: dict[str, Any], path: Path) -> Path:
    """Forecast (P50 with P10-P90) vs actual per period for each lead, with the baselines of the first lead."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    blocks = document["leads"]
    figure = Figure(figsize=(8, 3.2 * len(blocks)), dpi=100)
    FigureCanvasAgg(figure)
    for i, block in enumerate(blocks):
        ax = figure.add_subplot(len(blocks), 1, i + 1)
        periods = block["periods"]
        x = np.arange(len(periods))
        ax.fill_between(
            x, [p["p10"] for p in periods], [p["p90"] for p in periods], alpha=0.25, label="P10-P90"
        )
        ax.plot(x, [p["p50"] for p in periods], marker="o", label="forecast P50")
        ax.plot(x, [p["actual"] for p in periods], marker="s", color="black", label="actual")
        if i == 0:
            for name, figures in block["baselines"].items():
                ax.plot(x, [p["p50"] for p in figures["periods"]], linestyle=":", label=name)
        ax.set_xticks(x, [p["period"] for p in periods], fontsize=8)
        ax.set_title(f"lead {block['lead']}: accuracy {_percent(block['accuracy_mean'])}", fontsize=9)
        ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    return path


def log_to_mlflow(params: dict[str, Any], metrics: dict[str, float], files: list[Path]) -> str:
    """Log one run to the ``revcast-forecast`` experiment; return its run id."""
    import mlflow

    from training.tracking import _activate, experiment_for

    uri = _activate(None)
    experiment_id = experiment_for(EXPERIMENT, uri)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        clean = {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}
        if clean:
            mlflow.log_metrics(clean)
        for path in files:
            mlflow.log_artifact(str(path))
        return run.info.run_id


def _console() -> Any:
    from rich.console import Console

    console = Console()
    # Piped output defaults to 80 columns, too narrow for the money columns.
    return console if console.is_terminal else Console(width=180)


def _print_forecast(result: Any, note: str) -> None:
    from rich.table import Table

    console = _console()
    current = result.frame.loc[result.frame["period_start"] == result.totals["period_start"].iloc[0]]
    title = f"Revenue forecast {current['period'].iloc[0]} as of {result.as_of.date()}" + (
        f" by {result.by}" if result.by else ""
    )
    table = Table(title=title)
    columns = [
        ("group", "group"),
        ("won to date", "won_to_date"),
        ("pipeline exp.", "open_pipeline_expected"),
        ("not yet created", "not_yet_created_expected"),
        ("P10", "p10"),
        ("P50", "p50"),
        ("P90", "p90"),
        ("commit", "commit"),
        ("best case", "best_case"),
        ("pipeline", "pipeline"),
        ("quota", "quota"),
        ("attain. P50", "attainment_p50"),
    ]
    for header, _ in columns:
        table.add_column(header, justify="left" if header == "group" else "right")
    rows = [current] if result.by is None else [current, result.totals.iloc[:1]]
    for frame in rows:
        for _, row in frame.iterrows():
            cells = []
            for _, key in columns:
                value = row[key]
                cells.append(
                    str(value)
                    if key == "group"
                    else _percent(value)
                    if key == "attainment_p50"
                    else _money(value)
                )
            table.add_row(*cells, style="bold" if row["group"] == "total" and result.by else None)
    console.print(table)

    upcoming = Table(title="Upcoming periods (total)")
    for header in ("period", "expected", "P10", "P50", "P90", "recurring exp.", "quota"):
        upcoming.add_column(header, justify="right")
    for _, row in result.totals.iterrows():
        upcoming.add_row(
            row["period"],
            _money(row["expected"]),
            _money(row["p10"]),
            _money(row["p50"]),
            _money(row["p90"]),
            _money(row["recurring_expected"]),
            _money(row["quota"]),
        )
    console.print(upcoming)
    for line in [note, *result.notes]:
        console.print(f"[dim]note: {line}[/dim]")


def _print_backtest(document: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    for block in document["leads"]:
        table = Table(
            title=f"Backtest ({document['period']}, lead {block['lead']}): {block['verdict']['summary']}"
        )
        for header in ("method", "accuracy", "WAPE", "bias", "P10-P90 coverage"):
            table.add_column(header, justify="right")
        table.add_row(
            "revcast forecast",
            _percent(block["accuracy_mean"]),
            _percent(block["wape"]),
            _percent(block["bias"]),
            _percent(block["coverage_p10_p90"]),
            style="bold",
        )
        for name, figures in block["baselines"].items():
            table.add_row(
                name,
                _percent(figures["accuracy_mean"]),
                _percent(figures["wape"]),
                _percent(figures["bias"]),
                "-",
            )
        console.print(table)


def _write_json(document: dict[str, Any], path: Path) -> None:
    from serving.bundle import json_safe

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(document), indent=2))


def validation_note(report: Any, data: Path) -> str | None:
    """A note when validation skipped rows: the forecast's numbers leave those rows out."""
    per_table = {
        table: n_in - report.rows_out.get(table, 0)
        for table, n_in in report.rows_in.items()
        if n_in - report.rows_out.get(table, 0) > 0
    }
    if not per_table:
        return None
    shown = ", ".join(f"{n:,} of {table}" for table, n in per_table.items())
    total = sum(per_table.values())
    return (
        f"validation skipped {total:,} row{'s' if total != 1 else ''} ({shown}); the figures leave them "
        f"out (see `revcast data validate {data}`)"
    )


def forecast_with_outlook(
    tables: dict[str, pd.DataFrame],
    as_of: pd.Timestamp,
    period: str,
    by: str | None,
    win_probability: pd.Series | None = None,
    n_periods: int = N_PERIODS,
) -> Any:
    """The current period as GET /v1/forecast computes it, then the upcoming periods.

    The engine learns every period of one run from analog dates at least the whole horizon back, so
    a 4-period run forecasts the current period from older analogs than the API's 1-period run and
    the two disagreed on the same data. The current period therefore comes from the API's call (same
    horizon, same current-state handling); the later periods from a separate longer run, and a note
    says so.

    Args:
        tables: Canonical tables.
        as_of: Forecast date T (inside the data).
        period: "month" or "quarter".
        by: None, "rep", "team" or "region".
        win_probability: P(win) per open deal (the win champion's), or None for historical rates.
        n_periods: Periods shown, the current one included (fewer when the history is too short).

    Returns:
        A ``serving.forecast.ForecastResult`` with up to ``n_periods`` periods.
    """
    from dataclasses import replace

    from serving.forecast import forecast_revenue

    def run(horizon: int) -> Any:
        # as_of as the current-state date, as the API passes it: the engine only uses the export's
        # current state when as_of is at or after the export (the rule `revcast score` follows).
        return forecast_revenue(
            tables,
            as_of,
            period=period,  # type: ignore[arg-type]
            by=by,
            n_periods=horizon,
            win_probability=win_probability,
            current_state_as_of=as_of,
        )

    current = run(1)
    later = None
    # Later periods need analog dates further back; with short histories show fewer periods.
    for horizon in range(n_periods, 1, -1):
        try:
            later = run(horizon)
            break
        except ValueError as exc:
            if "to learn from" not in str(exc):
                raise
    if later is None:
        return current
    first = current.totals["period_start"].iloc[0]
    learned = [line for line in later.notes if line.startswith("learned from")]
    note = (
        f"periods after {current.totals['period'].iloc[0]} come from a separate {horizon}-{period} run "
        f"(its analog dates must lie {horizon} {period}s back"
        + (f"; {learned[0]}" if learned else "")
        + "); the current period is forecast with a 1-period horizon, as GET /v1/forecast does"
    )
    return replace(
        current,
        frame=pd.concat(
            [current.frame, later.frame.loc[later.frame["period_start"] > first]], ignore_index=True
        ),
        totals=pd.concat(
            [current.totals, later.totals.loc[later.totals["period_start"] > first]], ignore_index=True
        ),
        notes=[*current.notes, note],
    )


def cmd_forecast(
    data: Path,
    as_of: str | None,
    period: str,
    by: str | None,
    backtest: bool,
    metrics_out: Path | None,
    min_history_days: int = 365,
) -> None:
    """Forecast (or backtest) won revenue per period with a range; see `revcast forecast --help`."""
    from features.data import load_tables
    from serving.forecast import forecast_data_range
    from training.backtest import backtest_forecast
    from training.score import check_as_of_in_span, parse_as_of

    if period not in ("month", "quarter"):
        raise ValueError(f"--period: expected month or quarter, got {period!r}")
    if min_history_days < 1:
        raise ValueError(f"--min-history-days: expected a positive number of days, got {min_history_days}")
    if by not in (None, "rep", "team", "region"):
        raise ValueError(f"--by: expected rep, team or region, got {by!r}")
    when = parse_as_of(as_of) if as_of is not None and as_of.strip() and not backtest else None
    _echo(f"loading {data} ...")
    tables, report = load_tables(data, require=("accounts", "opportunities"))
    # The data's end as `revcast score` and GET /v1/forecast define it: the latest timestamp in any table.
    first_date, export_date = forecast_data_range(tables)
    if when is not None:
        check_as_of_in_span(
            when,
            first_date,
            export_date,
            first_what="the first deal's created_at",
            last_what="the latest timestamp in any table: the export date",
        )
    skipped = validation_note(report, data)

    with tempfile.TemporaryDirectory() as tmp:
        if backtest:
            document = backtest_forecast(
                tables, period=period, by=by, min_history_days=min_history_days, progress=_echo
            )
            _print_backtest(document)
            if skipped:
                _echo(f"note: {skipped}")
            chart = backtest_chart(document, Path(tmp) / "forecast_vs_actual.png")
            from training.tracking import metrics_for_mlflow

            metrics = metrics_for_mlflow(document)
            for block in document["leads"]:
                for key in ("accuracy_mean", "wape", "bias", "coverage_p10_p90"):
                    if block[key] is not None:
                        metrics[f"{block['lead']}.{key}"] = block[key]
            document_path = Path(tmp) / "backtest.json"
            _write_json(document, document_path)
            try:
                document["run_id"] = log_to_mlflow(
                    {
                        "mode": "backtest",
                        "data": str(data),
                        "period": period,
                        "by": by,
                        "n_sims": document["n_sims"],
                    },
                    metrics,
                    [chart, document_path],
                )
            except Exception as exc:  # noqa: BLE001 - tracking is optional for the user's result
                document["run_id"] = None
                _echo(f"note: MLflow logging failed ({type(exc).__name__}: {exc})")
            if metrics_out is not None:
                _write_json(document, metrics_out)
                _echo(f"wrote {metrics_out}")
            return

        when = export_date if when is None else when
        _echo(f"forecasting won revenue per {period} as of {when.date()} ...")
        win_probability, note = champion_win_probabilities(tables, when, export_date)
        result = forecast_with_outlook(tables, when, period, by, win_probability)
        _print_forecast(result, note)
        if skipped:
            _echo(f"note: {skipped}")
        document = result.to_dict()
        document["win_probability_source"] = note
        document["validation_note"] = skipped
        chart = fan_chart(result, Path(tmp) / "forecast_fan_chart.png")
        current = result.totals.iloc[0]
        try:
            document["run_id"] = log_to_mlflow(
                {
                    "mode": "forecast",
                    "data": str(data),
                    "as_of": when.date().isoformat(),
                    "period": period,
                    "by": by,
                },
                {
                    k: float(current[k])
                    for k in ("expected", "p10", "p50", "p90", "commit", "best_case", "pipeline")
                },
                [chart],
            )
        except Exception as exc:  # noqa: BLE001 - tracking is optional for the user's result
            document["run_id"] = None
            _echo(f"note: MLflow logging failed ({type(exc).__name__}: {exc})")
        if metrics_out is not None:
            _write_json(document, metrics_out)
            _echo(f"wrote {metrics_out}")
