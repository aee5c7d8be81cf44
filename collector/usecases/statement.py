"""An account's statement for a posted period: CSV or JSON lines, or the PDF invoice.

All three read the same lines (``finance_reads.billed_lines``: the account's lines
posted in the period, in statement order), so their totals are the report's amount for
the account. An unknown account or an account without charges in the period is refused
(``FinanceInputError``) before any file is made. Each statement written is recorded in
the audit trail as an ``export`` entry (what, where, its SHA-256).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from billing.audit import EXPORT
from billing.invoice import InvoiceSite, build_invoices
from billing.records import BilledLine
from collector.finance.invoice_pdf import render_invoice_pdf
from collector.render import iso, money
from collector.store import charges as store_charges
from collector.store import finance_reads
from collector.usecases.audit import AuditTrail
from collector.usecases.documents import (
    FinanceInputError,
    Written,
    add_total,
    reference_card,
    totals_text,
)
from collector.usecases.output import STDOUT, open_output

Sessions = Callable[[], Any]
FORMATS = ("csv", "json", "pdf")
STATEMENT_COLUMNS = ("job_id", "job_id_raw", "submit", "user", "partition", "start", "end",
                     "usage_period", "resource", "quantity", "unit", "rate", "amount",
                     "currency", "kind")


@dataclass(frozen=True, slots=True)
class StatementResult:
    """What was written: lines, totals per currency, the documents (a PDF per
    currency), the invoice numbers (PDF) and the audit entry's seq (None: trail off)."""

    account: str
    period: str
    format: str
    lines: int
    totals: dict[str, Decimal]
    written: tuple[Written, ...]
    invoices: tuple[str, ...] = ()
    audit_seq: int | None = None
    provisional: bool = field(default=False)


def statement_row(billed: BilledLine) -> dict[str, Any]:
    """One statement line (``STATEMENT_COLUMNS``), JSON-ready: numbers as exact text."""
    line = billed.line
    return {"job_id": billed.job_id, "job_id_raw": line.job_id_raw, "submit": iso(line.submit),
            "user": billed.user, "partition": billed.partition, "start": iso(billed.start),
            "end": iso(billed.end), "usage_period": line.usage_period,
            "resource": line.resource, "quantity": str(line.quantity), "unit": line.unit,
            "rate": format(line.rate.normalize(), "f"), "amount": money(line.amount),
            "currency": line.currency, "kind": line.kind}


def _selected(session: Any, *, period: str, account: str,
              cluster: str | None) -> Iterator[BilledLine]:
    lines = finance_reads.billed_lines(session, period=period, account=account,
                                       cluster=cluster)
    first = next(lines, None)
    if first is None:
        where = f" of cluster {cluster!r}" if cluster else ""
        if not finance_reads.account_known(session, account, cluster):
            raise FinanceInputError(f"unknown account {account!r}: no stored job{where} "
                                    f"belongs to it")
        raise FinanceInputError(f"account {account!r} has no charges posted in {period}"
                                f"{where}")
    return _prepend(first, lines)


def _prepend(first: BilledLine, rest: Iterator[BilledLine]) -> Iterator[BilledLine]:
    yield first
    yield from rest


def _write_rows(out: Any, fmt: str, account: str, period: str, lines: Iterator[BilledLine],
                totals: dict[str, Decimal]) -> int:
    count = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(STATEMENT_COLUMNS)
        for billed in lines:
            row = statement_row(billed)
            writer.writerow(["" if row[c] is None else str(row[c]) for c in STATEMENT_COLUMNS])
            add_total(totals, billed.line.currency, billed.line.amount)
            count += 1
        for currency, total in totals_text(totals).items():
            writer.writerow(["TOTAL", "", "", "", "", "", "", period, "", "", "", "", total,
                             currency, ""])
        return count
    out.write(f'{{"account": {json.dumps(account)}, "period": {json.dumps(period)}, '
              f'"lines": [')
    for billed in lines:
        out.write(",\n" if count else "\n")
        out.write(json.dumps(statement_row(billed)))
        add_total(totals, billed.line.currency, billed.line.amount)
        count += 1
    out.write(f'\n], "totals": {json.dumps(totals_text(totals))}}}\n')
    return count


def _pdf_target(output: str, currency: str, several: bool) -> str:
    if not several:
        return output
    path = Path(output)
    return str(path.with_name(f"{path.stem}-{currency}{path.suffix or '.pdf'}"))


def write_statement(sessions: Sessions, trail: AuditTrail, *, period: str, account: str,
                    fmt: str, output: str, cluster: str | None = None,
                    site: InvoiceSite | None = None, logo_png: bytes | None = None,
                    now: datetime | None = None) -> StatementResult:
    """Write ``account``'s statement for ``period`` to ``output`` (a path or ``-``).

    ``pdf``: one invoice per currency (``site`` and ``logo_png`` from configuration; the
    issue date is today in the zone of the newest card that priced the lines, whose scale
    rounds the tax; provisional while the period is open). With several currencies each
    invoice goes to ``<output stem>-<currency>.pdf``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"statement format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not account:
        raise FinanceInputError("an account is needed (--account)")
    store_charges.check_period(period)
    totals: dict[str, Decimal] = {}
    with sessions() as session:
        lines = _selected(session, period=period, account=account, cluster=cluster)
        details: dict[str, Any] = {"document": "statement", "format": fmt,
                                   "account": account, "period": period}
        if cluster:
            details["cluster"] = cluster
        written: tuple[Written, ...]
        if fmt != "pdf":
            with open_output(output) as out:
                count = _write_rows(out, fmt, account, period, lines, totals)
                written = (Written(output, out.bytes, out.sha256),)
                details.update(lines=count, totals=totals_text(totals),
                               documents=[w.as_details() for w in written])
                entry = trail.record(session, EXPORT, f"statement {account} {period}", details)
                session.commit()
            return StatementResult(account, period, fmt, count, totals, written,
                                   audit_seq=entry.seq if entry else None)

        billed = list(lines)
        card = reference_card(session, {b.line.rate_card for b in billed},
                              f"the invoice of {account} for {period}")
        closed = period in store_charges.closed_periods(session)
        issued = (now or datetime.now(UTC)).astimezone(card.tz).date()
        invoices = build_invoices(billed, account=account, period=period,
                                  site=site or InvoiceSite(name="HPC"), issued=issued,
                                  period_closed=closed, scale=card.scale, tz=card.tz)
        several = len(invoices) > 1
        if several and output == STDOUT:
            raise FinanceInputError(
                f"account {account!r} has charges in {len(invoices)} currencies in {period}: "
                f"one invoice each; give --output FILE (written as FILE-<currency>.pdf)")
        for inv in invoices:
            add_total(totals, inv.currency, inv.subtotal)
        with ExitStack() as stack:
            written_list = []
            for inv in invoices:
                target = _pdf_target(output, inv.currency, several)
                out = stack.enter_context(open_output(target, binary=True))
                out.write(render_invoice_pdf(inv, logo_png=logo_png))
                written_list.append(Written(target, out.bytes, out.sha256))
            written = tuple(written_list)
            details.update(
                lines=len(billed), totals=totals_text(totals), provisional=not closed,
                invoices=[{"number": inv.number, "currency": inv.currency,
                           "subtotal": totals_text({inv.currency: inv.subtotal})[inv.currency],
                           "tax": None if inv.tax is None else
                           totals_text({inv.currency: inv.tax})[inv.currency],
                           "total": totals_text({inv.currency: inv.total})[inv.currency],
                           "content_digest": inv.content_digest}
                          for inv in invoices],
                documents=[w.as_details() for w in written])
            entry = trail.record(session, EXPORT, f"statement {account} {period}", details)
            session.commit()
        return StatementResult(account, period, fmt, len(billed), totals, written,
                               invoices=tuple(inv.number for inv in invoices),
                               audit_seq=entry.seq if entry else None,
                               provisional=not closed)
