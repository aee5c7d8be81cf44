"""The demo: import the bundled real sacct export, price it, and show what was stored."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from billing.records import JobRecord
from billing.rollup import period_of
from collector.run_result import RunResult
from collector.runtime import Runtime
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
class DemoResult:
    run: RunResult
    jobs: list[JobRecord]
    reports: list[tuple[str, list[ReportRow]]]     # (period, rows by account and user)
    runs: list[RunInfo]


def demo_runtime(runtime: Runtime) -> Runtime:
    """The runtime the demo imports with: the file source on the sample, the configured
    card or the demo card; both checked (SettingsError) before anything is opened."""
    demo = runtime.with_settings(source="file", input=str(sample_path()),
                                 rates=runtime.settings.rates or str(demo_rates_path()))
    demo.settings.check_for_collect()
    demo.require_card("the demo")
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
    return DemoResult(run=run, jobs=jobs, reports=reports, runs=runs)
