"""The simulation: reps, accounts, health, deals, customers, subscriptions, usage, tickets, surveys.

Everything is vectorised over accounts or deals; the only Python loops run over stages, contract
terms, slips or chunks, never over rows. Times are float days since the calendar's epoch (see
`features.generate.calendar`). `simulate_world` returns output-ready DataFrames (ids as strings,
timestamps as datetime64) except for the two big tables, whose rows are produced chunk by chunk
when written so memory stays bounded at large scales.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import expit, ndtr

from features.generate.calendar import Calendar
from features.generate.deals import (
    CHANGE_NAMES,
    N_STAGES,
    DealPaths,
    History,
    build_history,
    compress_paths,
    push_to_quarter_end,
    simulate_paths,
    win_probability_from_each_stage,
)
from features.generate.params import (
    DEAL_TYPES,
    EXPANSION,
    INDUSTRIES,
    LEAD_SOURCES,
    NEW,
    PRODUCTS,
    REGION_WEIGHTS,
    REGIONS,
    RENEWAL,
    SEGMENTS,
    STAGES,
    GeneratorParams,
)

DAYS_PER_MONTH = 365.25 / 12.0
STAGE_LABELS = np.array([*STAGES, "won", "lost"], dtype=object)
PRODUCT_NAMES = np.array([p[0] for p in PRODUCTS], dtype=object)
LIST_PRICES = np.array([p[2] for p in PRODUCTS])
ACTIVITY_TYPES = np.array(["call", "email", "meeting", "demo", "checkin"], dtype=object)
# P(activity type | stage) for deal activities (call, email, meeting, demo).
TYPE_BY_STAGE = np.array(
    [
        [0.35, 0.60, 0.05, 0.00],
        [0.25, 0.45, 0.15, 0.15],
        [0.20, 0.40, 0.25, 0.15],
        [0.25, 0.45, 0.30, 0.00],
    ]
)
PRIORITIES = np.array(["low", "medium", "high", "urgent"], dtype=object)
CHUNK_DEALS = 20_000
CHUNK_ROWS = 500_000

_FIRST = (
    "Blue",
    "North",
    "Silver",
    "Bright",
    "Iron",
    "Red",
    "Green",
    "Swift",
    "Summit",
    "Harbor",
    "Cedar",
    "Atlas",
)
_SECOND = (
    "Ridge",
    "Wave",
    "Peak",
    "Stone",
    "Field",
    "Bridge",
    "Point",
    "Lake",
    "Forge",
    "Gate",
    "Works",
    "Line",
)
_SUFFIX = ("Inc", "Ltd", "GmbH", "Group", "Labs", "Systems", "Partners", "Co")
_GIVEN = (
    "Ana",
    "Ben",
    "Chloe",
    "David",
    "Emma",
    "Felix",
    "Grace",
    "Hugo",
    "Iris",
    "Jonas",
    "Kai",
    "Lena",
    "Mia",
    "Noah",
)
_FAMILY = (
    "Garcia",
    "Smith",
    "Muller",
    "Rossi",
    "Tanaka",
    "Silva",
    "Nguyen",
    "Kowalski",
    "Dubois",
    "Jensen",
    "Okafor",
)


def format_ids(prefix: str, index: np.ndarray, width: int) -> np.ndarray:
    """String ids like 'a-000123' (object array) for 1-based positions `index + 1`."""
    text = pd.Series(np.asarray(index, dtype=np.int64) + 1).astype(str).str.zfill(width)
    return (prefix + text).to_numpy(dtype=object)


def _work_time(rng: np.random.Generator, days: np.ndarray) -> np.ndarray:
    """Move each time to a working hour (08:00-18:00) of its day."""
    return np.floor(days) + 0.333 + 0.417 * rng.random(len(days))


def _choice(rng: np.random.Generator, probabilities: np.ndarray) -> np.ndarray:
    """One categorical draw per row of a (n, k) probability matrix."""
    cumulative = np.cumsum(probabilities, axis=1)
    cumulative /= cumulative[:, -1:]
    return (rng.random(len(probabilities))[:, None] > cumulative).sum(axis=1)


def _names(rng: np.random.Generator, n: int, parts: tuple[tuple[str, ...], ...]) -> np.ndarray:
    pieces = [np.array(part, dtype=object)[rng.integers(0, len(part), n)] for part in parts]
    result = pieces[0]
    for piece in pieces[1:]:
        result = result + " " + piece
    return result


def _poisson_times(
    rng: np.random.Generator,
    owner: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    rate_max: np.ndarray,
    rate: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Inhomogeneous Poisson arrivals on [lo, hi) per owner by thinning; returns (owner, time) sorted."""
    length = np.maximum(hi - lo, 0.0)
    counts = rng.poisson(rate_max * length)
    who = np.repeat(owner, counts)
    times = np.repeat(lo, counts) + rng.random(len(who)) * np.repeat(length, counts)
    keep = rng.random(len(who)) * np.repeat(rate_max, counts) < rate(who, times)
    who, times = who[keep], times[keep]
    order = np.lexsort((times, who))
    return who[order], times[order]


@dataclass
class DealSet:
    """Deals of one kind before they get ids (arrays of equal length)."""

    account: np.ndarray
    owner: np.ndarray
    type: np.ndarray
    product: np.ndarray
    lead_source: np.ndarray
    created: np.ndarray
    q: np.ndarray
    start_stage: np.ndarray
    dwell_means: np.ndarray
    paths: DealPaths
    amount0: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def subset(self, keep: np.ndarray) -> DealSet:
        """Deals where `keep` is true."""
        return DealSet(
            account=self.account[keep],
            owner=self.owner[keep],
            type=self.type[keep],
            product=self.product[keep],
            lead_source=self.lead_source[keep],
            created=self.created[keep],
            q=self.q[keep],
            start_stage=self.start_stage[keep],
            dwell_means=self.dwell_means[keep],
            paths=DealPaths(
                entry=self.paths.entry[keep],
                close=self.paths.close[keep],
                won=self.paths.won[keep],
                last_stage=self.paths.last_stage[keep],
            ),
            amount0=self.amount0[keep] if len(self.amount0) else self.amount0,
        )


@dataclass
class World:
    """Everything simulated; tables are output-ready, big ones are chunk producers."""

    calendar: Calendar
    tables: dict[str, pd.DataFrame]
    lazy_tables: dict[str, Callable[[], Iterator[pd.DataFrame]]]
    truth: dict[str, pd.DataFrame]
    date_columns: dict[str, tuple[str, ...]]


class _Simulation:
    """Holds the intermediate arrays while the world is simulated step by step."""

    def __init__(self, n_accounts: int, seed: int, scale: float, params: GeneratorParams) -> None:
        if n_accounts < 1:
            raise ValueError(f"n_accounts must be >= 1, got {n_accounts}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if params.subscription_rows not in ("period", "contract"):
            raise ValueError(
                f"subscription_rows must be 'period' or 'contract', got {params.subscription_rows!r}"
            )
        self.n_accounts = n_accounts
        self.seed = seed
        self.scale = scale
        self.p = params
        self.cal = Calendar.build(params.export_date, params.history_years)
        self.cutoff = self.cal.cutoff

    def rng(self, *stream: int) -> np.random.Generator:
        """Independent random stream per simulation step (adding a step never shifts the others)."""
        return np.random.default_rng([self.seed, *stream])

    # ------------------------------------------------------------------ reps and accounts

    def make_reps(self) -> None:
        rng = self.rng(1)
        p = self.p
        n_ae = max(len(REGIONS), round(self.n_accounts / p.accounts_per_rep))
        weights = np.asarray(REGION_WEIGHTS)
        per_region = np.maximum(1, np.floor(weights * n_ae).astype(int))
        per_region[0] += n_ae - per_region.sum()
        per_region = np.maximum(per_region, 1)
        region_of_ae = np.repeat(np.arange(len(REGIONS)), per_region)
        n_ae = len(region_of_ae)
        hired = np.where(
            rng.random(n_ae) < 0.6,
            -rng.random(n_ae) * 5 * 365.0,
            rng.random(n_ae) * (self.cutoff - 90.0),
        )
        # The first rep of each region is in place before the history starts.
        first = np.searchsorted(region_of_ae, np.arange(len(REGIONS)))
        hired[first] = -365.0 - rng.random(len(first)) * 4 * 365.0
        hired = _work_time(rng, hired)
        order = np.lexsort((hired, region_of_ae))
        region_of_ae, hired = region_of_ae[order], hired[order]
        rank_in_region = np.arange(n_ae) - np.searchsorted(region_of_ae, region_of_ae)
        team_in_region = rank_in_region // p.team_size
        team_key = region_of_ae * 1000 + team_in_region
        teams, team_of_ae = np.unique(team_key, return_inverse=True)
        n_managers = len(teams)
        manager_region = teams // 1000
        manager_hired = _work_time(rng, -2 * 365.0 - rng.random(n_managers) * 5 * 365.0)
        region_names = np.array(list(REGIONS), dtype=object)
        team_names = region_names[manager_region] + "-" + (teams % 1000 + 1).astype(str).astype(object)

        n_reps = n_managers + n_ae
        self.rep_ids = format_ids("r-", np.arange(n_reps), 3)
        self.ae_rep = n_managers + np.arange(n_ae)  # rep index of each AE
        self.ae_region = region_of_ae
        self.ae_hired = hired
        self.ae_skill = p.rep_skill_sd * rng.standard_normal(n_ae)
        self.tables_reps = pd.DataFrame(
            {
                "rep_id": self.rep_ids,
                "name": _names(rng, n_reps, (_GIVEN, _FAMILY)),
                "manager_id": np.concatenate(
                    [np.full(n_managers, None, dtype=object), self.rep_ids[team_of_ae]]
                ),
                "team": np.concatenate([team_names, team_names[team_of_ae]]),
                "region": np.concatenate([region_names[manager_region], region_names[region_of_ae]]),
                "hired_at": self.cal.to_datetime(np.concatenate([manager_hired, hired])),
                "role": np.array(["manager"] * n_managers + ["account_executive"] * n_ae, dtype=object),
            }
        )
        self.truth_reps = pd.DataFrame(
            {
                "rep_id": self.rep_ids[self.ae_rep],
                "skill": self.ae_skill,
                "hired_at": self.cal.to_datetime(hired),
            }
        )

    def skill_effect(self, ae: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Rep skill as felt by a deal at time `at` (fresh hires are handicapped while they ramp)."""
        tenure = np.maximum(at - self.ae_hired[ae], 0.0)
        return self.ae_skill[ae] - self.p.new_rep_penalty * np.exp(-tenure / self.p.new_rep_ramp_days)

    def make_accounts(self) -> None:
        rng = self.rng(2)
        p = self.p
        n = self.n_accounts
        pre = rng.random(n) < p.pre_history_share
        span = self.cutoff - 30.0
        # Density rising linearly by `account_growth` over the history: inverse-CDF sampling.
        g = p.account_growth
        u = rng.random(n)
        x = (np.sqrt(1.0 + g * (2.0 + g) * u) - 1.0) / g if g > 0 else u
        created = np.where(pre, -rng.random(n) * 2 * 365.0, x * span)
        created = _work_time(rng, created)
        order = np.argsort(created, kind="stable")
        created = created[order]
        region = _choice(rng, np.tile(np.asarray(REGION_WEIGHTS), (n, 1)))
        countries = [np.array(REGIONS[r], dtype=object) for r in REGIONS]
        country = np.empty(n, dtype=object)
        for r, options in enumerate(countries):
            here = region == r
            country[here] = options[rng.integers(0, len(options), here.sum())]
        employees = np.round(np.exp(rng.normal(np.log(180.0), 1.5, n))).clip(3, 200_000)
        segment = np.where(employees < 200, 0, np.where(employees < 2000, 1, 2))
        annual_revenue = np.round(employees * np.exp(rng.normal(np.log(160_000.0), 0.5, n)), -3)
        industry = rng.integers(0, len(INDUSTRIES), n)

        # Owner: a rep of the account's region already hired when the account appears.
        owner = np.empty(n, dtype=np.int64)
        for r in range(len(REGIONS)):
            aes = np.flatnonzero(self.ae_region == r)
            hired_sorted = self.ae_hired[aes]
            here = np.flatnonzero(region == r)
            eligible = np.maximum(
                np.searchsorted(hired_sorted, np.maximum(created[here], -1.0), side="right"), 1
            )
            owner[here] = aes[np.floor(rng.random(len(here)) * eligible).astype(np.int64)]

        self.acct_created = created
        self.acct_region = region
        self.acct_segment = segment
        self.acct_owner = owner
        self.acct_ids = format_ids("a-", np.arange(n), 6)
        industry_health = rng.normal(0.0, 0.15, len(INDUSTRIES))
        self.health_mean = (
            p.health_mean + industry_health[industry] + p.health_mean_sd * rng.standard_normal(n)
        )
        name = _names(rng, n, (_FIRST, _SECOND, _SUFFIX))
        self.accounts_frame = pd.DataFrame(
            {
                "account_id": self.acct_ids,
                "created_at": self.cal.to_datetime(created),
                "name": name,
                "industry": np.array(INDUSTRIES, dtype=object)[industry],
                "country": country,
                "region": np.array(list(REGIONS), dtype=object)[region],
                "employees": employees.astype(np.int64),
                "annual_revenue": annual_revenue,
                "owner_id": self.rep_ids[self.ae_rep[owner]],
                "segment": np.array(SEGMENTS, dtype=object)[segment],
            }
        )

    def make_health(self) -> None:
        """Monthly AR(1) health per account: h' = mu + phi (h - mu) + sd * noise."""
        rng = self.rng(3)
        p = self.p
        n, months = self.n_accounts, self.cal.n_months
        stationary_sd = p.health_innovation_sd / np.sqrt(1.0 - p.health_phi**2)
        h = np.empty((n, months))
        h[:, 0] = self.health_mean + stationary_sd * rng.standard_normal(n)
        noise = rng.standard_normal((n, months))
        for m in range(1, months):
            h[:, m] = (
                self.health_mean
                + p.health_phi * (h[:, m - 1] - self.health_mean)
                + p.health_innovation_sd * noise[:, m]
            )
        self.health = h

    def health_at(self, account: np.ndarray, days: np.ndarray) -> np.ndarray:
        """Health of each account in the month of each time."""
        return self.health[account, self.cal.month_index(days)]

    # ------------------------------------------------------------------ deals

    def _dwell(self, deal_type: np.ndarray) -> np.ndarray:
        return np.asarray(self.p.dwell_mean_days, dtype=np.float64)[deal_type]

    def _deal_offer(self, rng: np.random.Generator, segment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Product and first quoted amount of a new deal (list price x units, noise and discount)."""
        n = len(segment)
        product_probs = np.array(
            [[0.60, 0.28, 0.02, 0.06, 0.04], [0.20, 0.50, 0.14, 0.10, 0.06], [0.03, 0.30, 0.50, 0.11, 0.06]]
        )
        product = _choice(rng, product_probs[segment])
        units = np.where(segment == 0, 1, 1 + rng.poisson(np.where(segment == 1, 0.4, 0.6)))
        amount = (
            LIST_PRICES[product] * units * np.exp(0.15 * rng.standard_normal(n)) * (1 - 0.15 * rng.random(n))
        )
        return product, amount

    def make_new_deals(self) -> None:
        rng = self.rng(4)
        p = self.p
        season = np.asarray(p.month_seasonality)
        years = self.cutoff / 365.25
        base = p.new_rate_per_month / DAYS_PER_MONTH * self.scale
        rate_max = base * (1.0 + p.new_fresh_boost) * season.max() * (1.0 + p.market_growth_per_year * years)

        def rate(account: np.ndarray, t: np.ndarray) -> np.ndarray:
            age = t - self.acct_created[account]
            fresh = 1.0 + p.new_fresh_boost * np.exp(-age / p.new_fresh_days)
            return (
                base
                * fresh
                * season[self.cal.month_of_year(t)]
                * (1.0 + p.market_growth_per_year * t / 365.25)
            )

        lo = np.maximum(self.acct_created, 0.0)
        account, created = _poisson_times(
            rng,
            np.arange(self.n_accounts),
            lo,
            np.full(self.n_accounts, self.cutoff),
            np.full(self.n_accounts, rate_max),
            rate,
        )
        created = np.clip(_work_time(rng, created), lo[account], None)
        n = len(account)
        segment = self.acct_segment[account]
        product, amount0 = self._deal_offer(rng, segment)
        lead = _choice(rng, np.tile([0.30, 0.30, 0.10, 0.12, 0.18], (n, 1)))
        owner = self.acct_owner[account]
        lead_effect = np.array([p.q_lead_source[s] for s in LEAD_SOURCES])
        product_effect = np.array([p.q_product[name] for name in PRODUCT_NAMES])
        q = (
            p.q_base[NEW]
            + p.q_skill_weight[NEW] * self.skill_effect(owner, created)
            + lead_effect[lead]
            + product_effect[product]
            + np.asarray(p.q_segment)[segment]
            + p.q_noise_sd[NEW] * rng.standard_normal(n)
        )
        deal_type = np.full(n, NEW)
        start = np.zeros(n, dtype=np.int64)
        dwell = self._dwell(deal_type)
        paths = simulate_paths(rng, q, start, created, dwell, p)
        push_to_quarter_end(rng, paths, np.ones(n, dtype=bool), self.cal, p.quarter_end_push)
        self.new = DealSet(
            account=account,
            owner=owner,
            type=deal_type,
            product=product,
            lead_source=np.array(LEAD_SOURCES, dtype=object)[lead],
            created=created,
            q=q,
            start_stage=start,
            dwell_means=dwell,
            paths=paths,
            amount0=amount0,
        )

    def make_customers(self) -> None:
        """Customer since the first won new deal; contract terms; churn decisions and renewal deals."""
        rng = self.rng(5)
        p = self.p
        n = self.n_accounts
        first_win = np.full(n, np.inf)
        won = self.new.paths.won
        np.minimum.at(first_win, self.new.account[won], self.new.paths.close[won])
        # Legacy customers bought before the history starts (their first contract predates the CRM).
        legacy = (self.acct_created < 0) & (rng.random(n) < p.legacy_customer_share)
        legacy_since = np.floor(np.maximum(self.acct_created, -730.0) * rng.random(n))
        first_win = np.where(legacy, np.minimum(first_win, legacy_since), first_win)
        customer = first_win < self.cutoff
        since = np.where(customer, np.floor(first_win), np.inf)
        self.legacy = legacy & (since == legacy_since)
        term_choice = _choice(rng, np.asarray(p.term_probs)[self.acct_segment])
        term = np.array([1, 12, 24])[term_choice]
        auto_renew = (term == 1) | (rng.random(n) < p.auto_renew_prob)
        churn_day = np.full(n, np.inf)
        notice_day = np.full(n, np.inf)  # when a leaving customer made it known (no new deals after)
        horizon = self.cutoff + p.renewal_lead_days + 1.0
        renewal_parts: list[dict[str, np.ndarray]] = []
        alive = customer.copy()
        since_safe = np.where(customer, since, 0.0)
        k = 1
        while True:
            decision = self.cal.add_months(since_safe, k * term).astype(np.float64)
            act = alive & (decision < horizon)
            if not act.any():
                break
            idx = np.flatnonzero(act)
            by_probit = auto_renew[idx]
            h_decision = self.health_at(idx, decision[idx])
            alpha = np.where(term[idx] == 1, p.churn_alpha_monthly, p.churn_alpha_auto)
            churned = by_probit & (rng.random(len(idx)) < ndtr(alpha + p.churn_beta * h_decision))
            # Term ends before the history starts were renewals (legacy customers are customers then).
            in_history = decision[idx] >= 0
            churned &= in_history
            with_deal = ~by_probit & in_history
            renew_idx = idx[with_deal]
            if len(renew_idx):
                part = self._renewal_deals(rng, renew_idx, decision[renew_idx], k)
                renewal_parts.append(part)
                churned[with_deal] = ~part["won"]
                lost = renew_idx[~part["won"]]
                notice_day[lost] = part["close"][~part["won"]]
            churn_day[idx[churned]] = decision[idx[churned]]
            notice_day[idx[churned]] = np.minimum(notice_day[idx[churned]], decision[idx[churned]])
            alive[idx[churned]] = False
            k += 1
        self.customer = customer
        self.since = since
        self.term = term
        self.auto_renew = auto_renew
        self.churn_day = churn_day
        self.notice_day = notice_day
        keys = (
            "account",
            "owner",
            "created",
            "q",
            "q_mean",
            "deadline",
            "k",
            "entry",
            "close",
            "won",
            "last_stage",
        )
        self.renewal_raw = (
            {key: np.concatenate([part[key] for part in renewal_parts]) for key in keys}
            if renewal_parts
            else None
        )

    def _renewal_deals(
        self, rng: np.random.Generator, account: np.ndarray, term_end: np.ndarray, k: int
    ) -> dict:
        p = self.p
        n = len(account)
        created = term_end - p.renewal_lead_days + 0.333 + 0.417 * rng.random(n)
        owner = self.acct_owner[account]
        q_mean = (
            p.q_base[RENEWAL]
            + p.q_skill_weight[RENEWAL] * self.skill_effect(owner, created)
            + np.asarray(p.q_segment)[self.acct_segment[account]]
            + p.q_health[RENEWAL] * self.health_at(account, created)
        )
        q = q_mean + p.q_noise_sd[RENEWAL] * rng.standard_normal(n)
        start = np.ones(n, dtype=np.int64)
        paths = simulate_paths(rng, q, start, created, self._dwell(np.full(n, RENEWAL)), p)
        deadline = term_end - 1.0 - 9.0 * rng.random(n) + 0.5
        compress_paths(paths, created, deadline)
        return {
            "account": account,
            "owner": owner,
            "created": created,
            "q": q,
            "q_mean": q_mean,
            "deadline": term_end,
            "k": np.full(n, k),
            "entry": paths.entry,
            "close": paths.close,
            "won": paths.won,
            "last_stage": paths.last_stage,
        }

    def make_expansions(self) -> None:
        rng = self.rng(6)
        p = self.p
        base = p.expansion_rate_per_month / DAYS_PER_MONTH * self.scale
        customers = np.flatnonzero(self.customer)
        lo = np.maximum(self.since[customers], 0.0)
        hi = np.minimum(self.notice_day[customers], self.cutoff)

        def rate(account: np.ndarray, t: np.ndarray) -> np.ndarray:
            return base * (0.6 + 0.8 * expit(self.health_at(account, t)))

        account, created = _poisson_times(rng, customers, lo, hi, np.full(len(customers), base * 1.4), rate)
        created = np.clip(_work_time(rng, created), self.since[account], None)
        n = len(account)
        segment = self.acct_segment[account]
        product = _choice(rng, np.tile([0.12, 0.25, 0.13, 0.30, 0.20], (n, 1)))
        units = 1 + rng.poisson(0.5 * segment)
        amount0 = 0.5 * LIST_PRICES[product] * units * np.exp(0.2 * rng.standard_normal(n))
        owner = self.acct_owner[account]
        product_effect = np.array([p.q_product[name] for name in PRODUCT_NAMES])
        q = (
            p.q_base[EXPANSION]
            + p.q_skill_weight[EXPANSION] * self.skill_effect(owner, created)
            + product_effect[product]
            + np.asarray(p.q_segment)[segment]
            + p.q_health[EXPANSION] * self.health_at(account, created)
            + p.q_noise_sd[EXPANSION] * rng.standard_normal(n)
        )
        deal_type = np.full(n, EXPANSION)
        start = np.ones(n, dtype=np.int64)
        dwell = self._dwell(deal_type)
        paths = simulate_paths(rng, q, start, created, dwell, p)
        push_to_quarter_end(rng, paths, np.ones(n, dtype=bool), self.cal, p.quarter_end_push)
        self.expansion = DealSet(
            account=account,
            owner=owner,
            type=deal_type,
            product=product,
            lead_source=np.full(n, "account_management", dtype=object),
            created=created,
            q=q,
            start_stage=start,
            dwell_means=dwell,
            paths=paths,
            amount0=amount0,
        )

    def settle_deals(self) -> None:
        """Drop deals a churned account would never have had; build histories; subscription lines."""
        p = self.p
        churn_new = self.churn_day[self.new.account]
        notice_new = self.notice_day[self.new.account]
        self.new = self.new.subset((self.new.created < notice_new) & (self.new.paths.close <= churn_new))
        churn_exp = self.churn_day[self.expansion.account]
        self.expansion = self.expansion.subset(self.expansion.paths.close <= churn_exp)

        rng = self.rng(7)
        first = _concat_deals([self.new, self.expansion])
        history = build_history(
            rng,
            first.paths,
            first.created,
            first.start_stage,
            first.q,
            first.amount0,
            first.dwell_means,
            self.cal,
            p,
        )
        last = history.last_row_index(np.ones(len(history.deal), dtype=bool), len(first.q))
        final_amount = history.amount[last]
        # Subscription lines: every won new or expansion deal, starting the day it closed.
        is_line = first.paths.won & (first.paths.close < self.cutoff + p.renewal_lead_days + 1.0)
        legacy = np.flatnonzero(self.legacy)
        legacy_product, legacy_amount = self._deal_offer(rng, self.acct_segment[legacy])
        line_account = np.concatenate([first.account[is_line], legacy])
        line_start = np.concatenate([np.floor(first.paths.close[is_line]), self.since[legacy]])
        line_mrr = np.round(np.concatenate([final_amount[is_line], _round_money(legacy_amount)]) / 12.0, 2)
        line_product = np.concatenate([first.product[is_line], legacy_product])
        order = np.lexsort((line_start, line_account))
        self.line_account = line_account[order]
        self.line_start = line_start[order]
        self.line_mrr = line_mrr[order]
        self.line_product = line_product[order]

        renewal = self._renewal_dealset()
        if renewal is not None:
            arr_at_creation = 12.0 * self.mrr_at(renewal.account, renewal.created)
            renewal.amount0 = np.maximum(arr_at_creation, 1000.0)
            rng_r = self.rng(8)
            history_r = build_history(
                rng_r,
                renewal.paths,
                renewal.created,
                renewal.start_stage,
                renewal.q,
                renewal.amount0,
                renewal.dwell_means,
                self.cal,
                p,
            )
            deals = _concat_deals([first, renewal])
            history = _concat_histories([history, history_r], [len(first.q), len(renewal.q)])
        else:
            deals = first
        # Ids follow creation order.
        order = np.argsort(deals.created, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        self.deals = deals.subset(order)
        new_deal = rank[history.deal]
        row_order = np.argsort(new_deal, kind="stable")
        self.history = History(
            deal=new_deal[row_order],
            time=history.time[row_order],
            stage=history.stage[row_order],
            amount=history.amount[row_order],
            close_date=history.close_date[row_order],
            change=history.change[row_order],
        )
        self.deal_ids = format_ids("o-", np.arange(len(order)), 7)

    def _renewal_dealset(self) -> DealSet | None:
        raw = self.renewal_raw
        if raw is None:
            return None
        n = len(raw["q"])
        main_product = np.zeros(self.n_accounts, dtype=np.int64)
        first_line = np.searchsorted(self.line_account, np.arange(self.n_accounts))
        has_line = (first_line < len(self.line_account)) & (
            self.line_account[np.minimum(first_line, len(self.line_account) - 1)]
            == np.arange(self.n_accounts)
        )
        main_product[has_line] = self.line_product[first_line[has_line]]
        self.renewal_info = raw
        return DealSet(
            account=raw["account"],
            owner=raw["owner"],
            type=np.full(n, RENEWAL),
            product=main_product[raw["account"]],
            lead_source=np.full(n, "renewal", dtype=object),
            created=raw["created"],
            q=raw["q"],
            start_stage=np.ones(n, dtype=np.int64),
            dwell_means=self._dwell(np.full(n, RENEWAL)),
            paths=DealPaths(
                entry=raw["entry"], close=raw["close"], won=raw["won"], last_stage=raw["last_stage"]
            ),
        )

    def mrr_at(self, account: np.ndarray, days: np.ndarray) -> np.ndarray:
        """Total MRR of the lines an account has started by each day (before any churn)."""
        cumulative = np.cumsum(self.line_mrr)
        key_lines = self.line_account * 1_000_000.0 + self.line_start
        keys = account * 1_000_000.0 + np.floor(days)
        position = np.searchsorted(key_lines, keys, side="right") - 1
        account_first = np.searchsorted(self.line_account, account, side="left")
        valid = (position >= 0) & (position >= account_first)
        safe = np.maximum(position, 0)
        before_first = np.where(account_first > 0, cumulative[np.maximum(account_first - 1, 0)], 0.0)
        return np.where(valid, cumulative[safe] - before_first, 0.0)

    # ------------------------------------------------------------------ tables: opportunities

    def opportunity_tables(self) -> None:
        rng = self.rng(9)
        d, h = self.deals, self.history
        n = len(d.q)
        visible_deal = d.created < self.cutoff
        visible_row = (h.time < self.cutoff) & visible_deal[h.deal]
        last = h.last_row_index(visible_row, n)
        closed = visible_deal & (d.paths.close < self.cutoff)
        won = closed & d.paths.won
        final_stage_lost = d.paths.last_stage
        reasons_won = np.array(["best fit", "price", "relationship", "product capability"], dtype=object)
        reasons_early = np.array(["no response", "not a fit", "no budget"], dtype=object)
        reasons_late = np.array(["lost to competitor", "no decision", "price", "timing"], dtype=object)
        close_reason = np.where(
            won,
            reasons_won[rng.integers(0, len(reasons_won), n)],
            np.where(
                final_stage_lost <= 1,
                reasons_early[rng.integers(0, len(reasons_early), n)],
                reasons_late[rng.integers(0, len(reasons_late), n)],
            ),
        )
        close_reason = np.where(closed, close_reason, None)
        last_entry = np.nanmax(d.paths.entry, axis=1)
        signed = np.maximum(d.paths.close - 2.0 * rng.random(n), last_entry)
        keep = np.flatnonzero(visible_deal)
        li = last[keep]
        self.opportunities = pd.DataFrame(
            {
                "opportunity_id": self.deal_ids[keep],
                "account_id": self.acct_ids[d.account[keep]],
                "created_at": self.cal.to_datetime(d.created[keep]),
                "owner_id": self.rep_ids[self.ae_rep[d.owner[keep]]],
                "product": PRODUCT_NAMES[d.product[keep]],
                "type": np.array(DEAL_TYPES, dtype=object)[d.type[keep]],
                "lead_source": d.lead_source[keep],
                "amount": h.amount[li],
                "expected_close_date": self.cal.to_datetime(h.close_date[li]),
                "stage": STAGE_LABELS[h.stage[li]],
                "closed_at": self.cal.to_datetime(np.where(closed[keep], d.paths.close[keep], np.nan)),
                "outcome": np.where(closed[keep], np.where(won[keep], "won", "lost"), None),
                "won_amount": np.where(won[keep], h.amount[li], np.nan),
                "close_reason": close_reason[keep],
                "contract_signed_at": self.cal.to_datetime(np.where(won[keep], signed[keep], np.nan)),
            }
        )
        self.visible_history_rows = np.flatnonzero(visible_row)
        p_from = win_probability_from_each_stage(d.q, self.p)
        truth = {
            "opportunity_id": self.deal_ids[keep],
            "type": np.array(DEAL_TYPES, dtype=object)[d.type[keep]],
            "quality": d.q[keep],
        }
        for s, stage in enumerate(STAGES):
            truth[f"p_win_from_{stage}"] = p_from[keep, s]
        truth["p_win_at_creation"] = p_from[keep, d.start_stage[keep]]
        truth["simulated_outcome"] = np.where(d.paths.won[keep], "won", "lost")
        truth["simulated_closed_at"] = self.cal.to_datetime(d.paths.close[keep])
        self.truth_opportunities = pd.DataFrame(truth)

    def history_chunks(self) -> Iterator[pd.DataFrame]:
        """opportunity_history rows (visible ones), chunk by chunk."""
        rows = self.visible_history_rows
        h = self.history
        for begin in range(0, len(rows), CHUNK_ROWS):
            r = rows[begin : begin + CHUNK_ROWS]
            yield pd.DataFrame(
                {
                    "opportunity_id": self.deal_ids[h.deal[r]],
                    "changed_at": self.cal.to_datetime(h.time[r]),
                    "stage": STAGE_LABELS[h.stage[r]],
                    "amount": h.amount[r],
                    "expected_close_date": self.cal.to_datetime(h.close_date[r]),
                    "change": np.array(CHANGE_NAMES, dtype=object)[h.change[r]],
                }
            )

    # ------------------------------------------------------------------ subscriptions

    def subscription_table(self) -> None:
        p = self.p
        visible = self.line_start < self.cutoff
        account = self.line_account[visible]
        start = self.line_start[visible]
        mrr = self.line_mrr[visible]
        product = self.line_product[visible]
        churn = self.churn_day[account]
        term = self.term[account]
        since = self.since[account]
        line_id = np.arange(len(account))
        if p.subscription_rows == "contract":
            rows = {
                "account": account,
                "start": start,
                "end": np.where(churn < self.cutoff, churn, np.nan),
                "mrr": mrr,
                "product": product,
                "line": line_id,
            }
        else:
            # Month-to-month lines are evergreen (one row until cancelled); termed lines get one row
            # per billing term, co-termed with the account.
            end_limit = np.where(term == 1, start + 1.0, np.minimum(churn, self.cutoff))
            k0 = self.cal.months_between(since, start) // term
            for _ in range(2):  # day-of-month clipping can put the start one term off the guess
                k0 = np.where(self.cal.add_months(since, (k0 + 1) * term) <= start, k0 + 1, k0)
                k0 = np.where(self.cal.add_months(since, k0 * term) > start, k0 - 1, k0)
            n_max = (self.cal.months_between(start, end_limit) // term + 2).astype(np.int64)
            line_of_row = np.repeat(np.arange(len(account)), n_max)
            j = k0[line_of_row] + (np.arange(len(line_of_row)) - np.repeat(np.cumsum(n_max) - n_max, n_max))
            term_row = term[line_of_row]
            since_row = since[line_of_row]
            begin = self.cal.add_months(since_row, j * term_row).astype(np.float64)
            finish = self.cal.add_months(since_row, (j + 1) * term_row).astype(np.float64)
            row_start = np.maximum(begin, start[line_of_row])
            keep = (begin < end_limit[line_of_row]) & (finish > start[line_of_row])
            evergreen = term[line_of_row] == 1
            row_end = np.where(
                evergreen, np.where(churn[line_of_row] < self.cutoff, churn[line_of_row], np.nan), finish
            )
            row_start = np.where(evergreen, start[line_of_row], row_start)
            rows = {
                "account": account[line_of_row][keep],
                "start": row_start[keep],
                "end": row_end[keep],
                "mrr": mrr[line_of_row][keep],
                "product": product[line_of_row][keep],
                "line": line_of_row[keep],
            }
        order = np.lexsort((rows["start"], rows["line"], rows["account"]))
        rows = {key: value[order] for key, value in rows.items()}
        acct = rows["account"]
        frame = pd.DataFrame(
            {
                "subscription_id": format_ids("s-", np.arange(len(acct)), 6),
                "account_id": self.acct_ids[acct],
                "start_date": self.cal.to_datetime(rows["start"]),
                "mrr": rows["mrr"],
                "end_date": self.cal.to_datetime(rows["end"]),
                "product": PRODUCT_NAMES[rows["product"]],
                "auto_renew": self.auto_renew[acct].astype(np.float64),
                "term_months": self.term[acct],
                "contract_id": format_ids("c-", rows["line"], 6),
            }
        )
        self.subscriptions = frame

    # ------------------------------------------------------------------ usage, tickets, surveys

    def _active_months(self, lo: np.ndarray, hi: np.ndarray, owners: np.ndarray) -> tuple[np.ndarray, ...]:
        """(owner, month index, segment start, segment end) for every month overlapping [lo, hi)."""
        valid = hi > lo
        owners, lo, hi = owners[valid], lo[valid], hi[valid]
        m_lo = self.cal.month_index(lo)
        m_hi = self.cal.month_index(np.maximum(hi - 1e-6, lo))
        counts = m_hi - m_lo + 1
        who = np.repeat(owners, counts)
        month = np.repeat(m_lo, counts) + (
            np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        )
        seg_lo = np.maximum(self.cal.month_starts[month].astype(np.float64), np.repeat(lo, counts))
        next_start = self.cal.month_starts[np.minimum(month + 1, self.cal.n_months - 1)].astype(np.float64)
        seg_hi = np.minimum(next_start, np.repeat(hi, counts))
        return who, month, seg_lo, seg_hi

    def customer_window(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(account, first day as customer, first day no longer visible/active) for customers."""
        customers = np.flatnonzero(self.customer)
        return (
            customers,
            np.maximum(self.since[customers], 0.0),
            np.minimum(self.churn_day[customers], self.cutoff),
        )

    def usage_table(self) -> None:
        rng = self.rng(10)
        customers, lo, hi = self.customer_window()
        epoch_day = self.cal.epoch.astype(np.int64)
        first_monday = lo + ((-(epoch_day + lo.astype(np.int64) + 3)) % 7)
        counts = np.maximum(np.ceil((hi - first_monday) / 7.0), 0).astype(np.int64)
        account = np.repeat(customers, counts)
        offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        date = np.repeat(first_monday, counts) + 7.0 * offset
        seats = np.maximum(1, np.round(self.mrr_at(account, date) / self.p.seat_price_per_month)).astype(
            np.int64
        )
        h = self.health_at(account, date)
        n = len(account)
        active = rng.binomial(seats, expit(0.7 + 1.2 * h + 0.25 * rng.standard_normal(n)))
        seats_used = np.maximum(active, rng.binomial(seats, expit(1.8 + 0.8 * h)))
        events = rng.poisson(active * 38.0 * np.exp(0.25 * h))
        reports = rng.poisson(active * 0.7 * np.exp(0.45 * h))
        self.usage = pd.DataFrame(
            {
                "account_id": self.acct_ids[account],
                "date": self.cal.to_datetime(date),
                "active_users": active,
                "events": events,
                "reports_run": reports,
                "seats_used": seats_used,
            }
        )

    def ticket_and_survey_tables(self) -> None:
        rng = self.rng(11)
        p = self.p
        customers, lo, hi = self.customer_window()
        who, month, seg_lo, seg_hi = self._active_months(lo, hi, customers)
        h_month = self.health[who, month]
        fraction = (seg_hi - seg_lo) / DAYS_PER_MONTH
        seats = np.maximum(1.0, self.mrr_at(who, seg_lo) / p.seat_price_per_month)
        rate = (
            p.ticket_rate_per_month
            * (0.6 + 0.25 * np.log1p(seats / 10.0))
            * np.exp(p.ticket_health * h_month)
        )
        counts = rng.poisson(rate * fraction)
        t_acct = np.repeat(who, counts)
        t_h = np.repeat(h_month, counts)
        opened = np.repeat(seg_lo, counts) + rng.random(len(t_acct)) * np.repeat(seg_hi - seg_lo, counts)
        order = np.argsort(opened, kind="stable")
        t_acct, t_h, opened = t_acct[order], t_h[order], opened[order]
        n = len(t_acct)
        p_high = expit(-1.3 - 0.6 * t_h)
        high = rng.random(n) < p_high
        priority = np.where(high, np.where(rng.random(n) < 0.8, 2, 3), np.where(rng.random(n) < 0.45, 0, 1))
        priority_effect = np.array([0.4, 0.0, -0.6, -1.2])[priority]
        hours = np.exp(np.log(18.0) + priority_effect - 0.2 * t_h + 0.9 * rng.standard_normal(n))
        resolved = opened + hours / 24.0
        first_contact = rng.random(n) < expit(0.2 + 0.6 * t_h - 0.5 * high)
        answered = (rng.random(n) < p.csat_response_prob) & (resolved + 3.0 < self.cutoff)
        responded = resolved + 3.0 * rng.random(n)
        score = np.clip(
            np.round(
                3.7
                + 0.7 * t_h
                + 0.3 * first_contact
                - 0.15 * np.log(hours / 18.0)
                + 0.7 * rng.standard_normal(n)
            ),
            1,
            5,
        )
        ticket_ids = format_ids("t-", np.arange(n), 6)
        self.tickets = pd.DataFrame(
            {
                "ticket_id": ticket_ids,
                "account_id": self.acct_ids[t_acct],
                "opened_at": self.cal.to_datetime(opened),
                "resolved_at": self.cal.to_datetime(np.where(resolved < self.cutoff, resolved, np.nan)),
                "priority": PRIORITIES[priority],
                "csat": np.where(answered, score, np.nan),
                "first_contact_resolved": first_contact.astype(np.float64),
            }
        )
        # NPS: each active month an account answers with probability nps_response_prob / 3 (quarterly-ish).
        asked = rng.random(len(who)) < p.nps_response_prob / 3.0 * np.minimum(fraction, 1.0)
        nps_time = seg_lo[asked] + rng.random(asked.sum()) * (seg_hi[asked] - seg_lo[asked])
        nps = np.clip(np.round(7.0 + 1.9 * h_month[asked] + 1.5 * rng.standard_normal(asked.sum())), 0, 10)
        survey_account = np.concatenate([who[asked], t_acct[answered]])
        survey_time = np.concatenate([nps_time, responded[answered]])
        survey_kind = np.concatenate(
            [np.full(asked.sum(), "nps", dtype=object), np.full(answered.sum(), "csat", dtype=object)]
        )
        survey_score = np.concatenate([nps, score[answered]])
        survey_ticket = np.concatenate([np.full(asked.sum(), None, dtype=object), ticket_ids[answered]])
        order = np.lexsort((survey_kind, survey_time))
        self.surveys = pd.DataFrame(
            {
                "survey_id": format_ids("v-", np.arange(len(order)), 6),
                "account_id": self.acct_ids[survey_account[order]],
                "responded_at": self.cal.to_datetime(survey_time[order]),
                "kind": survey_kind[order],
                "score": survey_score[order],
                "ticket_id": survey_ticket[order],
            }
        )

    # ------------------------------------------------------------------ activities

    def activity_chunks(self) -> Iterator[pd.DataFrame]:
        """Deal activities (chunk by deal block), then account-level CSM and prospecting touches."""
        d = self.deals
        p = self.p
        next_id = 0
        visible = np.flatnonzero(d.created < self.cutoff)
        for chunk_index, begin in enumerate(range(0, len(visible), CHUNK_DEALS)):
            rng = self.rng(100, chunk_index)
            deals = visible[begin : begin + CHUNK_DEALS]
            lo = d.created[deals]
            hi = np.minimum(d.paths.close[deals], self.cutoff)
            per_week = (
                np.asarray(p.activities_per_week)[d.type[deals]]
                * p.activity_rate
                * np.exp(p.activity_q * d.q[deals])
            )
            counts = rng.poisson(per_week / 7.0 * np.maximum(hi - lo, 0.0))
            deal = np.repeat(deals, counts)
            span_lo, span_hi = np.repeat(lo, counts), np.repeat(hi, counts)
            t = span_lo + rng.random(len(deal)) * (span_hi - span_lo)
            shifted = _work_time(rng, t)
            t = np.where((shifted >= span_lo) & (shifted < span_hi), shifted, t)
            entries = d.paths.entry[deal]
            stage = np.where(entries <= t[:, None], np.arange(N_STAGES)[None, :], -1).max(axis=1)
            kind = _choice(rng, TYPE_BY_STAGE[np.maximum(stage, 0)])
            q = d.q[deal]
            frame = self._activity_frame(
                rng, next_id, d.account[deal], t, kind, q, self.deal_ids[deal], d.owner[deal]
            )
            next_id += len(frame)
            yield frame
        # Account-level touches: CSM check-ins for customers, light prospecting for the others.
        rng = self.rng(101)
        customers, lo, hi = self.customer_window()
        who, month, seg_lo, seg_hi = self._active_months(lo, hi, customers)
        counts = rng.poisson(
            p.csm_touches_per_month * self.scale * p.activity_rate * (seg_hi - seg_lo) / DAYS_PER_MONTH
        )
        account = np.repeat(who, counts)
        h = np.repeat(self.health[who, month], counts)
        t = np.repeat(seg_lo, counts) + rng.random(len(account)) * np.repeat(seg_hi - seg_lo, counts)
        kind = _choice(rng, np.tile([0.15, 0.35, 0.0, 0.0, 0.5], (len(account), 1)))
        prospects_lo = np.maximum(self.acct_created, 0.0)
        prospects_hi = np.minimum(np.where(self.customer, self.since, np.inf), self.cutoff)
        pw, _, p_lo, p_hi = self._active_months(prospects_lo, prospects_hi, np.arange(self.n_accounts))
        p_counts = rng.poisson(
            p.prospect_touches_per_month * self.scale * p.activity_rate * (p_hi - p_lo) / DAYS_PER_MONTH
        )
        p_account = np.repeat(pw, p_counts)
        p_t = np.repeat(p_lo, p_counts) + rng.random(len(p_account)) * np.repeat(p_hi - p_lo, p_counts)
        p_kind = _choice(rng, np.tile([0.3, 0.7, 0.0, 0.0, 0.0], (len(p_account), 1)))
        all_account = np.concatenate([account, p_account])
        all_t = np.concatenate([t, p_t])
        all_kind = np.concatenate([kind, p_kind])
        # Health plays the role of q for account-level touches; prospects get a neutral -1.
        all_q = np.concatenate([h, np.full(len(p_account), -1.0)])
        order = np.lexsort((all_t, all_account))
        for begin in range(0, len(order), CHUNK_ROWS):
            rows = order[begin : begin + CHUNK_ROWS]
            frame = self._activity_frame(
                rng,
                next_id,
                all_account[rows],
                all_t[rows],
                all_kind[rows],
                all_q[rows],
                np.full(len(rows), None, dtype=object),
                self.acct_owner[all_account[rows]],
            )
            next_id += len(frame)
            yield frame

    def _activity_frame(
        self,
        rng: np.random.Generator,
        first_id: int,
        account: np.ndarray,
        t: np.ndarray,
        kind: np.ndarray,
        q: np.ndarray,
        opportunity_id: np.ndarray,
        owner: np.ndarray,
    ) -> pd.DataFrame:
        n = len(account)
        inbound = rng.random(n) < np.where(kind == 1, expit(-1.2 + 0.5 * q), np.where(kind == 0, 0.15, 0.0))
        replied = np.where(
            (kind == 1) & ~inbound, (rng.random(n) < expit(-0.2 + 0.8 * q)).astype(np.float64), np.nan
        )
        log_mean = np.select(
            [kind == 0, kind == 2, kind == 3, kind == 4],
            [
                np.log(420.0) + 0.25 * q,
                np.log(1800.0) + 0.1 * q,
                np.full(n, np.log(2700.0)),
                np.log(1500.0) + 0.2 * q,
            ],
            default=0.0,
        )
        sd = np.select([kind == 0, kind == 2, kind == 3, kind == 4], [0.6, 0.35, 0.3, 0.4], default=0.0)
        duration = np.where(kind == 1, np.nan, np.round(np.exp(log_mean + sd * rng.standard_normal(n))))
        return pd.DataFrame(
            {
                "activity_id": format_ids("x-", first_id + np.arange(n), 8),
                "account_id": self.acct_ids[account],
                "occurred_at": self.cal.to_datetime(t),
                "type": ACTIVITY_TYPES[kind],
                "opportunity_id": opportunity_id,
                "duration_s": pd.Series(duration).astype("Int64").array,
                "direction": np.where(inbound, "inbound", "outbound").astype(object),
                "replied": replied,
                "owner_id": self.rep_ids[self.ae_rep[owner]],
            }
        )

    # ------------------------------------------------------------------ quotas

    def quota_table(self) -> None:
        """Quota per AE and quarter: 1.15 x trailing won revenue per owned account x accounts x ramp."""
        q_last = self.cal.quarter_last_days
        q_start = np.concatenate([[q_last[0] - 91], q_last[:-1] + 1])
        in_history = (q_last >= 0) & (q_start < self.cutoff + 92)
        quarters = np.flatnonzero(in_history)
        d = self.deals
        won = d.paths.won & (d.paths.close < self.cutoff)
        won_amount = np.zeros(len(d.q))
        last = self.history.last_row_index(np.ones(len(self.history.deal), dtype=bool), len(d.q))
        won_amount[won] = self.history.amount[last[won]]
        close_quarter = np.searchsorted(q_last, np.floor(d.paths.close), side="left")
        revenue = np.bincount(close_quarter[won], weights=won_amount[won], minlength=len(q_last))
        account_quarters = np.array(
            [(self.acct_created < start).sum() for start in q_start], dtype=np.float64
        )
        observed = np.flatnonzero((q_start >= 0) & (q_last < self.cutoff))
        per_account = np.zeros(len(q_last))
        for qi in range(len(q_last)):
            trailing = observed[(observed < qi) & (observed >= qi - 4)]
            if len(trailing) < 2:
                trailing = observed[:4]
            per_account[qi] = revenue[trailing].sum() / max(account_quarters[trailing].sum(), 1.0)
        n_ae = len(self.ae_rep)
        rep_rows, period_rows, amount_rows = [], [], []
        for qi in quarters:
            starts = q_start[qi]
            hired_quarter = np.searchsorted(q_last, np.floor(self.ae_hired), side="left")
            tenure_q = qi - hired_quarter
            eligible = tenure_q >= 0
            owned = np.bincount(self.acct_owner[self.acct_created < starts + 91], minlength=n_ae).astype(
                np.float64
            )
            ramp = np.minimum((tenure_q + 1) / 4.0, 1.0)
            amount = np.maximum(np.round(1.15 * per_account[qi] * np.maximum(owned, 3.0) * ramp, -3), 5000.0)
            ae = np.flatnonzero(eligible)
            rep_rows.append(ae)
            period_rows.append(np.full(len(ae), qi))
            amount_rows.append(amount[ae])
        rep = np.concatenate(rep_rows)
        period = np.concatenate(period_rows)
        order = np.lexsort((period, rep))
        rep, period, amount = rep[order], period[order], np.concatenate(amount_rows)[order]
        self.quotas = pd.DataFrame(
            {
                "rep_id": self.rep_ids[self.ae_rep[rep]],
                "period_start": self.cal.to_datetime(q_start[period].astype(np.float64)),
                "period_end": self.cal.to_datetime(q_last[period].astype(np.float64)),
                "amount": amount,
            }
        )

    # ------------------------------------------------------------------ accounts (with leakage traps)

    def account_table(self) -> None:
        churned = self.churn_day < self.cutoff
        status = np.where(churned, "churned", np.where(self.customer, "customer", "prospect")).astype(object)
        frame = self.accounts_frame.copy()
        frame["status"] = status
        frame["churned_at"] = self.cal.to_datetime(np.where(churned, self.churn_day, np.nan))
        self.accounts = frame
        self.truth_accounts = pd.DataFrame(
            {
                "account_id": self.acct_ids,
                "health_mean": self.health_mean,
                "customer_since": self.cal.to_datetime(np.where(self.customer, self.since, np.nan)),
                "term_months": np.where(self.customer, self.term, 0),
                "auto_renew": self.auto_renew.astype(np.float64),
                "churned_at": self.cal.to_datetime(
                    np.where(np.isfinite(self.churn_day), self.churn_day, np.nan)
                ),
            }
        )

    # ------------------------------------------------------------------ churn ground truth

    def churn_truth(self) -> None:
        """P(churn label = 1 | latent state at each month start) for every active customer."""
        p = self.p
        rng = self.rng(12)
        customers, lo, hi = self.customer_window()
        month_lo = self.cal.month_index(lo) + 1  # first month start strictly after the customer start...
        month_lo = np.where(self.cal.month_starts[self.cal.month_index(lo)] >= lo, month_lo - 1, month_lo)
        month_lo = np.maximum(month_lo, self.cal.history_start_month)
        month_hi = self.cal.month_index(hi - 1e-6)
        month_hi = np.where(self.cal.month_starts[month_hi] < hi, month_hi, month_hi - 1)
        counts = np.maximum(month_hi - month_lo + 1, 0)
        account = np.repeat(customers, counts)
        month = np.repeat(month_lo, counts) + (
            np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        )
        t0 = self.cal.month_starts[month].astype(np.float64)
        n = len(account)
        probability = np.zeros(n)
        horizon = t0 + 90.0
        term = self.term[account]
        since = self.since[account]
        k0 = np.maximum(self.cal.months_between(since, t0) // term - 1, 1)
        decisions = np.stack(
            [self.cal.add_months(since, (k0 + j) * term).astype(np.float64) for j in range(6)], axis=1
        )
        in_window = (decisions > t0[:, None]) & (decisions <= horizon[:, None])
        offsets = np.clip(self.cal.month_index(decisions) - month[:, None], 0, 4)
        by_probit = self.auto_renew[account]
        alpha = np.where(term == 1, p.churn_alpha_monthly, p.churn_alpha_auto)
        mu = self.health_mean[account]
        h0 = self.health[account, month]
        samples = p.truth_samples
        # Number of in-window term ends falling in each month offset 0..4 after T.
        per_offset = np.zeros((n, 5))
        for j in range(decisions.shape[1]):
            np.add.at(per_offset, (np.arange(n), offsets[:, j]), in_window[:, j])
        hazard_rows = np.flatnonzero(by_probit & in_window.any(axis=1))
        for begin in range(0, len(hazard_rows), 4096):
            rows = hazard_rows[begin : begin + 4096]
            m = len(rows)
            paths = np.empty((m, samples, 5))
            paths[:, :, 0] = h0[rows, None]
            noise = rng.standard_normal((m, samples, 4))
            for step in range(1, 5):
                paths[:, :, step] = (
                    mu[rows, None]
                    + p.health_phi * (paths[:, :, step - 1] - mu[rows, None])
                    + p.health_innovation_sd * noise[:, :, step - 1]
                )
            hazard = ndtr(alpha[rows, None, None] + p.churn_beta * paths)
            log_survive = (per_offset[rows, None, :] * np.log1p(-hazard)).sum(axis=2)
            probability[rows] = 1.0 - np.exp(log_survive).mean(axis=1)
        # Accounts renewing through a renewal deal: at most one term end in the window.
        renewal_rows = np.flatnonzero(~by_probit & in_window.any(axis=1))
        if len(renewal_rows) and self.renewal_raw is not None:
            info = self.renewal_raw
            term_end = decisions[renewal_rows][in_window[renewal_rows]]
            key = info["account"] * 1e7 + info["deadline"]
            order = np.argsort(key)
            found = order[np.searchsorted(key[order], account[renewal_rows] * 1e7 + term_end)]
            t = t0[renewal_rows]
            created = info["created"][found]
            p_from = win_probability_from_each_stage(info["q"][found], p)
            stage_now = np.where(info["entry"][found] <= t[:, None], np.arange(N_STAGES)[None, :], -1).max(
                axis=1
            )
            closed = info["close"][found] <= t
            p_open = 1.0 - p_from[np.arange(len(found)), np.maximum(stage_now, 0)]
            p_closed = (~info["won"][found]).astype(np.float64)
            noise = p.q_noise_sd[RENEWAL] * rng.standard_normal((len(found), samples))
            p_create = win_probability_from_each_stage((info["q_mean"][found][:, None] + noise).ravel(), p)[
                :, 1
            ]
            p_future = 1.0 - p_create.reshape(len(found), samples).mean(axis=1)
            probability[renewal_rows] = np.where(created > t, p_future, np.where(closed, p_closed, p_open))
        churn = self.churn_day[account]
        realized = np.where(
            horizon < self.cutoff, ((churn > t0) & (churn <= horizon)).astype(np.float64), np.nan
        )
        self.truth_churn = pd.DataFrame(
            {
                "account_id": self.acct_ids[account],
                "period_start": self.cal.to_datetime(t0),
                "health": h0,
                "term_months": term,
                "auto_renew": by_probit.astype(np.float64),
                "p_churn_90d": probability,
                "label_churn_90d": realized,
            }
        )


def _round_money(values: np.ndarray) -> np.ndarray:
    return np.round(values / 10.0) * 10.0


def _concat_deals(parts: list[DealSet]) -> DealSet:
    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(part, name) for part in parts])

    return DealSet(
        account=cat("account"),
        owner=cat("owner"),
        type=cat("type"),
        product=cat("product"),
        lead_source=cat("lead_source"),
        created=cat("created"),
        q=cat("q"),
        start_stage=cat("start_stage"),
        dwell_means=cat("dwell_means"),
        paths=DealPaths(
            entry=np.concatenate([part.paths.entry for part in parts]),
            close=np.concatenate([part.paths.close for part in parts]),
            won=np.concatenate([part.paths.won for part in parts]),
            last_stage=np.concatenate([part.paths.last_stage for part in parts]),
        ),
        amount0=cat("amount0"),
    )


def _concat_histories(parts: list[History], sizes: list[int]) -> History:
    offsets = np.cumsum([0, *sizes[:-1]])
    return History(
        deal=np.concatenate([part.deal + offset for part, offset in zip(parts, offsets, strict=True)]),
        time=np.concatenate([part.time for part in parts]),
        stage=np.concatenate([part.stage for part in parts]),
        amount=np.concatenate([part.amount for part in parts]),
        close_date=np.concatenate([part.close_date for part in parts]),
        change=np.concatenate([part.change for part in parts]),
    )


DATE_COLUMNS: dict[str, tuple[str, ...]] = {
    "quotas": ("period_start", "period_end"),
    "opportunities": ("expected_close_date",),
    "opportunity_history": ("expected_close_date",),
    "subscriptions": ("start_date", "end_date"),
    "usage": ("date",),
    "accounts_churn": ("period_start",),
}
"""Timestamp columns written as plain dates (YYYY-MM-DD); every other timestamp is a datetime."""


def simulate_world(n_accounts: int, seed: int, scale: float, params: GeneratorParams) -> World:
    """Run the whole generative story and return the tables (see `features.generate`)."""
    sim = _Simulation(n_accounts, seed, scale, params)
    sim.make_reps()
    sim.make_accounts()
    sim.make_health()
    sim.make_new_deals()
    sim.make_customers()
    sim.make_expansions()
    sim.settle_deals()
    sim.opportunity_tables()
    sim.subscription_table()
    sim.usage_table()
    sim.ticket_and_survey_tables()
    sim.quota_table()
    sim.account_table()
    sim.churn_truth()
    products = pd.DataFrame(
        {
            "product": PRODUCT_NAMES,
            "series": np.array([p[1] for p in PRODUCTS], dtype=object),
            "list_price": LIST_PRICES,
        }
    )
    tables = {
        "accounts": sim.accounts,
        "reps": sim.tables_reps,
        "quotas": sim.quotas,
        "products": products,
        "opportunities": sim.opportunities,
        "subscriptions": sim.subscriptions,
        "usage": sim.usage,
        "tickets": sim.tickets,
        "surveys": sim.surveys,
    }
    lazy = {"opportunity_history": sim.history_chunks, "activities": sim.activity_chunks}
    truth = {
        "opportunities": sim.truth_opportunities,
        "accounts_churn": sim.truth_churn,
        "accounts": sim.truth_accounts,
        "reps": sim.truth_reps,
    }
    return World(calendar=sim.cal, tables=tables, lazy_tables=lazy, truth=truth, date_columns=DATE_COLUMNS)
