"""Retention of the append-only side tables, and the month partitions made ahead
(docs/design/engine.md §5, §8).

- Node snapshots (``node_snapshots``) older than a cutoff are deleted.
- Collector runs older than a cutoff are deleted, except a run that still has
  quarantined input nobody accepted (bad input is never hidden: accept it first,
  ``hpc-billing quarantine --accept``), and each cluster's newest run. A watermark's
  ``run_id`` becomes NULL (its foreign key says so); jobs keep their run ids (no foreign
  key: ``jobs.updated_at`` becomes NULL).
- ``ensure_partitions_ahead`` creates the partitions of ``job_rows`` and ``charge_rows``
  from the current month to ``months_ahead`` later, so a poll rarely creates one itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, text
from sqlalchemy.orm import Session

from collector.store.db import Sessions

_SQL_PRUNE_SNAPSHOTS = "DELETE FROM node_snapshots WHERE taken_at < :cutoff"
_SQL_PRUNE_RUNS = (
    "DELETE FROM collector_runs r WHERE r.started_at < :cutoff AND r.outcome <> 'running'"
    " AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.run_id = r.id"
    " AND q.accepted_at IS NULL)"
    " AND r.id NOT IN (SELECT max(id) FROM collector_runs GROUP BY cluster)")
_SQL_PARTITIONS_AHEAD = (
    "SELECT count(*) FILTER (WHERE made) FROM (SELECT hpcb_month_partition(t, m::date) AS made"
    " FROM unnest(ARRAY['job_rows', 'charge_rows']) AS t,"
    " generate_series(date_trunc('month', CAST(:today AS date)),"
    " date_trunc('month', CAST(:today AS date)) + make_interval(months => :ahead),"
    " interval '1 month') AS m) x")


def prune_node_snapshots(session: Session, before: datetime) -> int:
    """Delete node snapshots taken before ``before``; returns how many rows went."""
    result = session.execute(text(_SQL_PRUNE_SNAPSHOTS), {"cutoff": before})
    return int(cast(CursorResult[Any], result).rowcount)


def prune_runs(session: Session, before: datetime) -> int:
    """Delete runs started before ``before`` (see the module docstring for what is kept);
    returns how many went."""
    result = session.execute(text(_SQL_PRUNE_RUNS), {"cutoff": before})
    return int(cast(CursorResult[Any], result).rowcount)


def ensure_partitions_ahead(session: Session, today: date, months_ahead: int = 2) -> int:
    """Create the missing partitions from ``today``'s month to ``months_ahead`` later;
    returns how many were created. Run it in a short transaction of its own (ATTACH
    locks the parent against other partition changes until commit)."""
    made = session.execute(text(_SQL_PARTITIONS_AHEAD),
                           {"today": today, "ahead": int(months_ahead)}).scalar_one()
    return int(made or 0)


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one prune removed, and the partitions made ahead."""

    node_snapshots: int
    runs: int
    partitions_created: int


def maintain(sessions: Sessions, *, now: datetime, node_retention_s: float,
             run_retention_s: float) -> Pruned:
    """Prune node snapshots and runs older than their retention, then create the coming
    months' partitions; each in its own short transaction."""
    with sessions() as session:
        snapshots = prune_node_snapshots(
            session, now - timedelta(seconds=node_retention_s))
        runs = prune_runs(session, now - timedelta(seconds=run_retention_s))
        session.commit()
    with sessions() as session:
        made = ensure_partitions_ahead(session, now.date())
        session.commit()
    return Pruned(node_snapshots=snapshots, runs=runs, partitions_created=made)
