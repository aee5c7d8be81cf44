"""Grafana views: the schema ``reporting``, the only objects the read-only role may read.

Dashboards (deploy/grafana) never read the base tables: they read these views, which a
read-only role (``hpc_billing_grafana``) may select while it has no privilege on any table
of ``public``. A view runs with its owner's privileges, so the grant on the view is all the
role needs; the base tables stay closed to it.

- ``reporting.clusters``: the known clusters (for dashboard variables).
- ``reporting.charges``: one row per charge line with the job's account, user, partition
  and QOS, the GPU type of GPU lines, the posted period's bounds and ``spent_at``, the
  instant the line counts at inside its posted period (the job's end, else when the line
  was written, clipped into the period), for daily charts and budget burn-down.
- ``reporting.budget_use``: each budget with the amount used (lines posted in its period
  for its account, in its currency: the same figure as ``hpc-billing budget list``).
- ``reporting.budget_burndown``: per budget, one row per UTC day of its period (up to
  today): spent so far and what remains.
- ``reporting.job_usage``: one row per job, CPU, GPU and memory hours allocated (and CPU
  hours used); ``reporting.job_gpu_usage``: one row per job and GPU type.
- ``reporting.collector_runs`` and ``reporting.quarantine``: the run log and the
  quarantined input without its raw text.
- ``reporting.node_utilisation_daily(since, until, cluster)``: the utilisation function
  of 0004, SECURITY DEFINER so that the role needs no access to ``node_snapshots``.

Views pin what they read: a later revision that changes the type of a column a view reads,
or rebuilds ``jobs`` or ``charge_lines`` (partitioning), must drop the views first and
create them again (``CREATE OR REPLACE VIEW`` with the same columns keeps the grants).

Periods here are calendar months in UTC (a card with another zone starts its periods a few
hours earlier or later; ``spent_at`` is clipped into the UTC month).

Grants: when the role ``hpc_billing_grafana`` exists at upgrade time (compose creates it
before the collector migrates, deploy/sql/roles.sql on a head node), it gets USAGE on the
schema, SELECT on every view and EXECUTE on the function, and default privileges make the
views a later revision adds to ``reporting`` readable too. When it does not exist yet,
deploy/sql/roles.sql grants the same after the fact. Nothing here needs CREATEROLE.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GRAFANA_ROLE = "hpc_billing_grafana"

# A period 'YYYY-MM' as the instant its UTC month begins.
_PERIOD_START = "(to_date({p}, 'YYYY-MM')::timestamp AT TIME ZONE 'UTC')"


def _period_start(column: str) -> str:
    return _PERIOD_START.format(p=column)


def _period_end(column: str) -> str:
    return f"((to_date({column}, 'YYYY-MM') + interval '1 month')::timestamp AT TIME ZONE 'UTC')"


# Copied, not imported, into the migration so it never changes when the code does; a
# later change is a new revision with CREATE OR REPLACE VIEW.
VIEWS: tuple[tuple[str, str], ...] = (
    ("clusters", """
SELECT c.name AS cluster FROM public.clusters c
"""),
    ("charges", f"""
SELECT c.posted_period, c.usage_period,
       {_period_start('c.posted_period')} AS period_start,
       {_period_end('c.posted_period')} AS period_end,
       LEAST(GREATEST(COALESCE(j.end_time, c.created_at), {_period_start('c.posted_period')}),
             {_period_end('c.posted_period')} - interval '1 microsecond') AS spent_at,
       c.cluster, j.account, j.user_name, j.partition, j.qos,
       c.resource,
       CASE WHEN c.resource LIKE 'gpu:%' THEN substr(c.resource, 5)
            WHEN c.resource = 'gpu' THEN 'other' END AS gpu_type,
       c.quantity, c.unit, c.rate, c.amount, c.currency, c.kind, c.basis, c.rule,
       c.job_id_raw, j.job_id, c.submit_time
FROM public.charge_lines c
JOIN public.jobs j ON j.cluster = c.cluster AND j.job_id_raw = c.job_id_raw
                  AND j.submit_time = c.submit_time
"""),
    ("budget_use", f"""
SELECT b.account, b.period,
       {_period_start('b.period')} AS period_start, {_period_end('b.period')} AS period_end,
       b.amount AS budget, b.currency, COALESCE(u.used, 0) AS used,
       b.amount - COALESCE(u.used, 0) AS remaining,
       COALESCE(u.used, 0) / NULLIF(b.amount, 0) AS used_fraction
FROM public.budgets b
LEFT JOIN LATERAL (
    SELECT sum(c.amount) AS used
    FROM public.charge_lines c
    JOIN public.jobs j ON j.cluster = c.cluster AND j.job_id_raw = c.job_id_raw
                      AND j.submit_time = c.submit_time
    WHERE c.posted_period = b.period AND j.account = b.account AND c.currency = b.currency
) u ON true
"""),
    # Depends on reporting.charges: created after it, dropped before it.
    ("budget_burndown", f"""
WITH days AS (
    SELECT b.account, b.period, b.amount AS budget, b.currency, d.day
    FROM public.budgets b
    CROSS JOIN LATERAL generate_series(
        {_period_start('b.period')},
        LEAST({_period_end('b.period')} - interval '1 day', date_trunc('day', now())),
        interval '1 day') AS d(day)
),
spent AS (
    SELECT c.account, c.posted_period, c.currency,
           date_trunc('day', c.spent_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS day,
           sum(c.amount) AS amount
    FROM reporting.charges c
    GROUP BY 1, 2, 3, 4
)
SELECT d.account, d.period, d.day, d.budget, d.currency,
       sum(COALESCE(s.amount, 0)) OVER w AS spent,
       d.budget - sum(COALESCE(s.amount, 0)) OVER w AS remaining
FROM days d
LEFT JOIN spent s ON s.account = d.account AND s.posted_period = d.period
                 AND s.currency = d.currency AND s.day = d.day
WINDOW w AS (PARTITION BY d.account, d.period, d.currency ORDER BY d.day)
"""),
    ("job_usage", """
SELECT j.cluster, j.job_id, j.job_id_raw, j.submit_time, j.start_time, j.end_time,
       j.account, j.user_name, j.partition, j.qos, j.state, j.final,
       j.elapsed_s, j.cpus, j.gpu_count, j.mem_bytes, j.nodes,
       round(j.cpus * j.elapsed_s / 3600.0, 6) AS cpu_hours,
       round(j.gpu_count * j.elapsed_s / 3600.0, 6) AS gpu_hours,
       round(j.mem_bytes * j.elapsed_s / 3865470566400.0, 6) AS mem_gib_hours,
       round(j.cpu_used_s / 3600.0, 6) AS cpu_used_hours
FROM public.jobs j
"""),
    ("job_gpu_usage", """
SELECT j.cluster, j.job_id, j.job_id_raw, j.submit_time, j.start_time, j.end_time,
       j.account, j.user_name, j.partition, g.key AS gpu_type, g.value::int AS gpus,
       round(g.value::numeric * j.elapsed_s / 3600.0, 6) AS gpu_hours
FROM public.jobs j
CROSS JOIN LATERAL jsonb_each_text(j.gpus) AS g(key, value)
"""),
    ("collector_runs", """
SELECT r.id, r.cluster, r.source, r.kind, r.window_since, r.window_until, r.started_at,
       r.finished_at, r.duration_s, r.outcome, r.records_read, r.jobs_inserted,
       r.jobs_updated, r.jobs_unchanged, r.quarantined, r.jobs_priced,
       r.charge_lines_written, r.error
FROM public.collector_runs r
"""),
    ("quarantine", """
SELECT q.id, q.run_id, q.cluster, q.source, q.line_no, q.job_id, q.reason, q.created_at
FROM public.quarantine q
"""),
)

UTILISATION_FUNCTION = """
CREATE FUNCTION reporting.node_utilisation_daily(
    p_since date, p_until date, p_cluster text DEFAULT NULL)
RETURNS TABLE (
    day date, cluster text, partition text,
    cpu_hours_available numeric, cpu_hours_allocated numeric,
    gpu_hours_available numeric, gpu_hours_allocated numeric,
    mem_gib_hours_available numeric, mem_gib_hours_allocated numeric,
    cpu_fraction numeric, gpu_fraction numeric, mem_fraction numeric)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp
AS $fn$ SELECT * FROM public.node_utilisation_daily(p_since, p_until, p_cluster) $fn$
"""
UTILISATION_SIGNATURE = "reporting.node_utilisation_daily(date, date, text)"

# Grants to the read-only role, only when it exists (it is created outside the migrations:
# creating roles needs CREATEROLE, which the collector's role should not have).
GRANTS = f"""
DO $grant$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{GRAFANA_ROLE}') THEN
        GRANT USAGE ON SCHEMA reporting TO {GRAFANA_ROLE};
        GRANT SELECT ON ALL TABLES IN SCHEMA reporting TO {GRAFANA_ROLE};
        GRANT EXECUTE ON FUNCTION {UTILISATION_SIGNATURE} TO {GRAFANA_ROLE};
        ALTER DEFAULT PRIVILEGES IN SCHEMA reporting GRANT SELECT ON TABLES TO {GRAFANA_ROLE};
    END IF;
END
$grant$
"""


def upgrade() -> None:
    op.execute("CREATE SCHEMA reporting")
    op.execute("COMMENT ON SCHEMA reporting IS "
               "'Views for dashboards; the read-only role reads these and nothing else.'")
    for name, query in VIEWS:
        op.execute(f"CREATE VIEW reporting.{name} AS {query.strip()}")
    op.execute(UTILISATION_FUNCTION)
    # A SECURITY DEFINER function must not be callable by everyone.
    op.execute(f"REVOKE EXECUTE ON FUNCTION {UTILISATION_SIGNATURE} FROM PUBLIC")
    op.execute(GRANTS)


def downgrade() -> None:
    op.execute(f"""
DO $revoke$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{GRAFANA_ROLE}') THEN
        ALTER DEFAULT PRIVILEGES IN SCHEMA reporting REVOKE SELECT ON TABLES FROM {GRAFANA_ROLE};
    END IF;
END
$revoke$
""")
    op.execute(f"DROP FUNCTION {UTILISATION_SIGNATURE}")
    for name, _ in reversed(VIEWS):
        op.execute(f"DROP VIEW reporting.{name}")
    op.execute("DROP SCHEMA reporting")
