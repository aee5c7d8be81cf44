"""Budgets: set an account's budget for a period (recorded in the audit trail), list
budgets with what is used."""

from __future__ import annotations

from decimal import Decimal

from billing.audit import BUDGET_SET
from collector.runtime import Runtime
from collector.store import budgets as store_budgets
from collector.store.budgets import BudgetInfo

DEFAULT_CURRENCY = "EUR"


def set_budget(runtime: Runtime, account: str, period: str, amount: Decimal,
               currency: str | None) -> str:
    """Set (or overwrite) the budget; returns its currency (default: the card's, else EUR)."""
    if currency is None:
        card = runtime.card
        currency = card.card.currency if card is not None else DEFAULT_CURRENCY
    with runtime.database.sessions() as session:
        store_budgets.set_budget(session, account, period, amount, currency)
        runtime.audit.record(session, BUDGET_SET, f"{account} {period}", {
            "account": account, "period": period, "amount": str(amount),
            "currency": currency})
        session.commit()
    return currency


def list_budgets(runtime: Runtime, period: str | None) -> list[BudgetInfo]:
    with runtime.database.sessions() as session:
        return store_budgets.list_budgets(session, period=period)
