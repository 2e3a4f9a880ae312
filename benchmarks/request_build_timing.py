"""p50 of the API path's feature build for one deal and one account (records -> tables -> features).

Times ``serving.service.opportunity_feature_frame`` / ``account_feature_frame`` over 30 one-record
requests x 4 from the serving tests' synthetic CRM, without the dataset context. Pass another checkout
to compare code versions on the same machine, alternating runs:

    git worktree add /tmp/old <rev>
    python benchmarks/request_build_timing.py /tmp/old; python benchmarks/request_build_timing.py .
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _p50_ms(build: Callable[[Any], Any], records: list[Any], rounds: int = 4) -> float:
    for record in records[:5]:  # warm the cursor and its parsed statements
        build(record)
    samples = []
    for _ in range(rounds):
        for record in records:
            started = time.perf_counter()
            build(record)
            samples.append(time.perf_counter() - started)
    return float(np.percentile(samples, 50) * 1000)


def main() -> None:
    repo = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]).resolve()
    sys.path.insert(0, str(repo))
    os.chdir(repo)
    from features.data import load_tables
    from serving.requests import prepare_accounts, prepare_opportunities
    from serving.service import account_feature_frame, opportunity_feature_frame
    from tests.serving.crm import EXPORT, account_records, opportunity_records, write_crm_csv

    tables, _ = load_tables(write_crm_csv(Path(tempfile.mkdtemp()) / "crm"))
    opps = tables["opportunities"]
    open_ids = opps[(opps["created_at"] <= EXPORT) & opps["closed_at"].isna()]["opportunity_id"].tolist()[:30]
    subs = tables["subscriptions"]
    active = subs[(subs["start_date"] <= EXPORT) & (subs["end_date"].isna() | (subs["end_date"] > EXPORT))]
    account_ids = sorted(set(active["account_id"]))[:30]
    deal = _p50_ms(
        lambda r: opportunity_feature_frame(prepare_opportunities(r, EXPORT)),
        [opportunity_records(tables, [i], EXPORT) for i in open_ids],
    )
    account = _p50_ms(
        lambda r: account_feature_frame(prepare_accounts(r, EXPORT)),
        [account_records(tables, [i], EXPORT) for i in account_ids],
    )
    print(f"{repo.name}: one deal {deal:.1f} ms, one account {account:.1f} ms (p50)")


if __name__ == "__main__":
    main()
