"""Polling: which window the next poll reads, backfill windows, and one poll (``poll_once``).

``poll_once`` is what ``collect --once`` and the daemon's scheduled job both run: the
configured source, its window (``[watermark - overlap, now)``, or the whole file), a
pricer for the loaded card, then ``pipeline.collect``. Why the windows look as they do:
docs/design/collection.md.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from billing.records import Window
from collector import pipeline
from collector.audit_trail import AuditTrail
from collector.cards import LoadedCard
from collector.pricer import make_pricer
from collector.run_result import RunResult
from collector.settings import Settings
from collector.sources import make_source
from collector.store import runs as store_runs
from collector.store.db import Sessions

POLL_STREAM = store_runs.SACCT_STREAM


def floor_second(dt: datetime) -> datetime:
    return dt.replace(microsecond=0)


def poll_window(session_factory: Sessions, *, cluster: str, now: datetime,
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
    with session_factory() as session:
        mark = store_runs.get_watermark(session, cluster, stream)
        read = store_runs.get_watermark(session, cluster, store_runs.read_stream(stream))
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


def poll_once(sessions: Sessions, settings: Settings, card: LoadedCard | None, *,
              now: datetime | None = None, trail: AuditTrail | None = None) -> RunResult:
    """One poll with the configured source: a window (or the whole file), priced.

    Raises CollectError (carrying the failed RunResult) when nothing of the window was
    stored; no watermark moved. A partial window (some records quarantined, the rest
    stored) returns its RunResult with outcome 'partial' and moves no watermark.
    """
    now = now or datetime.now(UTC)
    source = make_source(settings)
    window: Window | None
    if source.windowed:
        if settings.cluster is None:
            raise ValueError("a windowed source needs a cluster (HPC_BILLING_CLUSTER)")
        window = poll_window(sessions, cluster=settings.cluster, now=now,
                             overlap_s=settings.overlap_s, lookback_s=settings.lookback_s,
                             max_ahead_s=settings.backfill_chunk_s)
        kind, stream = "poll", POLL_STREAM
    else:
        window, kind, stream = None, "file", None
    pricer = None
    if card is not None:
        pricer = make_pricer(sessions, card.card, card.text, source=card.path,
                             as_of=now.replace(microsecond=0), trail=trail)
    return pipeline.collect(sessions, source, cluster=settings.cluster, window=window,
                            kind=kind, stream=stream, batch_rows=settings.batch_rows,
                            pricer=pricer, skip_unchanged=settings.skip_unchanged)


def behind(result: RunResult, now: datetime) -> bool:
    """True when an ok poll stored a window that ends before ``now``: a backlog (after an
    outage) is being caught up in bounded windows, and the next one should follow at once.
    Never after a partial or failed poll: its watermark did not move, and the next poll
    repeats the window at the usual interval."""
    return (result.outcome == "ok" and result.window is not None
            and result.window.until < floor_second(now.astimezone(UTC)))
