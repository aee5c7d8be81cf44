"""jobs.raw_digest: skip jobs whose raw sacct lines are unchanged, before parsing them.

The parser digests each job's raw lines (job line and its steps, with the parser's
settings); the writer stores the digest with the job. A later read of the same window
looks the digests up per batch of jobs (by the primary key's prefix) and skips the jobs
already stored from exactly those lines. NULL: no digest (other sources, rows written
before this revision, or a job with a quarantined line), so the job is parsed as before.
Adding a nullable column without a default rewrites nothing.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("raw_digest", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "raw_digest")
