"""Exports of a posted period for finance: the general-ledger journal (CSV) and the
FinOps FOCUS 1.x rows (CSV).

Both read every line posted in the period (``finance_reads.period_billed_lines``), so
the journal's debits and credits and FOCUS's BilledCost add up to the report's total. A
period without charges is refused before any file is made; each export is recorded in
the audit trail as an ``export`` entry (what, where, its SHA-256).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from itertools import islice
from typing import Any

from billing.audit import EXPORT
from billing.focus import FOCUS_COLUMNS, FOCUS_VERSION, FocusSite, focus_rows
from billing.ledger import JOURNAL_COLUMNS, build_journal, journal_rows
from billing.rates import GlCodes
from billing.records import BilledLine
from collector.store import charges as store_charges
from collector.store import finance_reads
from collector.usecases.audit import AuditTrail
from collector.usecases.documents import (
    FinanceInputError,
    Written,
    add_total,
    reference_card,
    stored_cards,
    totals_text,
)
from collector.usecases.output import open_output

Sessions = Callable[[], Any]
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
    lines = finance_reads.period_billed_lines(session, period=period, cluster=cluster)
    first = next(lines, None)
    if first is None:
        where = f" for cluster {cluster!r}" if cluster else ""
        raise FinanceInputError(f"no charges posted in {period}{where}: nothing to export")

    def again() -> Iterator[BilledLine]:
        yield first
        yield from lines
    return again()


def export_gl(sessions: Sessions, trail: AuditTrail, *, period: str, output: str,
              codes: GlCodes | None = None, codes_from: str | None = None,
              prefix: str = "HPC", cluster: str | None = None) -> ExportResult:
    """Write the balanced GL journal of ``period`` as CSV (``JOURNAL_COLUMNS``).

    ``codes``: from a mapping file or the current rate card (``codes_from`` says which);
    None: the ``[gl]`` table of the newest stored card that priced the period's lines.
    GlCodeError names every account or resource without a code; NoGlCodesError: none.
    """
    store_charges.check_period(period)
    with sessions() as session:
        billed = list(_period_lines(session, period, cluster))
        if codes is None:
            versions = {b.line.rate_card for b in billed}
            with_gl = [c for c in stored_cards(session, versions) if c.gl is not None]
            if not with_gl:
                raise NoGlCodesError(
                    f"no GL codes for {period}: give a mapping file (--gl-mapping FILE or "
                    f"HPC_BILLING_GL_MAPPING) or add a [gl] table to the rate card")
            codes = with_gl[-1].gl
            codes_from = f"rate card {with_gl[-1].version[:12]}"
        assert codes is not None
        journal = build_journal(billed, period, codes, prefix=prefix)
        with open_output(output) as out:
            writer = csv.DictWriter(out, fieldnames=JOURNAL_COLUMNS, lineterminator="\n")
            writer.writeheader()
            rows = journal_rows(journal)
            writer.writerows(rows)
            written = Written(output, out.bytes, out.sha256)
            details: dict[str, Any] = {
                "document": "gl", "period": period, "lines": len(billed),
                "totals": totals_text(journal.totals), "journal_lines": len(rows),
                "codes_from": codes_from or "given", "documents": [written.as_details()]}
            if cluster:
                details["cluster"] = cluster
            entry = trail.record(session, EXPORT, f"gl {period}", details)
            session.commit()
    return ExportResult("gl", period, len(billed), dict(journal.totals), written, len(rows),
                        audit_seq=entry.seq if entry else None, codes_from=codes_from)


def export_focus(sessions: Sessions, trail: AuditTrail, *, period: str, output: str,
                 site: FocusSite, cluster: str | None = None) -> ExportResult:
    """Write the FOCUS 1.x rows of ``period`` as CSV (``FOCUS_COLUMNS``), streamed in
    chunks; periods begin in the zone of the newest card that priced the lines."""
    store_charges.check_period(period)
    totals: dict[str, Decimal] = {}
    count = 0
    with sessions() as session:
        lines = _period_lines(session, period, cluster)
        versions = finance_reads.period_card_versions(session, period, cluster)
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
