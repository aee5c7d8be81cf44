"""Node inventory: node_snapshots, the node_utilisation_daily() SQL function, open jobs.

- ``node_snapshots``: one row per node per ``scontrol show node`` snapshot of a cluster.
- ``node_utilisation_daily(since date, until date, cluster text, max_hold interval)``: the
  daily CPU/GPU/memory hours available and allocated per cluster and partition, integrated
  over the snapshots (see ``collector/store/nodes.py`` for the method). A function rather
  than a view: a view cannot take the date range, so every dashboard refresh would
  integrate the whole history; Grafana calls it as
  ``SELECT * FROM node_utilisation_daily($__timeFrom()::date, $__timeTo()::date + 1)``.
- ``ix_jobs_cluster_open``: a partial index on jobs (cluster) WHERE NOT final, so the
  ``hpcb_open_jobs`` gauge counts the few open rows instead of scanning jobs.

Hand-written to match collector/store/models.py exactly (the migration tests upgrade an
empty database and assert compare_metadata finds no difference).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)

# Copied, not imported, into the migration so it never changes when the code does; a
# later fix is a new revision with CREATE OR REPLACE FUNCTION.
#
# Each distinct snapshot time of a cluster "holds" from its taken_at until the cluster's
# next snapshot, but at most `hold` (so a collector outage does not invent capacity or
# use) and never past now(). `hold` is p_max_hold when given, else twice the cluster's
# median interval between snapshots, else 1 hour (a single snapshot); never more than
# 1 day. Holds are cut at UTC midnights and clipped to [since, until); every node of the
# snapshot contributes its quantities x the seconds held to each partition it is in.
# Nodes are summed per snapshot and partition first, so the time integration works on
# (snapshots x partitions) rows, not (snapshots x nodes). No generate_series: its default
# row estimate (1000) made the planner expect millions of rows and switch on JIT, which
# cost ~0.6 s on a query that runs in ~30 ms.
UTILISATION_FUNCTION = r"""
CREATE FUNCTION node_utilisation_daily(
    p_since date, p_until date, p_cluster text DEFAULT NULL, p_max_hold interval DEFAULT NULL)
RETURNS TABLE (
    day date, cluster text, partition text,
    cpu_hours_available numeric, cpu_hours_allocated numeric,
    gpu_hours_available numeric, gpu_hours_allocated numeric,
    mem_gib_hours_available numeric, mem_gib_hours_allocated numeric,
    cpu_fraction numeric, gpu_fraction numeric, mem_fraction numeric)
LANGUAGE sql STABLE
AS $fn$
WITH
-- Each snapshot's totals per partition. The range bounds are written out (not a CTE) so
-- that the planner sees constants and reads a range of the (cluster, taken_at, node)
-- index; a day of margin on each side finds the snapshots whose hold reaches into the
-- range, and the one that ends the last hold.
snap AS (
    SELECT s.cluster, s.taken_at, part.name AS partition,
           sum(s.cpus_total) AS cpus_total, sum(s.cpus_alloc) AS cpus_alloc,
           sum(gt.n) AS gpus_total, sum(ga.n) AS gpus_alloc,
           sum(s.mem_total_bytes) AS mem_total_bytes, sum(s.mem_alloc_bytes) AS mem_alloc_bytes
    FROM node_snapshots s
    CROSS JOIN LATERAL unnest(s.partitions) AS part(name)
    CROSS JOIN LATERAL (SELECT COALESCE(sum(e.value::numeric), 0)
                        FROM jsonb_each_text(s.gpus_total) AS e) AS gt(n)
    CROSS JOIN LATERAL (SELECT COALESCE(sum(e.value::numeric), 0)
                        FROM jsonb_each_text(s.gpus_alloc) AS e) AS ga(n)
    WHERE s.taken_at >= (p_since::timestamp AT TIME ZONE 'UTC') - interval '1 day'
      AND s.taken_at < (p_until::timestamp AT TIME ZONE 'UTC') + interval '1 day'
      AND (p_cluster IS NULL OR s.cluster = p_cluster)
    GROUP BY s.cluster, s.taken_at, part.name
),
gaps AS (
    SELECT t.cluster, t.taken_at,
           lead(t.taken_at) OVER (PARTITION BY t.cluster ORDER BY t.taken_at) AS next_at
    FROM (SELECT DISTINCT snap.cluster, snap.taken_at FROM snap) AS t
),
holds AS (
    SELECT g.cluster,
           LEAST(COALESCE(p_max_hold,
                          2 * percentile_cont(0.5) WITHIN GROUP (ORDER BY g.next_at - g.taken_at),
                          interval '1 hour'),
                 interval '1 day') AS hold
    FROM gaps g
    GROUP BY g.cluster
),
spans AS (
    SELECT g.cluster, g.taken_at,
           GREATEST(g.taken_at, p_since::timestamp AT TIME ZONE 'UTC') AS t0,
           LEAST(COALESCE(g.next_at, 'infinity'::timestamptz), g.taken_at + h.hold, now(),
                 p_until::timestamp AT TIME ZONE 'UTC') AS t1
    FROM gaps g JOIN holds h ON h.cluster = g.cluster
),
-- A hold lasts at most 1 day, so it touches at most two UTC days: the part before the
-- next UTC midnight and the part after it.
pieces AS (
    SELECT sp.cluster, sp.taken_at, v.day, v.secs
    FROM spans sp
    CROSS JOIN LATERAL (SELECT date_trunc('day', sp.t0 AT TIME ZONE 'UTC') AS midnight) AS m
    CROSS JOIN LATERAL (VALUES
        (m.midnight::date,
         extract(epoch FROM LEAST(sp.t1, (m.midnight + interval '1 day') AT TIME ZONE 'UTC') - sp.t0)),
        (m.midnight::date + 1,
         extract(epoch FROM sp.t1 - ((m.midnight + interval '1 day') AT TIME ZONE 'UTC')))
    ) AS v(day, secs)
    WHERE sp.t1 > sp.t0 AND v.secs > 0
),
sums AS (
    SELECT p.day, p.cluster, n.partition,
           sum(n.cpus_total * p.secs) AS cpu_avail_s, sum(n.cpus_alloc * p.secs) AS cpu_alloc_s,
           sum(n.gpus_total * p.secs) AS gpu_avail_s, sum(n.gpus_alloc * p.secs) AS gpu_alloc_s,
           sum(n.mem_total_bytes * p.secs) AS mem_avail_bs,
           sum(n.mem_alloc_bytes * p.secs) AS mem_alloc_bs
    FROM pieces p
    JOIN snap n ON n.cluster = p.cluster AND n.taken_at = p.taken_at
    GROUP BY p.day, p.cluster, n.partition
)
SELECT x.day, x.cluster, x.partition,
       round(x.cpu_avail_s / 3600, 6), round(x.cpu_alloc_s / 3600, 6),
       round(x.gpu_avail_s / 3600, 6), round(x.gpu_alloc_s / 3600, 6),
       round(x.mem_avail_bs / 3865470566400, 6), round(x.mem_alloc_bs / 3865470566400, 6),
       round(x.cpu_alloc_s / NULLIF(x.cpu_avail_s, 0), 6),
       round(x.gpu_alloc_s / NULLIF(x.gpu_avail_s, 0), 6),
       round(x.mem_alloc_bs / NULLIF(x.mem_avail_bs, 0), 6)
FROM sums x
ORDER BY x.day, x.cluster, x.partition
$fn$
"""
# 3865470566400 = 2**30 bytes per GiB x 3600 seconds per hour.


def upgrade() -> None:
    op.create_table(
        "node_snapshots",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("taken_at", TZ, nullable=False),
        sa.Column("cluster", sa.Text(), nullable=False),
        sa.Column("node", sa.Text(), nullable=False),
        sa.Column("partitions", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("state_raw", sa.Text(), nullable=False),
        sa.Column("cpus_total", sa.Integer(), nullable=False),
        sa.Column("cpus_alloc", sa.Integer(), nullable=False),
        sa.Column("mem_total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("mem_alloc_bytes", sa.BigInteger(), nullable=False),
        sa.Column("gpus_total", postgresql.JSONB(), nullable=False),
        sa.Column("gpus_alloc", postgresql.JSONB(), nullable=False),
        sa.CheckConstraint("jsonb_typeof(gpus_total) = 'object'",
                           name="ck_node_snapshots_gpus_total_is_object"),
        sa.CheckConstraint("jsonb_typeof(gpus_alloc) = 'object'",
                           name="ck_node_snapshots_gpus_alloc_is_object"),
        sa.ForeignKeyConstraint(["cluster"], ["clusters.name"],
                                name="fk_node_snapshots_cluster_clusters"),
        sa.PrimaryKeyConstraint("id", name="pk_node_snapshots"),
        sa.UniqueConstraint("cluster", "taken_at", "node",
                            name="uq_node_snapshots_cluster_taken_at_node"),
    )
    op.create_index("ix_jobs_cluster_open", "jobs", ["cluster"],
                    postgresql_where=sa.text("NOT final"))
    op.execute(UTILISATION_FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION node_utilisation_daily(date, date, text, interval)")
    op.drop_index("ix_jobs_cluster_open", table_name="jobs")
    op.drop_table("node_snapshots")
