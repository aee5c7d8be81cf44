"""Billing periods: checking a period's name, closing one, reopening one, listing them.

A closed period is never rewritten (DESIGN.md §5): only closed periods have a row in
``billing_periods``, and ``closed_periods(lock=True)`` takes the lock that keeps a period
from closing under a transaction that writes charge lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from collector.store.errors import ChargeStoreError, InvalidPeriodError
from collector.store.models import BillingPeriod, table_of

_PERIODS = table_of(BillingPeriod)

_PERIOD_RE = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")


def check_period(period: object) -> str:
    """``period`` if it is a billing period 'YYYY-MM', else ``InvalidPeriodError``."""
    if not isinstance(period, str) or _PERIOD_RE.fullmatch(period) is None:
        raise InvalidPeriodError(
            f"billing period must be 'YYYY-MM' with month 01-12, got {period!r}")
    return period




@dataclass(frozen=True, slots=True)
class PeriodInfo:
    """A billing period that is closed or has lines posted in it."""

    period: str
    closed: bool
    closed_at: datetime | None = None
    closed_by: str | None = None
    note: str | None = None


_SQL_LOCK_PERIODS = text("LOCK TABLE billing_periods IN SHARE MODE")


def closed_periods(session: Session, *, lock: bool = False) -> frozenset[str]:
    """Every closed billing period.

    With ``lock``, first take the SHARE lock that ``replace_charges`` takes: no period
    can close until the caller's transaction ends, so lines planned against this set
    (corrections for closed periods) are still valid when they are written. Without it,
    a period closed in between makes ``replace_charges`` raise ``ClosedPeriodError``.
    """
    if lock:
        session.execute(_SQL_LOCK_PERIODS)
    return frozenset(session.execute(select(_PERIODS.c.period)).scalars())


def close_period(session: Session, period: str, *, by: str,
                 note: str | None = None) -> PeriodInfo:
    """Close ``period`` ('YYYY-MM'); returns it as stored.

    Idempotent: closing a closed period changes nothing (the first ``closed_at``,
    ``closed_by`` and ``note`` stay). Waits for transactions inside ``replace_charges``
    to end (they hold a SHARE lock on ``billing_periods``), so nothing writes a period
    after it closed.
    """
    check_period(period)
    if not isinstance(by, str) or not by:
        raise ChargeStoreError(f"close_period needs who closes it (by=...), got {by!r}")
    session.execute(
        pg_insert(_PERIODS).values(period=period, closed_by=by, note=note)
        .on_conflict_do_nothing(index_elements=[_PERIODS.c.period]))
    row = session.execute(select(_PERIODS).where(_PERIODS.c.period == period)).one()
    return PeriodInfo(period=row.period, closed=True, closed_at=row.closed_at.astimezone(UTC),
                      closed_by=row.closed_by, note=row.note)


def reopen_period(session: Session, period: str) -> PeriodInfo | None:
    """Open a closed ``period`` again (its row is deleted); returns it as it was closed,
    or None when it was not closed. The DELETE waits for transactions inside
    ``replace_charges`` (SHARE lock) and makes later ones wait for the caller's commit,
    so lines planned as corrections never land while the period changes state."""
    check_period(period)
    row = session.execute(
        delete(_PERIODS).where(_PERIODS.c.period == period)
        .returning(_PERIODS.c.period, _PERIODS.c.closed_at, _PERIODS.c.closed_by,
                   _PERIODS.c.note)).one_or_none()
    if row is None:
        return None
    return PeriodInfo(period=row.period, closed=False, closed_at=row.closed_at.astimezone(UTC),
                      closed_by=row.closed_by, note=row.note)


# Distinct posted periods by a skip scan of ix_charge_lines_posted_period_cluster: one
# index probe per period instead of reading every line.
_SQL_POSTED_PERIODS = text(
    "WITH RECURSIVE p(period) AS ("
    " (SELECT posted_period FROM charge_lines ORDER BY posted_period LIMIT 1)"
    " UNION ALL"
    " SELECT (SELECT c.posted_period FROM charge_lines c WHERE c.posted_period > p.period"
    "         ORDER BY c.posted_period LIMIT 1)"
    " FROM p WHERE p.period IS NOT NULL)"
    " SELECT period FROM p WHERE period IS NOT NULL")


def list_periods(session: Session) -> list[PeriodInfo]:
    """Every period that is closed or has lines posted in it, oldest first."""
    closed = {
        r.period: PeriodInfo(period=r.period, closed=True,
                             closed_at=r.closed_at.astimezone(UTC), closed_by=r.closed_by,
                             note=r.note)
        for r in session.execute(select(_PERIODS))
    }
    periods = dict(closed)
    for period in session.execute(_SQL_POSTED_PERIODS).scalars():
        periods.setdefault(period, PeriodInfo(period=period, closed=False))
    return [periods[p] for p in sorted(periods)]


