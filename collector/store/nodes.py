"""Node inventory snapshots: stored, read back as capacity, and integrated into utilisation.

Design notes: docs/design/store.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from collector.store.models import NodeSnapshot
from collector.store.runs import ensure_cluster

UTC = timezone.utc

GpuCounts = tuple[tuple[str, int], ...]


class NodeLike(Protocol):
    """What ``store_snapshot`` reads from a node (``collector.slurm.nodes.NodeInfo``)."""

    @property
    def name(self) -> str: ...
    @property
    def partitions(self) -> Sequence[str]: ...
    @property
    def state(self) -> str: ...
    @property
    def state_raw(self) -> str: ...
    @property
    def cpus_total(self) -> int: ...
    @property
    def cpus_alloc(self) -> int: ...
    @property
    def mem_total_bytes(self) -> int: ...
    @property
    def mem_alloc_bytes(self) -> int: ...
    @property
    def gpus_total(self) -> Iterable[tuple[str, int]]: ...
    @property
    def gpus_alloc(self) -> Iterable[tuple[str, int]]: ...


# ------------------------------------------------------------------------------- write

def _count(value: object, what: str, node: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"node {node!r}: {what} must be a non-negative int, got {value!r}")
    return value


def _gpus(pairs: Iterable[tuple[str, int]], what: str, node: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for gtype, count in pairs:
        if not isinstance(gtype, str) or not gtype:
            raise ValueError(f"node {node!r}: {what} has a GPU type {gtype!r}")
        out[gtype] = out.get(gtype, 0) + _count(count, what, node)
    return out


def _row(cluster: str, taken_at: datetime, node: NodeLike) -> dict[str, Any]:
    name = node.name
    if not isinstance(name, str) or not name:
        raise ValueError(f"a node needs a non-empty name, got {name!r}")
    return {
        "taken_at": taken_at, "cluster": cluster, "node": name,
        "partitions": list(node.partitions), "state": node.state, "state_raw": node.state_raw,
        "cpus_total": _count(node.cpus_total, "cpus_total", name),
        "cpus_alloc": _count(node.cpus_alloc, "cpus_alloc", name),
        "mem_total_bytes": _count(node.mem_total_bytes, "mem_total_bytes", name),
        "mem_alloc_bytes": _count(node.mem_alloc_bytes, "mem_alloc_bytes", name),
        "gpus_total": _gpus(node.gpus_total, "gpus_total", name),
        "gpus_alloc": _gpus(node.gpus_alloc, "gpus_alloc", name),
    }


def store_snapshot(session: Session, cluster: str, taken_at: datetime,
                   nodes: Sequence[NodeLike]) -> int:
    """Store one snapshot of ``cluster``'s nodes taken at ``taken_at`` (aware); returns
    the rows written. A node listed twice keeps its last entry; storing the same
    (cluster, taken_at) again writes nothing for the nodes already there.
    """
    if not isinstance(cluster, str) or not cluster:
        raise ValueError(f"cluster must be a non-empty string, got {cluster!r}")
    if not isinstance(taken_at, datetime) or taken_at.utcoffset() is None:
        raise ValueError(f"taken_at must be a timezone-aware datetime, got {taken_at!r}")
    taken_at = taken_at.astimezone(UTC)
    rows = {row["node"]: row for row in (_row(cluster, taken_at, n) for n in nodes)}
    if not rows:
        return 0
    ensure_cluster(session, cluster)
    stmt = (pg_insert(NodeSnapshot)
            .on_conflict_do_nothing(index_elements=["cluster", "taken_at", "node"])
            .returning(NodeSnapshot.id))
    return len(session.execute(stmt, list(rows.values())).all())


# ---------------------------------------------------------------------------- capacity

@dataclass(frozen=True, slots=True)
class PartitionCapacity:
    """One partition of one cluster in that cluster's newest snapshot (see module doc)."""

    cluster: str
    partition: str
    taken_at: datetime
    nodes: int
    cpus_total: int
    cpus_alloc: int
    mem_total_bytes: int
    mem_alloc_bytes: int
    gpus_total: GpuCounts
    gpus_alloc: GpuCounts


# Each cluster's newest snapshot time: one backward index probe per cluster, never a scan.
_NEWEST = """
    newest AS (
        SELECT c.name AS cluster,
               (SELECT max(s.taken_at) FROM node_snapshots s WHERE s.cluster = c.name) AS taken_at
        FROM clusters c
        WHERE CAST(:cluster AS text) IS NULL OR c.name = CAST(:cluster AS text)
    ),
    latest AS (
        SELECT s.*
        FROM newest n
        JOIN node_snapshots s ON s.cluster = n.cluster AND s.taken_at = n.taken_at
    )
"""

_CAPACITY_SQL = text(f"""
    WITH {_NEWEST}
    SELECT l.cluster, p.name AS partition, l.taken_at, count(*) AS nodes,
           sum(l.cpus_total) AS cpus_total, sum(l.cpus_alloc) AS cpus_alloc,
           sum(l.mem_total_bytes) AS mem_total_bytes, sum(l.mem_alloc_bytes) AS mem_alloc_bytes
    FROM latest l CROSS JOIN LATERAL unnest(l.partitions) AS p(name)
    GROUP BY l.cluster, p.name, l.taken_at
    ORDER BY l.cluster, p.name
""")

_CAPACITY_GPU_SQL = text(f"""
    WITH {_NEWEST}
    SELECT l.cluster, p.name AS partition, g.kind, g.gpu_type, sum(g.n) AS n
    FROM latest l
    CROSS JOIN LATERAL unnest(l.partitions) AS p(name)
    CROSS JOIN LATERAL (
        SELECT 'total', e.key, e.value::bigint FROM jsonb_each_text(l.gpus_total) AS e
        UNION ALL
        SELECT 'alloc', e.key, e.value::bigint FROM jsonb_each_text(l.gpus_alloc) AS e
    ) AS g(kind, gpu_type, n)
    GROUP BY l.cluster, p.name, g.kind, g.gpu_type
""")


def latest_capacity(session: Session, cluster: str | None = None) -> list[PartitionCapacity]:
    """Per cluster (one, or all) and partition: the capacity in the cluster's newest
    snapshot, ordered by cluster and partition. A node in two partitions counts in both."""
    params = {"cluster": cluster}
    gpus: dict[tuple[str, str, str], dict[str, int]] = {}
    for r in session.execute(_CAPACITY_GPU_SQL, params):
        gpus.setdefault((r.cluster, r.partition, r.kind), {})[r.gpu_type] = int(r.n)
    out = []
    for r in session.execute(_CAPACITY_SQL, params):
        out.append(PartitionCapacity(
            cluster=r.cluster, partition=r.partition, taken_at=r.taken_at.astimezone(UTC),
            nodes=int(r.nodes), cpus_total=int(r.cpus_total), cpus_alloc=int(r.cpus_alloc),
            mem_total_bytes=int(r.mem_total_bytes), mem_alloc_bytes=int(r.mem_alloc_bytes),
            gpus_total=tuple(sorted(gpus.get((r.cluster, r.partition, "total"), {}).items())),
            gpus_alloc=tuple(sorted(gpus.get((r.cluster, r.partition, "alloc"), {}).items()))))
    return out


# ------------------------------------------------------------------------- utilisation

@dataclass(frozen=True, slots=True)
class UtilisationDay:
    """One UTC day of one partition of one cluster (see the module doc for the method)."""

    day: date
    cluster: str
    partition: str
    cpu_hours_available: Decimal
    cpu_hours_allocated: Decimal
    gpu_hours_available: Decimal
    gpu_hours_allocated: Decimal
    mem_gib_hours_available: Decimal
    mem_gib_hours_allocated: Decimal
    cpu_fraction: Decimal | None
    gpu_fraction: Decimal | None
    mem_fraction: Decimal | None


_UTILISATION_SQL = text(
    "SELECT * FROM node_utilisation_daily(CAST(:since AS date), CAST(:until AS date), "
    "CAST(:cluster AS text), CAST(:max_hold AS interval))")


def _day(value: object, what: str) -> date:
    if isinstance(value, datetime) or not isinstance(value, date):
        raise TypeError(f"{what} must be a date (a UTC day), got {value!r}")
    return value


def node_utilisation_daily(session: Session, *, cluster: str | None, since: date,
                           until: date, max_hold: timedelta | None = None
                           ) -> list[UtilisationDay]:
    """Daily utilisation for the UTC days ``since <= day < until`` (``until`` exclusive,
    like every --until of the CLI), of one cluster or all, per cluster and partition,
    ordered by day, cluster, partition. Days without snapshots have no rows.
    ``max_hold`` overrides the hold limit (capped at 1 day; see the module doc)."""
    since, until = _day(since, "since"), _day(until, "until")
    if until < since:
        raise ValueError(f"until {until} is before since {since}")
    if max_hold is not None and max_hold <= timedelta(0):
        raise ValueError(f"max_hold must be positive, got {max_hold!r}")
    rows = session.execute(_UTILISATION_SQL, {"since": since, "until": until,
                                              "cluster": cluster, "max_hold": max_hold})
    return [UtilisationDay(
        day=r.day, cluster=r.cluster, partition=r.partition,
        cpu_hours_available=r.cpu_hours_available, cpu_hours_allocated=r.cpu_hours_allocated,
        gpu_hours_available=r.gpu_hours_available, gpu_hours_allocated=r.gpu_hours_allocated,
        mem_gib_hours_available=r.mem_gib_hours_available,
        mem_gib_hours_allocated=r.mem_gib_hours_allocated,
        cpu_fraction=r.cpu_fraction, gpu_fraction=r.gpu_fraction, mem_fraction=r.mem_fraction)
        for r in rows]


__all__ = [
    "NodeLike",
    "PartitionCapacity",
    "UtilisationDay",
    "latest_capacity",
    "node_utilisation_daily",
    "store_snapshot",
]
