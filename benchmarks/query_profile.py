"""Where a one-deal API feature build spends its time inside DuckDB (binding, planning, operators).

Builds the opportunity features of one open deal of the serving tests' synthetic CRM the way the API
does (request records -> tables -> `opportunity_query` on the small-build cursor), times the query
(p50 of repeated runs, wall clock) and prints DuckDB's own profile of one run: binder, planner,
optimizer, physical planner and the summed operator time, plus the slowest operator types.

Usage: ``.venv/bin/python benchmarks/query_profile.py [--runs 200]``
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402


def _operators(node: dict[str, Any], out: list[tuple[str, float]]) -> list[tuple[str, float]]:
    out.append((str(node.get("type") or node.get("name")), float(node.get("timing", 0.0))))
    for child in node.get("children", []):
        _operators(child, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()

    from features import opportunity
    from features.data import load_tables
    from features.params import load_params
    from features.sql import registered
    from serving.requests import prepare_opportunities
    from tests.serving.crm import EXPORT, opportunity_records, write_crm_csv

    workdir = Path(tempfile.mkdtemp(prefix="revcast-query-profile-"))
    tables, _ = load_tables(write_crm_csv(workdir / "crm"))
    opps = tables["opportunities"]
    open_ids = opps[(opps["created_at"] <= EXPORT) & opps["closed_at"].isna()]["opportunity_id"].tolist()
    params = load_params()
    batch = prepare_opportunities(opportunity_records(tables, open_ids[:1], EXPORT), EXPORT)
    frames = opportunity.opportunity_frames(batch.tables, EXPORT, params, current_state_as_of=EXPORT)
    query = opportunity.opportunity_query(params, opportunity.has_closed_deals(frames["opps"]))

    samples = []
    for run in range(args.runs + 10):  # the first 10 warm the cursor and its parsed statement
        started = time.perf_counter()
        with registered(frames) as con:
            con.execute(query).fetchall()
        if run >= 10:
            samples.append(time.perf_counter() - started)
    print(f"one-deal feature query: p50 {np.percentile(samples, 50) * 1000:.2f} ms over {args.runs} runs")

    profile_path = workdir / "profile.json"
    with registered(frames) as con:
        con.execute("PRAGMA enable_profiling='json'").fetchall()
        con.execute(f"PRAGMA profiling_output='{profile_path}'").fetchall()
        con.execute("SET profiling_mode='detailed'").fetchall()
        try:
            con.execute(query).fetchall()
        finally:
            con.execute("PRAGMA disable_profiling").fetchall()
    profile = json.loads(profile_path.read_text())
    operators: list[tuple[str, float]] = []
    for node in profile.get("operator", []):
        _operators(node, operators)
    by_type: collections.Counter[str] = collections.Counter()
    for kind, seconds in operators:
        by_type[kind] += seconds * 1000
    phases = {
        "binding": profile["planner"]["binding_time"],
        "planner (total, incl. binding)": profile["planner"]["total_time"],
        "optimizer": profile["optimizer"]["total_time"],
        "physical planner": profile["physical_planner"]["total_time"],
        "operators (sum)": sum(seconds for _, seconds in operators),
    }
    for name, seconds in phases.items():
        print(f"  {name:32s} {seconds * 1000:7.2f} ms")
    print(f"  {len(operators)} operators; slowest types (ms):", json.dumps(by_type.most_common(5)))


if __name__ == "__main__":
    main()
