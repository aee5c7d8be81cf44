"""Read queries for the web app: probes and the read-only JSON API.

This module owns the queries ``collector.web`` needs beyond the listings the CLI already
uses (``jobs.list_jobs``, ``runs.list_runs``, ``charges.charge_report`` ...):

- ``begin_read`` marks the caller's transaction READ ONLY with a statement timeout, so a
  web request can neither write nor run for ever.
- ``ping`` (``SELECT 1``) and ``last_poll`` (the newest poll of a cluster in the run log
  with given outcomes, whichever process wrote it) for ``/readyz``.
- ``job_page``: one keyset page of jobs ordered by (cluster, submit time, job_id_raw),
  optionally restricted to a set of accounts.
- ``jobs_by_raw_id``: every record of one JobIDRaw (a requeued job has two).
- ``report_range``: ``charges.charge_report`` over several posted periods at once and
  optionally restricted to some accounts, with exactly the same grouping, sums, job
  counts and order (for one period and no restriction it returns what
  ``charge_report`` returns; a test holds the two together).
- ``database_unavailable``: whether an exception means "the database cannot be reached"
  (the web app answers 503 instead of 500), so the web package needs no SQLAlchemy.

Like every store function these take a session and never commit. Rows come back as
``billing.records.JobRecord``, ``charges.ReportRow`` or the frozen dataclasses below.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import distinct, extract, func, literal_column, select, text, tuple_
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from billing.records import JobRecord
from collector.store.charges import (
    _CHARGES,
    _JOB_JOIN,
    ReportRow,
    ResourceTotal,
    _group_columns,
    check_period,
)
from collector.store.jobs import _COLUMNS as _JOB_COLUMNS
from collector.store.jobs import _TABLE as _JOBS
from collector.store.jobs import _record
from collector.store.models import CollectorRun

UTC = timezone.utc

_RUNS = CollectorRun.__table__


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {value!r}")
    return value.astimezone(UTC)


def _accounts(accounts: Collection[str] | None) -> list[str] | None:
    if accounts is None:
        return None
    if isinstance(accounts, str):
        raise TypeError("accounts must be a collection of names, not one string")
    return sorted(set(accounts))


# ------------------------------------------------------------------------ transactions

def begin_read(session: Session, *, statement_timeout_s: float) -> None:
    """Make the session's (new) transaction READ ONLY with a statement timeout.

    Call first thing in the transaction: ``SET TRANSACTION`` must precede any query.
    Both settings end with the transaction, so a pooled connection is not affected.
    """
    timeout_ms = max(1, int(statement_timeout_s * 1000))
    session.execute(text("SET TRANSACTION READ ONLY"))
    # set_config(..., true) is SET LOCAL with a bind parameter.
    session.execute(text("SELECT set_config('statement_timeout', :ms, true)"),
                    {"ms": str(timeout_ms)})


def database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` says the database could not be used right now (refused or lost
    connection, pool exhausted, statement timeout), as opposed to a bug."""
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.TimeoutError)):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)


# ----------------------------------------------------------------------------- probes

def ping(session: Session) -> None:
    """``SELECT 1``: raises when the database does not answer."""
    session.execute(text("SELECT 1")).scalar_one()


@dataclass(frozen=True, slots=True)
class LastPoll:
    """The newest poll of a cluster (with one of the outcomes asked for), and its age by
    the DATABASE's clock (so the clocks of several head nodes never matter)."""

    cluster: str
    run_id: int
    finished_at: datetime
    age_s: float
    outcome: str = "ok"
    quarantined: int = 0
    error: str | None = None


def last_poll(session: Session, cluster: str,
              outcomes: Collection[str] = ("ok",)) -> LastPoll | None:
    """The newest finished run of kind 'poll' with one of ``outcomes`` for ``cluster``
    (any process), or None. "Newest" is the highest id: polls of one cluster never
    overlap (the leader lock), and ``ix_collector_runs_cluster_id`` answers with a short
    backward index scan."""
    r = _RUNS.c
    row = session.execute(
        select(r.id, r.finished_at, r.outcome, r.quarantined, r.error,
               extract("epoch", func.clock_timestamp() - r.finished_at).label("age_s"))
        .where(r.cluster == cluster, r.kind == "poll", r.outcome.in_(list(outcomes)),
               r.finished_at.is_not(None))
        .order_by(r.id.desc())
        .limit(1)
    ).one_or_none()
    if row is None:
        return None
    return LastPoll(cluster=cluster, run_id=int(row.id),
                    finished_at=row.finished_at.astimezone(UTC), age_s=float(row.age_s),
                    outcome=row.outcome, quarantined=int(row.quarantined or 0),
                    error=row.error)


def last_ok_poll(session: Session, cluster: str) -> LastPoll | None:
    """The newest poll with outcome 'ok' for ``cluster`` (see ``last_poll``)."""
    return last_poll(session, cluster, ("ok",))


# ------------------------------------------------------------------------------- jobs

@dataclass(frozen=True, slots=True)
class JobPosition:
    """A position in the job order (cluster, submit time, job_id_raw): the key of the
    last job of a page; the next page starts strictly after it."""

    cluster: str
    submit: datetime
    job_id_raw: int


def job_page(session: Session, *, limit: int, after: JobPosition | None = None,
             cluster: str | None = None, account: str | None = None,
             accounts: Collection[str] | None = None, user: str | None = None,
             since: datetime | None = None, until: datetime | None = None) -> list[JobRecord]:
    """At most ``limit`` jobs ordered by (cluster, submit time, job_id_raw), starting after
    ``after``.

    Filters: ``cluster``, ``account``, ``user`` (equality); ``accounts`` restricts to jobs
    whose account is one of them (an empty collection matches nothing; None: no
    restriction); ``since``/``until`` select the jobs that ran in [since, until) by the
    rule of ``jobs.list_jobs`` (submitted before ``until``, not ended before ``since``).
    The order is the primary key's columns rearranged, so pages never overlap or skip a
    job; ``ix_jobs_cluster_submit_time`` serves it.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    t = _JOBS.c
    stmt = select(_JOBS.c[_JOB_COLUMNS])
    if cluster is not None:
        stmt = stmt.where(t.cluster == cluster)
    if account is not None:
        stmt = stmt.where(t.account == account)
    allowed = _accounts(accounts)
    if allowed is not None:
        stmt = stmt.where(t.account.in_(allowed))
    if user is not None:
        stmt = stmt.where(t.user_name == user)
    if until is not None:
        stmt = stmt.where(t.submit_time < _aware(until, "until"))
    if since is not None:
        stmt = stmt.where(t.end_time.is_(None) | (t.end_time >= _aware(since, "since")))
    if after is not None:
        stmt = stmt.where(tuple_(t.cluster, t.submit_time, t.job_id_raw)
                          > tuple_(after.cluster, _aware(after.submit, "after.submit"),
                                   after.job_id_raw))
    stmt = stmt.order_by(t.cluster, t.submit_time, t.job_id_raw).limit(limit)
    return [_record(row) for row in session.execute(stmt)]


def jobs_by_raw_id(session: Session, cluster: str, job_id_raw: int) -> list[JobRecord]:
    """Every record of ``cluster`` with this JobIDRaw, oldest submit first (a requeued job
    has one record per run; a slurmctld state reset can reuse an id much later)."""
    t = _JOBS.c
    stmt = (select(_JOBS.c[_JOB_COLUMNS])
            .where(t.cluster == cluster, t.job_id_raw == job_id_raw)
            .order_by(t.submit_time))
    return [_record(row) for row in session.execute(stmt)]


# ---------------------------------------------------------------------------- reports

def report_range(session: Session, *, periods: Sequence[str], group_by: Sequence[str],
                 cluster: str | None = None,
                 accounts: Collection[str] | None = None) -> list[ReportRow]:
    """Charges POSTED in any of ``periods``, grouped like ``charges.charge_report``.

    One statement over all the periods: amounts and quantities are summed across them and
    ``jobs`` counts distinct jobs across them (a job with lines in two periods counts
    once). ``accounts`` restricts the underlying lines to jobs of those accounts whatever
    ``group_by`` is (an empty collection matches nothing). Same grouping sets, sort order
    and currency separation as ``charge_report``.
    """
    if isinstance(periods, str) or not periods:
        raise ValueError("periods must be a non-empty list of 'YYYY-MM'")
    wanted = sorted({check_period(p) for p in periods})
    groups = _group_columns(group_by)
    exprs = [expr for _, expr in groups]
    c = _CHARGES.c
    total = func.grouping(c.resource, c.unit).label("is_total")
    stmt = (
        select(*(expr.label(f"g{i}") for i, expr in enumerate(exprs)),
               c.currency, c.resource, c.unit, total,
               func.count(distinct(tuple_(c.cluster, c.job_id_raw, c.submit_time)))
               .label("jobs"),
               func.sum(c.quantity).label("quantity"), func.sum(c.amount).label("amount"))
        .select_from(_JOB_JOIN)
        .where(c.posted_period.in_(wanted))
        .group_by(func.grouping_sets(tuple_(*exprs, c.currency),
                                     tuple_(*exprs, c.currency, c.resource, c.unit)))
        .order_by(*(expr.asc().nulls_last() for expr in exprs), c.currency,
                  literal_column("is_total").desc(), c.resource, c.unit)
    )
    if cluster is not None:
        stmt = stmt.where(c.cluster == cluster)
    allowed = _accounts(accounts)
    if allowed is not None:
        stmt = stmt.where(_JOBS.c.account.in_(allowed))
    rows: dict[tuple[Any, ...], ReportRow] = {}
    for r in session.execute(stmt):
        values = tuple(r[i] for i in range(len(exprs)))
        key = (values, r.currency)
        if r.is_total:
            rows[key] = ReportRow(group=dict(zip((n for n, _ in groups), values)),
                                  currency=r.currency, jobs=int(r.jobs), amount=r.amount)
        else:
            rows[key].resources[r.resource] = ResourceTotal(r.quantity, r.unit, r.amount)
    return list(rows.values())


__all__ = [
    "JobPosition",
    "LastPoll",
    "begin_read",
    "database_unavailable",
    "job_page",
    "jobs_by_raw_id",
    "last_ok_poll",
    "last_poll",
    "ping",
    "report_range",
]
