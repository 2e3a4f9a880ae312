"""Latency and throughput of the prediction service, against its floor and against `mlflow models serve`.

Everything runs on loopback with bounded request counts:

1. a synthetic CRM (tests/serving/crm.py), tiny real models registered in a real `mlflow server`;
2. the revcast service (`bentoml serve`): `POST /v1/opportunities/score` with 1 and 100 raw records
   per request and `POST /v1/accounts/churn` with 1 record, at concurrency 1, 8 and 32: p50/p99
   latency, requests/s and records/s (one-record requests cycle through 100 different deals or
   accounts, and mlflow gets the same records' feature rows in the same order);
3. the floor: the booster's own predict on prepared feature rows (the float matrix the service feeds
   it), in process (and, for reference,
   the whole in-process request path: records -> tables -> features -> predict -> explain);
4. `mlflow models serve --env-manager local` on the same registered models (the models-from-code
   pyfunc wrapper in training/pyfunc_model.py), fed the *already computed* feature rows of the same
   records;
5. ratios, and whether the 1-record target (>= 2x mlflow's throughput, <= half its p99) is met.

Fairness: both servers get the same number of worker processes (``--workers``, default 1) and the same
environment (``OMP_NUM_THREADS``, default 1); all servers run from the start and each cell is measured
on revcast and right after on mlflow, so that both see about the same machine load (the 1-minute load
average is recorded per cell); the configuration is printed with the results. The comparison is not like for like in revcast's disfavour: the revcast API
receives raw CRM records and computes features (DuckDB), the win *and* amount predictions and the
explanations; the MLflow server receives ready features and predicts one model. By default the service
reads the benchmark's CRM (``REVCAST_DATA_DIR``), so deals get the CRM's track records as batch scoring
gives them (serving.track_records), and mlflow gets those same feature rows; ``--without-dataset``
measures the service on the records alone.

Usage: ``.venv/bin/python benchmarks/serving.py [--requests 200] [--max-seconds 30] [--workers 1] [--out results.json]``
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
    send: Callable[[httpx.Client, int], httpx.Response],
    base_url: str,
    concurrency: int,
    n_requests: int,
    max_seconds: float,
) -> dict[str, Any]:
    """Send ``n_requests`` (or stop after ``max_seconds``) with ``concurrency`` threads; all must answer 200.

    ``send(client, i)`` sends the i-th request (i = 0, 1, ... across all threads), so that consecutive
    requests can carry different records.
    """
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(n_requests))
    deadline = time.perf_counter() + max_seconds

    def worker() -> None:
        with httpx.Client(base_url=base_url, timeout=120) as client:
            send(client, 0)  # connection set-up outside the measurement
            while time.perf_counter() < deadline:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                started = time.perf_counter()
                response = send(client, index)
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


ENDPOINTS = {
    "opportunities": {"path": "/v1/opportunities/score", "model": "win", "key": "opportunities"},
    "accounts": {"path": "/v1/accounts/churn", "model": "churn", "key": "accounts"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=int, default=200, help="Requests per (batch, concurrency) cell (cap)."
    )
    parser.add_argument("--max-seconds", type=float, default=30, help="Time cap per cell.")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Worker processes of BOTH servers (REVCAST_WORKERS, mlflow -w).",
    )
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here.")
    parser.add_argument("--skip-mlflow-serve", action="store_true")
    parser.add_argument(
        "--without-dataset",
        action="store_true",
        help="Serve without REVCAST_DATA_DIR: deals get no track records from the CRM (the default "
        "gives the service the benchmark's CRM, as a deployment that scores like the batch path).",
    )
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    # Both servers get the same environment: one OpenMP thread per LightGBM call (revcast's default);
    # so does this process, which measures the in-process floor (set before LightGBM loads).
    server_env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    os.environ.update(server_env)
    results: dict[str, Any] = {
        "cells": [],
        "configuration": {
            "workers_each_server": args.workers,
            "server_env": server_env,
            "concurrency": concurrencies,
            "requests_cap_per_cell": args.requests,
            "max_seconds_per_cell": args.max_seconds,
            "cpu_count": os.cpu_count(),
            "load_average_at_start": list(os.getloadavg()),
            "revcast": "bentoml serve serving.service:RevcastService (REVCAST_WORKERS)",
            "mlflow": "mlflow models serve --env-manager local -w <workers> (same registered bundles)",
            "revcast_dataset": not args.without_dataset,
        },
    }
    print("configuration:", json.dumps(results["configuration"]), flush=True)

    from features.account import build_account_features
    from features.data import load_tables
    from serving.config import config_from_env
    from serving.forecast import forecast_data_range
    from serving.requests import prepare_accounts, prepare_opportunities
    from serving.service import (
        LoadedModel,
        ModelSet,
        opportunity_feature_frame,
        score_accounts,
        score_opportunities,
    )
    from serving.track_records import TrackRecordSource
    from tests.servers import start_mlflow_server, stop
    from tests.serving.conftest import start_service
    from tests.serving.crm import EXPORT, account_records, opportunity_records, write_crm_csv
    from tests.serving.models import register_bundle, train_bundle, training_frames

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
        service_env = {"MLFLOW_TRACKING_URI": uri, "REVCAST_WORKERS": str(args.workers), **server_env}
        track_records = None
        if not args.without_dataset:
            # Deals read their track records from the CRM, as `revcast score` does (serving.track_records).
            service_env["REVCAST_DATA_DIR"] = str(workdir / "crm")
            track_records = TrackRecordSource(tables, forecast_data_range(tables)[1])
        server = start_service(service_env, workdir)
        processes.append(server.process)

        opps = tables["opportunities"]
        open_ids = opps[(opps["created_at"] <= EXPORT) & opps["closed_at"].isna()]["opportunity_id"].tolist()
        subs = tables["subscriptions"]
        active = subs[
            (subs["start_date"] <= EXPORT) & (subs["end_date"].isna() | (subs["end_date"] > EXPORT))
        ]
        account_ids = sorted(set(active["account_id"]))
        records = {
            "opportunities": opportunity_records(tables, open_ids[:100], EXPORT),
            "accounts": account_records(tables, account_ids[:100], EXPORT),
        }
        sizes = {"opportunities": (1, 100), "accounts": (1,)}
        # One-record requests cycle through 100 different deals (accounts), as a CRM asks about the
        # record a user is looking at; the 100-record request is one batch of those 100.
        payloads = {
            (endpoint, n): [
                {"as_of": EXPORT.isoformat(), endpoint: records[endpoint][i : i + n]}
                for i in range(0, len(records[endpoint]), n)
            ]
            for endpoint, ns in sizes.items()
            for n in ns
        }
        headers = server.headers()

        # Features of the very same records, for the floor and for mlflow models serve.
        def features_of(endpoint: str, payload: dict[str, Any]) -> pd.DataFrame:
            if endpoint == "opportunities":
                batch = prepare_opportunities(payload[endpoint], EXPORT)
                features = opportunity_feature_frame(batch, track_records).reset_index(drop=True)
            else:
                batch = prepare_accounts(payload[endpoint], EXPORT)
                features = build_account_features(batch.tables, EXPORT)
            model = bundles[ENDPOINTS[endpoint]["model"]]
            for name in model.feature_names:  # as the service does (serving.service.with_model_columns)
                if name not in features.columns:
                    features[name] = np.nan
            return features[model.feature_names]

        # Per request, the feature rows of its records (a record's features depend on the others in
        # its request, e.g. open deals per owner, so they are built request by request).
        feature_rows = {
            key: [features_of(key[0], payload) for payload in key_payloads]
            for key, key_payloads in payloads.items()
        }

        config = config_from_env({})
        models = ModelSet(
            models={kind: LoadedModel(bundles[kind], {"version": versions[kind]}) for kind in bundles},
            warmed=True,
        )
        scorers = {
            "opportunities": lambda payload: score_opportunities(
                models, prepare_opportunities(payload["opportunities"], EXPORT), config, False, track_records
            ),
            "accounts": lambda payload: score_accounts(
                models, prepare_accounts(payload["accounts"], EXPORT), config
            ),
        }
        for (endpoint, n), key_payloads in payloads.items():
            model = bundles[ENDPOINTS[endpoint]["model"]]
            payload, rows = key_payloads[0], feature_rows[(endpoint, n)][0]
            # The booster's input as the service builds it: a float matrix (category codes), which
            # skips LightGBM's own pandas conversion (a one-row pandas frame costs it ~1.5 ms).
            prepared = model.feature_matrix(rows)
            if prepared is None:
                prepared = model.prepare(rows)
            floor = in_process(lambda prepared=prepared, b=model.booster: b.predict(prepared), 200)
            bundle_predict = in_process(lambda rows=rows, model=model: model.predict(rows), 100)
            pipeline = in_process(lambda payload=payload, endpoint=endpoint: scorers[endpoint](payload), 30)
            results[f"floor_{endpoint}_{n}"] = {
                "booster_predict": floor,
                "bundle_predict": bundle_predict,
                "in_process_request_path": pipeline,
            }
            print(json.dumps({"floor": endpoint, "rows": n, **results[f"floor_{endpoint}_{n}"]}), flush=True)

        # Every server is started before any measurement, and each (endpoint, records, concurrency)
        # cell is measured on revcast and then at once on mlflow: the machine's load drifts, and
        # neighbouring measurements see about the same load (servers not being measured are idle).
        mlflow_urls: dict[str, str] = {}
        if not args.skip_mlflow_serve:
            for endpoint in sizes:
                try:
                    mlflow_urls[endpoint] = start_mlflow_serve(
                        args, versions[ENDPOINTS[endpoint]["model"]], ENDPOINTS[endpoint]["model"],
                        uri, workdir, processes, server_env,
                    )  # fmt: skip
                except Exception as exc:  # still report what was measured
                    results.setdefault("mlflow_error", {})[endpoint] = (
                        f"{type(exc).__name__}: {str(exc)[:500]}"
                    )
                    print(f"mlflow models serve failed: {results['mlflow_error'][endpoint]}", flush=True)
        print("measuring ...", flush=True)
        for (endpoint, n), key_payloads in payloads.items():
            mlflow_bodies = [
                {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
                for rows in feature_rows[(endpoint, n)]
            ]
            n_requests = args.requests if n == 1 else max(20, args.requests // 4)
            for concurrency in concurrencies:
                targets = [
                    (
                        "revcast",
                        server.url,
                        lambda client, i, key_payloads=key_payloads, path=ENDPOINTS[endpoint]["path"]: (
                            client.post(path, json=key_payloads[i % len(key_payloads)], headers=headers)
                        ),
                    )
                ]
                if endpoint in mlflow_urls:
                    targets.append(
                        (
                            "mlflow",
                            mlflow_urls[endpoint],
                            lambda client, i, bodies=mlflow_bodies: client.post(
                                "/invocations", json=bodies[i % len(bodies)]
                            ),
                        )
                    )
                for name, url, send in targets:
                    cell = load(send, url, concurrency, n_requests, args.max_seconds)
                    cell.update(
                        server=name,
                        endpoint=endpoint,
                        records_per_request=n,
                        concurrency=concurrency,
                        records_per_s=cell["rps"] * n,
                        load_average_1min=os.getloadavg()[0],
                    )
                    results["cells"].append(cell)
                    print(json.dumps(cell), flush=True)
    finally:
        for process in reversed(processes):
            stop(process)

    results["configuration"]["load_average_at_end"] = list(os.getloadavg())
    print_report(results)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))


def start_mlflow_serve(
    args: argparse.Namespace,
    version: str,
    model: str,
    uri: str,
    workdir: Path,
    processes: list[subprocess.Popen],
    server_env: dict[str, str],
) -> str:
    """Start `mlflow models serve --env-manager local` on a registered revcast model; return its URL."""
    from tests.servers import BIN, free_port, wait_for

    print(f"starting mlflow models serve (revcast-{model}) ...", flush=True)
    port = free_port()
    log = workdir / f"mlflow-serve-{model}.log"
    # mlflow execs `uvicorn` by name: the venv's bin directory must be on PATH.
    env = {
        **os.environ,
        **server_env,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with open(log, "wb") as out:
        serve_proc = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/revcast-{model}/{version}",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", str(args.workers)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    processes.append(serve_proc)
    wait_for(f"http://127.0.0.1:{port}/ping", 300, serve_proc, log)
    return f"http://127.0.0.1:{port}"


def print_report(results: dict[str, Any]) -> None:
    """A table of every cell plus the ratios to the floor and to mlflow models serve."""
    print("\nconfiguration:", json.dumps(results["configuration"]))
    print("\nfloor (in process, p50 ms):")
    for key, floor in results.items():
        if not key.startswith("floor_"):
            continue
        print(
            f"  {key.removeprefix('floor_'):>16}: booster.predict {floor['booster_predict']['p50_ms']:.3f}, "
            f"bundle.predict {floor['bundle_predict']['p50_ms']:.3f}, "
            f"whole request path {floor['in_process_request_path']['p50_ms']:.1f}"
        )
    if not results["cells"]:
        return
    cells = pd.DataFrame(results["cells"])
    print("\nHTTP on loopback:")
    columns = ["server", "endpoint", "records_per_request", "concurrency", "n", "p50_ms", "p99_ms", "rps"]
    columns += [c for c in ("records_per_s", "load_average_1min") if c in cells.columns]
    print(cells[columns].round(2).to_string(index=False))
    print(
        "\nratios (p50 / floor = revcast p50 / in-process booster.predict p50; vs mlflow: revcast / mlflow;"
        " target on 1-record requests: rps >= 2 and p99 <= 0.5):"
    )
    revcast = cells[cells["server"] == "revcast"]
    for _, row in revcast.iterrows():
        n, concurrency, endpoint = row["records_per_request"], row["concurrency"], row["endpoint"]
        floor = results[f"floor_{endpoint}_{n}"]["booster_predict"]["p50_ms"]
        line = f"  {endpoint:>13} {n:>3} rec x c{concurrency:<2}: p50 / floor = {row['p50_ms'] / floor:,.0f}x"
        mlflow = cells[
            (cells["server"] == "mlflow")
            & (cells["endpoint"] == endpoint)
            & (cells["records_per_request"] == n)
            & (cells["concurrency"] == concurrency)
        ]
        if not mlflow.empty:
            m = mlflow.iloc[0]
            rps_ratio, p99_ratio = row["rps"] / m["rps"], row["p99_ms"] / m["p99_ms"]
            line += f"; rps {rps_ratio:.2f}; p99 {p99_ratio:.2f}; p50 {row['p50_ms'] / m['p50_ms']:.2f}"
            if n == 1:
                line += "  target met" if rps_ratio >= 2 and p99_ratio <= 0.5 else "  target NOT met"
        print(line)


if __name__ == "__main__":
    main()
