"""One collection window, end to end: fetch -> parse -> roll up -> price -> store -> watermark.

``collect`` owns a window's transactions and its honest outcome: the run is logged in a
short transaction of its own, then every job, quarantined record, charge line and the
watermark go in ONE transaction, so a window is stored whole or not at all. Only an
``ok`` window moves its watermark. ``_WriteBehind`` runs the window's database work in a
second thread. Outcomes and the write path: docs/design/collection.md.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, cast

import numpy as np
import polars as pl

from billing.price import NO_RULE, PARTLY_PRICED
from billing.records import ChargeLine, JobRecord, QuarantinedRecord, Window
from collector.bulkgc import bulk_gc
from collector.pricer import Pricer
from collector.pricing.frame import KEY, LINE_SCHEMA, OUTCOME_SCHEMA, VectorPricer, month_index
from collector.run_result import CollectError, RunResult
from collector.slurm.columnar import Chunk, chunks_from_items, frame_records
from collector.slurm.keyset import KeySet
from collector.slurm.source import Source, UnchangedLookup
from collector.store import ingest as store_ingest
from collector.store import job_writer as store_job_writer
from collector.store import jobs as store_jobs
from collector.store import rollups as store_rollups
from collector.store import runs as store_runs
from collector.store.db import Session, Sessions, raw_connection

log = logging.getLogger(__name__)

QUARANTINE_BATCH = 1000


@dataclass(frozen=True)
class _Frames:
    """A chunk's jobs (one row per key: the last record of a key in the chunk), their
    charge lines (pricing.frame.LINE_SCHEMA) and each job's pricing outcome
    (OUTCOME_SCHEMA), priced by the reading thread."""

    jobs: pl.DataFrame
    lines: pl.DataFrame
    outcomes: pl.DataFrame


# What the reading thread hands the writing thread: a priced chunk, or a quarantined record.
_Entry = _Frames | QuarantinedRecord


# Chunks (one reader chunk each: CHUNK_LINES lines) that may wait for the writing thread
# (bounded memory: engine.md §2's queue of depth 2).
WRITE_DEPTH = 2
_STOP: list[_Entry] = []        # the end of the chunks (compared by identity)


class _SeenKeys:
    """The job keys met in a run, as 64-bit hashes in a KeySet (8 bytes a key; a Python
    set of the hashes took ~60, 14 MiB of a 1M-line poll's peak)."""

    def __init__(self) -> None:
        self._keys = KeySet()

    def add(self, hashes: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Remember ``hashes`` (uint64); returns which of them were met before (earlier
        in the run, or earlier in ``hashes``)."""
        uniq, first = np.unique(hashes, return_index=True)
        met = np.ones(len(hashes), dtype=bool)
        met[first] = False
        keys = uniq.view(np.int64).tolist()
        before = self._keys.contains_many(keys)
        met[first[np.array(before, dtype=bool)]] = True
        self._keys.update(k for k, b in zip(keys, before, strict=True) if not b)
        return met


_SEEN_SEED = 19                 # polars' hash seed for the met keys (any fixed value)


class _WriteBehind:
    """A window's database work, in a thread of its own, behind the reading.

    The caller's thread reads, parses, rolls up and prices each chunk (columns: the
    columnar reader and the vector pricer) and ``put``s it; this thread writes it
    (docs/design/engine.md §2):

    - jobs that are not stored yet (one primary-key probe per key in this transaction,
      so it sees what this poll wrote) and none of whose lines fall in a closed period
      go frame -> binary COPY into ``job_rows``/``charge_rows`` (collector.store.ingest);
    - every other job (stored before: changed or unchanged; or touching a closed
      period, whose lines become corrections) takes the JobWriter + Pricer path: stage,
      MERGE, line replacement and ``plan_lines``, with the lines the vector pricer made;
    - quarantined records are stored in batches.

    psycopg releases the GIL while PostgreSQL works, so the next chunk is parsed
    meanwhile: on 2 cores, the Python work and PostgreSQL's overlap.

    The session (and its transaction) is used by this thread alone until ``finish`` or
    ``abort`` returns. An exception here is raised again by the next ``put`` or by
    ``finish``; ``abort`` makes the thread stop after the statement it is running and
    waits for it, so the caller can roll back.
    """

    def __init__(self, writer: store_job_writer.JobWriter, pricer: Pricer | None,
                 vector: VectorPricer | None, session: Session,
                 run_id: int, cluster: str | None) -> None:
        self._writer = writer
        self._pricer = pricer
        self._vector = vector
        self._session = session
        self._store: store_ingest.Store | None = None
        self._conn: Any = None
        self._closed_months: set[int] = set()
        self._partitions: set[tuple[str, date]] = set()
        # Keys sent down the JobWriter path in this poll: a later record of one of them
        # goes there too (the JobWriter may still hold the earlier one unflushed).
        self._writer_keys: set[tuple[str, int, int]] = set()
        self.store_counts = store_ingest.WriteCounts()
        self._run_id = run_id
        self._cluster = cluster
        self._queue: queue.Queue[list[_Entry]] = queue.Queue(WRITE_DEPTH)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self.quarantined = 0
        self._thread = threading.Thread(target=self._run, name="collect-write", daemon=True)
        self._thread.start()

    def put(self, chunk: list[_Entry]) -> None:
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._queue.put(chunk, timeout=0.1)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Write what is left and wait for it; raises the thread's error, if any."""
        self.put(_STOP)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop the thread (after its current statement) and wait for it."""
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:  # pragma: no cover - the queue was just emptied
            pass
        self._thread.join()

    def _frames(self, frames: _Frames) -> None:
        """Write one priced chunk (the class docstring says which path each job takes)."""
        jobs, lines = frames.jobs, frames.lines
        if self._store is None:
            pricer = self._pricer
            ids = {pricer.card.version: pricer.rate_card_id} if pricer is not None else {}
            currencies = ({pricer.card.version: pricer.card.currency}
                          if pricer is not None else {})
            self._store = store_ingest.Store(self._session, self._run_id, ids, currencies)
            self._conn = raw_connection(self._session, "the poll's writer")
            self._closed_months = {month_index(p) for p in self._store.closed}
        store = self._store
        store_ingest.ensure_partitions_in(self._conn, jobs, lines, self._partitions)
        route = store_ingest.existing(self._conn, jobs)
        if self._closed_months and lines.height:
            touching = lines.filter(pl.col("usage_month").is_in(sorted(self._closed_months)))
            if touching.height:
                route = route | jobs.select(pl.struct(KEY).is_in(
                    touching.select(pl.struct(KEY)).to_series().implode())).to_series()
        if self._writer_keys:
            seen = self._writer_keys
            route = route | pl.Series([
                (c, r, s) in seen for c, r, s in jobs.select(
                    "cluster", "job_id_raw", pl.col("submit").dt.epoch("us")).iter_rows()],
                dtype=pl.Boolean)
        direct = jobs.filter(~route)
        if direct.height:
            store.write(direct.with_columns(pl.lit(False).alias("exists")),
                        lines.join(direct.select(KEY), on=KEY, how="semi"))
            if self._pricer is not None:
                self._pricer.jobs_priced += direct.height
                self._pricer.outcomes.update(dict(
                    frames.outcomes.join(direct.select(KEY), on=KEY, how="semi")
                    .group_by("outcome").len().iter_rows()))
        via_writer = jobs.filter(route)
        if via_writer.height:
            self._through_writer(via_writer, frames)

    def _through_writer(self, jobs: pl.DataFrame, frames: _Frames) -> None:
        """Jobs stored before (or touching a closed period): the JobWriter + Pricer path,
        with the vector pricer's lines as the prepared pricing."""
        writer, pricer, vector = self._writer, self._pricer, self._vector
        priced: dict[tuple[str, int, datetime], tuple[str, list[ChargeLine]]] = {}
        if pricer is not None and vector is not None:
            for cluster, raw, submit, outcome in frames.outcomes.join(
                    jobs.select(KEY), on=KEY, how="semi").iter_rows():
                priced[(cluster, raw, submit.replace(tzinfo=UTC))] = (outcome, [])
            for line in vector.charge_lines(
                    frames.lines.join(jobs.select(KEY), on=KEY, how="semi")):
                priced[line.job_key][1].append(line)
        for rec in frame_records(jobs):
            key = (rec.cluster, rec.job_id_raw, rec.submit)
            self._writer_keys.add((rec.cluster, rec.job_id_raw,
                                   int(rec.submit.timestamp() * 1_000_000)))
            hit = priced.get(key)
            if pricer is not None and hit is not None:
                pricer.remember(rec, hit)
            writer.add_encoded(rec, store_jobs.stage_row(rec))
            if pricer is not None and not writer.pending:   # it just flushed
                pricer.forget_prepared()

    def finish_store(self) -> store_ingest.WriteCounts:
        """After ``finish``: the frames writer's rollup deltas and counts (the caller's
        thread; the writing thread has ended)."""
        if self._store is not None:
            self.store_counts = self._store.finish()
            self._store = None
            if self._pricer is not None:
                self._pricer.lines_written += self.store_counts.lines_written
        return self.store_counts

    def _run(self) -> None:
        writer, pricer, stop = self._writer, self._pricer, self._stop
        pending_q: list[QuarantinedRecord] = []
        try:
            while True:
                chunk = self._queue.get()
                if chunk is _STOP or stop.is_set():
                    break
                for entry in chunk:
                    if stop.is_set():
                        return
                    if type(entry) is _Frames:
                        self._frames(entry)
                    else:
                        pending_q.append(cast(QuarantinedRecord, entry))
                        if len(pending_q) >= QUARANTINE_BATCH:
                            self.quarantined += store_runs.add_quarantined(
                                self._session, self._run_id, pending_q, self._cluster)
                            pending_q.clear()
            if stop.is_set():
                return
            writer.flush()
            if pending_q:
                self.quarantined += store_runs.add_quarantined(
                    self._session, self._run_id, pending_q, self._cluster)
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            self._error = exc
        finally:
            if pricer is not None:
                pricer.forget_prepared()


def source_chunks(source: Source, window: Window | None,
                  unchanged: UnchangedLookup | None) -> Iterator[Chunk]:
    """The source's window as chunks: its own ``fetch_chunks`` (sacct text, files),
    else its records (slurmrestd, pyslurm) through the records->frame builder."""
    fetch_chunks = getattr(source, "fetch_chunks", None)
    if fetch_chunks is not None:
        return cast(Iterator[Chunk], fetch_chunks(window, unchanged=unchanged))
    return chunks_from_items(source.fetch(window, unchanged=unchanged), source=source.name)


def _priced(vector: VectorPricer | None, jobs: pl.DataFrame) -> _Frames:
    """A chunk for the writer: one row per key (the last record of a key in the chunk:
    the one stored), priced by the vector pricer (no pricer: no lines)."""
    last = jobs.unique(subset=KEY, keep="last", maintain_order=True)
    if vector is None:
        return _Frames(last, pl.DataFrame(schema=LINE_SCHEMA), pl.DataFrame(schema=OUTCOME_SCHEMA))
    got = vector.price(last)
    return _Frames(last, got.lines, got.outcomes)


def _iterable(value: object) -> Iterable[object]:
    """A source's stats value that should be a list (anything else: empty)."""
    return value if isinstance(value, (list, tuple, set, frozenset)) else ()


def _counts(value: object) -> dict[str, int]:
    """A source's stats value that should map names to counts (anything else: empty)."""
    return dict(value) if isinstance(value, (dict, Counter)) else {}


def _pairs(counts: dict[str, int] | Counter[str]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((str(k), int(v)) for k, v in counts.items() if v))


# How many quarantined records a run's error text names (line and reason).
FIRST_BAD = 3


def describe_quarantined(item: QuarantinedRecord) -> str:
    """``line 3 (JobID 2): cannot parse AllocTRES='cpu=x': ...`` for the run's error."""
    where = f"line {item.line_no}" if item.line_no is not None else "a record"
    if item.job_id:
        where += f" (JobID {item.job_id})"
    reason = item.reason if len(item.reason) <= 300 else item.reason[:297] + "..."
    return f"{where}: {reason}"


def _report(result: RunResult, clusters: set[str], examples: list[str]) -> None:
    """The warnings of a run that stored something: each says what to look at."""
    name = f"run {result.run_id} ({result.source})"
    if result.duplicates:
        log.warning("%s: %d job record(s) were read more than once (same cluster, JobIDRaw "
                    "and Submit), e.g. %s; each job is stored once, from its last record",
                    name, result.duplicates, ", ".join(examples) or "(identical lines)")
    if result.unknown_states:
        log.warning("%s: %d job(s) have a state Slurm does not document (%s): stored with "
                    "the raw state, not final, and read again by every poll", name,
                    result.unknown_state_jobs,
                    ", ".join(f"{state} {n}" for state, n in result.unknown_states))
    unpriced = dict(result.unpriced)
    no_rule = unpriced.get(NO_RULE, 0) + unpriced.get(PARTLY_PRICED, 0)
    if no_rule:
        log.warning("%s: the rate card priced no line for %d of %d job(s) (%s); clusters "
                    "read: %s. Check the card's match conditions (a cluster or partition "
                    "name that is not in the data?)", name, result.unpriced_jobs,
                    result.jobs_priced,
                    ", ".join(f"{reason} {n}" for reason, n in result.unpriced),
                    ", ".join(sorted(clusters)) or "none")
    elif result.unpriced:
        log.info("%s: %d job(s) without charge lines: %s", name, result.unpriced_jobs,
                 ", ".join(f"{reason} {n}" for reason, n in result.unpriced))
    if result.quarantined:
        log.warning("%s: %d record(s) quarantined: see 'hpc-billing quarantine --run %d'; "
                    "%s", name, result.quarantined, result.run_id,
                    "the watermark stays where it was, so the next poll reads them again"
                    if result.window is not None and result.kind != "file"
                    else "fix the input and import it again, or accept their loss with "
                         f"'hpc-billing quarantine --accept --run {result.run_id}'")


def collect(session_factory: Sessions, source: Source, *, cluster: str | None,
            window: Window | None, kind: str, stream: str | None,
            batch_rows: int = 5_000, pricer: Pricer | None = None,
            skip_unchanged: bool = True) -> RunResult:
    """Store one window (or one whole file) from ``source``; returns its RunResult.

    Outcome (module doc): ``ok`` moves the watermark named ``stream`` to
    ``window.until`` (None: move none, as for file imports); ``partial`` stores what it
    could, keeps the quarantined records and moves no watermark; ``failed`` raises
    CollectError: either nothing of what it read could be stored (its quarantined records
    are kept, nothing else is written) or the window could not be read or written (all of
    it is rolled back). The caller's session factory yields SQLAlchemy sessions.
    With a ``pricer``, every inserted or changed job is priced in the same transaction.
    With ``skip_unchanged`` (and a source that supports it: sacct, parsable files), jobs
    whose raw lines are exactly those they were stored from are skipped before parsing
    and counted as unchanged.
    """
    started = time.monotonic()
    with session_factory() as session:
        run_id = store_runs.start_run(session, cluster=cluster, source=source.name, kind=kind,
                                      window=window)
        accepted_raw = store_runs.accepted_digests(session)
        session.commit()

    records = 0
    quarantined = 0
    accepted = 0
    duplicates = 0
    examples: list[str] = []
    first_bad: list[str] = []         # the first quarantined records: line and reason
    clusters: set[str] = set()
    counts = store_job_writer.UpsertCounts(0, 0, 0)
    try:
        with bulk_gc(), session_factory() as session:
            on_changed = on_inserted = None
            if pricer is not None:
                def on_changed(records: list[JobRecord], _session: Session = session) -> None:
                    pricer.price(_session, records, run_id=run_id)

                def on_inserted(records: list[JobRecord], _session: Session = session) -> None:
                    pricer.price(_session, records, run_id=run_id, new_jobs=True)
            writer = store_job_writer.JobWriter(session, run_id=run_id, batch_rows=batch_rows,
                                                on_changed=on_changed, on_inserted=on_inserted)
            unchanged: store_job_writer.UnchangedJobs | None = None
            with ExitStack() as cleanup:
                if skip_unchanged and source.skips_unchanged:
                    # The digest lookups run in this thread while the writing thread
                    # uses ``session``, so they get a session of their own (one psycopg2
                    # connection must never serve two threads: a COPY in one would
                    # break a query in the other). It sees what earlier polls committed;
                    # a job met twice in one window is then parsed twice, and the writer
                    # finds the second copy unchanged.
                    lookup_session = cleanup.enter_context(session_factory())
                    unchanged = store_job_writer.UnchangedJobs(lookup_session)
                # The engine's path for every source: chunks of rolled-up jobs (the
                # columnar reader for sacct text, the records->frame builder for the
                # others), priced per chunk by the vector pricer in this thread; the
                # writing thread gets finished batches.
                chunks = source_chunks(source, window, unchanged)
                vector = (VectorPricer(pricer.card, pricer.as_of) if pricer is not None
                          else None)
                # Job keys met in this run (as hashes: a collision only miscounts a
                # duplicate, it never drops a record; the writer keys on the real key).
                seen = _SeenKeys()
                behind = _WriteBehind(writer, pricer, vector, session, run_id, cluster)
                try:
                    for chunk in chunks:
                        entries: list[_Entry] = []
                        for bad in chunk.quarantined:
                            if accepted_raw and store_runs.raw_digest(bad.raw) in accepted_raw:
                                accepted += 1          # the operator accepted its loss
                                continue
                            if len(first_bad) < FIRST_BAD:
                                first_bad.append(describe_quarantined(bad))
                            entries.append(bad)
                        jobs = chunk.jobs
                        if jobs.height:
                            clusters.update(jobs["cluster"].unique().to_list())
                            fresh = jobs.filter(~pl.col("reemitted"))
                            records += fresh.height
                            met = seen.add(fresh.select(pl.struct(
                                "cluster", "job_id_raw", "submit").hash(_SEEN_SEED))
                                .to_series().to_numpy())
                            if met.any():
                                duplicates += int(met.sum())
                                for name, job_id in fresh.filter(pl.Series(met)).select(
                                        "cluster", "job_id").head(5).iter_rows():
                                    if len(examples) < 5:
                                        examples.append(f"{name}/{job_id}")
                            entries.append(_priced(vector, jobs))
                        if entries:
                            behind.put(entries)
                    behind.finish()
                except BaseException:
                    behind.abort()
                    raise
                written = behind.finish_store()
            quarantined += behind.quarantined
            counts = writer.counts + store_job_writer.UpsertCounts(
                written.inserted, written.updated, written.unchanged)
            if unchanged is not None and unchanged.count:
                records += unchanged.count
                clusters |= unchanged.clusters
                counts = counts + store_job_writer.UpsertCounts(0, 0, unchanged.count)
            stats = source.stats
            extra = stats.extra
            skipped = extra.get("duplicates_skipped", 0)
            duplicates += skipped if isinstance(skipped, int) else 0
            stored = counts.inserted + counts.updated + counts.unchanged
            if not quarantined:
                outcome, error = "ok", None
            elif stored:
                outcome = "partial"
                error = (f"{quarantined} record(s) quarantined, the other records stored"
                         + ("; the watermark stays where it was"
                            if stream is not None and window is not None else "")
                         + "; first: " + "; ".join(first_bad))
            else:
                outcome = "failed"
                error = (f"nothing stored: all {quarantined} record(s) read were quarantined "
                         f"(see 'hpc-billing quarantine --run {run_id}'); first: "
                         + "; ".join(first_bad))
            moved = False
            if outcome in ("ok", "partial"):
                # The rollups of the days this window touched, in the same transaction.
                store_rollups.refresh_rollups(session)
                if stream is not None and window is not None:
                    if cluster is None:
                        raise ValueError("a windowed collection needs a cluster for its "
                                         "watermark")
                    # How far polls have read and stored: lets the next window reach
                    # past a watermark that a partial window holds (poll_window).
                    store_runs.set_watermark(session, cluster, store_runs.read_stream(stream),
                                             window.until, run_id)
                    if outcome == "ok":
                        store_runs.set_watermark(session, cluster, stream, window.until,
                                                 run_id)
                        moved = True
            store_runs.finish_run(session, run_id, outcome=outcome, records_read=records,
                                  counts=counts, quarantined=quarantined, lines_read=stats.lines,
                                  error=error,
                                  jobs_priced=pricer.jobs_priced if pricer else 0,
                                  charge_lines=pricer.lines_written if pricer else 0,
                                  rate_card_id=pricer.rate_card_id if pricer else None)
            if pricer is not None:
                # New corrections of closed periods go into the audit trail with the
                # lines that post them (last: the append locks the trail until commit).
                pricer.record(session, run_id=run_id, kind=kind)
            session.commit()
    except Exception as exc:  # every failure is logged on the run, then re-raised typed
        error = f"{type(exc).__name__}: {exc}"
        lines = 0
        try:
            lines = source.stats.lines
        except Exception:  # noqa: BLE001, S110 - stats of a broken source are best effort
            pass
        with session_factory() as session:
            store_runs.finish_run(session, run_id, outcome="failed", records_read=records,
                                  counts=store_job_writer.UpsertCounts(0, 0, 0), quarantined=0,
                                  lines_read=lines, error=error)
            session.commit()
        result = RunResult(run_id=run_id, source=source.name, kind=kind, cluster=cluster,
                           window=window, outcome="failed", records_read=records,
                           lines_read=lines, duration_s=time.monotonic() - started, error=error,
                           clusters_seen=frozenset(clusters))
        raise CollectError(result) from exc

    result = RunResult(
        run_id=run_id, source=source.name, kind=kind, cluster=cluster, window=window,
        outcome=outcome, records_read=records, inserted=counts.inserted,
        updated=counts.updated, unchanged=counts.unchanged, quarantined=quarantined,
        lines_read=stats.lines, duration_s=time.monotonic() - started, error=error,
        clusters_seen=frozenset(clusters),
        jobs_priced=pricer.jobs_priced if pricer else 0,
        charge_lines=pricer.lines_written if pricer else 0,
        source_s=stats.slurm_seconds, duplicates=duplicates, accepted=accepted,
        ignored_columns=tuple(str(c) for c in _iterable(extra.get("ignored_columns"))),
        unknown_states=_pairs(_counts(extra.get("unknown_states"))),
        unpriced=_pairs(pricer.unpriced) if pricer else (),
        watermark_moved=moved)
    _report(result, clusters, examples)
    if outcome == "failed":
        raise CollectError(result)
    return result

