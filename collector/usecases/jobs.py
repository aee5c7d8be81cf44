"""Stored jobs, listed (``hpc-billing jobs``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from billing.records import JobRecord
from collector.runtime import Runtime
from collector.store import jobs as store_jobs


def list_jobs(runtime: Runtime, *, since: datetime | None, until: datetime | None,
              limit: int | None) -> Iterator[JobRecord]:
    """The jobs that ran in [since, until) (the configured cluster only, when one is
    set), streamed: consume the iterator fully (it holds a transaction open)."""
    with runtime.database.sessions() as session:
        yield from store_jobs.list_jobs(session, cluster=runtime.settings.cluster,
                                        since=since, until=until, limit=limit)
