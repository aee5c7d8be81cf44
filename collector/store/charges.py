"""Charge lines: writing a batch of jobs' lines (``replace_charges``) and reading lines back.

``replace_charges`` makes the open-period lines of a batch of jobs equal to the lines
given, writing nothing for jobs whose lines are unchanged; lines in closed periods are
never touched. ``frozen_lines`` and ``job_charges`` read lines back as ChargeLine;
``job_keys_in_range`` names the jobs a reprice prices again. How the writer works:
docs/design/store.md. Like every store function these never commit.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    DateTime,
    Text,
    and_,
    bindparam,
    exists,
    func,
    select,
)
from sqlalchemy.orm import Session

from billing.records import ChargeLine, resource_unit
from collector.store.copytext import (
    AMOUNT,
    QUANTITY,
    RATE,
    copy_lines,
    copy_text,
    decimal_text,
)
from collector.store.db import raw_cursor
from collector.store.errors import ChargeValueError, ClosedPeriodError
from collector.store.models import CHARGE_BASES, CHARGE_KINDS, BillingPeriod, Charge, Job, RateCard, table_of
from collector.store.periods import check_period, closed_periods
from collector.store.rate_cards import card_ids
from collector.store.rollups import SQL_CREATE_DELTA, record_deltas

JobKey = tuple[str, int, datetime]

_CHARGES = table_of(Charge)
_JOBS = table_of(Job)
_CARDS = table_of(RateCard)
_PERIODS = table_of(BillingPeriod)


def _aware(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _key_match(a: str, b: str) -> str:
    return (f"{a}.cluster = {b}.cluster AND {a}.job_id_raw = {b}.job_id_raw"
            f" AND {a}.submit_time = {b}.submit_time")


# ------------------------------------------------------------------- reading lines

_LINE_COLUMNS = (
    _CHARGES.c.cluster, _CHARGES.c.job_id_raw, _CHARGES.c.submit_time,
    _CHARGES.c.usage_period, _CHARGES.c.posted_period, _CHARGES.c.resource,
    _CHARGES.c.quantity, _CHARGES.c.unit, _CHARGES.c.rate, _CHARGES.c.amount,
    _CHARGES.c.currency, _CHARGES.c.rule, _CARDS.c.version, _CHARGES.c.basis,
    _CHARGES.c.kind,
)
# (Lines have no surrogate id since 0011: the order is by every attribute that can tell
# two lines of one job apart.)
_LINE_ORDER = (_CHARGES.c.usage_period, _CHARGES.c.posted_period, _CHARGES.c.resource,
               _CHARGES.c.kind, _CHARGES.c.rule, _CHARGES.c.basis, _CHARGES.c.rate,
               _CHARGES.c.amount)


def _charge_lines(rows: Iterable[Sequence[Any]]) -> Iterator[ChargeLine]:
    """ChargeLines from rows of ``_LINE_COLUMNS`` (positional: Row attribute access
    costs more than building the dataclass)."""
    for (cluster, job_id_raw, submit, usage_period, posted_period, resource, quantity,
         unit, rate, amount, currency, rule, version, basis, kind) in rows:
        yield ChargeLine(cluster=cluster, job_id_raw=job_id_raw,
                         submit=submit.astimezone(UTC), usage_period=usage_period,
                         posted_period=posted_period, resource=resource, quantity=quantity,
                         unit=unit, rate=rate, amount=amount, currency=currency, rule=rule,
                         rate_card=version, basis=basis, kind=kind)


def _lines_select() -> Any:
    return select(*_LINE_COLUMNS).select_from(
        _CHARGES.join(_CARDS, _CARDS.c.id == _CHARGES.c.rate_card_id))


def _unique_keys(keys: Iterable[JobKey]) -> dict[JobKey, JobKey]:
    """The keys, deduplicated, each normalised to (cluster, int id, aware UTC submit).

    Aware datetimes compare and hash by instant, so a key given in another zone finds
    the same entry (and a naive datetime finds none).
    """
    out: dict[JobKey, JobKey] = {}
    for key in keys:
        try:
            cluster, job_id_raw, submit = key
        except (TypeError, ValueError):
            raise ChargeValueError(
                f"a job key is (cluster, job_id_raw, submit), got {key!r}") from None
        if not isinstance(cluster, str) or isinstance(job_id_raw, bool) or not isinstance(
                job_id_raw, int):
            raise ChargeValueError(f"bad job key {key!r}")
        norm = (cluster, job_id_raw, _aware(submit, "job key submit"))
        out.setdefault(norm, norm)
    return out


def frozen_lines(session: Session, keys: Iterable[JobKey]) -> dict[JobKey, list[ChargeLine]]:
    """The stored lines of these jobs that are posted in CLOSED periods.

    Only jobs that have such lines are in the result. Each list is ordered by usage
    period, posted period, resource, kind and insertion. ``rate_card`` is the card's
    version string, so the lines equal the ChargeLines that were stored (quantities
    rounded to 6 decimals). A read: the keys go in as arrays, no temp table.
    """
    return _keyed_lines(session, keys,
                        exists().where(_PERIODS.c.period == _CHARGES.c.posted_period))


def open_corrections(session: Session,
                     keys: Iterable[JobKey]) -> dict[JobKey, list[ChargeLine]]:
    """The stored correction lines of these jobs posted in OPEN periods (those a new
    pricing replaces), as ``frozen_lines`` returns lines: what tells a correction that is
    posted again, unchanged, from a new one (the audit trail records new ones)."""
    return _keyed_lines(session, keys, and_(
        _CHARGES.c.kind == "correction",
        ~exists().where(_PERIODS.c.period == _CHARGES.c.posted_period)))


def _keyed_lines(session: Session, keys: Iterable[JobKey],
                 condition: ColumnElement[bool]) -> dict[JobKey, list[ChargeLine]]:
    unique = list(_unique_keys(keys))
    if not unique:
        return {}
    k = select(
        func.unnest(bindparam("c", [c for c, _, _ in unique], type_=ARRAY(Text)))
        .label("cluster"),
        func.unnest(bindparam("i", [i for _, i, _ in unique], type_=ARRAY(BigInteger)))
        .label("job_id_raw"),
        func.unnest(bindparam("s", [s for _, _, s in unique],
                              type_=ARRAY(DateTime(timezone=True)))).label("submit_time"),
    ).subquery("k")
    stmt = (
        _lines_select()
        .join(k, and_(k.c.cluster == _CHARGES.c.cluster,
                      k.c.job_id_raw == _CHARGES.c.job_id_raw,
                      k.c.submit_time == _CHARGES.c.submit_time))
        .where(condition)
        .order_by(_CHARGES.c.cluster, _CHARGES.c.job_id_raw, _CHARGES.c.submit_time,
                  *_LINE_ORDER)
    )
    out: dict[JobKey, list[ChargeLine]] = {}
    for line in _charge_lines(session.execute(stmt).all()):
        key = line.job_key
        found = out.get(key)
        if found is None:
            out[key] = [line]
        else:
            found.append(line)
    return out


def job_charges(session: Session, key: JobKey) -> list[ChargeLine]:
    """Every line of one job (open and closed periods, charges and corrections)."""
    cluster, job_id_raw, submit = next(iter(_unique_keys([key])))
    stmt = (_lines_select()
            .where(_CHARGES.c.cluster == cluster, _CHARGES.c.job_id_raw == job_id_raw,
                   _CHARGES.c.submit_time == submit)
            .order_by(*_LINE_ORDER))
    return list(_charge_lines(session.execute(stmt).all()))


# ---------------------------------------------------------------------- replacing

@dataclass(frozen=True, slots=True)
class ChargeCounts:
    """What ``replace_charges`` did: lines deleted and inserted, and how many of the
    given jobs were found unchanged (nothing written for them)."""

    deleted: int = 0
    inserted: int = 0
    unchanged_jobs: int = 0

    def __add__(self, other: ChargeCounts) -> ChargeCounts:
        if not isinstance(other, ChargeCounts):
            return NotImplemented
        return ChargeCounts(self.deleted + other.deleted, self.inserted + other.inserted,
                            self.unchanged_jobs + other.unchanged_jobs)


_KEY_COLUMNS = ("cluster", "job_id_raw", "submit_time")
# In COPY order: the job's key, the columns that repeat across lines (encoded once per
# distinct combination), then the three numbers.
_STAGE_LINE_COLUMNS = (
    "cluster", "job_id_raw", "submit_time",
    "usage_period", "posted_period", "resource", "unit", "currency", "rule", "rate_card_id",
    "basis", "kind",
    "quantity", "rate", "amount")

if set(_STAGE_LINE_COLUMNS) | {"run_id", "created_at", "cluster_id", "usage_month",
                               "posted_month"} != set(_CHARGES.columns.keys()):
    raise RuntimeError("charge_lines columns and replace_charges' stage columns disagree")


def _stage_name(prefix: str, columns: Sequence[str]) -> str:
    # The digest of the column list: a pooled connection that outlives a schema change
    # never uses a stale stage (same scheme as jobs.JobWriter).
    return prefix + hashlib.blake2b(",".join(columns).encode(), digest_size=4).hexdigest()


_STAGE_KEYS = _stage_name("hpcb_stage_charge_keys_", _KEY_COLUMNS)
_STAGE_LINES = _stage_name("hpcb_stage_charge_lines_", _STAGE_LINE_COLUMNS)

# Column types come from charge_lines itself (CREATE TABLE AS keeps numeric(p, s)), so
# staged values are rounded exactly as stored ones. ON COMMIT DELETE ROWS empties the
# stages at commit; a rollback of the creating transaction drops them, hence IF NOT EXISTS.
_SQL_CREATE_STAGES = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE_KEYS} ON COMMIT DELETE ROWS AS"
    f" SELECT {', '.join(_KEY_COLUMNS)} FROM charge_lines WITH NO DATA;"
    f" CREATE TEMP TABLE IF NOT EXISTS {_STAGE_LINES} ON COMMIT DELETE ROWS AS"
    f" SELECT {', '.join(_STAGE_LINE_COLUMNS)} FROM charge_lines WITH NO DATA;"
    f" TRUNCATE {_STAGE_KEYS}, {_STAGE_LINES}"
)
_SQL_COPY_KEYS = f"COPY {_STAGE_KEYS} ({', '.join(_KEY_COLUMNS)}) FROM STDIN (FORMAT text)"
_SQL_COPY_LINES = (f"COPY {_STAGE_LINES} ({', '.join(_STAGE_LINE_COLUMNS)}) "
                   "FROM STDIN (FORMAT text)")
# Temp tables are never auto-analyzed; with statistics the planner picks hash joins for
# large batches and index probes for small ones.
_SQL_ANALYZE = f"ANALYZE {_STAGE_KEYS}, {_STAGE_LINES}"


def _canon(alias: str) -> str:
    """The canonical text of one line: the row of every compared column as record text
    (which quotes any value holding a comma, quote, parenthesis, backslash or space, so
    different lines never render alike). Numerics render at their column's fixed scale;
    text is sorted bytewise ("C")."""
    cols = ("usage_period", "posted_period", "resource", "quantity", "unit", "rate",
            "amount", "currency", "rule", "rate_card_id", "basis", "kind")
    return f"ROW({', '.join(f'{alias}.{c}' for c in cols)})::text COLLATE \"C\""


_OPEN = "NOT EXISTS (SELECT 1 FROM billing_periods p WHERE p.period = {a}.posted_period)"
_OPEN_ROW = ("NOT EXISTS (SELECT 1 FROM billing_periods p"
             " WHERE p.period = to_char({a}.posted_month, 'YYYY-MM'))")
_PRICE_ROW = ("ROW({t}.rate_card_id, {t}.rule, {t}.resource, {t}.unit, {t}.basis, {t}.kind,"
              " {t}.rate, {t}.currency)::text")
# The compact store (0011): the staged lines' prices (a dimension) and usage months (the
# partitions of charge_rows) exist before the lines are written.
_SQL_ENSURE_PRICES = (
    "INSERT INTO prices (rate_card_id, rule, resource, unit, basis, kind, rate, currency)"
    " SELECT DISTINCT s.rate_card_id, s.rule, s.resource, s.unit, s.basis, s.kind, s.rate,"
    f" s.currency FROM {_STAGE_LINES} s WHERE NOT EXISTS (SELECT 1 FROM prices p"
    f" WHERE {_PRICE_ROW.format(t='p')} = {_PRICE_ROW.format(t='s')}) ON CONFLICT DO NOTHING")
_SQL_PARTITIONS = (
    "SELECT hpcb_month_partition('charge_rows', to_date(p, 'YYYY-MM'))"
    f" FROM (SELECT DISTINCT usage_period AS p FROM {_STAGE_LINES}) x")
_ROW_KEY_MATCH = ("{a}.cluster_id = {b}.cluster_id AND {a}.job_id_raw = {b}.job_id_raw"
                  " AND {a}.submit_time = {b}.submit_time")

# Per job, the canonical digest of its stored open-period lines and of its staged lines;
# the jobs whose digests differ get their open-period lines deleted and the staged ones
# inserted. What was deleted and inserted goes into the rollup deltas with the job's
# assoc (collector.store.rollups). A staged line whose job is not stored (no foreign key
# any more) is counted as an orphan and refused by the caller.
_SQL_REPLACE = (
    "WITH old AS ("
    f" SELECT c.cluster, c.job_id_raw, c.submit_time,"
    f" md5(string_agg({_canon('c')}, E'\\n' ORDER BY {_canon('c')})) AS digest"
    f" FROM {_STAGE_KEYS} k JOIN charge_lines c ON {_key_match('c', 'k')}"
    f" WHERE {_OPEN.format(a='c')}"
    " GROUP BY c.cluster, c.job_id_raw, c.submit_time"
    "), new AS ("
    f" SELECT s.cluster, s.job_id_raw, s.submit_time,"
    f" md5(string_agg({_canon('s')}, E'\\n' ORDER BY {_canon('s')})) AS digest"
    f" FROM {_STAGE_LINES} s"
    " GROUP BY s.cluster, s.job_id_raw, s.submit_time"
    "), changed AS MATERIALIZED ("
    " SELECT k.cluster, cl.id AS cluster_id, k.job_id_raw, k.submit_time"
    f" FROM {_STAGE_KEYS} k JOIN clusters cl ON cl.name = k.cluster"
    f" LEFT JOIN old o ON {_key_match('o', 'k')}"
    f" LEFT JOIN new n ON {_key_match('n', 'k')}"
    " WHERE o.digest IS DISTINCT FROM n.digest"
    "), deleted AS ("
    f" DELETE FROM charge_rows l USING changed x WHERE {_ROW_KEY_MATCH.format(a='l', b='x')}"
    f" AND {_OPEN_ROW.format(a='l')}"
    " RETURNING l.*"
    "), inserted AS ("
    " INSERT INTO charge_rows (job_id_raw, submit_time, quantity_micro, amount_micro,"
    " usage_month, posted_month, price_id, cluster_id)"
    " SELECT s.job_id_raw, s.submit_time, (s.quantity * 1000000)::bigint,"
    " (s.amount * 1000000)::bigint, to_date(s.usage_period, 'YYYY-MM'),"
    " to_date(s.posted_period, 'YYYY-MM'), p.id, x.cluster_id"
    f" FROM {_STAGE_LINES} s JOIN changed x ON {_key_match('s', 'x')}"
    f" JOIN prices p ON {_PRICE_ROW.format(t='p')} = {_PRICE_ROW.format(t='s')}"
    " RETURNING *"
    "), moved AS ("
    " SELECT d.*, -1 AS sign FROM deleted d UNION ALL SELECT i.*, 1 FROM inserted i"
    "), delta AS ("
    " INSERT INTO hpcb_rollup_delta SELECT m.posted_month, m.cluster_id, j.assoc_id,"
    " m.price_id, m.job_id_raw, m.submit_time, m.quantity_micro, m.amount_micro, m.sign"
    f" FROM moved m JOIN job_rows j ON {_ROW_KEY_MATCH.format(a='j', b='m')}"
    " RETURNING 1"
    ")"
    " SELECT (SELECT count(*) FROM changed), (SELECT count(*) FROM deleted),"
    f" (SELECT count(*) FROM inserted), (SELECT count(*) FROM {_STAGE_KEYS}),"
    " (SELECT count(*) FROM moved) - (SELECT count(*) FROM delta)"
)


_LINE_KEY = operator.attrgetter("cluster", "job_id_raw", "submit")    # ChargeLine.job_key
# The columns that repeat across a batch's lines (a line's "combination").
_COMBO = operator.attrgetter("usage_period", "posted_period", "resource", "unit", "currency",
                             "rule", "rate_card", "basis", "kind")
_KINDS = frozenset(CHARGE_KINDS)
_BASES = frozenset(CHARGE_BASES)


def _encode_attributes(line: ChargeLine, card: tuple[int, str]) -> str:
    """The repeating middle columns of a line's COPY row (usage_period ... kind),
    validated; callers cache the result per distinct combination."""
    card_id, card_currency = card
    if line.currency != card_currency:
        raise ChargeValueError(
            f"line in {line.currency!r} priced by rate card {line.rate_card!r}, "
            f"whose currency is {card_currency!r}")
    try:
        expected_unit = resource_unit(line.resource)
    except (KeyError, AttributeError):
        raise ChargeValueError(f"unknown resource {line.resource!r}") from None
    if line.unit != expected_unit:
        raise ChargeValueError(
            f"resource {line.resource!r} is measured in {expected_unit!r}, not {line.unit!r}")
    if line.kind not in _KINDS:
        raise ChargeValueError(f"kind must be one of {CHARGE_KINDS}, got {line.kind!r}")
    if line.basis not in _BASES:
        raise ChargeValueError(f"basis must be one of {CHARGE_BASES}, got {line.basis!r}")
    check_period(line.usage_period)
    check_period(line.posted_period)
    if not line.currency or not line.rule:
        raise ChargeValueError(f"currency and rule must be non-empty: {line!r}")
    return "\t".join((line.usage_period, line.posted_period, copy_text(line.resource),
                      line.unit, copy_text(line.currency), copy_text(line.rule),
                      str(card_id), line.basis, line.kind))


def replace_charges(session: Session, keys: Iterable[JobKey], lines: Iterable[ChargeLine],
                    *, run_id: int | None, rate_card_ids: Mapping[str, int],
                    new_jobs: bool = False) -> ChargeCounts:
    """Make the OPEN-period lines of the jobs ``keys`` equal to ``lines``.

    For each job in ``keys``: its stored lines posted in closed periods are kept as they
    are; its stored lines posted in open periods are replaced by its lines in ``lines``
    (none: they are deleted), unless they are equal already, in which case nothing is
    written for that job (see the module docstring: per-job digests, computed in SQL).
    ``run_id`` is validated only: since 0011 a line shows the run that last wrote its job
    (``jobs.last_run_id``).

    Refuses, before writing anything: a line whose job is not in ``keys`` (its old lines
    would not be replaced), a line posted in a closed period (``ClosedPeriodError``), and
    values that cannot be stored exactly (``ChargeValueError``). ``rate_card_ids`` maps
    card versions to ids (from ``ensure_rate_card``); versions missing from it are looked
    up, and a wrong id is refused.

    Bulk: two COPYs into TEMP stage tables and one statement per call, whatever the
    number of jobs. Never commits.

    ``new_jobs``: the caller inserted these jobs in this transaction (``JobWriter``'s
    ``on_inserted``); accepted for the interface, the lines take the same path (a new
    job's stored digest is simply empty).
    """
    unique = _unique_keys(keys)
    if not unique:
        lines = list(lines)
        if lines:
            raise ChargeValueError("lines given without their job keys")
        return ChargeCounts()
    if isinstance(run_id, bool) or (run_id is not None and not isinstance(run_id, int)):
        raise ChargeValueError(f"run_id must be an int or None, got {run_id!r}")

    # Closing a period (an INSERT: ROW EXCLUSIVE) conflicts with SHARE: the set of
    # closed periods read next cannot change until this transaction ends.
    closed = closed_periods(session, lock=True)

    lines = list(lines)
    for line in lines:
        if not isinstance(line, ChargeLine):
            raise ChargeValueError(f"expected a ChargeLine, got {line!r}")
    cards = card_ids(session, {line.rate_card for line in lines}, rate_card_ids)

    # COPY text of each job's key, then of each distinct attribute combination: a batch
    # has few of those (periods x resources x rules), so each is validated once.
    prefixes = {k: f"{copy_text(k[0])}\t{k[1]}\t{k[2].isoformat()}\t" for k in unique}
    attributes: dict[tuple[Any, ...], str] = {}
    rates: dict[Decimal, str] = {}      # a batch has few distinct rates: each encoded once
    encoded: list[str] = []
    in_closed: set[str] = set()
    with_lines: set[JobKey] = set()     # the jobs that have lines (new_jobs counts them)
    for line in lines:
        key = _LINE_KEY(line)
        prefix = prefixes.get(key)
        if prefix is None:
            raise ChargeValueError(
                f"line for job {line.job_key!r} whose key is not in keys: {line!r}")
        with_lines.add(key)
        combo = _COMBO(line)
        middle = attributes.get(combo)
        if middle is None:
            middle = attributes[combo] = _encode_attributes(line, cards[line.rate_card])
            if line.posted_period in closed:
                in_closed.add(line.posted_period)
        rate = line.rate
        rate_text = rates.get(rate) if type(rate) is Decimal else None
        if rate_text is None:
            rate_text = decimal_text(rate, 'rate', RATE, True)
            if type(rate) is Decimal:
                rates[rate] = rate_text
        encoded.append(
            f"{prefix}{middle}\t{decimal_text(line.quantity, 'quantity', QUANTITY, False)}"
            f"\t{rate_text}\t{decimal_text(line.amount, 'amount', AMOUNT, True)}\n")
    if in_closed:
        raise ClosedPeriodError(in_closed, "replace_charges would post lines in a closed period")

    key_lines = (prefix[:-1] + "\n" for prefix in prefixes.values())
    with raw_cursor(session, "the charge store") as cur:
        cur.execute(_SQL_CREATE_STAGES)
        copy_lines(cur, _SQL_COPY_KEYS, key_lines)
        copy_lines(cur, _SQL_COPY_LINES, encoded)
        cur.execute(_SQL_ANALYZE)
        cur.execute(_SQL_ENSURE_PRICES)
        cur.execute(_SQL_PARTITIONS)
        cur.execute(SQL_CREATE_DELTA)
        cur.execute(_SQL_REPLACE)
        row = cur.fetchone()
        assert row is not None   # the statement always returns its one row of counts
        changed, deleted, inserted, total, orphans = row
    if orphans:
        raise ChargeValueError(f"{orphans} charge lines of jobs that are not stored")
    record_deltas(session)
    return ChargeCounts(deleted=int(deleted), inserted=int(inserted),
                        unchanged_jobs=int(total) - int(changed))


# ------------------------------------------------------------------------- reprice

def job_keys_in_range(session: Session, since: datetime, until: datetime,
                      cluster: str | None = None,
                      yield_per: int = 5_000) -> Iterator[JobKey]:
    """Keys of the jobs whose run [start, end) overlaps [since, until): started before
    ``until`` and not ended by ``since`` (still running counts; a zero-length run that
    started in the range counts too); never-started jobs count when submitted in the
    range. Ordered by cluster, submit time, job_id_raw; streamed.
    """
    since, until = _aware(since, "since"), _aware(until, "until")
    if until <= since:
        raise ValueError(f"empty range: until {until} is not after since {since}")
    j = _JOBS.c
    started = and_(j.start_time.is_not(None), j.start_time < until,
                   (j.end_time.is_(None)) | (j.end_time > since) | (j.start_time >= since))
    never_started = and_(j.start_time.is_(None), j.submit_time >= since,
                         j.submit_time < until)
    stmt = (select(j.cluster, j.job_id_raw, j.submit_time)
            .where(started | never_started)
            .order_by(j.cluster, j.submit_time, j.job_id_raw))
    if cluster is not None:
        stmt = stmt.where(j.cluster == cluster)
    result = session.execute(stmt.execution_options(yield_per=yield_per))
    try:
        for r in result:
            yield (r.cluster, r.job_id_raw, r.submit_time.astimezone(UTC))
    finally:
        result.close()
