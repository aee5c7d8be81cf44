"""The run log, newest first (``hpc-billing runs``)."""

from __future__ import annotations

from collector.runtime import Runtime
from collector.store import runs as store_runs
from collector.store.runs import RunInfo


def list_runs(runtime: Runtime, limit: int) -> list[RunInfo]:
    """The newest ``limit`` runs (of the configured cluster, when one is set)."""
    with runtime.database.sessions() as session:
        return store_runs.list_runs(session, cluster=runtime.settings.cluster, limit=limit)
