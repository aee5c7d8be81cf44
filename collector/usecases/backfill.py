"""Backfill: walk history in windows of HPC_BILLING_BACKFILL_CHUNK, resumably.

Each window is its own run and transaction; a failed or partial window stops the walk,
and the same command resumes from its cursor (watermark stream ``backfill:<since>``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from collector import pipeline
from collector.polling import backfill_windows
from collector.pricer import make_pricer
from collector.run_result import CollectError, RunResult
from collector.runtime import Runtime
from collector.settings import SettingsError
from collector.sources import make_source
from collector.store import runs as store_runs

log = logging.getLogger("hpc_billing")


class Progress(Protocol):
    """How a backfill shows its windows (a bar on a terminal, log lines otherwise)."""

    def start(self, total: int) -> None: ...

    def step(self, text: str) -> None: ...

    def interrupt(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BackfillResult:
    """How a backfill ended: ``ok`` (every window stored, or nothing left to do),
    ``partial`` or ``failed`` (stopped at that window, ``last`` says why)."""

    outcome: str
    windows: int = 0
    totals: dict[str, int] = field(default_factory=dict)
    last: RunResult | None = None


def backfill(runtime: Runtime, since: datetime, until: datetime | None,
             progress: Progress) -> BackfillResult:
    settings = runtime.settings
    settings.check_for_collect()
    source = make_source(settings)
    if not source.windowed:
        raise SettingsError(["backfill needs a windowed source (sacct); import files with "
                             "'hpc-billing collect --once --source file --input FILE'"])
    until = until or datetime.now(UTC).replace(microsecond=0)
    if until <= since:
        raise SettingsError([f"--until ({until:%Y-%m-%dT%H:%M:%SZ}) must be after --since"])
    if settings.cluster is None:  # pragma: no cover - check_for_collect requires it
        raise SettingsError(["HPC_BILLING_CLUSTER / --cluster: required for a backfill"])
    stream = f"backfill:{since:%Y-%m-%dT%H:%M:%SZ}"
    card = runtime.pricing_card()
    database = runtime.database
    with database.sessions() as session:
        cursor = store_runs.get_watermark(session, settings.cluster, stream)
    start = since
    if cursor is not None and cursor > start:
        log.info("resuming backfill from %s (stored cursor of %s)",
                 f"{cursor:%Y-%m-%dT%H:%M:%SZ}", stream)
        start = cursor
    windows = backfill_windows(start, until, settings.backfill_chunk_s)
    if not windows:
        log.info("backfill %s is complete up to %s", stream, f"{until:%Y-%m-%dT%H:%M:%SZ}")
        return BackfillResult(outcome="ok")
    progress.start(len(windows))
    totals = {"read": 0, "inserted": 0, "updated": 0, "unchanged": 0, "quarantined": 0}
    for window in windows:
        pricer = None
        if card is not None:
            pricer = make_pricer(database.sessions, card.card, card.text, source=card.path,
                                 as_of=datetime.now(UTC).replace(microsecond=0),
                                 trail=runtime.audit)
        try:
            result = pipeline.collect(database.sessions, source, cluster=settings.cluster,
                                      window=window, kind="backfill", stream=stream,
                                      batch_rows=settings.batch_rows, pricer=pricer,
                                      skip_unchanged=settings.skip_unchanged)
        except CollectError as exc:
            progress.interrupt()
            log.error("%s", exc.result.summary())
            log.error("backfill stopped; run the same command again to resume from %s",
                      f"{window.since:%Y-%m-%dT%H:%M:%SZ}")
            return BackfillResult(outcome="failed", windows=len(windows), totals=totals,
                                  last=exc.result)
        if result.outcome == "partial":
            progress.interrupt()
            log.warning("%s", result.summary())
            log.warning("backfill stopped at a partial window: its cursor stays at %s. "
                        "Fix the input, or accept the loss of the quarantined records "
                        "('hpc-billing quarantine --accept --run %d'), then run the same "
                        "command again", f"{window.since:%Y-%m-%dT%H:%M:%SZ}",
                        result.run_id)
            return BackfillResult(outcome="partial", windows=len(windows), totals=totals,
                                  last=result)
        totals["read"] += result.records_read
        totals["inserted"] += result.inserted
        totals["updated"] += result.updated
        totals["unchanged"] += result.unchanged
        totals["quarantined"] += result.quarantined
        progress.step(f"{window.since:%Y-%m-%d %H:%M} .. {window.until:%Y-%m-%d %H:%M}: "
                      f"{result.records_read} jobs")
        # A new source per window: a source's stats describe one fetch.
        source = make_source(settings)
    log.info("backfill done: %d windows, %s", len(windows),
             ", ".join(f"{k} {v}" for k, v in totals.items()))
    return BackfillResult(outcome="ok", windows=len(windows), totals=totals)
