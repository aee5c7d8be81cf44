"""Initial schema: clusters, jobs, collector runs, watermarks, quarantine.

Hand-written to match collector/store/models.py exactly (tests/integration/test_store.py
upgrades an empty database and asserts compare_metadata finds no difference).

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "clusters",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("created_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_clusters"),
    )

    op.create_table(
        "jobs",
        sa.Column("cluster", sa.Text(), nullable=False),
        sa.Column("job_id_raw", sa.BigInteger(), nullable=False),
        sa.Column("submit_time", TZ, nullable=False),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("state_raw", sa.Text(), nullable=False),
        sa.Column("array_job_id", sa.BigInteger(), nullable=True),
        sa.Column("array_task_id", sa.Integer(), nullable=True),
        sa.Column("het_job_id", sa.BigInteger(), nullable=True),
        sa.Column("het_job_offset", sa.Integer(), nullable=True),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("user_name", sa.Text(), nullable=True),
        sa.Column("uid", sa.BigInteger(), nullable=True),
        sa.Column("group_name", sa.Text(), nullable=True),
        sa.Column("account", sa.Text(), nullable=True),
        sa.Column("partition", sa.Text(), nullable=True),
        sa.Column("qos", sa.Text(), nullable=True),
        sa.Column("wckey", sa.Text(), nullable=True),
        sa.Column("reservation", sa.Text(), nullable=True),
        sa.Column("exit_code", sa.Text(), nullable=True),
        sa.Column("derived_exit_code", sa.Text(), nullable=True),
        sa.Column("eligible_time", TZ, nullable=True),
        sa.Column("start_time", TZ, nullable=True),
        sa.Column("end_time", TZ, nullable=True),
        sa.Column("elapsed_s", sa.BigInteger(), nullable=False),
        sa.Column("timelimit_min", sa.BigInteger(), nullable=True),
        sa.Column("nodes", sa.Integer(), nullable=False),
        sa.Column("cpus", sa.Integer(), nullable=False),
        sa.Column("mem_bytes", sa.BigInteger(), nullable=False),
        sa.Column("billing_units", sa.BigInteger(), nullable=True),
        sa.Column("gpus", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"),
                  nullable=False),
        sa.Column("gpu_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("node_list", sa.Text(), nullable=True),
        sa.Column("cpu_time_alloc_s", sa.BigInteger(), nullable=True),
        sa.Column("cpu_used_s", sa.Numeric(18, 3), nullable=True),
        sa.Column("max_rss_bytes", sa.BigInteger(), nullable=True),
        sa.Column("mem_used_byte_s", sa.Numeric(38, 0), nullable=True),
        sa.Column("energy_j", sa.BigInteger(), nullable=True),
        sa.Column("db_index", sa.BigInteger(), nullable=True),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("content_hash", sa.Text(), nullable=False),
        sa.Column("first_run_id", sa.BigInteger(), nullable=True),
        sa.Column("last_run_id", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("jsonb_typeof(gpus) = 'object'", name="ck_jobs_gpus_is_object"),
        sa.ForeignKeyConstraint(["cluster"], ["clusters.name"],
                                name="fk_jobs_cluster_clusters"),
        sa.PrimaryKeyConstraint("cluster", "job_id_raw", "submit_time", name="pk_jobs"),
    )
    op.create_index("ix_jobs_cluster_submit_time", "jobs",
                    ["cluster", "submit_time", "job_id_raw"])
    op.create_index("ix_jobs_cluster_end_time", "jobs", ["cluster", "end_time"])

    op.create_table(
        "collector_runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("cluster", sa.Text(), nullable=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("window_since", TZ, nullable=True),
        sa.Column("window_until", TZ, nullable=True),
        sa.Column("started_at", TZ, server_default=sa.text("clock_timestamp()"),
                  nullable=False),
        sa.Column("finished_at", TZ, nullable=True),
        sa.Column("duration_s", sa.Double(), nullable=True),
        sa.Column("outcome", sa.Text(), server_default=sa.text("'running'"), nullable=False),
        sa.Column("records_read", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("jobs_inserted", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("jobs_updated", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("jobs_unchanged", sa.BigInteger(), server_default=sa.text("0"),
                  nullable=False),
        sa.Column("quarantined", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("lines_read", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint("kind IN ('poll', 'file', 'backfill')",
                           name="ck_collector_runs_kind"),
        sa.CheckConstraint("outcome IN ('running', 'ok', 'failed')",
                           name="ck_collector_runs_outcome"),
        sa.ForeignKeyConstraint(["cluster"], ["clusters.name"],
                                name="fk_collector_runs_cluster_clusters"),
        sa.PrimaryKeyConstraint("id", name="pk_collector_runs"),
    )
    op.create_index("ix_collector_runs_cluster_id", "collector_runs", ["cluster", "id"])

    op.create_table(
        "watermarks",
        sa.Column("cluster", sa.Text(), nullable=False),
        sa.Column("stream", sa.Text(), nullable=False),
        sa.Column("position", TZ, nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["cluster"], ["clusters.name"],
                                name="fk_watermarks_cluster_clusters"),
        sa.ForeignKeyConstraint(["run_id"], ["collector_runs.id"], ondelete="SET NULL",
                                name="fk_watermarks_run_id_collector_runs"),
        sa.PrimaryKeyConstraint("cluster", "stream", name="pk_watermarks"),
    )

    op.create_table(
        "quarantine",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("cluster", sa.Text(), nullable=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("line_no", sa.BigInteger(), nullable=True),
        sa.Column("job_id", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("created_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["collector_runs.id"], ondelete="CASCADE",
                                name="fk_quarantine_run_id_collector_runs"),
        sa.ForeignKeyConstraint(["cluster"], ["clusters.name"],
                                name="fk_quarantine_cluster_clusters"),
        sa.PrimaryKeyConstraint("id", name="pk_quarantine"),
    )
    op.create_index("ix_quarantine_run_id", "quarantine", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_quarantine_run_id", table_name="quarantine")
    op.drop_table("quarantine")
    op.drop_table("watermarks")
    op.drop_index("ix_collector_runs_cluster_id", table_name="collector_runs")
    op.drop_table("collector_runs")
    op.drop_index("ix_jobs_cluster_end_time", table_name="jobs")
    op.drop_index("ix_jobs_cluster_submit_time", table_name="jobs")
    op.drop_table("jobs")
    op.drop_table("clusters")
