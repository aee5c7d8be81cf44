"""Roll job-step usage up into its job record (pure, streaming, bounded memory).

Design notes: docs/design/billing.md.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal

from billing.records import JobRecord, QuarantinedRecord, StepUsage

_FIELDS = tuple(f.name for f in dataclasses.fields(JobRecord))
_FIELD_VALUES = operator.attrgetter(*_FIELDS)
_I_MAX_RSS, _I_MEM_USED, _I_CPU_USED, _I_ENERGY = (
    _FIELDS.index(name) for name in ("max_rss_bytes", "mem_used_byte_s", "cpu_used_s", "energy_j"))


class _Pending:
    """A buffered job line and the usage of the steps attached to it so far."""

    __slots__ = ("cpu", "energy", "job", "max_rss", "mem_byte_s", "steps")

    def __init__(self, job: JobRecord) -> None:
        self.job = job
        self.steps = 0
        self.max_rss: int | None = None
        self.mem_byte_s: int | None = None
        self.cpu: Decimal | None = None
        self.energy: int | None = None

    def add(self, step: StepUsage) -> None:
        self.steps += 1
        if step.max_rss_bytes is not None and (self.max_rss is None
                                               or step.max_rss_bytes > self.max_rss):
            self.max_rss = step.max_rss_bytes
        if step.mem_total_bytes is not None:
            self.mem_byte_s = (self.mem_byte_s or 0) + step.mem_total_bytes * step.elapsed_s
        if step.cpu_used_s is not None:
            self.cpu = (self.cpu or Decimal(0)) + step.cpu_used_s
        if step.energy_j is not None:
            self.energy = (self.energy or 0) + step.energy_j

    def record(self) -> JobRecord:
        job = self.job
        if not self.steps:
            return job
        # dataclasses.replace, without its per-field introspection (a third of the cost;
        # this runs once per job with steps).
        values = list(_FIELD_VALUES(job))
        values[_I_MAX_RSS] = self.max_rss
        values[_I_MEM_USED] = self.mem_byte_s
        if job.cpu_used_s is None:
            values[_I_CPU_USED] = self.cpu
        if job.energy_j is None:
            values[_I_ENERGY] = self.energy
        return JobRecord(*values)


def _render_step(step: StepUsage) -> str:
    """A readable rendering of an orphan step for the quarantine's ``raw`` text."""
    return (f"step {step.job_id_raw}.{step.step} cluster={step.cluster} "
            f"db_index={step.job_db_index} state={step.state} elapsed_s={step.elapsed_s} "
            f"cpu_used_s={step.cpu_used_s} max_rss_bytes={step.max_rss_bytes} "
            f"mem_total_bytes={step.mem_total_bytes} energy_j={step.energy_j}")


def rollup_steps(items: Iterable[JobRecord | StepUsage | QuarantinedRecord], *,
                 buffer_jobs: int = 4096,
                 source: str = "rollup") -> Iterator[JobRecord | QuarantinedRecord]:
    """Attach each StepUsage to its buffered JobRecord and yield rolled-up jobs.

    At most ``buffer_jobs`` job records are held; when a new job line arrives with the
    buffer full, the oldest is emitted (sacct prints a job's steps right after its job
    line, so a small buffer is plenty). Jobs come out in the order of their job lines;
    jobs without steps come out unchanged. QuarantinedRecords pass through as they arrive
    (so they may come out before jobs read earlier that are still buffered). A step with
    no buffered parent becomes a QuarantinedRecord "step line without its job line",
    attributed to ``source`` (the source's name, so people find it with the rest).
    """
    if buffer_jobs < 1:
        raise ValueError("buffer_jobs must be at least 1")
    buffer: OrderedDict[int, _Pending] = OrderedDict()   # seq -> pending, oldest first
    by_raw: dict[int, list[int]] = {}                     # job_id_raw -> seqs, oldest first
    seq = 0

    def pop_oldest() -> JobRecord:
        key, pending = buffer.popitem(last=False)
        raw = pending.job.job_id_raw
        keys = by_raw[raw]
        keys.remove(key)
        if not keys:
            del by_raw[raw]
        return pending.record()

    for item in items:
        if isinstance(item, JobRecord):
            if len(buffer) >= buffer_jobs:
                yield pop_oldest()
            seq += 1
            buffer[seq] = _Pending(item)
            by_raw.setdefault(item.job_id_raw, []).append(seq)
        elif isinstance(item, StepUsage):
            target: _Pending | None = None
            fallback: _Pending | None = None
            for key in reversed(by_raw.get(item.job_id_raw, ())):
                pending = buffer[key]
                job = pending.job
                if item.cluster is not None and job.cluster != item.cluster:
                    continue
                if item.job_db_index is not None and job.db_index is not None:
                    if job.db_index == item.job_db_index:
                        target = pending
                        break
                    continue
                if fallback is None:
                    fallback = pending
            target = target or fallback
            if target is None:
                yield QuarantinedRecord(
                    raw=_render_step(item), reason="step line without its job line",
                    source=source, line_no=item.line_no,
                    job_id=f"{item.job_id_raw}.{item.step}")
            else:
                target.add(item)
        elif isinstance(item, QuarantinedRecord):
            yield item
        else:
            raise TypeError(f"rollup_steps got {type(item).__name__}, expected JobRecord, "
                            f"StepUsage or QuarantinedRecord")
    while buffer:
        yield pop_oldest()


# --------------------------------------------------------------------------- billing periods
#
# Billing periods are calendar months in the rate card's timezone, named "YYYY-MM". A period
# runs from midnight on the 1st (local time) to midnight on the 1st of the next month, so
# with timezone = "Europe/Berlin" the period "2026-11" is [2026-10-31T23:00Z, 2026-11-30T23:00Z).
# (Only months are supported; billing.rates refuses other periods.)

_ONE_SECOND = timedelta(seconds=1)


def _aware(dt: datetime, what: str) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {dt!r}")
    return dt


def _whole_second(dt: datetime) -> datetime:
    """dt without its microseconds (Slurm's times are whole seconds)."""
    return dt.replace(microsecond=0) if dt.microsecond else dt


def period_of(dt: datetime, card_tz: tzinfo) -> str:
    """The billing period ("2026-11") an instant falls in, in the card's timezone."""
    local = _aware(dt, "period_of: dt").astimezone(card_tz)
    return f"{local.year:04d}-{local.month:02d}"


def _parse_period(period: str) -> tuple[int, int]:
    try:
        year_text, month_text = period.split("-")
        if len(year_text) != 4 or len(month_text) != 2:
            raise ValueError
        year, month = int(year_text), int(month_text)
        if not 1 <= month <= 12 or year < 1:
            raise ValueError
    except ValueError:
        raise ValueError(f"not a billing period (YYYY-MM): {period!r}") from None
    return year, month


def period_after(period: str) -> str:
    """The period following ``period`` ("2026-12" -> "2027-01")."""
    year, month = _parse_period(period)
    return f"{year + month // 12:04d}-{month % 12 + 1:02d}"


@functools.lru_cache(maxsize=4096)
def period_bounds(period: str, tz: tzinfo) -> tuple[datetime, datetime]:
    """[start, end) of a period as aware UTC datetimes: local midnight on the 1st of the
    month and of the next month, in ``tz``. (Where a DST change skips local midnight,
    zoneinfo maps it to the instant of the change, i.e. the first instant of the day.)
    Remembered: a pure function of a few hundred (period, zone) pairs."""
    year, month = _parse_period(period)
    next_year, next_month = year + month // 12, month % 12 + 1
    start = datetime(year, month, 1, tzinfo=tz).astimezone(timezone.utc)
    end = datetime(next_year, next_month, 1, tzinfo=tz).astimezone(timezone.utc)
    return start, end


def split_by_period(start: datetime, end: datetime, tz: tzinfo) -> list[tuple[str, int]]:
    """Cut the interval [start, end) at period boundaries: [(period, seconds), ...] in order.

    Both ends are truncated to whole seconds first (Slurm's times are whole seconds), and
    period boundaries are whole seconds, so the parts are ints that add up exactly to
    ``end - start``. An empty interval (end == start) gives [(period of start, 0)], so a
    caller can still place a job that Slurm shows with Start == End. end < start is an error.
    """
    start = _whole_second(_aware(start, "split_by_period: start")).astimezone(timezone.utc)
    end = _whole_second(_aware(end, "split_by_period: end")).astimezone(timezone.utc)
    if end < start:
        raise ValueError(f"split_by_period: end {end} is before start {start}")
    period = period_of(start, tz)
    if end == start:
        return [(period, 0)]
    boundary = period_bounds(period, tz)[1]
    if end <= boundary:                     # most jobs: within one period
        return [(period, (end - start) // _ONE_SECOND)]
    parts: list[tuple[str, int]] = []
    cursor = start
    while cursor < end:
        boundary = period_bounds(period, tz)[1]
        stop = min(boundary, end)
        parts.append((period, (stop - cursor) // _ONE_SECOND))
        cursor = stop
        period = period_after(period)
    return parts
