"""Daily charge rollups: the monthly report without scanning every charge line.

- ``charge_rollup_daily``: per posted period, cluster, UTC day of the jobs' submit time,
  the jobs' account, user, partition and QOS, currency, resource and unit: the summed
  quantity and amount, the number of lines and of distinct jobs.
- ``charge_rollup_daily_jobs``: the same grain without resource and unit: distinct jobs
  and amount (a job counts once however many resources it was charged for).
- ``charge_rollup_dirty``: the (cluster, submit day) buckets whose rollups are stale.

A job is in exactly one bucket for good (submit time is part of its key, and its account,
user, partition and QOS are its row's), so distinct-job counts add up across buckets.
Statement-level triggers with transition tables mark buckets dirty: on ``charge_lines``
every insert, update and delete, on ``jobs`` an update that changes a grouping column
(deletes reach charge_lines through the cascade). The writer recomputes the dirty
buckets before it commits (``collector.store.charges.refresh_rollups``): a poll touches a
few days, a backfill the days it read. A reader that finds a dirty bucket (a write that
did not refresh) falls back to the raw lines, so the rollups can be late, never wrong.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GROUP = ["posted_period", "cluster", "submit_day", "account", "user_name", "partition", "qos",
         "currency"]

_MARK = """
CREATE FUNCTION hpcb_mark_rollup_dirty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'jobs' THEN
        INSERT INTO charge_rollup_dirty (cluster, submit_day)
        SELECT DISTINCT n.cluster, (n.submit_time AT TIME ZONE 'UTC')::date
        FROM new_rows n JOIN old_rows o USING (cluster, job_id_raw, submit_time)
        WHERE (n.account, n.user_name, n.partition, n.qos)
              IS DISTINCT FROM (o.account, o.user_name, o.partition, o.qos)
        ON CONFLICT DO NOTHING;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO charge_rollup_dirty (cluster, submit_day)
        SELECT DISTINCT cluster, (submit_time AT TIME ZONE 'UTC')::date FROM old_rows
        ON CONFLICT DO NOTHING;
    ELSE
        INSERT INTO charge_rollup_dirty (cluster, submit_day)
        SELECT DISTINCT cluster, (submit_time AT TIME ZONE 'UTC')::date FROM new_rows
        ON CONFLICT DO NOTHING;
        IF TG_OP = 'UPDATE' THEN
            INSERT INTO charge_rollup_dirty (cluster, submit_day)
            SELECT DISTINCT cluster, (submit_time AT TIME ZONE 'UTC')::date FROM old_rows
            ON CONFLICT DO NOTHING;
        END IF;
    END IF;
    RETURN NULL;
END $$
"""

_TRIGGERS = (
    "CREATE TRIGGER hpcb_rollup_ins AFTER INSERT ON charge_lines REFERENCING NEW TABLE AS "
    "new_rows FOR EACH STATEMENT EXECUTE FUNCTION hpcb_mark_rollup_dirty()",
    "CREATE TRIGGER hpcb_rollup_del AFTER DELETE ON charge_lines REFERENCING OLD TABLE AS "
    "old_rows FOR EACH STATEMENT EXECUTE FUNCTION hpcb_mark_rollup_dirty()",
    "CREATE TRIGGER hpcb_rollup_upd AFTER UPDATE ON charge_lines REFERENCING OLD TABLE AS "
    "old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION "
    "hpcb_mark_rollup_dirty()",
    "CREATE TRIGGER hpcb_rollup_jobs_upd AFTER UPDATE ON jobs REFERENCING OLD TABLE AS "
    "old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION "
    "hpcb_mark_rollup_dirty()",
)


def _group_columns() -> list[sa.Column]:
    return [
        sa.Column("posted_period", sa.Text(), nullable=False),
        sa.Column("cluster", sa.Text(), nullable=False),
        sa.Column("submit_day", sa.Date(), nullable=False),
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("user_name", sa.Text(), nullable=False),
        sa.Column("partition", sa.Text(), nullable=False),
        sa.Column("qos", sa.Text(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
    ]


def upgrade() -> None:
    # NULL account/user/partition/qos are stored as '' in the rollups (a primary key
    # cannot hold NULL); Slurm never prints an empty name, and the reader maps '' back.
    op.create_table(
        "charge_rollup_daily", *_group_columns(),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("unit", sa.Text(), nullable=False),
        sa.Column("quantity", sa.Numeric(38, 6), nullable=False),
        sa.Column("amount", sa.Numeric(38, 6), nullable=False),
        sa.Column("lines", sa.BigInteger(), nullable=False),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(*GROUP, "resource", "unit", name="pk_charge_rollup_daily"),
    )
    op.create_index("ix_charge_rollup_daily_cluster_submit_day", "charge_rollup_daily",
                    ["cluster", "submit_day"])
    op.create_table(
        "charge_rollup_daily_jobs", *_group_columns(),
        sa.Column("amount", sa.Numeric(38, 6), nullable=False),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(*GROUP, name="pk_charge_rollup_daily_jobs"),
    )
    op.create_index("ix_charge_rollup_daily_jobs_cluster_submit_day", "charge_rollup_daily_jobs",
                    ["cluster", "submit_day"])
    op.create_table(
        "charge_rollup_dirty",
        sa.Column("cluster", sa.Text(), nullable=False),
        sa.Column("submit_day", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("cluster", "submit_day", name="pk_charge_rollup_dirty"),
    )
    op.execute(_MARK)
    for statement in _TRIGGERS:
        op.execute(statement)
    # Every bucket that has lines now is dirty: the next write's refresh builds them, and
    # until then reports read the raw lines.
    op.execute("INSERT INTO charge_rollup_dirty (cluster, submit_day) SELECT DISTINCT cluster, "
               "(submit_time AT TIME ZONE 'UTC')::date FROM charge_lines")


def downgrade() -> None:
    for name, table in (("hpcb_rollup_ins", "charge_lines"), ("hpcb_rollup_del", "charge_lines"),
                        ("hpcb_rollup_upd", "charge_lines"), ("hpcb_rollup_jobs_upd", "jobs")):
        op.execute(f"DROP TRIGGER {name} ON {table}")
    op.execute("DROP FUNCTION hpcb_mark_rollup_dirty()")
    op.drop_table("charge_rollup_dirty")
    op.drop_index("ix_charge_rollup_daily_jobs_cluster_submit_day",
                  table_name="charge_rollup_daily_jobs")
    op.drop_table("charge_rollup_daily_jobs")
    op.drop_index("ix_charge_rollup_daily_cluster_submit_day", table_name="charge_rollup_daily")
    op.drop_table("charge_rollup_daily")
