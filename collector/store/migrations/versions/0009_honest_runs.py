"""Honest runs: a 'partial' outcome, and quarantined records an operator accepted.

- ``collector_runs.outcome`` may be ``partial``: the run stored what it read except some
  records, which it quarantined (``ok`` means every record read was stored or
  deliberately skipped; ``failed`` that nothing was stored).
- ``quarantine.accepted_at``: when an operator accepted losing that record
  (``hpc-billing quarantine --accept``). A later run that meets the same raw text again
  skips it deliberately instead of quarantining it, so a record that will never parse
  does not hold a sacct watermark back for good. A partial index keeps the accepted
  rows (few) apart from the rest.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OUTCOME = "ck_collector_runs_outcome"


def upgrade() -> None:
    op.drop_constraint(_OUTCOME, "collector_runs", type_="check")
    op.create_check_constraint(
        _OUTCOME, "collector_runs", "outcome IN ('running', 'ok', 'partial', 'failed')")
    op.add_column("quarantine", sa.Column("accepted_at", sa.DateTime(timezone=True),
                                          nullable=True))
    op.create_index("ix_quarantine_accepted", "quarantine", ["accepted_at"],
                    postgresql_where=sa.text("accepted_at IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_quarantine_accepted", table_name="quarantine")
    op.drop_column("quarantine", "accepted_at")
    # A partial run becomes failed: the older schema has no word for it.
    op.execute("UPDATE collector_runs SET outcome = 'failed' WHERE outcome = 'partial'")
    op.drop_constraint(_OUTCOME, "collector_runs", type_="check")
    op.create_check_constraint(
        _OUTCOME, "collector_runs", "outcome IN ('running', 'ok', 'failed')")
