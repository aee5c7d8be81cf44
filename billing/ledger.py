"""The general-ledger journal of a billing period: balanced debit and credit lines.

Design notes: docs/design/billing.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from billing.price import money_text
from billing.rates import GlCodes
from billing.records import BilledLine

JOURNAL_COLUMNS = ("journal", "line", "posting_date", "period", "gl_code", "debit", "credit",
                   "currency", "account", "resource", "description")
_RESOURCE_ORDER = {"cpu": 0, "mem": 1, "gpu": 2, "node": 4, "billing": 5, "energy": 6}


class GlCodeError(ValueError):
    """Accounts or resources of the period that have no GL code."""

    def __init__(self, accounts: list[str | None], resources: list[str]) -> None:
        self.accounts = accounts
        self.resources = resources
        parts = []
        if accounts:
            shown = ", ".join("(no account)" if a is None else a for a in accounts)
            parts.append(f"no receivable code for account(s) {shown} (set gl.receivable or "
                         f"gl.receivable_by_account)")
        if resources:
            parts.append(f"no revenue code for resource(s) {', '.join(resources)} (set "
                         f"gl.revenue or gl.revenue_by_resource)")
        super().__init__("; ".join(parts))


@dataclass(frozen=True, slots=True)
class JournalLine:
    """One line of the journal: exactly one of ``debit`` and ``credit`` is non-zero."""

    journal: str            # "HPC-2026-11-EUR": one journal per period and currency
    line_no: int            # 1, 2, ... within the journal
    posting_date: date      # the period's last day
    period: str
    gl_code: str
    debit: Decimal
    credit: Decimal
    currency: str
    account: str | None     # the Slurm account (debit side), else None
    resource: str | None    # the resource (credit side), else None
    description: str


@dataclass(frozen=True, slots=True)
class Journal:
    """``build_journal``'s result: the lines and, per currency, the period's total."""

    period: str
    lines: tuple[JournalLine, ...]
    totals: dict[str, Decimal]

    def balance(self, currency: str) -> tuple[Decimal, Decimal]:
        """(sum of debits, sum of credits) of one currency's journal."""
        debit = sum((x.debit for x in self.lines if x.currency == currency), Decimal(0))
        credit = sum((x.credit for x in self.lines if x.currency == currency), Decimal(0))
        return debit, credit


def period_last_day(period: str) -> date:
    """The last calendar day of a period 'YYYY-MM' (its posting date)."""
    year, month = int(period[:4]), int(period[5:7])
    first_next = date(year + month // 12, month % 12 + 1, 1)
    return first_next - timedelta(days=1)


def _resource_key(resource: str) -> tuple[float, str]:
    base, _, gpu_type = resource.partition(":")
    return (_RESOURCE_ORDER.get(base, 9) + (0.5 if gpu_type else 0), resource)


def build_journal(lines: Iterable[BilledLine], period: str, codes: GlCodes, *,
                  prefix: str = "HPC") -> Journal:
    """The balanced journal of the lines posted in ``period`` (see the module docstring).

    Every line must be posted in ``period`` (ValueError otherwise: the caller selects
    them). Lines come out per currency (sorted), debits first (by account, no account
    last), then credits (cpu, mem, gpu, gpu:<type>, node, billing, energy).
    """
    by_account: dict[tuple[str, str | None], Decimal] = {}
    by_resource: dict[tuple[str, str], Decimal] = {}
    totals: dict[str, Decimal] = {}
    count = 0
    for billed in lines:
        line = billed.line
        if line.posted_period != period:
            raise ValueError(f"build_journal: a line posted in {line.posted_period} given for "
                             f"the journal of {period}")
        count += 1
        key_a = (line.currency, billed.account)
        by_account[key_a] = by_account.get(key_a, Decimal(0)) + line.amount
        key_r = (line.currency, line.resource)
        by_resource[key_r] = by_resource.get(key_r, Decimal(0)) + line.amount
        totals[line.currency] = totals.get(line.currency, Decimal(0)) + line.amount
    if not count:
        raise ValueError(f"no charge lines posted in {period}: nothing to journal")

    no_receivable = sorted({a for _, a in by_account if codes.receivable_for(a) is None},
                           key=lambda a: (a is None, a or ""))
    no_revenue = sorted({r for _, r in by_resource if codes.revenue_for(r) is None},
                        key=_resource_key)
    if no_receivable or no_revenue:
        raise GlCodeError(no_receivable, no_revenue)

    posting = period_last_day(period)
    out: list[JournalLine] = []
    for currency in sorted(totals):
        journal = f"{prefix}-{period}-{currency}"
        number = 0
        accounts = sorted((a for c, a in by_account if c == currency),
                          key=lambda a: (a is None, a or ""))
        for account in accounts:
            net = by_account[(currency, account)]
            if net == 0:
                continue
            number += 1
            code = codes.receivable_for(account)
            assert code is not None
            who = "(no account)" if account is None else account
            out.append(JournalLine(
                journal=journal, line_no=number, posting_date=posting, period=period,
                gl_code=code, debit=max(net, Decimal(0)), credit=max(-net, Decimal(0)),
                currency=currency, account=account, resource=None,
                description=f"HPC charges {period}, account {who}"))
        resources = sorted((r for c, r in by_resource if c == currency), key=_resource_key)
        for resource in resources:
            net = by_resource[(currency, resource)]
            if net == 0:
                continue
            number += 1
            code = codes.revenue_for(resource)
            assert code is not None
            out.append(JournalLine(
                journal=journal, line_no=number, posting_date=posting, period=period,
                gl_code=code, debit=max(-net, Decimal(0)), credit=max(net, Decimal(0)),
                currency=currency, account=None, resource=resource,
                description=f"HPC revenue {period}, {resource}"))
    return Journal(period=period, lines=tuple(out), totals=totals)


def journal_rows(journal: Journal) -> list[dict[str, str]]:
    """The journal as CSV rows keyed by ``JOURNAL_COLUMNS`` (money as exact text with at
    least 2 decimals; the empty side of a line is "0.00")."""
    rows = []
    for x in journal.lines:
        rows.append({
            "journal": x.journal, "line": str(x.line_no),
            "posting_date": x.posting_date.isoformat(), "period": x.period,
            "gl_code": x.gl_code, "debit": money_text(x.debit), "credit": money_text(x.credit),
            "currency": x.currency, "account": x.account or "", "resource": x.resource or "",
            "description": x.description})
    return rows
