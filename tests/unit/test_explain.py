"""billing.explain: a job's lines with where their numbers come from. Worked by hand.

Job 77 (2 CPUs) ran 2026-10-31 22:00Z to 2026-11-01 02:00Z: 14400 s, 7200 s in each month
(card zone UTC). Whole job: 2 x 14400 / 3600 = 8.000000 core-hours.
  card v1 (cpu 1.00): October 4.000000 -> 4.00, November 4.000000 -> 4.00.
  October is closed; card v2 (cpu 1.50) reprices: November's line becomes 4.000000 x 1.50
  = 6.00, and October gets a correction posted in November: 0 core-hours, 6.00 - 4.00 =
  +2.00. Total 4.00 + 6.00 + 2.00 = 12.00 = 8 x 1.50.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

import pytest

from billing.explain import explain_job, explain_text, quantity_formula
from billing.rates import load_rate_card
from billing.records import ChargeLine, JobRecord

CARD = """currency = "EUR"
scale = 2
period = "month"
timezone = "UTC"
[[rules]]
name = "base"
from = 2026-01-01
[rules.rates]
cpu_hour = "{rate}"
"""
V1, V2 = load_rate_card(CARD.format(rate="1.00")), load_rate_card(CARD.format(rate="1.50"))
SUBMIT = datetime(2026, 10, 31, 21, 0, tzinfo=UTC)
JOB = JobRecord(cluster="lab", job_id="77", job_id_raw=77, submit=SUBMIT, state="COMPLETED",
                state_raw="COMPLETED", account="physics", user="alice", partition="batch",
                start=datetime(2026, 10, 31, 22, 0, tzinfo=UTC),
                end=datetime(2026, 11, 1, 2, 0, tzinfo=UTC), elapsed_s=14400, nodes=1,
                cpus=2, cpu_used_s=D(20000), final=True)


def line(usage, posted, qty, rate, amount, card, kind="charge") -> ChargeLine:
    return ChargeLine(cluster="lab", job_id_raw=77, submit=SUBMIT, usage_period=usage,
                      posted_period=posted, resource="cpu", quantity=D(qty), unit="core_hour",
                      rate=D(rate), amount=D(amount), currency="EUR", rule="base",
                      rate_card=card.version, basis="allocated", kind=kind)


LINES = [
    line("2026-11", "2026-11", "4.000000", "1.50", "6.00", V2),
    line("2026-10", "2026-11", "0.000000", "1.50", "2.00", V2, kind="correction"),
    line("2026-10", "2026-10", "4.000000", "1.00", "4.00", V1),
]


def test_every_line_says_where_its_numbers_come_from():
    doc = explain_job(JOB, LINES, {V1.version: V1, V2.version: V2})
    assert doc["periods"] == [{"period": "2026-10", "seconds": 7200, "of_seconds": 14400},
                              {"period": "2026-11", "seconds": 7200, "of_seconds": 14400}]
    october, correction, november = doc["lines"]     # posted period, resource, usage period
    assert (october["posted_period"], october["quantity"], october["rate"],
            october["amount"], october["rate_card"], october["rule"]) == (
        "2026-10", "4", "1", "4.00", V1.version, "base")
    assert october["how"] == "2 CPUs x 14400 s / 3600"
    assert october["whole_job_quantity"] == "8"
    assert october["share"] == "7200 of 14400 s of the run fell in 2026-10"
    assert october["check"] == "4 x 1 = 4 -> 4.00"
    assert (october["rule_matches"], october["rule_from"]) == ("every job", "2026-01-01")
    assert (november["amount"], november["rate"], november["check"]) == (
        "6.00", "1.5", "4 x 1.5 = 6 -> 6.00")
    assert correction["kind"] == "correction" and correction["amount"] == "2.00"
    assert correction["corrects"] == {
        "usage_period": "2026-10",
        "billed_before": {"quantity": "4", "amount": "4.00"},
        "after": {"quantity": "4", "amount": "6.00"}}
    assert (doc["total"], doc["currency"], doc["totals"]) == ("12.00", "EUR", {"EUR": "12.00"})


def test_the_lines_of_a_posted_period_are_the_statement_lines():
    # November's statement for physics lists job 77's charge (6.00) and the correction
    # of October (2.00), in that order (resource, then usage period, then kind).
    doc = explain_job(JOB, LINES, {V1.version: V1, V2.version: V2})
    november = [(x["usage_period"], x["resource"], x["quantity"], x["amount"], x["kind"])
                for x in doc["lines"] if x["posted_period"] == "2026-11"]
    assert november == [("2026-10", "cpu", "0", "2.00", "correction"),
                        ("2026-11", "cpu", "4", "6.00", "charge")]
    assert sum(D(x["amount"]) for x in doc["lines"]) == D(doc["total"])


def test_a_missing_card_is_said_and_the_line_kept():
    doc = explain_job(JOB, LINES[2:], {})
    (only,) = doc["lines"]
    assert only["card_available"] is False and "whole_job_quantity" not in only
    assert doc["periods"] == [] and doc["total"] == "4.00"
    assert "(card not available)" in "\n".join(explain_text(doc))


def test_formulas_per_basis():
    assert quantity_formula(JOB, "cpu", "used", 14400) == "TotalCPU 20000 s / 3600"
    assert quantity_formula(JOB, "cpu", "max", 14400) == (
        "the larger of allocated (2 CPUs x 14400 s / 3600) and used (TotalCPU 20000 s / 3600)")
    gpu_job = JobRecord(**{**{f: getattr(JOB, f) for f in JOB.__slots__ if f != "raw_digest"},
                           "gpus": (("h100", 4), ("untyped", 1))})
    assert quantity_formula(gpu_job, "gpu:h100", "allocated", 3600) == \
        "4 GPUs x 3600 s / 3600"
    assert quantity_formula(gpu_job, "gpu", "allocated", 3600) == "1 GPUs x 3600 s / 3600"
    assert quantity_formula(JOB, "mem", "used", 10) == "memory use not recorded: 0"


def test_text_and_refusals():
    text = explain_text(explain_job(JOB, LINES, {V1.version: V1, V2.version: V2}))
    assert text[0].startswith("job 77 (cluster lab, JobIDRaw 77")
    assert "  split by period: 2026-10 7200 s, 2026-11 7200 s" in text
    assert text[-1] == "  total 12.00 EUR"
    other = ChargeLine(**{**{f: getattr(LINES[0], f) for f in LINES[0].__slots__},
                          "job_id_raw": 78})
    with pytest.raises(ValueError, match="line of job"):
        explain_job(JOB, [other], {})
