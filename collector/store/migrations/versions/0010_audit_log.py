"""The audit trail: table ``audit_log``, append-only (issue 20, docs/finance.md).

One row per entry of the HMAC-SHA256 hash chain of ``billing.audit``: seq (1, 2, ...,
assigned by the writer under a table lock, no sequence), at, actor, action, subject,
details (a JSON object), prev and hash (64 lower-case hex characters).

Append-only, in two layers that stop mistakes and plain DML (the chain itself is what
shows an edit made by anyone who gets past them: ``hpc-billing audit verify``):

- triggers refuse UPDATE and DELETE of any row (``ALTER TABLE ... DISABLE TRIGGER`` by
  the table's owner gets past them; the chain then shows the change);
- UPDATE, DELETE and TRUNCATE are revoked from the role that runs this migration (the
  collector's role, which owns the database: deploy/sql/roles.sql); it keeps SELECT and
  INSERT. An owner may grant them back to itself, a superuser ignores them.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = """
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % of entry % refused', TG_OP, OLD.seq
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("details", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("prev", sa.CHAR(64), nullable=False),
        sa.Column("hash", sa.CHAR(64), nullable=False),
        sa.CheckConstraint("seq >= 1", name=op.f("ck_audit_log_seq_positive")),
        sa.CheckConstraint("prev ~ '^[0-9a-f]{64}$'", name=op.f("ck_audit_log_prev_hex")),
        sa.CheckConstraint("hash ~ '^[0-9a-f]{64}$'", name=op.f("ck_audit_log_hash_hex")),
        sa.CheckConstraint("jsonb_typeof(details) = 'object'",
                           name=op.f("ck_audit_log_details_is_object")),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_log")),
    )
    op.execute(_FUNCTION)
    op.execute("CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
               "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()")
    op.execute("CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
               "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()")
    op.execute("REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM CURRENT_USER")


def downgrade() -> None:
    op.drop_table("audit_log")
    op.execute("DROP FUNCTION audit_log_append_only()")
