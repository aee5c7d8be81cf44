"""Reads for the documents finance receives (issue 20): billed lines of a posted period,
the lines a period digest covers, the stored cards those lines name, and the job records
``explain`` starts from.

``BilledLine`` = a ``ChargeLine`` plus its job's id, account, user, partition, QOS,
start and end (``charge_lines`` joined to ``jobs`` and ``rate_cards``), in the order of
``charges.statement_lines``, so an account's billed lines are its statement's lines and
add up to the report's amount for it. Streamed with a server-side cursor: consume them
inside the caller's transaction. Like every store function these never commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC
from typing import Any

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session

from billing.records import BilledLine, ChargeLine, JobRecord
from collector.store.charges import _CARDS, _CHARGES, _JOBS, check_period
from collector.store.jobs import _COLUMNS as _JOB_COLUMNS
from collector.store.jobs import _record

_C, _J, _K = _CHARGES.c, _JOBS.c, _CARDS.c
_BILLED_COLUMNS = (
    _C.cluster, _C.job_id_raw, _C.submit_time, _C.usage_period, _C.posted_period,
    _C.resource, _C.quantity, _C.unit, _C.rate, _C.amount, _C.currency, _C.rule,
    _K.version, _C.basis, _C.kind,
    _J.job_id, _J.account, _J.user_name, _J.partition, _J.qos, _J.start_time, _J.end_time)
_BILLED_FROM = _CHARGES.join(
    _JOBS, (_J.cluster == _C.cluster) & (_J.job_id_raw == _C.job_id_raw)
    & (_J.submit_time == _C.submit_time)).join(_CARDS, _K.id == _C.rate_card_id)
# charges.statement_lines' order.
_STATEMENT_ORDER = (_C.submit_time, _C.job_id_raw, _C.cluster, _C.resource, _C.usage_period,
                    _C.kind, _C.id)


def _billed(rows: Iterable[Any]) -> Iterator[BilledLine]:
    for (cluster, job_id_raw, submit, usage_period, posted_period, resource, quantity, unit,
         rate, amount, currency, rule, version, basis, kind,
         job_id, account, user, partition, qos, start, end) in rows:
        line = ChargeLine(cluster=cluster, job_id_raw=job_id_raw, submit=submit.astimezone(UTC),
                          usage_period=usage_period, posted_period=posted_period,
                          resource=resource, quantity=quantity, unit=unit, rate=rate,
                          amount=amount, currency=currency, rule=rule, rate_card=version,
                          basis=basis, kind=kind)
        yield BilledLine(line=line, job_id=job_id, account=account, user=user,
                         partition=partition, qos=qos,
                         start=None if start is None else start.astimezone(UTC),
                         end=None if end is None else end.astimezone(UTC))


def _stream(session: Session, stmt: Any, yield_per: int) -> Iterator[Any]:
    result = session.execute(stmt.execution_options(yield_per=yield_per))
    try:
        yield from result
    finally:
        result.close()


def billed_lines(session: Session, *, period: str, account: str | None,
                 cluster: str | None = None, yield_per: int = 2_000) -> Iterator[BilledLine]:
    """The lines POSTED in ``period`` for jobs of ``account`` (None: jobs without one),
    optionally of one cluster, in statement order."""
    check_period(period)
    stmt = (select(*_BILLED_COLUMNS).select_from(_BILLED_FROM)
            .where(_C.posted_period == period, _J.account.is_not_distinct_from(account))
            .order_by(*_STATEMENT_ORDER))
    if cluster is not None:
        stmt = stmt.where(_C.cluster == cluster)
    return _billed(_stream(session, stmt, yield_per))


def period_billed_lines(session: Session, *, period: str, cluster: str | None = None,
                        yield_per: int = 5_000) -> Iterator[BilledLine]:
    """Every line POSTED in ``period`` (every account), optionally of one cluster, in
    statement order."""
    check_period(period)
    stmt = (select(*_BILLED_COLUMNS).select_from(_BILLED_FROM)
            .where(_C.posted_period == period).order_by(*_STATEMENT_ORDER))
    if cluster is not None:
        stmt = stmt.where(_C.cluster == cluster)
    return _billed(_stream(session, stmt, yield_per))


def period_lines(session: Session, period: str, *,
                 yield_per: int = 10_000) -> Iterator[ChargeLine]:
    """Every line POSTED in ``period``, all clusters and accounts (what a period digest,
    ``billing.audit.period_digest``, covers), in no particular order."""
    check_period(period)
    stmt = (select(_C.cluster, _C.job_id_raw, _C.submit_time, _C.usage_period,
                   _C.posted_period, _C.resource, _C.quantity, _C.unit, _C.rate, _C.amount,
                   _C.currency, _C.rule, _K.version, _C.basis, _C.kind)
            .select_from(_CHARGES.join(_CARDS, _K.id == _C.rate_card_id))
            .where(_C.posted_period == period))
    for (cluster, job_id_raw, submit, usage_period, posted_period, resource, quantity, unit,
         rate, amount, currency, rule, version, basis, kind) in _stream(session, stmt,
                                                                         yield_per):
        yield ChargeLine(cluster=cluster, job_id_raw=job_id_raw, submit=submit.astimezone(UTC),
                         usage_period=usage_period, posted_period=posted_period,
                         resource=resource, quantity=quantity, unit=unit, rate=rate,
                         amount=amount, currency=currency, rule=rule, rate_card=version,
                         basis=basis, kind=kind)


def account_known(session: Session, account: str, cluster: str | None = None) -> bool:
    """Whether any stored job (of ``cluster``, when given) belongs to ``account``."""
    cond = [_J.account == account]
    if cluster is not None:
        cond.append(_J.cluster == cluster)
    return bool(session.execute(select(exists().where(*cond))).scalar())


def card_texts(session: Session, versions: Iterable[str]) -> list[tuple[str, str]]:
    """(version, TOML text) of these stored rate-card versions, oldest loaded first
    (unknown versions are left out)."""
    wanted = sorted(set(versions))
    if not wanted:
        return []
    rows = session.execute(select(_K.version, _K.text).where(_K.version.in_(wanted))
                           .order_by(_K.loaded_at, _K.id))
    return [(version, body) for version, body in rows]


def period_card_versions(session: Session, period: str,
                         cluster: str | None = None) -> set[str]:
    """The rate-card versions that priced the lines posted in ``period``."""
    check_period(period)
    stmt = (select(_K.version).where(exists().where(_C.rate_card_id == _K.id,
                                                   _C.posted_period == period,
                                                   *([_C.cluster == cluster] if cluster
                                                     else []))))
    return set(session.execute(stmt).scalars())


def job_records(session: Session, job_id: str, cluster: str | None = None) -> list[JobRecord]:
    """The records a person means by ``job_id``: JobIDRaw (digits) or JobID as Slurm
    prints it (``6_3``, ``14+1``); every matching record (a requeued job has one per
    run; an array's last task has its array's id as JobIDRaw), of ``cluster`` when
    given, by cluster, submit time and JobIDRaw."""
    match = [_J.job_id == job_id]
    if job_id.isascii() and job_id.isdigit() and len(job_id) <= 19:
        raw = int(job_id)
        if raw <= 2**63 - 1:
            match.append(_J.job_id_raw == raw)
    stmt = select(*(_JOBS.c[name] for name in _JOB_COLUMNS)).where(or_(*match))
    if cluster is not None:
        stmt = stmt.where(_J.cluster == cluster)
    stmt = stmt.order_by(_J.cluster, _J.submit_time, _J.job_id_raw)
    return [_record(row) for row in session.execute(stmt)]


__all__ = ["account_known", "billed_lines", "card_texts", "job_records", "period_billed_lines",
           "period_card_versions", "period_lines"]
