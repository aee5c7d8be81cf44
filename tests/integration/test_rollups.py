"""The monthly rollups (migrations 0011, 0012) give exactly the report of the raw charge
lines, and equal the aggregate of the lines, after imports, re-imports with changed jobs,
reprices and closed-period corrections; so do the distinct jobs of any range of months
(jobs across month ends, corrections after months without lines); a change made behind
the writers' back is found by ``rollup verify`` and repaired by ``rollup rebuild``."""

from __future__ import annotations

from itertools import combinations

import pytest
from sqlalchemy import text

from bench.gen_sacct import generate
from tests import spanning_jobs
from tests.helpers import DEMO_CARD, run_cli
from tests.helpers import close_periods as close
from tests.helpers import demo_card_with as card_with
from tests.helpers import reprice_2026 as reprice
from collector.store import reports as store_reports
from collector.store import rollups as store_rollups

NAMES = ("account", "user", "partition", "qos", "cluster", "resource")
GROUPINGS = [list(c) for n in (1, 2, 3) for c in combinations(NAMES, n)]


@pytest.fixture()
def export(tmp_path):
    path = tmp_path / "export.psv"
    with open(path, "w") as fh:
        generate(8000, fh, seed=13)
    return path


def collect(db_url, path, card=DEMO_CARD):
    assert run_cli("collect", "--once", "--source", "file", "--input", str(path),
                   "--rates", str(card), "--database-url", db_url) == 0


def scalar(sessions, sql):
    with sessions() as s:
        return s.execute(text(sql)).scalar()


def assert_rollups_equal_raw(sessions):
    with sessions() as s:
        check = store_rollups.verify(s)
        assert check.ok and check.resource_buckets > 0, check
        periods = [p for (p,) in s.execute(text(
            "SELECT DISTINCT posted_period FROM charge_lines ORDER BY 1"))]
        assert periods
        compared = 0
        for period in periods:
            for group_by in GROUPINGS:
                for cluster in (None, "bench"):
                    raw = store_reports.charge_report_raw(s, period=period, group_by=group_by,
                                                          cluster=cluster)
                    assert store_reports.charge_report_rollup(
                        s, period=period, group_by=group_by, cluster=cluster) == raw, \
                        (period, group_by, cluster)
                    assert store_reports.charge_report(
                        s, period=period, group_by=group_by, cluster=cluster) == raw
                    compared += len(raw)
        assert compared > 1000


def test_rollups_equal_the_raw_report_through_every_kind_of_write(db_url, sessions, export, tmp_path):
    collect(db_url, export)
    assert scalar(sessions, "SELECT count(*) FROM rollup_resource") > 0
    assert_rollups_equal_raw(sessions)

    # A job moves to another account (its lines may not change at all): the writer moves
    # its lines' amounts to the new account's buckets.
    lines = export.read_text().split("\n")
    header = lines[0].split("|")
    col_raw, col_account = header.index("JobIDRaw"), header.index("Account")
    k = next(i for i, line in enumerate(lines[1:], 1) if "." not in line.split("|")[col_raw])
    cells = lines[k].split("|")
    cells[col_account] = "moved-account"
    lines[k] = "|".join(cells)
    export.write_text("\n".join(lines))
    collect(db_url, export)
    with sessions() as s:
        period = s.execute(text("SELECT max(posted_period) FROM charge_lines l JOIN jobs j"
                                " USING (cluster, job_id_raw, submit_time)"
                                " WHERE j.account = 'moved-account'")).scalar()
        rows = store_reports.charge_report(s, period=period, group_by=["account"])
    assert any(r["account"] == "moved-account" for r in rows)
    assert_rollups_equal_raw(sessions)

    # A reprice with another card, after closing the earliest period: new lines in open
    # periods, corrections posted into the first open one.
    close(db_url, tmp_path, scalar(sessions, "SELECT min(posted_period) FROM charge_lines"))
    reprice(db_url, card_with(tmp_path, "doubled.toml", 'cpu_hour = "36"', 'cpu_hour = "72"'))
    assert scalar(sessions, "SELECT count(*) FROM charge_lines WHERE kind = 'correction'") > 0
    assert_rollups_equal_raw(sessions)


def test_verify_finds_a_change_behind_the_writers_back_and_rebuild_repairs_it(
        db_url, sessions, export):
    collect(db_url, export)
    assert run_cli("rollup", "verify", "--database-url", db_url) == 0
    with sessions() as s:
        period = s.execute(text("SELECT max(posted_period) FROM charge_lines")).scalar()
        s.execute(text("DELETE FROM charge_rows WHERE job_id_raw IN (SELECT job_id_raw"
                       " FROM job_rows ORDER BY job_id_raw LIMIT 50)"))
        s.commit()
    with sessions() as s:
        raw = store_reports.charge_report_raw(s, period=period, group_by=["account"])
        assert store_reports.charge_report_rollup(s, period=period, group_by=["account"]) != raw
        check = store_rollups.verify(s, period)
        assert not check.ok and check.resource_differing > 0 and check.jobs_differing > 0
        # The API's one-month query reads the rollups too (stale here, by construction).
        assert store_reports.report_range(s, periods=[period], group_by=["account"]) == \
            store_reports.charge_report_rollup(s, period=period, group_by=["account"])
    assert run_cli("rollup", "verify", "--period", period, "--database-url", db_url) == 1
    assert run_cli("rollup", "rebuild", "--period", period, "--database-url", db_url) == 0
    assert run_cli("rollup", "verify", "--database-url", db_url) == 0
    with sessions() as s:
        assert store_reports.charge_report_rollup(s, period=period, group_by=["account"]) == raw
    assert_rollups_equal_raw(sessions)


# ------------------------------------------------ distinct jobs of a range of months

RANGE_GROUPINGS = [["account"], ["user"], ["resource"], ["account", "resource"],
                   ["cluster", "qos"], ["partition", "user", "resource"],
                   ["account", "user", "partition", "qos", "cluster", "resource"]]
SCOPES = [(None, None), ("bench", None), (None, ["physics", "chemistry"]),
          ("other", ["astro"])]


def _shift(period: str, months: int) -> str:
    index = int(period[:4]) * 12 + int(period[5:7]) - 1 + months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def _months(first: str, last: str) -> list[str]:
    out = [first]
    while out[-1] < last:
        out.append(_shift(out[-1], 1))
    return out


def assert_ranges_equal_lines(sessions) -> int:
    """Every range of consecutive posted months (from the month before the first to the
    month after the last) gives, from the rollups, the report of the lines: amounts and
    distinct jobs. Returns how many ranges counted fewer jobs than their months' sum
    (jobs with lines in several months of the range)."""
    with sessions() as s:
        check = store_rollups.verify(s)
        assert check.ok, check
        first, last = s.execute(text(
            "SELECT min(posted_period), max(posted_period) FROM charge_lines")).one()
        months = _months(_shift(first, -1), _shift(last, 1))
        assert len(months) >= 8
        shared, k = 0, 0
        for i in range(len(months)):
            for j in range(i, len(months)):
                periods = months[i:j + 1]
                cluster, accounts = SCOPES[k % len(SCOPES)]
                for group_by in (["account"], RANGE_GROUPINGS[k % len(RANGE_GROUPINGS)]):
                    raw = store_reports.report_range_raw(s, periods=periods, group_by=group_by,
                                                         cluster=cluster, accounts=accounts)
                    got = store_reports.report_range(s, periods=periods, group_by=group_by,
                                                     cluster=cluster, accounts=accounts)
                    assert got == raw, (periods, group_by, cluster, accounts)
                k += 1
                whole = store_reports.report_range(s, periods=periods, group_by=["account"])
                monthly = sum(r.jobs for p in periods for r in store_reports.charge_report(
                    s, period=p, group_by=["account"]))
                assert sum(r.jobs for r in whole) <= monthly
                shared += sum(r.jobs for r in whole) < monthly
        return shared


def spanning_database(db_url, sessions, tmp_path, n=900):
    """Jobs across month ends, imported; periods 2026-02..04 closed; a reprice with
    another card: corrections of February posted in May (a job's months with lines
    then have a gap). Returns the jobs written."""
    rows = spanning_jobs.jobs(n, seed=19)
    collect(db_url, spanning_jobs.write(tmp_path / "span.psv", rows))
    close(db_url, tmp_path, "2026-02", "2026-03", "2026-04")
    reprice(db_url, card_with(tmp_path, "doubled.toml", 'cpu_hour = "36"', 'cpu_hour = "72"'))
    assert scalar(sessions, "SELECT count(*) FROM rollup_reentries WHERE resource = ''") > 0
    assert scalar(sessions, "SELECT count(*) FROM rollup_reentries WHERE resource <> ''") > 0
    return rows


def test_range_job_counts_from_the_rollups_equal_the_lines_through_every_kind_of_write(
        db_url, sessions, tmp_path):
    rows = spanning_jobs.jobs(900, seed=19)
    collect(db_url, spanning_jobs.write(tmp_path / "span.psv", rows))
    # Jobs with lines in two and in three months, in every month.
    assert scalar(sessions, "SELECT count(*) FROM (SELECT 1 FROM charge_lines GROUP BY"
                            " cluster, job_id_raw, submit_time"
                            " HAVING count(DISTINCT posted_period) >= 3) x") > 20
    assert assert_ranges_equal_lines(sessions) > 30

    # A re-import: jobs moved to another account (a chemistry job is priced by another
    # rule), others ending earlier or later (lines in fewer or more months).
    rows = spanning_jobs.edit(rows, seed=1, count=60)
    collect(db_url, spanning_jobs.write(tmp_path / "span.psv", rows))
    assert_ranges_equal_lines(sessions)

    # Three closed periods and a reprice: February's corrections posted in May, after
    # two months without lines for the jobs that ran in February only (re-entries).
    close(db_url, tmp_path, "2026-02", "2026-03", "2026-04")
    reprice(db_url, card_with(tmp_path, "doubled.toml", 'cpu_hour = "36"', 'cpu_hour = "72"'))
    assert scalar(sessions, "SELECT count(*) FROM charge_lines WHERE kind = 'correction'"
                            " AND posted_period = '2026-05'") > 0
    assert scalar(sessions, "SELECT count(*) FROM rollup_reentries") > 0
    assert_ranges_equal_lines(sessions)

    # Moves and changes of jobs with lines in closed periods (all their lines move), then
    # May closed too and another reprice (corrections into June, from Feb..May).
    rows = spanning_jobs.edit(rows, seed=2, count=60)
    collect(db_url, spanning_jobs.write(tmp_path / "span.psv", rows))
    assert_ranges_equal_lines(sessions)
    close(db_url, tmp_path, "2026-05")
    reprice(db_url, card_with(tmp_path, "gpu.toml", 'gpu_hour = "360"', 'gpu_hour = "400"'))
    assert scalar(sessions, "SELECT count(*) FROM charge_lines WHERE kind = 'correction'"
                            " AND posted_period = '2026-06'") > 0
    assert_ranges_equal_lines(sessions)


def test_report_range_refuses_months_with_a_gap(session):
    with pytest.raises(ValueError, match="consecutive"):
        store_reports.report_range(session, periods=["2026-01", "2026-03"], group_by=["account"])


@pytest.mark.parametrize("tamper, field", [
    ("UPDATE rollup_jobs SET jobs_entered = jobs_entered + 1 WHERE (posted_month, assoc_id)"
     " = (SELECT posted_month, assoc_id FROM rollup_jobs ORDER BY 1 DESC, 2 LIMIT 1)",
     "jobs_differing"),
    ("UPDATE rollup_resource SET jobs_entered = 0 WHERE (posted_month, assoc_id, resource)"
     " = (SELECT posted_month, assoc_id, resource FROM rollup_resource WHERE jobs_entered > 0"
     " ORDER BY 1 DESC, 2, 3 LIMIT 1)", "resource_differing"),
    ("UPDATE rollup_reentries SET jobs = jobs + 1 WHERE (posted_month, prev_month, assoc_id,"
     " resource) = (SELECT posted_month, prev_month, assoc_id, resource FROM rollup_reentries"
     " ORDER BY 1, 2, 3, 4 LIMIT 1)", "reentries_differing"),
    ("DELETE FROM rollup_reentries WHERE (posted_month, prev_month, assoc_id, resource)"
     " = (SELECT posted_month, prev_month, assoc_id, resource FROM rollup_reentries"
     " WHERE resource = '' ORDER BY 1, 2, 3 LIMIT 1)", "reentries_differing"),
])
def test_verify_finds_a_tampered_entry_count_and_rebuild_repairs_it(
        db_url, sessions, tmp_path, tamper, field):
    spanning_database(db_url, sessions, tmp_path)
    with sessions() as s:
        assert store_rollups.verify(s).ok
        s.execute(text(tamper))
        s.commit()
    with sessions() as s:
        check = store_rollups.verify(s)
        assert not check.ok and getattr(check, field) == 1, check
        assert check.reentry_buckets > 0
    assert run_cli("rollup", "verify", "--database-url", db_url) == 1
    assert run_cli("rollup", "rebuild", "--database-url", db_url) == 0
    assert_ranges_equal_lines(sessions)


def test_verify_and_rebuild_of_one_period_cover_its_entries(db_url, sessions, tmp_path):
    spanning_database(db_url, sessions, tmp_path)
    with sessions() as s:
        period = s.execute(text("SELECT to_char(min(posted_month), 'YYYY-MM')"
                                " FROM rollup_reentries")).scalar()
        s.execute(text("UPDATE rollup_jobs SET jobs_entered = jobs_entered + 1"
                       " WHERE posted_month = to_date(:p, 'YYYY-MM')"), {"p": period})
        s.execute(text("DELETE FROM rollup_reentries WHERE posted_month = to_date(:p, 'YYYY-MM')"),
                  {"p": period})
        s.commit()
    with sessions() as s:
        check = store_rollups.verify(s, period)
        assert check.jobs_differing > 0 and check.reentries_differing > 0, check
        assert store_rollups.verify(s, "2026-02").ok
    assert run_cli("rollup", "rebuild", "--period", period, "--database-url", db_url) == 0
    assert run_cli("rollup", "verify", "--database-url", db_url) == 0
    assert_ranges_equal_lines(sessions)
