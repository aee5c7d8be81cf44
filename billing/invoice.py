"""An account's invoice for a billing period, as a plain value (no layout, no PDF).

Design notes: docs/design/billing.md.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from decimal import Context, Decimal
from typing import Any

from billing.audit import period_digest
from billing.price import money_text, round_amount
from billing.records import BilledLine
from billing.rollup import period_bounds

_EXACT = Context(prec=60)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RESOURCE_ORDER = {"cpu": 0, "mem": 1, "gpu": 2, "node": 4, "billing": 5, "energy": 6}
RESOURCE_NAMES = {"cpu": "CPU core-hours", "mem": "Memory GiB-hours", "gpu": "GPU-hours",
                  "node": "Node-hours", "billing": "Slurm billing unit-hours",
                  "energy": "Energy"}


@dataclass(frozen=True, slots=True)
class InvoiceSite:
    """What the site says about itself on an invoice (from configuration)."""

    name: str
    address: tuple[str, ...] = ()
    number_prefix: str = "HPC"
    tax_rate: Decimal | None = None     # e.g. Decimal("0.19"); None: no tax line
    tax_label: str = "VAT"
    footer: str | None = None           # payment terms, bank details, ...


@dataclass(frozen=True, slots=True)
class ResourceSummary:
    """One row of charges by resource: a resource's charges, or its corrections of one
    earlier usage period (``corrects``), kept apart so that every row checks as
    quantity x rate = amount, or shows no rate (a correction of a rate, not a quantity)."""

    resource: str
    label: str                          # "GPU-hours, h100", "CPU core-hours, correction of 2026-10"
    unit: str
    quantity: Decimal
    rate: Decimal | None                # None: several rates, or a correction that is no quantity x rate
    amount: Decimal
    corrects: str | None = None         # the usage period a correction row corrects


@dataclass(frozen=True, slots=True)
class UserSummary:
    user: str | None
    jobs: int
    amount: Decimal


@dataclass(frozen=True, slots=True)
class JobSummary:
    cluster: str
    job_id: str
    user: str | None
    partition: str | None
    start: datetime | None
    end: datetime | None
    resources: tuple[tuple[str, Decimal, str], ...]   # (resource, quantity, unit)
    corrections: tuple[str, ...]                      # usage periods corrected
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Invoice:
    """One account's invoice for one period and currency (see the module docstring)."""

    number: str
    site: InvoiceSite
    account: str
    period: str
    period_first_day: date
    period_last_day: date
    issued: date
    currency: str
    provisional: bool                   # the period is still open
    resources: tuple[ResourceSummary, ...]
    users: tuple[UserSummary, ...]
    jobs: tuple[JobSummary, ...] = field(repr=False)
    subtotal: Decimal
    tax: Decimal | None
    total: Decimal
    content_digest: str
    lines: int


def invoice_number(site: InvoiceSite, account: str, period: str, currency: str) -> str:
    """The stable number of an account's invoice (see the module docstring)."""
    text = f"{site.name}\x1f{account}\x1f{period}\x1f{currency}"
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    code = base64.b32encode(digest[:5]).decode("ascii")
    return f"{site.number_prefix}-{period.replace('-', '')}-{code}"


def resource_label(resource: str) -> str:
    """``gpu:h100`` -> "GPU-hours, h100"; ``cpu`` -> "CPU core-hours"."""
    base, _, gpu_type = resource.partition(":")
    label = RESOURCE_NAMES.get(base, resource)
    if gpu_type:
        return f"{label}, {gpu_type}"
    if base == "gpu":
        return f"{label}, untyped"
    return label


def _resource_key(resource: str) -> tuple[float, str]:
    base, _, gpu_type = resource.partition(":")
    return (_RESOURCE_ORDER.get(base, 9) + (0.5 if gpu_type else 0), resource)


def build_invoices(lines: Iterable[BilledLine], *, account: str, period: str,
                   site: InvoiceSite, issued: date, period_closed: bool, scale: int,
                   tz: tzinfo) -> list[Invoice]:
    """The invoices (one per currency, normally one) of ``account`` for ``period``.

    ``lines``: the account's lines POSTED in ``period`` (ValueError for another account
    or period, and when there are none: an empty invoice is never issued). ``scale``:
    the card's decimal places (tax is rounded to it); ``tz``: the card's zone (the
    period's first and last day). Jobs are listed by start, users and resources by name.
    """
    by_currency: dict[str, list[BilledLine]] = {}
    for billed in lines:
        if billed.line.posted_period != period:
            raise ValueError(f"build_invoices: a line posted in {billed.line.posted_period} "
                             f"given for {period}")
        if billed.account != account:
            raise ValueError(f"build_invoices: a line of account {billed.account!r} given "
                             f"for {account!r}")
        by_currency.setdefault(billed.line.currency, []).append(billed)
    if not by_currency:
        raise ValueError(f"no charges posted for account {account!r} in {period}")
    start, end = period_bounds(period, tz)
    first_day = start.astimezone(tz).date()
    last_day = date.fromordinal(end.astimezone(tz).date().toordinal() - 1)
    return [_invoice(by_currency[c], account=account, period=period, currency=c, site=site,
                     issued=issued, provisional=not period_closed, scale=scale,
                     first_day=first_day, last_day=last_day)
            for c in sorted(by_currency)]


def _invoice(lines: list[BilledLine], *, account: str, period: str, currency: str,
             site: InvoiceSite, issued: date, provisional: bool, scale: int,
             first_day: date, last_day: date) -> Invoice:
    # Rows by (resource, corrected usage period or None): charges and corrections apart.
    resources: dict[tuple[str, str | None], list[Decimal]] = {}     # quantity, amount
    rates: dict[tuple[str, str | None], set[Decimal]] = {}
    units: dict[str, str] = {}
    users: dict[str | None, tuple[set[tuple[str, int, datetime]], Decimal]] = {}
    jobs: dict[tuple[str, int, datetime], dict[str, Any]] = {}
    subtotal = Decimal(0)
    for billed in lines:
        line = billed.line
        subtotal += line.amount
        row = (line.resource, line.usage_period if line.kind == "correction" else None)
        acc = resources.setdefault(row, [Decimal(0), Decimal(0)])
        acc[0] += line.quantity
        acc[1] += line.amount
        rates.setdefault(row, set()).add(line.rate.normalize())
        units[line.resource] = line.unit
        keys, amount = users.get(billed.user, (set(), Decimal(0)))
        keys.add(line.job_key)
        users[billed.user] = (keys, amount + line.amount)
        job = jobs.setdefault(line.job_key, {
            "billed": billed, "resources": {}, "corrections": set(), "amount": Decimal(0)})
        job["amount"] += line.amount
        qty = job["resources"].get(line.resource, Decimal(0))
        job["resources"][line.resource] = qty + line.quantity
        if line.kind == "correction":
            job["corrections"].add(line.usage_period)

    def row_rate(row: tuple[str, str | None]) -> Decimal | None:
        if len(rates[row]) != 1:
            return None
        rate = next(iter(rates[row]))
        quantity, amount = resources[row]
        # A correction of a rate (the quantity did not change) is no quantity x rate.
        if row[1] is not None and round_amount(_EXACT.multiply(quantity, rate), scale) != amount:
            return None
        return rate

    def row_label(row: tuple[str, str | None]) -> str:
        label = resource_label(row[0])
        return label if row[1] is None else f"{label}, correction of {row[1]}"

    resource_rows = tuple(
        ResourceSummary(resource=r[0], label=row_label(r), unit=units[r[0]],
                        quantity=resources[r][0], rate=row_rate(r), amount=resources[r][1],
                        corrects=r[1])
        for r in sorted(resources, key=lambda r: (_resource_key(r[0]), r[1] is not None,
                                                  r[1] or "")))
    user_rows = tuple(UserSummary(user=u, jobs=len(users[u][0]), amount=users[u][1])
                      for u in sorted(users, key=lambda u: (u is None, u or "")))
    job_rows = []
    for key, job in jobs.items():
        billed = job["billed"]
        job_rows.append(JobSummary(
            cluster=key[0], job_id=billed.job_id, user=billed.user, partition=billed.partition,
            start=billed.start, end=billed.end,
            resources=tuple((r, q, units[r]) for r, q in
                            sorted(job["resources"].items(), key=lambda kv: _resource_key(kv[0]))),
            corrections=tuple(sorted(job["corrections"])), amount=job["amount"]))
    job_rows.sort(key=lambda j: (j.start is None, j.start or _EPOCH, j.cluster, j.job_id))
    tax = None
    if site.tax_rate is not None:
        tax = round_amount(_EXACT.multiply(subtotal, site.tax_rate), scale)
    digest, count = period_digest(b.line for b in lines)
    return Invoice(
        number=invoice_number(site, account, period, currency), site=site, account=account,
        period=period, period_first_day=first_day, period_last_day=last_day, issued=issued,
        currency=currency, provisional=provisional, resources=resource_rows, users=user_rows,
        jobs=tuple(job_rows), subtotal=subtotal, tax=tax,
        total=subtotal + (tax if tax is not None else Decimal(0)), content_digest=digest,
        lines=count)


def amount_text(value: Decimal) -> str:
    """Money on an invoice: exact, at least 2 places, thousands separated (1,234.50)."""
    text = money_text(value)
    sign = "-" if text.startswith("-") else ""
    whole, _, frac = text.lstrip("-").partition(".")
    return f"{sign}{int(whole):,}.{frac}"
