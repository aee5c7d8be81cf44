"""Account budgets per billing period, and how much of each the posted charges use."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import and_, exists, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from collector.store.copytext import AMOUNT, decimal_text
from collector.store.errors import ChargeValueError
from collector.store.models import Budget, table_of
from collector.store.periods import check_period
from collector.store.reports import CHARGES, JOBS, LINES_WITH_JOBS

_BUDGETS = table_of(Budget)

@dataclass(frozen=True, slots=True)
class BudgetInfo:
    """A budget and how much of it the account's lines posted in the period use.

    ``used`` sums only lines in the budget's currency; ``used_fraction`` is
    used / amount (None when the budget is 0).
    """

    account: str
    period: str
    amount: Decimal
    currency: str
    used: Decimal
    used_fraction: Decimal | None
    updated_at: datetime


def set_budget(session: Session, account: str, period: str, amount: Decimal,
               currency: str) -> None:
    """Set the budget of ``account`` for ``period`` (insert or overwrite)."""
    check_period(period)
    if not isinstance(account, str) or not account:
        raise ChargeValueError(f"budget account must be a non-empty string, got {account!r}")
    if not isinstance(currency, str) or not currency:
        raise ChargeValueError(f"budget currency must be a non-empty string, got {currency!r}")
    decimal_text(amount, "budget amount", AMOUNT, True)
    if amount < 0:
        raise ChargeValueError(f"budget amount must not be negative, got {amount}")
    stmt = pg_insert(_BUDGETS).values(account=account, period=period, amount=amount,
                                      currency=currency, updated_at=func.now())
    stmt = stmt.on_conflict_do_update(
        index_elements=[_BUDGETS.c.account, _BUDGETS.c.period],
        set_={"amount": stmt.excluded.amount, "currency": stmt.excluded.currency,
              "updated_at": stmt.excluded.updated_at})
    session.execute(stmt)


def list_budgets(session: Session, period: str | None = None) -> list[BudgetInfo]:
    """Budgets (of one period, or all), ordered by period and account, with use."""
    b, c, j = _BUDGETS.c, CHARGES.c, JOBS.c
    if period is not None:
        check_period(period)
    used = (
        select(c.posted_period, j.account, c.currency, func.sum(c.amount).label("used"))
        .select_from(LINES_WITH_JOBS)
        .where(exists().where(b.period == c.posted_period, b.account == j.account,
                              *([b.period == period] if period is not None else [])))
        .group_by(c.posted_period, j.account, c.currency)
        .subquery("u")
    )
    stmt = (
        select(b.account, b.period, b.amount, b.currency, b.updated_at,
               func.coalesce(used.c.used, 0).label("used"))
        .select_from(_BUDGETS.outerjoin(used, and_(used.c.posted_period == b.period,
                                                   used.c.account == b.account,
                                                   used.c.currency == b.currency)))
        .order_by(b.period, b.account)
    )
    if period is not None:
        stmt = stmt.where(b.period == period)
    out = []
    for r in session.execute(stmt):
        spent = Decimal(r.used)
        out.append(BudgetInfo(
            account=r.account, period=r.period, amount=r.amount, currency=r.currency,
            used=spent, used_fraction=None if r.amount == 0 else spent / r.amount,
            updated_at=r.updated_at.astimezone(UTC)))
    return out

