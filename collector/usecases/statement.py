"""Statements: one account's charges posted in a period, for finance, as CSV, JSON or a
PDF invoice.

All three read the same lines (``reports.billed_lines``: the account's lines posted in
the period, in statement order), so their totals are the report's amount for the
account. An unknown account or an account without charges in the period is refused
(``FinanceInputError``) before any file is made. Each statement written is recorded in
the audit trail as an ``export`` entry (what, where, its SHA-256).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from billing.audit import EXPORT
from billing.invoice import InvoiceSite, build_invoices
from billing.records import BilledLine
from collector import render
from collector.finance.invoice_pdf import render_invoice_pdf
from collector.runtime import Runtime
from collector.settings import Settings, SettingsError
from collector.store import jobs as store_jobs
from collector.store import periods as store_periods
from collector.store import reports as store_reports
from collector.usecases.documents import (
    FinanceInputError,
    Written,
    add_total,
    reference_card,
    totals_text,
)
from collector.usecases.output import STDOUT, open_output

log = logging.getLogger("hpc_billing")

FORMATS = ("csv", "json", "pdf")


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
    provisional: bool = False


def invoice_site(settings: Settings) -> InvoiceSite:
    """What the site says about itself on an invoice; the site's name is required."""
    if not settings.site_name:
        raise SettingsError(["HPC_BILLING_SITE_NAME / --site-name: a PDF invoice needs the "
                             "site's name (invoice numbers are derived from it)"])
    return InvoiceSite(name=settings.site_name, address=settings.site_address or (),
                       number_prefix=settings.invoice_prefix, tax_rate=settings.tax_rate,
                       tax_label=settings.tax_label, footer=settings.invoice_footer)


def _selected(session: Any, *, period: str, account: str,
              cluster: str | None) -> Iterator[BilledLine]:
    lines = store_reports.billed_lines(session, period=period, account=account,
                                       cluster=cluster)
    first = next(lines, None)
    if first is None:
        where = f" of cluster {cluster!r}" if cluster else ""
        if not store_jobs.account_known(session, account, cluster):
            raise FinanceInputError(f"unknown account {account!r}: no stored job{where} "
                                    f"belongs to it")
        raise FinanceInputError(f"account {account!r} has no charges posted in {period}"
                                f"{where}")

    def again() -> Iterator[BilledLine]:
        yield first
        yield from lines
    return again()


def _pdf_target(output: str, currency: str, several: bool) -> str:
    if not several:
        return output
    path = Path(output)
    return str(path.with_name(f"{path.stem}-{currency}{path.suffix or '.pdf'}"))


def write_statement(runtime: Runtime, period: str, account: str, *, fmt: str = "csv",
                    output: str = STDOUT, now: datetime | None = None) -> StatementResult:
    """Write ``account``'s statement for ``period`` to ``output`` (a path or ``-``).

    ``pdf``: one invoice per currency (the site, tax and logo from the settings; issued
    today in the zone of the newest card that priced the lines, whose scale rounds the
    tax; provisional while the period is open). With several currencies each invoice goes
    to ``<output stem>-<currency>.pdf``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"statement format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not account:
        raise FinanceInputError("an account is needed (--account)")
    store_periods.check_period(period)
    settings, trail = runtime.settings, runtime.audit
    site = invoice_site(settings) if fmt == "pdf" else None
    logo = Path(settings.site_logo).read_bytes() if fmt == "pdf" and settings.site_logo \
        else None
    cluster = settings.cluster
    totals: dict[str, Decimal] = {}
    details: dict[str, Any] = {"document": "statement", "format": fmt, "account": account,
                               "period": period}
    if cluster:
        details["cluster"] = cluster
    with runtime.database.sessions() as session:
        lines = _selected(session, period=period, account=account, cluster=cluster)
        written: tuple[Written, ...]
        if fmt != "pdf":
            count = 0
            with open_output(output) as out:
                writer = (render.StatementWriter(out, period) if fmt == "csv"
                          else render.StatementJsonWriter(out, account, period))
                for billed in lines:
                    writer.line(billed)
                    add_total(totals, billed.line.currency, billed.line.amount)
                    count += 1
                writer.totals(totals)
                written = (Written(output, out.bytes, out.sha256),)
                details.update(lines=count, totals=totals_text(totals),
                               documents=[w.as_details() for w in written])
                entry = trail.record(session, EXPORT, f"statement {account} {period}", details)
                session.commit()
            log.info("statement %s %s: %d lines, total %s", account, period, count,
                     ", ".join(f"{t} {c}" for c, t in totals_text(totals).items()))
            return StatementResult(account, period, fmt, count, totals, written,
                                   audit_seq=entry.seq if entry else None)

        assert site is not None
        selected = list(lines)
        card = reference_card(session, {b.line.rate_card for b in selected},
                              f"the invoice of {account} for {period}")
        closed = period in store_periods.closed_periods(session)
        issued = (now or datetime.now(UTC)).astimezone(card.tz).date()
        invoices = build_invoices(selected, account=account, period=period, site=site,
                                  issued=issued, period_closed=closed, scale=card.scale,
                                  tz=card.tz)
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
                out.write(render_invoice_pdf(inv, logo_png=logo))
                written_list.append(Written(target, out.bytes, out.sha256))
            written = tuple(written_list)

            def money(currency: str, value: Decimal | None) -> str | None:
                return None if value is None else totals_text({currency: value})[currency]

            details.update(
                lines=len(selected), totals=totals_text(totals), provisional=not closed,
                invoices=[{"number": inv.number, "currency": inv.currency,
                           "subtotal": money(inv.currency, inv.subtotal),
                           "tax": money(inv.currency, inv.tax),
                           "total": money(inv.currency, inv.total),
                           "content_digest": inv.content_digest}
                          for inv in invoices],
                documents=[w.as_details() for w in written])
            entry = trail.record(session, EXPORT, f"statement {account} {period}", details)
            session.commit()
        log.info("invoice%s %s for %s %s: %d lines, total %s%s",
                 "s" if several else "", ", ".join(inv.number for inv in invoices), account,
                 period, len(selected), ", ".join(f"{money(inv.currency, inv.total)} "
                                                f"{inv.currency}" for inv in invoices),
                 " (provisional: the period is open)" if not closed else "")
        return StatementResult(account, period, fmt, len(selected), totals, written,
                               invoices=tuple(inv.number for inv in invoices),
                               audit_seq=entry.seq if entry else None,
                               provisional=not closed)
