"""Charges: rate-card versions, charge lines, closed billing periods, budgets.

Hand-written to match collector/store/models.py exactly (tests/integration/test_charges.py
upgrades an empty database and asserts compare_metadata finds no difference).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)
# A billing period is a calendar month 'YYYY-MM' (same as models.PERIOD_PATTERN; copied,
# not imported, so this migration never changes when the models do).
PERIOD = "^[0-9]{4}-(0[1-9]|1[0-2])$"


def upgrade() -> None:
    op.create_table(
        "rate_cards",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("loaded_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rate_cards"),
        sa.UniqueConstraint("version", name="uq_rate_cards_version"),
    )

    op.create_table(
        "charge_lines",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("cluster", sa.Text(), nullable=False),
        sa.Column("job_id_raw", sa.BigInteger(), nullable=False),
        sa.Column("submit_time", TZ, nullable=False),
        sa.Column("usage_period", sa.Text(), nullable=False),
        sa.Column("posted_period", sa.Text(), nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("quantity", sa.Numeric(24, 6), nullable=False),
        sa.Column("unit", sa.Text(), nullable=False),
        sa.Column("rate", sa.Numeric(20, 9), nullable=False),
        sa.Column("amount", sa.Numeric(20, 6), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("rate_card_id", sa.BigInteger(), nullable=False),
        sa.Column("basis", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("kind IN ('charge', 'correction')", name="ck_charge_lines_kind"),
        sa.CheckConstraint("basis IN ('allocated', 'used', 'max')",
                           name="ck_charge_lines_basis"),
        sa.CheckConstraint(f"usage_period ~ '{PERIOD}'", name="ck_charge_lines_usage_period"),
        sa.CheckConstraint(f"posted_period ~ '{PERIOD}'",
                           name="ck_charge_lines_posted_period"),
        sa.ForeignKeyConstraint(["cluster", "job_id_raw", "submit_time"],
                                ["jobs.cluster", "jobs.job_id_raw", "jobs.submit_time"],
                                ondelete="CASCADE", name="fk_charge_lines_cluster_jobs"),
        sa.ForeignKeyConstraint(["rate_card_id"], ["rate_cards.id"],
                                name="fk_charge_lines_rate_card_id_rate_cards"),
        sa.PrimaryKeyConstraint("id", name="pk_charge_lines"),
    )
    op.create_index("ix_charge_lines_cluster_job_id_raw_submit_time", "charge_lines",
                    ["cluster", "job_id_raw", "submit_time"])
    op.create_index("ix_charge_lines_posted_period_cluster", "charge_lines",
                    ["posted_period", "cluster"])

    op.create_table(
        "billing_periods",
        sa.Column("period", sa.Text(), nullable=False),
        sa.Column("closed_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.Column("closed_by", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.CheckConstraint(f"period ~ '{PERIOD}'", name="ck_billing_periods_period"),
        sa.PrimaryKeyConstraint("period", name="pk_billing_periods"),
    )

    op.create_table(
        "budgets",
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("period", sa.Text(), nullable=False),
        sa.Column("amount", sa.Numeric(20, 6), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("updated_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(f"period ~ '{PERIOD}'", name="ck_budgets_period"),
        sa.CheckConstraint("amount >= 0", name="ck_budgets_amount_not_negative"),
        sa.PrimaryKeyConstraint("account", "period", name="pk_budgets"),
    )


def downgrade() -> None:
    op.drop_table("budgets")
    op.drop_table("billing_periods")
    op.drop_index("ix_charge_lines_posted_period_cluster", table_name="charge_lines")
    op.drop_index("ix_charge_lines_cluster_job_id_raw_submit_time", table_name="charge_lines")
    op.drop_table("charge_lines")
    op.drop_table("rate_cards")
