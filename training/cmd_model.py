"""Bodies of `revcast train`, `revcast promote` and `revcast score`: file I/O at the edge only.

The logic lives in training/train.py (pipelines), training/tracking.py (MLflow), training/score.py
(batch scoring) and training/byo.py (the bring-your-own churn table path of `--table`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import typer

MODELS = ("win", "amount", "churn")
#: Registered models `revcast promote` accepts: the three pipelines and the bring-your-own churn table.
PROMOTABLE = (*MODELS, "churn-table")
REQUIRED_TABLES = {
    "win": ("accounts", "opportunities"),
    "amount": ("accounts", "opportunities"),
    "churn": ("accounts", "subscriptions"),
}
TRUTH_TABLES = ("opportunities", "accounts_churn")
#: Environment variable naming an alternative training configuration (YAML like training/params.yaml).
PARAMS_ENV = "REVCAST_TRAINING_PARAMS"


def _error(message: str) -> Exception:
    from training.cli import CliError

    return CliError(message)


def _check_model(model: str) -> None:
    if model not in MODELS:
        raise _error(f"unknown model {model!r}: expected one of {', '.join(MODELS)}")


def load_truth(data: Path) -> dict[str, pd.DataFrame] | None:
    """The generator's ground truth next to the data (``<data>/truth/*.csv|parquet``), if any.

    Only the evaluation reads it (oracle comparison); features never do.
    """
    truth_dir = Path(data) / "truth"
    if not truth_dir.is_dir():
        return None
    truth: dict[str, pd.DataFrame] = {}
    for name in TRUTH_TABLES:
        for suffix, reader in ((".parquet", pd.read_parquet), (".csv", pd.read_csv)):
            path = truth_dir / f"{name}{suffix}"
            if path.is_file():
                truth[name] = reader(path)
                break
    return truth or None


def load_dataset(data: Path | None, model: str) -> tuple[dict[str, pd.DataFrame], Any]:
    """Load and validate the canonical tables a model needs (one-line reason on failure)."""
    from features.data import load_tables

    if data is None:
        raise _error(f"--data DIR is required for 'train {model}' (or --table FILE for churn)")
    if not Path(data).is_dir():
        raise _error(f"--data: {data} is not a directory")
    return load_tables(data, require=REQUIRED_TABLES[model])


def rows_rejected(report: Any) -> int:
    """Rows the loader skipped (rows_in - rows_out over all tables)."""
    return int(sum(report.rows_in.get(t, 0) - report.rows_out.get(t, 0) for t in report.rows_in))


def _echo_summary(document: Mapping[str, Any]) -> None:
    kind_metrics = (
        ("auc", "pr_auc", "brier", "ece", "top_decile_lift") if "auc" in document else ("mae", "wape")
    )
    typer.echo(
        f"model {document['model']}: n_train={document['n_train']:,} n_test={document['n_test']:,} "
        f"(test {document.get('split', {}).get('test_start')}..{document.get('split', {}).get('test_end')})"
    )
    header = "  " + f"{'':<22}" + "".join(f"{m:>16}" for m in kind_metrics)
    typer.echo(header)

    def row(name: str, metrics: Mapping[str, Any]) -> str:
        cells = "".join(
            f"{metrics.get(m):>16.4f}" if isinstance(metrics.get(m), int | float) else f"{'-':>16}"
            for m in kind_metrics
        )
        return f"  {name:<22}{cells}"

    typer.echo(row("model", document))
    for name, metrics in (document.get("baselines") or {}).items():
        typer.echo(row(name, metrics))
    if document.get("oracle"):
        oracle = document["oracle"]
        typer.echo(
            f"  oracle auc {oracle.get('oracle_auc'):.4f}; lift captured {oracle.get('lift_captured'):.3f}"
        )
    if document.get("revenue_at_risk_capture_top_decile"):
        capture = document["revenue_at_risk_capture_top_decile"]
        typer.echo(
            "  churned ARR captured by top decile: " + ", ".join(f"{k} {v:.3f}" for k, v in capture.items())
        )
    typer.secho(f"verdict: {document['verdict']}", bold=True)
    for reason in document.get("reasons") or document.get("verdict_reasons") or []:
        typer.echo(f"  - {reason}")


def _plots(result: Any, directory: Path) -> dict[str, Path]:
    """Reliability, lift, importance and SHAP plots of the test set (empty when plotting fails)."""
    from training.plots import evaluation_plots

    baselines = {
        c[len("baseline_") :]: result.test_set[c].to_numpy()
        for c in result.test_set.columns
        if c.startswith("baseline_")
    }
    try:
        return evaluation_plots(
            result.bundle,
            result.test_set,
            result.test_set[result.label_column].to_numpy(dtype=float),
            directory,
            baseline_predictions=baselines if result.bundle.kind == "classifier" else None,
        )
    except Exception as exc:  # noqa: BLE001 - a plot must never sink a training run
        typer.secho(f"warning: plots skipped: {exc}", err=True, fg=typer.colors.YELLOW)
        return {}


def train_and_log(
    model: str,
    tables: Mapping[str, pd.DataFrame],
    *,
    truth: Mapping[str, pd.DataFrame] | None = None,
    tune: int = 0,
    register: bool = True,
    n_rows_rejected: int = 0,
    params: Mapping[str, Any] | None = None,
    tracking_uri: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Train a model, log everything to MLflow (and register it as challenger); return the document.

    Args:
        model: "win", "amount" or "churn".
        tables: Canonical tables.
        truth: Generator truth for the oracle block.
        tune: Optuna trials (0 = none); trials are nested runs of a ``tune-<model>`` run.
        register: Register the model version with alias ``challenger``.
        n_rows_rejected: Rows the loader skipped.
        params: Training configuration (default training/params.yaml, or the file named by
            ``$REVCAST_TRAINING_PARAMS``).
        tracking_uri: MLflow URI (default ``training.tracking.tracking_uri()``).
        tags: Extra run tags.

    Returns:
        The CONTRACT §2 metrics document with ``run_id`` (and ``model_version`` when registered).
    """
    import mlflow

    from features.data import dataset_fingerprint
    from features.params import DEFAULT_PARAMS_PATH
    from training.tracking import _activate, experiment_for, git_tags, log_run_config, log_training_run
    from training.train import TRAINING_PARAMS_PATH, load_training_params, train_model
    from training.tune import default_storage_path

    # Which file the configuration came from, so a run can be traced back to it (the resolved
    # values themselves are logged as config/training_params.yaml).
    params_source = "caller" if params else os.environ.get(PARAMS_ENV) or str(TRAINING_PARAMS_PATH)
    params = params or load_training_params(os.environ.get(PARAMS_ENV) or None)
    uri = _activate(tracking_uri)
    fingerprint = dataset_fingerprint(tables)
    tune_context = {"data_fingerprint": fingerprint, "storage_path": default_storage_path()}
    run_tags = {"revcast.training_params_source": params_source, **dict(tags or {})}
    # train_model builds features with the packaged feature parameters (it is given none).
    config = {"training_params": params, "feature_params_file": DEFAULT_PARAMS_PATH}
    kwargs = {
        "params": params,
        "truth": truth,
        "n_rows_rejected": n_rows_rejected,
        "tune_context": tune_context,
    }
    if tune > 0:
        with mlflow.start_run(experiment_id=experiment_for(model, uri), run_name=f"tune-{model}") as tune_run:
            mlflow.set_tags({"revcast.model": model, **git_tags()})
            log_run_config(**config)
            result = train_model(model, tables, tune_trials=tune, **kwargs)
            mlflow.log_params({f"best.{k}": v for k, v in result.tuning["best_params"].items()})
            mlflow.log_dict(result.tuning, "study.json")
        run_tags["tuning_run_id"] = tune_run.info.run_id
    else:
        result = train_model(model, tables, tune_trials=0, **kwargs)
    if result.tuning:
        result.metrics["tuning"] = result.tuning
    with tempfile.TemporaryDirectory(prefix="revcast-plots-") as tmp:
        plots = _plots(result, Path(tmp))
        logged = log_training_run(
            model,
            bundle=result.bundle,
            metrics_document=result.metrics,
            test_set=result.test_set,
            label_column=result.label_column,
            group_column=result.group_column,
            params=result.log_params,
            data_fingerprint=fingerprint,
            plots=plots,
            tags=run_tags,
            register_model=register,
            run_name=f"train-{model}",
            tracking_uri=uri,
            **config,
        )
    document = dict(logged.metrics_document)
    document["model_version"] = logged.version
    return document


def cmd_train(
    model: str,
    data: Path | None,
    table: Path | None,
    id_col: str | None,
    label_col: str | None,
    positive: str | None,
    time_col: str | None,
    tune: int,
    metrics_out: Path | None,
    register: bool,
) -> dict[str, Any]:
    """`revcast train win|amount|churn`: train on out-of-time snapshots, compare, log, register.

    Returns:
        The metrics document (also written to ``metrics_out`` when given).
    """
    _check_model(model)
    if tune < 0:
        raise _error(f"--tune must be >= 0, got {tune}")
    if table is not None:
        if model != "churn":
            raise _error("--table is only supported for 'train churn'")
        if id_col is None or label_col is None:
            raise _error("--table needs --id-col and --label-col")
        from training.byo import train_byo_table

        return train_byo_table(
            table,
            id_col=id_col,
            label_col=label_col,
            positive=positive,
            time_col=time_col,
            tune=tune,
            metrics_out=metrics_out,
            register=register,
        )
    # A run opened by `mlflow run` (MLproject) lives in the project's experiment; the training run
    # goes to the model's own experiment and records the project run as a tag.
    project_run = os.environ.pop("MLFLOW_RUN_ID", None)
    if data is None:
        raise _error(f"--data DIR is required for 'train {model}' (or --table FILE for churn)")
    typer.echo(f"loading {data} ...")
    tables, report = load_dataset(data, model)
    rejected = rows_rejected(report)
    if rejected:
        typer.echo(f"  {rejected:,} rows were skipped by validation (see `revcast data validate {data}`)")
    truth = load_truth(data)
    typer.echo(
        f"training {model} (out-of-time split{', tuning ' + str(tune) + ' trials' if tune else ''}) ..."
    )
    document = train_and_log(
        model,
        tables,
        truth=truth,
        tune=tune,
        register=register,
        n_rows_rejected=rejected,
        tags={"revcast.project_run_id": project_run} if project_run else None,
    )
    _echo_summary(document)
    typer.echo(
        f"run_id {document['run_id']}"
        + (
            f"; registered version {document['model_version']} @challenger"
            if document.get("model_version")
            else ""
        )
    )
    if metrics_out is not None:
        metrics_out = Path(metrics_out)
        metrics_out.parent.mkdir(parents=True, exist_ok=True)
        metrics_out.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
        typer.echo(f"wrote {metrics_out}")
    return document


def cmd_promote(model: str, force: bool, reason: str | None) -> dict[str, Any]:
    """`revcast promote`: compare challenger and champion on the challenger's test set; move the alias.

    Returns:
        The promotion result as a dict; ``refusals`` is non-empty when the rules refused (the
        command line turns that into exit code 1, see ``promotion_refusal``).
    """
    from serving.registry import ModelNotFoundError
    from training.tracking import promote

    if model not in PROMOTABLE:
        raise _error(f"unknown model {model!r}: expected one of {', '.join(PROMOTABLE)}")
    if force and not (reason and reason.strip()):
        raise _error('--force needs --reason "..." (recorded on the version as promotion_reason)')
    try:
        evaluate_fn = None
        if model == "churn-table":
            # Held-out predictions of the challenger against the champion, on rows it was not fitted on.
            from training.byo import promotion_evaluate_fn

            evaluate_fn = promotion_evaluate_fn()
        result = promote(model, force=force, reason=reason, evaluate_fn=evaluate_fn)
    except ModelNotFoundError as exc:
        message = str(exc)
        if model == "churn-table":
            # The registry's hint names the registered model; the table model is trained by `train churn --table`.
            message = message.replace(
                "revcast train churn-table", "revcast train churn --table FILE --id-col COL --label-col COL"
            )
        raise _error(message) from exc
    outcome = result.to_dict()
    typer.echo(
        f"{model}: challenger v{result.challenger_version} (verdict {result.verdict}) vs champion "
        f"{'v' + result.previous_champion_version if result.previous_champion_version else '(none)'}"
    )
    if result.comparison:
        c = result.comparison
        typer.echo(
            f"  {c.get('metric')} challenger - champion = {c.get('delta'):+.4f} "
            f"(95% interval {c.get('lo'):+.4f} to {c.get('hi'):+.4f}, n={c.get('n')})"
        )
    for line in result.reasons:
        typer.echo(f"  - {line}")
    decision = f"promoted v{result.challenger_version} to champion" if result.promoted else "not promoted"
    typer.secho(
        f"decision: {decision}" + (" (forced)" if result.promoted and result.forced else ""), bold=True
    )
    return outcome


def promotion_refusal(outcome: Mapping[str, Any]) -> str | None:
    """One line saying why ``cmd_promote`` refused, or None when it promoted or had nothing to do.

    A challenger that already is the champion is not a refusal: the state the caller asked for holds.
    """
    if outcome.get("promoted") or not outcome.get("refusals"):
        return None
    # One line even when a refusal quotes a multi-line exception (failed comparison).
    return " ".join(("not promoted: " + "; ".join(outcome["refusals"])).split())


def _write_frame(frame: pd.DataFrame, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix == ".csv":
        frame.to_csv(out, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(out, index=False)
    elif suffix == ".json":
        out.write_text(frame.to_json(orient="records", date_format="iso", indent=1) + "\n")
    else:
        raise _error(f"--out: unsupported file type {out.suffix!r} (use .csv, .parquet or .json)")


def _resolve(model: str, alias: str, required: bool) -> tuple[Any, dict[str, Any]] | tuple[None, None]:
    from serving.registry import ModelNotFoundError, resolve_bundle

    try:
        return resolve_bundle(model, alias)
    except ModelNotFoundError as exc:
        if alias == "champion":
            # No champion yet (e.g. nothing was 'ready'): score with the challenger, and say so
            # loudly -- the same rule as the bring-your-own table path.
            try:
                bundle, info = resolve_bundle(model, "challenger")
            except ModelNotFoundError:
                pass
            else:
                typer.secho(
                    f"warning: no {model} champion yet; scoring with the challenger v{info['version']} "
                    f"(not promoted; see `revcast promote {model}`)",
                    err=True,
                    fg=typer.colors.YELLOW,
                )
                info["alias"] = "challenger (no champion)"
                return bundle, info
        if required:
            raise _error(str(exc)) from exc
        return None, None


def check_as_of(tables: Mapping[str, pd.DataFrame], as_of: pd.Timestamp, what: str) -> None:
    """Refuse a scoring date outside the data (one line naming --as-of; see ``check_as_of_in_span``)."""
    from training.score import check_as_of_in_span
    from training.train import export_timestamp

    if what == "opportunities":
        first, first_what = tables["opportunities"]["created_at"].min(), "the first deal's created_at"
    else:
        first, first_what = tables["subscriptions"]["start_date"].min(), "the first subscription's start_date"
    check_as_of_in_span(
        as_of,
        pd.Timestamp(first),
        export_timestamp(tables),
        first_what=first_what,
        last_what="the export date: the latest timestamp in the data",
    )


def cmd_score(
    what: str,
    out: Path,
    data: Path | None,
    table: Path | None,
    as_of: str | None,
    alias: str,
) -> dict[str, Any]:
    """`revcast score opportunities|accounts`: batch-score with registered bundles.

    Writes the scores to ``out`` and the entities that could not be scored (with a reason) to
    ``<out stem>.rejected.csv`` -- including the records validation skipped (with the file, row,
    column and expectation); appends the scores to the scores store.

    Returns:
        ``{"scored": n, "rejected": n, "skipped_by_validation": n, "as_of": ..., "out": ...}``.
    """
    from features.data import load_tables
    from training.score import (
        ScoresStore,
        parse_as_of,
        score_accounts,
        score_opportunities,
        validation_rejects,
    )

    if what not in ("opportunities", "accounts"):
        raise _error(f"unknown target {what!r}: expected 'opportunities' or 'accounts'")
    out = Path(out)
    if table is not None:
        if what != "accounts":
            raise _error("--table is only supported for 'score accounts'")
        from training.byo import score_byo_table

        return score_byo_table(table, out=out, alias=alias)
    if data is None:
        raise _error(f"--data DIR is required for 'score {what}'")
    if out.suffix.lower() not in (".csv", ".parquet", ".json"):
        raise _error(f"--out: unsupported file type {out.suffix!r} (use .csv, .parquet or .json)")
    if not Path(data).is_dir():
        raise _error(f"--data: {data} is not a directory")
    when = parse_as_of(as_of) if as_of is not None and as_of.strip() else None
    store = ScoresStore()
    required = ("accounts", "opportunities") if what == "opportunities" else ("accounts", "subscriptions")
    typer.echo(f"loading {data} ...")
    tables, report = load_tables(data, require=required)
    skipped_rows = rows_rejected(report)
    if when is not None:
        check_as_of(tables, when, what)
    if what == "opportunities":
        win_bundle, win_info = _resolve("win", alias, required=True)
        amount_bundle, amount_info = _resolve("amount", alias, required=False)
        if amount_bundle is None:
            typer.secho(
                f"note: no amount model @{alias}; expected_amount falls back to the deal's as-of amount",
                fg=typer.colors.YELLOW,
            )
        typer.echo(f"scoring open deals with revcast-win v{win_info['version']} ...")
        result = score_opportunities(
            tables,
            win_bundle,
            amount_bundle,
            as_of=as_of,
            versions={"win": win_info["version"], "amount": (amount_info or {}).get("version")},
        )
        store.append_opportunity_scores(result.scores)
        key = "opportunity_id"
    else:
        churn_bundle, churn_info = _resolve("churn", alias, required=True)
        typer.echo(f"scoring active accounts with revcast-churn v{churn_info['version']} ...")
        result = score_accounts(
            tables,
            churn_bundle,
            as_of=as_of,
            version=churn_info["version"],
            previous=store.previous_account_scores(),
        )
        store.append_account_scores(result.scores)
        key = "account_id"
    _write_frame(result.scores, out)
    # Records validation skipped are gone from the tables the pipeline saw: without this they would
    # vanish from both files. A skipped subscription's account may still be scored via another one.
    skipped = validation_rejects(tables, report, what) if skipped_rows else pd.DataFrame()
    if not skipped.empty:
        skipped = skipped.loc[~skipped[key].isin(result.scores[key].astype(str))]
    rejected = (
        pd.concat([result.rejected, skipped], ignore_index=True) if not skipped.empty else result.rejected
    )
    if "row" in rejected.columns:
        rejected["row"] = rejected["row"].astype("Int64")
    rejected_path = out.with_name(out.stem + ".rejected.csv")
    rejected.to_csv(rejected_path, index=False)
    typer.echo(
        f"scored {len(result.scores):,} {what} as of {result.as_of.isoformat()}"
        f"{' (current state included)' if result.current_state_as_of is not None else ''} -> {out}"
    )
    if len(rejected):
        typer.secho(
            f"{len(rejected):,} {what} could not be scored"
            + (f" ({len(skipped):,} of them skipped by validation)" if len(skipped) else "")
            + f": reasons in {rejected_path}",
            err=True,
            fg=typer.colors.YELLOW,
        )
    if skipped_rows:
        typer.secho(
            f"note: validation skipped {skipped_rows:,} row{'s' if skipped_rows != 1 else ''} of {data} "
            f"(see `revcast data validate {data}`)",
            err=True,
            fg=typer.colors.YELLOW,
        )
    for note in result.notes:
        typer.echo(f"note: {note}")
    return {
        "scored": len(result.scores),
        "rejected": len(rejected),
        "skipped_by_validation": len(skipped),
        "as_of": result.as_of.isoformat(),
        "out": str(out),
    }


def cmd_evaluate(model: str, alias: str = "challenger") -> dict[str, Any]:
    """Re-score a registered version on its own stored out-of-time test set; compare with the champion.

    A dry run of ``promote``: nothing moves. Used by the MLproject ``evaluate`` entry point.

    Returns:
        ``{"model", "alias", "version", "metrics", "comparison"}``.
    """
    from serving.registry import ModelNotFoundError, load_version_bundle, model_version_by_alias
    from training.evaluate import classification_metrics, regression_metrics
    from training.tracking import _activate, load_test_set, paired_comparison

    _check_model(model)
    uri = _activate(None)
    try:
        version = model_version_by_alias(model, alias, uri)
    except ModelNotFoundError as exc:
        raise _error(str(exc)) from exc
    bundle = load_version_bundle(model, version, uri)
    test_set, spec = load_test_set(version.run_id, uri)
    labels = test_set[spec["label_column"]].to_numpy(dtype=float)
    metric_fn = classification_metrics if bundle.kind == "classifier" else regression_metrics
    metrics = metric_fn(labels, bundle.predict(test_set))
    typer.echo(
        f"revcast-{model} v{version.version} @{alias} on its out-of-time test set ({len(test_set):,} rows):"
    )
    typer.echo("  " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    comparison = None
    try:
        champion = model_version_by_alias(model, "champion", uri)
    except ModelNotFoundError:
        champion = None
    if champion is not None and str(champion.version) != str(version.version):
        comparison = paired_comparison(test_set, spec, bundle, load_version_bundle(model, champion, uri))
        typer.echo(
            f"  vs champion v{champion.version}: {comparison['metric']} delta {comparison['delta']:+.4f} "
            f"(95% interval {comparison['lo']:+.4f} to {comparison['hi']:+.4f})"
        )
    return {
        "model": model,
        "alias": alias,
        "version": str(version.version),
        "metrics": metrics,
        "comparison": comparison,
    }


if __name__ == "__main__":  # `python -m training.cmd_model evaluate MODEL` (MLproject entry point)
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "evaluate":
        sys.exit("usage: python -m training.cmd_model evaluate win|amount|churn")
    cmd_evaluate(sys.argv[2])
