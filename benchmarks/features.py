"""Benchmark of the as-of feature pipelines (DuckDB SQL) against the plain pandas reference.

    python benchmarks/features.py                  # default size: 600 accounts, weekly snapshots
    python benchmarks/features.py --size large     # ~0.95M opportunities / ~9.7M activities (~6 min, ~21 GB peak RSS)
    python benchmarks/features.py --no-scaling     # skip the 1x/2x/4x scaling check

Generates data with the project's synthetic generator (in a subprocess, so its memory does not
count), loads it with features.data.load_tables, builds opportunity features for a weekly
snapshot series with the SQL pipeline and with features/reference_pandas.py in the same process on
the same data, checks both agree on the dates the reference ran, and prints rows/s, peak memory and
the speed ratio. On the large size the pandas reference runs on a subset of the snapshot dates and its
time is extrapolated per snapshot date (the output says so). The scaling check times the SQL
pipeline at 1x, 2x and 4x the number of accounts.
"""

from __future__ import annotations

import argparse
import gc
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.account import build_account_features  # noqa: E402
from features.data import load_tables  # noqa: E402
from features.labels import data_export_date  # noqa: E402
from features.opportunity import build_opportunity_features  # noqa: E402
from features.reference_pandas import reference_opportunity_features  # noqa: E402
from features.snapshots import as_of_dates  # noqa: E402

SIZES = {
    # name: (n_accounts, generator scale, activity rate)
    "default": (600, 1.0, 1.0),
    # At scale 10 the generator makes ~73.6 deals per account and, at activity rate 1, ~26 activities
    # per deal (measured: 500 accounts x scale 10 x activity rate 0.37 -> 36,801 deals, 358,442
    # activities). 13,600 accounts -> ~1.0M deals; activity rate 0.38 -> ~10M activities.
    "large": (13_600, 10.0, 0.38),
}


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def generate(out: Path, n_accounts: int, scale: float, seed: int, activity_rate: float = 1.0) -> None:
    """Run the generator in a child process (its memory is not this benchmark's)."""
    code = (
        "from features.generate import generate_crm; "
        f"generate_crm({str(out)!r}, n_accounts={n_accounts}, seed={seed}, scale={scale}, fmt='parquet', "
        f"activity_rate={activity_rate})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def timed(fn, *args, **kwargs):
    """(result, wall seconds, CPU seconds of the whole process incl. DuckDB threads).

    No tracemalloc here: it slows pandas down several-fold and would flatter the SQL pipeline.
    Memory is reported as the process's peak RSS around each phase instead.
    """
    gc.collect()
    started, cpu_started = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started, time.process_time() - cpu_started


def input_rows(tables: dict[str, pd.DataFrame]) -> int:
    return sum(
        len(tables.get(name, ()))
        for name in ("opportunities", "opportunity_history", "activities", "accounts")
    )


def run_size(
    name: str,
    n_accounts: int,
    scale: float,
    seed: int,
    reference_dates: int | None,
    workdir: Path,
    activity_rate: float = 1.0,
) -> None:
    out = workdir / f"{name}-{n_accounts}-{scale}-{activity_rate}"
    started = time.perf_counter()
    generate(out, n_accounts, scale, seed, activity_rate)
    print(
        f"[{name}] generated {n_accounts} accounts x scale {scale} x activity rate {activity_rate} "
        f"in {time.perf_counter() - started:.1f}s",
        flush=True,
    )
    started = time.perf_counter()
    tables, _report = load_tables(out)
    print(
        f"[{name}] loaded in {time.perf_counter() - started:.1f}s; rows: "
        + ", ".join(f"{t}={len(f):,}" for t, f in tables.items())
    )
    export = data_export_date(tables)
    dates = as_of_dates(export - pd.DateOffset(years=3), export, "W-MON")
    rss_before = peak_rss_mb()
    sql, sql_s, sql_cpu = timed(build_opportunity_features, tables, dates)
    rss_after = peak_rss_mb()
    n_in = input_rows(tables)
    print(
        f"[{name}] SQL opportunity features: {len(dates)} weekly dates -> {len(sql):,} rows x {sql.shape[1]} cols "
        f"in {sql_s:.2f}s = {len(sql) / sql_s:,.0f} feature rows/s, {n_in / sql_s:,.0f} input rows/s; "
        f"CPU {sql_cpu:.2f}s; process peak RSS {rss_before:,.0f} -> {rss_after:,.0f} MB"
    )
    if reference_dates is None or reference_dates >= len(dates):
        ref_dates = dates
        note = "all dates"
    else:
        step = max(1, len(dates) // reference_dates)
        ref_dates = dates[::step][:reference_dates]
        note = f"{len(ref_dates)} of {len(dates)} dates, time extrapolated per snapshot date"
    ref, ref_s, ref_cpu = timed(reference_opportunity_features, tables, ref_dates)
    ref_full_s = ref_s * len(dates) / len(ref_dates)
    ref_full_cpu = ref_cpu * len(dates) / len(ref_dates)
    sub = sql[sql["as_of"].isin(ref_dates)].reset_index(drop=True)
    pd.testing.assert_frame_equal(sub, ref, check_exact=False, rtol=1e-9, atol=1e-9)
    print(
        f"[{name}] pandas reference ({note}): {ref_s:.2f}s for {len(ref):,} rows -> {ref_full_s:.2f}s for all dates; "
        f"CPU {ref_cpu:.2f}s -> {ref_full_cpu:.2f}s; process peak RSS {peak_rss_mb():,.0f} MB; values identical"
    )
    print(
        f"[{name}] speed-up SQL vs pandas: wall {ref_full_s / sql_s:.1f}x, CPU {ref_full_cpu / sql_cpu:.1f}x"
    )
    months = as_of_dates(export - pd.DateOffset(years=3), export, "MS")
    acct, acct_s, acct_cpu = timed(build_account_features, tables, months)
    print(
        f"[{name}] SQL account features: {len(months)} monthly dates -> {len(acct):,} rows x {acct.shape[1]} cols "
        f"in {acct_s:.2f}s (CPU {acct_cpu:.2f}s)"
    )
    del tables, sql, ref, acct
    gc.collect()


def scaling(base_accounts: int, seed: int, workdir: Path) -> None:
    print("[scaling] SQL opportunity features, weekly dates over 3 years, accounts x1/x2/x4")
    first = None
    for factor in (1, 2, 4):
        n_accounts = base_accounts * factor
        out = workdir / f"scaling-{n_accounts}"
        generate(out, n_accounts, 1.0, seed)
        tables, _ = load_tables(out)
        export = data_export_date(tables)
        dates = as_of_dates(export - pd.DateOffset(years=3), export, "W-MON")
        build_opportunity_features(tables, dates[:2])  # warm-up (imports, first connection)
        frame, seconds, cpu = timed(build_opportunity_features, tables, dates)
        n_in = input_rows(tables)
        per_row = seconds / n_in * 1e6
        first = first or per_row
        print(
            f"[scaling] x{factor}: {n_in:,} input rows, {len(frame):,} feature rows, {seconds:.2f}s, "
            f"CPU {cpu:.2f}s, {per_row:.2f} us wall per input row ({per_row / first:.2f} of x1)"
        )
        del tables, frame
        gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--accounts", type=int, default=None, help="override the number of accounts")
    parser.add_argument("--scale", type=float, default=None, help="override the generator's volume scale")
    parser.add_argument(
        "--activity-rate", type=float, default=None, help="override the generator's activity density"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--reference-dates",
        type=int,
        default=None,
        help="run the pandas reference on this many evenly spaced dates only (default: all; large: 4)",
    )
    parser.add_argument("--no-scaling", action="store_true", help="skip the 1x/2x/4x scaling check")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to write generated data (default: temp)"
    )
    args = parser.parse_args()
    n_accounts, scale, activity_rate = SIZES[args.size]
    n_accounts = args.accounts or n_accounts
    scale = args.scale or scale
    activity_rate = args.activity_rate or activity_rate
    reference_dates = (
        args.reference_dates if args.reference_dates is not None else (4 if args.size == "large" else None)
    )
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = Path(tmp)
        run_size(args.size, n_accounts, scale, args.seed, reference_dates, workdir, activity_rate)
        if not args.no_scaling:
            scaling(SIZES["default"][0], args.seed, workdir)


if __name__ == "__main__":
    main()
