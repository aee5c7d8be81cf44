"""Statements: one account's charges posted in a period, for finance (CSV today).

A statement is the account's lines (one per job and resource) and a TOTAL per currency
equal to the report's amount for the account. Further formats (JSON, PDF invoices:
docs/finance.md) are renderings of the same lines.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import TextIO

from collector import render
from collector.runtime import Runtime
from collector.store import reports as store_reports

log = logging.getLogger("hpc_billing")


def write_statement(runtime: Runtime, period: str, account: str, out: TextIO) -> dict[str, Decimal]:
    """Write the statement as CSV to ``out``; returns its totals by currency."""
    totals: dict[str, Decimal] = {}
    lines = 0
    with runtime.database.sessions() as session:
        rows = store_reports.statement_lines(session, period=period, account=account,
                                             cluster=runtime.settings.cluster)
        writer = render.StatementWriter(out, period)
        for line in rows:
            writer.line(line)
            totals[line.currency] = totals.get(line.currency, Decimal(0)) + line.amount
            lines += 1
        writer.totals(totals)
    if not totals:
        log.warning("no charges posted for account %s in %s", account, period)
    log.info("statement %s %s: %d lines, total %s", account, period, lines,
             ", ".join(f"{t} {c}" for c, t in sorted(totals.items())) or "0")
    return totals
