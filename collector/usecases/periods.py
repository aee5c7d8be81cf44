"""Billing periods: close one (its charges never change again), reopen one, list them.

Closing records a ``period.close`` audit entry with the digest of the period's lines
(``billing.audit.period_digest``); reopening records a ``period.reopen`` entry with the
reason. Both need the audit trail's key: they exist to be recorded (docs/finance.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from billing.audit import PERIOD_CLOSE, PERIOD_REOPEN, entry_time, period_digest
from billing.records import AuditEntry
from collector.runtime import Runtime
from collector.store import periods as store_periods
from collector.store import reports as store_reports
from collector.store.periods import PeriodInfo
from collector.usecases.documents import FinanceInputError


@dataclass(frozen=True, slots=True)
class ClosedPeriod:
    """What ``close_period`` did: the digest and line count it recorded, and the entry."""

    period: str
    already_closed: bool
    digest: str | None = None
    lines: int = 0
    entry: AuditEntry | None = None


def close_period(runtime: Runtime, period: str, *, note: str | None = None) -> ClosedPeriod:
    """Close ``period`` and record a ``period.close`` entry with the digest of the lines
    posted in it. Needs the trail's key. The digest is read after the close's INSERT,
    which waits for every charge writer (they hold a SHARE lock on billing_periods) and
    makes later ones wait for this commit, so it covers exactly the lines that stay.
    Closing a closed period changes and records nothing."""
    trail = runtime.audit
    trail.require("period close")
    store_periods.check_period(period)
    with runtime.database.sessions() as session:
        already = period in store_periods.closed_periods(session)
        store_periods.close_period(session, period, by=trail.actor, note=note)
        if already:
            session.commit()
            return ClosedPeriod(period, already_closed=True)
        digest, count = period_digest(store_reports.period_lines(session, period))
        details: dict[str, Any] = {"digest": digest, "lines": count}
        if note:
            details["note"] = note
        entry = trail.record(session, PERIOD_CLOSE, period, details)
        session.commit()
    return ClosedPeriod(period, already_closed=False, digest=digest, lines=count, entry=entry)


@dataclass(frozen=True, slots=True)
class ReopenedPeriod:
    """What ``reopen_period`` did: when the period had been closed, and the entry."""

    period: str
    closed_by: str | None
    digest: str
    lines: int
    entry: AuditEntry | None


def reopen_period(runtime: Runtime, period: str, *, reason: str) -> ReopenedPeriod:
    """Reopen a closed period (its lines may change again: a reprice rewrites them
    instead of posting corrections) and record a ``period.reopen`` entry with the reason
    and the digest of its lines as they are now. Needs the trail's key and a reason;
    FinanceInputError for a period that is not closed."""
    trail = runtime.audit
    trail.require("period reopen")
    store_periods.check_period(period)
    if not reason or not reason.strip():
        raise FinanceInputError("reopening a closed period needs a reason (--reason)")
    with runtime.database.sessions() as session:
        info = store_periods.reopen_period(session, period)
        if info is None:
            raise FinanceInputError(f"period {period} is not closed")
        digest, count = period_digest(store_reports.period_lines(session, period))
        entry = trail.record(session, PERIOD_REOPEN, period, {
            "reason": reason.strip(), "digest": digest, "lines": count,
            "closed_by": info.closed_by,
            "closed_at": entry_time(info.closed_at) if info.closed_at else None})
        session.commit()
    return ReopenedPeriod(period, info.closed_by, digest, count, entry)


def list_periods(runtime: Runtime) -> list[PeriodInfo]:
    with runtime.database.sessions() as session:
        return store_periods.list_periods(session)
