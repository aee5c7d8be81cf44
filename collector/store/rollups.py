"""The daily rollups of charges (migration 0007): recomputing the buckets a write dirtied.

Writers call ``refresh_rollups`` in their transaction before they commit; the report
reads the rollups while no bucket is dirty (``reports.charge_report``).
"""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from collector.store.models import ChargeRollupDirty, table_of

_DIRTY = table_of(ChargeRollupDirty)

# Recompute the dirty (cluster, submit day) buckets of both rollups, then forget them.
# The dirty days' jobs first (through ix_jobs_cluster_submit_time: a poll dirties a day or
# two), then their lines by job key, summed per job and cell, then per cell: distinct jobs
# are counted as rows of the per-job step, with no DISTINCT sort. The planner cannot
# estimate the per-job step, so the hash aggregates are asked for explicitly, for this
# statement only (a bulk import refreshes hundreds of thousands of lines at once).
_DIRTY_GROUP = "posted_period, cluster, submit_day, account, user_name, partition, qos, currency"
_SQL_REFRESH = (
    "DELETE FROM charge_rollup_daily r USING charge_rollup_dirty d"
    " WHERE r.cluster = d.cluster AND r.submit_day = d.submit_day",
    "DELETE FROM charge_rollup_daily_jobs r USING charge_rollup_dirty d"
    " WHERE r.cluster = d.cluster AND r.submit_day = d.submit_day",
    "SET LOCAL work_mem = '128MB'",
    "SET LOCAL enable_sort = off",
    "WITH dirty_jobs AS MATERIALIZED ("
    " SELECT j.cluster, j.job_id_raw, j.submit_time, d.submit_day,"
    " coalesce(j.account, '') AS account, coalesce(j.user_name, '') AS user_name,"
    " coalesce(j.partition, '') AS partition, coalesce(j.qos, '') AS qos"
    " FROM charge_rollup_dirty d JOIN jobs j ON j.cluster = d.cluster"
    " AND j.submit_time >= (d.submit_day::timestamp AT TIME ZONE 'UTC')"
    " AND j.submit_time < ((d.submit_day + 1)::timestamp AT TIME ZONE 'UTC')"
    "), per_job AS MATERIALIZED ("
    " SELECT l.posted_period, l.cluster, j.submit_day, j.account, j.user_name, j.partition,"
    " j.qos, l.currency, l.resource, l.unit, l.job_id_raw, l.submit_time,"
    " sum(l.quantity) AS quantity, sum(l.amount) AS amount, count(*) AS lines"
    " FROM dirty_jobs j JOIN charge_lines l ON l.cluster = j.cluster"
    " AND l.job_id_raw = j.job_id_raw AND l.submit_time = j.submit_time"
    " GROUP BY l.posted_period, l.cluster, j.submit_day, j.account, j.user_name, j.partition,"
    " j.qos, l.currency, l.resource, l.unit, l.job_id_raw, l.submit_time"
    "), fine AS ("
    f" INSERT INTO charge_rollup_daily ({_DIRTY_GROUP}, resource, unit, quantity, amount,"
    " lines, jobs)"
    f" SELECT {_DIRTY_GROUP}, resource, unit, sum(quantity), sum(amount), sum(lines), count(*)"
    f" FROM per_job GROUP BY {_DIRTY_GROUP}, resource, unit"
    ")"
    f" INSERT INTO charge_rollup_daily_jobs ({_DIRTY_GROUP}, amount, jobs)"
    f" SELECT {_DIRTY_GROUP}, sum(amount), count(*) FROM ("
    f"  SELECT {_DIRTY_GROUP}, job_id_raw, submit_time, sum(amount) AS amount FROM per_job"
    f"  GROUP BY {_DIRTY_GROUP}, job_id_raw, submit_time) per_group_job"
    f" GROUP BY {_DIRTY_GROUP}",
    "RESET enable_sort",
    "RESET work_mem",
    "DELETE FROM charge_rollup_dirty",
)


def refresh_rollups(session: Session) -> int:
    """Recompute the rollups of every dirty bucket in the caller's transaction (writers
    call it before they commit); returns how many buckets were refreshed."""
    dirty = session.execute(select(func.count()).select_from(_DIRTY)).scalar_one()
    if dirty:
        for statement in _SQL_REFRESH:
            session.execute(text(statement))
    return int(dirty)
