"""One collection window, end to end: fetch -> parse -> roll up -> store -> watermark.

This module owns the transaction boundaries of a poll and its honest outcome. A run is
logged in its own short transaction first (so a failure is recorded even though the
data is rolled back); then every job, every quarantined record and the watermark are
written in ONE transaction, so a window is either stored whole or not at all.

Outcomes (docs/columns.md and README "Commands"): ``ok`` when every record read was
stored or deliberately skipped (unchanged, a duplicate of a record met earlier in the
run, or quarantined text an operator accepted); ``partial`` when some records were
quarantined and the rest stored; ``failed`` when nothing of what it read was stored, or
the window could not be read or written at all. Only an ``ok`` window moves its
watermark: a partial one stores what it could and leaves the watermark where it was, so
the next poll reads the quarantined records again (never past a record not stored).
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from billing.price import NO_RULE, PARTLY_PRICED, PRICED, plan_lines, price_job_outcome
from billing.rates import RateCard
from billing.records import ChargeLine, JobRecord, QuarantinedRecord, Window
from billing.rollup import rollup_steps
from collector.slurm.source import Source
from collector.store import charges as store_charges
from collector.store import job_writer as store_job_writer
from collector.store import jobs as store_jobs
from collector.store import periods as store_periods
from collector.store import rate_cards as store_rate_cards
from collector.store import rollups as store_rollups
from collector.store import runs as store_runs

log = logging.getLogger(__name__)

POLL_STREAM = "sacct"
QUARANTINE_BATCH = 1000


class CollectError(Exception):
    """A window could not be stored; the run log has the details and nothing was written."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        super().__init__(result.error or "collection failed")


OUTCOMES = ("ok", "partial", "failed")


@dataclass(frozen=True, slots=True)
class RunResult:
    run_id: int
    source: str
    kind: str
    cluster: str | None
    window: Window | None
    outcome: str                      # "ok" | "partial" | "failed" (see the module doc)
    records_read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    lines_read: int = 0
    duration_s: float = 0.0
    error: str | None = None
    clusters_seen: frozenset[str] = field(default_factory=frozenset)
    jobs_priced: int = 0
    charge_lines: int = 0
    source_s: float = 0.0             # time spent inside the source (sacct, slurmrestd ...)
    duplicates: int = 0               # job records met again in the run (stored once)
    accepted: int = 0                 # quarantined texts an operator accepted, skipped
    ignored_columns: tuple[str, ...] = ()
    unknown_states: tuple[tuple[str, int], ...] = ()   # (state, jobs), not final
    unpriced: tuple[tuple[str, int], ...] = ()         # (pricing outcome, jobs)
    watermark_moved: bool = False     # this run set its stream's watermark (ok windows)

    @property
    def unknown_state_jobs(self) -> int:
        return sum(count for _, count in self.unknown_states)

    @property
    def unpriced_jobs(self) -> int:
        return sum(count for _, count in self.unpriced)

    def summary(self) -> str:
        span = (f"[{self.window.since:%Y-%m-%dT%H:%M:%SZ}, {self.window.until:%Y-%m-%dT%H:%M:%SZ})"
                if self.window else "whole file")
        unpriced = f"unpriced {self.unpriced_jobs}"
        if self.unpriced:
            unpriced += " (" + ", ".join(f"{reason} {n}" for reason, n in self.unpriced) + ")"
        text = (f"run {self.run_id} {self.kind} {self.source} {span}: {self.outcome}; "
                f"read {self.records_read} jobs from {self.lines_read} lines, "
                f"inserted {self.inserted}, updated {self.updated}, unchanged {self.unchanged}, "
                f"duplicates {self.duplicates}, quarantined {self.quarantined}"
                + (f", accepted {self.accepted}" if self.accepted else "")
                + f", priced {self.jobs_priced} ({self.charge_lines} charge lines), {unpriced}, "
                f"ignored columns {len(self.ignored_columns)}, "
                f"unknown states {self.unknown_state_jobs} in {self.duration_s:.2f}s")
        if self.error:
            text += f"; error: {self.error}"
        return text


SessionFactory = Callable[[], object]


def next_period(period: str) -> str:
    """The billing period after ``period`` ("2026-12" -> "2027-01"; months only)."""
    year, month = int(period[:4]), int(period[5:7])
    return f"{year + month // 12:04d}-{month % 12 + 1:02d}"


class Pricer:
    """Prices jobs with one rate-card version and writes their lines (never commits).

    Closed periods are respected: lines whose usage falls in a closed period become
    corrections posted in the first open period after it (billing.price.plan_lines), so
    nothing stored in a closed period ever changes.
    """

    def __init__(self, card: RateCard, rate_card_id: int, *, as_of: datetime) -> None:
        self.card = card
        self.rate_card_id = rate_card_id
        self.as_of = as_of
        self.jobs_priced = 0
        self.lines_written = 0
        self.lines_deleted = 0
        # Jobs priced, by billing.price outcome ("priced", "no matching rule" ...).
        self.outcomes: Counter[str] = Counter()
        self._closed: frozenset[str] = frozenset()
        # key -> (record, (outcome, its lines)), priced ahead by the reading thread
        self._prepared: dict[tuple, tuple[JobRecord, tuple[str, list[ChargeLine]]]] = {}

    @property
    def unpriced(self) -> dict[str, int]:
        """Jobs priced in this run that got no line (or not for every period), by why."""
        return {reason: n for reason, n in sorted(self.outcomes.items()) if reason != PRICED}

    def prepare(self, rec: JobRecord) -> tuple[str, list[ChargeLine]] | None:
        """``price_job_outcome`` for ``rec``, for ``remember``; None when it fails
        (``price`` then prices the job again and raises). Pure: any thread."""
        try:
            return price_job_outcome(self.card, rec, as_of=self.as_of)
        except Exception:  # noqa: BLE001 - priced again, and the failure raised, by price()
            return None

    def remember(self, rec: JobRecord, priced: tuple[str, list[ChargeLine]] | None) -> None:
        """Keep ``prepare``'s answer for ``rec`` until ``price`` asks for it."""
        if priced is not None:
            self._prepared[(rec.cluster, rec.job_id_raw, rec.submit)] = (rec, priced)

    def forget_prepared(self) -> None:
        """Drop what ``price`` did not use (jobs the writer found unchanged)."""
        self._prepared.clear()

    def _first_open_after(self, period: str) -> str:
        candidate = next_period(period)
        while candidate in self._closed:
            candidate = next_period(candidate)
        return candidate

    def price(self, session, records: list[JobRecord], *, run_id: int,
              new_jobs: bool = False) -> None:
        """Price ``records`` and make their open-period lines match. ``new_jobs``: the
        jobs were inserted in this transaction, so they have no lines to compare with."""
        # Read the closed periods in this transaction, under the lock close_period waits
        # for: a period closed by another process is respected from the next batch on,
        # and cannot close under a batch being written.
        self._closed = store_periods.closed_periods(session, lock=True)
        keys = [(r.cluster, r.job_id_raw, r.submit) for r in records]
        desired: dict[tuple, list[ChargeLine]] = {}
        prepared = self._prepared
        outcomes: Counter[str] = Counter()
        for rec in records:
            key = (rec.cluster, rec.job_id_raw, rec.submit)
            hit = prepared.pop(key, None)
            # Prepared lines serve only the very record the writer stored (the same
            # object, or an equal one: not when storing rounded its cpu_used_s).
            if hit is not None and (hit[0] is rec or hit[0] == rec):
                outcome, desired[key] = hit[1]
            else:
                outcome, desired[key] = price_job_outcome(self.card, rec, as_of=self.as_of)
            outcomes[outcome] += 1
        if self._closed:
            frozen = store_charges.frozen_lines(session, keys)
            lines = [line for key in keys for line in plan_lines(
                desired[key], frozen.get(key, []), closed=self._closed,
                first_open_after=self._first_open_after)]
        else:
            lines = [line for key in keys for line in desired[key]]
        counts = store_charges.replace_charges(session, keys, lines, run_id=run_id,
                                               rate_card_ids={self.card.version: self.rate_card_id},
                                               new_jobs=new_jobs)
        self.jobs_priced += len(records)
        self.outcomes.update(outcomes)
        self.lines_written += counts.inserted
        self.lines_deleted += counts.deleted


_GC_LOCK = threading.Lock()
_GC_USERS = [0]              # windows streaming now (the settings are process-wide)
_GC_SAVED: list[int] = []    # the thresholds to restore after the last one
# Allocations between young-generation collections while a window streams (default 700).
BULK_GC_THRESHOLD = 100_000


@contextmanager
def bulk_gc() -> Iterator[None]:
    """Fewer cyclic-GC passes while a window streams.

    A window allocates millions of short-lived, acyclic objects (fields, records, lines);
    with the default thresholds the collector spent about 15% of a 1,000,000-line import
    in the cyclic GC, mostly re-traversing long-lived objects in full collections. For
    the duration, the objects alive before it are frozen (never traversed) and young
    collections run every BULK_GC_THRESHOLD allocations; both are undone afterwards.
    Reference counting still frees everything as usual; memory stays bounded by a batch.
    """
    with _GC_LOCK:
        _GC_USERS[0] += 1
        if _GC_USERS[0] == 1:
            _GC_SAVED[:] = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(max(_GC_SAVED[0], BULK_GC_THRESHOLD), *_GC_SAVED[1:])
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_USERS[0] -= 1
            if _GC_USERS[0] == 0:
                gc.set_threshold(*_GC_SAVED)
                gc.unfreeze()


# Jobs and quarantined records handed to the writing thread at a time, and chunks that
# may wait for it (bounded memory: at most WRITE_DEPTH x WRITE_CHUNK records ahead).
WRITE_CHUNK = 500
WRITE_DEPTH = 16
_STOP = object()


class _WriteBehind:
    """A window's database work, in a thread of its own, behind the reading.

    The caller's thread reads, parses, rolls up, prices (``Pricer.prepare``) and encodes
    (``store_jobs.stage_row``) each job and ``put``s them in chunks; this thread adds them
    to the JobWriter, whose flushes COPY, MERGE and write the charge lines (with the
    prepared lines of inserted jobs), and stores quarantined records. psycopg2 releases
    the GIL while PostgreSQL works, so the next jobs are parsed meanwhile: on 2 cores,
    the Python work and PostgreSQL's overlap instead of taking turns.

    The session (and its transaction) is used by this thread alone until ``finish`` or
    ``abort`` returns. An exception here is raised again by the next ``put`` or by
    ``finish``; ``abort`` makes the thread stop after the statement it is running and
    waits for it, so the caller can roll back.
    """

    def __init__(self, writer: store_job_writer.JobWriter, pricer: Pricer | None, session,
                 run_id: int, cluster: str | None) -> None:
        self._writer = writer
        self._pricer = pricer
        self._session = session
        self._run_id = run_id
        self._cluster = cluster
        self._queue: queue.Queue[object] = queue.Queue(WRITE_DEPTH)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self.quarantined = 0
        self._thread = threading.Thread(target=self._run, name="collect-write", daemon=True)
        self._thread.start()

    def put(self, chunk: list[JobRecord | QuarantinedRecord | tuple]) -> None:
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
        self.put(_STOP)  # type: ignore[arg-type]
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

    def _run(self) -> None:
        writer, pricer, stop = self._writer, self._pricer, self._stop
        pending_q: list[QuarantinedRecord] = []
        try:
            while True:
                chunk = self._queue.get()
                if chunk is _STOP or stop.is_set():
                    break
                for entry in chunk:  # type: ignore[attr-defined]
                    if stop.is_set():
                        return
                    if type(entry) is tuple:          # (job, its stage row, its pricing)
                        rec, row, priced = entry
                        if pricer is not None and priced is not None:
                            pricer.remember(rec, priced)
                        writer.add_encoded(rec, row)
                        if pricer is not None and not writer.pending:   # it just flushed
                            pricer.forget_prepared()
                    else:
                        pending_q.append(entry)
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


def _pairs(counts: dict[str, int] | Counter[str]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((str(k), int(v)) for k, v in counts.items() if v))


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


def collect(session_factory: SessionFactory, source: Source, *, cluster: str | None,
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
    with session_factory() as session:  # type: ignore[attr-defined]
        run_id = store_runs.start_run(session, cluster=cluster, source=source.name, kind=kind,
                                      window=window)
        accepted_raw = store_runs.accepted_digests(session)
        session.commit()

    records = 0
    quarantined = 0
    accepted = 0
    duplicates = 0
    examples: list[str] = []
    clusters: set[str] = set()
    counts = store_job_writer.UpsertCounts(0, 0, 0)
    try:
        with bulk_gc(), session_factory() as session:  # type: ignore[attr-defined]
            on_changed = on_inserted = None
            if pricer is not None:
                def on_changed(records: list[JobRecord], _session=session) -> None:
                    pricer.price(_session, records, run_id=run_id)

                def on_inserted(records: list[JobRecord], _session=session) -> None:
                    pricer.price(_session, records, run_id=run_id, new_jobs=True)
            writer = store_job_writer.JobWriter(session, run_id=run_id, batch_rows=batch_rows,
                                          on_changed=on_changed, on_inserted=on_inserted)
            unchanged = None
            with ExitStack() as cleanup:
                if skip_unchanged and getattr(source, "skips_unchanged", False):
                    # The digest lookups run in this thread while the writing thread
                    # uses ``session``, so they get a session of their own (one psycopg2
                    # connection must never serve two threads: a COPY in one would
                    # break a query in the other). It sees what earlier polls committed;
                    # a job met twice in one window is then parsed twice, and the writer
                    # finds the second copy unchanged.
                    lookup_session = cleanup.enter_context(session_factory())  # type: ignore[arg-type]
                    unchanged = store_job_writer.UnchangedJobs(lookup_session)
                    items = source.fetch(window, unchanged=unchanged)  # type: ignore[call-arg]
                else:
                    items = source.fetch(window)
                # Price in this thread only where most jobs read are new or changed (the
                # skip path drops the unchanged ones before parsing); elsewhere the
                # writer prices just the jobs it finds changed.
                prepare = pricer.prepare if pricer is not None and unchanged is not None else None
                stage_row = store_jobs.stage_row
                # Job keys met in this run (as hashes: a collision only miscounts a
                # duplicate, it never drops a record; the writer keys on the real key).
                seen: set[int] = set()
                seen_add = seen.add
                behind = _WriteBehind(writer, pricer, session, run_id, cluster)
                try:
                    chunk: list = []
                    for item in rollup_steps(items, source=source.name):
                        if isinstance(item, JobRecord):
                            key = hash((item.cluster, item.job_id_raw, item.submit))
                            if key in seen:
                                duplicates += 1
                                if len(examples) < 5:
                                    examples.append(f"{item.cluster}/{item.job_id}")
                            else:
                                seen_add(key)
                            chunk.append((item, stage_row(item),
                                          prepare(item) if prepare is not None else None))
                            records += 1
                            if item.cluster not in clusters:
                                clusters.add(item.cluster)
                        else:
                            if accepted_raw and store_runs.raw_digest(item.raw) in accepted_raw:
                                accepted += 1          # the operator accepted its loss
                                continue
                            chunk.append(item)
                        if len(chunk) >= WRITE_CHUNK:
                            behind.put(chunk)
                            chunk = []
                    if chunk:
                        behind.put(chunk)
                    behind.finish()
                except BaseException:
                    behind.abort()
                    raise
            quarantined += behind.quarantined
            counts = writer.counts
            if unchanged is not None and unchanged.count:
                records += unchanged.count
                clusters |= unchanged.clusters
                counts = counts + store_job_writer.UpsertCounts(0, 0, unchanged.count)
            stats = source.stats
            extra = stats.extra
            duplicates += int(extra.get("duplicates_skipped", 0) or 0)  # type: ignore[call-overload]
            stored = counts.inserted + counts.updated + counts.unchanged
            if not quarantined:
                outcome, error = "ok", None
            elif stored:
                outcome = "partial"
                error = (f"{quarantined} record(s) quarantined, the other records stored"
                         + ("; the watermark stays where it was"
                            if stream is not None and window is not None else ""))
            else:
                outcome = "failed"
                error = (f"nothing stored: all {quarantined} record(s) read were quarantined "
                         f"(see 'hpc-billing quarantine --run {run_id}')")
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
                    store_runs.set_watermark(session, cluster, read_stream(stream),
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
            session.commit()
    except Exception as exc:  # every failure is logged on the run, then re-raised typed
        error = f"{type(exc).__name__}: {exc}"
        lines = 0
        try:
            lines = source.stats.lines
        except Exception:  # noqa: BLE001, S110 - stats of a broken source are best effort
            pass
        with session_factory() as session:  # type: ignore[attr-defined]
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
        ignored_columns=tuple(str(c) for c in extra.get("ignored_columns", ()) or ()),  # type: ignore[union-attr]
        unknown_states=_pairs(extra.get("unknown_states", {}) or {}),  # type: ignore[arg-type]
        unpriced=_pairs(pricer.unpriced) if pricer else (),
        watermark_moved=moved)
    _report(result, clusters, examples)
    if outcome == "failed":
        raise CollectError(result)
    return result


def make_pricer(session_factory: SessionFactory, card: RateCard, text: str, *, source: str,
                as_of: datetime) -> Pricer:
    """Register the card version (idempotent, own transaction) and return a Pricer."""
    with session_factory() as session:  # type: ignore[attr-defined]
        card_id = store_rate_cards.ensure_rate_card(session, version=card.version, currency=card.currency,
                                                 text=text, source=source)
        session.commit()
    return Pricer(card, card_id, as_of=as_of)


def floor_second(dt: datetime) -> datetime:
    return dt.replace(microsecond=0)


def read_stream(stream: str) -> str:
    """The cursor beside a watermark: the end of the newest window that stored data."""
    return f"{stream}:read"


def poll_window(session_factory: SessionFactory, *, cluster: str, now: datetime,
                overlap_s: float, lookback_s: float, stream: str = POLL_STREAM,
                max_ahead_s: float | None = None) -> Window:
    """The next poll's window: [watermark - overlap, now), or [now - lookback, now) at first.

    sacct selects jobs eligible before -E that ended after -S or are still pending or
    running (sacct(1), "Without --state"; see RECIPE §6), so re-reading an overlap before
    the watermark catches records slurmdbd wrote late without missing running jobs.

    ``max_ahead_s`` bounds how far one window reaches past what earlier polls read: after
    an outage the backlog is read in windows of at most that much new time (each its own
    transaction and sacct call, within the sacct timeout) instead of in one window as long
    as the outage; the window then ends before ``now`` and the caller polls again.

    A partial window leaves the watermark where it was (a quarantined record is never
    passed) but moves the read cursor (``read_stream``): the next window starts at the
    watermark again, so the quarantined record is read again, and still ends at most
    ``max_ahead_s`` past the cursor, so new jobs keep being collected. While the watermark
    is held, windows grow by the time since (README, "Outcomes"), until the record is
    stored or an operator accepts it (``quarantine --accept``).
    """
    until = floor_second(now.astimezone(UTC))
    with session_factory() as session:  # type: ignore[attr-defined]
        mark = store_runs.get_watermark(session, cluster, stream)
        read = store_runs.get_watermark(session, cluster, read_stream(stream))
    if mark is None:
        since = until - timedelta(seconds=lookback_s)
    else:
        since = floor_second(mark - timedelta(seconds=overlap_s))
        if max_ahead_s is not None:
            ahead = max(mark, read) if read is not None else mark
            until = min(until, floor_second(ahead) + timedelta(seconds=max(max_ahead_s, 1)))
    if since >= until:
        since = until - timedelta(seconds=max(overlap_s, 1))
    return Window(since, until)


def backfill_windows(start: datetime, end: datetime, chunk_s: float) -> list[Window]:
    """Cut [start, end) into windows of at most chunk_s seconds."""
    out: list[Window] = []
    cursor = start
    step = timedelta(seconds=chunk_s)
    while cursor < end:
        nxt = min(cursor + step, end)
        out.append(Window(cursor, nxt))
        cursor = nxt
    return out
