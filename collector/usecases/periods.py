"""Billing periods: close one (its charges never change again), list them."""

from __future__ import annotations

import getpass

from collector.runtime import Runtime
from collector.store import periods as store_periods
from collector.store.periods import PeriodInfo


def close_period(runtime: Runtime, period: str, note: str | None) -> PeriodInfo:
    """Close ``period`` as the user running the command; later changes to its jobs are
    posted as corrections in the next open period."""
    with runtime.database.sessions() as session:
        info = store_periods.close_period(session, period, by=getpass.getuser(), note=note)
        session.commit()
    return info


def list_periods(runtime: Runtime) -> list[PeriodInfo]:
    with runtime.database.sessions() as session:
        return store_periods.list_periods(session)
