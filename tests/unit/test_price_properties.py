"""Properties of billing.price (hypothesis): exact splits, totals, determinism, reprices
and closed periods."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.price import (job_quantities, job_total, line_amount, plan_lines, price_job,
                           price_jobs)
from billing.rates import RateCard, load_rate_card
from billing.records import ChargeLine, JobRecord
from billing.rollup import period_after, period_bounds, period_of, split_by_period

UTC = timezone.utc
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

rates = st.decimals(min_value=D(0), max_value=D(1000), places=4, allow_nan=False,
                    allow_infinity=False)


@st.composite
def cards(draw, *, tz: str | None = None, accounts: bool = False) -> RateCard:
    """A card with one catch-all rule (and optionally an account rule) of random rates."""
    zone = tz or draw(st.sampled_from(ZONES))
    scale = draw(st.integers(0, 6))

    def rule(name: str, match: str) -> str:
        out = [f'[[rules]]\nname = "{name}"\nfrom = 2025-01-01\n{match}[rules.rates]']
        for key in ("cpu_hour", "mem_gib_hour", "gpu_hour", "node_hour",
                    "billing_unit_hour", "energy_kwh"):
            if draw(st.booleans()):
                out.append(f'{key} = "{draw(rates)}"')
        if draw(st.booleans()):
            out.append(f'[rules.rates.gpu_hour_by_type]\na100 = "{draw(rates)}"')
        out.append("[rules.basis]")
        out.append(f'cpu = "{draw(st.sampled_from(["allocated", "used", "max"]))}"')
        out.append(f'mem = "{draw(st.sampled_from(["allocated", "used", "max"]))}"')
        return "\n".join(out) + "\n"

    text = (f'currency = "EUR"\nscale = {scale}\nperiod = "month"\ntimezone = "{zone}"\n'
            + rule("base", ""))
    if accounts:
        text += rule("chem", 'match = { account = "chemistry" }\n')
    return load_rate_card(text)


@st.composite
def jobs(draw, *, job_id: int | None = None) -> JobRecord:
    start = T0 + timedelta(seconds=draw(st.integers(0, 365 * 86400)))
    wall = draw(st.integers(0, 100 * 86400))
    elapsed = draw(st.integers(1, max(wall, 1)))           # <= wall: suspension excluded
    gpus = draw(st.sampled_from([(), (("untyped", 1),), (("a100", 2), ("untyped", 1)),
                                 (("a100", 4),), (("a100", 1), ("h100", 2))]))
    jid = job_id if job_id is not None else draw(st.integers(1, 10**6))
    return JobRecord(
        cluster="lab", job_id=str(jid), job_id_raw=jid, submit=start, state="COMPLETED",
        state_raw="COMPLETED", account=draw(st.sampled_from(["physics", "chemistry"])),
        user="u", partition="batch", qos="normal",
        start=start, end=start + timedelta(seconds=wall), elapsed_s=elapsed,
        nodes=draw(st.integers(1, 64)), cpus=draw(st.integers(1, 4096)),
        mem_bytes=draw(st.integers(0, 4 * 2**40)),
        billing=draw(st.none() | st.integers(0, 10**5)), gpus=gpus,
        cpu_used_s=draw(st.none() | st.decimals(min_value=0, max_value=10**9, places=3)),
        mem_used_byte_s=draw(st.none() | st.integers(0, 2**60)),
        energy_j=draw(st.none() | st.integers(0, 10**12)), final=True)


def by_resource(lines):
    out: dict[str, list[ChargeLine]] = defaultdict(list)
    for line in lines:
        out[line.resource].append(line)
    return out


@SETTINGS
@given(card=cards(), job=jobs())
def test_slices_add_up_to_the_whole_job(card, job):
    lines = price_job(card, job)
    whole = job_quantities(job, card.rules[0])
    per = by_resource(lines)
    assert set(per) == set(whole)
    for resource, (quantity, basis) in whole.items():
        assert sum(line.quantity for line in per[resource]) == quantity
        assert {line.basis for line in per[resource]} == {basis}
        periods = [line.usage_period for line in per[resource]]
        assert len(periods) == len(set(periods))            # one line per period
    for line in lines:
        assert line.quantity > 0 and line.quantity.as_tuple().exponent == -6
        assert line.amount == line_amount(line.rate, line.quantity, card.scale)
        assert line.amount.as_tuple().exponent == -card.scale


@SETTINGS
@given(card=cards(), job=jobs())
def test_slices_are_pro_rata_to_wall_seconds(card, job):
    parts = split_by_period(job.start, job.end, card.tz)
    assert sum(s for _, s in parts) == (job.end - job.start).total_seconds()
    for period, _ in parts:
        lo, hi = period_bounds(period, card.tz)
        assert period_of(lo, card.tz) == period and period_of(hi, card.tz) != period
    seconds = dict(parts)
    total = sum(seconds.values())
    for resource, (quantity, _) in job_quantities(job, card.rules[0]).items():
        for line in by_resource(price_job(card, job))[resource]:
            exact = Fraction(quantity) * (Fraction(seconds[line.usage_period], total)
                                          if total else 1)
            assert abs(Fraction(line.quantity) - exact) < Fraction(1, 10**6)


@SETTINGS
@given(card=cards(accounts=True), batch=st.lists(jobs(), max_size=8))
def test_lines_add_up_to_totals_and_pricing_is_deterministic(card, batch):
    result = price_jobs(card, batch)
    again = price_jobs(card, batch)
    assert result == again and result.lines == [l for j in batch for l in price_job(card, j)]
    grand = job_total(result.lines)
    assert grand == sum((line.amount for line in result.lines), D(0))
    by_account: dict[str, D] = defaultdict(D)
    for job in batch:
        by_account[job.account] += job_total(price_job(card, job))
    assert sum(by_account.values(), D(0)) == grand
    assert sum(result.outcomes.values()) == len(batch)


# ------------------------------------------------------------------ a ledger with closings

class Ledger:
    """What the store does with plan_lines: closed periods are kept, open ones replaced."""

    def __init__(self) -> None:
        self.lines: list[ChargeLine] = []
        self.closed: set[str] = set()

    def first_open_after(self, period: str) -> str:
        period = period_after(period)
        while period in self.closed:
            period = period_after(period)
        return period

    def write(self, desired: list[ChargeLine]) -> None:
        closed = frozenset(self.closed)
        frozen = [l for l in self.lines if l.posted_period in closed]
        plan = plan_lines(desired, frozen, closed=closed,
                          first_open_after=self.first_open_after)
        assert all(l.posted_period not in closed for l in plan)
        self.lines = frozen + plan

    def close(self, period: str) -> None:
        self.closed.add(period)

    def totals(self) -> dict[tuple, tuple[D, D]]:
        out: dict[tuple, tuple[D, D]] = {}
        for l in self.lines:
            key = (l.job_key, l.usage_period, l.resource)
            qty, amount = out.get(key, (D(0), D(0)))
            out[key] = (qty + l.quantity, amount + l.amount)
        return {k: v for k, v in out.items() if v != (D(0), D(0))}


def totals_of(lines: list[ChargeLine]) -> dict[tuple, tuple[D, D]]:
    return {(l.job_key, l.usage_period, l.resource): (l.quantity, l.amount) for l in lines
            if (l.quantity, l.amount) != (D(0), D(0))}


PERIODS = [f"2026-{m:02d}" for m in range(1, 13)] + ["2027-01", "2027-02", "2027-03"]


@SETTINGS
@given(card_a=cards(tz="UTC", accounts=True), card_b=cards(tz="UTC", accounts=True),
       batch=st.lists(jobs(), min_size=1, max_size=5, unique_by=lambda j: j.job_id_raw),
       steps=st.lists(st.tuples(st.sampled_from(["A", "B"]), st.integers(0, 14)),
                      min_size=1, max_size=6))
def test_reprice_and_close_in_any_order(card_a, card_b, batch, steps):
    ledger = Ledger()
    desired_a = price_jobs(card_a, batch).lines
    ledger.write(desired_a)
    assert ledger.totals() == totals_of(desired_a)
    for which, close_upto in steps:
        # close every period up to a point (periods are closed in order)
        for period in PERIODS[:close_upto]:
            ledger.close(period)
        closed_lines = [l for l in ledger.lines if l.posted_period in ledger.closed]
        card = card_a if which == "A" else card_b
        desired = price_jobs(card, batch).lines
        ledger.write(desired)
        # the store's sums per (job, usage period, resource) are what is wanted now ...
        assert ledger.totals() == totals_of(desired)
        # ... and nothing in a closed period changed
        assert [l for l in ledger.lines if l.posted_period in ledger.closed] == closed_lines
    # back to card A: the amounts billed equal A's original amounts
    ledger.write(desired_a)
    assert ledger.totals() == totals_of(desired_a)


lines_strategy = st.builds(
    lambda job, period, resource, qty, amount: ChargeLine(
        cluster="lab", job_id_raw=job, submit=T0, usage_period=period, posted_period=period,
        resource=resource, quantity=qty, unit="core_hour", rate=D("0.5"), amount=amount,
        currency="EUR", rule="r", rate_card="v"),
    st.integers(1, 3), st.sampled_from(PERIODS[:6]), st.sampled_from(["cpu", "mem", "gpu"]),
    st.decimals(min_value=0, max_value=1000, places=6),
    st.decimals(min_value=0, max_value=1000, places=2))


@SETTINGS
@given(desired=st.lists(lines_strategy, max_size=20), billed=st.lists(lines_strategy,
                                                                       max_size=20),
       closed_upto=st.integers(0, 6), gaps=st.sets(st.sampled_from(PERIODS[:6])))
def test_plan_lines_never_touches_closed_periods(desired, billed, closed_upto, gaps):
    # one desired line per key
    unique = {(l.job_key, l.usage_period, l.resource): l for l in desired}
    desired = list(unique.values())
    closed = frozenset(PERIODS[:closed_upto]) | frozenset(gaps)
    frozen = [l for l in billed if l.usage_period in closed]
    ledger = Ledger()
    ledger.closed = set(closed)
    plan = plan_lines(desired, frozen, closed=closed, first_open_after=ledger.first_open_after)
    assert all(l.posted_period not in closed for l in plan)
    # desired == frozen + corrections, per (job, usage period, resource)
    got: dict[tuple, tuple[D, D]] = defaultdict(lambda: (D(0), D(0)))
    for l in frozen + plan:
        key = (l.job_key, l.usage_period, l.resource)
        got[key] = (got[key][0] + l.quantity, got[key][1] + l.amount)
    want = {key: (l.quantity, l.amount) for key, l in unique.items()}
    for key in set(got) | set(want):
        assert got.get(key, (D(0), D(0))) == want.get(key, (D(0), D(0))), key
    for l in plan:
        if l.kind == "charge":
            assert l.usage_period not in closed and l in desired
        else:
            assert l.kind == "correction" and (l.quantity, l.amount) != (D(0), D(0))


# ----------------------------------------------------- integer arithmetic against Fraction

@SETTINGS
@given(num=st.integers(-10**30, 10**30), den=st.integers(1, 10**18))
def test_integer_half_even_division_is_fractions_round(num, den):
    from billing.price import _div_half_even

    assert _div_half_even(num, den) == round(Fraction(num, den))
    assert _div_half_even(2 * num + den, 2 * den) == round(Fraction(2 * num + den, 2 * den))


@SETTINGS
@given(job=jobs(), basis=st.sampled_from(["allocated", "used", "max"]))
def test_cpu_and_mem_quantities_match_an_exact_fraction_oracle(job, basis):
    card = load_rate_card(
        'currency = "EUR"\nscale = 2\nperiod = "month"\ntimezone = "UTC"\n'
        '[[rules]]\nname = "r"\nfrom = 2025-01-01\n[rules.rates]\ncpu_hour = "1"\n'
        f'mem_gib_hour = "1"\n[rules.basis]\ncpu = "{basis}"\nmem = "{basis}"\n')
    hour = Fraction(3600)
    alloc_cpu = Fraction(job.cpus * job.elapsed_s) / hour
    used_cpu = None if job.cpu_used_s is None else Fraction(job.cpu_used_s) / hour
    alloc_mem = Fraction(job.mem_bytes * job.elapsed_s, 2**30) / hour
    used_mem = None if job.mem_used_byte_s is None else Fraction(job.mem_used_byte_s, 2**30) / hour

    def pick(allocated, used):
        if basis == "allocated":
            return allocated
        if basis == "used":
            return used or Fraction(0)
        return allocated if used is None else max(allocated, used)

    expected = {}
    for resource, exact in (("cpu", pick(alloc_cpu, used_cpu)), ("mem", pick(alloc_mem, used_mem))):
        units = round(exact * 10**6)                  # Fraction's round(): half-even
        if units:
            expected[resource] = (D(units).scaleb(-6), basis)
    assert job_quantities(job, card.rules[0]) == expected
