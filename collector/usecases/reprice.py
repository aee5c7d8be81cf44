"""Reprice: price the stored jobs of a range again with the current card, in one transaction.

Closed periods are never rewritten: their changes become corrections in the next open
period (``pricer.Pricer``). The run is logged with kind ``reprice``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from billing.audit import REPRICE
from billing.records import JobRecord, Window
from collector.pricer import make_pricer
from collector.render import iso
from collector.runtime import Runtime
from collector.settings import SettingsError
from collector.store import jobs as store_jobs
from collector.store import rollups as store_rollups
from collector.store import runs as store_runs
from collector.store.job_writer import UpsertCounts

log = logging.getLogger("hpc_billing")

CHUNK_JOBS = 5000


@dataclass(frozen=True, slots=True)
class RepriceResult:
    run_id: int
    jobs_priced: int
    card_version: str
    lines_deleted: int
    lines_written: int


def reprice(runtime: Runtime, since: datetime, until: datetime | None) -> RepriceResult:
    settings = runtime.settings
    card = runtime.require_card("reprice")
    until = until or datetime.now(UTC).replace(microsecond=0)
    if until <= since:
        raise SettingsError(["--until must be after --since"])
    window = Window(since, until)
    database = runtime.database
    trail = runtime.audit
    pricer = make_pricer(database.sessions, card.card, card.text, source=card.path,
                         as_of=datetime.now(UTC).replace(microsecond=0), trail=trail)
    with database.sessions() as session:
        run_id = store_runs.start_run(session, cluster=settings.cluster, source="reprice",
                                      kind="reprice", window=window)
        session.commit()
    read = 0
    try:
        with database.sessions() as session:
            chunk: list[JobRecord] = []
            for job in store_jobs.list_jobs(session, cluster=settings.cluster, since=since,
                                            until=until):
                chunk.append(job)
                read += 1
                if len(chunk) >= CHUNK_JOBS:
                    pricer.price(session, chunk, run_id=run_id)
                    chunk = []
            if chunk:
                pricer.price(session, chunk, run_id=run_id)
            store_rollups.refresh_rollups(session)
            store_runs.finish_run(session, run_id, outcome="ok", records_read=read,
                                  counts=UpsertCounts(0, 0, 0), quarantined=0, lines_read=0,
                                  jobs_priced=pricer.jobs_priced,
                                  charge_lines=pricer.lines_written,
                                  rate_card_id=pricer.rate_card_id)
            # The trail records the reprice, and the corrections it posted, with its lines.
            corrections = len(pricer.new_corrections)
            pricer.record(session, run_id=run_id, kind="reprice")
            trail.record(session, REPRICE, f"run {run_id}", {
                "run_id": run_id, "since": iso(since), "until": iso(until),
                "cluster": settings.cluster, "rate_card": card.version,
                "jobs": pricer.jobs_priced, "lines_deleted": pricer.lines_deleted,
                "lines_written": pricer.lines_written, "new_corrections": corrections})
            session.commit()
    except Exception as exc:
        with database.sessions() as session:
            store_runs.finish_run(session, run_id, outcome="failed", records_read=read,
                                  counts=UpsertCounts(0, 0, 0), quarantined=0, lines_read=0,
                                  error=f"{type(exc).__name__}: {exc}")
            session.commit()
        raise
    log.info("reprice run %d: %d jobs priced with rate card %s, %d lines replaced by %d",
             run_id, pricer.jobs_priced, pricer.card.version[:12], pricer.lines_deleted,
             pricer.lines_written)
    return RepriceResult(run_id=run_id, jobs_priced=pricer.jobs_priced,
                         card_version=pricer.card.version, lines_deleted=pricer.lines_deleted,
                         lines_written=pricer.lines_written)
