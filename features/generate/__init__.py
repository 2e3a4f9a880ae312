"""Realistic synthetic CRM: every contract table, a known ground truth, and reproducible bytes.

`generate_crm(out_dir, n_accounts, seed, scale, fmt)` writes one file per contract table (plus the
extension table `products`) and a `truth/` folder that no feature may read. Same arguments, same
bytes. Everything is vectorised numpy/pandas; the two big tables (opportunity_history,
activities) are produced and written chunk by chunk, so memory stays bounded at large `scale`.

The generative story (why the data looks the way it does)
---------------------------------------------------------
Time runs from the first day of the month after the export date minus `history_years` (default:
2022-11-01) to the export date (default 2026-10-31). Nothing dated after the export is written;
deals still open then have empty closed_at/outcome.

Reps. About one account executive per 25 accounts, spread over four regions, in teams of up to six
under a manager (managers are rows of `reps` too, `role` = manager). Most reps predate the history,
some are hired during it. Each AE has a latent *skill* (truth/reps.csv) and a fresh hire is handicapped
while ramping; skill is never a column but shows in each rep's track record. Quotas per AE and quarter
are 1.15 x the trailing four quarters' won revenue per account x the accounts the rep owns, ramped
over a new rep's first year - so attainment averages a little under 100 %.

Accounts. Firmographics (industry, country -> region, employees -> segment, annual revenue) and a
fake company `name` (PII). A quarter of the accounts exist before the history starts; the rest are
created at a rate that grows over time. Each account has a latent *health* h: a monthly AR(1)
process around an account-specific mean (phi 0.85). Health is the one hidden cause behind usage,
support tickets, survey answers, expansion appetite and churn.

Deals. `new` deals arrive as an inhomogeneous Poisson process per account (more interest right after
the account appears, month-of-year seasonality, market growth); `expansion` deals arrive for
customers at a rate rising with health; `renewal` deals open 90 days before the end of every annual
or biennial term that does not auto-renew. Each deal has a latent quality
q = type base + rep skill + lead source + product + segment (+ health for expansion and renewal) + noise.
A deal moves through prospecting -> qualification -> proposal -> negotiation as a Markov chain: in
stage s it waits a Gamma dwell time whose mean shrinks with q, then advances with probability
a_s(q) = sigmoid(alpha_s + beta q) or is lost. Because the decision ignores the elapsed time,
P(win | stage s, q) = prod_{k>=s} a_k(q) exactly: truth/opportunities.csv holds q, that probability
from every stage (`p_win_from_<stage>`) and from the creation stage (`p_win_at_creation`), and the
simulated future (`simulated_outcome`, `simulated_closed_at`) of deals still open at the export.
What a model can observe of q: activity intensity (calls/emails/meetings/demos per week grow with
q; reply rates and inbound share too), stage speed, the rep's track record, lead source, product,
segment, and the history rows. The rep's first expected close date is an optimistic plan snapped to
a month or quarter end; each time it passes with the deal still open it slips (60 % to the next
quarter end), so slow (weak) deals slip more. Amounts are revised at stage changes (up for good
deals, down for weak ones) and trimmed slightly at the win. Over half of the negotiation decisions
(wins and losses alike, so waiting says nothing about the outcome) due in a quarter's last month are
held until its last days: wins pile up at quarter ends. Renewal deals are
compressed to close before the term ends.

Customers and churn. An account becomes a customer when its first new deal is won (60 % of the
accounts that predate the history are already customers then, with a contract the CRM never saw
as a deal; their term ends before the history starts were renewals). It picks a term
(month-to-month, 12 or 24 months; smaller firms prefer monthly) and, for annual terms, auto-renew
(50 %). Every won new or expansion deal becomes a subscription line (MRR = won amount / 12) that is
co-termed with the account. The account can only leave at a term end: monthly and auto-renewing
accounts leave with probability Phi(alpha + beta h) at each term end (alpha lower for auto-renew),
non-auto-renewing ones leave exactly when their renewal deal is lost. A leaving customer creates no
deal after its notice (the lost renewal, or the term end itself), and deals that would close after
it has left are dropped; all its lines end at the term end.
`subscription_rows="period"` writes one row per line and billing term, co-termed with the account
(a renewal is a new row starting when the previous ends; extra columns `contract_id`,
`term_months`); month-to-month lines are evergreen - one row until cancelled - because a row per
month would make the contract's churn label ("every subscription active at T ended by T + 90 with
no restart") look only at the next month end. `"contract"` writes one row per line with end_date
empty while active. Both shapes give the same churn labels.
Health shows up before churn: weekly usage (active_users, events, reports_run, seats_used) falls
with h; tickets arrive faster, more urgent and less often first-contact-resolved when h is low; NPS
answers (about one a quarter) and post-ticket CSAT scores rise with h; CSM check-ins get fewer
replies. truth/accounts_churn.csv gives, for every account active at each month start T, the
probability that the churn label (all subscriptions active at T ended by T + 90 days, none restarting
within 30 days) is 1 *given the latent state at T* (h_T, the account's health mean, term,
auto-renew, the renewal deal's quality and stage at T). It is computed by Monte-Carlo over the
account's future: `truth_samples` (256) health paths are drawn from the AR(1) starting at h_T and the
churn hazard of every term end in (T, T + 90] is averaged over them; for renewal-deal accounts the
probability is 1 - P(win from the deal's stage at T | q) (exactly, or averaged over q's noise when
the deal opens later that day; 0/1 once the deal has closed). `label_churn_90d` is the label realised
in the simulation (empty when T + 90 is after the export): "the account's subscriptions all end in
(T, T + 90]". It equals the contract's label computed from the subscriptions table except when an
expansion line starts after T and before the account leaves (counted as a restart by the contract's
definition); that happens in well under 1 % of snapshots (checked by the tests).

Leakage traps. Columns filled only at or after an outcome - `opportunities.close_reason`,
`opportunities.contract_signed_at`, `accounts.status`, `accounts.churned_at` - plus the
current-state columns of opportunities. A correct feature pipeline never reads them.

Calibration (measured at 600 accounts, the default until session 6 (now 800), seed 7; seeds 1 and 2 in brackets). Oracle win
AUC over weekly snapshots of open deals in the last year (stage at T from history, outcome known):
0.877 [0.877, 0.886]; LightGBM on the project's as-of features, trained out of time, reaches 0.836
on the same year (churn: 0.854 vs the oracle's 0.947 on monthly snapshots). Churn base rate per monthly snapshot of active accounts: 4.5 % [5.4, 5.4] with a
mean oracle probability of 4.4 % [5.0, 5.2]; oracle churn AUC 0.945 [0.952, 0.958]. Won deals per
quarter: about 107 (rising from ~60 to ~160), about 300 closes per quarter; a trend + quarter-of-year
fit of log quarterly won revenue leaves a residual sd of 0.10 [0.12, 0.12]. Reproduce with
`features.generate.calibration.calibration_report(load_tables(out)[0], read_truth(out))`.

Scale. `scale` multiplies the deal arrival rates (new and expansion) and account-level touches per
account, so opportunities, their history and activities grow about linearly; renewals (one per term)
and usage/tickets/surveys (one account's life) do not.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from features.generate.params import GeneratorParams
from features.generate.world import simulate_world
from features.generate.write import write_table

__all__ = ["GeneratorParams", "generate_crm", "TABLE_ORDER"]

TABLE_ORDER: tuple[str, ...] = (
    "accounts",
    "reps",
    "quotas",
    "products",
    "opportunities",
    "opportunity_history",
    "activities",
    "subscriptions",
    "usage",
    "tickets",
    "surveys",
)
"""Tables written (every table of the contract plus the `products` extension table)."""


def generate_crm(
    out_dir: str | Path,
    n_accounts: int = 800,
    seed: int = 7,
    scale: float = 1.0,
    fmt: str = "csv",
    *,
    subscription_rows: str = "period",
    export_date: str = "2026-10-31",
    activity_rate: float | None = None,
    params: GeneratorParams | None = None,
) -> dict[str, Any]:
    """Write a synthetic CRM dataset and its ground truth to `out_dir`.

    Args:
        out_dir: Directory to write `<table>.<fmt>` files and `truth/*.csv` into (created).
        n_accounts: Number of accounts.
        seed: Random seed; the same arguments give byte-identical files.
        scale: Multiplier of deal and touch volume per account (see the module docstring).
        fmt: ``"csv"`` or ``"parquet"`` (truth/ is always CSV).
        subscription_rows: ``"period"`` (one row per billing term) or ``"contract"``.
        export_date: Last day of the data (ISO date).
        activity_rate: Multiplier of activity density per deal and per account (deal activities,
            CSM and prospecting touches); deals and every other table are unchanged. ``None``
            keeps the value in `params` (default 1.0).
        params: Full parameter set; `subscription_rows`, `export_date` and `activity_rate`
            override its fields.

    Returns:
        Summary: ``rows`` (table -> rows written), ``truth_rows``, ``out_dir``, ``format``,
        ``export_date``, ``seconds``.

    Raises:
        ValueError: an argument is out of range.
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"fmt must be 'csv' or 'parquet', got {fmt!r}")
    started = time.perf_counter()
    base = params or GeneratorParams()
    params = dataclasses.replace(base, subscription_rows=subscription_rows, export_date=export_date)
    if activity_rate is not None:
        if not activity_rate > 0:
            raise ValueError(f"activity_rate must be > 0, got {activity_rate}")
        params = dataclasses.replace(params, activity_rate=float(activity_rate))
    world = simulate_world(int(n_accounts), int(seed), float(scale), params)

    out = Path(out_dir)
    truth_dir = out / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    for name in TABLE_ORDER:  # a stale file of the other format would make the dataset ambiguous
        for suffix in ("csv", "parquet"):
            (out / f"{name}.{suffix}").unlink(missing_ok=True)
    rows: dict[str, int] = {}
    for name in TABLE_ORDER:
        source = world.tables[name] if name in world.tables else world.lazy_tables[name]()
        rows[name] = write_table(out, name, source, fmt, world.date_columns.get(name, ()))
    truth_rows = {
        name: write_table(truth_dir, name, frame, "csv", world.date_columns.get(name, ()))
        for name, frame in world.truth.items()
    }
    return {
        "rows": rows,
        "truth_rows": truth_rows,
        "out_dir": str(out),
        "format": fmt,
        "export_date": export_date,
        "seconds": round(time.perf_counter() - started, 2),
    }
