"""Hand-made billed lines of one period for the finance builders' tests (billing.ledger,
.focus, .invoice) and their hand-worked totals. Plain functions and constants.

Posted in 2026-11, EUR, scale 2 (amount = quantity x rate, rounded half-even by hand):

  job 1 physics/alice   cpu      10.000000 x 0.05   = 0.50
                        gpu:h100  2.000000 x 3.10   = 6.20
  job 2 physics/bob     cpu       4.000000 x 0.05   = 0.20
                        mem       8.000000 x 0.0047 = 0.0376 -> 0.04
  job 3 chemistry/carol cpu      20.000000 x 0.04   = 0.80
                        gpu       1.000000 x 0.90   = 0.90
  job 4 chemistry/carol cpu      -1.000000 x 0.04   = -0.04  (correction of 2026-10)

  physics 6.94, chemistry 1.66, total 8.60
  cpu 1.46, mem 0.04, gpu 0.90, gpu:h100 6.20 (= 8.60)
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

from billing.records import BilledLine, ChargeLine

CARD = "c" * 64
UNITS = {"cpu": "core_hour", "mem": "gib_hour", "gpu": "gpu_hour", "gpu:h100": "gpu_hour"}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def billed(job: int, account: str | None, user: str | None, resource: str, qty: str,
           rate: str, amount: str, *, start: str, end: str, usage: str = "2026-11",
           posted: str = "2026-11", kind: str = "charge", partition: str = "batch",
           cluster: str = "lab") -> BilledLine:
    line = ChargeLine(cluster=cluster, job_id_raw=job, submit=at(start), usage_period=usage,
                      posted_period=posted, resource=resource, quantity=D(qty),
                      unit=UNITS[resource], rate=D(rate), amount=D(amount), currency="EUR",
                      rule="base", rate_card=CARD, basis="allocated", kind=kind)
    return BilledLine(line=line, job_id=str(job), account=account, user=user,
                      partition=partition, qos="normal", start=at(start), end=at(end))


def november() -> list[BilledLine]:
    return [
        billed(1, "physics", "alice", "cpu", "10.000000", "0.05", "0.50",
               start="2026-11-02T08:00:00", end="2026-11-02T13:00:00", partition="gpu"),
        billed(1, "physics", "alice", "gpu:h100", "2.000000", "3.10", "6.20",
               start="2026-11-02T08:00:00", end="2026-11-02T13:00:00", partition="gpu"),
        billed(2, "physics", "bob", "cpu", "4.000000", "0.05", "0.20",
               start="2026-11-03T10:00:00", end="2026-11-03T12:00:00"),
        billed(2, "physics", "bob", "mem", "8.000000", "0.0047", "0.04",
               start="2026-11-03T10:00:00", end="2026-11-03T12:00:00"),
        billed(3, "chemistry", "carol", "cpu", "20.000000", "0.04", "0.80",
               start="2026-11-04T00:00:00", end="2026-11-04T10:00:00"),
        billed(3, "chemistry", "carol", "gpu", "1.000000", "0.90", "0.90",
               start="2026-11-04T00:00:00", end="2026-11-04T10:00:00"),
        billed(4, "chemistry", "carol", "cpu", "-1.000000", "0.04", "-0.04",
               start="2026-10-31T22:00:00", end="2026-11-01T02:00:00", usage="2026-10",
               kind="correction"),
    ]
