"""The ``jobs`` table's rows: a JobRecord as a COPY row and back, and job listings.

``stage_row`` encodes a record as the writer's COPY line (``content_hash`` fingerprints
it); ``list_jobs``, ``count_jobs``, ``job_page``, ``jobs_by_raw_id`` and ``job_records``
read jobs back as JobRecord. The bulk writer itself is ``job_writer.JobWriter``.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Collection, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, overload

from sqlalchemy import exists, func, or_, select, tuple_
from sqlalchemy.orm import Session

from billing.records import JobRecord
from collector.store.copytext import escape
from collector.store.models import Job, table_of

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
KEY_COLUMNS = ("cluster", "job_id_raw", "submit_time")
STAGE_COLUMNS = (*_COLUMNS, "content_hash", "raw_digest")
_WRITER_COLUMNS = frozenset(("content_hash", "raw_digest", "first_run_id", "last_run_id",
                             "updated_at", "cluster_id"))

# Every column of the model is either a record column or set by the writer, and the
# other way round: a new column in models.py without a place here fails at import.
if set(Job.__table__.columns.keys()) != set(STAGE_COLUMNS) | _WRITER_COLUMNS:
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


def _as_stored(rec: JobRecord) -> JobRecord:
    """The record as reading it back would give it (cpu_used_s at the column's scale)."""
    if rec.cpu_used_s is None:
        return rec
    stored = Decimal(rec.cpu_used_s).quantize(_CPU_QUANTUM, rounding=ROUND_HALF_UP)
    return rec if stored == rec.cpu_used_s else replace(rec, cpu_used_s=stored)



# ---------------------------------------------------------------------------- reading

_TABLE = table_of(Job)
_SELECTED = tuple(_TABLE.c[name] for name in _COLUMNS)


@overload
def _aware(value: datetime) -> datetime: ...
@overload
def _aware(value: None) -> None: ...
@overload
def _aware(value: datetime | None) -> datetime | None: ...
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
    stmt = select(*_SELECTED)
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


@dataclass(frozen=True, slots=True)
class JobPosition:
    """A position in the job order (cluster, submit time, job_id_raw): the key of the
    last job of a page; the next page starts strictly after it."""

    cluster: str
    submit: datetime
    job_id_raw: int


def _aware_arg(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {value!r}")
    return value.astimezone(UTC)


def job_page(session: Session, *, limit: int, after: JobPosition | None = None,
             cluster: str | None = None, account: str | None = None,
             accounts: Collection[str] | None = None, user: str | None = None,
             since: datetime | None = None, until: datetime | None = None) -> list[JobRecord]:
    """At most ``limit`` jobs ordered by (cluster, submit time, job_id_raw), starting after
    ``after``.

    Filters: ``cluster``, ``account``, ``user`` (equality); ``accounts`` restricts to jobs
    whose account is one of them (an empty collection matches nothing; None: no
    restriction); ``since``/``until`` select the jobs that ran in [since, until) by the
    rule of ``list_jobs`` (submitted before ``until``, not ended before ``since``).
    The order is the primary key's columns rearranged, so pages never overlap or skip a
    job; ``ix_jobs_cluster_submit_time`` serves it.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    t = _TABLE.c
    stmt = select(*_SELECTED)
    if cluster is not None:
        stmt = stmt.where(t.cluster == cluster)
    if account is not None:
        stmt = stmt.where(t.account == account)
    if accounts is not None:
        if isinstance(accounts, str):
            raise TypeError("accounts must be a collection of names, not one string")
        stmt = stmt.where(t.account.in_(sorted(set(accounts))))
    if user is not None:
        stmt = stmt.where(t.user_name == user)
    if until is not None:
        stmt = stmt.where(t.submit_time < _aware_arg(until, "until"))
    if since is not None:
        stmt = stmt.where(t.end_time.is_(None) | (t.end_time >= _aware_arg(since, "since")))
    if after is not None:
        stmt = stmt.where(tuple_(t.cluster, t.submit_time, t.job_id_raw)
                          > tuple_(after.cluster, _aware_arg(after.submit, "after.submit"),
                                   after.job_id_raw))
    stmt = stmt.order_by(t.cluster, t.submit_time, t.job_id_raw).limit(limit)
    return [_record(row) for row in session.execute(stmt)]


def jobs_by_raw_id(session: Session, cluster: str, job_id_raw: int) -> list[JobRecord]:
    """Every record of ``cluster`` with this JobIDRaw, oldest submit first (a requeued job
    has one record per run; a slurmctld state reset can reuse an id much later)."""
    t = _TABLE.c
    stmt = (select(*_SELECTED)
            .where(t.cluster == cluster, t.job_id_raw == job_id_raw)
            .order_by(t.submit_time))
    return [_record(row) for row in session.execute(stmt)]


def job_records(session: Session, job_id: str, cluster: str | None = None) -> list[JobRecord]:
    """The records a person means by ``job_id``: JobIDRaw (digits) or JobID as Slurm prints
    it (``6_3``, ``14+1``), of ``cluster`` when given; every match (a requeued job has one
    record per run; an array's last task has the array's id as JobIDRaw), by cluster,
    submit time and JobIDRaw."""
    t = _TABLE.c
    match = [t.job_id == job_id]
    if job_id.isascii() and job_id.isdigit() and int(job_id) < 2**63:
        match.append(t.job_id_raw == int(job_id))
    stmt = select(*_SELECTED).where(or_(*match))
    if cluster is not None:
        stmt = stmt.where(t.cluster == cluster)
    stmt = stmt.order_by(t.cluster, t.submit_time, t.job_id_raw)
    return [_record(row) for row in session.execute(stmt)]


def account_known(session: Session, account: str, cluster: str | None = None) -> bool:
    """Whether any stored job (of ``cluster``, when given) belongs to ``account``."""
    cond = [_TABLE.c.account == account]
    if cluster is not None:
        cond.append(_TABLE.c.cluster == cluster)
    return bool(session.execute(select(exists().where(*cond))).scalar())
