"""Reports: what finance bills, read by POSTED period.

``charge_report`` sums one period's charges per group and currency, from the monthly
rollups (``charge_report_rollup``; ``charge_report_raw`` computes the same from the lines);
``report_range`` sums consecutive periods (and can be limited to some accounts), also
from the rollups, distinct jobs across months included (``report_range_raw``: from the
lines). Both line-based reports are one query (``_report_from_lines``).
``billed_lines`` lists one account's lines of a period (its statement and invoice),
``period_billed_lines`` every account's (the GL journal, FOCUS), ``period_lines`` what a
closed period's digest covers. See docs/design/store.md.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Numeric,
    and_,
    case,
    distinct,
    exists,
    func,
    literal_column,
    select,
    tuple_,
)
from sqlalchemy.orm import Session

from billing.records import BilledLine, ChargeLine
from collector.store.errors import ChargeStoreError
from collector.store.models import (
    Assoc,
    Charge,
    Cluster,
    Job,
    RateCard,
    RollupJobs,
    RollupReentry,
    RollupResource,
    table_of,
)
from collector.store.periods import check_period
from collector.store.rollups import refresh_rollups

CHARGES = table_of(Charge)
JOBS = table_of(Job)
_CARDS = table_of(RateCard)
_ROLLUP = table_of(RollupResource)
_ROLLUP_JOBS = table_of(RollupJobs)
_REENTRIES = table_of(RollupReentry)
_ASSOCS = table_of(Assoc)
_CLUSTERS = table_of(Cluster)

# Every charge line with its job (the attributes reports group by).
LINES_WITH_JOBS = CHARGES.join(JOBS, and_(JOBS.c.cluster_id == CHARGES.c.cluster_id,
                                          JOBS.c.job_id_raw == CHARGES.c.job_id_raw,
                                          JOBS.c.submit_time == CHARGES.c.submit_time))


class ResourceTotal(NamedTuple):
    """One resource of a report row: summed quantity (in ``unit``) and amount."""

    quantity: Decimal
    unit: str
    amount: Decimal


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One group of a charge report, in one currency.

    ``group`` maps each requested group_by name to its value (None: the jobs had none),
    in the requested order. ``jobs`` counts distinct jobs with a line in the group.
    ``resources`` is keyed by resource name in no particular order (renderers sort it).
    """

    group: dict[str, str | None]
    currency: str
    jobs: int
    amount: Decimal
    resources: dict[str, ResourceTotal] = field(default_factory=dict)

    def __getitem__(self, name: str) -> str | None:
        return self.group[name]


# The only expressions a report may group by: names are looked up here, never
# interpolated.
GROUP_BY: dict[str, ColumnElement[Any]] = {
    "account": JOBS.c.account,
    "user": JOBS.c.user_name,
    "partition": JOBS.c.partition,
    "qos": JOBS.c.qos,
    "cluster": CHARGES.c.cluster,
    "resource": CHARGES.c.resource,
}


def _group_columns(group_by: Sequence[str]) -> list[tuple[str, ColumnElement[Any]]]:
    if isinstance(group_by, str) or not isinstance(group_by, Sequence):
        raise ChargeStoreError(
            f"group_by must be a list of names from {sorted(GROUP_BY)}, got {group_by!r}")
    out: list[tuple[str, ColumnElement[Any]]] = []
    for name in group_by:
        if not isinstance(name, str) or name not in GROUP_BY:
            raise ChargeStoreError(
                f"cannot group by {name!r}: choose from {', '.join(sorted(GROUP_BY))}")
        if any(name == seen for seen, _ in out):
            raise ChargeStoreError(f"group_by names {name!r} twice")
        out.append((name, GROUP_BY[name]))
    return out


def charge_report(session: Session, *, period: str, group_by: Sequence[str],
                  cluster: str | None = None) -> list[ReportRow]:
    """Charges POSTED in ``period`` (what finance bills; corrections included), summed
    per group of ``group_by`` (a subset of account, user, partition, resource, cluster,
    qos; validated against that whitelist) and per currency: amounts in different
    currencies are never added. Sorted by the group values (None last), then currency.

    Read from the monthly rollups (``charge_report_rollup``); ``charge_report_raw`` gives
    the same rows from the charge lines.
    """
    return charge_report_rollup(session, period=period, group_by=group_by, cluster=cluster)


def charge_report_raw(session: Session, *, period: str, group_by: Sequence[str],
                      cluster: str | None = None) -> list[ReportRow]:
    """``charge_report`` from the charge lines joined to their jobs."""
    return _report_from_lines(session, periods=[check_period(period)], group_by=group_by,
                              cluster=cluster, accounts=None)


def report_range(session: Session, *, periods: Sequence[str], group_by: Sequence[str],
                 cluster: str | None = None,
                 accounts: Collection[str] | None = None) -> list[ReportRow]:
    """Charges POSTED in any of ``periods`` (consecutive months: the API's from..to),
    grouped like ``charge_report``.

    Amounts and quantities are summed across the periods and ``jobs`` counts distinct
    jobs across them (a job with lines in two periods counts once). ``accounts``
    restricts the underlying lines to jobs of those accounts whatever ``group_by`` is
    (an empty collection matches nothing). Read from the monthly rollups: for one period
    it is ``charge_report``; across months the job counts come from the entries
    (``jobs_entered``, ``rollup_reentries``: docs/design/engine.md §13), which give
    distinct jobs for a range of consecutive months only, so a gap in ``periods`` is
    refused (``ValueError``). ``report_range_raw`` gives the same rows from the lines.
    """
    first, last = _consecutive(periods)
    return _report_from_rollups(session, first=first, last=last, group_by=group_by,
                                cluster=cluster, accounts=_accounts(accounts))


def report_range_raw(session: Session, *, periods: Sequence[str], group_by: Sequence[str],
                     cluster: str | None = None,
                     accounts: Collection[str] | None = None) -> list[ReportRow]:
    """``report_range`` from the charge lines joined to their jobs (distinct jobs counted
    from the lines of all those months; any set of periods)."""
    if isinstance(periods, str) or not periods:
        raise ValueError("periods must be a non-empty list of 'YYYY-MM'")
    wanted = sorted({check_period(p) for p in periods})
    return _report_from_lines(session, periods=wanted, group_by=group_by, cluster=cluster,
                              accounts=_accounts(accounts))


def _consecutive(periods: Sequence[str]) -> tuple[date, date]:
    """The first and last month of ``periods``, which must be consecutive months."""
    if isinstance(periods, str) or not periods:
        raise ValueError("periods must be a non-empty list of 'YYYY-MM'")
    months = sorted({_month(p) for p in periods})
    first, last = months[0], months[-1]
    span = (last.year - first.year) * 12 + last.month - first.month + 1
    if span != len(months):
        raise ValueError(f"periods must be consecutive months; {len(months)} periods given"
                         f" from {first:%Y-%m} to {last:%Y-%m}")
    return first, last


def _accounts(accounts: Collection[str] | None) -> list[str] | None:
    if accounts is None:
        return None
    if isinstance(accounts, str):
        raise TypeError("accounts must be a collection of names, not one string")
    return sorted(set(accounts))


def _report_from_lines(session: Session, *, periods: list[str], group_by: Sequence[str],
                       cluster: str | None, accounts: list[str] | None) -> list[ReportRow]:
    """The report from the lines: one statement with two grouping sets, the group totals
    (distinct jobs, amount) and the per-resource totals within each group."""
    groups = _group_columns(group_by)
    exprs = [expr for _, expr in groups]
    c = CHARGES.c
    total = func.grouping(c.resource, c.unit).label("is_total")
    stmt = (
        select(*(expr.label(f"g{i}") for i, expr in enumerate(exprs)),
               c.currency, c.resource, c.unit, total,
               func.count(distinct(tuple_(c.cluster, c.job_id_raw, c.submit_time)))
               .label("jobs"),
               func.sum(c.quantity).label("quantity"), func.sum(c.amount).label("amount"))
        .select_from(LINES_WITH_JOBS)
        .where(c.posted_month.in_([_month(p) for p in periods]))
        .group_by(func.grouping_sets(tuple_(*exprs, c.currency),
                                     tuple_(*exprs, c.currency, c.resource, c.unit)))
        .order_by(*(expr.asc().nulls_last() for expr in exprs), c.currency,
                  literal_column("is_total").desc(), c.resource, c.unit)
    )
    if cluster is not None:
        stmt = stmt.where(c.cluster == cluster)
    if accounts is not None:
        stmt = stmt.where(JOBS.c.account.in_(accounts))
    rows: dict[tuple[Any, ...], ReportRow] = {}
    for r in session.execute(stmt):
        values = tuple(r[i] for i in range(len(exprs)))
        key = (values, r.currency)
        if r.is_total:
            rows[key] = ReportRow(group=dict(zip((n for n, _ in groups), values, strict=True)),
                                  currency=r.currency, jobs=int(r.jobs), amount=r.amount)
        else:
            _add_resource(rows[key], r)
    return list(rows.values())


def _add_resource(row: ReportRow, r: Any) -> None:
    if r.resource in row.resources:  # pragma: no cover - replace_charges checks units
        raise RuntimeError(f"resource {r.resource!r} stored in two units")
    row.resources[r.resource] = ResourceTotal(r.quantity, r.unit, r.amount)

# The report's group names on the rollup tables (joined to assocs and clusters).
def _rollup_group_by(table: Any) -> dict[str, Any]:
    a = _ASSOCS.c
    return {"account": a.account, "user": a.user_name, "partition": a.partition,
            "qos": a.qos, "cluster": _CLUSTERS.c.name,
            "resource": table.c.resource if "resource" in table.c else None}


def _money(column: Any) -> ColumnElement[Any]:
    """A sum of integer millionths as numeric with six decimals (what summing the
    lines' numeric(20, 6) amounts gives)."""
    return func.cast(func.sum(column) / 1_000_000, Numeric(38, 6))


def charge_report_rollup(session: Session, *, period: str, group_by: Sequence[str],
                         cluster: str | None = None,
                         accounts: list[str] | None = None) -> list[ReportRow]:
    """``charge_report`` from the monthly rollups (migration 0011): per-resource sums
    from ``rollup_resource``; group totals (distinct jobs, amount) from ``rollup_jobs``,
    or, when grouping by resource, from the resource rows. A job is in one assoc, so
    its distinct counts add up across assocs within a month. ``accounts`` keeps the jobs
    of those accounts only (``report_range``). The transaction's pending deltas are
    applied first (a writer's report sees its own writes)."""
    month = _month(period)
    return _report_from_rollups(session, first=month, last=month, group_by=group_by,
                                cluster=cluster, accounts=accounts)


def _report_from_rollups(session: Session, *, first: date, last: date,
                         group_by: Sequence[str], cluster: str | None,
                         accounts: list[str] | None) -> list[ReportRow]:
    """The report of the posted months [first, last] from the rollups. Per bucket
    (cluster x assoc x currency, x resource when grouping by it) the distinct jobs of
    the range are ``jobs`` of the first month, plus ``jobs_entered`` of each later month,
    minus the re-entries of those later months from a month inside the range (0012,
    docs/design/engine.md §13); a job is in one bucket per currency (and resource), so
    those add up across the buckets of a group as within one month.

    Three statements, each over one table joined to assocs (and to clusters only when
    grouping or filtering by cluster): the entries, the re-entries (ranges only) and
    the per-resource sums. One UNION of entries and re-entries hid the tables' statistics
    from the planner, which then sorted a year's 144,000 entries on disk (212 ms; 35 ms
    now at 10M jobs, docs/design/engine.md §18)."""
    refresh_rollups(session)
    names = [name for name, _ in _group_columns(group_by)]
    by_resource = "resource" in names
    with_clusters = "cluster" in names or cluster is not None
    fine = _ROLLUP
    totals_table = fine if by_resource else _ROLLUP_JOBS

    def scoped(stmt: Any, table: Any) -> Any:
        stmt = stmt.join_from(table, _ASSOCS, _ASSOCS.c.id == table.c.assoc_id)
        if with_clusters:
            stmt = stmt.join(_CLUSTERS, _CLUSTERS.c.id == table.c.cluster_id)
        if cluster is not None:
            stmt = stmt.where(_CLUSTERS.c.name == cluster)
        if accounts is not None:
            stmt = stmt.where(_ASSOCS.c.account.in_(accounts))
        return stmt

    def grouped(table: Any, *columns: Any) -> tuple[list[Any], Any]:
        exprs = [_rollup_group_by(table)[n] for n in names]
        return exprs, select(*(e.label(f"g{i}") for i, e in enumerate(exprs)), *columns)

    t = totals_table.c
    exprs, stmt = grouped(totals_table, t.currency, func.sum(
        case((t.posted_month == first, t.jobs), else_=t.jobs_entered)).label("jobs"))
    totals = (scoped(stmt, totals_table).where(t.posted_month.between(first, last))
              .group_by(*exprs, t.currency)
              .order_by(*(e.asc().nulls_last() for e in exprs), t.currency))
    # A group's amount is the sum of its resources' amounts (the two rollups hold the
    # same lines; ``rollup verify`` checks both): summing numeric amounts once, not
    # twice, is half the time of a year's range (195 -> 102 ms for its totals).
    f = fine.c
    exprs, stmt = grouped(fine, f.currency, f.resource, f.unit,
                          _money(f.quantity_micro).label("quantity"),
                          _money(f.amount_micro).label("amount"))
    per_resource = (scoped(stmt, fine).where(f.posted_month.between(first, last))
                    .group_by(*exprs, f.currency, f.resource, f.unit))
    # Rows fetched at once (not one fetch per row) and read by position (the group
    # values, then the selected columns), not by name: ~5 us a row less, a third of a
    # 12,000-group report (484 -> 308 ms at 20,000 assocs).
    n = len(names)
    jobs_of: dict[tuple[Any, ...], int] = {}
    for got in session.execute(totals).all():
        jobs_of[(tuple(got[:n]), got[n])] = int(got[n + 1])
    if last > first:
        g = _REENTRIES.c
        exprs, stmt = grouped(_REENTRIES, g.currency, func.sum(g.jobs).label("jobs"))
        again = (scoped(stmt, _REENTRIES)
                 .where(g.posted_month > first, g.posted_month <= last, g.prev_month >= first,
                        g.resource != "" if by_resource else g.resource == "")
                 .group_by(*exprs, g.currency))
        for got in session.execute(again).all():
            key = (tuple(got[:n]), got[n])
            jobs_of[key] = jobs_of.get(key, 0) - int(got[n + 1])
    resources: dict[tuple[Any, ...], dict[str, ResourceTotal]] = {k: {} for k in jobs_of}
    for got in session.execute(per_resource).all():
        currency, resource, unit, quantity, amount = got[n:]
        of_group = resources[(tuple(got[:n]), currency)]
        if resource in of_group:  # pragma: no cover - replace_charges checks units
            raise RuntimeError(f"resource {resource!r} stored in two units")
        of_group[resource] = ResourceTotal(quantity, unit, amount)
    return [ReportRow(group=dict(zip(names, values, strict=True)), currency=currency,
                      jobs=jobs, resources=resources[(values, currency)],
                      amount=sum((r.amount for r in resources[(values, currency)].values()),
                                 _NO_AMOUNT))
            for (values, currency), jobs in jobs_of.items()]


_NO_AMOUNT = Decimal("0.000000")


# A line with its job and card version: what finance documents read (BilledLine).
_BILLED_COLUMNS = (
    CHARGES.c.cluster, CHARGES.c.job_id_raw, CHARGES.c.submit_time, CHARGES.c.usage_period,
    CHARGES.c.posted_period, CHARGES.c.resource, CHARGES.c.quantity, CHARGES.c.unit,
    CHARGES.c.rate, CHARGES.c.amount, CHARGES.c.currency, CHARGES.c.rule, _CARDS.c.version,
    CHARGES.c.basis, CHARGES.c.kind,
    JOBS.c.job_id, JOBS.c.account, JOBS.c.user_name, JOBS.c.partition, JOBS.c.qos,
    JOBS.c.start_time, JOBS.c.end_time)
_BILLED_FROM = LINES_WITH_JOBS.join(_CARDS, _CARDS.c.id == CHARGES.c.rate_card_id)
# The statement's order: by job (submit time, id, cluster), then resource.
_STATEMENT_ORDER = (CHARGES.c.submit_time, CHARGES.c.job_id_raw, CHARGES.c.cluster,
                    CHARGES.c.resource, CHARGES.c.usage_period, CHARGES.c.kind,
                    CHARGES.c.posted_period, CHARGES.c.rule, CHARGES.c.basis, CHARGES.c.amount)


def _stream(session: Session, stmt: Any, yield_per: int) -> Iterator[Any]:
    result = session.execute(stmt.execution_options(yield_per=yield_per))
    try:
        yield from result
    finally:
        result.close()


def _charge_line(row: Any) -> ChargeLine:
    (cluster, job_id_raw, submit, usage_period, posted_period, resource, quantity, unit,
     rate, amount, currency, rule, version, basis, kind) = row[:15]
    return ChargeLine(cluster=cluster, job_id_raw=job_id_raw, submit=submit.astimezone(UTC),
                      usage_period=usage_period, posted_period=posted_period,
                      resource=resource, quantity=quantity, unit=unit, rate=rate,
                      amount=amount, currency=currency, rule=rule, rate_card=version,
                      basis=basis, kind=kind)


def _billed(rows: Iterator[Any]) -> Iterator[BilledLine]:
    for row in rows:
        job_id, account, user, partition, qos, start, end = row[15:]
        yield BilledLine(line=_charge_line(row), job_id=job_id, account=account, user=user,
                         partition=partition, qos=qos, start=_utc(start), end=_utc(end))


def billed_lines(session: Session, *, period: str, account: str | None,
                 cluster: str | None = None, yield_per: int = 2_000) -> Iterator[BilledLine]:
    """An account's statement: every line POSTED in ``period`` for jobs of ``account``
    (None: jobs without one), with its job and card version, by submit time, job_id_raw,
    cluster, resource (then usage period, kind).

    The same selection as ``charge_report`` grouped by account, so the amounts add up to
    that report's amount for the account (per currency). Streamed with a server-side
    cursor; consume it inside the caller's transaction.
    """
    check_period(period)
    stmt = (select(*_BILLED_COLUMNS).select_from(_BILLED_FROM)
            .where(CHARGES.c.posted_month == _month(period),
                   JOBS.c.account.is_not_distinct_from(account))
            .order_by(*_STATEMENT_ORDER))
    if cluster is not None:
        stmt = stmt.where(CHARGES.c.cluster == cluster)
    return _billed(_stream(session, stmt, yield_per))


def period_billed_lines(session: Session, *, period: str, cluster: str | None = None,
                        yield_per: int = 5_000) -> Iterator[BilledLine]:
    """``billed_lines`` of every account (the GL journal's and FOCUS's lines), in the
    same order; they add up to the report's total of the period."""
    check_period(period)
    stmt = (select(*_BILLED_COLUMNS).select_from(_BILLED_FROM)
            .where(CHARGES.c.posted_month == _month(period)).order_by(*_STATEMENT_ORDER))
    if cluster is not None:
        stmt = stmt.where(CHARGES.c.cluster == cluster)
    return _billed(_stream(session, stmt, yield_per))


def period_lines(session: Session, period: str, *,
                 yield_per: int = 10_000) -> Iterator[ChargeLine]:
    """Every line POSTED in ``period``, all clusters and accounts, in no order: what a
    closed period's digest (``billing.audit.period_digest``) covers."""
    check_period(period)
    stmt = (select(*_BILLED_COLUMNS[:15])
            .select_from(CHARGES.join(_CARDS, _CARDS.c.id == CHARGES.c.rate_card_id))
            .where(CHARGES.c.posted_month == _month(period)))
    return (_charge_line(row) for row in _stream(session, stmt, yield_per))


def period_card_versions(session: Session, period: str,
                         cluster: str | None = None) -> set[str]:
    """The rate-card versions that priced the lines posted in ``period``."""
    check_period(period)
    cond = [CHARGES.c.rate_card_id == _CARDS.c.id, CHARGES.c.posted_month == _month(period)]
    if cluster is not None:
        cond.append(CHARGES.c.cluster == cluster)
    return set(session.execute(select(_CARDS.c.version).where(exists().where(*cond)))
               .scalars())


def _month(period: str) -> date:
    """The first day of a 'YYYY-MM' period: what the views' ``posted_month`` holds."""
    check_period(period)
    return date(int(period[:4]), int(period[5:7]), 1)


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)
