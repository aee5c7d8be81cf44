"""The bulk, idempotent job writer (COPY -> stage -> MERGE) and the skip path's lookups.

``JobWriter`` stores batches of JobRecords, rewriting only rows whose content changed;
``UnchangedJobs`` answers, for the parser, which raw digests are stored already. How and
why: docs/design/store.md. PostgreSQL 15's MERGE is safe for a single writer only; the
collector writes from the leader only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from billing.records import JobRecord
from collector.store.copytext import copy_lines
from collector.store.db import raw_cursor
from collector.store.jobs import STAGE_COLUMNS, _as_stored, _aware, stage_row
from collector.store.rollups import SQL_CREATE_DELTA, mark_written, record_deltas


@dataclass(frozen=True, slots=True)
class UpsertCounts:
    """What a write did: rows inserted, rows changed, rows found identical."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0

    def __add__(self, other: UpsertCounts) -> UpsertCounts:
        if not isinstance(other, UpsertCounts):
            return NotImplemented
        return UpsertCounts(self.inserted + other.inserted, self.updated + other.updated,
                            self.unchanged + other.unchanged)

    @property
    def total(self) -> int:
        return self.inserted + self.updated + self.unchanged


def _quote(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


# The stage table's name carries a digest of its column list and of the column types
# that changed since (0008: db_index numeric): a pooled connection that outlives a schema
# change (migrate, then write, in one process) never uses a stale stage.
_STAGE_TYPES = "db_index:numeric(20,0)"
_STAGE = "hpcb_stage_jobs_" + hashlib.blake2b(
    (",".join(STAGE_COLUMNS) + ";" + _STAGE_TYPES).encode(), digest_size=4).hexdigest()

# Temp tables live for the connection's session, so the stage survives commits on a
# pooled connection; ON COMMIT DELETE ROWS empties it at every commit, and a rollback of
# the creating transaction drops it again, hence IF NOT EXISTS at every flush (a catalog
# lookup). Column types come from ``jobs`` itself, so they cannot drift.
_SQL_CREATE_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} ON COMMIT DELETE ROWS AS "
    f"SELECT {', '.join(_quote(c) for c in STAGE_COLUMNS)} FROM jobs WITH NO DATA"
)
_SQL_TRUNCATE_STAGE = f"TRUNCATE {_STAGE}"
_SQL_COPY = (f"COPY {_STAGE} ({', '.join(_quote(c) for c in STAGE_COLUMNS)}) "
             "FROM STDIN (FORMAT text)")
_SQL_ENSURE_CLUSTERS = (
    "INSERT INTO clusters (name) SELECT unnest(%s::text[]) ON CONFLICT (name) DO NOTHING")

# --- The compact store (0011): the staged rows become job_rows rows. Dimension keys are
# compared as record text (NULL and '' differ; unlike IS NOT DISTINCT FROM, hashable).
_ASSOC_ROW = ("ROW({t}.account, {t}.user_name, {t}.uid, {t}.group_name, {t}.partition,"
              " {t}.qos, {t}.wckey, {t}.reservation)::text")
_OUTCOME_ROW = "ROW({t}.state, {t}.state_raw, {t}.exit_code, {t}.derived_exit_code)::text"
_SQL_ENSURE_DIMENSIONS = (
    "INSERT INTO assocs (cluster_id, account, user_name, uid, group_name, partition, qos,"
    " wckey, reservation) SELECT DISTINCT c.id, s.account, s.user_name, s.uid, s.group_name,"
    f" s.partition, s.qos, s.wckey, s.reservation FROM {_STAGE} s"
    " JOIN clusters c ON c.name = s.cluster WHERE NOT EXISTS (SELECT 1 FROM assocs a"
    f" WHERE a.cluster_id = c.id AND {_ASSOC_ROW.format(t='a')} = {_ASSOC_ROW.format(t='s')})"
    " ON CONFLICT DO NOTHING",
    "INSERT INTO outcomes (state, state_raw, exit_code, derived_exit_code)"
    f" SELECT DISTINCT s.state, s.state_raw, s.exit_code, s.derived_exit_code FROM {_STAGE} s"
    " WHERE NOT EXISTS (SELECT 1 FROM outcomes o"
    f" WHERE {_OUTCOME_ROW.format(t='o')} = {_OUTCOME_ROW.format(t='s')})"
    " ON CONFLICT DO NOTHING",
    "INSERT INTO gpu_mixes (gpus, gpu_count) SELECT DISTINCT ON (s.gpus) s.gpus, s.gpu_count"
    f" FROM {_STAGE} s WHERE NOT EXISTS (SELECT 1 FROM gpu_mixes g WHERE g.gpus = s.gpus)"
    " ON CONFLICT DO NOTHING",
)
_ROWS = "hpcb_stage_job_rows"
_ROW_COLUMNS = (
    "job_id_raw", "submit_time", "eligible_time", "start_time", "end_time", "elapsed_s",
    "timelimit_min", "mem_bytes", "billing_units", "cpu_time_alloc_s", "cpu_used_ms",
    "max_rss_bytes", "energy_j", "array_job_id", "het_job_id", "first_run_id", "last_run_id",
    "assoc_id", "outcome_id", "gpu_mix_id", "nodes", "cpus", "array_task_id",
    "het_job_offset", "cluster_id", "final", "db_index", "mem_used_byte_s", "job_id", "name",
    "node_list", "raw_digest")
_ROW_KEY = ("cluster_id", "job_id_raw", "submit_time")
# What makes a job "changed": everything but the key, the run ids and the raw digest.
_CONTENT = tuple(c for c in _ROW_COLUMNS
                 if c not in (*_ROW_KEY, "first_run_id", "last_run_id", "raw_digest"))
_DERIVED_JOB_ID = (
    "CASE WHEN s.array_task_id IS NOT NULL THEN s.array_job_id || '_' || s.array_task_id"
    " WHEN s.het_job_id IS NOT NULL THEN s.het_job_id || '+' || s.het_job_offset"
    " WHEN s.array_job_id IS NULL THEN s.job_id_raw::text END")
_SQL_CREATE_ROWS = (f"CREATE TEMP TABLE IF NOT EXISTS {_ROWS} (LIKE job_rows)"
                    " ON COMMIT DELETE ROWS")
_SQL_TRUNCATE_ROWS = f"TRUNCATE {_ROWS}"
_ASSOC_JOIN = f"{_ASSOC_ROW.format(t='a')} = {_ASSOC_ROW.format(t='s')}"
_SQL_CONVERT = (
    f"INSERT INTO {_ROWS} ({', '.join(_ROW_COLUMNS)})"
    " SELECT s.job_id_raw, s.submit_time, s.eligible_time, s.start_time, s.end_time,"
    " s.elapsed_s, s.timelimit_min, s.mem_bytes, s.billing_units, s.cpu_time_alloc_s,"
    " round(s.cpu_used_s * 1000)::bigint, s.max_rss_bytes, s.energy_j, s.array_job_id,"
    " s.het_job_id, NULL, NULL, a.id, o.id, g.id, s.nodes, s.cpus, s.array_task_id,"
    " s.het_job_offset, c.id, s.final, s.db_index, s.mem_used_byte_s,"
    f" CASE WHEN s.job_id = {_DERIVED_JOB_ID} THEN NULL ELSE s.job_id END, s.name,"
    " s.node_list, decode(s.raw_digest, 'hex')"
    f" FROM {_STAGE} s JOIN clusters c ON c.name = s.cluster"
    f" JOIN assocs a ON a.cluster_id = c.id AND {_ASSOC_JOIN}"
    f" JOIN outcomes o ON {_OUTCOME_ROW.format(t='o')} = {_OUTCOME_ROW.format(t='s')}"
    " JOIN gpu_mixes g ON g.gpus = s.gpus"
)
_SQL_PARTITIONS = (
    "SELECT hpcb_month_partition('job_rows', m) FROM (SELECT DISTINCT"
    f" date_trunc('month', submit_time AT TIME ZONE 'UTC')::date AS m FROM {_ROWS}) x")
_ROW_MATCH = " AND ".join(f"j.{c} = s.{c}" for c in _ROW_KEY)
_CONTENT_DIFFERS = (f"({', '.join('j.' + c for c in _CONTENT)})"
                    f" IS DISTINCT FROM ({', '.join('s.' + c for c in _CONTENT)})")
# The keys the MERGE will insert (no row yet) or update (content differs). Unchanged =
# batch size minus these. Returning the keys lets the caller price exactly the jobs that
# changed, in the same transaction.
_SQL_CHANGED = (
    "SELECT c.name, s.job_id_raw, s.submit_time, j.job_id_raw IS NULL"
    f" FROM {_ROWS} s JOIN clusters c ON c.id = s.cluster_id"
    f" LEFT JOIN job_rows j ON {_ROW_MATCH}"
    f" WHERE j.job_id_raw IS NULL OR {_CONTENT_DIFFERS}"
)
# A job whose assoc changes takes all its lines (closed periods too) from its old rollup
# buckets to its new ones: a line counts in its job's current assoc.
_SQL_ASSOC_MOVES = (
    "INSERT INTO hpcb_rollup_delta SELECT l.posted_month, l.cluster_id, m.assoc, l.price_id,"
    " l.job_id_raw, l.submit_time, l.quantity_micro, l.amount_micro, m.sign"
    " FROM (SELECT s.cluster_id, s.job_id_raw, s.submit_time, j.assoc_id AS old_assoc,"
    f" s.assoc_id AS new_assoc FROM {_ROWS} s JOIN job_rows j ON {_ROW_MATCH}"
    " WHERE j.assoc_id <> s.assoc_id) x"
    " CROSS JOIN LATERAL (VALUES (x.old_assoc, -1), (x.new_assoc, 1)) AS m(assoc, sign)"
    " JOIN charge_rows l ON l.cluster_id = x.cluster_id AND l.job_id_raw = x.job_id_raw"
    " AND l.submit_time = x.submit_time"
)
_UPDATE_COLUMNS = tuple(c for c in _ROW_COLUMNS
                        if c not in (*_ROW_KEY, "first_run_id", "last_run_id"))
_SQL_MERGE = (
    f"MERGE INTO job_rows AS j USING {_ROWS} AS s ON {_ROW_MATCH}"
    f" WHEN MATCHED AND ({_CONTENT_DIFFERS} OR j.raw_digest IS DISTINCT FROM s.raw_digest)"
    " THEN UPDATE SET " + ", ".join(f"{c} = s.{c}" for c in _UPDATE_COLUMNS)
    + ", last_run_id = %(run_id)s"
    " WHEN NOT MATCHED THEN INSERT (" + ", ".join(_ROW_COLUMNS) + ") VALUES ("
    + ", ".join("%(run_id)s" if c in ("first_run_id", "last_run_id") else f"s.{c}"
                for c in _ROW_COLUMNS)
    + ")"
)


class JobWriter:
    """Bulk, idempotent writer of JobRecords into ``jobs`` for one collector run.

    ``add`` buffers; every ``batch_rows`` distinct keys (and at ``flush``) the batch goes
    to the database: COPY into the stage, one counting query, one MERGE. Several batches
    may go into one transaction; the writer never commits. Call ``flush()`` before the
    caller commits, then read ``counts``.

    Within a batch a key seen twice keeps the last record (overlapping windows,
    ``sacct --duplicates``); across batches a later batch simply overwrites.

    If a flush raises, the caller's transaction is aborted: roll back and drop the
    writer (its buffer and counts no longer match the database).

    ``on_changed`` is called after each batch's MERGE, inside the same transaction, with
    the records that were inserted or changed (as stored: cpu_used_s rounded to the
    column's scale), so the pipeline can price exactly those. With ``on_inserted``, the
    inserted ones go there instead (a job that did not exist has no charge lines yet).
    """

    def __init__(self, session: Session, *, run_id: int, batch_rows: int = 5_000,
                 on_changed: Callable[[list[JobRecord]], None] | None = None,
                 on_inserted: Callable[[list[JobRecord]], None] | None = None) -> None:
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
        self._session = session
        self._run_id = int(run_id)
        self._batch_rows = batch_rows
        # key -> COPY line with its content hash. A dict keeps the first position of a
        # key and the last value: exactly "dedupe, last wins". Lines are much smaller
        # than tuples of 40 Python objects, and the line is needed for the hash anyway.
        self._batch: dict[tuple[str, int, datetime], tuple[str, JobRecord]] = {}
        self._on_changed = on_changed
        self._on_inserted = on_inserted
        self._clusters: set[str] = set()
        self._counts = UpsertCounts()
        self._batches = 0

    @property
    def counts(self) -> UpsertCounts:
        """Counts of the batches flushed so far (call ``flush()`` first for a total)."""
        return self._counts

    @property
    def batches_flushed(self) -> int:
        return self._batches

    @property
    def pending(self) -> int:
        """Distinct keys buffered and not yet written."""
        return len(self._batch)

    def add(self, rec: JobRecord) -> None:
        self.add_encoded(rec, stage_row(rec))

    def add_encoded(self, rec: JobRecord, row: str) -> None:
        """``add`` for a record whose ``stage_row`` was made already (elsewhere, say in
        another thread: it is pure)."""
        # The key uses the aware datetime: equal instants hash equal whatever their zone.
        self._batch[(rec.cluster, rec.job_id_raw, rec.submit)] = (row, rec)
        self._clusters.add(rec.cluster)
        if len(self._batch) >= self._batch_rows:
            self.flush()

    def flush(self) -> UpsertCounts:
        """Write the buffered batch; returns that batch's counts (zero when empty)."""
        if not self._batch:
            return UpsertCounts()
        batch, clusters = self._batch, self._clusters
        with raw_cursor(self._session, "JobWriter") as cur:
            cur.execute(_SQL_CREATE_STAGE)
            cur.execute(_SQL_TRUNCATE_STAGE)
            copy_lines(cur, _SQL_COPY, (line for line, _ in batch.values()))
            cur.execute(_SQL_ENSURE_CLUSTERS, (sorted(clusters),))
            for statement in _SQL_ENSURE_DIMENSIONS:
                cur.execute(statement)
            cur.execute(_SQL_CREATE_ROWS)
            cur.execute(_SQL_TRUNCATE_ROWS)
            cur.execute(_SQL_CONVERT)
            cur.execute(_SQL_PARTITIONS)
            cur.execute(_SQL_CHANGED)
            changed = cur.fetchall()
            cur.execute(SQL_CREATE_DELTA)
            cur.execute(_SQL_ASSOC_MOVES)
            moved = cur.rowcount
            cur.execute(_SQL_MERGE, {"run_id": self._run_id})
        if moved:
            record_deltas(self._session)
        elif changed:
            mark_written(self._session)
        inserted = sum(1 for row in changed if row[3])
        batch_counts = UpsertCounts(inserted, len(changed) - inserted, len(batch) - len(changed))
        if changed and self._on_inserted is not None:
            new = [_as_stored(batch[(c, raw, _aware(sub))][1]) for c, raw, sub, ins in changed if ins]
            if new:
                self._on_inserted(new)
            changed = [row for row in changed if not row[3]]
        if self._on_changed is not None and changed:
            records = [_as_stored(batch[(c, raw, _aware(sub))][1]) for c, raw, sub, _ in changed]
            self._on_changed(records)
        self._counts = self._counts + batch_counts
        self._batches += 1
        self._batch = {}
        self._clusters = set()
        return batch_counts


# The digests of the batch's (cluster, job_id_raw): one primary-key probe per key; the
# digests are matched in Python (an "= ANY(array)" filter costs more than it saves).
# One probe per key, always: as a plain join, the planner (with statistics that
# lag a bulk load) chose a merge join over a sort of the whole jobs table, 120 ms per
# batch of 1,000 keys at 50,000 jobs and growing with the table; the LATERAL subquery
# (OFFSET 0 keeps it from being flattened into that join) takes 13 ms at any size.
_SQL_STORED_DIGESTS = (
    "SELECT encode(d.raw_digest, 'hex') FROM clusters c"
    " CROSS JOIN unnest(%s::bigint[]) AS k(job_id_raw)"
    " CROSS JOIN LATERAL (SELECT j.raw_digest FROM job_rows j"
    " WHERE j.cluster_id = c.id AND j.job_id_raw = k.job_id_raw"
    " AND j.raw_digest IS NOT NULL OFFSET 0) AS d WHERE c.name = %s"
)


class UnchangedJobs:
    """The store's side of skipping unchanged jobs (``ParsableParser`` ``unchanged=``).

    ``stored`` answers, for one batch of (cluster, job_id_raw, raw_digest), which digests
    ``jobs`` already holds: one query per batch through the primary key's prefix, in the
    given session's transaction (the pipeline gives it a session of its own, so it sees
    what earlier polls committed). ``count`` and ``clusters`` say what was skipped; those
    jobs are unchanged by definition.
    """

    def __init__(self, session: Session) -> None:
        self._session = session
        self.count = 0
        self.clusters: set[str] = set()

    def stored(self, keys: list[tuple[str, int, str]]) -> set[str]:
        if not keys:
            return set()
        raws: dict[str, set[int]] = {}
        for cluster, raw, _ in keys:
            raws.setdefault(cluster, set()).add(raw)
        found: set[str] = set()
        with raw_cursor(self._session, "UnchangedJobs") as cur:
            for cluster, ids in raws.items():
                # the ids as one array literal: psycopg adapts a list element by element
                cur.execute(_SQL_STORED_DIGESTS,
                            ("{" + ",".join(map(str, ids)) + "}", cluster))
                found.update(row[0] for row in cur.fetchall())
        return {digest for _, _, digest in keys if digest in found}

    def skipped(self, cluster: str) -> None:
        self.count += 1
        self.clusters.add(cluster)

