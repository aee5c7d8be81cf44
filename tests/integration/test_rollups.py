"""The monthly rollups (migration 0011) give exactly the report of the raw charge lines,
and equal the aggregate of the lines, after imports, re-imports with changed jobs,
reprices and closed-period corrections; a change made behind the writers' back is found
by ``rollup verify`` and repaired by ``rollup rebuild``."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import pytest
from sqlalchemy import text

from bench.gen_sacct import generate
from tests.helpers import audit_key_env, run_cli
from collector.store import reports as store_reports
from collector.store import rollups as store_rollups

ROOT = Path(__file__).resolve().parents[2]
DEMO_CARD = ROOT / "collector" / "data" / "demo-rates.toml"
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
    first = scalar(sessions, "SELECT min(posted_period) FROM charge_lines")
    assert run_cli("period", "close", first, "--database-url", db_url,
                   env=audit_key_env(tmp_path)) == 0
    doubled = tmp_path / "doubled.toml"
    doubled.write_text(DEMO_CARD.read_text().replace('cpu_hour = "36"', 'cpu_hour = "72"'))
    assert run_cli("reprice", "--since", "2026-01-01", "--until", "2027-01-01", "--rates",
                   str(doubled), "--database-url", db_url) == 0
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
