"""Importer for the Maven Analytics "CRM + Sales + Opportunities" export.

Input files (CRLF line endings are fine): ``sales_pipeline.csv``, ``accounts.csv``,
``products.csv``, ``sales_teams.csv``. Output: canonical ``reps``, ``accounts``, ``products``
(extension table), ``opportunities`` and a synthesised ``opportunity_history``.

Mapping and the choices made where the export is incomplete:

- reps: one row per ``sales_agent`` in sales_teams.csv (plus any agent only seen in the pipeline);
  ``rep_id`` is a slug of the name, ``manager_id`` the slug of the manager, ``team`` the manager's
  name and ``region`` the regional office. Managers are not reps (they own no deals).
- accounts: ``account_id`` is a slug of the name; ``sector`` -> ``industry`` (obvious typos fixed,
  reported), ``revenue`` (millions of USD) -> ``annual_revenue`` in USD, ``employees``,
  ``office_location`` -> ``country`` (typos fixed, reported), ``year_established`` -> ``created_at``
  on 1 January of that year, moved back to the account's first deal when a deal predates it
  (reported). ``subsidiary_of`` -> extra column ``parent_account_id``; ``year_established`` kept.
- deals without an account (all open in the real export) are kept and attached to one placeholder
  account ``unassigned`` (extra column ``is_placeholder`` = 1), created at its first deal.
- opportunities: ``engage_date`` -> ``created_at``; ``stage`` = lower-case ``deal_stage``;
  ``outcome`` = won/lost for closed deals, ``closed_at`` = ``close_date`` for closed deals,
  ``won_amount`` = ``close_value`` for won deals (lost deals' 0 is not an amount). Maven has no
  expected amount, so ``amount`` is the product's list price (products.csv ``sales_price``). Deal
  product names are matched to products.csv ignoring case and spaces (``GTXPro`` -> ``GTX Pro``).
- deals without ``engage_date`` (the 500 Prospecting deals) are open pipeline: they are kept with
  ``created_at`` = the export date (latest date in the pipeline; a closed deal would use its
  close date instead) and extra column ``created_at_imputed`` = 1, so that no snapshot before the
  export ever sees them.
- opportunity_history holds only dated facts: ``engage_date`` -> stage ``engaging`` (amount = list
  price), ``close_date`` -> stage ``won``/``lost`` (amount = won value for won deals). Deals with
  an imputed creation date get no history row.

Every pipeline row is either imported or listed in the report with its reason.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from features.data import DataValidationError, Tables, ValidationReport, validate_tables

SOURCE_FILES: dict[str, tuple[str, ...]] = {
    "sales_pipeline.csv": (
        "opportunity_id",
        "sales_agent",
        "product",
        "account",
        "deal_stage",
        "engage_date",
        "close_date",
        "close_value",
    ),
    "accounts.csv": ("account", "sector", "year_established", "revenue", "employees", "office_location"),
    "products.csv": ("product", "series", "sales_price"),
    "sales_teams.csv": ("sales_agent", "manager", "regional_office"),
}

#: Misspellings seen in the export, fixed on import (and reported).
SECTOR_FIXES: dict[str, str] = {"technolgy": "technology"}
COUNTRY_FIXES: dict[str, str] = {"Philipines": "Philippines"}

PLACEHOLDER_ACCOUNT_ID = "unassigned"
PLACEHOLDER_ACCOUNT_NAME = "(deals without an account in the export)"
KNOWN_STAGES: tuple[str, ...] = ("prospecting", "engaging", "won", "lost")
CLOSED_STAGES: tuple[str, ...] = ("won", "lost")
REVENUE_UNIT = 1_000_000.0  # accounts.csv revenue is in millions of USD
SAMPLE_SIZE = 5


@dataclass
class SkippedRows:
    """Source rows that were not imported, with the reason."""

    table: str
    reason: str
    count: int
    sample_ids: list[str]


@dataclass
class ImportReport:
    """What an import mapped, which choices it made, and what it skipped and why.

    Attributes:
        source: Export kind (``maven``).
        src_dir: Directory read.
        rows_read: Rows per source file.
        rows_written: Rows per canonical table.
        mapping: One line per source -> canonical mapping.
        choices: One line per data decision taken (imputations, fixes, placeholders) with counts.
        skipped: Source rows not imported, with reasons.
        opportunities_in: Deals in the export.
        opportunities_imported: Deals in the canonical opportunities table.
        validation: The contract validation of the produced tables.
    """

    source: str
    src_dir: str
    rows_read: dict[str, int] = field(default_factory=dict)
    rows_written: dict[str, int] = field(default_factory=dict)
    mapping: list[str] = field(default_factory=list)
    choices: list[str] = field(default_factory=list)
    skipped: list[SkippedRows] = field(default_factory=list)
    opportunities_in: int = 0
    opportunities_imported: int = 0
    validation: ValidationReport | None = None

    @property
    def opportunities_skipped(self) -> int:
        """Deals not imported (sum over the skip reasons of the opportunities table)."""
        return sum(item.count for item in self.skipped if item.table == "opportunities")

    def summary_lines(self) -> list[str]:
        """Human-readable report."""
        lines = [f"import {self.source} from {self.src_dir}"]
        lines.append("read: " + ", ".join(f"{name} {count:,}" for name, count in self.rows_read.items()))
        lines.append("mapping:")
        lines.extend(f"  - {line}" for line in self.mapping)
        lines.append("choices:")
        lines.extend(f"  - {line}" for line in self.choices)
        lines.append(
            f"opportunities: {self.opportunities_in:,} in export = {self.opportunities_imported:,} imported"
            f" + {self.opportunities_skipped:,} skipped"
        )
        if self.skipped:
            lines.append("skipped:")
            for item in self.skipped:
                sample = ", ".join(item.sample_ids)
                lines.append(f"  - {item.table}: {item.count:,} rows: {item.reason} (e.g. {sample})")
        lines.append(
            "written: " + ", ".join(f"{name} {count:,}" for name, count in self.rows_written.items())
        )
        if self.validation is not None:
            problems = len(self.validation.skipped)
            lines.append(
                "contract validation: clean"
                if problems == 0
                else f"contract validation: {problems} warning(s)"
            )
            if problems:
                lines.extend(f"  - {issue.message}" for issue in self.validation.skipped)
        return lines

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        result = asdict(self)
        result["validation"] = self.validation.to_dict() if self.validation is not None else None
        result["opportunities_skipped"] = self.opportunities_skipped
        return result


def slugify(name: str) -> str:
    """Stable id from a name: lower-case, runs of non-alphanumerics -> '-', trimmed."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _product_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", name.lower())


def _read_source(src_dir: Path, file_name: str) -> pd.DataFrame:
    path = src_dir / file_name
    if not path.is_file():
        raise FileNotFoundError(f"maven export: {file_name} not found in {src_dir}")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig")
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [column for column in SOURCE_FILES[file_name] if column not in frame.columns]
    if missing:
        raise DataValidationError(
            f"{file_name}: missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}"
            f" (found: {', '.join(frame.columns)})"
        )
    for column in frame.columns:
        text = frame[column].str.strip()
        frame[column] = text.mask(text == "")
    return frame


def _unique_slugs(names: pd.Series, what: str, choices: list[str]) -> dict[str, str]:
    """Map each distinct name to a slug, suffixing -2, -3 ... on collisions (reported)."""
    mapping: dict[str, str] = {}
    used: set[str] = set()
    for name in names.dropna().unique():
        slug = slugify(name) or what
        candidate, counter = slug, 2
        while candidate in used:
            candidate = f"{slug}-{counter}"
            counter += 1
        if candidate != slug:
            choices.append(f"{what} '{name}' gets id '{candidate}' ('{slug}' was taken by another name)")
        used.add(candidate)
        mapping[name] = candidate
    return mapping


def _sample(ids: pd.Series) -> list[str]:
    return [str(value) for value in ids.head(SAMPLE_SIZE)]


def import_maven(src_dir: str | Path) -> tuple[Tables, ImportReport]:
    """Turn a Maven "CRM + Sales + Opportunities" export into validated canonical tables.

    Args:
        src_dir: Directory holding the export's CSV files.

    Returns:
        Canonical tables (reps, accounts, products, opportunities, opportunity_history) and a
        report of the mapping, the choices made and every skipped row with its reason.

    Raises:
        FileNotFoundError: a source file is missing.
        DataValidationError: a source file lacks a needed column, or the result is not
            contract-clean.
    """
    src_dir = Path(src_dir)
    report = ImportReport(source="maven", src_dir=str(src_dir))
    pipeline = _read_source(src_dir, "sales_pipeline.csv")
    accounts_src = _read_source(src_dir, "accounts.csv")
    products_src = _read_source(src_dir, "products.csv")
    teams_src = _read_source(src_dir, "sales_teams.csv")
    report.rows_read = {
        "sales_pipeline.csv": len(pipeline),
        "accounts.csv": len(accounts_src),
        "products.csv": len(products_src),
        "sales_teams.csv": len(teams_src),
    }
    report.opportunities_in = len(pipeline)
    choices = report.choices

    # ------------------------------------------------------------------ deals: row-level checks
    deals = pipeline.copy()
    deals["stage"] = deals["deal_stage"].str.lower()
    engage = pd.to_datetime(deals["engage_date"], format="ISO8601", errors="coerce")
    close = pd.to_datetime(deals["close_date"], format="ISO8601", errors="coerce")
    close_value = pd.to_numeric(deals["close_value"], errors="coerce")
    is_closed = deals["stage"].isin(CLOSED_STAGES)
    skip_rules: list[tuple[str, pd.Series]] = [
        ("missing opportunity_id", deals["opportunity_id"].isna()),
        (
            "duplicate opportunity_id (first occurrence kept)",
            deals["opportunity_id"].notna() & deals["opportunity_id"].duplicated(keep="first"),
        ),
        (
            f"deal_stage not one of {', '.join(s.title() for s in KNOWN_STAGES)}",
            ~deals["stage"].isin(KNOWN_STAGES),
        ),
        ("engage_date is not a YYYY-MM-DD date", deals["engage_date"].notna() & engage.isna()),
        ("close_date is not a YYYY-MM-DD date", deals["close_date"].notna() & close.isna()),
        ("Won/Lost deal without close_date", is_closed & deals["close_date"].isna()),
        ("close_date before engage_date", close.notna() & engage.notna() & (close < engage)),
    ]
    keep = pd.Series(True, index=deals.index)
    for reason, mask in skip_rules:
        newly = mask & keep
        if newly.any():
            report.skipped.append(
                SkippedRows(
                    "opportunities", reason, int(newly.sum()), _sample(deals.loc[newly, "opportunity_id"])
                )
            )
        keep &= ~mask
    deals, engage, close, close_value, is_closed = (
        deals[keep],
        engage[keep],
        close[keep],
        close_value[keep],
        is_closed[keep],
    )

    # ------------------------------------------------------------------ products
    products = pd.DataFrame(
        {
            "product": products_src["product"],
            "list_price": pd.to_numeric(products_src["sales_price"], errors="coerce"),
            "series": products_src["series"],
        }
    )
    canonical_product = {_product_key(name): name for name in products["product"].dropna()}
    deal_product = deals["product"].map(lambda name: canonical_product.get(_product_key(name), name))
    renamed = deals["product"].notna() & (deal_product != deals["product"])
    for (old, new), count in (
        deals[renamed].assign(new=deal_product[renamed]).groupby(["product", "new"]).size().items()
    ):
        choices.append(
            f"product '{old}' in sales_pipeline.csv is '{new}' in products.csv: {count:,} deals renamed"
        )
    unknown_products = deal_product.notna() & ~deal_product.isin(products["product"])
    if unknown_products.any():
        choices.append(
            f"{int(unknown_products.sum()):,} deals name a product missing from products.csv "
            f"({', '.join(sorted(deal_product[unknown_products].unique())[:SAMPLE_SIZE])}): amount left empty"
        )
    list_price = deal_product.map(products.set_index("product")["list_price"].to_dict())

    # ------------------------------------------------------------------ dates and imputations
    export_date = max(engage.max(), close.max())
    imputed = engage.isna()
    created_at = engage.where(~imputed, close.where(close.notna(), export_date))
    n_imputed_open = int((imputed & ~is_closed).sum())
    n_imputed_closed = int((imputed & is_closed).sum())
    if n_imputed_open:
        stages = ", ".join(
            f"{s} {n:,}" for s, n in deals.loc[imputed & ~is_closed, "stage"].value_counts().items()
        )
        choices.append(
            f"{n_imputed_open:,} open deals have no engage_date ({stages}): kept as open pipeline with "
            f"created_at = export date {export_date.date()} and created_at_imputed = 1"
        )
    if n_imputed_closed:
        choices.append(
            f"{n_imputed_closed:,} closed deals have no engage_date: created_at = close_date, created_at_imputed = 1"
        )

    # ------------------------------------------------------------------ accounts
    account_ids = _unique_slugs(pd.concat([accounts_src["account"], deals["account"]]), "account", choices)
    if PLACEHOLDER_ACCOUNT_ID in account_ids.values():
        raise DataValidationError(
            f"accounts.csv: an account's id collides with the placeholder id '{PLACEHOLDER_ACCOUNT_ID}'"
        )
    sector = accounts_src["sector"].str.lower()
    for wrong, right in SECTOR_FIXES.items():
        count = int((sector == wrong).sum())
        if count:
            choices.append(
                f"sector '{wrong}' corrected to '{right}' ({count} account{'s' if count != 1 else ''})"
            )
    sector = sector.replace(SECTOR_FIXES)
    country = accounts_src["office_location"]
    for wrong, right in COUNTRY_FIXES.items():
        count = int((country == wrong).sum())
        if count:
            choices.append(
                f"office_location '{wrong}' corrected to '{right}' ({count} account{'s' if count != 1 else ''})"
            )
    country = country.replace(COUNTRY_FIXES)
    year = pd.to_numeric(accounts_src["year_established"], errors="coerce")
    established = pd.to_datetime(year.astype("Int64").astype("string") + "-01-01", errors="coerce")
    accounts = pd.DataFrame(
        {
            "account_id": accounts_src["account"].map(account_ids),
            "created_at": established,
            "name": accounts_src["account"],
            "industry": sector,
            "country": country,
            "employees": pd.to_numeric(accounts_src["employees"], errors="coerce"),
            "annual_revenue": pd.to_numeric(accounts_src["revenue"], errors="coerce") * REVENUE_UNIT,
            "year_established": year,
            "parent_account_id": accounts_src["subsidiary_of"].map(account_ids)
            if "subsidiary_of" in accounts_src
            else None,
            "is_placeholder": 0.0,
        }
    )
    deal_account = deals["account"].map(account_ids)
    first_deal = created_at.groupby(deal_account).min()
    # Accounts named by deals but absent from accounts.csv get a minimal row (reported).
    unknown_accounts = sorted(set(deal_account.dropna()) - set(accounts["account_id"]))
    if unknown_accounts:
        names = {slug: name for name, slug in account_ids.items()}
        accounts = pd.concat(
            [
                accounts,
                pd.DataFrame(
                    {
                        "account_id": unknown_accounts,
                        "created_at": [first_deal[a] for a in unknown_accounts],
                        "name": [names[a] for a in unknown_accounts],
                        "is_placeholder": 0.0,
                    }
                ),
            ],
            ignore_index=True,
        )
        choices.append(
            f"{len(unknown_accounts)} accounts named in sales_pipeline.csv are missing from accounts.csv: "
            f"added with only a name, created at their first deal ({', '.join(unknown_accounts[:SAMPLE_SIZE])})"
        )
    # An account cannot be created after its own deals: move created_at back to the first deal.
    account_first_deal = accounts["account_id"].map(first_deal)
    too_late = account_first_deal.notna() & (
        accounts["created_at"].isna() | (account_first_deal < accounts["created_at"])
    )
    if too_late.any():
        affected = ", ".join(accounts.loc[too_late, "name"].head(SAMPLE_SIZE))
        choices.append(
            f"{int(too_late.sum())} account(s) have deals before 1 January of year_established (or no year): "
            f"created_at moved back to their first deal ({affected})"
        )
        accounts.loc[too_late, "created_at"] = account_first_deal[too_late]
    no_account = deals["account"].isna()
    if no_account.any():
        stages = ", ".join(f"{s} {n:,}" for s, n in deals.loc[no_account, "stage"].value_counts().items())
        placeholder_created = created_at[no_account].min()
        accounts = pd.concat(
            [
                accounts,
                pd.DataFrame(
                    {
                        "account_id": [PLACEHOLDER_ACCOUNT_ID],
                        "created_at": [placeholder_created],
                        "name": [PLACEHOLDER_ACCOUNT_NAME],
                        "is_placeholder": [1.0],
                    }
                ),
            ],
            ignore_index=True,
        )
        deal_account = deal_account.where(~no_account, PLACEHOLDER_ACCOUNT_ID)
        choices.append(
            f"{int(no_account.sum()):,} deals have no account ({stages}): kept, attached to placeholder account "
            f"'{PLACEHOLDER_ACCOUNT_ID}' (is_placeholder = 1, created_at {placeholder_created.date()})"
        )

    # ------------------------------------------------------------------ reps
    agents = pd.concat([teams_src["sales_agent"], deals["sales_agent"]]).dropna()
    people = pd.concat([agents, teams_src["manager"].dropna()])
    person_ids = _unique_slugs(people, "person", choices)
    team_of = teams_src.drop_duplicates("sales_agent").set_index("sales_agent")
    agent_names = pd.Series(agents.unique())
    reps = pd.DataFrame(
        {
            "rep_id": agent_names.map(person_ids),
            "manager_id": agent_names.map(team_of["manager"]).map(person_ids),
            "team": agent_names.map(team_of["manager"]),
            "region": agent_names.map(team_of["regional_office"]),
            "name": agent_names,
        }
    )
    agents_without_team = sorted(set(deals["sales_agent"].dropna()) - set(teams_src["sales_agent"].dropna()))
    if agents_without_team:
        choices.append(
            f"{len(agents_without_team)} sales agents own deals but are not in sales_teams.csv: added without "
            f"team/region ({', '.join(agents_without_team[:SAMPLE_SIZE])})"
        )
    idle_agents = sorted(set(teams_src["sales_agent"].dropna()) - set(deals["sales_agent"].dropna()))
    if idle_agents:
        choices.append(f"{len(idle_agents)} reps in sales_teams.csv own no deal (kept in reps)")

    # ------------------------------------------------------------------ opportunities and history
    won = deals["stage"] == "won"
    opportunities = pd.DataFrame(
        {
            "opportunity_id": deals["opportunity_id"],
            "account_id": deal_account,
            "created_at": created_at,
            "owner_id": deals["sales_agent"].map(person_ids),
            "product": deal_product,
            "amount": list_price,
            "stage": deals["stage"],
            "closed_at": close.where(is_closed),
            "outcome": deals["stage"].where(is_closed),
            "won_amount": close_value.where(won),
            "created_at_imputed": imputed.astype("float64"),
        }
    )
    missing_won_value = won & close_value.isna()
    if missing_won_value.any():
        choices.append(
            f"{int(missing_won_value.sum()):,} won deals have no close_value: won_amount left empty"
        )
    engaged = pd.DataFrame(
        {
            "opportunity_id": deals.loc[~imputed, "opportunity_id"],
            "changed_at": engage[~imputed],
            "stage": "engaging",
            "amount": list_price[~imputed],
        }
    )
    closed = pd.DataFrame(
        {
            "opportunity_id": deals.loc[is_closed, "opportunity_id"],
            "changed_at": close[is_closed],
            "stage": deals.loc[is_closed, "stage"],
            "amount": close_value.where(won)[is_closed],
        }
    )
    history = (
        pd.concat([engaged, closed], ignore_index=True)
        .sort_values(["opportunity_id", "changed_at"], kind="stable")
        .reset_index(drop=True)
    )

    report.mapping = [
        "sales_teams.csv sales_agent -> reps.rep_id (slug), manager -> manager_id (slug) and team, "
        "regional_office -> region",
        "accounts.csv account -> accounts.account_id (slug) and name; sector -> industry; revenue (M USD) -> "
        "annual_revenue (USD); employees; office_location -> country; year_established -> created_at "
        "(1 January); subsidiary_of -> parent_account_id",
        "products.csv product, series, sales_price -> products (extension table: product, list_price, series)",
        "sales_pipeline.csv opportunity_id; account -> account_id; sales_agent -> owner_id; engage_date -> "
        "created_at; deal_stage -> stage (lower-case); Won/Lost -> outcome and closed_at = close_date; "
        "close_value -> won_amount (won deals only; 0 for lost deals is not an amount)",
        "amount (expected) = product list price: the export has no expected amount",
        f"opportunity_history synthesised from dated facts: engage_date -> 'engaging' ({len(engaged):,} rows), "
        f"close_date -> 'won'/'lost' ({len(closed):,} rows); no stage history or activity log exists",
    ]

    raw: Tables = {
        "accounts": accounts,
        "reps": reps,
        "products": products,
        "opportunities": opportunities,
        "opportunity_history": history,
    }
    tables, validation = validate_tables(
        raw,
        source_names={name: f"{name} (maven import)" for name in raw},
        require=("accounts", "opportunities"),
    )
    report.validation = validation
    dropped = validation.rows_in["opportunities"] - validation.rows_out["opportunities"]
    if dropped:
        report.skipped.append(
            SkippedRows(
                "opportunities", "rejected by contract validation (see validation warnings)", dropped, []
            )
        )
    report.opportunities_imported = len(tables["opportunities"])
    report.rows_written = {name: len(table) for name, table in tables.items()}
    accounted = report.opportunities_imported + report.opportunities_skipped
    if accounted != report.opportunities_in:
        # An importer bug, not bad input: every deal must be imported or reported.
        raise RuntimeError(
            f"maven import lost track of deals: {report.opportunities_in} in, {accounted} accounted for"
        )
    return tables, report


__all__ = ["ImportReport", "SkippedRows", "import_maven", "slugify"]
