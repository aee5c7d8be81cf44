"""Exports of a posted period for finance: the general-ledger journal (CSV) and the
FinOps FOCUS 1.x rows (CSV).

Both read every line posted in the period (``reports.period_billed_lines``), so
the journal's debits and credits and FOCUS's BilledCost add up to the report's total. A
period without charges is refused before any file is made; each export is recorded in
the audit trail as an ``export`` entry (what, where, its SHA-256).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import Any

from billing.audit import EXPORT
from billing.focus import FOCUS_COLUMNS, FOCUS_VERSION, FocusSite, focus_rows
from billing.ledger import JOURNAL_COLUMNS, build_journal, journal_rows
from billing.ledger import GlCodeError as GlCodeError  # re-exported: the CLI maps it to exit 2
from billing.rates import GlCodes, RateCardError, load_gl_mapping
from billing.records import BilledLine
from collector.explaining import stored_cards
from collector.runtime import Runtime
from collector.settings import Settings, SettingsError
from collector.store import periods as store_periods
from collector.store import reports as store_reports
from collector.usecases.documents import (
    FinanceInputError,
    Written,
    add_total,
    reference_card,
    totals_text,
)
from collector.usecases.output import open_output

FOCUS_CHUNK = 5_000


class NoGlCodesError(ValueError):
    """No GL codes at all: neither a mapping file nor a ``[gl]`` table in a card."""


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What an export wrote: lines read, totals per currency, the file, the audit seq."""

    kind: str
    period: str
    lines: int
    totals: dict[str, Decimal]
    written: Written
    rows: int
    audit_seq: int | None = None
    codes_from: str | None = None


def _period_lines(session: Any, period: str, cluster: str | None) -> Iterator[BilledLine]:
    lines = store_reports.period_billed_lines(session, period=period, cluster=cluster)
    first = next(lines, None)
    if first is None:
        where = f" for cluster {cluster!r}" if cluster else ""
        raise FinanceInputError(f"no charges posted in {period}{where}: nothing to export")

    def again() -> Iterator[BilledLine]:
        yield first
        yield from lines
    return again()


def gl_codes(runtime: Runtime, mapping_file: str | None) -> tuple[GlCodes | None, str | None]:
    """The GL codes to use and where they come from: ``mapping_file`` (or
    HPC_BILLING_GL_MAPPING), else the configured rate card's ``[gl]`` table, else None
    (``export_gl`` then takes the newest stored card's that priced the period)."""
    path = mapping_file or runtime.settings.gl_mapping
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError([f"--gl-mapping / HPC_BILLING_GL_MAPPING: cannot read {path}: "
                                 f"{exc.strerror or exc}"]) from None
        try:
            return load_gl_mapping(text), f"mapping file {path}"
        except RateCardError as exc:
            raise SettingsError([f"{path}: {error}" for error in exc.errors]) from None
    card = runtime.card
    if card is not None and card.card.gl is not None:
        return card.card.gl, f"rate card {card.path}"
    return None, None


def export_gl(runtime: Runtime, period: str, *, output: str, mapping_file: str | None = None
              ) -> ExportResult:
    """Write the balanced GL journal of ``period`` as CSV (``JOURNAL_COLUMNS``).

    Codes from ``gl_codes``, else the ``[gl]`` table of the newest stored card that
    priced the period's lines. GlCodeError names every account or resource without a
    code; NoGlCodesError: no codes at all.
    """
    codes, codes_from = gl_codes(runtime, mapping_file)
    trail, cluster = runtime.audit, runtime.settings.cluster
    prefix = runtime.settings.invoice_prefix
    store_periods.check_period(period)
    with runtime.database.sessions() as session:
        lines = _period_lines(session, period, cluster)
        if codes is None:
            versions = store_reports.period_card_versions(session, period, cluster)
            with_gl = [c for c in stored_cards(session, versions) if c.gl is not None]
            if not with_gl:
                raise NoGlCodesError(
                    f"no GL codes for {period}: give a mapping file (--gl-mapping FILE or "
                    f"HPC_BILLING_GL_MAPPING) or add a [gl] table to the rate card")
            codes = with_gl[-1].gl
            codes_from = f"rate card {with_gl[-1].version[:12]}"
        assert codes is not None
        counted = [0]

        def counting(items: Iterator[BilledLine]) -> Iterator[BilledLine]:
            for item in items:
                counted[0] += 1
                yield item
        # Streamed: the journal holds sums per account and resource, never the lines.
        journal = build_journal(counting(lines), period, codes, prefix=prefix)
        with open_output(output) as out:
            writer = csv.DictWriter(out, fieldnames=JOURNAL_COLUMNS, lineterminator="\n")
            writer.writeheader()
            rows = journal_rows(journal)
            writer.writerows(rows)
            written = Written(output, out.bytes, out.sha256)
            details: dict[str, Any] = {
                "document": "gl", "period": period, "lines": counted[0],
                "totals": totals_text(journal.totals), "journal_lines": len(rows),
                "codes_from": codes_from or "given", "documents": [written.as_details()]}
            if cluster:
                details["cluster"] = cluster
            entry = trail.record(session, EXPORT, f"gl {period}", details)
            session.commit()
    return ExportResult("gl", period, counted[0], dict(journal.totals), written, len(rows),
                        audit_seq=entry.seq if entry else None, codes_from=codes_from)


def focus_site(settings: Settings) -> FocusSite:
    """Who issues the charges, for FOCUS's provider columns; the site's name is required."""
    if not settings.site_name:
        raise SettingsError(["HPC_BILLING_SITE_NAME / --site-name: the FOCUS export needs "
                             "the site's name (ProviderName, InvoiceIssuerName)"])
    return FocusSite(provider=settings.site_name,
                     billing_account_id=settings.focus_billing_account_id or settings.site_name,
                     billing_account_name=(settings.focus_billing_account_name
                                           or settings.site_name),
                     service_name=settings.focus_service_name)


def export_focus(runtime: Runtime, period: str, *, output: str) -> ExportResult:
    """Write the FOCUS 1.x rows of ``period`` as CSV (``FOCUS_COLUMNS``), streamed in
    chunks; periods begin in the zone of the newest card that priced the lines."""
    site = focus_site(runtime.settings)
    trail, cluster = runtime.audit, runtime.settings.cluster
    store_periods.check_period(period)
    totals: dict[str, Decimal] = {}
    count = 0
    with runtime.database.sessions() as session:
        lines = _period_lines(session, period, cluster)
        versions = store_reports.period_card_versions(session, period, cluster)
        tz = reference_card(session, versions, f"the FOCUS export of {period}").tz
        with open_output(output) as out:
            writer = csv.DictWriter(out, fieldnames=FOCUS_COLUMNS, lineterminator="\n")
            writer.writeheader()
            chunk = list(islice(lines, FOCUS_CHUNK))
            while chunk:
                writer.writerows(focus_rows(chunk, period, tz, site))
                for billed in chunk:
                    add_total(totals, billed.line.currency, billed.line.amount)
                count += len(chunk)
                chunk = list(islice(lines, FOCUS_CHUNK))
            written = Written(output, out.bytes, out.sha256)
            details: dict[str, Any] = {
                "document": "focus", "focus_version": FOCUS_VERSION, "period": period,
                "lines": count, "totals": totals_text(totals),
                "documents": [written.as_details()]}
            if cluster:
                details["cluster"] = cluster
            entry = trail.record(session, EXPORT, f"focus {period}", details)
            session.commit()
    return ExportResult("focus", period, count, totals, written, count,
                        audit_seq=entry.seq if entry else None)
