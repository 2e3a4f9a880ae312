"""How far API deal scores are from batch scores of the same deals, with and without the dataset.

A CRM asks about one deal at a time. This scores every deal open at the data's end twice with the
registered win model: as ``revcast score opportunities`` does (the whole CRM), and as the API does
for a one-deal request (the deal's record -> ``serving.requests.prepare_opportunities`` ->
``serving.service.opportunity_feature_frame``), once on the record alone and once with the CRM's
track records (``serving.track_records.TrackRecordSource``, what ``REVCAST_DATA_DIR`` gives the
service). Prints the mean, p90 and max absolute difference of the win probability and the share of
deals whose grade differs.

Usage: ``MLFLOW_TRACKING_URI=... .venv/bin/python benchmarks/api_batch_gap.py --data DIR [--alias challenger]``
(e.g. after ``revcast quickstart``: ``--data revcast_home/data``; win stays a challenger there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--alias", default="champion")
    args = parser.parse_args()

    from features.data import load_tables
    from serving.config import grade_for
    from serving.forecast import forecast_data_range
    from serving.registry import resolve_bundle
    from serving.requests import prepare_opportunities
    from serving.service import opportunity_feature_frame, with_model_columns
    from serving.track_records import TrackRecordSource
    from tests.serving.crm import opportunity_records
    from training.score import score_opportunities

    tables, _ = load_tables(args.data)
    win, info = resolve_bundle("win", args.alias)
    data_end = forecast_data_range(tables)[1]
    batch = score_opportunities(tables, win, None, as_of=data_end)
    ids = batch.scores["opportunity_id"].tolist()
    p_batch = batch.scores.set_index("opportunity_id")["win_probability"].loc[ids].to_numpy()
    cuts = {"A": 0.6, "B": 0.4, "C": 0.2}
    source = TrackRecordSource(tables, data_end)
    print(f"{info['name']} v{info['version']} ({args.alias}); {len(ids)} deals open at {data_end}")
    for label, track_records in (("records alone", None), ("with the dataset", source)):
        p_api = []
        for opp_id in ids:
            prepared = prepare_opportunities(opportunity_records(tables, [opp_id], data_end), data_end)
            frame = opportunity_feature_frame(prepared, track_records)
            p_api.append(float(win.predict(with_model_columns(frame, win))[0]))
        gap = np.abs(np.array(p_api) - p_batch)
        grades = np.mean(
            [grade_for(a, cuts) != grade_for(b, cuts) for a, b in zip(p_api, p_batch, strict=True)]
        )
        print(
            f"  API {label:17s}: |p_api - p_batch| mean {gap.mean():.4f}, p90 {np.quantile(gap, 0.9):.4f},"
            f" max {gap.max():.4f}; grade differs for {grades:.1%} of deals"
        )


if __name__ == "__main__":
    main()
