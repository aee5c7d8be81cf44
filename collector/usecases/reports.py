"""Reports: a period's charges grouped (``report``)."""

from __future__ import annotations

from collector.bulkgc import bulk_gc
from collector.runtime import Runtime
from collector.settings import SettingsError
from collector.store import reports as store_reports
from collector.store.reports import GROUP_BY, ReportRow

REPORT_KEYS = tuple(GROUP_BY)


def parse_group_by(text: str) -> list[str]:
    """``account,user`` -> the names; an unknown or missing name is a configuration error."""
    group_by = [g.strip() for g in text.split(",") if g.strip()]
    bad = [g for g in group_by if g not in REPORT_KEYS]
    if bad or not group_by:
        raise SettingsError([f"--group-by: unknown key(s) {', '.join(bad) or '(none)'}; "
                             f"use {', '.join(REPORT_KEYS)}"])
    return group_by


def report(runtime: Runtime, period: str, group_by: list[str]) -> list[ReportRow]:
    """Charges POSTED in ``period``, per group and currency (the configured cluster only,
    when one is set)."""
    with bulk_gc(), runtime.database.sessions() as session:
        return store_reports.charge_report(session, period=period, group_by=group_by,
                                           cluster=runtime.settings.cluster)
