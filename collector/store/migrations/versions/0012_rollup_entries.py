"""Job counts of a range of months from the rollups (issue 19, docs/design/engine.md §13).

Per-month distinct job counts do not add up across months (a job with lines in two
months counts once in the range). What does, exactly, for a range of consecutive posted
months [a, b] and one rollup bucket (cluster x assoc x currency, and x resource x unit at
the resource level):

    jobs in [a, b] = jobs(a) + sum over m in (a, b] of jobs_entered(m)
                     - (re-entries in (a, b] whose previous month is in [a, b])

where ``jobs_entered(m)`` counts the bucket's jobs with lines in m and none in m - 1, and
a re-entry is such a job that had lines in the bucket before (its previous month with
lines is at least two months back: a closed-period correction posted months later, say).

- ``rollup_resource.jobs_entered`` and ``rollup_jobs.jobs_entered``: those counts;
- ``rollup_reentries``: the re-entries per (posted month, previous month, bucket);
  ``resource`` and ``unit`` are '' for the rollup_jobs level (every resource).

Both are filled from the lines; the downgrade drops them.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each job's months with lines in a bucket, and the month before with lines (NULL: none).
# {extra}: the resource level's columns.
_PRESENCE = (
    "SELECT b.*, lag(b.posted_month) OVER (PARTITION BY b.cluster_id, b.job_id_raw,"
    " b.submit_time, b.currency{extra_b} ORDER BY b.posted_month) AS prev_month"
    " FROM (SELECT DISTINCT l.posted_month, l.cluster_id, j.assoc_id, p.currency{extra_p},"
    " l.job_id_raw, l.submit_time FROM charge_rows l JOIN prices p ON p.id = l.price_id"
    " JOIN job_rows j ON j.cluster_id = l.cluster_id AND j.job_id_raw = l.job_id_raw"
    " AND j.submit_time = l.submit_time) b")
_FINE = _PRESENCE.format(extra_b=", b.resource, b.unit", extra_p=", p.resource, p.unit")
_COARSE = _PRESENCE.format(extra_b="", extra_p="")
_ENTERED = "(prev_month IS NULL OR prev_month < (posted_month - interval '1 month'))"
_GAP = "prev_month < (posted_month - interval '1 month')"

UPGRADE = (
    "ALTER TABLE rollup_resource ADD COLUMN jobs_entered bigint NOT NULL DEFAULT 0",
    "ALTER TABLE rollup_jobs ADD COLUMN jobs_entered bigint NOT NULL DEFAULT 0",
    "CREATE TABLE rollup_reentries ("
    " posted_month date NOT NULL, prev_month date NOT NULL, cluster_id smallint NOT NULL,"
    " assoc_id integer NOT NULL, currency text NOT NULL, resource text NOT NULL,"
    " unit text NOT NULL, jobs bigint NOT NULL,"
    " CONSTRAINT pk_rollup_reentries PRIMARY KEY (posted_month, prev_month, cluster_id,"
    " assoc_id, currency, resource, unit))",
    "UPDATE rollup_resource r SET jobs_entered = e.n FROM (SELECT posted_month, cluster_id,"
    f" assoc_id, currency, resource, unit, count(*) AS n FROM ({_FINE}) x WHERE {_ENTERED}"
    " GROUP BY 1, 2, 3, 4, 5, 6) e WHERE r.posted_month = e.posted_month"
    " AND r.cluster_id = e.cluster_id AND r.assoc_id = e.assoc_id AND r.currency = e.currency"
    " AND r.resource = e.resource AND r.unit = e.unit",
    "UPDATE rollup_jobs r SET jobs_entered = e.n FROM (SELECT posted_month, cluster_id,"
    f" assoc_id, currency, count(*) AS n FROM ({_COARSE}) x WHERE {_ENTERED}"
    " GROUP BY 1, 2, 3, 4) e WHERE r.posted_month = e.posted_month"
    " AND r.cluster_id = e.cluster_id AND r.assoc_id = e.assoc_id AND r.currency = e.currency",
    "INSERT INTO rollup_reentries SELECT posted_month, prev_month, cluster_id, assoc_id,"
    f" currency, resource, unit, count(*) FROM ({_FINE}) x WHERE {_GAP}"
    " GROUP BY 1, 2, 3, 4, 5, 6, 7",
    "INSERT INTO rollup_reentries SELECT posted_month, prev_month, cluster_id, assoc_id,"
    f" currency, '', '', count(*) FROM ({_COARSE}) x WHERE {_GAP} GROUP BY 1, 2, 3, 4, 5",
    "ALTER TABLE rollup_resource ALTER COLUMN jobs_entered DROP DEFAULT",
    "ALTER TABLE rollup_jobs ALTER COLUMN jobs_entered DROP DEFAULT",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE rollup_reentries")
    op.execute("ALTER TABLE rollup_jobs DROP COLUMN jobs_entered")
    op.execute("ALTER TABLE rollup_resource DROP COLUMN jobs_entered")
