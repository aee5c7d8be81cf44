"""jobs.db_index: numeric(20,0), for slurmdbd's unsigned 64-bit DBIndex.

Slurm 24.11 and later print DBIndex values above 2^63 (12864120071854004224), which a
``bigint`` cannot hold: the COPY of such a job failed the whole poll and the watermark
never moved. The column keeps the value (the roll-up uses it to tell a requeued job's
records apart) as ``numeric(20,0)``, checked to 0 .. 2^64-1. ``jobs`` has no view or
index on the column, so the type change rewrites the table once and nothing else.

Downgrade refuses, naming the rows, while any value is above 2^63-1 (bigint would lose
them); with none it goes back to bigint.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

U64_MAX = 2**64 - 1
CHECK = "ck_jobs_db_index_u64"


def upgrade() -> None:
    op.alter_column("jobs", "db_index", type_=sa.Numeric(20, 0),
                    existing_type=sa.BigInteger(), existing_nullable=True,
                    postgresql_using="db_index::numeric(20,0)")
    op.create_check_constraint(CHECK, "jobs", f"db_index >= 0 AND db_index <= {U64_MAX}")


def downgrade() -> None:
    op.execute("""
        DO $$
        DECLARE n bigint;
        BEGIN
            SELECT count(*) INTO n FROM jobs WHERE db_index > 9223372036854775807;
            IF n > 0 THEN
                RAISE EXCEPTION 'jobs.db_index: % rows hold a DBIndex above 2^63-1, which '
                    'bigint cannot store; downgrade refused', n;
            END IF;
        END $$""")
    op.drop_constraint(CHECK, "jobs", type_="check")
    op.alter_column("jobs", "db_index", type_=sa.BigInteger(),
                    existing_type=sa.Numeric(20, 0), existing_nullable=True,
                    postgresql_using="db_index::bigint")
