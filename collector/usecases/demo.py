"""The demo: import the bundled real sacct export, price it, and show what was stored."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from billing.price import price_job_outcome
from billing.records import JobRecord
from billing.rollup import period_of, rollup_steps
from collector.run_result import RunResult
from collector.runtime import Runtime
from collector.slurm.filesource import FileSource
from collector.store import jobs as store_jobs
from collector.store import reports as store_reports
from collector.store import runs as store_runs
from collector.store.reports import ReportRow
from collector.store.runs import RunInfo
from collector.usecases.collect import collect_once

SAMPLE_NAME = "lab-sample.psv"
DEMO_RATES_NAME = "demo-rates.toml"
REPORT_GROUPS = ("account", "user")


def sample_path() -> Path:
    """The real sacct export bundled with the package (a Slurm 22.05 lab cluster)."""
    return Path(str(resources.files("collector") / "data" / SAMPLE_NAME))


def demo_rates_path() -> Path:
    """The demo rate card bundled with the package (rates inflated ~1000x)."""
    return Path(str(resources.files("collector") / "data" / DEMO_RATES_NAME))


@dataclass(frozen=True, slots=True)
class SampleCounts:
    """What the sample holds: job records, and distinct jobs (a requeued job has one
    record per run)."""

    records: int
    jobs: int


def sample_counts() -> SampleCounts:
    """Count the sample's job records and jobs by reading it (never a number typed in)."""
    source = FileSource(str(sample_path()), tz=UTC, cluster=None)
    quiet = logging.getLogger(FileSource.__module__)
    level = quiet.level
    quiet.setLevel(logging.WARNING)      # the import itself reports the ignored columns
    try:
        records = [item for item in rollup_steps(source.fetch(None), source=source.name)
                   if isinstance(item, JobRecord)]
    finally:
        quiet.setLevel(level)
    return SampleCounts(records=len(records),
                        jobs=len({(r.cluster, r.job_id_raw) for r in records}))


@dataclass(frozen=True, slots=True)
class DemoResult:
    run: RunResult
    jobs: list[JobRecord]
    reports: list[tuple[str, list[ReportRow]]]     # (period, rows by account and user)
    runs: list[RunInfo]
    # Stored jobs the card gives no charge line, by why ("not started", "running" ...).
    uncharged: tuple[tuple[str, int], ...] = ()


def demo_runtime(runtime: Runtime) -> Runtime:
    """The runtime the demo imports with: the file source on the sample, the configured
    card or the demo card; both checked (SettingsError) before anything is opened."""
    demo = runtime.with_settings(source="file", input=str(sample_path()),
                                 rates=runtime.settings.rates or str(demo_rates_path()))
    demo.settings.check_for_collect()
    demo.require_card("the demo")
    # A demo records in the audit trail when a key is configured, and says nothing when
    # none is: a first try needs no key, and its warning would only be noise.
    demo.audit.quiet_when_off()
    return demo


def run_demo(runtime: Runtime) -> DemoResult:
    """Import the sample into ``runtime``'s database (``demo_runtime``), then read back
    the jobs, each period's charges by account and user, and the newest runs. Raises
    CollectError when the import stored nothing."""
    run = collect_once(runtime)
    if run.outcome != "ok":
        return DemoResult(run=run, jobs=[], reports=[], runs=[])
    card = runtime.require_card("the demo")
    with runtime.database.sessions() as session:
        jobs = list(store_jobs.list_jobs(session))
        periods = sorted({period_of(j.start or j.submit, card.tz) for j in jobs})
        reports = [(period, store_reports.charge_report(session, period=period,
                                                        group_by=list(REPORT_GROUPS)))
                   for period in periods]
        runs = store_runs.list_runs(session, limit=5)
    why = Counter(outcome for outcome, lines in
                  (price_job_outcome(card.card, job, as_of=datetime.now(UTC)) for job in jobs)
                  if not lines)
    return DemoResult(run=run, jobs=jobs, reports=reports, runs=runs,
                      uncharged=tuple(sorted(why.items())))
