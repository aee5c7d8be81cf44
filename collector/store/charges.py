"""Charges: rate-card versions, charge lines, closed billing periods, reports and budgets.

This module owns how ``billing.records.ChargeLine`` values get into ``charge_lines`` and
back out, and the tables around them (revision 0002):

- ``ensure_rate_card`` / ``list_rate_cards``: immutable rate-card versions (content hash).
- ``close_period`` / ``closed_periods`` / ``list_periods``: a closed period is never
  rewritten (DESIGN.md §5). Only closed periods have a row in ``billing_periods``.
- ``replace_charges``: the bulk, idempotent writer of a batch of jobs' lines (below).
- ``frozen_lines`` / ``job_charges``: lines read back as ``ChargeLine``.
- ``charge_report`` / ``statement_lines``: what finance bills, by POSTED period; the
  report reads the daily rollups of revision 0007 (``refresh_rollups`` keeps them, the
  writer calls it before committing) and falls back to the lines while any is stale.
- ``set_budget`` / ``list_budgets``: account budgets and how much of each is used.
- ``job_keys_in_range``: the jobs a ``reprice`` of a time range must price again.

How ``replace_charges`` writes (one batch, all in the caller's transaction):

1. ``LOCK TABLE billing_periods IN SHARE MODE``: ``close_period`` (an INSERT, ROW
   EXCLUSIVE) waits until this transaction ends, so no period closes between the check
   below and the commit. Concurrent writers do not block each other (SHARE/SHARE). A
   planner that computes corrections takes the same lock earlier, with
   ``closed_periods(session, lock=True)``.
2. Every line is checked in Python: its job is one of ``keys``, its posted period is open
   (else ``ClosedPeriodError``), its amount and rate fit their columns exactly (money is
   never rounded silently), its unit is the resource's unit, its card version is known
   and its currency is the card's.
3. The keys and the lines are COPYed into two session-local TEMP stage tables whose column
   types come from ``charge_lines`` itself; so the stage rounds ``quantity`` exactly like
   the table does.
4. One statement then computes, per job, an md5 digest of the sorted record texts of its
   lines, ``ROW(usage_period, posted_period, resource, quantity, unit, rate, amount,
   currency, rule, rate_card_id, basis, kind)::text`` (everything but id, run_id and
   created_at; record text quotes values, so distinct lines never render alike), once over
   the stored lines in OPEN periods and once over the staged lines. Both sides are
   rendered from the same column types, so equal lines give equal text (``1.5`` and
   ``1.500000`` are the same numeric(24, 6)). Only jobs whose digests differ have their
   open lines deleted and the new ones inserted; a re-poll of unchanged jobs writes no
   row version at all (same ids, same xmin, same run_id, no WAL for the table). Whether
   a job changed is decided per job, so a job's open lines are replaced all together.

Quantities are stored to 6 decimals, rounded half away from zero (PostgreSQL's numeric
rounding); a ChargeLine with more decimals reads back rounded, and compares unchanged
with itself on the next replace. Amounts (6 decimals) and rates (9 decimals) must fit
exactly or ``ChargeValueError`` is raised.

Like every store function these never commit.
"""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    DateTime,
    Text,
    and_,
    bindparam,
    distinct,
    exists,
    func,
    literal_column,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from billing.records import ChargeLine, resource_unit
from collector.store.copytext import LinesReader, escape
from collector.store.models import (
    CHARGE_BASES,
    CHARGE_KINDS,
    BillingPeriod,
    Budget,
    Charge,
    ChargeRollupDaily,
    ChargeRollupDailyJobs,
    ChargeRollupDirty,
    Job,
    RateCard,
)

UTC = timezone.utc

JobKey = tuple[str, int, datetime]

_CHARGES = Charge.__table__
_JOBS = Job.__table__
_CARDS = RateCard.__table__
_PERIODS = BillingPeriod.__table__
_BUDGETS = Budget.__table__
_ROLLUP = ChargeRollupDaily.__table__
_ROLLUP_JOBS = ChargeRollupDailyJobs.__table__
_DIRTY = ChargeRollupDirty.__table__


# ------------------------------------------------------------------------------ errors

class ChargeStoreError(ValueError):
    """A value the charge store refuses (base class of the errors below)."""


class InvalidPeriodError(ChargeStoreError):
    """A billing period that is not 'YYYY-MM' (month 01-12)."""


class ClosedPeriodError(ChargeStoreError):
    """A write would change a closed billing period."""

    def __init__(self, periods: Iterable[str], what: str) -> None:
        self.periods = tuple(sorted(set(periods)))
        super().__init__(f"{what}: billing period(s) {', '.join(self.periods)} are closed "
                         "and are never changed (post a correction in an open period)")


class ChargeValueError(ChargeStoreError):
    """A charge line or budget that cannot be stored as given."""


# ----------------------------------------------------------------------------- helpers

_PERIOD_RE = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")


def check_period(period: object) -> str:
    """``period`` if it is a billing period 'YYYY-MM', else ``InvalidPeriodError``."""
    if not isinstance(period, str) or _PERIOD_RE.fullmatch(period) is None:
        raise InvalidPeriodError(
            f"billing period must be 'YYYY-MM' with month 01-12, got {period!r}")
    return period


def _aware(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _dbapi_cursor(session: Session) -> Any:
    dbapi_conn = session.connection().connection.dbapi_connection
    if dbapi_conn is None or not hasattr(dbapi_conn, "cursor"):  # pragma: no cover
        raise RuntimeError("the charge store needs a live psycopg2 connection")
    cur = dbapi_conn.cursor()
    if not hasattr(cur, "copy_expert"):
        cur.close()
        raise TypeError("the charge store needs the psycopg2 driver (postgresql+psycopg2://)")
    return cur


def _key_match(a: str, b: str) -> str:
    return (f"{a}.cluster = {b}.cluster AND {a}.job_id_raw = {b}.job_id_raw"
            f" AND {a}.submit_time = {b}.submit_time")


# Column scales of charge_lines (models.Charge) and budgets: (integer digits, decimals).
_AMOUNT = (14, 6)        # numeric(20, 6)
_RATE = (11, 9)          # numeric(20, 9)
_QUANTITY = (18, 6)      # numeric(24, 6)


def _decimal(value: object, what: str, scale: tuple[int, int], exact: bool) -> str:
    """``value`` as plain decimal text for COPY, or ``ChargeValueError``.

    With ``exact``, the value must have at most the column's decimals (money is never
    rounded here; trailing zeros are fine); without, the column rounds (quantities).
    Works on the formatted text: one ``format`` per value, no Decimal arithmetic.
    """
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int) and not isinstance(value, bool):
        number = Decimal(value)
    else:
        # float would carry binary noise into money; bool is an int subclass.
        raise ChargeValueError(f"{what} must be a Decimal, got {value!r}")
    if not number.is_finite():
        raise ChargeValueError(f"{what} must be finite, got {number}")
    digits, places = scale
    out = format(number, "f")
    dot = out.find(".")
    if dot < 0:
        dot = len(out)
    elif exact and len(out) - dot - 1 > places:
        if out[dot + 1 + places:].strip("0"):
            raise ChargeValueError(
                f"{what} {number} has more than {places} decimals; round it before "
                "storing (the store never rounds money)")
        out = out[:dot + 1 + places]
    if dot - (out[0] == "-") > digits:
        raise ChargeValueError(f"{what} {number} does not fit numeric("
                               f"{digits + places}, {places})")
    return out


def _copy_text(value: str) -> str:
    """COPY text-format escaping; NUL (which text cannot hold) becomes U+FFFD."""
    if not isinstance(value, str):
        raise ChargeValueError(f"expected text, got {value!r}")
    return escape(value)


# ------------------------------------------------------------------------- rate cards

@dataclass(frozen=True, slots=True)
class RateCardInfo:
    """One stored rate-card version and how many charge lines reference it."""

    id: int
    version: str
    currency: str
    loaded_at: datetime
    source: str
    text: str
    lines: int


def ensure_rate_card(session: Session, *, version: str, currency: str, text: str,
                     source: str) -> int:
    """The id of rate-card ``version``, inserting it when new.

    A card is immutable: when ``version`` is stored already its row is kept as it is
    (first ``source`` and ``loaded_at`` win), but a different currency or text under the
    same version (a content hash) is refused with ``ChargeValueError``.
    """
    for what, value in (("version", version), ("currency", currency), ("source", source)):
        if not isinstance(value, str) or not value:
            raise ChargeValueError(f"rate card {what} must be a non-empty string, "
                                   f"got {value!r}")
    if not isinstance(text, str):
        raise ChargeValueError(f"rate card text must be a string, got {text!r}")
    inserted = session.execute(
        pg_insert(_CARDS)
        .values(version=version, currency=currency, text=text, source=source)
        .on_conflict_do_nothing(index_elements=[_CARDS.c.version])
        .returning(_CARDS.c.id)
    ).scalar_one_or_none()
    if inserted is not None:
        return int(inserted)
    # Another transaction may have inserted it: ON CONFLICT waited for it, and this new
    # statement (READ COMMITTED) sees its row.
    row = session.execute(
        select(_CARDS.c.id, _CARDS.c.currency, _CARDS.c.text)
        .where(_CARDS.c.version == version)
    ).one()
    if row.currency != currency or row.text != text:
        raise ChargeValueError(
            f"rate card version {version!r} is stored with a different "
            f"{'currency' if row.currency != currency else 'text'}; a version is the "
            "content hash of the card and never changes")
    return int(row.id)


def list_rate_cards(session: Session) -> list[RateCardInfo]:
    """Every stored rate card, newest first, with its number of charge lines.

    The line counts scan ``charge_lines`` once (an admin listing, not a hot path).
    """
    counts = (select(_CHARGES.c.rate_card_id, func.count().label("n"))
              .group_by(_CHARGES.c.rate_card_id).subquery())
    stmt = (
        select(_CARDS, func.coalesce(counts.c.n, 0).label("lines"))
        .select_from(_CARDS.outerjoin(counts, counts.c.rate_card_id == _CARDS.c.id))
        .order_by(_CARDS.c.loaded_at.desc(), _CARDS.c.id.desc())
    )
    return [
        RateCardInfo(id=r.id, version=r.version, currency=r.currency,
                     loaded_at=r.loaded_at.astimezone(UTC), source=r.source, text=r.text,
                     lines=int(r.lines))
        for r in session.execute(stmt)
    ]


def _card_ids(session: Session, versions: set[str],
              given: Mapping[str, int]) -> dict[str, tuple[int, str]]:
    """version -> (id, currency) for ``versions``. The caller's mapping is checked
    against the table (a wrong id would attribute lines to the wrong card); versions
    missing from it are looked up."""
    if not versions:
        return {}
    rows = session.execute(
        select(_CARDS.c.version, _CARDS.c.id, _CARDS.c.currency)
        .where(_CARDS.c.version.in_(sorted(versions)))
    ).all()
    stored = {version: (int(card_id), currency) for version, card_id, currency in rows}
    unknown = versions - stored.keys()
    if unknown:
        raise ChargeValueError(
            f"rate card version(s) {', '.join(sorted(unknown))} are not stored; "
            "call ensure_rate_card first")
    for version in versions:
        if version in given and int(given[version]) != stored[version][0]:
            raise ChargeValueError(
                f"rate_card_ids maps {version!r} to id {given[version]}, but its id is "
                f"{stored[version][0]}")
    return stored


# -------------------------------------------------------------------------- periods

@dataclass(frozen=True, slots=True)
class PeriodInfo:
    """A billing period that is closed or has lines posted in it."""

    period: str
    closed: bool
    closed_at: datetime | None = None
    closed_by: str | None = None
    note: str | None = None


_SQL_LOCK_PERIODS = text("LOCK TABLE billing_periods IN SHARE MODE")


def closed_periods(session: Session, *, lock: bool = False) -> frozenset[str]:
    """Every closed billing period.

    With ``lock``, first take the SHARE lock that ``replace_charges`` takes: no period
    can close until the caller's transaction ends, so lines planned against this set
    (corrections for closed periods) are still valid when they are written. Without it,
    a period closed in between makes ``replace_charges`` raise ``ClosedPeriodError``.
    """
    if lock:
        session.execute(_SQL_LOCK_PERIODS)
    return frozenset(session.execute(select(_PERIODS.c.period)).scalars())


def close_period(session: Session, period: str, *, by: str,
                 note: str | None = None) -> PeriodInfo:
    """Close ``period`` ('YYYY-MM'); returns it as stored.

    Idempotent: closing a closed period changes nothing (the first ``closed_at``,
    ``closed_by`` and ``note`` stay). Waits for transactions inside ``replace_charges``
    to end (they hold a SHARE lock on ``billing_periods``), so nothing writes a period
    after it closed.
    """
    check_period(period)
    if not isinstance(by, str) or not by:
        raise ChargeStoreError(f"close_period needs who closes it (by=...), got {by!r}")
    session.execute(
        pg_insert(_PERIODS).values(period=period, closed_by=by, note=note)
        .on_conflict_do_nothing(index_elements=[_PERIODS.c.period]))
    row = session.execute(select(_PERIODS).where(_PERIODS.c.period == period)).one()
    return PeriodInfo(period=row.period, closed=True, closed_at=row.closed_at.astimezone(UTC),
                      closed_by=row.closed_by, note=row.note)


# Distinct posted periods by a skip scan of ix_charge_lines_posted_period_cluster: one
# index probe per period instead of reading every line.
_SQL_POSTED_PERIODS = text(
    "WITH RECURSIVE p(period) AS ("
    " (SELECT posted_period FROM charge_lines ORDER BY posted_period LIMIT 1)"
    " UNION ALL"
    " SELECT (SELECT c.posted_period FROM charge_lines c WHERE c.posted_period > p.period"
    "         ORDER BY c.posted_period LIMIT 1)"
    " FROM p WHERE p.period IS NOT NULL)"
    " SELECT period FROM p WHERE period IS NOT NULL")


def list_periods(session: Session) -> list[PeriodInfo]:
    """Every period that is closed or has lines posted in it, oldest first."""
    closed = {
        r.period: PeriodInfo(period=r.period, closed=True,
                             closed_at=r.closed_at.astimezone(UTC), closed_by=r.closed_by,
                             note=r.note)
        for r in session.execute(select(_PERIODS))
    }
    periods = dict(closed)
    for period in session.execute(_SQL_POSTED_PERIODS).scalars():
        periods.setdefault(period, PeriodInfo(period=period, closed=False))
    return [periods[p] for p in sorted(periods)]


# ------------------------------------------------------------------- reading lines

_LINE_COLUMNS = (
    _CHARGES.c.cluster, _CHARGES.c.job_id_raw, _CHARGES.c.submit_time,
    _CHARGES.c.usage_period, _CHARGES.c.posted_period, _CHARGES.c.resource,
    _CHARGES.c.quantity, _CHARGES.c.unit, _CHARGES.c.rate, _CHARGES.c.amount,
    _CHARGES.c.currency, _CHARGES.c.rule, _CARDS.c.version, _CHARGES.c.basis,
    _CHARGES.c.kind,
)
_LINE_ORDER = (_CHARGES.c.usage_period, _CHARGES.c.posted_period, _CHARGES.c.resource,
               _CHARGES.c.kind, _CHARGES.c.id)


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
        .where(exists().where(_PERIODS.c.period == _CHARGES.c.posted_period))
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

if set(_STAGE_LINE_COLUMNS) | {"id", "run_id", "created_at"} != set(_CHARGES.columns.keys()):
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
    " SELECT k.cluster, k.job_id_raw, k.submit_time"
    f" FROM {_STAGE_KEYS} k"
    f" LEFT JOIN old o ON {_key_match('o', 'k')}"
    f" LEFT JOIN new n ON {_key_match('n', 'k')}"
    " WHERE o.digest IS DISTINCT FROM n.digest"
    "), deleted AS ("
    f" DELETE FROM charge_lines c USING changed x WHERE {_key_match('c', 'x')}"
    f" AND {_OPEN.format(a='c')}"
    " RETURNING 1"
    "), inserted AS ("
    f" INSERT INTO charge_lines ({', '.join(_STAGE_LINE_COLUMNS)}, run_id)"
    f" SELECT {', '.join('s.' + c for c in _STAGE_LINE_COLUMNS)}, %(run_id)s"
    f" FROM {_STAGE_LINES} s JOIN changed x ON {_key_match('s', 'x')}"
    " RETURNING 1"
    ")"
    " SELECT (SELECT count(*) FROM changed), (SELECT count(*) FROM deleted),"
    f" (SELECT count(*) FROM inserted), (SELECT count(*) FROM {_STAGE_KEYS})"
)

# New jobs' lines go straight into charge_lines (no stage): the same columns plus run_id,
# whose value ends every COPY line.
_SQL_COPY_NEW = (f"COPY charge_lines ({', '.join(_STAGE_LINE_COLUMNS)}, run_id) "
                 "FROM STDIN (FORMAT text)")

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
    return "\t".join((line.usage_period, line.posted_period, _copy_text(line.resource),
                      line.unit, _copy_text(line.currency), _copy_text(line.rule),
                      str(card_id), line.basis, line.kind))


def replace_charges(session: Session, keys: Iterable[JobKey], lines: Iterable[ChargeLine],
                    *, run_id: int | None, rate_card_ids: Mapping[str, int],
                    new_jobs: bool = False) -> ChargeCounts:
    """Make the OPEN-period lines of the jobs ``keys`` equal to ``lines``.

    For each job in ``keys``: its stored lines posted in closed periods are kept as they
    are; its stored lines posted in open periods are replaced by its lines in ``lines``
    (none: they are deleted), unless they are equal already, in which case nothing is
    written for that job (see the module docstring: per-job digests, computed in SQL).
    ``run_id`` is recorded on inserted lines.

    Refuses, before writing anything: a line whose job is not in ``keys`` (its old lines
    would not be replaced), a line posted in a closed period (``ClosedPeriodError``), and
    values that cannot be stored exactly (``ChargeValueError``). ``rate_card_ids`` maps
    card versions to ids (from ``ensure_rate_card``); versions missing from it are looked
    up, and a wrong id is refused.

    Bulk: two COPYs into TEMP stage tables and one statement per call, whatever the
    number of jobs. Never commits.

    ``new_jobs``: the caller inserted these jobs in this transaction (``JobWriter``'s
    ``on_inserted``), so no line of theirs can exist (lines reference their job): the
    lines are COPYed straight into charge_lines, without a stage or digests.
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
    card_ids = _card_ids(session, {line.rate_card for line in lines}, rate_card_ids)

    # COPY text of each job's key, then of each distinct attribute combination: a batch
    # has few of those (periods x resources x rules), so each is validated once.
    prefixes = {k: f"{_copy_text(k[0])}\t{k[1]}\t{k[2].isoformat()}\t" for k in unique}
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
            middle = attributes[combo] = _encode_attributes(line, card_ids[line.rate_card])
            if line.posted_period in closed:
                in_closed.add(line.posted_period)
        rate = line.rate
        rate_text = rates.get(rate) if type(rate) is Decimal else None
        if rate_text is None:
            rate_text = _decimal(rate, 'rate', _RATE, True)
            if type(rate) is Decimal:
                rates[rate] = rate_text
        encoded.append(
            f"{prefix}{middle}\t{_decimal(line.quantity, 'quantity', _QUANTITY, False)}"
            f"\t{rate_text}\t{_decimal(line.amount, 'amount', _AMOUNT, True)}\n")
    if in_closed:
        raise ClosedPeriodError(in_closed, "replace_charges would post lines in a closed period")

    key_lines = (prefix[:-1] + "\n" for prefix in prefixes.values())
    with _dbapi_cursor(session) as cur:
        if new_jobs:
            run_text = "\\N" if run_id is None else str(run_id)
            cur.copy_expert(_SQL_COPY_NEW,
                            LinesReader(f"{line[:-1]}\t{run_text}\n" for line in encoded),
                            size=LinesReader.BULK_CHUNK)
            inserted = cur.rowcount
            changed = len(with_lines)
            deleted, total = 0, len(prefixes)
        else:
            cur.execute(_SQL_CREATE_STAGES)
            cur.copy_expert(_SQL_COPY_KEYS, LinesReader(key_lines), size=LinesReader.CHUNK)
            cur.copy_expert(_SQL_COPY_LINES, LinesReader(encoded), size=LinesReader.BULK_CHUNK)
            cur.execute(_SQL_ANALYZE)
            cur.execute(_SQL_REPLACE, {"run_id": run_id})
            changed, deleted, inserted, total = cur.fetchone()
    return ChargeCounts(deleted=int(deleted), inserted=int(inserted),
                        unchanged_jobs=int(total) - int(changed))


# ------------------------------------------------------------------------- reports

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
    "account": _JOBS.c.account,
    "user": _JOBS.c.user_name,
    "partition": _JOBS.c.partition,
    "qos": _JOBS.c.qos,
    "cluster": _CHARGES.c.cluster,
    "resource": _CHARGES.c.resource,
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


_JOB_JOIN = _CHARGES.join(_JOBS, and_(_JOBS.c.cluster == _CHARGES.c.cluster,
                                      _JOBS.c.job_id_raw == _CHARGES.c.job_id_raw,
                                      _JOBS.c.submit_time == _CHARGES.c.submit_time))


def charge_report(session: Session, *, period: str, group_by: Sequence[str],
                  cluster: str | None = None) -> list[ReportRow]:
    """Charges POSTED in ``period`` (what finance bills; corrections included), summed
    per group of ``group_by`` (a subset of account, user, partition, resource, cluster,
    qos; validated against that whitelist) and per currency: amounts in different
    currencies are never added. Sorted by the group values (None last), then currency.

    Read from the daily rollups (``charge_report_rollup``) when none is stale, else from
    the charge lines themselves (``charge_report_raw``); both give the same rows.
    """
    if session.execute(select(exists().select_from(_DIRTY))).scalar():
        return charge_report_raw(session, period=period, group_by=group_by, cluster=cluster)
    return charge_report_rollup(session, period=period, group_by=group_by, cluster=cluster)


# The report's group names on the rollup tables ('' there is NULL in jobs).
def _rollup_group_by(table: Any) -> dict[str, ColumnElement[Any]]:
    c = table.c
    return {"account": func.nullif(c.account, ""), "user": func.nullif(c.user_name, ""),
            "partition": func.nullif(c.partition, ""), "qos": func.nullif(c.qos, ""),
            "cluster": c.cluster, "resource": c.resource if "resource" in c else None}


def charge_report_rollup(session: Session, *, period: str, group_by: Sequence[str],
                         cluster: str | None = None) -> list[ReportRow]:
    """``charge_report`` from the daily rollups (migration 0007): per-resource sums from
    ``charge_rollup_daily``; group totals (distinct jobs, amount) from
    ``charge_rollup_daily_jobs``, or, when grouping by resource, from the resource rows
    (a job is in one rollup bucket only, so its distinct counts add up). Only valid when
    no bucket is dirty (``charge_report`` checks)."""
    check_period(period)
    names = [name for name, _ in _group_columns(group_by)]
    by_resource = "resource" in names
    fine = _ROLLUP
    totals_table = fine if by_resource else _ROLLUP_JOBS
    fine_exprs = [_rollup_group_by(fine)[n] for n in names]
    total_exprs = [_rollup_group_by(totals_table)[n] for n in names]

    def scoped(stmt: Any, table: Any) -> Any:
        stmt = stmt.where(table.c.posted_period == period)
        return stmt.where(table.c.cluster == cluster) if cluster is not None else stmt

    t = totals_table.c
    totals = scoped(
        select(*(e.label(f"g{i}") for i, e in enumerate(total_exprs)), t.currency,
               func.sum(t.jobs).label("jobs"), func.sum(t.amount).label("amount"))
        .group_by(*total_exprs, t.currency)
        .order_by(*(e.asc().nulls_last() for e in total_exprs), t.currency), totals_table)
    f = fine.c
    per_resource = scoped(
        select(*(e.label(f"g{i}") for i, e in enumerate(fine_exprs)), f.currency, f.resource,
               f.unit, func.sum(f.quantity).label("quantity"),
               func.sum(f.amount).label("amount"))
        .group_by(*fine_exprs, f.currency, f.resource, f.unit)
        .order_by(f.resource, f.unit), fine)
    rows: dict[tuple[Any, ...], ReportRow] = {}
    for r in session.execute(totals):
        values = tuple(r[i] for i in range(len(names)))
        rows[(values, r.currency)] = ReportRow(group=dict(zip(names, values)),
                                               currency=r.currency, jobs=int(r.jobs),
                                               amount=r.amount)
    for r in session.execute(per_resource):
        values = tuple(r[i] for i in range(len(names)))
        resources = rows[(values, r.currency)].resources
        if r.resource in resources:  # pragma: no cover - replace_charges checks units
            raise RuntimeError(f"resource {r.resource!r} stored in two units")
        resources[r.resource] = ResourceTotal(r.quantity, r.unit, r.amount)
    return list(rows.values())


# Recompute the dirty (cluster, submit day) buckets of both rollups, then forget them.
# The dirty days' jobs first (through ix_jobs_cluster_submit_time: a poll dirties a day or
# two), then their lines by job key, summed per job and cell, then per cell: distinct jobs
# are counted as rows of the per-job step, with no DISTINCT sort. The planner cannot
# estimate the per-job step, so the hash aggregates are asked for explicitly, for this
# statement only (a bulk import refreshes hundreds of thousands of lines at once).
_DIRTY_GROUP = "posted_period, cluster, submit_day, account, user_name, partition, qos, currency"
_SQL_REFRESH = (
    "DELETE FROM charge_rollup_daily r USING charge_rollup_dirty d"
    " WHERE r.cluster = d.cluster AND r.submit_day = d.submit_day",
    "DELETE FROM charge_rollup_daily_jobs r USING charge_rollup_dirty d"
    " WHERE r.cluster = d.cluster AND r.submit_day = d.submit_day",
    "SET LOCAL work_mem = '128MB'",
    "SET LOCAL enable_sort = off",
    "WITH dirty_jobs AS MATERIALIZED ("
    " SELECT j.cluster, j.job_id_raw, j.submit_time, d.submit_day,"
    " coalesce(j.account, '') AS account, coalesce(j.user_name, '') AS user_name,"
    " coalesce(j.partition, '') AS partition, coalesce(j.qos, '') AS qos"
    " FROM charge_rollup_dirty d JOIN jobs j ON j.cluster = d.cluster"
    " AND j.submit_time >= (d.submit_day::timestamp AT TIME ZONE 'UTC')"
    " AND j.submit_time < ((d.submit_day + 1)::timestamp AT TIME ZONE 'UTC')"
    "), per_job AS MATERIALIZED ("
    " SELECT l.posted_period, l.cluster, j.submit_day, j.account, j.user_name, j.partition,"
    " j.qos, l.currency, l.resource, l.unit, l.job_id_raw, l.submit_time,"
    " sum(l.quantity) AS quantity, sum(l.amount) AS amount, count(*) AS lines"
    " FROM dirty_jobs j JOIN charge_lines l ON l.cluster = j.cluster"
    " AND l.job_id_raw = j.job_id_raw AND l.submit_time = j.submit_time"
    " GROUP BY l.posted_period, l.cluster, j.submit_day, j.account, j.user_name, j.partition,"
    " j.qos, l.currency, l.resource, l.unit, l.job_id_raw, l.submit_time"
    "), fine AS ("
    f" INSERT INTO charge_rollup_daily ({_DIRTY_GROUP}, resource, unit, quantity, amount,"
    " lines, jobs)"
    f" SELECT {_DIRTY_GROUP}, resource, unit, sum(quantity), sum(amount), sum(lines), count(*)"
    f" FROM per_job GROUP BY {_DIRTY_GROUP}, resource, unit"
    ")"
    f" INSERT INTO charge_rollup_daily_jobs ({_DIRTY_GROUP}, amount, jobs)"
    f" SELECT {_DIRTY_GROUP}, sum(amount), count(*) FROM ("
    f"  SELECT {_DIRTY_GROUP}, job_id_raw, submit_time, sum(amount) AS amount FROM per_job"
    f"  GROUP BY {_DIRTY_GROUP}, job_id_raw, submit_time) per_group_job"
    f" GROUP BY {_DIRTY_GROUP}",
    "RESET enable_sort",
    "RESET work_mem",
    "DELETE FROM charge_rollup_dirty",
)


def refresh_rollups(session: Session) -> int:
    """Recompute the rollups of every dirty bucket in the caller's transaction (writers
    call it before they commit); returns how many buckets were refreshed."""
    dirty = session.execute(select(func.count()).select_from(_DIRTY)).scalar_one()
    if dirty:
        for statement in _SQL_REFRESH:
            session.execute(text(statement))
    return int(dirty)


def charge_report_raw(session: Session, *, period: str, group_by: Sequence[str],
                      cluster: str | None = None) -> list[ReportRow]:
    """``charge_report`` from the charge lines joined to their jobs: one SQL statement
    with two grouping sets, the group totals (distinct jobs, amount) and the per-resource
    totals within each group."""
    check_period(period)
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
        .where(c.posted_period == period)
        .group_by(func.grouping_sets(tuple_(*exprs, c.currency),
                                     tuple_(*exprs, c.currency, c.resource, c.unit)))
        .order_by(*(expr.asc().nulls_last() for expr in exprs), c.currency,
                  literal_column("is_total").desc(), c.resource, c.unit)
    )
    if cluster is not None:
        stmt = stmt.where(c.cluster == cluster)
    rows: dict[tuple[Any, ...], ReportRow] = {}
    for r in session.execute(stmt):
        values = tuple(r[i] for i in range(len(exprs)))
        key = (values, r.currency)
        if r.is_total:
            rows[key] = ReportRow(group=dict(zip((n for n, _ in groups), values)),
                                  currency=r.currency, jobs=int(r.jobs), amount=r.amount)
        else:
            resources = rows[key].resources
            if r.resource in resources:  # pragma: no cover - replace_charges checks units
                raise RuntimeError(f"resource {r.resource!r} stored in two units")
            resources[r.resource] = ResourceTotal(r.quantity, r.unit, r.amount)
    return list(rows.values())


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One charge line of an account's statement, with the job it belongs to."""

    cluster: str
    job_id: str
    job_id_raw: int
    submit: datetime
    user: str | None
    partition: str | None
    start: datetime | None
    end: datetime | None
    usage_period: str
    resource: str
    quantity: Decimal
    unit: str
    rate: Decimal
    amount: Decimal
    currency: str
    kind: str


def statement_lines(session: Session, *, period: str, account: str | None,
                    cluster: str | None = None,
                    yield_per: int = 2_000) -> Iterator[StatementLine]:
    """Every line POSTED in ``period`` for jobs of ``account`` (None: jobs without one),
    ordered by submit time, job_id_raw, cluster, resource (then usage period, kind).

    The same selection as ``charge_report`` grouped by account, so the amounts add up to
    that report's amount for the account (per currency). Streamed with a server-side
    cursor; consume it inside the caller's transaction.
    """
    check_period(period)
    c, j = _CHARGES.c, _JOBS.c
    stmt = (
        select(c.cluster, j.job_id, c.job_id_raw, c.submit_time, j.user_name, j.partition,
               j.start_time, j.end_time, c.usage_period, c.resource, c.quantity, c.unit,
               c.rate, c.amount, c.currency, c.kind)
        .select_from(_JOB_JOIN)
        .where(c.posted_period == period, j.account.is_not_distinct_from(account))
        .order_by(c.submit_time, c.job_id_raw, c.cluster, c.resource, c.usage_period,
                  c.kind, c.id)
    )
    if cluster is not None:
        stmt = stmt.where(c.cluster == cluster)
    result = session.execute(stmt.execution_options(yield_per=yield_per))
    try:
        for r in result:
            yield StatementLine(
                cluster=r.cluster, job_id=r.job_id, job_id_raw=r.job_id_raw,
                submit=r.submit_time.astimezone(UTC), user=r.user_name,
                partition=r.partition, start=_utc(r.start_time), end=_utc(r.end_time),
                usage_period=r.usage_period, resource=r.resource, quantity=r.quantity,
                unit=r.unit, rate=r.rate, amount=r.amount, currency=r.currency,
                kind=r.kind)
    finally:
        result.close()


# ------------------------------------------------------------------------- budgets

@dataclass(frozen=True, slots=True)
class BudgetInfo:
    """A budget and how much of it the account's lines posted in the period use.

    ``used`` sums only lines in the budget's currency; ``used_fraction`` is
    used / amount (None when the budget is 0).
    """

    account: str
    period: str
    amount: Decimal
    currency: str
    used: Decimal
    used_fraction: Decimal | None
    updated_at: datetime


def set_budget(session: Session, account: str, period: str, amount: Decimal,
               currency: str) -> None:
    """Set the budget of ``account`` for ``period`` (insert or overwrite)."""
    check_period(period)
    if not isinstance(account, str) or not account:
        raise ChargeValueError(f"budget account must be a non-empty string, got {account!r}")
    if not isinstance(currency, str) or not currency:
        raise ChargeValueError(f"budget currency must be a non-empty string, got {currency!r}")
    _decimal(amount, "budget amount", _AMOUNT, True)
    if amount < 0:
        raise ChargeValueError(f"budget amount must not be negative, got {amount}")
    stmt = pg_insert(_BUDGETS).values(account=account, period=period, amount=amount,
                                      currency=currency, updated_at=func.now())
    stmt = stmt.on_conflict_do_update(
        index_elements=[_BUDGETS.c.account, _BUDGETS.c.period],
        set_={"amount": stmt.excluded.amount, "currency": stmt.excluded.currency,
              "updated_at": stmt.excluded.updated_at})
    session.execute(stmt)


def list_budgets(session: Session, period: str | None = None) -> list[BudgetInfo]:
    """Budgets (of one period, or all), ordered by period and account, with use."""
    b, c, j = _BUDGETS.c, _CHARGES.c, _JOBS.c
    if period is not None:
        check_period(period)
    used = (
        select(c.posted_period, j.account, c.currency, func.sum(c.amount).label("used"))
        .select_from(_JOB_JOIN)
        .where(exists().where(b.period == c.posted_period, b.account == j.account,
                              *([b.period == period] if period is not None else [])))
        .group_by(c.posted_period, j.account, c.currency)
        .subquery("u")
    )
    stmt = (
        select(b.account, b.period, b.amount, b.currency, b.updated_at,
               func.coalesce(used.c.used, 0).label("used"))
        .select_from(_BUDGETS.outerjoin(used, and_(used.c.posted_period == b.period,
                                                   used.c.account == b.account,
                                                   used.c.currency == b.currency)))
        .order_by(b.period, b.account)
    )
    if period is not None:
        stmt = stmt.where(b.period == period)
    out = []
    for r in session.execute(stmt):
        spent = Decimal(r.used)
        out.append(BudgetInfo(
            account=r.account, period=r.period, amount=r.amount, currency=r.currency,
            used=spent, used_fraction=None if r.amount == 0 else spent / r.amount,
            updated_at=r.updated_at.astimezone(UTC)))
    return out


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


__all__ = [
    "GROUP_BY",
    "BudgetInfo",
    "ChargeCounts",
    "ChargeStoreError",
    "ChargeValueError",
    "ClosedPeriodError",
    "InvalidPeriodError",
    "JobKey",
    "PeriodInfo",
    "RateCardInfo",
    "ReportRow",
    "ResourceTotal",
    "StatementLine",
    "charge_report",
    "charge_report_raw",
    "charge_report_rollup",
    "check_period",
    "close_period",
    "closed_periods",
    "ensure_rate_card",
    "frozen_lines",
    "job_charges",
    "job_keys_in_range",
    "list_budgets",
    "list_periods",
    "list_rate_cards",
    "refresh_rollups",
    "replace_charges",
    "set_budget",
    "statement_lines",
]
