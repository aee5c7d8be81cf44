"""Small reads for the ``/metrics`` scrape (the web app's gauges over PostgreSQL).

Design notes: docs/design/store.md.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import func, not_, select, text
from sqlalchemy.orm import Session

from collector.store.models import Cluster, CollectorRun, Job, Quarantine, RateCard, Watermark
from collector.store.runs import SACCT_STREAM

UTC = timezone.utc


def limit_statements(session: Session, timeout_s: float) -> None:
    """Bound every following statement of the current transaction (or savepoint) to
    ``timeout_s`` (at least 1 ms): PostgreSQL cancels it with SQLSTATE 57014."""
    ms = max(1, int(timeout_s * 1000))
    session.execute(text("SELECT set_config('statement_timeout', :ms, true)"),
                    {"ms": str(ms)})


def sacct_watermarks(session: Session) -> dict[str, datetime]:
    """cluster -> the stored sacct polling watermark (end of the last stored window)."""
    rows = session.execute(select(Watermark.cluster, Watermark.position)
                           .where(Watermark.stream == SACCT_STREAM))
    return {r.cluster: r.position.astimezone(UTC) for r in rows}


def open_jobs(session: Session) -> dict[str, int]:
    """cluster -> number of stored jobs that are not final (pending, running ...); every
    known cluster, 0 included (one probe of the partial index per cluster)."""
    count = (select(func.count()).select_from(Job)
             .where(Job.cluster == Cluster.name, not_(Job.final)).scalar_subquery())
    return {r[0]: int(r[1]) for r in session.execute(select(Cluster.name, count))}


def quarantine_counts(session: Session) -> dict[str | None, int]:
    """cluster -> quarantined records stored, every known cluster, 0 included; None for
    records of file imports that had no cluster (only when there are any)."""
    per_cluster = (select(Cluster.name, func.count(Quarantine.id))
                   .outerjoin(Quarantine, Quarantine.cluster == Cluster.name)
                   .group_by(Cluster.name))
    out: dict[str | None, int] = {r[0]: int(r[1]) for r in session.execute(per_cluster)}
    without = session.execute(select(func.count()).select_from(Quarantine)
                              .where(Quarantine.cluster.is_(None))).scalar_one()
    if without:
        out[None] = int(without)
    return out


def newest_run_card(session: Session) -> tuple[int, str] | None:
    """(id, TOML text) of the rate card used by the newest run that priced, or None."""
    row = session.execute(
        select(RateCard.id, RateCard.text)
        .join(CollectorRun, CollectorRun.rate_card_id == RateCard.id)
        .order_by(CollectorRun.id.desc()).limit(1)).first()
    return None if row is None else (int(row.id), row.text)


__all__ = ["limit_statements", "newest_run_card", "open_jobs", "quarantine_counts",
           "sacct_watermarks"]
