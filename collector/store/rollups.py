"""The monthly rollups (migration 0011, docs/design/engine.md §6): delta maintenance,
``rollup verify`` and ``rollup rebuild``.

``rollup_resource`` holds, per posted month x cluster x assoc x currency x resource x
unit, the summed quantity and amount (integer millionths), the number of lines and of
distinct jobs; ``rollup_jobs`` the amount and distinct jobs per posted month x cluster x
assoc x currency. A line counts in the bucket of its job's CURRENT assoc.

Maintenance is set-based and computed from the rows actually inserted and deleted, in the
writer's transaction:

1. a writing statement puts the lines it deleted (sign -1) and inserted (+1) into the temp
   table ``hpcb_rollup_delta`` (``_SQL_DELTA_*`` in the writers), then
   ``record_deltas`` folds them into per-bucket deltas in ``hpcb_rollup_pending``: sums,
   line counts, and the distinct-job delta ``count(DISTINCT job) FILTER (sign > 0) -
   count(DISTINCT job) FILTER (sign < 0)``, which is right per statement because a
   statement deletes ALL of a job's lines in a bucket before it inserts the new ones;
2. ``refresh_rollups`` applies the summed pending deltas once (one upsert per rollup
   table, buckets a change emptied deleted). Writers call it before they commit; a
   ``before_commit`` hook applies what a caller forgot, so deltas are never lost.

A delta bug would be silent, hence ``verify`` (recompute buckets from the lines and
compare) and ``rebuild`` (rewrite them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.orm import Session

from collector.store.periods import check_period

_PENDING_FLAG = "hpcb_rollup_pending"

SQL_CREATE_DELTA = (
    "CREATE TEMP TABLE IF NOT EXISTS hpcb_rollup_delta (posted_month date NOT NULL,"
    " cluster_id smallint NOT NULL, assoc_id integer NOT NULL, price_id integer NOT NULL,"
    " job_id_raw bigint NOT NULL, submit_time timestamptz NOT NULL,"
    " quantity_micro bigint NOT NULL, amount_micro bigint NOT NULL, sign smallint NOT NULL)"
    " ON COMMIT DELETE ROWS")
SQL_TRUNCATE_DELTA = "TRUNCATE hpcb_rollup_delta"
_SQL_CREATE_PENDING = (
    "CREATE TEMP TABLE IF NOT EXISTS hpcb_rollup_pending (posted_month date NOT NULL,"
    " cluster_id smallint NOT NULL, assoc_id integer NOT NULL, currency text NOT NULL,"
    " resource text, unit text, quantity_micro numeric NOT NULL,"
    " amount_micro numeric NOT NULL, lines bigint NOT NULL, jobs bigint NOT NULL)"
    " ON COMMIT DELETE ROWS")
_JOB = "(d.job_id_raw, d.submit_time)"
_JOBS_DELTA = (f"count(DISTINCT {_JOB}) FILTER (WHERE d.sign > 0)"
               f" - count(DISTINCT {_JOB}) FILTER (WHERE d.sign < 0)")
# Fine rows carry resource and unit; coarse rows (rollup_jobs) have them NULL.
_SQL_FOLD = (
    "INSERT INTO hpcb_rollup_pending SELECT d.posted_month, d.cluster_id, d.assoc_id,"
    " p.currency, p.resource, p.unit, sum(d.sign * d.quantity_micro::numeric),"
    f" sum(d.sign * d.amount_micro::numeric), sum(d.sign), {_JOBS_DELTA}"
    " FROM hpcb_rollup_delta d JOIN prices p ON p.id = d.price_id"
    " GROUP BY d.posted_month, d.cluster_id, d.assoc_id, p.currency, p.resource, p.unit"
    " UNION ALL"
    " SELECT d.posted_month, d.cluster_id, d.assoc_id, p.currency, NULL, NULL, 0,"
    f" sum(d.sign * d.amount_micro::numeric), 0, {_JOBS_DELTA}"
    " FROM hpcb_rollup_delta d JOIN prices p ON p.id = d.price_id"
    " GROUP BY d.posted_month, d.cluster_id, d.assoc_id, p.currency")
_SQL_APPLY = (
    "INSERT INTO rollup_resource AS r (posted_month, cluster_id, assoc_id, currency, resource,"
    " unit, quantity_micro, amount_micro, lines, jobs)"
    " SELECT posted_month, cluster_id, assoc_id, currency, resource, unit,"
    " sum(quantity_micro), sum(amount_micro), sum(lines), sum(jobs)"
    " FROM hpcb_rollup_pending WHERE resource IS NOT NULL"
    " GROUP BY posted_month, cluster_id, assoc_id, currency, resource, unit"
    " ON CONFLICT (posted_month, cluster_id, assoc_id, currency, resource, unit) DO UPDATE"
    " SET quantity_micro = r.quantity_micro + excluded.quantity_micro,"
    " amount_micro = r.amount_micro + excluded.amount_micro,"
    " lines = r.lines + excluded.lines, jobs = r.jobs + excluded.jobs",
    "INSERT INTO rollup_jobs AS r (posted_month, cluster_id, assoc_id, currency, amount_micro,"
    " jobs)"
    " SELECT posted_month, cluster_id, assoc_id, currency, sum(amount_micro), sum(jobs)"
    " FROM hpcb_rollup_pending WHERE resource IS NULL"
    " GROUP BY posted_month, cluster_id, assoc_id, currency"
    " ON CONFLICT (posted_month, cluster_id, assoc_id, currency) DO UPDATE"
    " SET amount_micro = r.amount_micro + excluded.amount_micro, jobs = r.jobs + excluded.jobs",
    # Buckets a change emptied (an account moved, a job no longer charged).
    "DELETE FROM rollup_resource r USING (SELECT DISTINCT posted_month, cluster_id, assoc_id,"
    " currency, resource, unit FROM hpcb_rollup_pending WHERE resource IS NOT NULL) k"
    " WHERE r.posted_month = k.posted_month AND r.cluster_id = k.cluster_id"
    " AND r.assoc_id = k.assoc_id AND r.currency = k.currency AND r.resource = k.resource"
    " AND r.unit = k.unit AND r.lines = 0",
    "DELETE FROM rollup_jobs r USING (SELECT DISTINCT posted_month, cluster_id, assoc_id,"
    " currency FROM hpcb_rollup_pending WHERE resource IS NULL) k"
    " WHERE r.posted_month = k.posted_month AND r.cluster_id = k.cluster_id"
    " AND r.assoc_id = k.assoc_id AND r.currency = k.currency AND r.jobs = 0",
    "TRUNCATE hpcb_rollup_pending",
)
_SQL_PENDING_COUNT = "SELECT count(*) FROM hpcb_rollup_pending"
# Partitions never analyzed (reltuples < 0: new this poll) get statistics now: parents of
# partitioned tables are never auto-analyzed, and a new month's partition would otherwise
# be planned as empty until autovacuum comes by (a nested loop over a month of jobs).
_SQL_ANALYZE_NEW_PARTITIONS = """
DO $analyze$
DECLARE r record;
BEGIN
    FOR r IN SELECT c.oid::regclass AS part FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent IN ('public.job_rows'::regclass, 'public.charge_rows'::regclass)
               AND c.reltuples < 0 LOOP
        EXECUTE format('ANALYZE %s', r.part);
    END LOOP;
END
$analyze$
"""


def mark_written(session: Session) -> None:
    """Note that this transaction wrote jobs or lines: ``refresh_rollups`` (or the commit)
    applies the pending deltas and analyzes new partitions."""
    session.info[_PENDING_FLAG] = True


def record_deltas(session: Session) -> None:
    """Fold ``hpcb_rollup_delta`` (what the caller's statement just deleted and inserted)
    into the transaction's pending deltas, then empty it."""
    session.execute(text(_SQL_CREATE_PENDING))
    session.execute(text(_SQL_FOLD))
    session.execute(text(SQL_TRUNCATE_DELTA))
    mark_written(session)


def refresh_rollups(session: Session) -> int:
    """Apply the transaction's pending rollup deltas (writers call it before they
    commit); returns how many delta rows were applied."""
    if not session.info.pop(_PENDING_FLAG, False):
        return 0
    session.execute(text(_SQL_CREATE_PENDING))
    pending = int(session.execute(text(_SQL_PENDING_COUNT)).scalar_one())
    for statement in _SQL_APPLY:
        session.execute(text(statement))
    session.execute(text(_SQL_ANALYZE_NEW_PARTITIONS))
    return pending


@event.listens_for(Session, "before_commit")
def _apply_before_commit(session: Session) -> None:
    if session.info.get(_PENDING_FLAG):
        refresh_rollups(session)


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(_PENDING_FLAG, None)


# --------------------------------------------------------------- verify and rebuild

_EXPECTED_FINE = (
    "SELECT l.posted_month, l.cluster_id, j.assoc_id, p.currency, p.resource, p.unit,"
    " sum(l.quantity_micro)::numeric AS quantity_micro,"
    " sum(l.amount_micro)::numeric AS amount_micro, count(*) AS lines,"
    " count(DISTINCT (l.job_id_raw, l.submit_time)) AS jobs"
    " FROM charge_rows l JOIN prices p ON p.id = l.price_id"
    " JOIN job_rows j ON j.cluster_id = l.cluster_id AND j.job_id_raw = l.job_id_raw"
    " AND j.submit_time = l.submit_time"
    " WHERE (CAST(:month AS date) IS NULL OR l.posted_month = CAST(:month AS date))"
    " GROUP BY l.posted_month, l.cluster_id, j.assoc_id, p.currency, p.resource, p.unit")
_EXPECTED_COARSE = (
    "SELECT l.posted_month, l.cluster_id, j.assoc_id, p.currency,"
    " sum(l.amount_micro)::numeric AS amount_micro,"
    " count(DISTINCT (l.job_id_raw, l.submit_time)) AS jobs"
    " FROM charge_rows l JOIN prices p ON p.id = l.price_id"
    " JOIN job_rows j ON j.cluster_id = l.cluster_id AND j.job_id_raw = l.job_id_raw"
    " AND j.submit_time = l.submit_time"
    " WHERE (CAST(:month AS date) IS NULL OR l.posted_month = CAST(:month AS date))"
    " GROUP BY l.posted_month, l.cluster_id, j.assoc_id, p.currency")
_FINE_KEY = ("posted_month", "cluster_id", "assoc_id", "currency", "resource", "unit")
_COARSE_KEY = ("posted_month", "cluster_id", "assoc_id", "currency")
_SQL_VERIFY_FINE = (
    f"SELECT count(*) FROM ({_EXPECTED_FINE}) e FULL JOIN (SELECT * FROM rollup_resource"
    " WHERE (CAST(:month AS date) IS NULL OR posted_month = CAST(:month AS date))) r"
    f" USING ({', '.join(_FINE_KEY)})"
    " WHERE (e.quantity_micro, e.amount_micro, e.lines, e.jobs)"
    " IS DISTINCT FROM (r.quantity_micro, r.amount_micro, r.lines, r.jobs)")
_SQL_VERIFY_COARSE = (
    f"SELECT count(*) FROM ({_EXPECTED_COARSE}) e FULL JOIN (SELECT * FROM rollup_jobs"
    " WHERE (CAST(:month AS date) IS NULL OR posted_month = CAST(:month AS date))) r"
    f" USING ({', '.join(_COARSE_KEY)})"
    " WHERE (e.amount_micro, e.jobs) IS DISTINCT FROM (r.amount_micro, r.jobs)")
_SQL_COUNT_BUCKETS = (
    "SELECT (SELECT count(*) FROM rollup_resource WHERE (CAST(:month AS date) IS NULL"
    " OR posted_month = CAST(:month AS date))), (SELECT count(*) FROM rollup_jobs WHERE"
    " (CAST(:month AS date) IS NULL OR posted_month = CAST(:month AS date)))")
_SQL_REBUILD = (
    "DELETE FROM rollup_resource WHERE (CAST(:month AS date) IS NULL"
    " OR posted_month = CAST(:month AS date))",
    "DELETE FROM rollup_jobs WHERE (CAST(:month AS date) IS NULL"
    " OR posted_month = CAST(:month AS date))",
    "INSERT INTO rollup_resource (posted_month, cluster_id, assoc_id, currency, resource, unit,"
    f" quantity_micro, amount_micro, lines, jobs) {_EXPECTED_FINE}",
    "INSERT INTO rollup_jobs (posted_month, cluster_id, assoc_id, currency, amount_micro, jobs)"
    f" {_EXPECTED_COARSE}",
)


@dataclass(frozen=True, slots=True)
class RollupCheck:
    """What ``verify`` found: buckets held, and buckets that differ from the lines (a
    bucket missing on either side counts as differing)."""

    period: str | None
    resource_buckets: int
    job_buckets: int
    resource_differing: int
    jobs_differing: int

    @property
    def ok(self) -> bool:
        return self.resource_differing == 0 and self.jobs_differing == 0


def _month(period: str | None) -> date | None:
    if period is None:
        return None
    check_period(period)
    return date(int(period[:4]), int(period[5:7]), 1)


def verify(session: Session, period: str | None = None) -> RollupCheck:
    """Recompute the buckets of ``period`` (posted; None: every period) from the lines
    and compare them with the rollups (pending deltas applied first)."""
    refresh_rollups(session)
    params: dict[str, Any] = {"month": _month(period)}
    fine = int(session.execute(text(_SQL_VERIFY_FINE), params).scalar_one())
    coarse = int(session.execute(text(_SQL_VERIFY_COARSE), params).scalar_one())
    buckets = session.execute(text(_SQL_COUNT_BUCKETS), params).one()
    return RollupCheck(period=period, resource_buckets=int(buckets[0]),
                       job_buckets=int(buckets[1]), resource_differing=fine,
                       jobs_differing=coarse)


def rebuild(session: Session, period: str | None = None) -> RollupCheck:
    """Rewrite the buckets of ``period`` (None: all) from the lines; returns the check
    of the result. The caller commits."""
    refresh_rollups(session)
    params: dict[str, Any] = {"month": _month(period)}
    for statement in _SQL_REBUILD:
        session.execute(text(statement), params)
    return verify(session, period)
