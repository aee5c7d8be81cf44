"""The collector's own bookkeeping: clusters, the run log, watermarks and quarantine.

This module owns the rows that say what the collector did (``collector_runs``), how far
each stream of each cluster has been collected (``watermarks``), and what input could not
be parsed (``quarantine``), plus ``ensure_cluster``. Reads return frozen dataclasses.

Like every store function these never commit. A caller that wants a failed window to
leave a 'failed' run row behind starts and finishes the run in transactions of its own,
apart from the window's transaction that rolls back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any, cast

from sqlalchemy import extract, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from billing.records import QuarantinedRecord, Window
from collector.store.db import raw_cursor
from collector.store.job_writer import UpsertCounts
from collector.store.models import (
    RUN_KINDS,
    RUN_OUTCOMES,
    Cluster,
    CollectorRun,
    Quarantine,
    Watermark,
    table_of,
)

SACCT_STREAM = "sacct"


def read_stream(stream: str) -> str:
    """The cursor beside a watermark: the end of the newest window that stored data (a
    partial window moves it, not the watermark)."""
    return f"{stream}:read"


def backfill_stream(since: datetime) -> str:
    """The watermark stream of a backfill that started at ``since``."""
    return "backfill:" + _aware(since, "since").isoformat()


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {value!r}")
    return value.astimezone(UTC)


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


# ---------------------------------------------------------------------------- clusters

def ensure_cluster(session: Session, name: str) -> None:
    """Make sure the cluster row exists (insert, or nothing when it is there)."""
    session.execute(pg_insert(Cluster).values(name=name).on_conflict_do_nothing())


# -------------------------------------------------------------------------------- runs

@dataclass(frozen=True, slots=True)
class RunInfo:
    """One row of the run log."""

    id: int
    cluster: str | None
    source: str
    kind: str
    window_since: datetime | None
    window_until: datetime | None
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    outcome: str
    records_read: int
    jobs_inserted: int
    jobs_updated: int
    jobs_unchanged: int
    quarantined: int
    lines_read: int
    error: str | None
    jobs_priced: int = 0
    charge_lines_written: int = 0
    rate_card_id: int | None = None


def start_run(session: Session, *, cluster: str | None, source: str, kind: str,
              window: Window | None) -> int:
    """Log the start of a run (outcome 'running') and return its id.

    ``cluster`` may be None for a file import that takes each record's own cluster.

    ``started_at`` is the database's ``clock_timestamp()``, not the transaction start, so
    durations are right even when the caller's transaction began earlier.
    """
    if kind not in RUN_KINDS:
        raise ValueError(f"run kind must be one of {RUN_KINDS}, got {kind!r}")
    if cluster is not None:
        ensure_cluster(session, cluster)
    stmt = (
        insert(CollectorRun)
        .values(cluster=cluster, source=source, kind=kind,
                window_since=None if window is None else window.since,
                window_until=None if window is None else window.until,
                started_at=func.clock_timestamp(), outcome="running")
        .returning(CollectorRun.id)
    )
    return int(session.execute(stmt).scalar_one())


_SQL_FINISH = text(
    "UPDATE collector_runs AS r SET finished_at = c.now,"
    " duration_s = extract(epoch FROM c.now - r.started_at),"
    " outcome = :outcome, records_read = :records_read,"
    " jobs_inserted = :inserted, jobs_updated = :updated, jobs_unchanged = :unchanged,"
    " quarantined = :quarantined, lines_read = :lines_read, error = :error,"
    " jobs_priced = :jobs_priced, charge_lines_written = :charge_lines,"
    " rate_card_id = :rate_card_id"
    " FROM (SELECT clock_timestamp() AS now) AS c"
    " WHERE r.id = :run_id"
)


def finish_run(session: Session, run_id: int, *, outcome: str, records_read: int,
               counts: UpsertCounts, quarantined: int, lines_read: int,
               error: str | None = None, jobs_priced: int = 0, charge_lines: int = 0,
               rate_card_id: int | None = None) -> None:
    """Record how a run ended; ``finished_at`` and ``duration_s`` come from the DB clock.

    Outcomes: ``ok`` (every record read was stored or deliberately skipped), ``partial``
    (some were quarantined, the rest stored), ``failed`` (nothing of what it read was
    stored; ``error`` says why). Counters are overwritten, not added to: finishing twice
    records the last call.
    """
    if outcome not in RUN_OUTCOMES or outcome == "running":
        raise ValueError(f"outcome must be 'ok', 'partial' or 'failed', got {outcome!r}")
    result = session.execute(_SQL_FINISH, {
        "run_id": run_id, "outcome": outcome, "records_read": records_read,
        "inserted": counts.inserted, "updated": counts.updated,
        "unchanged": counts.unchanged, "quarantined": quarantined,
        "lines_read": lines_read, "error": None if error is None else _clean(error),
        "jobs_priced": jobs_priced, "charge_lines": charge_lines, "rate_card_id": rate_card_id,
    })
    if cast(CursorResult[Any], result).rowcount != 1:
        raise LookupError(f"no collector run with id {run_id}")


_RUNS = table_of(CollectorRun)
_QUARANTINE = table_of(Quarantine)


def _run_info(run: Any) -> RunInfo:
    return RunInfo(
        id=run.id, cluster=run.cluster, source=run.source, kind=run.kind,
        window_since=_utc(run.window_since), window_until=_utc(run.window_until),
        started_at=run.started_at.astimezone(UTC), finished_at=_utc(run.finished_at),
        duration_s=run.duration_s, outcome=run.outcome, records_read=run.records_read,
        jobs_inserted=run.jobs_inserted, jobs_updated=run.jobs_updated,
        jobs_unchanged=run.jobs_unchanged, quarantined=run.quarantined,
        lines_read=run.lines_read, error=run.error, jobs_priced=run.jobs_priced,
        charge_lines_written=run.charge_lines_written, rate_card_id=run.rate_card_id,
    )


def get_run(session: Session, run_id: int) -> RunInfo | None:
    """One run of the log, or None."""
    row = session.execute(select(_RUNS).where(_RUNS.c.id == run_id)).one_or_none()
    return None if row is None else _run_info(row)


def list_runs(session: Session, *, cluster: str | None = None,
              limit: int = 100) -> list[RunInfo]:
    """The newest ``limit`` runs (of one cluster, or of all), newest first."""
    stmt = select(_RUNS).order_by(_RUNS.c.id.desc()).limit(limit)
    if cluster is not None:
        stmt = stmt.where(_RUNS.c.cluster == cluster)
    return [_run_info(row) for row in session.execute(stmt)]


# -------------------------------------------------------------------------- watermarks

def get_watermark(session: Session, cluster: str, stream: str) -> datetime | None:
    """The stored position of ``stream`` for ``cluster``, or None when there is none."""
    position = session.execute(
        select(Watermark.position)
        .where(Watermark.cluster == cluster, Watermark.stream == stream)
    ).scalar_one_or_none()
    return _utc(position)


def set_watermark(session: Session, cluster: str, stream: str, position: datetime,
                  run_id: int | None) -> None:
    """Set the position of ``stream`` (insert or overwrite).

    No monotonicity check: the caller decides whether moving back is meant (a re-poll
    after a slurmdbd restore is).
    """
    position = _aware(position, "position")
    ensure_cluster(session, cluster)
    stmt = pg_insert(Watermark).values(cluster=cluster, stream=stream, position=position,
                                       run_id=run_id, updated_at=func.now())
    stmt = stmt.on_conflict_do_update(
        index_elements=[Watermark.cluster, Watermark.stream],
        set_={"position": stmt.excluded.position, "run_id": stmt.excluded.run_id,
              "updated_at": stmt.excluded.updated_at},
    )
    session.execute(stmt)


# -------------------------------------------------------------------------- quarantine

@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """One stored quarantined record (``accepted_at``: when an operator accepted its loss)."""

    id: int
    run_id: int
    cluster: str | None
    source: str
    line_no: int | None
    job_id: str | None
    reason: str
    raw: str
    created_at: datetime
    accepted_at: datetime | None = None


def _clean(value: str) -> str:
    """Make ``value`` storable in a PostgreSQL ``text`` column.

    PostgreSQL text cannot hold NUL (U+0000), so each NUL becomes U+FFFD (the Unicode
    replacement character): the only change ever made to quarantined text. Lone
    surrogates (from a ``surrogateescape`` decode of undecodable bytes) are not valid
    UTF-8 either and become U+FFFD too.
    """
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return value


def _opt(value: str | None) -> str | None:
    return None if value is None else _clean(value)


# One statement per page of 1,000 records: the columns go as arrays (psycopg 3 binds
# them server-side; ``unnest`` zips them back into rows, in order).
_SQL_QUARANTINE = (
    "INSERT INTO quarantine (run_id, cluster, source, line_no, job_id, reason, raw)"
    " SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bigint[], %s::text[],"
    " %s::text[], %s::text[])")
_QUARANTINE_PAGE = 1_000


def add_quarantined(session: Session, run_id: int, records: Iterable[QuarantinedRecord],
                    cluster: str | None) -> int:
    """Store quarantined records of run ``run_id``; returns how many were stored.

    Bulk (one ``unnest`` statement per 1,000 records) and streaming:
    ``records`` may be a generator of any length. Text is stored verbatim (tabs,
    newlines, ``\\x1f``, backslashes: parameters are not COPY-escaped) except NUL, which
    PostgreSQL text cannot hold (see ``_clean``).
    """
    if cluster is not None:
        ensure_cluster(session, cluster)
    stored = 0
    iterator = iter(records)
    with raw_cursor(session, "the quarantine") as cur:
        while True:
            page = [
                (run_id, cluster, _clean(rec.source), rec.line_no, _opt(rec.job_id),
                 _clean(rec.reason), _clean(rec.raw))
                for rec in islice(iterator, _QUARANTINE_PAGE)
            ]
            if not page:
                break
            cur.execute(_SQL_QUARANTINE, [list(column) for column in zip(*page, strict=True)])
            stored += len(page)
    return stored


def list_quarantine(session: Session, *, run_id: int | None = None,
                    limit: int = 100) -> list[QuarantineEntry]:
    """Quarantined records, newest first (of one run, or of all)."""
    stmt = select(_QUARANTINE).order_by(_QUARANTINE.c.id.desc()).limit(limit)
    if run_id is not None:
        stmt = stmt.where(_QUARANTINE.c.run_id == run_id)
    return [
        QuarantineEntry(id=q.id, run_id=q.run_id, cluster=q.cluster, source=q.source,
                        line_no=q.line_no, job_id=q.job_id, reason=q.reason, raw=q.raw,
                        created_at=q.created_at.astimezone(UTC),
                        accepted_at=_utc(q.accepted_at))
        for q in session.execute(stmt)
    ]


def raw_digest(raw: str) -> str:
    """The md5 (hex) of a quarantined record's text as stored (``_clean``): what
    PostgreSQL's ``md5(raw)`` gives for its row. Names raw text, nothing more."""
    return hashlib.md5(_clean(raw).encode("utf-8"), usedforsecurity=False).hexdigest()


def accepted_digests(session: Session) -> set[str]:
    """``raw_digest`` of every quarantined text an operator accepted losing (through the
    partial index on accepted rows): a run skips these deliberately."""
    rows = session.execute(text(
        "SELECT DISTINCT md5(raw) FROM quarantine WHERE accepted_at IS NOT NULL"))
    return {row[0] for row in rows}


def accept_quarantined(session: Session, *, run_id: int | None = None,
                       ids: Iterable[int] = ()) -> int:
    """Mark quarantined records accepted (every record of ``run_id``, and those with the
    given ids): later runs skip the same raw text instead of quarantining it. Returns how
    many rows were newly accepted; already accepted rows keep their time."""
    id_list = sorted(set(ids))
    if run_id is None and not id_list:
        raise ValueError("accept_quarantined: give a run id or record ids")
    condition = _QUARANTINE.c.accepted_at.is_(None)
    which = []
    if run_id is not None:
        which.append(_QUARANTINE.c.run_id == run_id)
    if id_list:
        which.append(_QUARANTINE.c.id.in_(id_list))
    stmt = (update(_QUARANTINE).where(condition, or_(*which))
            .values(accepted_at=func.clock_timestamp()))
    return int(cast(CursorResult[Any], session.execute(stmt)).rowcount or 0)



# ----------------------------------------------------------------------- newest polls

@dataclass(frozen=True, slots=True)
class LastPoll:
    """The newest poll of a cluster (with one of the outcomes asked for), and its age by
    the DATABASE's clock (so the clocks of several head nodes never matter)."""

    cluster: str
    run_id: int
    finished_at: datetime
    age_s: float
    outcome: str = "ok"
    quarantined: int = 0
    error: str | None = None


def last_poll(session: Session, cluster: str,
              outcomes: Collection[str] = ("ok",)) -> LastPoll | None:
    """The newest finished run of kind 'poll' with one of ``outcomes`` for ``cluster``
    (any process), or None. "Newest" is the highest id: polls of one cluster never
    overlap (the leader lock), and ``ix_collector_runs_cluster_id`` answers with a short
    backward index scan."""
    r = _RUNS.c
    row = session.execute(
        select(r.id, r.finished_at, r.outcome, r.quarantined, r.error,
               extract("epoch", func.clock_timestamp() - r.finished_at).label("age_s"))
        .where(r.cluster == cluster, r.kind == "poll", r.outcome.in_(list(outcomes)),
               r.finished_at.is_not(None))
        .order_by(r.id.desc())
        .limit(1)
    ).one_or_none()
    if row is None:
        return None
    return LastPoll(cluster=cluster, run_id=int(row.id),
                    finished_at=row.finished_at.astimezone(UTC), age_s=float(row.age_s),
                    outcome=row.outcome, quarantined=int(row.quarantined or 0),
                    error=row.error)


def last_ok_poll(session: Session, cluster: str) -> LastPoll | None:
    """The newest poll with outcome 'ok' for ``cluster`` (see ``last_poll``)."""
    return last_poll(session, cluster, ("ok",))
