"""Pricing: a job record x a rate card -> charge lines; corrections for closed periods.

Design notes: docs/design/billing.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
)
from fractions import Fraction

from billing.rates import RateCard, Rule
from billing.records import (
    UNTYPED_GPU,
    ChargeLine,
    JobRecord,
    is_final_record,
    resource_unit,
)
from billing.rollup import split_by_period

# Outcomes (pricing_outcome); the run log counts jobs by these.
PRICED = "priced"
PARTLY_PRICED = "partly priced"
NO_CHARGE = "no charge"
EXEMPT = "exempt"
NOT_STARTED = "not started"
ZERO_ELAPSED = "zero elapsed"
RUNNING = "running"
NO_RULE = "no matching rule"
OUTCOMES = (PRICED, PARTLY_PRICED, NO_CHARGE, EXEMPT, NOT_STARTED, ZERO_ELAPSED, RUNNING,
            NO_RULE)

QUANTITY_PLACES = 6
_MICRO = 10 ** QUANTITY_PLACES
_GIB = 2 ** 30
_KWH_J = 3_600_000
_RESOURCE_ORDER = {"cpu": 0, "mem": 1, "gpu": 2, "node": 4, "billing": 5, "energy": 6}

# Money arithmetic never depends on the caller's decimal context. Products are exact
# (Inexact traps: a rate with absurdly many digits fails loudly instead of rounding twice).
_EXACT = Context(prec=60, rounding=ROUND_HALF_EVEN,
                 traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])
_ROUNDING = Context(prec=60, rounding=ROUND_HALF_EVEN,
                    traps=[InvalidOperation, DivisionByZero, Overflow])
_QUANTUMS = {scale: Decimal((0, (1,), -scale)) for scale in range(29)}


# ---------------------------------------------------------------------------- rounding

def round_amount(value: Decimal, scale: int) -> Decimal:
    """THE money rounding: ``value`` rounded half-even to ``scale`` decimal places.

    0.125 -> 0.12 and 0.135 -> 0.14 at scale 2 (ties go to the even digit, so rounding
    errors do not drift one way over many lines). The result always has exactly ``scale``
    places (0.1 -> 0.10).
    """
    quantum = _QUANTUMS.get(scale)
    if quantum is None:
        raise ValueError(f"scale out of range: {scale}")
    # An explicit context: the caller's (thread-local) context never changes the result.
    # Its flags may be set by several threads at once; nothing reads them, and only its
    # traps (the same for every caller) decide what raises.
    return value.quantize(quantum, rounding=ROUND_HALF_EVEN, context=_ROUNDING)


def money_text(value: Decimal) -> str:
    """An amount as finance reads it: exact, at least 2 decimal places, no exponent
    (1.19, 1.190000 -> "1.19"; 1.125 -> "1.125"; 5 -> "5.00"; -0.04 -> "-0.04")."""
    text = format(value.normalize(context=_ROUNDING), "f")
    whole, _, frac = text.partition(".")
    if whole in ("-0", "") and not frac.strip("0"):
        whole = "0"
    return f"{whole}.{frac.ljust(2, '0')}"


def line_amount(rate: Decimal, quantity: Decimal, scale: int) -> Decimal:
    """rate x quantity (exact), rounded by ``round_amount``."""
    return round_amount(_EXACT.multiply(rate, quantity), scale)


def quantize_quantity(value: Fraction | Decimal | int) -> Decimal:
    """A quantity rounded half-even to 6 decimal places, always with 6 places."""
    ratio = Fraction(value)
    return _from_micro(_div_half_even(ratio.numerator * _MICRO, ratio.denominator))


def _from_micro(units: int) -> Decimal:
    return Decimal(units).scaleb(-QUANTITY_PLACES, context=_EXACT)


def _div_half_even(num: int, den: int) -> int:
    """``num / den`` (den > 0) rounded to an integer, ties to even: exactly what
    ``round(Fraction(num, den))`` gives, in integer arithmetic."""
    q, r = divmod(num, den)
    twice = r + r
    if twice > den or (twice == den and q & 1):
        q += 1
    return q


def largest_remainder(total: int, weights: list[int]) -> list[int]:
    """Split the integer ``total`` (>= 0) in proportion to ``weights`` (>= 0, not all 0)
    so that the parts add up to ``total``: each part is the floor of its exact share, and
    what is left goes one unit each to the largest remainders, earlier parts first on ties.
    """
    if len(weights) == 1:                   # one period: the whole (most jobs)
        if weights[0] <= 0 or total < 0:
            raise ValueError(f"largest_remainder: bad input total={total} weights={weights}")
        return [total]
    whole = sum(weights)
    if whole <= 0 or any(w < 0 for w in weights) or total < 0:
        raise ValueError(f"largest_remainder: bad input total={total} weights={weights}")
    parts = [total * w // whole for w in weights]
    remainders = [total * w % whole for w in weights]
    left = total - sum(parts)
    for i in sorted(range(len(weights)), key=lambda i: (-remainders[i], i))[:left]:
        parts[i] += 1
    return parts


# -------------------------------------------------------------------------- quantities

def _has_allocation(job: JobRecord) -> bool:
    return bool(job.cpus or job.mem_bytes or job.nodes or job.gpu_count or job.billing)


_HOUR_S = 3600
_GIB_HOUR = _GIB * _HOUR_S
_UTC = UTC
_ONE_SECOND = timedelta(seconds=1)


def _raw_quantity(job: JobRecord, resource: str, basis: str, gpu_types: tuple[str, ...],
                  elapsed_s: int) -> tuple[int, int]:
    """The exact whole-job quantity of one line (see the table in the module docstring)
    as an integer ratio ``(numerator, denominator)``, denominator > 0."""
    used: tuple[int, int] | None = None
    if resource == "cpu":
        allocated = (job.cpus * elapsed_s, _HOUR_S)
        if job.cpu_used_s is not None:
            num, den = Decimal(job.cpu_used_s).as_integer_ratio()
            used = (num, den * _HOUR_S)
    elif resource == "mem":
        allocated = (job.mem_bytes * elapsed_s, _GIB_HOUR)
        if job.mem_used_byte_s is not None:
            used = (job.mem_used_byte_s, _GIB_HOUR)
    elif resource == "gpu" or resource.startswith("gpu:"):
        by_type = job.gpus_by_type
        return (sum(by_type.get(t, 0) for t in gpu_types) * elapsed_s, _HOUR_S)
    elif resource == "node":
        return (job.nodes * elapsed_s, _HOUR_S)
    elif resource == "billing":
        return ((job.billing or 0) * elapsed_s, _HOUR_S)
    elif resource == "energy":
        return (job.energy_j or 0, _KWH_J)
    else:
        raise ValueError(f"unknown resource {resource!r}")
    if basis == "allocated":
        return allocated
    if basis == "used":
        return used if used is not None else (0, 1)
    if basis == "max":
        if used is None:
            return allocated
        # the larger of two ratios with positive denominators, by cross-multiplying
        return used if used[0] * allocated[1] > allocated[0] * used[1] else allocated
    raise ValueError(f"unknown basis {basis!r}")


def _quantity_units(job: JobRecord, resource: str, basis: str, gpu_types: tuple[str, ...],
                    elapsed_s: int) -> int:
    """The whole-job quantity of one line in millionths, rounded half-even (exact)."""
    num, den = _raw_quantity(job, resource, basis, gpu_types, elapsed_s)
    return _div_half_even(num * _MICRO, den)


@dataclass(frozen=True)
class _Spec:
    """One line a rule asks for: resource, basis, the GPU types it adds up, and the rate."""

    resource: str
    basis: str
    gpu_types: tuple[str, ...]
    rate: Decimal
    unit: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "unit", resource_unit(self.resource))

    @property
    def key(self) -> tuple[str, str, tuple[str, ...]]:
        return (self.resource, self.basis, self.gpu_types)


# Distinct GPU mixes a rule remembers its specs for (Rule.memo; it starts over when full).
_SPECS_MEMO = 4096


def _specs(rule: Rule, job: JobRecord) -> tuple[_Spec, ...]:
    """The lines ``rule`` prices for ``job`` (before knowing whether they are zero).
    They depend on the job only through its GPU mix and whether it has a billing TRES
    and an energy figure, so they are remembered per rule for those (``Rule.memo``)."""
    key = (job.gpus, job.billing is not None, job.energy_j is not None)
    memo = rule.memo
    specs = memo.get(key)
    if specs is None:
        if len(memo) >= _SPECS_MEMO:
            memo.clear()
        specs = memo[key] = tuple(_compute_specs(rule, job))
    return specs


def _compute_specs(rule: Rule, job: JobRecord) -> list[_Spec]:
    rates, basis = rule.rates, rule.basis
    out: list[_Spec] = []
    if rates.cpu_hour is not None:
        out.append(_Spec("cpu", basis["cpu"], (), rates.cpu_hour))
    if rates.mem_gib_hour is not None:
        out.append(_Spec("mem", basis["mem"], (), rates.mem_gib_hour))
    # One line per GPU type, whatever rate prices it: the type's own rate, else gpu_hour.
    # Untyped GPUs are the "gpu" line. (A type is never merged into another line, so the
    # invoice keeps saying which GPUs were used.)
    gpu_types = sorted(t for t, count in job.gpus if count)
    if UNTYPED_GPU in gpu_types and rates.gpu_hour is not None:
        out.append(_Spec("gpu", "allocated", (UNTYPED_GPU,), rates.gpu_hour))
    for gpu_type in gpu_types:
        if gpu_type == UNTYPED_GPU:
            continue
        rate = rates.gpu_hour_by_type.get(gpu_type, rates.gpu_hour)
        if rate is not None:
            out.append(_Spec(f"gpu:{gpu_type}", "allocated", (gpu_type,), rate))
    if rates.node_hour is not None:
        out.append(_Spec("node", "allocated", (), rates.node_hour))
    if rates.billing_unit_hour is not None and job.billing is not None:
        out.append(_Spec("billing", "allocated", (), rates.billing_unit_hour))
    if rates.energy_kwh is not None and job.energy_j is not None:
        out.append(_Spec("energy", "used", (), rates.energy_kwh))
    return out


def job_quantities(job: JobRecord, rule: Rule, *,
                   elapsed_s: int | None = None) -> dict[str, tuple[Decimal, str]]:
    """The whole-job quantities ``rule`` would charge: resource -> (quantity, basis).

    Only resources with a rate in ``rule`` and a non-zero quantity are listed. Quantities
    are rounded half-even to 6 places. ``elapsed_s`` defaults to the job's ElapsedRaw.
    When the whole job is priced by one rule, its lines for a resource add up to exactly
    this quantity, however many periods it spans.
    """
    elapsed = job.elapsed_s if elapsed_s is None else elapsed_s
    out: dict[str, tuple[Decimal, str]] = {}
    for spec in _specs(rule, job):
        units = _quantity_units(job, spec.resource, spec.basis, spec.gpu_types, elapsed)
        if units:
            out[spec.resource] = (_from_micro(units), spec.basis)
    return out


# ----------------------------------------------------------------------------- pricing

@dataclass(frozen=True)
class Unpriced:
    """A job with periods that no rule fits (those periods have no lines)."""

    job: JobRecord
    periods: tuple[str, ...]


@dataclass(frozen=True)
class PricingResult:
    """``price_jobs``: every line, the number of jobs per outcome, and the unpriced."""

    lines: list[ChargeLine] = field(hash=False)
    outcomes: dict[str, int] = field(hash=False)
    unpriced: list[Unpriced] = field(hash=False)


@dataclass(frozen=True)
class _Result:
    outcome: str
    lines: list[ChargeLine]
    unpriced: tuple[str, ...] = ()


def _charge(job: JobRecord, card: RateCard, period: str, rule: Rule, spec: _Spec,
            units: int) -> ChargeLine:
    """The charge line of ``units`` millionths of ``spec``'s resource in ``period``."""
    quantity = _from_micro(units)
    rate = spec.rate
    # positional, in ChargeLine's field order (kind "charge", posted in its usage period)
    return ChargeLine(job.cluster, job.job_id_raw, job.submit, period, period, spec.resource,
                      quantity, spec.unit, rate, line_amount(rate, quantity, card.scale),
                      card.currency, rule.name, card.version, spec.basis, "charge")


def _whole_seconds(dt: datetime) -> datetime:
    if dt.tzinfo is _UTC and not dt.microsecond:     # what every parser produces
        return dt
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt!r}: times must be timezone-aware")
    return dt.astimezone(UTC).replace(microsecond=0)


def _price(card: RateCard, job: JobRecord, as_of: datetime | None) -> _Result:
    if job.state in card.exempt_states:
        return _Result(EXEMPT, [])
    if job.start is None or not _has_allocation(job):
        return _Result(NOT_STARTED, [])
    start = _whole_seconds(job.start)
    if is_final_record(job.state, job.end):
        elapsed = job.elapsed_s
        # A final job without End (not seen from Slurm 22.05): assume it ran its elapsed.
        end = (_whole_seconds(job.end) if job.end is not None
               else start + timedelta(seconds=max(elapsed, 0)))
    else:
        if not card.accrue_running:
            return _Result(RUNNING, [])
        if as_of is None:
            raise ValueError("price_job: as_of is required to accrue running jobs "
                             "(the card has accrue_running = true)")
        end = _whole_seconds(as_of)
        elapsed = (end - start) // timedelta(seconds=1)
        if job.end is not None and _whole_seconds(job.end) <= end:
            end, elapsed = _whole_seconds(job.end), job.elapsed_s
    if elapsed <= 0:
        return _Result(ZERO_ELAPSED, [])
    end = max(end, start)

    parts = split_by_period(start, end, card.tz)
    if len(parts) == 1:                     # most jobs: one period, one rule
        weights = [1]
        slices = [(parts[0][0], card.select_rule(job, start))]
    else:
        weights = [seconds for _, seconds in parts]
        if sum(weights) == 0:               # End == Start: all in the Start period
            weights = [1]
        slices = []
        cursor = start
        for period, seconds in parts:
            slices.append((period, card.select_rule(job, cursor)))
            cursor += seconds * _ONE_SECOND

    lines: list[ChargeLine] = []
    if len(slices) == 1:
        # One slice takes the whole quantity (largest_remainder of one weight), so
        # this is the general case below without the shares.
        period, rule = slices[0]
        if rule is None:
            return _Result(NO_RULE, [], (period,))
        for spec in _specs(rule, job):
            units = _quantity_units(job, spec.resource, spec.basis, spec.gpu_types, elapsed)
            if not units:
                continue
            lines.append(_charge(job, card, period, rule, spec, units))
        return _Result(PRICED if lines else NO_CHARGE, lines)

    unpriced = tuple(period for period, rule in slices if rule is None)
    if len(unpriced) == len(slices):
        return _Result(NO_RULE, [], unpriced)

    # Whole-job quantity of every (resource, basis, GPU types) some slice's rule needs,
    # split across ALL slices, so each slice takes its share under its own rule.
    specs_by_slice = [(_specs(rule, job) if rule is not None else []) for _, rule in slices]
    shares: dict[tuple[str, str, tuple[str, ...]], list[int]] = {}
    for specs in specs_by_slice:
        for spec in specs:
            if spec.key not in shares:
                units = _quantity_units(job, spec.resource, spec.basis, spec.gpu_types,
                                        elapsed)
                shares[spec.key] = largest_remainder(units, weights)

    for i, ((period, rule), specs) in enumerate(zip(slices, specs_by_slice, strict=True)):
        if rule is None:
            continue
        for spec in specs:
            units = shares[spec.key][i]
            if not units:
                continue
            lines.append(_charge(job, card, period, rule, spec, units))
    if unpriced:
        return _Result(PARTLY_PRICED, lines, unpriced)
    return _Result(PRICED if lines else NO_CHARGE, lines)


def price_job(card: RateCard, job: JobRecord, *,
              as_of: datetime | None = None) -> list[ChargeLine]:
    """The charge lines of one job (kind "charge", posted in their usage period).

    One line per (usage period, resource), in period order, then cpu, mem, gpu,
    gpu:<type>, node, billing, energy. ``as_of`` (aware) is needed only when the card
    accrues running jobs; it is ignored for final jobs. Pure: the same card, job and
    as_of always give the same lines.
    """
    return _price(card, job, as_of).lines


def price_job_outcome(card: RateCard, job: JobRecord, *,
                      as_of: datetime | None = None) -> tuple[str, list[ChargeLine]]:
    """``(pricing_outcome, price_job)`` of one job, priced once: why it has the lines it
    has (one of OUTCOMES) and the lines themselves."""
    result = _price(card, job, as_of)
    return result.outcome, result.lines


def pricing_outcome(card: RateCard, job: JobRecord, as_of: datetime | None = None) -> str:
    """Why a job has (or has no) lines: one of OUTCOMES (see the module docstring).
    Like price_job, it needs ``as_of`` for a running job when the card accrues."""
    return _price(card, job, as_of).outcome


def price_jobs(card: RateCard, jobs: Iterable[JobRecord], *,
               as_of: datetime | None = None) -> PricingResult:
    """Price many jobs: all lines, the count of jobs per outcome, and the jobs with
    periods no rule fits (``unpriced``, for the run log)."""
    lines: list[ChargeLine] = []
    outcomes: Counter[str] = Counter()
    unpriced: list[Unpriced] = []
    for job in jobs:
        result = _price(card, job, as_of)
        lines.extend(result.lines)
        outcomes[result.outcome] += 1
        if result.unpriced:
            unpriced.append(Unpriced(job, result.unpriced))
    return PricingResult(lines=lines, outcomes=dict(outcomes), unpriced=unpriced)


def job_total(lines: Iterable[ChargeLine]) -> Decimal:
    """The sum of the lines' (already rounded) amounts: a job's, account's or period's
    total is by definition the sum of its lines, so it matches them to the cent."""
    total = Decimal(0)
    for line in lines:
        total = _EXACT.add(total, line.amount)
    return total


# ------------------------------------------------------------------------ closed periods

_GroupKey = tuple[str, int, datetime, str, str]   # cluster, job, submit, usage period, resource


def _group_key(line: ChargeLine) -> _GroupKey:
    return (line.cluster, line.job_id_raw, line.submit, line.usage_period, line.resource)


def plan_lines(desired: Iterable[ChargeLine], frozen: Iterable[ChargeLine], *,
               closed: frozenset[str],
               first_open_after: Callable[[str], str]) -> list[ChargeLine]:
    """The lines to (re)write in open periods, given what is wanted and what is frozen.

    ``desired``: the lines wanted now (price_job's output: kind "charge", one per job,
    usage period and resource). ``frozen``: every line already stored in a CLOSED posted
    period for the jobs being planned (charges and earlier corrections); a job or
    resource that has frozen lines but no desired line is read as "should no longer be
    charged" and gets a reversing correction, so pass frozen lines only for the jobs
    you are repricing. ``closed``: the closed periods. ``first_open_after(p)``: the first
    open period after the closed period ``p``.

    Per (job, usage period, resource):

    * usage period open and nothing frozen: the desired line as it is;
    * otherwise (usage period closed, or already billed in a closed period): a line of
      kind "correction" with quantity = desired - sum(frozen) and amount = desired amount
      - sum(frozen amounts), posted in the first open period after the usage period (in
      the usage period itself if that is open); rate, rule, card version and basis are the
      desired line's, or the latest frozen line's if the resource is gone. Nothing when
      both differences are zero.

    The result is the complete set of lines these jobs should have in open periods: the
    caller replaces the jobs' lines in open periods with it. So after any sequence of
    reprices and period closings, a (job, usage period, resource)'s stored lines add up
    to what is desired now, and no closed period is touched. Lines come out sorted by
    job, usage period, resource. ValueError for two desired lines with one key, a
    desired line that is not a charge, frozen lines not in a closed period, a currency
    change, or a ``first_open_after`` that answers a closed period.
    """
    wanted: dict[_GroupKey, ChargeLine] = {}
    for line in desired:
        if line.kind != "charge" or line.posted_period != line.usage_period:
            raise ValueError(f"plan_lines: desired lines are charges posted in their usage "
                             f"period, got {line.kind} {line.usage_period}->"
                             f"{line.posted_period}")
        key = _group_key(line)
        if key in wanted:
            raise ValueError(f"plan_lines: two desired lines for {key}")
        wanted[key] = line
    billed: dict[_GroupKey, list[ChargeLine]] = {}
    for line in frozen:
        if line.posted_period not in closed:
            raise ValueError(f"plan_lines: frozen line posted in {line.posted_period}, "
                             f"which is not closed")
        billed.setdefault(_group_key(line), []).append(line)

    out: list[ChargeLine] = []
    for key in sorted(wanted.keys() | billed.keys(), key=_sort_key):
        want = wanted.get(key)
        done = billed.get(key, [])
        usage = key[3]
        if usage not in closed and not done:
            assert want is not None
            out.append(want)
            continue
        done_qty = Decimal(0)
        done_amount = Decimal(0)
        for line in done:
            done_qty = _EXACT.add(done_qty, line.quantity)
            done_amount = _EXACT.add(done_amount, line.amount)
        latest = max(done, key=lambda line: (line.posted_period, line.kind == "correction"),
                     default=None)
        template = want if want is not None else latest
        assert template is not None
        if latest is not None and latest.currency != template.currency:
            raise ValueError(f"plan_lines: {key} was billed in {latest.currency} and is now "
                             f"wanted in {template.currency}; a currency change needs a "
                             f"manual correction")
        delta_qty = _EXACT.subtract(want.quantity if want else Decimal(0), done_qty)
        delta_amount = _EXACT.subtract(want.amount if want else Decimal(0), done_amount)
        if delta_qty == 0 and delta_amount == 0:
            continue
        posted = usage if usage not in closed else first_open_after(usage)
        if posted in closed:
            raise ValueError(f"plan_lines: first_open_after({usage!r}) answered "
                             f"{posted!r}, which is closed")
        out.append(ChargeLine(
            cluster=template.cluster, job_id_raw=template.job_id_raw, submit=template.submit,
            usage_period=usage, posted_period=posted, resource=template.resource,
            quantity=delta_qty, unit=template.unit, rate=template.rate, amount=delta_amount,
            currency=template.currency, rule=template.rule, rate_card=template.rate_card,
            basis=template.basis, kind="correction"))
    return out


def _sort_key(key: _GroupKey) -> tuple[str, int, datetime, str, float, str]:
    cluster, job_id_raw, submit, usage, resource = key
    base, _, gpu_type = resource.partition(":")
    order = _RESOURCE_ORDER.get(base, 9) + (0.5 if gpu_type else 0)
    return (cluster, job_id_raw, submit, usage, order, resource)
