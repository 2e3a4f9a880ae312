"""Parameters of the synthetic CRM generator (the knobs of the generative story, as config).

Every number that shapes the data lives here, with the reason for its value; the simulation in
`features.generate.world` reads nothing else. The defaults were calibrated by measuring the
generated data (see `features.generate.calibration` and the module docstring of
`features.generate`), not guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STAGES: tuple[str, ...] = ("prospecting", "qualification", "proposal", "negotiation")
"""Open stages in pipeline order; a deal advances through them, then is won (or lost at any stage)."""

WON, LOST = len(STAGES), len(STAGES) + 1
"""Stage codes of the two closed states (after the open stages)."""

DEAL_TYPES: tuple[str, ...] = ("new", "expansion", "renewal")
NEW, EXPANSION, RENEWAL = 0, 1, 2

PRODUCTS: tuple[tuple[str, str, float], ...] = (
    ("starter", "platform", 6_000.0),
    ("pro", "platform", 18_000.0),
    ("enterprise", "platform", 36_000.0),
    ("analytics", "add-on", 9_000.0),
    ("support-plus", "service", 4_000.0),
)
"""(product, series, annual list price per unit) - written as the extension table products.csv."""

SEGMENTS: tuple[str, ...] = ("smb", "mid_market", "enterprise")
LEAD_SOURCES: tuple[str, ...] = ("inbound", "outbound", "referral", "partner", "event")

REGIONS: dict[str, tuple[str, ...]] = {
    "na": ("US", "CA"),
    "emea": ("GB", "DE", "FR", "NL", "SE"),
    "apac": ("AU", "JP", "SG"),
    "latam": ("BR", "MX"),
}
REGION_WEIGHTS: tuple[float, ...] = (0.45, 0.30, 0.15, 0.10)

INDUSTRIES: tuple[str, ...] = (
    "software",
    "retail",
    "manufacturing",
    "healthcare",
    "finance",
    "logistics",
    "education",
    "media",
)


@dataclass(frozen=True)
class GeneratorParams:
    """All parameters of the generative story (see the `features.generate` docstring).

    Attributes are grouped by the part of the story they drive; times are in days unless named
    otherwise, rates are per day per account unless named otherwise.
    """

    # --- calendar
    export_date: str = "2026-10-31"
    history_years: int = 4
    subscription_rows: str = "period"  # "period" (one row per billing term) or "contract"

    # --- reps: ~25 accounts per account executive, teams of up to 6 under a manager
    accounts_per_rep: float = 25.0
    team_size: int = 6
    rep_skill_sd: float = 0.45
    new_rep_penalty: float = 0.5  # q handicap of a fresh hire, decaying with tenure
    new_rep_ramp_days: float = 150.0

    # --- accounts and their latent health (monthly AR(1) around an account-specific mean)
    pre_history_share: float = 0.35  # accounts that already exist when the history starts ...
    legacy_customer_share: float = 0.6  # ... and of those, the share already customers then
    account_growth: float = 1.2  # density of account creation rises by this factor over the history
    health_mean: float = 0.25
    health_mean_sd: float = 0.55
    health_phi: float = 0.85
    health_innovation_sd: float = 0.32

    # --- deal arrivals (Poisson, thinned for seasonality and age since account creation)
    new_rate_per_month: float = 0.15
    new_fresh_boost: float = 2.0  # extra interest right after an account is created ...
    new_fresh_days: float = 120.0  # ... decaying with this time constant
    market_growth_per_year: float = 0.12
    expansion_rate_per_month: float = 0.09
    renewal_lead_days: float = 90.0  # renewal deals open this long before the term ends
    month_seasonality: tuple[float, ...] = (1.1, 1.05, 1.1, 1.0, 1.0, 0.95, 0.85, 0.8, 1.05, 1.1, 1.0, 0.75)

    # --- the deal process: a Markov chain over STAGES with advance probability
    #     a_s(q) = sigmoid(stage_alpha[s] + stage_beta * q); dwell ~ Gamma(dwell_shape, mean * exp(-speed_q q))
    stage_alpha: tuple[float, ...] = (0.15, 0.75, 1.15, 1.6)
    stage_beta: float = 1.05
    dwell_shape: float = 2.0
    dwell_mean_days: tuple[tuple[float, ...], ...] = (
        (16.0, 20.0, 22.0, 15.0),  # new
        (8.0, 12.0, 14.0, 10.0),  # expansion
        (6.0, 14.0, 16.0, 12.0),  # renewal
    )
    speed_q: float = 0.35
    quarter_end_push: float = 0.6  # share of won deals in a quarter's last month pushed to its last days

    # --- latent deal quality q = type base + rep skill + lead source + product + segment (+ health) + noise
    q_base: tuple[float, ...] = (-0.15, 0.55, 1.05)  # new, expansion, renewal
    q_noise_sd: tuple[float, ...] = (0.85, 0.7, 0.55)
    q_lead_source: dict[str, float] = field(
        default_factory=lambda: {
            "inbound": 0.15,
            "outbound": -0.35,
            "referral": 0.45,
            "partner": 0.2,
            "event": -0.1,
        }
    )
    q_product: dict[str, float] = field(
        default_factory=lambda: {
            "starter": 0.15,
            "pro": 0.0,
            "enterprise": -0.25,
            "analytics": 0.1,
            "support-plus": 0.2,
        }
    )
    q_segment: tuple[float, ...] = (0.1, 0.0, -0.15)
    q_health: tuple[float, ...] = (0.0, 0.6, 1.1)  # how much account health enters q, per type
    q_skill_weight: tuple[float, ...] = (1.0, 0.8, 0.35)

    # --- observable consequences of q inside a deal
    amount_revision_prob: float = 0.35
    amount_revision_q: float = 0.05
    amount_revision_sd: float = 0.08
    plan_optimism: float = -0.45  # reps' close-date plans are log-optimistic by this much
    plan_sd: float = 0.3
    slip_to_quarter_end: float = 0.6
    activities_per_week: tuple[float, ...] = (3.5, 2.5, 2.0)
    activity_q: float = 0.45
    # Multiplier of every activity rate (deal activities, CSM and prospecting touches) that leaves
    # deals untouched: benchmarks use it to reach a target activities-per-deal ratio.
    activity_rate: float = 1.0

    # --- customers: contract terms and churn
    term_probs: tuple[tuple[float, ...], ...] = (  # P(term = 1, 12, 24 months) per segment
        (0.45, 0.50, 0.05),
        (0.25, 0.65, 0.10),
        (0.05, 0.70, 0.25),
    )
    auto_renew_prob: float = 0.5  # for annual/biennial terms; month-to-month always auto-renews
    churn_alpha_monthly: float = -1.9  # P(churn at a monthly renewal) = Phi(alpha + beta * h)
    churn_alpha_auto: float = -1.15  # P(cancel an auto-renewing annual term) = Phi(alpha + beta * h)
    churn_beta: float = -0.95
    csm_touches_per_month: float = 3.0
    prospect_touches_per_month: float = 0.6

    # --- usage, tickets and surveys (all driven by health)
    seat_price_per_month: float = 45.0
    ticket_rate_per_month: float = 0.7
    ticket_health: float = -0.7
    nps_response_prob: float = 0.5
    csat_response_prob: float = 0.45

    # --- ground truth Monte-Carlo
    truth_samples: int = 256
