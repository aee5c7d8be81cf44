"""The monthly rollups: check them against the charge lines, rewrite them (``hpc-billing
rollup verify|rebuild [--period P]``, collector.store.rollups)."""

from __future__ import annotations

from collector.runtime import Runtime
from collector.store import rollups as store_rollups
from collector.store.rollups import RollupCheck


def verify(runtime: Runtime, period: str | None = None) -> RollupCheck:
    """Recompute the buckets of ``period`` (None: all) from the lines and compare."""
    with runtime.database.sessions() as session:
        check = store_rollups.verify(session, period)
        session.rollback()
    return check


def rebuild(runtime: Runtime, period: str | None = None) -> RollupCheck:
    """Rewrite the buckets of ``period`` (None: all) from the lines; returns the check of
    what was written (committed only when it passes)."""
    with runtime.database.sessions() as session:
        check = store_rollups.rebuild(session, period)
        if check.ok:
            session.commit()
        else:  # pragma: no cover - a rebuild computes exactly what verify compares
            session.rollback()
    return check
