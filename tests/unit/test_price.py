"""billing.price on the real fixture records and on synthetic ones, amounts worked by hand.

Real records: tests/fixtures/sacct-wide-header.psv through FileSource and rollup_steps.
Arithmetic conventions in the comments: quantities are rounded half-even to 6 places
first, then amount = quantity x rate rounded half-even to the card's scale.
Memory: 100M = 104857600 B = 0.09765625 GiB; 1G = 1 GiB.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from billing import price
from billing.price import (
    job_quantities,
    job_total,
    largest_remainder,
    line_amount,
    plan_lines,
    price_job,
    price_jobs,
    pricing_outcome,
    quantize_quantity,
    round_amount,
)
from billing.rates import RateCard, load_rate_card
from billing.records import ChargeLine, JobRecord
from billing.rollup import (
    period_after,
    period_bounds,
    period_of,
    rollup_steps,
    split_by_period,
)
from collector.slurm.filesource import FileSource

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "sacct-wide-header.psv"
BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def make_card(rules: str, *, scale: int = 2, tz: str = "UTC", extra: str = "") -> RateCard:
    return load_rate_card(f'currency = "EUR"\nscale = {scale}\nperiod = "month"\n'
                          f'timezone = "{tz}"\n{extra}\n{rules}')


BIG_RULES = """
[[rules]]
name = "base"
from = 2026-01-01
[rules.rates]
cpu_hour = "36.00"
mem_gib_hour = "7.20"
gpu_hour = "360"
node_hour = "3.6"
billing_unit_hour = "1.80"
energy_kwh = "0.30"

[[rules]]
name = "chemistry"
match = { account = "chemistry" }
from = 2026-01-01
[rules.rates]
cpu_hour = "18.00"
gpu_hour = "720"
"""
BIG = make_card(BIG_RULES)


def simple_card(rates: str, *, scale: int = 2, tz: str = "UTC", extra: str = "",
                basis: str = "") -> RateCard:
    return make_card(f'[[rules]]\nname = "r"\nfrom = 2026-01-01\n[rules.rates]\n{rates}\n'
                     + (f"[rules.basis]\n{basis}\n" if basis else ""),
                     scale=scale, tz=tz, extra=extra)


@pytest.fixture(scope="module")
def jobs() -> list[JobRecord]:
    source = FileSource(FIXTURE, tz=ZoneInfo("UTC"), cluster=None)
    return [r for r in rollup_steps(source.fetch(None)) if isinstance(r, JobRecord)]


def real(jobs, job_id: str, state: str | None = None) -> JobRecord:
    (found,) = [j for j in jobs if j.job_id == job_id and (state is None or j.state == state)]
    return found


def synthetic(**kw) -> JobRecord:
    base = {"cluster": "lab", "job_id": "900", "job_id_raw": 900,
            "submit": at("2026-11-01T00:00:00"), "state": "COMPLETED",
            "state_raw": "COMPLETED", "partition": "batch", "account": "physics",
            "user": "root", "qos": "normal", "start": at("2026-11-10T10:00:00"),
            "end": at("2026-11-10T11:00:00"), "elapsed_s": 3600, "nodes": 1, "cpus": 1,
            "final": True}
    base.update(kw)
    return JobRecord(**base)


def table(lines: list[ChargeLine]) -> list[tuple]:
    return [(l.usage_period, l.resource, l.quantity, l.rate, l.amount) for l in lines]


# ------------------------------------------------------------------ real records, by hand

NOV = "2026-11"
REAL_CASES = {
    # job 2: 2 CPUs, 1 GiB, 1 GPU, 1 node, billing=4, ElapsedRaw 11 s
    "2": ([
        ("cpu", "0.006111", "36.00", "0.22"),     # 2 x 11 = 22 core-s / 3600 = 0.0061111 -> 0.006111; x 36 = 0.219996 -> 0.22
        ("mem", "0.003056", "7.20", "0.02"),      # 1 GiB x 11 / 3600 = 0.0030556 -> 0.003056; x 7.20 = 0.0220032 -> 0.02
        ("gpu", "0.003056", "360", "1.10"),       # 1 x 11 / 3600 -> 0.003056; x 360 = 1.10016 -> 1.10
        ("node", "0.003056", "3.6", "0.01"),      # x 3.6 = 0.0110016 -> 0.01
        ("billing", "0.012222", "1.80", "0.02"),  # 4 x 11 = 44 / 3600 = 0.0122222 -> 0.012222; x 1.8 = 0.0219996 -> 0.02
    ], "1.37"),                                   # 0.22 + 0.02 + 1.10 + 0.01 + 0.02
    # job 3: 4 CPUs, 2 GiB, 2 GPUs, 1 node, billing=8, 8 s
    "3": ([
        ("cpu", "0.008889", "36.00", "0.32"),     # 32 / 3600 = 0.0088889 -> 0.008889; x 36 = 0.320004 -> 0.32
        ("mem", "0.004444", "7.20", "0.03"),      # 16 / 3600 = 0.0044444 -> 0.004444; x 7.2 = 0.0319968 -> 0.03
        ("gpu", "0.004444", "360", "1.60"),       # 16 / 3600 -> 0.004444; x 360 = 1.59984 -> 1.60
        ("node", "0.002222", "3.6", "0.01"),      # 8 / 3600 = 0.0022222 -> 0.002222; x 3.6 = 0.0079992 -> 0.01
        ("billing", "0.017778", "1.80", "0.03"),  # 64 / 3600 = 0.0177778 -> 0.017778; x 1.8 = 0.0320004 -> 0.03
    ], "1.99"),
    # job 10 (TIMEOUT): 1 CPU, 100M, billing=1, 76 s
    "10": ([
        ("cpu", "0.021111", "36.00", "0.76"),     # 76 / 3600 = 0.0211111 -> 0.021111; x 36 = 0.759996 -> 0.76
        ("mem", "0.002062", "7.20", "0.01"),      # 0.09765625 x 76 = 7.421875 / 3600 = 0.0020616 -> 0.002062; x 7.2 = 0.0148464 -> 0.01
        ("node", "0.021111", "3.6", "0.08"),      # x 3.6 = 0.0759996 -> 0.08
        ("billing", "0.021111", "1.80", "0.04"),  # x 1.8 = 0.0379998 -> 0.04
    ], "0.89"),
    # job 11: account chemistry -> rule "chemistry" (cpu and gpu only: no inheritance)
    "11": ([
        ("cpu", "0.003056", "18.00", "0.06"),     # 1 x 11 / 3600 -> 0.003056; x 18 = 0.055008 -> 0.06
        ("gpu", "0.003056", "720", "2.20"),       # x 720 = 2.20032 -> 2.20
    ], "2.26"),
    # job 12: chemistry, 2 CPUs, 6 s, no GPU
    "12": ([
        ("cpu", "0.003333", "18.00", "0.06"),     # 12 / 3600 = 0.0033333 -> 0.003333; x 18 = 0.059994 -> 0.06
    ], "0.06"),
    # array task 6_3: 1 CPU, 200M = 0.1953125 GiB, billing=1, 5 s; zero amounts still written
    "6_3": ([
        ("cpu", "0.001389", "36.00", "0.05"),     # 5 / 3600 = 0.0013889 -> 0.001389; x 36 = 0.050004 -> 0.05
        ("mem", "0.000271", "7.20", "0.00"),      # 0.9765625 / 3600 = 0.00027127 -> 0.000271; x 7.2 = 0.0019512 -> 0.00
        ("node", "0.001389", "3.6", "0.01"),      # x 3.6 = 0.0050004 -> 0.01
        ("billing", "0.001389", "1.80", "0.00"),  # x 1.8 = 0.0025002 -> 0.00
    ], "0.06"),
}


@pytest.mark.parametrize("job_id", sorted(REAL_CASES))
def test_real_jobs_by_hand(jobs, job_id):
    expected, total = REAL_CASES[job_id]
    job = real(jobs, job_id)
    lines = price_job(BIG, job)
    assert table(lines) == [(NOV, r, D(q), D(rate), D(a)) for r, q, rate, a in expected]
    assert job_total(lines) == D(total)
    rule = "chemistry" if job.account == "chemistry" else "base"
    for line in lines:
        assert (line.cluster, line.job_id_raw, line.submit) == (job.cluster, job.job_id_raw,
                                                                 job.submit)
        assert line.posted_period == line.usage_period and line.kind == "charge"
        assert (line.currency, line.rule, line.rate_card) == ("EUR", rule, BIG.version)
        assert line.basis == "allocated"
        assert line.unit == {"cpu": "core_hour", "mem": "gib_hour", "gpu": "gpu_hour",
                             "node": "node_hour", "billing": "billing_unit_hour"}[line.resource]
        assert line.amount.as_tuple().exponent == -2


def test_requeued_job_second_record(jobs):
    # job 16's COMPLETED record: 1 CPU, 100M, billing=1, 20 s
    lines = price_job(BIG, real(jobs, "16", "COMPLETED"))
    assert table(lines) == [
        (NOV, "cpu", D("0.005556"), D("36.00"), D("0.20")),    # 20/3600 -> 0.005556; x 36 = 0.200016
        (NOV, "mem", D("0.000543"), D("7.20"), D("0.00")),     # 1.953125/3600 = 0.00054253 -> 0.000543; x 7.2 = 0.0039096
        (NOV, "node", D("0.005556"), D("3.6"), D("0.02")),     # x 3.6 = 0.0200016
        (NOV, "billing", D("0.005556"), D("1.80"), D("0.01")),  # x 1.8 = 0.0100008
    ]


@pytest.mark.parametrize(("job_id", "state", "outcome"), [
    ("1", None, "zero elapsed"),              # Start == End, ElapsedRaw 0
    ("14+0", None, "not started"),            # het job cancelled while pending
    ("14+1", None, "not started"),
    ("21", None, "running"),
    ("16", "REQUEUED", "priced"),             # the old record of a requeue has an End: final
    ("9", None, "priced"),                    # cancelled after 4 s of running: it costs
    ("2", None, "priced"),
])
def test_real_outcomes(jobs, job_id, state, outcome):
    job = real(jobs, job_id, state)
    assert pricing_outcome(BIG, job) == outcome
    assert (price_job(BIG, job) == []) == (outcome != "priced")


def test_price_jobs_on_the_whole_fixture(jobs):
    result = price_jobs(BIG, jobs)
    assert result.outcomes == {"priced": 18, "zero elapsed": 1, "not started": 2,
                               "running": 1}
    assert result.unpriced == []
    assert result.lines == [line for job in jobs for line in price_job(BIG, job)]
    assert job_total(result.lines) == sum(job_total(price_job(BIG, j)) for j in jobs)


def test_exempt_states(jobs):
    card = make_card(BIG_RULES, extra='exempt_states = ["failed", "NODE_FAIL"]')
    assert pricing_outcome(card, real(jobs, "7")) == "exempt"    # FAILED
    assert price_job(card, real(jobs, "7")) == []
    assert price_job(card, synthetic(state="NODE_FAIL")) == []
    assert pricing_outcome(card, real(jobs, "2")) == "priced"


# ------------------------------------------------------------------------ rule selection

BOB_RULES = BIG_RULES + """
[[rules]]
name = "chem-bob-carol"
match = { account = "chemistry", user = ["bob", "carol"] }
from = 2026-01-01
[rules.rates]
cpu_hour = "9.00"

[[rules]]
name = "bob"
match = { user = "bob" }
from = 2026-01-01
priority = 1
[rules.rates]
cpu_hour = "72.00"
"""


def test_specificity_lists_and_priority(jobs):
    card = make_card(BOB_RULES)
    # job 12: bob in chemistry -> the 2-key rule beats "chemistry" and "bob"
    assert table(price_job(card, real(jobs, "12"))) == [
        (NOV, "cpu", D("0.003333"), D("9.00"), D("0.03"))]       # 0.003333 x 9 = 0.029997
    # job 11: alice in chemistry -> "chemistry" (1 key, priority 0; "bob" does not fit)
    assert {l.rule for l in price_job(card, real(jobs, "11"))} == {"chemistry"}
    # job 13: bob in physics -> "bob" (1 key) beats "base" (0 keys)
    assert table(price_job(card, real(jobs, "13"))) == [
        (NOV, "cpu", D("0.001111"), D("72.00"), D("0.08"))]      # 4/3600 -> 0.001111; x 72 = 0.079992


def test_chemistry_vs_bob_resolved_by_priority(jobs):
    # "chemistry" and "bob" both fit bob-in-chemistry with one key each: priority decides.
    card = make_card(BIG_RULES.replace('name = "chemistry"', 'name = "chemistry"\npriority = 2')
                     + '[[rules]]\nname = "bob"\nmatch = { user = "bob" }\nfrom = 2026-01-01\n'
                       'priority = 1\n[rules.rates]\ncpu_hour = "72.00"\n')
    assert {l.rule for l in price_job(card, real(jobs, "12"))} == {"chemistry"}
    assert {l.rule for l in price_job(card, real(jobs, "13"))} == {"bob"}


def test_rule_change_mid_month_applies_from_the_next_slice():
    card = make_card("""
        [[rules]]
        name = "old"
        from = 2026-01-01
        until = 2026-11-15
        [rules.rates]
        cpu_hour = "1"

        [[rules]]
        name = "new"
        from = 2026-11-15
        [rules.rates]
        cpu_hour = "2"
        """)
    # Nov 10 00:00 -> Dec 5 00:00: 600 h of 1 CPU. The November slice starts Nov 10 (old
    # rule, although the rule changes on Nov 15); the December slice starts Dec 1 (new).
    job = synthetic(start=at("2026-11-10T00:00:00"), end=at("2026-12-05T00:00:00"),
                    elapsed_s=600 * 3600)
    lines = price_job(card, job)
    assert [(l.usage_period, l.rule, l.quantity, l.amount) for l in lines] == [
        ("2026-11", "old", D("504.000000"), D("504.00")),   # 21 days x 24 h x 1
        ("2026-12", "new", D("96.000000"), D("192.00")),    # 4 days x 24 h x 2
    ]
    # A job that starts on Nov 14 and ends on Nov 15 is priced by "old" for all of it.
    late = synthetic(start=at("2026-11-14T23:00:00"), end=at("2026-11-15T01:00:00"),
                     elapsed_s=7200)
    assert [(l.rule, l.amount) for l in price_job(card, late)] == [("old", D("2.00"))]
    later = synthetic(start=at("2026-11-20T00:00:00"), end=at("2026-11-20T01:00:00"))
    assert [(l.rule, l.amount) for l in price_job(card, later)] == [("new", D("2.00"))]


def test_periods_without_a_rule_are_reported():
    card = simple_card('cpu_hour = "1"')
    # 2025-12-31T23:00 -> 2026-01-01T01:00: the December hour has no rule (from 2026-01-01)
    job = synthetic(start=at("2025-12-31T23:00:00"), end=at("2026-01-01T01:00:00"),
                    elapsed_s=7200)
    assert pricing_outcome(card, job) == "partly priced"
    assert table(price_job(card, job)) == [("2026-01", "cpu", D("1.000000"), D(1), D("1.00"))]
    old = synthetic(start=at("2025-06-01T00:00:00"), end=at("2025-06-01T01:00:00"))
    assert pricing_outcome(card, old) == "no matching rule" and price_job(card, old) == []
    result = price_jobs(card, [job, old, synthetic()])
    assert result.outcomes == {"partly priced": 1, "no matching rule": 1, "priced": 1}
    assert [(u.job, u.periods) for u in result.unpriced] == [(job, ("2025-12",)),
                                                             (old, ("2025-06",))]


def test_no_charge_and_zero_rates():
    # Only GPUs are priced: a CPU-only job matches but owes nothing.
    assert pricing_outcome(simple_card('gpu_hour = "1"'), synthetic()) == "no charge"
    # A rate of "0" writes its line (quantity shows), a missing rate writes none.
    lines = price_job(simple_card('cpu_hour = "0"'), synthetic(cpus=2))
    assert table(lines) == [("2026-11", "cpu", D("2.000000"), D(0), D("0.00"))]


# ------------------------------------------------------------------------ quantities, basis

USED_CARD = simple_card('cpu_hour = "36"\nmem_gib_hour = "7.2"', scale=6,
                        basis='cpu = "used"\nmem = "used"')
MAX_CARD = simple_card('cpu_hour = "36"\nmem_gib_hour = "7.2"', scale=6,
                       basis='cpu = "max"\nmem = "max"')


def test_used_basis(jobs):
    lines = price_job(USED_CARD, real(jobs, "2"))
    assert [(l.resource, l.basis, l.quantity, l.amount) for l in lines] == [
        # TotalCPU 6.220 s / 3600 = 0.00172778 -> 0.001728; x 36 = 0.062208
        ("cpu", "used", D("0.001728"), D("0.062208")),
        # 3568660480 B.s / 2^30 = 3.32355499 GiB.s / 3600 = 0.00092321 -> 0.000923;
        # x 7.2 = 0.0066456 -> 0.006646 (scale 6)
        ("mem", "used", D("0.000923"), D("0.006646")),
    ]


def test_max_basis(jobs):
    # job 2: allocation is larger for both
    lines = price_job(MAX_CARD, real(jobs, "2"))
    assert [(l.resource, l.basis, l.quantity) for l in lines] == [
        ("cpu", "max", D("0.006111")), ("mem", "max", D("0.003056"))]
    # job 11: memory used (3567173632 B.s / 2^30 / 3600 = 0.00092283 -> 0.000923) beats the
    # allocation (300M = 0.29296875 GiB x 11 s / 3600 = 0.00089518 -> 0.000895)
    mem = [l for l in price_job(MAX_CARD, real(jobs, "11")) if l.resource == "mem"]
    assert [(l.quantity, l.amount) for l in mem] == [(D("0.000923"), D("0.006646"))]


def test_missing_usage_counts_zero_for_used_and_allocation_for_max(jobs):
    job = real(jobs, "8")            # its steps recorded no memory: mem_used_byte_s None
    assert job.mem_used_byte_s is None
    used = price_job(USED_CARD, job)
    # cpu used 0.015 s / 3600 = 0.0000041667 -> 0.000004 x 36 = 0.000144; mem: 0 -> no line
    assert [(l.resource, l.quantity, l.amount) for l in used] == [
        ("cpu", D("0.000004"), D("0.000144"))]
    mx = price_job(MAX_CARD, job)
    # mem falls back to the allocation: 0.09765625 GiB x 1 s / 3600 = 0.0000271 -> 0.000027
    assert [(l.resource, l.quantity) for l in mx] == [("cpu", D("0.000278")),
                                                      ("mem", D("0.000027"))]


def test_energy():
    card = simple_card('energy_kwh = "0.30"')
    # 1,800,000 J / 3,600,000 = 0.5 kWh x 0.30 = 0.15
    lines = price_job(card, synthetic(energy_j=1_800_000))
    assert [(l.resource, l.unit, l.basis, l.quantity, l.amount) for l in lines] == [
        ("energy", "kwh", "used", D("0.500000"), D("0.15"))]
    assert price_job(card, synthetic(energy_j=0)) == []        # Slurm's "0": no line
    assert price_job(card, synthetic(energy_j=None)) == []


def test_typed_gpus():
    card = simple_card('cpu_hour = "0.031"\ngpu_hour = "0.90"\n'
                       '[rules.rates.gpu_hour_by_type]\na100 = "2.35"')
    job = synthetic(cpus=4, gpus=(("a100", 2), ("untyped", 1)))
    assert table(price_job(card, job)) == [
        (NOV, "cpu", D("4.000000"), D("0.031"), D("0.12")),       # 4 h x 0.031 = 0.124
        (NOV, "gpu", D("1.000000"), D("0.90"), D("0.90")),        # the untyped one
        (NOV, "gpu:a100", D("2.000000"), D("2.35"), D("4.70")),
    ]
    assert [l.unit for l in price_job(card, job)] == ["core_hour", "gpu_hour", "gpu_hour"]
    # h100 has no typed rate: priced at gpu_hour, and its line still says gpu:h100
    job2 = synthetic(cpus=0, gpus=(("a100", 2), ("h100", 1), ("untyped", 1)))
    assert table(price_job(card, job2)) == [
        (NOV, "gpu", D("1.000000"), D("0.90"), D("0.90")),        # the untyped one
        (NOV, "gpu:a100", D("2.000000"), D("2.35"), D("4.70")),
        (NOV, "gpu:h100", D("1.000000"), D("0.90"), D("0.90")),   # gpu_hour, typed line
    ]
    # Without any typed rate every type still has its own line, at gpu_hour: 1 untyped
    # GPU-hour = 0.90, 2 a100 GPU-hours x 0.90 = 1.80 (0.90 + 1.80 = the 2.70 of 3 hours).
    assert table(price_job(simple_card('gpu_hour = "0.90"'), job)) == [
        (NOV, "gpu", D("1.000000"), D("0.90"), D("0.90")),
        (NOV, "gpu:a100", D("2.000000"), D("0.90"), D("1.80"))]
    # Without gpu_hour only a100 (its own rate) is charged.
    only_typed = simple_card('[rules.rates.gpu_hour_by_type]\na100 = "2.35"')
    assert table(price_job(only_typed, job)) == [
        (NOV, "gpu:a100", D("2.000000"), D("2.35"), D("4.70"))]
    assert table(price_job(only_typed, job2)) == [
        (NOV, "gpu:a100", D("2.000000"), D("2.35"), D("4.70"))]


def test_typed_gpus_at_the_generic_rate_keep_their_type_and_quantity():
    # The case: a rule with gpu_hour only; an h100 job and an a100 job, each of
    # 2 GPUs x 5 h = 10 GPU-hours x 0.90 = 9.00, billed as gpu:h100 and gpu:a100.
    card = simple_card('gpu_hour = "0.90"')
    for gpu_type in ("h100", "a100"):
        job = synthetic(cpus=0, gpus=((gpu_type, 2),), end=at("2026-11-10T15:00:00"),
                        elapsed_s=5 * 3600)
        lines = price_job(card, job)
        assert [(l.resource, l.unit, l.quantity, l.rate, l.amount, l.rule) for l in lines] == [
            (f"gpu:{gpu_type}", "gpu_hour", D("10.000000"), D("0.90"), D("9.00"), "r")]
        assert card.rules[0].rates.for_resource(f"gpu:{gpu_type}") == D("0.90")


def test_typed_lines_round_each_line_on_its_own():
    # Rounding per line (README, Pricing: "Typed GPU lines and rounding"). Rate 1 EUR per
    # GPU-hour, scale 2, 1 a100 + 1 h100 for 18 s: each type is 18/3600 = 0.005000
    # GPU-hours x 1 = 0.005 -> 0.00 (half-even: the even digit 0), so the job pays 0.00.
    # One merged line of 0.010000 GPU-hours would have cost 0.01: one cent less per job
    # with two GPU types at the same rate, at most.
    card = simple_card('gpu_hour = "1"')
    job = synthetic(cpus=0, gpus=(("a100", 1), ("h100", 1)), end=at("2026-11-10T10:00:18"),
                    elapsed_s=18)
    assert table(price_job(card, job)) == [
        (NOV, "gpu:a100", D("0.005000"), D(1), D("0.00")),
        (NOV, "gpu:h100", D("0.005000"), D(1), D("0.00"))]
    # 54 s: 0.015 each -> 0.02 each (half-even: 2 is even) = 0.04; merged 0.03 -> 0.03.
    job = dataclasses.replace(job, end=at("2026-11-10T10:00:54"), elapsed_s=54)
    assert table(price_job(card, job)) == [
        (NOV, "gpu:a100", D("0.015000"), D(1), D("0.02")),
        (NOV, "gpu:h100", D("0.015000"), D(1), D("0.02"))]
    assert job_total(price_job(card, job)) == D("0.04")


def test_job_quantities_match_the_unsplit_lines(jobs):
    job = real(jobs, "2")
    assert job_quantities(job, BIG.rule_named("base")) == {
        "cpu": (D("0.006111"), "allocated"), "mem": (D("0.003056"), "allocated"),
        "gpu": (D("0.003056"), "allocated"), "node": (D("0.003056"), "allocated"),
        "billing": (D("0.012222"), "allocated")}


# ------------------------------------------------------------------------------ rounding

@pytest.mark.parametrize(("rate", "amount"), [
    ("0.125", "0.12"), ("0.135", "0.14"), ("0.145", "0.14"), ("0.155", "0.16"),
    ("0.1251", "0.13"), ("0.0049", "0.00"), ("0.005", "0.00"), ("0.015", "0.02"),
])
def test_half_even_at_the_boundary(rate, amount):
    # 1 CPU x 3600 s = 1.000000 core-hour, so the amount is the rate rounded
    lines = price_job(simple_card(f'cpu_hour = "{rate}"'), synthetic())
    assert [l.amount for l in lines] == [D(amount)]
    assert round_amount(D(rate), 2) == D(amount)


def test_round_amount_scales():
    assert round_amount(D("2.5"), 0) == D(2) and round_amount(D("3.5"), 0) == D(4)
    assert str(round_amount(D("0.1"), 2)) == "0.10"
    assert str(round_amount(D("1.0000005"), 6)) == "1.000000"
    assert str(round_amount(D("1.0000015"), 6)) == "1.000002"
    assert round_amount(D("-0.125"), 2) == D("-0.12")
    assert line_amount(D("36.00"), D("0.006111"), 2) == D("0.22")
    with pytest.raises(ValueError):
        round_amount(D(1), -1)


def test_rounding_ignores_the_callers_decimal_context():
    import decimal
    with decimal.localcontext() as ctx:
        ctx.prec = 3
        ctx.rounding = decimal.ROUND_UP
        assert line_amount(D("0.0047"), D("1234.567891"), 6) == D("5.802469")  # 5.8024690877
        assert round_amount(D("0.125"), 2) == D("0.12")


def test_quantities_round_half_even_to_six_places():
    assert quantize_quantity(D("0.0000005")) == D("0.000000")
    assert quantize_quantity(D("0.0000015")) == D("0.000002")
    assert str(quantize_quantity(1)) == "1.000000"


# -------------------------------------------------------------------- periods and slices

def test_berlin_periods():
    assert period_of(at("2026-10-31T23:10:00"), UTC) == "2026-10"
    assert period_of(at("2026-10-31T23:10:00"), BERLIN) == "2026-11"   # 00:10 CET
    assert period_bounds("2026-11", BERLIN) == (at("2026-10-31T23:00:00"),
                                                at("2026-11-30T23:00:00"))
    # summer time: 2026-08 begins at 2026-07-31T22:00Z (CEST = UTC+2)
    assert period_bounds("2026-08", BERLIN)[0] == at("2026-07-31T22:00:00")
    assert period_after("2026-12") == "2027-01"
    with pytest.raises(ValueError):
        period_bounds("2026-13", UTC)


def test_berlin_card_puts_the_job_in_november():
    rates = 'cpu_hour = "36"'
    # 23:10Z-23:50Z on Oct 31 is 00:10-00:50 CET on Nov 1 (DST ended on Oct 25, 2026)
    job = synthetic(start=at("2026-10-31T23:10:00"), end=at("2026-10-31T23:50:00"),
                    elapsed_s=2400)
    assert [(l.usage_period, l.quantity, l.amount)
            for l in price_job(simple_card(rates, tz="Europe/Berlin"), job)] == [
        ("2026-11", D("0.666667"), D("24.00"))]      # 2400/3600 = 0.6666667 -> 0.666667; x 36 = 24.000012
    assert [l.usage_period for l in price_job(simple_card(rates), job)] == ["2026-10"]
    # 22:30Z-23:30Z is 23:30-00:30 CET: half in October, half in November
    half = synthetic(start=at("2026-10-31T22:30:00"), end=at("2026-10-31T23:30:00"))
    assert [(l.usage_period, l.quantity)
            for l in price_job(simple_card(rates, tz="Europe/Berlin"), half)] == [
        ("2026-10", D("0.500000")), ("2026-11", D("0.500000"))]
    # in summer time the same clock times shift by one more hour: 22:30Z-23:30Z on
    # Jul 31 is 00:30-01:30 CEST on Aug 1
    summer = synthetic(start=at("2026-07-31T22:30:00"), end=at("2026-07-31T23:30:00"))
    assert [l.usage_period
            for l in price_job(simple_card(rates, tz="Europe/Berlin"), summer)] == ["2026-08"]


def test_oct_nov_dec_pro_rata():
    card = simple_card('cpu_hour = "0.031"')
    # 2026-10-31T12:00Z -> 2026-12-01T12:00Z = 744 h; 12 h in October, 720 in November,
    # 12 in December
    job = synthetic(start=at("2026-10-31T12:00:00"), end=at("2026-12-01T12:00:00"),
                    elapsed_s=744 * 3600)
    lines = price_job(card, job)
    assert table(lines) == [
        ("2026-10", "cpu", D("12.000000"), D("0.031"), D("0.37")),    # 0.372
        ("2026-11", "cpu", D("720.000000"), D("0.031"), D("22.32")),
        ("2026-12", "cpu", D("12.000000"), D("0.031"), D("0.37")),
    ]
    assert job_total(lines) == D("23.06")      # the sum of the rounded lines (23.064 unsplit)


def test_largest_remainder_split():
    card = simple_card('cpu_hour = "36"', scale=6)
    # 100 s of 1 CPU = 0.0277778 -> 0.027778 = 27778 units of 0.000001, 30 s in October
    # and 70 s in November: 27778 x 0.3 = 8333.4 -> 8333, 27778 x 0.7 = 19444.6 -> 19444;
    # the one unit left goes to the larger remainder (November)
    job = synthetic(start=at("2026-10-31T23:59:30"), end=at("2026-11-01T00:01:10"),
                    elapsed_s=100)
    lines = price_job(card, job)
    assert [(l.usage_period, l.quantity) for l in lines] == [
        ("2026-10", D("0.008333")), ("2026-11", D("0.019445"))]
    assert sum(l.quantity for l in lines) == D("0.027778")
    assert largest_remainder(27778, [30, 70]) == [8333, 19445]
    assert largest_remainder(10, [1, 1, 1]) == [4, 3, 3]            # tie: earlier first
    assert largest_remainder(0, [5, 0]) == [0, 0]
    with pytest.raises(ValueError):
        largest_remainder(1, [0, 0])


def test_suspended_time_uses_elapsed_for_quantity_and_wall_time_for_shares():
    card = simple_card('cpu_hour = "1"')
    # 24 h on the wall, half suspended: ElapsedRaw 12 h x 2 CPUs = 24 core-hours, split
    # 12 h / 12 h by wall time across the month boundary
    job = synthetic(cpus=2, start=at("2026-11-30T12:00:00"), end=at("2026-12-01T12:00:00"),
                    elapsed_s=12 * 3600)
    assert [(l.usage_period, l.quantity) for l in price_job(card, job)] == [
        ("2026-11", D("12.000000")), ("2026-12", D("12.000000"))]


def test_start_equals_end_but_elapsed():
    job = synthetic(start=at("2026-11-30T23:59:59"), end=at("2026-11-30T23:59:59"),
                    elapsed_s=36)
    assert table(price_job(simple_card('cpu_hour = "100"'), job)) == [
        ("2026-11", "cpu", D("0.010000"), D(100), D("1.00"))]       # 36/3600 = 0.01


def test_final_job_without_end_runs_its_elapsed():
    job = synthetic(start=at("2026-11-30T23:00:00"), end=None, elapsed_s=7200)
    assert [(l.usage_period, l.quantity) for l in price_job(simple_card('cpu_hour = "1"'),
                                                             job)] == [
        ("2026-11", D("1.000000")), ("2026-12", D("1.000000"))]


def test_split_by_period_parts():
    assert split_by_period(at("2026-11-05T00:00:00"), at("2026-11-05T00:00:00"), UTC) == [
        ("2026-11", 0)]
    assert split_by_period(at("2026-11-30T23:00:00.7"), at("2026-12-01T01:00:00.2"),
                           UTC) == [("2026-11", 3600), ("2026-12", 3600)]
    with pytest.raises(ValueError):
        split_by_period(at("2026-11-05T00:00:01"), at("2026-11-05T00:00:00"), UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        split_by_period(datetime(2026, 11, 5), at("2026-11-05T00:00:00"), UTC)


# ------------------------------------------------------------------------ running jobs

ACCRUE = make_card(BIG_RULES, extra="accrue_running = true")


def test_running_job_without_accrual(jobs):
    assert price_job(BIG, real(jobs, "21"), as_of=at("2026-11-22T13:50:39")) == []


def test_running_job_accrued_to_as_of(jobs):
    job = real(jobs, "21")          # started 12:50:39, 1 CPU, 100M, 1 GPU, billing=3
    lines = price_job(ACCRUE, job, as_of=at("2026-11-22T13:50:39.5"))   # 3600 s (whole)
    assert table(lines) == [
        (NOV, "cpu", D("1.000000"), D("36.00"), D("36.00")),
        (NOV, "mem", D("0.097656"), D("7.20"), D("0.70")),     # 0.09765625 -> 0.097656; x 7.2 = 0.7031232
        (NOV, "gpu", D("1.000000"), D(360), D("360.00")),
        (NOV, "node", D("1.000000"), D("3.6"), D("3.60")),
        (NOV, "billing", D("3.000000"), D("1.80"), D("5.40")),
    ]
    assert job_total(lines) == D("405.70")
    assert pricing_outcome(ACCRUE, job, at("2026-11-22T13:50:39")) == "priced"
    with pytest.raises(ValueError, match="as_of is required"):
        price_job(ACCRUE, job)
    # as_of at Start: nothing yet
    assert pricing_outcome(ACCRUE, job, at("2026-11-22T12:50:39")) == "zero elapsed"


def test_accrued_running_job_across_a_period_boundary():
    job = synthetic(state="RUNNING", final=False, start=at("2026-11-30T23:00:00"), end=None,
                    elapsed_s=0)
    card = simple_card('cpu_hour = "1"', extra="accrue_running = true")
    assert [(l.usage_period, l.quantity)
            for l in price_job(card, job, as_of=at("2026-12-01T01:00:00"))] == [
        ("2026-11", D("1.000000")), ("2026-12", D("1.000000"))]


def test_a_record_with_an_end_is_priced_to_its_end_even_when_accruing(jobs):
    # job 16's REQUEUED record: Slurm gave it an End; price it to there, not to as_of
    job = real(jobs, "16", "REQUEUED")
    lines = price_job(ACCRUE, job, as_of=at("2026-11-23T00:00:00"))
    assert next((l.resource, l.quantity) for l in lines) == ("cpu", D("0.001111"))  # 4 s


# ------------------------------------------------------------------------ plan_lines

def line(period="2026-10", resource="cpu", qty="1.000000", amount="0.03", *, posted=None,
         kind="charge", rate="0.031", job=1, rule="base") -> ChargeLine:
    return ChargeLine(cluster="lab", job_id_raw=job, submit=at("2026-10-01T00:00:00"),
                      usage_period=period, posted_period=posted or period, resource=resource,
                      quantity=D(qty), unit="core_hour" if resource == "cpu" else "gpu_hour",
                      rate=D(rate), amount=D(amount), currency="EUR", rule=rule,
                      rate_card="v1", kind=kind)


def next_open(closed):
    def first_open_after(period: str) -> str:
        period = period_after(period)
        while period in closed:
            period = period_after(period)
        return period
    return first_open_after


def test_plan_open_periods_pass_through():
    desired = [line("2026-11"), line("2026-11", "gpu")]
    assert plan_lines(desired, [], closed=frozenset({"2026-10"}),
                      first_open_after=next_open({"2026-10"})) == desired


def test_plan_correction_for_a_closed_period():
    closed = frozenset({"2026-10"})
    frozen = [line("2026-10", qty="1.000000", amount="0.03")]
    desired = [line("2026-10", qty="2.500000", amount="0.08", rate="0.032", rule="new")]
    (corr,) = plan_lines(desired, frozen, closed=closed, first_open_after=next_open(closed))
    assert (corr.kind, corr.usage_period, corr.posted_period) == ("correction", "2026-10",
                                                                  "2026-11")
    assert (corr.quantity, corr.amount, corr.rate, corr.rule) == (D("1.500000"), D("0.05"),
                                                                  D("0.032"), "new")
    # unchanged: nothing to write
    assert plan_lines([line("2026-10")], [line("2026-10")], closed=closed,
                      first_open_after=next_open(closed)) == []


def test_plan_sums_earlier_corrections_and_skips_closed_periods():
    closed = frozenset({"2026-10", "2026-11"})
    frozen = [line("2026-10", qty="1.000000", amount="0.03"),
              line("2026-10", qty="0.500000", amount="0.02", posted="2026-11",
                   kind="correction")]
    desired = [line("2026-10", qty="1.000000", amount="0.03")]
    (corr,) = plan_lines(desired, frozen, closed=closed, first_open_after=next_open(closed))
    assert (corr.posted_period, corr.quantity, corr.amount) == ("2026-12", D("-0.500000"),
                                                                D("-0.02"))


def test_plan_vanished_resource_and_late_job():
    closed = frozenset({"2026-10"})
    frozen = [line("2026-10", "gpu", qty="2.000000", amount="1.80", rate="0.90")]
    desired = [line("2026-10", "cpu", qty="1.000000", amount="0.03")]   # new in a closed period
    out = plan_lines(desired, frozen, closed=closed, first_open_after=next_open(closed))
    assert [(l.resource, l.kind, l.posted_period, l.quantity, l.amount, l.rate)
            for l in out] == [
        ("cpu", "correction", "2026-11", D("1.000000"), D("0.03"), D("0.031")),
        ("gpu", "correction", "2026-11", D("-2.000000"), D("-1.80"), D("0.90"))]


def test_plan_a_merged_gpu_line_in_a_closed_period_is_reclassified_at_no_cost():
    # Lines priced before typed GPU lines existed: October (closed) billed an h100 job's
    # 2 GPU-hours as an untyped "gpu" line. Repriced now, the job wants gpu:h100: the
    # next open period gets gpu -2.000000 / -1.80 and gpu:h100 +2.000000 / +1.80, which
    # add up to 0.00: the type is corrected, the money is not.
    closed = frozenset({"2026-10"})
    frozen = [line("2026-10", "gpu", qty="2.000000", amount="1.80", rate="0.90")]
    desired = [line("2026-10", "gpu:h100", qty="2.000000", amount="1.80", rate="0.90")]
    out = plan_lines(desired, frozen, closed=closed, first_open_after=next_open(closed))
    assert [(l.resource, l.kind, l.posted_period, l.quantity, l.amount) for l in out] == [
        ("gpu", "correction", "2026-11", D("-2.000000"), D("-1.80")),
        ("gpu:h100", "correction", "2026-11", D("2.000000"), D("1.80"))]
    assert job_total(out) == D("0.00")


def test_plan_refuses_inconsistent_input():
    closed = frozenset({"2026-10"})
    nxt = next_open(closed)
    with pytest.raises(ValueError, match="two desired lines"):
        plan_lines([line(), line()], [], closed=closed, first_open_after=nxt)
    with pytest.raises(ValueError, match="not closed"):
        plan_lines([], [line("2026-11")], closed=closed, first_open_after=nxt)
    with pytest.raises(ValueError, match="desired lines are charges"):
        plan_lines([line(kind="correction")], [], closed=closed, first_open_after=nxt)
    with pytest.raises(ValueError, match="which is closed"):
        plan_lines([line()], [], closed=closed, first_open_after=lambda p: p)
    eur = line()
    usd = dataclasses.replace(eur, currency="USD", amount=D("0.04"))
    with pytest.raises(ValueError, match="currency"):
        plan_lines([usd], [eur], closed=closed, first_open_after=nxt)


def test_module_has_one_rounding_function():
    # Money is rounded in exactly one place: round_amount is the only quantize to a scale.
    source = Path(price.__file__).read_text()
    assert source.count(".quantize(") == 1
