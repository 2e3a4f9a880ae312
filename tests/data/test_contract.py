"""The contract description is internally consistent and matches CONTRACT.md section 1."""

from __future__ import annotations

from features.contract import REQUIRED_TABLES_FOR, TABLES


def test_every_key_event_time_and_reference_names_a_real_column() -> None:
    order = list(TABLES)
    for name, spec in TABLES.items():
        assert spec.name == name
        for column in (*spec.primary_key, *([spec.event_time] if spec.event_time else [])):
            assert column in spec.column_names, f"{name}.{column}"
        for ref in spec.parents:
            assert ref.column in spec.column_names
            assert ref.parent_column in TABLES[ref.parent_table].primary_key
            # Parents come first so that row drops cascade in one pass.
            assert order.index(ref.parent_table) < order.index(name)


def test_required_columns_follow_contract() -> None:
    assert TABLES["accounts"].required_columns == ("account_id", "created_at")
    assert TABLES["opportunities"].required_columns == ("opportunity_id", "account_id", "created_at")
    assert TABLES["subscriptions"].required_columns == ("subscription_id", "account_id", "start_date", "mrr")
    assert TABLES["surveys"].required_columns == ("account_id", "responded_at", "kind", "score")
    assert TABLES["activities"].required_columns == ("activity_id", "account_id", "occurred_at", "type")
    assert TABLES["quotas"].required_columns == ("rep_id", "period_start", "period_end", "amount")


def test_enums_and_event_times() -> None:
    assert TABLES["opportunities"].column("type").allowed == ("new", "renewal", "expansion")
    assert TABLES["opportunities"].column("outcome").allowed == ("won", "lost")
    assert TABLES["surveys"].column("kind").allowed == ("nps", "csat", "ces")
    expected_event_times = {
        "accounts": "created_at",
        "opportunities": "created_at",
        "opportunity_history": "changed_at",
        "activities": "occurred_at",
        "subscriptions": "start_date",
        "usage": "date",
        "tickets": "opened_at",
        "surveys": "responded_at",
    }
    for name, column in expected_event_times.items():
        assert TABLES[name].event_time == column
    assert TABLES["usage"].numeric_extras and not TABLES["tickets"].numeric_extras
    assert TABLES["products"].extension and not TABLES["accounts"].extension
    assert set(REQUIRED_TABLES_FOR["churn"]) == {"accounts", "subscriptions"}
    assert set(REQUIRED_TABLES_FOR["win"]) == {"accounts", "opportunities"}


def test_money_and_counts_cannot_be_negative() -> None:
    bounded = {
        (name, column.name): column.minimum
        for name, spec in TABLES.items()
        for column in spec.columns
        if column.minimum is not None
    }
    assert bounded == {
        ("accounts", "employees"): 0.0,
        ("accounts", "annual_revenue"): 0.0,
        ("quotas", "amount"): 0.0,
        ("products", "list_price"): 0.0,
        ("opportunities", "amount"): 0.0,
        ("opportunities", "won_amount"): 0.0,
        ("opportunity_history", "amount"): 0.0,
        ("activities", "duration_s"): 0.0,
        ("subscriptions", "mrr"): 0.0,
        ("usage", "active_users"): 0.0,
        ("usage", "events"): 0.0,
    }
    # Only numbers carry a bound; scales of scores (csat, survey score) are not fixed by CONTRACT.md.
    assert all(TABLES[name].column(column).kind == "number" for name, column in bounded)
