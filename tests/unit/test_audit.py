"""billing.audit: the HMAC hash chain and the digests of closed periods.

Expected hashes are computed here from canonical texts written out by hand (with hmac and
hashlib directly), not by calling the code under test."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal as D

import pytest

from billing.audit import (
    GENESIS,
    PERIOD_CLOSE,
    PERIOD_REOPEN,
    AuditError,
    canonical_entry,
    canonical_line,
    chain_entry,
    closed_period_digests,
    period_digest,
    verify_chain,
    verify_periods,
)
from billing.records import ChargeLine

KEY = b"k" * 32
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def test_canonical_entry_and_its_hmac_by_hand():
    text = ('{"action":"period.close","actor":"alice","at":"2026-12-01T10:00:00.000000Z",'
            '"details":{"digest":"ab","lines":3,"note":"Zoë"},"prev":"' + "0" * 64 + '",'
            '"seq":1,"subject":"2026-11"}')
    assert canonical_entry(1, T0, "alice", "period.close", "2026-11",
                           {"lines": 3, "note": "Zoë", "digest": "ab"}, GENESIS) == \
        text.encode("utf-8")
    entry = chain_entry(KEY, None, at=T0, actor="alice", action="period.close",
                        subject="2026-11", details={"lines": 3, "note": "Zoë", "digest": "ab"})
    assert (entry.seq, entry.prev) == (1, "0" * 64)
    assert entry.hash == hmac.new(KEY, text.encode("utf-8"), hashlib.sha256).hexdigest()
    # A time in another zone is the same instant: the same text.
    plus2 = T0.astimezone(timezone(timedelta(hours=2)))
    assert canonical_entry(1, plus2, "alice", "period.close", "2026-11",
                           {"lines": 3, "note": "Zoë", "digest": "ab"}, GENESIS) == \
        text.encode("utf-8")


def _chain(n: int = 4) -> list:
    entries, tail = [], None
    for i in range(n):
        tail = chain_entry(KEY, tail, at=T0 + timedelta(minutes=i), actor="ops",
                           action="budget.set", subject=f"physics/2026-1{i % 2}",
                           details={"amount": f"{100 + i}.00", "currency": "EUR"})
        entries.append(tail)
    return entries


def test_each_entry_holds_the_previous_hash_and_an_intact_chain_verifies():
    entries = _chain()
    assert [e.seq for e in entries] == [1, 2, 3, 4]
    assert [e.prev for e in entries[1:]] == [e.hash for e in entries[:-1]]
    assert verify_chain(KEY, entries) is None
    assert verify_chain(KEY, []) is None


@pytest.mark.parametrize(("tamper", "where"), [
    (lambda es: [es[0], dataclasses.replace(es[1], details={"amount": "999.00",
                                                             "currency": "EUR"}), *es[2:]],
     "entry 2"),
    (lambda es: [es[0], dataclasses.replace(es[1], actor="mallory"), *es[2:]], "entry 2"),
    (lambda es: [es[0], *es[2:]], "entry 3"),                     # removed: seq gap
    (lambda es: [es[0], es[2], es[1], es[3]], "entry 3"),         # reordered
    (lambda es: [es[0], es[1], dataclasses.replace(es[2], prev=GENESIS), es[3]], "entry 3"),
])
def test_verify_names_the_first_entry_that_does_not_match(tamper, where):
    found = verify_chain(KEY, tamper(_chain()))
    assert found is not None and found.where == where


def test_an_entry_rehashed_without_the_key_is_caught():
    entries = _chain()
    forged = dataclasses.replace(entries[1], actor="mallory")
    text = canonical_entry(2, forged.at, "mallory", forged.action, forged.subject,
                           forged.details, forged.prev)
    forged = dataclasses.replace(forged, hash=hmac.new(b"x" * 32, text,
                                                       hashlib.sha256).hexdigest())
    found = verify_chain(KEY, [entries[0], forged, *entries[2:]])
    assert str(found) == ("entry 2: its hash does not match its content (edited, or written "
                          "with another key)")
    assert verify_chain(b"w" * 32, entries).where == "entry 1"


def test_values_that_are_not_canonical_are_refused():
    with pytest.raises(AuditError, match="floats are not canonical"):
        chain_entry(KEY, None, at=T0, actor="a", action="x", subject="s", details={"v": 0.1})
    with pytest.raises(AuditError, match="as a string"):
        chain_entry(KEY, None, at=T0, actor="a", action="x", subject="s", details={"v": D(1)})
    with pytest.raises(AuditError, match="timezone-aware"):
        chain_entry(KEY, None, at=datetime(2026, 1, 1), actor="a", action="x", subject="s",
                    details={})
    with pytest.raises(AuditError, match="at least 32 bytes"):
        chain_entry(b"short", None, at=T0, actor="a", action="x", subject="s", details={})


# ---------------------------------------------------------------------- period digests

def line(amount: str = "0.50", quantity: str = "10.000000", job: int = 1) -> ChargeLine:
    return ChargeLine(cluster="lab", job_id_raw=job, submit=T0, usage_period="2026-11",
                      posted_period="2026-11", resource="gpu:h100", quantity=D(quantity),
                      unit="gpu_hour", rate=D("0.050"), amount=D(amount), currency="EUR",
                      rule="base", rate_card="v1", basis="allocated", kind="charge")


def test_canonical_line_and_period_digest_by_hand():
    text = ('"lab"\t1\t2026-12-01T10:00:00.000000Z\t2026-11\t2026-11\t"gpu:h100"\t10\t'
            '"gpu_hour"\t0.05\t0.5\t"EUR"\t"base"\t"v1"\t"allocated"\t"charge"')
    assert canonical_line(line()) == text
    two = sorted([text, text.replace("\t1\t", "\t2\t", 1)])
    expected = hashlib.sha256(f"{two[0]}\n{two[1]}\n".encode()).hexdigest()
    assert period_digest([line(job=2), line()]) == (expected, 2)
    assert period_digest([line(), line(job=2)]) == (expected, 2)       # any order
    # The number, not its spelling: 0.50 == 0.500000, 10 == 10.000000.
    assert period_digest([line("0.500000", "10"), line(job=2)])[0] == expected
    assert period_digest([line("0.51"), line(job=2)])[0] != expected
    assert period_digest([]) == (hashlib.sha256(b"").hexdigest(), 0)


def _close(tail, period, digest, lines, minutes):
    return chain_entry(KEY, tail, at=T0 + timedelta(minutes=minutes), actor="ops",
                       action=PERIOD_CLOSE, subject=period,
                       details={"digest": digest, "lines": lines})


def test_closed_periods_are_those_whose_last_word_is_a_close():
    a = _close(None, "2026-10", "d1", 5, 0)
    b = _close(a, "2026-11", "d2", 7, 1)
    c = chain_entry(KEY, b, at=T0 + timedelta(minutes=2), actor="ops", action=PERIOD_REOPEN,
                    subject="2026-10", details={})
    assert closed_period_digests([a, b]) == {"2026-10": ("d1", 5, 1), "2026-11": ("d2", 7, 2)}
    assert closed_period_digests([a, b, c]) == {"2026-11": ("d2", 7, 2)}
    d = _close(c, "2026-10", "d3", 6, 3)
    assert closed_period_digests([a, b, c, d]) == {"2026-10": ("d3", 6, 4),
                                                   "2026-11": ("d2", 7, 2)}


def test_verify_periods_names_the_first_changed_period():
    oct_lines = [dataclasses.replace(line(), usage_period="2026-10", posted_period="2026-10")]
    nov_lines = [line(), line(job=2)]
    recorded = {"2026-10": (*period_digest(oct_lines), 1),
                "2026-11": (*period_digest(nov_lines), 2)}
    assert verify_periods(recorded, {"2026-10": oct_lines, "2026-11": nov_lines}) is None
    edited = [line("0.49"), line(job=2)]                 # an UPDATE of one amount
    found = verify_periods(recorded, {"2026-10": oct_lines, "2026-11": edited})
    assert found is not None and found.where == "period 2026-11"
    assert "entry 2: 2 lines" in found.reason and "now 2 lines" in found.reason
    gone = verify_periods(recorded, {"2026-11": nov_lines})          # October deleted
    assert gone is not None and gone.where == "period 2026-10" and "now 0 lines" in gone.reason
