"""The fast paths of the ingest give exactly what the general code gives (hypothesis).

Each fast path is checked against the slower code it short-cuts:
  * RateCard.select_rule (remembered rules per match fields, best first) against the rule
    chosen by the definition in billing.rates: every fitting rule, most match keys, then
    priority, then the earlier in the card;
  * price_job for a job inside one period (no slicing) against job_quantities and
    line_amount of the rule that prices it;
  * jobs._encode (one pass) against jobs._encode_checked (each value validated and
    escaped on its own), for records with hostile text, NULLs and non-UTC times.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.price import job_quantities, line_amount, price_job
from billing.rates import RateCard, load_rate_card
from billing.records import JobRecord
from billing.rollup import split_by_period
from collector.store.jobs import _encode, _encode_checked

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

VALUES = {"cluster": ["lab", "big"], "partition": ["batch", "gpu"],
          "account": ["physics", "chemistry"], "qos": ["normal", "high"],
          "user": ["alice", "bob"]}


@st.composite
def multi_rule_cards(draw) -> RateCard:
    """Cards whose rules overlap in match keys and dates; ties are broken by priority
    (load_rate_card refuses real ties, so those drawings are discarded)."""
    zone = draw(st.sampled_from(["UTC", "Europe/Berlin", "America/New_York"]))
    parts = [f'currency = "EUR"\nscale = 2\nperiod = "month"\ntimezone = "{zone}"\n']
    for i in range(draw(st.integers(1, 6))):
        keys = draw(st.lists(st.sampled_from(sorted(VALUES)), unique=True, max_size=3))
        match = ", ".join(f'{k} = "{draw(st.sampled_from(VALUES[k]))}"' for k in keys)
        start = date(2026, 1, 1) + timedelta(days=draw(st.integers(0, 200)))
        until = ""
        if draw(st.booleans()):
            until = f"until = {start + timedelta(days=draw(st.integers(1, 200)))}\n"
        parts.append(
            f'[[rules]]\nname = "r{i}"\nfrom = {start}\n{until}'
            f"priority = {draw(st.integers(-2, 2)) * 10 + i}\n"
            + (f"match = {{ {match} }}\n" if match else "")
            + f'[rules.rates]\ncpu_hour = "{i + 1}"\n')
    try:
        return load_rate_card("".join(parts))
    except ValueError:
        from hypothesis import reject
        reject()


@st.composite
def matching_jobs(draw) -> JobRecord:
    start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=draw(st.integers(0, 400 * 86400)))
    fields = {key: draw(st.sampled_from(values + [None] if key != "cluster" else values))
              for key, values in VALUES.items()}
    return JobRecord(job_id="1", job_id_raw=1, submit=start, state="COMPLETED",
                     state_raw="COMPLETED", start=start, end=start + timedelta(hours=1),
                     elapsed_s=3600, cpus=1, final=True, **fields)


def reference_rule(card: RateCard, job: JobRecord, at: datetime):
    """billing.rates' definition, applied to every rule."""
    day = at.astimezone(card.tz).date()
    best = None
    for rule in card.rules:
        if not (rule.in_effect(day) and rule.matches(job)):
            continue
        if best is None or (rule.specificity, rule.priority) > (best.specificity, best.priority):
            best = rule
    return best


@SETTINGS
@given(multi_rule_cards(), st.lists(matching_jobs(), min_size=1, max_size=12),
       st.lists(st.integers(0, 500 * 86400), min_size=1, max_size=4))
def test_select_rule_is_the_definition(card, jobs, offsets):
    # Several jobs with the same match fields and several instants each: the remembered
    # rules are used for all but the first of each combination.
    for job in jobs + jobs:
        for offset in offsets:
            at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=offset)
            assert card.select_rule(job, at) is reference_rule(card, job, at)


CARD = load_rate_card("""
currency = "EUR"
scale = 3
period = "month"
timezone = "Europe/Berlin"
[[rules]]
name = "base"
from = 2026-01-01
[rules.rates]
cpu_hour = "0.031"
mem_gib_hour = "0.0047"
gpu_hour = "0.9"
node_hour = "0.01"
billing_unit_hour = "0.002"
energy_kwh = "0.3"
[rules.rates.gpu_hour_by_type]
a100 = "2.35"
[rules.basis]
cpu = "max"
mem = "used"
""")


@st.composite
def one_period_jobs(draw) -> JobRecord:
    start = datetime(2026, 3, 1, tzinfo=ZoneInfo("Europe/Berlin")).astimezone(UTC) + timedelta(
        seconds=draw(st.integers(0, 27 * 86400)))
    wall = draw(st.integers(1, 86400))
    return JobRecord(
        cluster="lab", job_id="7", job_id_raw=7, submit=start, state="COMPLETED",
        state_raw="COMPLETED", start=start, end=start + timedelta(seconds=wall),
        elapsed_s=draw(st.integers(1, wall)), nodes=draw(st.integers(1, 8)),
        cpus=draw(st.integers(1, 256)), mem_bytes=draw(st.integers(0, 2**40)),
        billing=draw(st.none() | st.integers(0, 1000)),
        gpus=draw(st.sampled_from([(), (("untyped", 2),), (("a100", 1), ("untyped", 1)),
                                   (("a100", 4),), (("h100", 2),)])),
        cpu_used_s=draw(st.none() | st.decimals(min_value=0, max_value=10**7, places=3)),
        mem_used_byte_s=draw(st.none() | st.integers(0, 2**50)),
        energy_j=draw(st.none() | st.integers(0, 10**9)), final=True)


@SETTINGS
@given(one_period_jobs())
def test_a_job_in_one_period_is_priced_as_its_whole_quantities(job):
    assert len(split_by_period(job.start, job.end, CARD.tz)) == 1
    rule = CARD.select_rule(job, job.start)
    expected = job_quantities(job, rule)
    lines = price_job(CARD, job)
    assert {line.resource: (line.quantity, line.basis) for line in lines} == expected
    assert len(lines) == len(expected)
    for line in lines:
        assert line.rate == rule.rates.for_resource(line.resource)
        assert line.amount == line_amount(line.rate, line.quantity, CARD.scale)
        assert (line.usage_period, line.posted_period, line.rule, line.kind) == (
            "2026-03", "2026-03", "base", "charge")


# Text and times of any kind, and "clean" ones the fast path encodes itself (UTC times,
# no character COPY escapes). Built without filters, so that hypothesis discards nothing.
any_text = st.text(max_size=12) | st.sampled_from(["gpu", "a\\b", "tab\there", "new\nline",
                                                  "nul\x00", "cr\r"])
clean_text = st.text(st.characters(blacklist_characters="\\\t\n\r\x00"), max_size=12)
any_time = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1),
                        timezones=st.sampled_from([UTC, ZoneInfo("Europe/Berlin"),
                                                   timezone(timedelta(hours=5))]))
utc_time = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1),
                        timezones=st.just(UTC))
ints = st.none() | st.integers(-2**63, 2**63 - 1)


@st.composite
def records(draw, clean: bool = False) -> JobRecord:
    """Any JobRecord; ``clean``: one the fast path encodes itself."""
    text_ = clean_text if clean else any_text
    time_ = utc_time if clean else any_time
    texts = st.none() | text_
    times = st.none() | time_
    return JobRecord(
        cluster=draw(text_), job_id=draw(text_),
        job_id_raw=draw(st.integers(0, 2**63 - 1)), submit=draw(time_),
        state=draw(st.sampled_from(["COMPLETED", "RUNNING", "CANCELLED"])),
        state_raw=draw(text_), array_job_id=draw(ints),
        array_task_id=draw(ints), het_job_id=draw(ints), het_job_offset=draw(ints),
        name=draw(texts), user=draw(texts), uid=draw(ints), group=draw(texts),
        account=draw(texts), partition=draw(texts), qos=draw(texts), wckey=draw(texts),
        reservation=draw(texts), exit_code=draw(texts), derived_exit_code=draw(texts),
        eligible=draw(times), start=draw(times), end=draw(times),
        elapsed_s=draw(st.integers(0, 10**9)), timelimit_min=draw(ints),
        nodes=draw(st.integers(0, 10**5)), cpus=draw(st.integers(0, 10**6)),
        mem_bytes=draw(st.integers(0, 2**60)), billing=draw(ints),
        gpus=draw(st.sampled_from([(), (("untyped", 1),), (("a100", 2), ("untyped", 1)),
                                   (('we"ird\\', 1),)])),
        node_list=draw(texts), cpu_time_alloc_s=draw(ints),
        cpu_used_s=draw(st.none() | st.decimals(min_value=0, max_value=10**12, places=4)),
        max_rss_bytes=draw(ints), mem_used_byte_s=draw(st.none() | st.integers(0, 2**100)),
        energy_j=draw(ints), db_index=draw(st.none() | st.integers(0, 2**64 - 1)),
        final=draw(st.booleans()),
        raw_digest=draw(st.none() | st.just("0" * 32)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records() | records(clean=True))
def test_encode_is_encode_checked(rec):
    assert _encode(rec) == _encode_checked(rec)


BASE = {"cluster": "lab", "job_id": "1", "job_id_raw": 1,
        "submit": datetime(2026, 1, 1, tzinfo=UTC), "state": "COMPLETED",
        "state_raw": "COMPLETED", "final": True}


@pytest.mark.parametrize("bad", [
    {"uid": True}, {"nodes": 1.5}, {"final": 1}, {"account": 5},
    {"submit": datetime(2026, 1, 1)}, {"end": datetime(2026, 1, 1)},
    {"db_index": -1}, {"db_index": 2**64},           # DBIndex is unsigned 64-bit
])
def test_encode_refuses_what_encode_checked_refuses(bad):
    rec = JobRecord(**{**BASE, **bad})
    with pytest.raises((TypeError, ValueError)) as checked:
        _encode_checked(rec)
    with pytest.raises(type(checked.value)):
        _encode(rec)


@pytest.mark.parametrize("odd", [
    {"cluster": None}, {"elapsed_s": None}, {"gpus": [("a100", 1)]},
    {"submit": datetime(2026, 1, 1, tzinfo=ZoneInfo("Asia/Kolkata"))},
])
def test_odd_values_the_checked_path_accepts_encode_alike(odd):
    rec = JobRecord(**{**BASE, **odd})
    assert _encode(rec) == _encode_checked(rec)
