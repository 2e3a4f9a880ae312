"""The deal process: a stage-by-stage Markov chain and the history rows it leaves behind.

A deal of latent quality q sits in stage s for a Gamma-distributed dwell time whose mean shrinks
with q; at the end of the dwell it advances with probability a_s(q) = sigmoid(alpha_s + beta q),
otherwise it is lost. The decision does not depend on how long the deal sat in the stage, so the
probability of winning from stage s is exactly P(win | s, q) = prod_{k >= s} a_k(q), whatever the
elapsed time: that is the oracle written to truth/opportunities.csv.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from features.generate.calendar import Calendar
from features.generate.params import LOST, STAGES, WON, GeneratorParams

N_STAGES = len(STAGES)

# History row kinds (extra column `change` in opportunity_history).
CREATED, STAGE_CHANGE, SLIP, CLOSED = 0, 1, 2, 3
CHANGE_NAMES: tuple[str, ...] = ("created", "stage", "close_date", "closed")


def advance_probabilities(q: np.ndarray, params: GeneratorParams) -> np.ndarray:
    """a_s(q) for every deal and stage, shape (n, N_STAGES)."""
    alpha = np.asarray(params.stage_alpha, dtype=np.float64)
    return expit(alpha[None, :] + params.stage_beta * np.asarray(q, dtype=np.float64)[:, None])


def win_probability_from_each_stage(q: np.ndarray, params: GeneratorParams) -> np.ndarray:
    """P(win | stage s, q) = prod_{k >= s} a_k(q), shape (n, N_STAGES)."""
    advance = advance_probabilities(q, params)
    return np.cumprod(advance[:, ::-1], axis=1)[:, ::-1]


@dataclass
class DealPaths:
    """Simulated path of each deal through the stages (times in calendar days).

    Attributes:
        entry: (n, N_STAGES) time each stage was entered (NaN when never reached).
        close: Time the deal was won or lost.
        won: Whether the deal was won.
        last_stage: Stage in which the deal was lost (N_STAGES - 1 for won deals).
    """

    entry: np.ndarray
    close: np.ndarray
    won: np.ndarray
    last_stage: np.ndarray


def simulate_paths(
    rng: np.random.Generator,
    q: np.ndarray,
    start_stage: np.ndarray,
    created: np.ndarray,
    dwell_means: np.ndarray,
    params: GeneratorParams,
) -> DealPaths:
    """Run the Markov chain for every deal from its start stage.

    Args:
        rng: Random generator.
        q: Latent quality per deal.
        start_stage: Stage index each deal is created in.
        created: Creation time per deal.
        dwell_means: (n, N_STAGES) mean dwell days per stage for an average (q = 0) deal.
        params: Generator parameters.

    Returns:
        The deal paths.
    """
    n = len(q)
    advance = rng.random((n, N_STAGES)) < advance_probabilities(q, params)
    speed = np.exp(-params.speed_q * q)[:, None]
    dwell = rng.gamma(params.dwell_shape, dwell_means * speed / params.dwell_shape)
    entry = np.full((n, N_STAGES), np.nan)
    clock = created.astype(np.float64).copy()
    alive = np.ones(n, dtype=bool)
    last_stage = np.asarray(start_stage).copy()
    for stage in range(N_STAGES):
        here = alive & (start_stage <= stage)
        entry[here, stage] = clock[here]
        clock[here] += dwell[here, stage]
        last_stage[here] = stage
        alive &= ~(here & ~advance[:, stage])
    return DealPaths(entry=entry, close=clock, won=alive, last_stage=last_stage)


def compress_paths(paths: DealPaths, created: np.ndarray, deadline: np.ndarray) -> None:
    """Squeeze paths (in place) so that every deal closes by its deadline (renewals close by term end).

    Only timing changes; outcomes and hence win probabilities are untouched.
    """
    total = paths.close - created
    available = np.maximum(deadline - created, 0.5)
    factor = np.where(total > available, available / np.maximum(total, 1e-9), 1.0)
    paths.entry = created[:, None] + (paths.entry - created[:, None]) * factor[:, None]
    paths.close = created + total * factor


def push_to_quarter_end(
    rng: np.random.Generator, paths: DealPaths, eligible: np.ndarray, calendar: Calendar, share: float
) -> None:
    """Hold a share of negotiation decisions due in a quarter's last month until its last days (in place).

    Won and lost deals alike are held, so the time spent in negotiation says nothing about the
    outcome beyond q (the oracle stays exact); the wins pile up at quarter ends.
    """
    last_day = calendar.quarter_last_day(paths.close).astype(np.float64)
    decided_in_negotiation = paths.last_stage == N_STAGES - 1
    late = (
        eligible
        & decided_in_negotiation
        & (last_day - paths.close < 30.0)
        & (rng.random(len(paths.close)) < share)
    )
    target = (
        last_day - np.floor(rng.random(len(paths.close)) * 5.0) + 0.4 + 0.35 * rng.random(len(paths.close))
    )
    paths.close = np.where(late, np.maximum(paths.close, target), paths.close)


@dataclass
class History:
    """History rows of a set of deals, sorted by deal then time (numeric form).

    Attributes:
        deal: Local deal index of each row.
        time: changed_at (days).
        stage: Stage code (0..3 open, WON, LOST).
        amount: Expected amount after the row.
        close_date: Expected close date (whole day) after the row.
        change: Row kind (CREATED, STAGE_CHANGE, SLIP, CLOSED).
    """

    deal: np.ndarray
    time: np.ndarray
    stage: np.ndarray
    amount: np.ndarray
    close_date: np.ndarray
    change: np.ndarray

    def last_row_index(self, visible: np.ndarray, n_deals: int) -> np.ndarray:
        """Index of the last visible row per deal (-1 when the deal has none)."""
        last = np.full(n_deals, -1, dtype=np.int64)
        rows = np.flatnonzero(visible)
        last[self.deal[rows]] = rows  # rows ascend within a deal, so the last write wins
        return last


def _round_money(values: np.ndarray) -> np.ndarray:
    return np.round(values / 10.0) * 10.0


def build_history(
    rng: np.random.Generator,
    paths: DealPaths,
    created: np.ndarray,
    start_stage: np.ndarray,
    q: np.ndarray,
    amount0: np.ndarray,
    dwell_means: np.ndarray,
    calendar: Calendar,
    params: GeneratorParams,
) -> History:
    """Creation, stage-change, close-date-slip and close rows of every deal.

    The rep's first expected close date is an optimistic plan of the average deal's duration,
    snapped to a month or quarter end; whenever it passes while the deal is still open, the rep
    slips it (most often to the next quarter end). Amounts are revised at stage changes (upwards
    for good deals, discounted for weak ones) and negotiated slightly down at a win.
    """
    n = len(q)
    remaining = dwell_means * (np.arange(N_STAGES)[None, :] >= start_stage[:, None])
    plan = remaining.sum(axis=1) * np.exp(params.plan_optimism + params.plan_sd * rng.standard_normal(n))
    plan_end = created + np.maximum(plan, 7.0)
    snap = rng.random(n)
    first_close_date = np.where(
        snap < 0.3,
        calendar.next_quarter_last_day(plan_end - 1.0),
        np.where(snap < 0.7, calendar.month_last_day(plan_end), np.floor(plan_end)),
    ).astype(np.float64)

    # Close-date slips: each time the expected date passes with the deal still open.
    slip_deal, slip_time, slip_date = [], [], []
    current = first_close_date.copy()
    active = np.ones(n, dtype=bool)
    for _ in range(40):
        noticed = current + 1.0 + rng.random(n) * 5.0
        active &= noticed < paths.close
        if not active.any():
            break
        to_quarter = rng.random(n) < params.slip_to_quarter_end
        new_date = np.where(
            to_quarter,
            calendar.next_quarter_last_day(noticed + 7.0),
            np.floor(noticed + 14.0 + rng.random(n) * 31.0),
        ).astype(np.float64)
        index = np.flatnonzero(active)
        slip_deal.append(index)
        slip_time.append(noticed[index])
        slip_date.append(new_date[index])
        current = np.where(active, new_date, current)

    # Stage entries after the start stage.
    reached = ~np.isnan(paths.entry) & (np.arange(N_STAGES)[None, :] > start_stage[:, None])
    entry_deal, entry_stage = np.nonzero(reached)
    parts_deal = [np.arange(n), entry_deal, *slip_deal, np.arange(n)]
    parts_time = [created, paths.entry[entry_deal, entry_stage], *slip_time, paths.close]
    parts_stage = [
        start_stage,
        entry_stage,
        *[np.full(len(x), -1) for x in slip_deal],
        np.where(paths.won, WON, LOST),
    ]
    parts_date = [
        first_close_date,
        np.full(len(entry_deal), np.nan),
        *slip_date,
        np.floor(paths.close),
    ]
    parts_change = [
        np.full(n, CREATED),
        np.full(len(entry_deal), STAGE_CHANGE),
        *[np.full(len(x), SLIP) for x in slip_deal],
        np.full(n, CLOSED),
    ]
    deal = np.concatenate(parts_deal).astype(np.int64)
    time = np.concatenate(parts_time).astype(np.float64)
    stage = np.concatenate(parts_stage).astype(np.int64)
    close_date = np.concatenate(parts_date).astype(np.float64)
    change = np.concatenate(parts_change).astype(np.int64)
    order = np.lexsort((change == CLOSED, time, deal))
    deal, time, stage, close_date, change = (
        deal[order],
        time[order],
        stage[order],
        close_date[order],
        change[order],
    )

    # Forward-fill stage and expected close date within each deal (its first row is the creation).
    positions = np.arange(len(deal))
    stage_source = np.maximum.accumulate(np.where(stage >= 0, positions, 0))
    stage = stage[stage_source]
    date_source = np.maximum.accumulate(np.where(~np.isnan(close_date), positions, 0))
    close_date = close_date[date_source]

    # Amount: log-revisions accumulate within a deal.
    rows = len(deal)
    # Revisions at stage changes (scope firms up) and at some slips (a late deal gets discounted).
    draw = rng.random(rows)
    revise = ((change == STAGE_CHANGE) & (draw < params.amount_revision_prob)) | (
        (change == SLIP) & (draw < params.amount_revision_prob / 2)
    )
    slip_discount = np.where(change == SLIP, -0.03, 0.0)
    step = np.where(
        revise,
        slip_discount
        + params.amount_revision_q * q[deal]
        + params.amount_revision_sd * rng.standard_normal(rows),
        0.0,
    )
    won_close = (change == CLOSED) & (stage == WON)
    step = np.where(won_close, -0.02 + 0.04 * rng.standard_normal(rows), step)
    cumulative = np.cumsum(step)
    first_row = np.searchsorted(deal, np.arange(n), side="left")
    cumulative -= (cumulative[first_row] - step[first_row])[deal]
    amount = _round_money(amount0[deal] * np.exp(cumulative))
    return History(deal=deal, time=time, stage=stage, amount=amount, close_date=close_date, change=change)
