"""Run log: reprice runs, and what each run priced.

collector_runs gets jobs_priced, charge_lines_written and the rate-card version used, and
its kind may be 'reprice' (hpc-billing reprice logs itself like any other run).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("collector_runs", sa.Column("jobs_priced", sa.BigInteger(),
                                              server_default=sa.text("0"), nullable=False))
    op.add_column("collector_runs", sa.Column("charge_lines_written", sa.BigInteger(),
                                              server_default=sa.text("0"), nullable=False))
    op.add_column("collector_runs", sa.Column("rate_card_id", sa.BigInteger(), nullable=True))
    op.create_foreign_key("fk_collector_runs_rate_card_id_rate_cards", "collector_runs",
                          "rate_cards", ["rate_card_id"], ["id"])
    op.drop_constraint("ck_collector_runs_kind", "collector_runs", type_="check")
    op.create_check_constraint("ck_collector_runs_kind", "collector_runs",
                               "kind IN ('poll', 'file', 'backfill', 'reprice')")


def downgrade() -> None:
    op.execute("DELETE FROM collector_runs WHERE kind = 'reprice'")
    op.drop_constraint("ck_collector_runs_kind", "collector_runs", type_="check")
    op.create_check_constraint("ck_collector_runs_kind", "collector_runs",
                               "kind IN ('poll', 'file', 'backfill')")
    op.drop_constraint("fk_collector_runs_rate_card_id_rate_cards", "collector_runs",
                       type_="foreignkey")
    op.drop_column("collector_runs", "rate_card_id")
    op.drop_column("collector_runs", "charge_lines_written")
    op.drop_column("collector_runs", "jobs_priced")
