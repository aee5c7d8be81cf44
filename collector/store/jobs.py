"""Jobs: the bulk idempotent writer and the job listings.

This module owns how ``billing.records.JobRecord`` values get into the ``jobs`` table
and back out:

- ``JobWriter`` buffers one batch of records, deduplicated by the natural key (last
  wins), COPYs it (psycopg2 ``copy_expert``, text format) into a session-local TEMP stage
  table, counts inserted / updated / unchanged rows with one query, and applies the batch
  with one ``MERGE`` whose ``WHEN MATCHED`` branch only fires when the content hash
  differs, so unchanged rows are not rewritten (no dead tuples, no WAL; see
  shared/perf-baselines.md §2). Only one batch is held in memory.
- ``content_hash`` fingerprints a record, stably across processes and versions of Python.
- ``list_jobs`` / ``count_jobs`` read jobs back as ``JobRecord``.

PostgreSQL 15's MERGE is safe for a single writer only (a concurrent insert of the same
key can raise unique_violation); the collector writes from the leader only.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing.records import JobRecord
from collector.store.copytext import LinesReader, escape
from collector.store.models import Job


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


# --------------------------------------------------------------------------- encoding

# The record columns of ``jobs`` in COPY order, paired with the JobRecord attribute each
# one comes from. ``gpus`` is the JSON object of ``rec.gpus``; ``gpu_count`` is derived.
# ``content_hash`` follows these in the stage table; the run ids and updated_at are set
# by the MERGE.
RECORD_COLUMNS: tuple[tuple[str, str], ...] = (
    ("cluster", "cluster"),
    ("job_id_raw", "job_id_raw"),
    ("submit_time", "submit"),
    ("job_id", "job_id"),
    ("state", "state"),
    ("state_raw", "state_raw"),
    ("array_job_id", "array_job_id"),
    ("array_task_id", "array_task_id"),
    ("het_job_id", "het_job_id"),
    ("het_job_offset", "het_job_offset"),
    ("name", "name"),
    ("user_name", "user"),
    ("uid", "uid"),
    ("group_name", "group"),
    ("account", "account"),
    ("partition", "partition"),
    ("qos", "qos"),
    ("wckey", "wckey"),
    ("reservation", "reservation"),
    ("exit_code", "exit_code"),
    ("derived_exit_code", "derived_exit_code"),
    ("eligible_time", "eligible"),
    ("start_time", "start"),
    ("end_time", "end"),
    ("elapsed_s", "elapsed_s"),
    ("timelimit_min", "timelimit_min"),
    ("nodes", "nodes"),
    ("cpus", "cpus"),
    ("mem_bytes", "mem_bytes"),
    ("billing_units", "billing"),
    ("gpus", "gpus"),
    ("gpu_count", "gpu_count"),
    ("node_list", "node_list"),
    ("cpu_time_alloc_s", "cpu_time_alloc_s"),
    ("cpu_used_s", "cpu_used_s"),
    ("max_rss_bytes", "max_rss_bytes"),
    ("mem_used_byte_s", "mem_used_byte_s"),
    ("energy_j", "energy_j"),
    ("db_index", "db_index"),
    ("final", "final"),
)
_COLUMNS = tuple(col for col, _ in RECORD_COLUMNS)
_KEY_COLUMNS = ("cluster", "job_id_raw", "submit_time")
_STAGE_COLUMNS = _COLUMNS + ("content_hash", "raw_digest")
_WRITER_COLUMNS = frozenset(("content_hash", "raw_digest", "first_run_id", "last_run_id",
                             "updated_at"))

# Every column of the model is either a record column or set by the writer, and the
# other way round: a new column in models.py without a place here fails at import.
if set(Job.__table__.columns.keys()) != set(_STAGE_COLUMNS) | _WRITER_COLUMNS:
    raise RuntimeError("jobs columns and JobWriter's RECORD_COLUMNS disagree")
if {attr for _, attr in RECORD_COLUMNS} - {"gpu_count"} != set(JobRecord.__slots__) - {"raw_digest"}:
    raise RuntimeError("JobRecord fields and JobWriter's RECORD_COLUMNS disagree")

_NULL = "\\N"
_DB_INDEX_MAX = 2**64 - 1        # jobs.db_index numeric(20,0), ck_jobs_db_index_u64
_CPU_QUANTUM = Decimal("0.001")  # numeric(18, 3)


def _text(value: str | None) -> str:
    """COPY text-format escaping (PostgreSQL docs, COPY "File Formats").

    Backslash, tab, newline and carriage return are escaped. PostgreSQL text cannot hold
    NUL, so a NUL becomes U+FFFD (the hash is computed over the same replaced text, so
    a record with a NUL is stable, it just does not read back byte-exact).
    """
    if value is None:
        return _NULL
    return escape(value)


def _int(value: int | None) -> str:
    if value is None:
        return _NULL
    if value.__class__ is not int:
        # bool is an int subclass and would COPY as "True"; floats would lose precision.
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected int, got {value!r}")
        value = int(value)
    return str(value)


def _db_index(value: int | None) -> str:
    """slurmdbd's DBIndex is unsigned 64-bit (numeric(20,0), checked 0 .. 2^64-1)."""
    text = _int(value)
    if value is not None and not 0 <= value <= _DB_INDEX_MAX:
        raise ValueError(f"db_index {value} is not an unsigned 64-bit DBIndex")
    return text


def _ts(value: datetime | None) -> str:
    if value is None:
        return _NULL
    if value.tzinfo is not UTC:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: JobRecord times must be aware UTC")
        value = value.astimezone(UTC)
    return value.isoformat()


def _cpu(value: Decimal | None) -> str:
    if value is None:
        return _NULL
    # What numeric(18,3) stores (PostgreSQL rounds half away from zero), so the hash
    # of a record equals the hash of the record read back.
    return str(Decimal(value).quantize(_CPU_QUANTUM, rounding=ROUND_HALF_UP))


def _gpus(gpus: tuple[tuple[str, int], ...]) -> tuple[str, int]:
    if not gpus:
        return "{}", 0
    mapping: dict[str, int] = {}
    for gpu_type, count in gpus:
        mapping[gpu_type] = mapping.get(gpu_type, 0) + count
    doc = json.dumps(mapping, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _text(doc), sum(mapping.values())


_GPUS_MEMO: dict[tuple[tuple[str, int], ...], tuple[str, int]] = {}


def _gpus_cached(gpus: tuple[tuple[str, int], ...]) -> tuple[str, int]:
    """``_gpus``, remembered: a site has a handful of GPU mixes (at most 4096 kept)."""
    try:
        hit = _GPUS_MEMO.get(gpus)
    except TypeError:               # unhashable (not the tuple JobRecord declares)
        return _gpus(gpus)
    if hit is None:
        hit = _gpus(gpus)
        if len(_GPUS_MEMO) < 4096:
            _GPUS_MEMO[gpus] = hit
    return hit


# Every record column except gpu_count (derived from gpus), in _COLUMNS order.
_RECORD_VALUES = operator.attrgetter(*(attr for _, attr in RECORD_COLUMNS if attr != "gpu_count"))
_TEXT_TYPES = frozenset({str, type(None)})
_INT_TYPES = frozenset({int, type(None)})
# Characters a text value must not contain for the fast path (COPY escapes them; a tab
# would also shift the columns); ``_encode_checked`` handles records that have them.
_SPECIAL = ("\\", "\n", "\r", "\x00")


def _encode(rec: JobRecord) -> str:
    """The record as one COPY text line (no newline), in ``_COLUMNS`` order.

    This line is also the canonical encoding that ``content_hash`` digests: None is
    ``\\N`` (distinct from an empty string), times are UTC ISO-8601, Decimals are rounded
    to the column's scale, gpus is compact JSON with sorted keys. If the COPY format ever
    changes, keep this function for hashing or every row is rewritten once.

    The common record (values of the expected types, times in UTC, text without
    characters COPY escapes) is encoded here in one pass; anything else goes through
    ``_encode_checked``, which validates each value (and raises) and escapes. Both give
    the same line for any record the fast path accepts.
    """
    (cluster, job_id_raw, submit, job_id, state, state_raw, array_job_id, array_task_id,
     het_job_id, het_job_offset, name, user, uid, group, account, partition, qos, wckey,
     reservation, exit_code, derived_exit_code, eligible, start, end, elapsed_s,
     timelimit_min, nodes, cpus, mem_bytes, billing, gpus, node_list, cpu_time_alloc_s,
     cpu_used_s, max_rss_bytes, mem_used_byte_s, energy_j, db_index, final
     ) = _RECORD_VALUES(rec)
    texts = (cluster, job_id, state, state_raw, name, user, group, account, partition, qos,
             wckey, reservation, exit_code, derived_exit_code, node_list)
    if (not _TEXT_TYPES.issuperset(map(type, texts))
            or not _INT_TYPES.issuperset(map(type, (
                job_id_raw, array_job_id, array_task_id, het_job_id, het_job_offset, uid,
                elapsed_s, timelimit_min, nodes, cpus, mem_bytes, billing, cpu_time_alloc_s,
                max_rss_bytes, mem_used_byte_s, energy_j, db_index)))
            or (db_index is not None and not 0 <= db_index <= _DB_INDEX_MAX)
            or (final is not True and final is not False)
            or None in (cluster, job_id_raw, job_id, state, state_raw, elapsed_s, nodes, cpus,
                        mem_bytes)
            or (submit is None or submit.tzinfo is not UTC)
            or (eligible is not None and eligible.tzinfo is not UTC)
            or (start is not None and start.tzinfo is not UTC)
            or (end is not None and end.tzinfo is not UTC)):
        return _encode_checked(rec)
    joined = "\t".join([t for t in texts if t is not None])
    if (joined.count("\t") != sum(1 for t in texts if t is not None) - 1
            or any(c in joined for c in _SPECIAL)):
        return _encode_checked(rec)
    gpus_json, gpu_count = _gpus_cached(gpus)
    n = _NULL
    return "\t".join((
        cluster, str(job_id_raw), submit.isoformat(), job_id, state, state_raw,
        n if array_job_id is None else str(array_job_id),
        n if array_task_id is None else str(array_task_id),
        n if het_job_id is None else str(het_job_id),
        n if het_job_offset is None else str(het_job_offset),
        n if name is None else name,
        n if user is None else user,
        n if uid is None else str(uid),
        n if group is None else group,
        n if account is None else account,
        n if partition is None else partition,
        n if qos is None else qos,
        n if wckey is None else wckey,
        n if reservation is None else reservation,
        n if exit_code is None else exit_code,
        n if derived_exit_code is None else derived_exit_code,
        n if eligible is None else eligible.isoformat(),
        n if start is None else start.isoformat(),
        n if end is None else end.isoformat(),
        str(elapsed_s),
        n if timelimit_min is None else str(timelimit_min),
        str(nodes), str(cpus), str(mem_bytes),
        n if billing is None else str(billing),
        gpus_json, str(gpu_count),
        n if node_list is None else node_list,
        n if cpu_time_alloc_s is None else str(cpu_time_alloc_s),
        n if cpu_used_s is None else _cpu(cpu_used_s),
        n if max_rss_bytes is None else str(max_rss_bytes),
        n if mem_used_byte_s is None else str(mem_used_byte_s),
        n if energy_j is None else str(energy_j),
        n if db_index is None else str(db_index),
        "t" if final else "f",
    ))


def _encode_checked(rec: JobRecord) -> str:
    """``_encode`` for any record: each value validated (TypeError / ValueError) and
    escaped on its own."""
    gpus_json, gpu_count = _gpus(rec.gpus)
    final = rec.final
    if final is not True and final is not False:
        raise TypeError(f"JobRecord.final must be a bool, got {final!r}")
    return "\t".join((
        _text(rec.cluster),
        _int(rec.job_id_raw),
        _ts(rec.submit),
        _text(rec.job_id),
        _text(rec.state),
        _text(rec.state_raw),
        _int(rec.array_job_id),
        _int(rec.array_task_id),
        _int(rec.het_job_id),
        _int(rec.het_job_offset),
        _text(rec.name),
        _text(rec.user),
        _int(rec.uid),
        _text(rec.group),
        _text(rec.account),
        _text(rec.partition),
        _text(rec.qos),
        _text(rec.wckey),
        _text(rec.reservation),
        _text(rec.exit_code),
        _text(rec.derived_exit_code),
        _ts(rec.eligible),
        _ts(rec.start),
        _ts(rec.end),
        _int(rec.elapsed_s),
        _int(rec.timelimit_min),
        _int(rec.nodes),
        _int(rec.cpus),
        _int(rec.mem_bytes),
        _int(rec.billing),
        gpus_json,
        str(gpu_count),
        _text(rec.node_list),
        _int(rec.cpu_time_alloc_s),
        _cpu(rec.cpu_used_s),
        _int(rec.max_rss_bytes),
        _int(rec.mem_used_byte_s),
        _int(rec.energy_j),
        _db_index(rec.db_index),
        "t" if final else "f",
    ))


_HASH_PERSON = b"hpcb-jobs-v1"  # bump to re-fingerprint every row once


def _utf8(line: str) -> tuple[str, bytes]:
    """``line`` and its UTF-8 bytes; lone surrogates (from a surrogateescape decode)
    cannot be stored in PostgreSQL text, so they become U+FFFD."""
    try:
        return line, line.encode("utf-8")
    except UnicodeEncodeError:
        line = line.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        return line, line.encode("utf-8")


def _hash_line(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16, person=_HASH_PERSON).hexdigest()


def content_hash(rec: JobRecord) -> str:
    """A 32-hex-digit fingerprint of every field of ``rec`` (blake2b-128).

    Stable across processes and Python versions (it never uses ``hash()``); two records
    that store identically hash identically.
    """
    return _hash_line(_utf8(_encode(rec))[1])


def stage_row(rec: JobRecord) -> str:
    """``rec``'s line for the stage table: its columns, content hash and raw digest,
    newline-terminated. Pure (any thread)."""
    line, data = _utf8(_encode(rec))
    digest = rec.raw_digest
    return (line + "\t" + _hash_line(data)
            + ("\t\\N\n" if digest is None else "\t" + digest + "\n"))


# ---------------------------------------------------------------------------- writing

def _quote(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


# The stage table's name carries a digest of its column list and of the column types
# that changed since (0008: db_index numeric): a pooled connection that outlives a schema
# change (migrate, then write, in one process) never uses a stale stage.
_STAGE_TYPES = "db_index:numeric(20,0)"
_STAGE = "hpcb_stage_jobs_" + hashlib.blake2b(
    (",".join(_STAGE_COLUMNS) + ";" + _STAGE_TYPES).encode(), digest_size=4).hexdigest()

# Temp tables live for the connection's session, so the stage survives commits on a
# pooled connection; ON COMMIT DELETE ROWS empties it at every commit, and a rollback of
# the creating transaction drops it again, hence IF NOT EXISTS at every flush (a catalog
# lookup). Column types come from ``jobs`` itself, so they cannot drift.
_SQL_CREATE_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} ON COMMIT DELETE ROWS AS "
    f"SELECT {', '.join(_quote(c) for c in _STAGE_COLUMNS)} FROM jobs WITH NO DATA"
)
_SQL_TRUNCATE_STAGE = f"TRUNCATE {_STAGE}"
_SQL_COPY = (f"COPY {_STAGE} ({', '.join(_quote(c) for c in _STAGE_COLUMNS)}) "
             "FROM STDIN (FORMAT text)")
_SQL_ENSURE_CLUSTERS = (
    "INSERT INTO clusters (name) SELECT unnest(%s::text[]) ON CONFLICT (name) DO NOTHING")
_KEY_MATCH = " AND ".join(f"j.{_quote(c)} = s.{_quote(c)}" for c in _KEY_COLUMNS)
# The keys the MERGE will insert (no row yet) or update (different hash). Unchanged =
# batch size minus these. Returning the keys lets the caller price exactly the jobs that
# changed, in the same transaction.
_SQL_CHANGED = (
    "SELECT s.cluster, s.job_id_raw, s.submit_time, j.cluster IS NULL"
    f" FROM {_STAGE} s LEFT JOIN jobs j ON {_KEY_MATCH}"
    " WHERE j.content_hash IS DISTINCT FROM s.content_hash"
)
_UPDATE_COLUMNS = tuple(c for c in _STAGE_COLUMNS if c not in _KEY_COLUMNS)
_SQL_MERGE = (
    f"MERGE INTO jobs AS j USING {_STAGE} AS s ON {_KEY_MATCH}"
    " WHEN MATCHED AND (j.content_hash IS DISTINCT FROM s.content_hash"
    " OR j.raw_digest IS DISTINCT FROM s.raw_digest) THEN UPDATE SET "
    + ", ".join(f"{_quote(c)} = s.{_quote(c)}" for c in _UPDATE_COLUMNS)
    + ", last_run_id = %(run_id)s, updated_at = now()"
    " WHEN NOT MATCHED THEN INSERT ("
    + ", ".join(_quote(c) for c in _STAGE_COLUMNS)
    + ", first_run_id, last_run_id, updated_at) VALUES ("
    + ", ".join(f"s.{_quote(c)}" for c in _STAGE_COLUMNS)
    + ", %(run_id)s, %(run_id)s, now())"
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
        dbapi_conn = self._session.connection().connection.dbapi_connection
        if dbapi_conn is None or not hasattr(dbapi_conn, "cursor"):  # pragma: no cover
            raise RuntimeError("JobWriter needs a live psycopg2 connection")
        batch, clusters = self._batch, self._clusters
        with dbapi_conn.cursor() as cur:
            if not hasattr(cur, "copy_expert"):
                raise TypeError("JobWriter needs the psycopg2 driver (postgresql+psycopg2://)")
            cur.execute(_SQL_CREATE_STAGE)
            cur.execute(_SQL_TRUNCATE_STAGE)
            cur.copy_expert(_SQL_COPY, LinesReader(line for line, _ in batch.values()),
                            size=LinesReader.BULK_CHUNK)
            cur.execute(_SQL_ENSURE_CLUSTERS, (sorted(clusters),))
            cur.execute(_SQL_CHANGED)
            changed = cur.fetchall()
            cur.execute(_SQL_MERGE, {"run_id": self._run_id})
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
    "SELECT d.raw_digest FROM unnest(%s::text[], %s::bigint[]) AS k(cluster, job_id_raw)"
    " CROSS JOIN LATERAL (SELECT j.raw_digest FROM jobs j"
    " WHERE j.cluster = k.cluster AND j.job_id_raw = k.job_id_raw"
    " AND j.raw_digest IS NOT NULL OFFSET 0) AS d"
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
        pairs = sorted({(cluster, raw) for cluster, raw, _ in keys})
        dbapi_conn = self._session.connection().connection.dbapi_connection
        with dbapi_conn.cursor() as cur:  # type: ignore[union-attr]
            cur.execute(_SQL_STORED_DIGESTS, ([c for c, _ in pairs], [r for _, r in pairs]))
            found = {row[0] for row in cur.fetchall()}
        return {digest for _, _, digest in keys if digest in found}

    def skipped(self, cluster: str) -> None:
        self.count += 1
        self.clusters.add(cluster)


def _as_stored(rec: JobRecord) -> JobRecord:
    """The record as reading it back would give it (cpu_used_s at the column's scale)."""
    if rec.cpu_used_s is None:
        return rec
    stored = Decimal(rec.cpu_used_s).quantize(_CPU_QUANTUM, rounding=ROUND_HALF_UP)
    return rec if stored == rec.cpu_used_s else replace(rec, cpu_used_s=stored)


# ---------------------------------------------------------------------------- reading

_TABLE = Job.__table__


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is UTC:
        return value
    return value.astimezone(UTC)


def _record(row: Any) -> JobRecord:
    gpus = row.gpus
    return JobRecord(
        cluster=row.cluster,
        job_id=row.job_id,
        job_id_raw=row.job_id_raw,
        submit=_aware(row.submit_time),
        state=row.state,
        state_raw=row.state_raw,
        array_job_id=row.array_job_id,
        array_task_id=row.array_task_id,
        het_job_id=row.het_job_id,
        het_job_offset=row.het_job_offset,
        name=row.name,
        user=row.user_name,
        uid=row.uid,
        group=row.group_name,
        account=row.account,
        partition=row.partition,
        qos=row.qos,
        wckey=row.wckey,
        reservation=row.reservation,
        exit_code=row.exit_code,
        derived_exit_code=row.derived_exit_code,
        eligible=_aware(row.eligible_time),
        start=_aware(row.start_time),
        end=_aware(row.end_time),
        elapsed_s=row.elapsed_s,
        timelimit_min=row.timelimit_min,
        nodes=row.nodes,
        cpus=row.cpus,
        mem_bytes=row.mem_bytes,
        billing=row.billing_units,
        gpus=tuple(sorted(gpus.items())) if gpus else (),
        node_list=row.node_list,
        cpu_time_alloc_s=row.cpu_time_alloc_s,
        cpu_used_s=row.cpu_used_s,
        max_rss_bytes=row.max_rss_bytes,
        mem_used_byte_s=None if row.mem_used_byte_s is None else int(row.mem_used_byte_s),
        energy_j=row.energy_j,
        db_index=None if row.db_index is None else int(row.db_index),
        final=row.final,
    )


def list_jobs(session: Session, *, cluster: str | None = None,
              since: datetime | None = None, until: datetime | None = None,
              limit: int | None = None, yield_per: int = 2_000) -> Iterator[JobRecord]:
    """Jobs as JobRecords, ordered by cluster, submit time, job_id_raw.

    A job is in the window [since, until) when it was submitted before ``until`` and had
    not ended before ``since`` (``end_time IS NULL`` counts as still running) - the same
    overlap rule as ``sacct -S/-E`` without ``--state``. Rows are streamed with a
    server-side cursor (``yield_per``), so a large listing is never held in memory;
    consume the iterator inside the caller's transaction.
    """
    for what, value in (("since", since), ("until", until)):
        if value is not None and (value.tzinfo is None or value.utcoffset() is None):
            raise ValueError(f"{what} must be timezone-aware, got {value!r}")
    t = _TABLE.c
    stmt = select(_TABLE.c[_COLUMNS])
    if cluster is not None:
        stmt = stmt.where(t.cluster == cluster)
    if until is not None:
        stmt = stmt.where(t.submit_time < until)
    if since is not None:
        stmt = stmt.where((t.end_time.is_(None)) | (t.end_time >= since))
    stmt = stmt.order_by(t.cluster, t.submit_time, t.job_id_raw)
    if limit is not None:
        stmt = stmt.limit(limit)
    result = session.execute(stmt.execution_options(yield_per=yield_per))
    try:
        for row in result:
            yield _record(row)
    finally:
        result.close()


def count_jobs(session: Session, cluster: str | None = None) -> int:
    """Number of stored jobs, of one cluster or of all."""
    stmt = select(func.count()).select_from(_TABLE)
    if cluster is not None:
        stmt = stmt.where(_TABLE.c.cluster == cluster)
    return int(session.execute(stmt).scalar_one())
