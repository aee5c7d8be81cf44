"""The demo's story adds up: the banner's counts, the report's jobs and TOTAL, the jobs
without charges and why, and the hint that only the first run gives."""

from __future__ import annotations

import re
from decimal import Decimal

from tests.helpers import run_cli


def _demo(db_url: str, capsys) -> str:
    capsys.readouterr()
    assert run_cli("demo", "--database-url", db_url) == 0
    return capsys.readouterr().out


def test_the_demo_counts_add_up_and_the_report_has_a_total(db_url, capsys):
    first = _demo(db_url, capsys)
    banner = re.search(r"(\d+) job records of (\d+) jobs", first)
    assert banner and (int(banner[1]), int(banner[2])) == (22, 21)   # job 16 was requeued
    job_rows = first.count("\nlab ")
    assert job_rows == int(banner[1])
    charged = re.search(r"^(\d+) of the (\d+) job records have charges posted in 2026-11; "
                        r"(\d+) have none: (.*)\.$", first, re.M)
    assert charged, first
    with_charges, records, without, reasons = (int(charged[1]), int(charged[2]),
                                               int(charged[3]), charged[4])
    assert records == job_rows and with_charges + without == records
    assert sum(int(n) for n in re.findall(r"(\d+)", reasons)) == without
    # The report's rows and its TOTAL: jobs and amounts add up.
    table = first.split("Charges posted in 2026-11")[1].split("\n\n")[0]
    rows = [line.split() for line in table.splitlines()[2:] if re.match(r"^\w", line)]
    total = next(r for r in rows if r[0] == "TOTAL")
    body = [r for r in rows if r[0] not in ("TOTAL",) and not r[0][0].isdigit()]
    assert int(total[1]) == sum(int(r[2]) for r in body) == with_charges
    assert Decimal(total[2]) == sum(Decimal(r[3]) for r in body)
    assert "Run the demo again" in first

    again = _demo(db_url, capsys)
    assert "Run the demo again" not in again
    assert "inserted and updated nothing" in again
