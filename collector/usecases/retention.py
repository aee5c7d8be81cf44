"""Retention and partitions ahead: ``hpc-billing prune`` and the daemon's daily job
(collector.store.retention)."""

from __future__ import annotations

from datetime import UTC, datetime

from collector.runtime import Runtime
from collector.store.retention import Pruned, maintain


def prune(runtime: Runtime, now: datetime | None = None) -> Pruned:
    """``hpc-billing prune`` with the configured retentions."""
    settings = runtime.settings
    return maintain(runtime.database.sessions, now=now or datetime.now(UTC),
                    node_retention_s=settings.node_retention_s,
                    run_retention_s=settings.run_retention_s)
