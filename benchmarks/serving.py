"""Latency and throughput of the prediction service, against its floor and against `mlflow models serve`.

Everything runs on loopback with bounded request counts:

1. a synthetic CRM (tests/serving/crm.py), tiny real models registered in a real `mlflow server`;
2. the revcast service (`bentoml serve`), `POST /v1/opportunities/score` with 1 and 100 raw records per
   request at concurrency 1, 8 and 32: p50/p99 latency, requests/s and records/s;
3. the floor: the booster's own predict on prepared feature rows, in process (and, for reference,
   the whole in-process request path: records -> tables -> features -> predict -> explain);
4. `mlflow models serve --env-manager local` on the same registered model (the models-from-code pyfunc
   wrapper in training/pyfunc_model.py), fed the *already computed* feature rows of the same records;
5. ratios.

Note the comparison is not like for like in revcast's disfavour: the revcast API receives raw CRM
records and computes features (DuckDB) and explanations; the MLflow server receives ready features.

Usage: ``.venv/bin/python benchmarks/serving.py [--requests 200] [--out results.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50/p99 in milliseconds."""
    values = np.asarray(samples_s) * 1000
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}


def load(
    send: Callable[[httpx.Client], httpx.Response],
    base_url: str,
    concurrency: int,
    n_requests: int,
    max_seconds: float,
) -> dict[str, Any]:
    """Send ``n_requests`` (or stop after ``max_seconds``) with ``concurrency`` threads; all must answer 200."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(n_requests))
    deadline = time.perf_counter() + max_seconds

    def worker() -> None:
        with httpx.Client(base_url=base_url, timeout=120) as client:
            send(client)  # connection set-up outside the measurement
            while time.perf_counter() < deadline:
                with lock:
                    if next(counter, None) is None:
                        return
                started = time.perf_counter()
                response = send(client)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    if response.status_code != 200:
                        failures.append(f"{response.status_code}: {response.text[:200]}")

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    wall = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, first: {failures[0]}")
    return {"n": len(latencies), "wall_s": wall, "rps": len(latencies) / wall, **percentiles(latencies)}


def in_process(fn: Callable[[], Any], n: int) -> dict[str, float]:
    """p50/p99 of an in-process call (after one warm-up call)."""
    fn()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=int, default=200, help="Requests per (batch, concurrency) cell (cap)."
    )
    parser.add_argument("--max-seconds", type=float, default=30, help="Time cap per cell.")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here.")
    parser.add_argument("--skip-mlflow-serve", action="store_true")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    from features.data import load_tables
    from features.opportunity import build_opportunity_features
    from serving.config import config_from_env
    from serving.requests import prepare_opportunities
    from serving.service import LoadedModel, ModelSet, score_opportunities
    from tests.serving.conftest import start_mlflow_server, start_service, stop
    from tests.serving.crm import EXPORT, opportunity_records, write_crm_csv
    from tests.serving.models import register_bundle, train_bundle, training_frames

    results: dict[str, Any] = {"cells": []}
    workdir = Path(tempfile.mkdtemp(prefix="revcast-bench-"))
    processes: list[subprocess.Popen] = []
    try:
        print("setting up: CRM, mlflow server, tiny models ...", flush=True)
        tables, _ = load_tables(write_crm_csv(workdir / "crm"))
        mlflow_server = start_mlflow_server(workdir)
        processes.append(mlflow_server.process)
        frames = training_frames(tables)
        bundles = {kind: train_bundle(kind, frames, n_trees=100) for kind in ("win", "amount", "churn")}
        uri = mlflow_server.wait_ready()
        versions = {kind: register_bundle(bundle, kind, uri) for kind, bundle in bundles.items()}
        server = start_service({"MLFLOW_TRACKING_URI": uri}, workdir)
        processes.append(server.process)

        opps = tables["opportunities"]
        open_ids = opps[(opps["created_at"] <= EXPORT) & opps["closed_at"].isna()]["opportunity_id"].tolist()
        base = opportunity_records(tables, open_ids[:100], EXPORT)
        payloads = {n: {"as_of": EXPORT.isoformat(), "opportunities": base[:n]} for n in (1, 100)}
        headers = server.headers()

        # Features of the very same records, for the floor and for mlflow models serve.
        feature_rows = {}
        for n, payload in payloads.items():
            batch = prepare_opportunities(payload["opportunities"], EXPORT)
            features = build_opportunity_features(batch.tables, EXPORT, current_state_as_of=EXPORT)
            feature_rows[n] = features[bundles["win"].feature_names]

        config = config_from_env({})
        models = ModelSet(
            models={"win": LoadedModel(bundles["win"], {"version": versions["win"]}),
                    "amount": LoadedModel(bundles["amount"], {"version": versions["amount"]})},
            warmed=True,
        )  # fmt: skip
        for n in (1, 100):
            prepared = bundles["win"].prepare(feature_rows[n])
            booster = bundles["win"].booster
            floor = in_process(lambda prepared=prepared, booster=booster: booster.predict(prepared), 200)
            bundle_predict = in_process(lambda n=n: bundles["win"].predict(feature_rows[n]), 200)
            pipeline = in_process(
                lambda n=n: score_opportunities(
                    models, prepare_opportunities(payloads[n]["opportunities"], EXPORT), config
                ),
                30,
            )
            results[f"floor_{n}"] = {
                "booster_predict": floor,
                "bundle_predict": bundle_predict,
                "in_process_request_path": pipeline,
            }
            print(json.dumps({"floor_rows": n, **results[f"floor_{n}"]}), flush=True)

        print("revcast service ...", flush=True)
        for n in (1, 100):
            for concurrency in concurrencies:
                cell = load(
                    lambda client, n=n: client.post("/v1/opportunities/score", json=payloads[n], headers=headers),
                    server.url, concurrency, args.requests if n == 1 else max(20, args.requests // 4), args.max_seconds,
                )  # fmt: skip
                cell.update(
                    server="revcast",
                    records_per_request=n,
                    concurrency=concurrency,
                    records_per_s=cell["rps"] * n,
                )
                results["cells"].append(cell)
                print(json.dumps(cell), flush=True)

        if not args.skip_mlflow_serve:
            try:
                mlflow_cells(
                    args, versions["win"], uri, feature_rows, concurrencies, workdir, processes, results
                )
            except Exception as exc:  # still report what was measured
                results["mlflow_error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
                print(f"mlflow models serve failed: {results['mlflow_error']}", flush=True)
    finally:
        for process in reversed(processes):
            stop(process)

    print_report(results)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))


def mlflow_cells(
    args: argparse.Namespace,
    version: str,
    uri: str,
    feature_rows: dict[int, pd.DataFrame],
    concurrencies: list[int],
    workdir: Path,
    processes: list[subprocess.Popen],
    results: dict[str, Any],
) -> None:
    """Measure `mlflow models serve --env-manager local` on the same model and the same records' features."""
    from tests.serving.conftest import BIN, free_port, wait_for

    print("mlflow models serve ...", flush=True)
    port = free_port()
    log = workdir / "mlflow-serve.log"
    # mlflow execs `uvicorn` by name: the venv's bin directory must be on PATH.
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(log, "wb") as out:
        serve_proc = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/revcast-win/{version}",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    processes.append(serve_proc)
    wait_for(f"http://127.0.0.1:{port}/ping", 300, serve_proc, log)
    bodies = {
        n: {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
        for n, frame in feature_rows.items()
    }
    for n in (1, 100):
        for concurrency in concurrencies:
            cell = load(
                lambda client, n=n: client.post("/invocations", json=bodies[n]),
                f"http://127.0.0.1:{port}", concurrency,
                args.requests if n == 1 else max(20, args.requests // 4), args.max_seconds,
            )  # fmt: skip
            cell.update(
                server="mlflow", records_per_request=n, concurrency=concurrency, records_per_s=cell["rps"] * n
            )
            results["cells"].append(cell)
            print(json.dumps(cell), flush=True)


def print_report(results: dict[str, Any]) -> None:
    """A table of every cell plus the ratios to the floor and to mlflow models serve."""
    print("\nfloor (in process, p50 ms):")
    for n in (1, 100):
        floor = results[f"floor_{n}"]
        print(
            f"  {n:>3} rows: booster.predict {floor['booster_predict']['p50_ms']:.3f}, "
            f"bundle.predict {floor['bundle_predict']['p50_ms']:.3f}, "
            f"whole request path {floor['in_process_request_path']['p50_ms']:.1f}"
        )
    cells = pd.DataFrame(results["cells"])
    print("\nHTTP on loopback:")
    print(
        cells[
            ["server", "records_per_request", "concurrency", "n", "p50_ms", "p99_ms", "rps", "records_per_s"]
        ]
        .round(2)
        .to_string(index=False)
    )
    revcast = cells[cells["server"] == "revcast"].set_index(["records_per_request", "concurrency"])
    print("\nratios (revcast p50 / floor booster p50; revcast / mlflow p50 and throughput):")
    for (n, concurrency), row in revcast.iterrows():
        floor = results[f"floor_{n}"]["booster_predict"]["p50_ms"]
        line = f"  {n:>3} rec x c{concurrency:<2}: p50 / floor = {row['p50_ms'] / floor:,.0f}x"
        mlflow = cells[
            (cells["server"] == "mlflow")
            & (cells["records_per_request"] == n)
            & (cells["concurrency"] == concurrency)
        ]
        if not mlflow.empty:
            m = mlflow.iloc[0]
            line += f"; p50 revcast/mlflow = {row['p50_ms'] / m['p50_ms']:.2f}; rps revcast/mlflow = {row['rps'] / m['rps']:.2f}"
        print(line)


if __name__ == "__main__":
    main()
