"""The monthly rollups (migration 0011, docs/design/engine.md §6): delta maintenance,
``rollup verify`` and ``rollup rebuild``.

``rollup_resource`` holds, per posted month x cluster x assoc x currency x resource x
unit, the summed quantity and amount (integer millionths), the number of lines and of
distinct jobs; ``rollup_jobs`` the amount and distinct jobs per posted month x cluster x
assoc x currency. A line counts in the bucket of its job's CURRENT assoc. Both also hold
``jobs_entered`` (the jobs without lines in the bucket the month before) and
``rollup_reentries`` the entries after a gap (migration 0012): what a range of months
counts distinct jobs from (``_SQL_FOLD_ENTRIES``, docs/design/engine.md §13).

Maintenance is set-based and computed from the rows actually inserted and deleted, in the
writer's transaction:

1. a writing statement puts the lines it deleted (sign -1) and inserted (+1) into the temp
   table ``hpcb_rollup_delta`` (``_SQL_DELTA_*`` in the writers), then
   ``record_deltas`` folds them into per-bucket deltas in ``hpcb_rollup_pending``: sums,
   line counts, and the distinct-job delta ``count(DISTINCT job) FILTER (sign > 0) -
   count(DISTINCT job) FILTER (sign < 0)``, which is right per statement because a
   statement deletes ALL of a job's lines in a bucket before it inserts the new ones;
   and the entry deltas, from each changed job's months with lines before and after the
   statement (``_SQL_FOLD_ENTRIES``);
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

import polars as pl
import psycopg
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from collector.store.bulk import Kind, copy_frame, copy_statement
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
    " amount_micro numeric NOT NULL, lines bigint NOT NULL, jobs bigint NOT NULL,"
    " jobs_entered bigint NOT NULL DEFAULT 0) ON COMMIT DELETE ROWS")
_SQL_CREATE_PENDING_GAPS = (
    "CREATE TEMP TABLE IF NOT EXISTS hpcb_rollup_pending_gaps (posted_month date NOT NULL,"
    " prev_month date NOT NULL, cluster_id smallint NOT NULL, assoc_id integer NOT NULL,"
    " currency text NOT NULL, resource text, unit text, jobs bigint NOT NULL)"
    " ON COMMIT DELETE ROWS")
_JOB = "(d.job_id_raw, d.submit_time)"
_JOBS_DELTA = (f"count(DISTINCT {_JOB}) FILTER (WHERE d.sign > 0)"
               f" - count(DISTINCT {_JOB}) FILTER (WHERE d.sign < 0)")
# Fine rows carry resource and unit; coarse rows (rollup_jobs) have them NULL.
_PENDING_COLUMNS = ("posted_month, cluster_id, assoc_id, currency, resource, unit,"
                    " quantity_micro, amount_micro, lines, jobs")
_SQL_FOLD = (
    f"INSERT INTO hpcb_rollup_pending ({_PENDING_COLUMNS}) SELECT d.posted_month, d.cluster_id, d.assoc_id,"
    " p.currency, p.resource, p.unit, sum(d.sign * d.quantity_micro::numeric),"
    f" sum(d.sign * d.amount_micro::numeric), sum(d.sign), {_JOBS_DELTA}"
    " FROM hpcb_rollup_delta d JOIN prices p ON p.id = d.price_id"
    " GROUP BY d.posted_month, d.cluster_id, d.assoc_id, p.currency, p.resource, p.unit"
    " UNION ALL"
    " SELECT d.posted_month, d.cluster_id, d.assoc_id, p.currency, NULL, NULL, 0,"
    f" sum(d.sign * d.amount_micro::numeric), 0, {_JOBS_DELTA}"
    " FROM hpcb_rollup_delta d JOIN prices p ON p.id = d.price_id"
    " GROUP BY d.posted_month, d.cluster_id, d.assoc_id, p.currency")

# Entries (docs/design/engine.md §13): a job ENTERS a bucket in month m when it has lines
# in the bucket in m and none in m - 1; a RE-ENTRY is an entry after lines in an earlier
# month (``prev_month``, at least two months back). With jobs(m) the bucket's distinct
# jobs, the distinct jobs of consecutive months [a, b] are exactly
#     jobs(a) + sum of entries in (a, b] - re-entries in (a, b] with prev_month >= a
# (a job's months in [a, b] form runs; each run starts at a or with an entry, and every
# run after the first is a re-entry from inside the range). Entries depend on a job's
# lines in OTHER months than the ones a statement changed, so they are folded from each
# changed job's presence (job x month x currency x resource) before and after the
# statement: after = its lines now; before = now minus what the statement inserted plus
# what it deleted. The assoc before is that of the deleted rows (an assoc move deletes
# every line from the old assoc and inserts it into the new one), after that of the
# inserted rows; a statement that only inserts or only deletes keeps the job's assoc.
_DELTA_WITH_PRICES = (
    "SELECT d.cluster_id, d.job_id_raw, d.submit_time, d.posted_month, d.assoc_id,"
    " p.currency, p.resource, p.unit, d.sign"
    " FROM hpcb_rollup_delta d JOIN prices p ON p.id = d.price_id")
_K = "cluster_id, job_id_raw, submit_time"
_P = f"{_K}, posted_month, currency, resource, unit"
_PRESENCE_CHANGED = (
    f"d AS MATERIALIZED ({_DELTA_WITH_PRICES}),"
    f" k AS MATERIALIZED (SELECT {_K},"
    " coalesce(min(assoc_id) FILTER (WHERE sign < 0), min(assoc_id)) AS before_assoc,"
    " coalesce(min(assoc_id) FILTER (WHERE sign > 0), min(assoc_id)) AS after_assoc"
    f" FROM d GROUP BY {_K}),"
    " after_lines AS (SELECT l.cluster_id, l.job_id_raw, l.submit_time, l.posted_month, p.currency,"
    " p.resource, p.unit, count(*) AS n FROM k JOIN charge_rows l"
    " ON l.cluster_id = k.cluster_id AND l.job_id_raw = k.job_id_raw"
    " AND l.submit_time = k.submit_time JOIN prices p ON p.id = l.price_id"
    " GROUP BY 1, 2, 3, 4, 5, 6, 7),"
    f" net AS (SELECT {_P}, sum(sign) AS n FROM d GROUP BY {_P}),"
    f" states AS (SELECT {_P}, coalesce(a.n, 0) AS after_n,"
    f" coalesce(a.n, 0) - coalesce(net.n, 0) AS before_n"
    f" FROM after_lines a FULL JOIN net USING ({_P})),"
    f" presence AS (SELECT {_P}, 1 AS sign, k.after_assoc AS assoc_id FROM states s"
    f" JOIN k USING ({_K}) WHERE s.after_n > 0"
    f" UNION ALL SELECT {_P}, -1, k.before_assoc FROM states s JOIN k USING ({_K})"
    " WHERE s.before_n > 0)")
_ENTERED = "(prev_month IS NULL OR prev_month < (posted_month - interval '1 month'))"
_SQL_FOLD_ENTRIES = (
    "WITH {presence},"
    " fine AS (SELECT posted_month, cluster_id, assoc_id, currency, resource, unit, sign,"
    f" lag(posted_month) OVER (PARTITION BY {_K}, sign, currency, resource, unit"
    " ORDER BY posted_month) AS prev_month FROM presence),"
    " coarse AS (SELECT posted_month, cluster_id, assoc_id, currency, sign,"
    f" lag(posted_month) OVER (PARTITION BY {_K}, sign, currency ORDER BY posted_month)"
    f" AS prev_month FROM (SELECT DISTINCT {_K}, posted_month, currency, sign, assoc_id"
    " FROM presence) c),"
    " entries AS MATERIALIZED (SELECT posted_month, cluster_id, assoc_id, currency, resource,"
    f" unit, sign, prev_month FROM fine WHERE {_ENTERED}"
    " UNION ALL SELECT posted_month, cluster_id, assoc_id, currency, NULL, NULL, sign,"
    f" prev_month FROM coarse WHERE {_ENTERED}),"
    " gaps AS (INSERT INTO hpcb_rollup_pending_gaps SELECT posted_month, prev_month,"
    " cluster_id, assoc_id, currency, resource, unit, sum(sign) FROM entries"
    " WHERE prev_month IS NOT NULL GROUP BY posted_month, prev_month, cluster_id, assoc_id,"
    " currency, resource, unit)"
    f" INSERT INTO hpcb_rollup_pending ({_PENDING_COLUMNS}, jobs_entered)"
    " SELECT posted_month, cluster_id, assoc_id, currency, resource, unit, 0, 0, 0, 0,"
    " sum(sign) FROM entries GROUP BY posted_month, cluster_id, assoc_id, currency, resource,"
    " unit")
_SQL_FOLD_ENTRIES_CHANGED = _SQL_FOLD_ENTRIES.format(presence=_PRESENCE_CHANGED)
_SQL_APPLY = (
    "INSERT INTO rollup_resource AS r (posted_month, cluster_id, assoc_id, currency, resource,"
    " unit, quantity_micro, amount_micro, lines, jobs, jobs_entered)"
    " SELECT posted_month, cluster_id, assoc_id, currency, resource, unit,"
    " sum(quantity_micro), sum(amount_micro), sum(lines), sum(jobs), sum(jobs_entered)"
    " FROM hpcb_rollup_pending WHERE resource IS NOT NULL"
    " GROUP BY posted_month, cluster_id, assoc_id, currency, resource, unit"
    " ON CONFLICT (posted_month, cluster_id, assoc_id, currency, resource, unit) DO UPDATE"
    " SET quantity_micro = r.quantity_micro + excluded.quantity_micro,"
    " amount_micro = r.amount_micro + excluded.amount_micro,"
    " lines = r.lines + excluded.lines, jobs = r.jobs + excluded.jobs,"
    " jobs_entered = r.jobs_entered + excluded.jobs_entered",
    "INSERT INTO rollup_jobs AS r (posted_month, cluster_id, assoc_id, currency, amount_micro,"
    " jobs, jobs_entered)"
    " SELECT posted_month, cluster_id, assoc_id, currency, sum(amount_micro), sum(jobs),"
    " sum(jobs_entered)"
    " FROM hpcb_rollup_pending WHERE resource IS NULL"
    " GROUP BY posted_month, cluster_id, assoc_id, currency"
    " ON CONFLICT (posted_month, cluster_id, assoc_id, currency) DO UPDATE"
    " SET amount_micro = r.amount_micro + excluded.amount_micro, jobs = r.jobs + excluded.jobs,"
    " jobs_entered = r.jobs_entered + excluded.jobs_entered",
    "INSERT INTO rollup_reentries AS r (posted_month, prev_month, cluster_id, assoc_id,"
    " currency, resource, unit, jobs)"
    " SELECT posted_month, prev_month, cluster_id, assoc_id, currency, coalesce(resource, ''),"
    " coalesce(unit, ''), sum(jobs) FROM hpcb_rollup_pending_gaps"
    " GROUP BY 1, 2, 3, 4, 5, 6, 7"
    " ON CONFLICT (posted_month, prev_month, cluster_id, assoc_id, currency, resource, unit)"
    " DO UPDATE SET jobs = r.jobs + excluded.jobs",
    "DELETE FROM rollup_reentries r USING (SELECT DISTINCT posted_month, prev_month,"
    " cluster_id, assoc_id, currency, coalesce(resource, '') AS resource,"
    " coalesce(unit, '') AS unit FROM hpcb_rollup_pending_gaps) k"
    " WHERE r.posted_month = k.posted_month AND r.prev_month = k.prev_month"
    " AND r.cluster_id = k.cluster_id AND r.assoc_id = k.assoc_id AND r.currency = k.currency"
    " AND r.resource = k.resource AND r.unit = k.unit AND r.jobs = 0",
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
    "TRUNCATE hpcb_rollup_pending, hpcb_rollup_pending_gaps",
)
_SQL_PENDING_COUNT = "SELECT count(*) FROM hpcb_rollup_pending"
# Partitions never analyzed (reltuples < 0: new this poll) get statistics now: parents of
# partitioned tables are never auto-analyzed, and a new month's partition would otherwise
# be planned as empty until autovacuum comes by (a nested loop over a month of jobs). So
# do the rollup tables after their first write (planned as empty, a year's range report
# probed assocs once per rollup row: 854 ms instead of 504 ms at 200,000 jobs), and the
# assocs and clusters the reports join (a 10M-job import is one transaction: autovacuum
# had not analyzed its 20,000 assocs minutes after it, and the planner sized the account
# x user report's hash aggregate for a third of its groups, which spilled to disk).
_SQL_ANALYZE_NEW_PARTITIONS = """
DO $analyze$
DECLARE r record;
BEGIN
    FOR r IN SELECT c.oid::regclass AS part FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent IN ('public.job_rows'::regclass, 'public.charge_rows'::regclass)
               AND c.reltuples < 0
             UNION ALL
             SELECT c.oid::regclass FROM pg_class c
             WHERE c.oid IN ('public.rollup_resource'::regclass, 'public.rollup_jobs'::regclass,
                             'public.rollup_reentries'::regclass, 'public.assocs'::regclass,
                             'public.clusters'::regclass)
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


def _create_pending(session: Session) -> None:
    session.execute(text(_SQL_CREATE_PENDING))
    session.execute(text(_SQL_CREATE_PENDING_GAPS))


def record_deltas(session: Session) -> None:
    """Fold ``hpcb_rollup_delta`` (what the caller's statement just deleted and inserted)
    into the transaction's pending deltas, then empty it. Call it right after the
    statement: the entries are computed from the changed jobs' lines as they are now
    (new jobs written by the ingest writer are folded by ``fold_new_lines``)."""
    _create_pending(session)
    session.execute(text(_SQL_FOLD))
    session.execute(text(_SQL_FOLD_ENTRIES_CHANGED))
    session.execute(text(SQL_TRUNCATE_DELTA))
    mark_written(session)


_NEW_PENDING: list[tuple[str, Kind]] = [
    ("posted_month", "date"), ("cluster_id", "int2"), ("assoc_id", "int4"),
    ("currency", "text"), ("resource", "text"), ("unit", "text"),
    ("quantity_micro", "numeric"), ("amount_micro", "numeric"), ("lines", "int8"),
    ("jobs", "int8"), ("jobs_entered", "int8")]
_NEW_GAPS: list[tuple[str, Kind]] = [
    ("posted_month", "date"), ("prev_month", "date"), ("cluster_id", "int2"),
    ("assoc_id", "int4"), ("currency", "text"), ("resource", "text"), ("unit", "text"),
    ("jobs", "int8")]
_COPY_NEW_PENDING = copy_statement("hpcb_rollup_pending", [n for n, _ in _NEW_PENDING])
_COPY_NEW_GAPS = copy_statement("hpcb_rollup_pending_gaps", [n for n, _ in _NEW_GAPS])
_JOB_KEY = ["cluster_id", "job_id_raw", "submit_time"]
_FINE = ["posted_month", "cluster_id", "assoc_id", "currency", "resource", "unit"]
_COARSE = ["posted_month", "cluster_id", "assoc_id", "currency"]


def _continued(presence: pl.DataFrame, part: list[str], bucket: list[str]
               ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """For ``presence`` (one row per job x month x ``part``, only jobs with lines in more
    than one month): (per bucket, the jobs that are NOT entries there: lines in the month
    before; re-entries per bucket and prev_month). ``_SQL_FOLD_ENTRIES``' lag over a
    frame sorted so that a job's months follow each other."""
    c = pl.col
    keys = [*_JOB_KEY, *part]
    month = (c("posted_month").dt.year().cast(pl.Int32) * 12
             + c("posted_month").dt.month().cast(pl.Int32))
    x = presence.sort([*keys, "posted_month"]).with_columns(month.alias("_m"))
    # NULL equals NULL here, as in the SQL's PARTITION BY (the first row's shift(1) is
    # NULL too, but its _prev is then NULL: neither continued nor a gap)
    same = pl.all_horizontal([c(k).eq_missing(c(k).shift(1)) for k in keys])
    x = x.with_columns(pl.when(same).then(c("_m").shift(1)).alias("_prev"),
                       pl.when(same).then(c("posted_month").shift(1)).alias("prev_month"))
    continued = x.filter(c("_prev") == c("_m") - 1).group_by(bucket).agg(
        pl.len().cast(pl.Int64).alias("_continued"))
    gaps = x.filter(c("_prev") < c("_m") - 1).group_by(
        ["posted_month", "prev_month", *bucket[1:]]).agg(pl.len().cast(pl.Int64).alias("jobs"))
    return continued, gaps


def fold_new_lines(session: Session, cur: psycopg.Cursor[Any], lines: pl.DataFrame) -> None:
    """The pending deltas of NEW jobs, every line of each in ``lines`` (the ingest
    writer's direct COPY: posted_month, cluster_id, assoc_id, currency, resource, unit,
    job_id_raw, submit_time, quantity_micro, amount_micro), computed here instead of
    copying the lines again into ``hpcb_rollup_delta`` for ``_SQL_FOLD`` and
    ``_SQL_FOLD_ENTRIES``: the same sums, distinct jobs, entries and re-entries,
    written to the pending tables with one or two COPYs (tests/integration/
    test_rollups.py and ``rollup verify`` hold them to the lines). A job enters every
    bucket it has lines in, except where it had lines the month before: only jobs with
    lines in several months are looked at for that."""
    if not lines.height:
        return
    c = pl.col
    _create_pending(session)
    job = pl.struct("job_id_raw", "submit_time")
    fine = lines.group_by(_FINE).agg(
        c("quantity_micro").cast(pl.Int128).sum(), c("amount_micro").cast(pl.Int128).sum(),
        pl.len().cast(pl.Int64).alias("lines"), job.n_unique().cast(pl.Int64).alias("jobs"))
    coarse = lines.group_by(_COARSE).agg(
        c("amount_micro").cast(pl.Int128).sum(), job.n_unique().cast(pl.Int64).alias("jobs"),
    ).with_columns(pl.lit(None, pl.String).alias("resource"),
                   pl.lit(None, pl.String).alias("unit"),
                   pl.lit(0, pl.Int128).alias("quantity_micro"),
                   pl.lit(0, pl.Int64).alias("lines"))
    multi = lines.join(lines.group_by(_JOB_KEY).agg(c("posted_month").n_unique().alias("_n"))
                       .filter(c("_n") > 1).select(_JOB_KEY), on=_JOB_KEY, how="semi")
    gaps: list[pl.DataFrame] = []
    if multi.height:
        f_cont, f_gaps = _continued(
            multi.select(*_JOB_KEY, *_FINE[3:], "posted_month", "assoc_id").unique(),
            _FINE[3:], _FINE)
        c_cont, c_gaps = _continued(
            multi.select(*_JOB_KEY, "currency", "posted_month", "assoc_id").unique(),
            ["currency"], _COARSE)
        fine = fine.join(f_cont, on=_FINE, how="left", nulls_equal=True)
        coarse = coarse.join(c_cont, on=_COARSE, how="left")
        gaps = [f_gaps, c_gaps.with_columns(pl.lit(None, pl.String).alias("resource"),
                                            pl.lit(None, pl.String).alias("unit"))]
    else:
        fine = fine.with_columns(pl.lit(None, pl.Int64).alias("_continued"))
        coarse = coarse.with_columns(pl.lit(None, pl.Int64).alias("_continued"))
    names = [n for n, _ in _NEW_PENDING]
    pending = pl.concat([fine, coarse], how="diagonal_relaxed").with_columns(
        (c("jobs") - c("_continued").fill_null(0)).alias("jobs_entered")).select(names)
    copy_frame(cur, _COPY_NEW_PENDING, pending, _NEW_PENDING)
    gap_rows = pl.concat(gaps, how="diagonal_relaxed") if gaps else None
    if gap_rows is not None and gap_rows.height:
        copy_frame(cur, _COPY_NEW_GAPS, gap_rows.select([n for n, _ in _NEW_GAPS]), _NEW_GAPS)
    mark_written(session)


def refresh_rollups(session: Session) -> int:
    """Apply the transaction's pending rollup deltas (writers call it before they
    commit); returns how many delta rows were applied."""
    if not session.info.pop(_PENDING_FLAG, False):
        return 0
    _create_pending(session)
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

# Each job's months with lines per bucket (its lines summed), and its month before with
# lines in the bucket (``prev_month``, NULL: none). For one month (:month) only the jobs
# with lines posted in it, and their lines up to it, are read.
_SCOPE = ("(CAST(:month AS date) IS NULL OR (l.posted_month <= CAST(:month AS date)"
          " AND (l.cluster_id, l.job_id_raw, l.submit_time) IN (SELECT cluster_id, job_id_raw,"
          " submit_time FROM charge_rows WHERE posted_month = CAST(:month AS date))))")
_PRESENCE = (
    "SELECT b.*, lag(b.posted_month) OVER (PARTITION BY b.cluster_id, b.job_id_raw,"
    " b.submit_time, b.currency{extra_b} ORDER BY b.posted_month) AS prev_month"
    " FROM (SELECT l.posted_month, l.cluster_id, j.assoc_id, p.currency{extra_p},"
    " l.job_id_raw, l.submit_time, sum(l.quantity_micro) AS quantity_micro,"
    " sum(l.amount_micro) AS amount_micro, count(*) AS lines"
    " FROM charge_rows l JOIN prices p ON p.id = l.price_id"
    " JOIN job_rows j ON j.cluster_id = l.cluster_id AND j.job_id_raw = l.job_id_raw"
    f" AND j.submit_time = l.submit_time WHERE {_SCOPE}"
    " GROUP BY l.posted_month, l.cluster_id, j.assoc_id, p.currency{extra_p},"
    " l.job_id_raw, l.submit_time) b")
_PRESENCE_FINE = _PRESENCE.format(extra_b=", b.resource, b.unit",
                                  extra_p=", p.resource, p.unit")
_PRESENCE_COARSE = _PRESENCE.format(extra_b="", extra_p="")
_IN_MONTH = "(CAST(:month AS date) IS NULL OR posted_month = CAST(:month AS date))"
_GAP = "prev_month < (posted_month - interval '1 month')"
_EXPECTED_FINE = (
    "SELECT posted_month, cluster_id, assoc_id, currency, resource, unit,"
    " sum(quantity_micro)::numeric AS quantity_micro, sum(amount_micro)::numeric AS amount_micro,"
    " sum(lines)::bigint AS lines, count(*) AS jobs,"
    f" count(*) FILTER (WHERE {_ENTERED}) AS jobs_entered"
    f" FROM ({_PRESENCE_FINE}) x WHERE {_IN_MONTH}"
    " GROUP BY posted_month, cluster_id, assoc_id, currency, resource, unit")
_EXPECTED_COARSE = (
    "SELECT posted_month, cluster_id, assoc_id, currency,"
    " sum(amount_micro)::numeric AS amount_micro, count(*) AS jobs,"
    f" count(*) FILTER (WHERE {_ENTERED}) AS jobs_entered"
    f" FROM ({_PRESENCE_COARSE}) x WHERE {_IN_MONTH}"
    " GROUP BY posted_month, cluster_id, assoc_id, currency")
_EXPECTED_GAPS = (
    "SELECT posted_month, prev_month, cluster_id, assoc_id, currency, resource, unit,"
    f" count(*) AS jobs FROM ({_PRESENCE_FINE}) x WHERE {_IN_MONTH} AND {_GAP}"
    " GROUP BY posted_month, prev_month, cluster_id, assoc_id, currency, resource, unit"
    " UNION ALL SELECT posted_month, prev_month, cluster_id, assoc_id, currency, '', '',"
    f" count(*) FROM ({_PRESENCE_COARSE}) x WHERE {_IN_MONTH} AND {_GAP}"
    " GROUP BY posted_month, prev_month, cluster_id, assoc_id, currency")
_FINE_KEY = ("posted_month", "cluster_id", "assoc_id", "currency", "resource", "unit")
_COARSE_KEY = ("posted_month", "cluster_id", "assoc_id", "currency")
_GAPS_KEY = ("posted_month", "prev_month", "cluster_id", "assoc_id", "currency", "resource",
             "unit")
_SQL_VERIFY_FINE = (
    f"SELECT count(*) FROM ({_EXPECTED_FINE}) e FULL JOIN (SELECT * FROM rollup_resource"
    f" WHERE {_IN_MONTH}) r USING ({', '.join(_FINE_KEY)})"
    " WHERE (e.quantity_micro, e.amount_micro, e.lines, e.jobs, e.jobs_entered)"
    " IS DISTINCT FROM (r.quantity_micro, r.amount_micro, r.lines, r.jobs, r.jobs_entered)")
_SQL_VERIFY_COARSE = (
    f"SELECT count(*) FROM ({_EXPECTED_COARSE}) e FULL JOIN (SELECT * FROM rollup_jobs"
    f" WHERE {_IN_MONTH}) r USING ({', '.join(_COARSE_KEY)})"
    " WHERE (e.amount_micro, e.jobs, e.jobs_entered)"
    " IS DISTINCT FROM (r.amount_micro, r.jobs, r.jobs_entered)")
_SQL_VERIFY_GAPS = (
    f"SELECT count(*) FROM ({_EXPECTED_GAPS}) e FULL JOIN (SELECT * FROM rollup_reentries"
    f" WHERE {_IN_MONTH}) r USING ({', '.join(_GAPS_KEY)})"
    " WHERE e.jobs IS DISTINCT FROM r.jobs")
_SQL_COUNT_BUCKETS = (
    f"SELECT (SELECT count(*) FROM rollup_resource WHERE {_IN_MONTH}),"
    f" (SELECT count(*) FROM rollup_jobs WHERE {_IN_MONTH}),"
    f" (SELECT count(*) FROM rollup_reentries WHERE {_IN_MONTH})")
_SQL_REBUILD = (
    f"DELETE FROM rollup_resource WHERE {_IN_MONTH}",
    f"DELETE FROM rollup_jobs WHERE {_IN_MONTH}",
    f"DELETE FROM rollup_reentries WHERE {_IN_MONTH}",
    "INSERT INTO rollup_resource (posted_month, cluster_id, assoc_id, currency, resource, unit,"
    f" quantity_micro, amount_micro, lines, jobs, jobs_entered) {_EXPECTED_FINE}",
    "INSERT INTO rollup_jobs (posted_month, cluster_id, assoc_id, currency, amount_micro, jobs,"
    f" jobs_entered) {_EXPECTED_COARSE}",
    "INSERT INTO rollup_reentries (posted_month, prev_month, cluster_id, assoc_id, currency,"
    f" resource, unit, jobs) {_EXPECTED_GAPS}",
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
    reentry_buckets: int = 0
    reentries_differing: int = 0

    @property
    def ok(self) -> bool:
        return (self.resource_differing == 0 and self.jobs_differing == 0
                and self.reentries_differing == 0)


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
    gaps = int(session.execute(text(_SQL_VERIFY_GAPS), params).scalar_one())
    buckets = session.execute(text(_SQL_COUNT_BUCKETS), params).one()
    return RollupCheck(period=period, resource_buckets=int(buckets[0]),
                       job_buckets=int(buckets[1]), resource_differing=fine,
                       jobs_differing=coarse, reentry_buckets=int(buckets[2]),
                       reentries_differing=gaps)


def rebuild(session: Session, period: str | None = None) -> RollupCheck:
    """Rewrite the buckets of ``period`` (None: all) from the lines; returns the check
    of the result. The caller commits."""
    refresh_rollups(session)
    params: dict[str, Any] = {"month": _month(period)}
    for statement in _SQL_REBUILD:
        session.execute(text(statement), params)
    return verify(session, period)
