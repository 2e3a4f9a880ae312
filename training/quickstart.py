"""`revcast quickstart`: the embedded default job, end to end on synthetic data.

Synthetic CRM -> contract validation -> as-of features -> win, amount and churn models trained,
evaluated against baselines, logged and registered -> promotion -> (optionally) the service.
Every step is the same code path as the individual commands, so quickstart proves they compose.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer

MODELS = ("win", "amount", "churn")


def _step(title: str) -> float:
    typer.secho(f"\n== {title}", bold=True)
    return time.perf_counter()


def _done(started: float) -> None:
    typer.echo(f"   ({time.perf_counter() - started:.1f} s)")


def cmd_quickstart(workdir: Path, accounts: int, seed: int, serve_after: bool) -> None:
    """Run the whole pipeline on freshly generated synthetic data.

    Args:
        workdir: Directory for the generated data, metrics and scores.
        accounts: Number of synthetic accounts.
        seed: Random seed of the generator.
        serve_after: Start the prediction service at the end.
    """
    from features.data import load_tables
    from training.cmd_data import cmd_data_generate
    from training.cmd_model import cmd_promote, cmd_score, cmd_train
    from training.tracking import tracking_uri

    workdir = workdir.resolve()
    data_dir = workdir / "data"
    metrics_dir = workdir / "metrics"
    metrics_dir.mkdir(parents=True, exist_ok=True)

    t = _step(f"1/5 generate a synthetic CRM ({accounts} accounts, seed {seed}) -> {data_dir}")
    cmd_data_generate(out=data_dir, accounts=accounts, seed=seed, scale=1.0, fmt="csv")
    _done(t)

    t = _step("2/5 validate it against the data contract")
    tables, report = load_tables(data_dir, require=("accounts", "opportunities", "subscriptions"))
    for line in report.summary_lines():
        typer.echo(f"   {line}")
    _done(t)

    verdicts: dict[str, str] = {}
    for i, model in enumerate(MODELS):
        t = _step(f"3/5 train '{model}' ({i + 1}/{len(MODELS)}): out-of-time split, baselines, MLflow")
        metrics_out = metrics_dir / f"{model}.json"
        cmd_train(
            model=model,
            data=data_dir,
            table=None,
            id_col=None,
            label_col=None,
            positive=None,
            time_col=None,
            tune=0,
            metrics_out=metrics_out,
            register=True,
        )
        verdicts[model] = json.loads(metrics_out.read_text()).get("verdict", "?")
        _done(t)

    t = _step("4/5 promote challengers that beat the champion (and are 'ready')")
    for model in MODELS:
        cmd_promote(model=model, force=False, reason=None)
    _done(t)

    t = _step("5/5 score open deals and active accounts with the champions")
    scores_dir = workdir / "scores"
    scores_dir.mkdir(exist_ok=True)
    cmd_score(
        what="opportunities",
        out=scores_dir / "opportunities.csv",
        data=data_dir,
        table=None,
        as_of=None,
        alias="champion",
    )
    cmd_score(
        what="accounts",
        out=scores_dir / "accounts.csv",
        data=data_dir,
        table=None,
        as_of=None,
        alias="champion",
    )
    _done(t)

    typer.secho("\nDone.", bold=True)
    for model, verdict in verdicts.items():
        typer.echo(f"   {model:>6}: verdict {verdict}   metrics: {metrics_dir / (model + '.json')}")
    typer.echo(f"   scores:   {scores_dir}")
    typer.echo(f"   tracking: {tracking_uri()}")
    typer.echo(f"   MLflow UI: mlflow ui --backend-store-uri {tracking_uri()}")
    typer.echo(
        f"   service:   REVCAST_DATA_DIR={data_dir} revcast serve   (REVCAST_API_TOKEN=... for the"
        " prediction endpoints; the dataset gives API deal scores the CRM's track records, /v1/forecast and /ui)"
    )
    from serving.config import config_from_env
    from training.cmd_serve import models_without_alias

    config = config_from_env(dict(os.environ))
    for kind in models_without_alias(config.model_names, config.required_models, "champion", tracking_uri()):
        typer.echo(
            f"   note: {kind} has no champion (verdict {verdicts.get(kind, '?')}), so the service's /readyz "
            f"stays 503 until one is promoted; to serve the challenger anyway: revcast promote {kind} "
            f'--force --reason "..."'
        )
    if serve_after:
        from training.cmd_serve import cmd_serve

        os.environ.setdefault("REVCAST_DATA_DIR", str(data_dir))
        cmd_serve(host="127.0.0.1", port=3000)
