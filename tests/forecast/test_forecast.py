"""The forecast engine: as-of correctness, reconciliation of groups and components, categories, quota."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving.forecast import ForecastParams, as_of_view, forecast_revenue, period_floor, shift_period

AS_OF = pd.Timestamp("2025-04-20")
N_SIMS = 400


def _after_t_altered(crm: dict[str, pd.DataFrame], as_of: pd.Timestamp) -> dict[str, pd.DataFrame]:
    """Change everything dated after T in every table, and every current-state column."""
    tables = {name: frame.copy() for name, frame in crm.items()}
    opps = tables["opportunities"]
    later = opps["closed_at"] > as_of
    # Flip outcomes, move closing dates, inflate won amounts of deals that close after T.
    opps.loc[later, "outcome"] = np.where(opps.loc[later, "outcome"] == "won", "lost", "won")
    opps.loc[later, "closed_at"] = opps.loc[later, "closed_at"] + pd.Timedelta(days=3)
    opps.loc[later, "won_amount"] = opps.loc[later, "amount"] * 3
    # Current-state columns are never read for a past T.
    opps["stage"] = "negotiation"
    opps["amount"] = opps["amount"] * 2
    opps["expected_close_date"] = as_of + pd.Timedelta(days=5)
    # New deals created after T, won inside the period.
    new = opps.iloc[:40].copy()
    new["opportunity_id"] = [f"new-{i}" for i in range(40)]
    new["created_at"] = as_of + pd.Timedelta(days=1)
    new["closed_at"] = as_of + pd.Timedelta(days=20)
    new["outcome"] = "won"
    new["won_amount"] = 1e6
    tables["opportunities"] = pd.concat([opps, new], ignore_index=True)
    history = tables["opportunity_history"]
    extra = history.groupby("opportunity_id").tail(1).copy()
    extra["changed_at"] = as_of + pd.Timedelta(hours=1)
    extra["stage"] = "won"
    extra["amount"] = 5e5
    tables["opportunity_history"] = pd.concat([history, extra], ignore_index=True)
    subs = tables["subscriptions"]
    subs.loc[subs["end_date"].isna(), "end_date"] = as_of + pd.Timedelta(days=2)
    tables["subscriptions"] = pd.concat(
        [
            subs,
            subs.iloc[:5].assign(
                subscription_id=lambda f: f["subscription_id"] + "-x", start_date=as_of + pd.Timedelta(days=1)
            ),
        ],
        ignore_index=True,
    )
    return tables


def test_forecast_uses_nothing_after_as_of(crm):
    kwargs = {"period": "quarter", "by": "rep", "n_periods": 2, "n_sims": N_SIMS, "seed": 3}
    before = forecast_revenue(crm, AS_OF, **kwargs)
    altered = forecast_revenue(_after_t_altered(crm, AS_OF), AS_OF, **kwargs)
    pd.testing.assert_frame_equal(before.frame, altered.frame)
    pd.testing.assert_frame_equal(before.deals, altered.deals)
    assert before.notes == altered.notes


def test_changing_the_past_changes_the_forecast(crm):
    """Guards the test above: the comparison is sensitive to rows the engine does read."""
    tables = {name: frame.copy() for name, frame in crm.items()}
    opps = tables["opportunities"]
    earlier = (opps["closed_at"] <= AS_OF) & (opps["outcome"] == "won")
    opps.loc[earlier, "won_amount"] = opps.loc[earlier, "won_amount"] * 2
    base = forecast_revenue(crm, AS_OF, n_sims=N_SIMS)
    changed = forecast_revenue(tables, AS_OF, n_sims=N_SIMS)
    assert changed.totals["expected"].iloc[0] > base.totals["expected"].iloc[0] * 1.2


def test_as_of_view_hides_outcomes_after_t(crm):
    view = as_of_view(crm, AS_OF)
    opps = view["opportunities"]
    assert (opps["created_at"] <= AS_OF).all()
    assert not (opps["closed_at"] > AS_OF).any()
    assert opps.loc[opps["closed_at"].isna(), "outcome"].isna().all()
    assert {"stage", "amount", "expected_close_date"}.isdisjoint(opps.columns)
    assert (view["opportunity_history"]["changed_at"] <= AS_OF).all()


@pytest.mark.parametrize("by", ["rep", "team", "region"])
def test_groups_reconcile_with_totals(crm, by):
    result = forecast_revenue(crm, AS_OF, by=by, n_periods=2, n_sims=N_SIMS, keep_simulations=True)
    frame, totals = result.frame, result.totals
    additive = ["won_to_date", "open_pipeline_expected", "not_yet_created_expected", "expected", "mean"]
    additive += ["commit", "best_case", "pipeline", "recurring_expected", "quota", "n_open_deals"]
    for _, total in totals.iterrows():
        part = frame.loc[frame["period_start"] == total["period_start"]]
        for column in additive:
            assert part[column].sum() == pytest.approx(total[column], rel=1e-9, abs=1e-6), column
    # Every simulation: groups add up to the total, and the total's quantiles come from that sum.
    sims = result.simulations
    assert sims.shape == (len(result.groups), 2, N_SIMS)
    for k in range(2):
        assert totals["p50"].iloc[k] == pytest.approx(np.quantile(sims[:, k, :].sum(axis=0), 0.5))
    # Components add up to the expected value exactly; quantiles are ordered.
    assert np.allclose(
        frame["expected"],
        frame["won_to_date"] + frame["open_pipeline_expected"] + frame["not_yet_created_expected"],
    )
    assert (frame["p10"] <= frame["p50"]).all() and (frame["p50"] <= frame["p90"]).all()
    assert (totals["p10"] < totals["p90"]).all()
    # Categories are nested.
    assert (frame["commit"] <= frame["best_case"] + 1e-6).all()
    assert (frame["best_case"] <= frame["pipeline"] + 1e-6).all()


def test_grouping_does_not_change_the_total(crm):
    alone = forecast_revenue(crm, AS_OF, n_sims=N_SIMS).totals.iloc[0]
    by_team = forecast_revenue(crm, AS_OF, by="team", n_sims=N_SIMS).totals.iloc[0]
    for column in (
        "won_to_date",
        "open_pipeline_expected",
        "not_yet_created_expected",
        "expected",
        "pipeline",
    ):
        assert by_team[column] == pytest.approx(alone[column], rel=1e-9)


def test_simulated_mean_and_median_match_the_expected_value(crm):
    """Mean = expected up to Monte-Carlo error; the median sits within 15 % of the P10-P90 width of it."""
    n_sims = 4000
    result = forecast_revenue(crm, AS_OF, n_sims=n_sims, keep_simulations=True)
    total = result.totals.iloc[0]
    sims = result.simulations.sum(axis=0)[0]
    standard_error = sims.std() / np.sqrt(n_sims)
    assert abs(total["mean"] - total["expected"]) < 4 * standard_error
    assert abs(total["p50"] - total["expected"]) < 0.15 * (total["p90"] - total["p10"])


def test_won_to_date_and_quota(crm):
    result = forecast_revenue(crm, AS_OF, by="rep", n_sims=N_SIMS)
    opps = crm["opportunities"]
    start = period_floor(AS_OF, "quarter")
    won = opps.loc[(opps["outcome"] == "won") & (opps["closed_at"] >= start) & (opps["closed_at"] <= AS_OF)]
    assert result.totals["won_to_date"].iloc[0] == pytest.approx(won["won_amount"].sum())
    assert won["won_amount"].sum() > 0
    # Monthly quotas of 60,000 per rep: three of them per quarter.
    rows = result.frame.set_index("group")
    assert rows.loc["r-0", "quota"] == pytest.approx(180000.0)
    assert rows.loc["r-0", "attainment_p50"] == pytest.approx(rows.loc["r-0", "p50"] / 180000.0)


def test_supplied_win_probabilities_drive_the_pipeline(crm):
    base = forecast_revenue(crm, AS_OF, n_sims=N_SIMS)
    ids = base.deals["opportunity_id"]
    zero = forecast_revenue(crm, AS_OF, n_sims=N_SIMS, win_probability=pd.Series(0.0, index=ids))
    one = forecast_revenue(crm, AS_OF, n_sims=N_SIMS, win_probability=pd.Series(1.0, index=ids))
    assert zero.totals["open_pipeline_expected"].iloc[0] == 0.0
    assert one.totals["open_pipeline_expected"].iloc[0] > base.totals["open_pipeline_expected"].iloc[0]
    assert (one.deals["win_probability_source"] == "supplied").all()
    # Certain wins in a late stage are committed.
    assert one.totals["commit"].iloc[0] > one.totals["won_to_date"].iloc[0]


def test_later_periods_and_json(crm):
    result = forecast_revenue(crm, AS_OF, n_periods=3, n_sims=N_SIMS)
    starts = list(result.totals["period_start"])
    assert starts == [shift_period(period_floor(AS_OF, "quarter"), k, "quarter") for k in range(3)]
    assert (result.totals["won_to_date"].iloc[1:] == 0).all()
    document = result.to_dict()
    assert document["totals"][0]["period_start"] == "2025-04-01"
    assert document["totals"][0]["period_end"] == "2025-06-30"
    assert set(document["totals"][0]) >= {"p10", "p50", "p90", "commit", "best_case", "pipeline", "quota"}


def test_bad_arguments_are_named(crm):
    with pytest.raises(ValueError, match="period"):
        forecast_revenue(crm, AS_OF, period="week")
    with pytest.raises(ValueError, match="by"):
        forecast_revenue(crm, AS_OF, by="country")
    tables = {k: v for k, v in crm.items() if k != "reps"}
    with pytest.raises(ValueError, match="reps"):
        forecast_revenue(tables, AS_OF, by="team")
    with pytest.raises(ValueError, match="to learn from"):
        forecast_revenue(crm, "2023-01-15")


def test_same_seed_same_result_and_params_are_used(crm):
    a = forecast_revenue(crm, AS_OF, n_sims=N_SIMS, seed=1)
    b = forecast_revenue(crm, AS_OF, n_sims=N_SIMS, seed=1)
    pd.testing.assert_frame_equal(a.frame, b.frame)
    strict = forecast_revenue(crm, AS_OF, n_sims=N_SIMS, params=ForecastParams(commit_threshold=1.01))
    assert strict.totals["commit"].iloc[0] == pytest.approx(strict.totals["won_to_date"].iloc[0])


def test_renewals_from_subscriptions_are_used_and_switchable(crm):
    with_renewals = forecast_revenue(crm, AS_OF, n_sims=N_SIMS)
    assert any("renewals forecast account by account" in note for note in with_renewals.notes)
    without = forecast_revenue(
        crm, AS_OF, n_sims=N_SIMS, params=ForecastParams(renewals_from_subscriptions=False)
    )
    assert not any("renewals forecast account by account" in note for note in without.notes)
    assert (
        with_renewals.totals["not_yet_created_expected"].iloc[0]
        != without.totals["not_yet_created_expected"].iloc[0]
    )


def test_level_shrinkage_blends_sparse_cells_with_their_parent():
    from serving.forecast import _hierarchical_sums

    # 100 "new" rows win 20 %, 10 "renewal" rows win 90 %; a prior of 30 pseudo-rows.
    train = pd.DataFrame(
        {
            "type": ["new"] * 100 + ["renewal"] * 10,
            "won_0": [1.0] * 20 + [0.0] * 80 + [1.0] * 9 + [0.0],
            "one": 1.0,
        }
    )
    target = pd.DataFrame({"type": ["new", "renewal", "expansion"]})
    levels = (("type",), ())
    root = 29 / 110
    shrunk = _hierarchical_sums(train, target, ["won_0"], "one", 30, levels, shrink=True)
    rates = (shrunk["won_0"] / shrunk["one"]).to_numpy()
    assert rates == pytest.approx([(20 + 30 * root) / 130, (9 + 30 * root) / 40, root])
    assert list(shrunk["level"]) == [0, 0, 1]
    # The hard fall-back drops the 10 renewal rows (< 30) for the overall rate.
    hard = _hierarchical_sums(train, target, ["won_0"], "one", 30, levels)
    assert (hard["won_0"] / hard["one"]).to_numpy() == pytest.approx([0.2, root, root])


def test_a_period_without_any_quota_has_an_unknown_quota_not_zero(crm):
    quotas = crm["quotas"]
    last_quarter = period_floor(AS_OF, "quarter")
    # Quotas set only up to the end of the current quarter: the next quarter has none.
    limited = {**crm, "quotas": quotas.loc[quotas["period_start"] < last_quarter + pd.DateOffset(months=3)]}
    result = forecast_revenue(limited, AS_OF, by="rep", n_periods=2, n_sims=N_SIMS)
    current, following = (
        result.frame.loc[result.frame["period_start"] == s]
        for s in sorted(result.frame["period_start"].unique())
    )
    assert (current["quota"] > 0).all()
    assert following["quota"].isna().all() and following["attainment_p50"].isna().all()
    assert np.isnan(result.totals["quota"].iloc[1]) and result.totals["quota"].iloc[0] > 0
