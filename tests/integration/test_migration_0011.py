"""Migration 0011 converts a database filled by the code before it, in place.

The code of the revision before 0011 (taken from git) fills a 0010 database through its
own CLI: a file import, a closed period and a reprice with another card (corrections).
Then 0011 runs: every job and every charge line reads back the same through the views,
``report`` prints the same, the rollups equal the lines, a re-import finds every job
unchanged (the raw digests survive), and the downgrade gives the old rows back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from bench.gen_sacct import generate
from collector.store import db as store_db
from collector.store import jobs as store_jobs
from collector.store import rollups as store_rollups
from collector.store.db import Session
from tests.helpers import audit_key_env, run_cli

ROOT = Path(__file__).resolve().parents[2]
DEMO_CARD = ROOT / "collector" / "data" / "demo-rates.toml"
MIGRATION = "collector/store/migrations/versions/0011_compact_store.py"

JOB_COLUMNS = [c for c, _ in store_jobs.RECORD_COLUMNS] + ["raw_digest", "first_run_id",
                                                            "last_run_id"]
LINE_COLUMNS = ["cluster", "job_id_raw", "submit_time", "usage_period", "posted_period",
                "resource", "quantity", "unit", "rate", "amount", "currency", "rule",
                "rate_card_id", "basis", "kind"]
DUMP_JOBS = (f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs"
             " ORDER BY cluster, job_id_raw, submit_time")
DUMP_LINES = f"SELECT {', '.join(LINE_COLUMNS)} FROM charge_lines"


def _old_revision() -> str:
    """The commit before 0011 was added (HEAD while it is not committed yet)."""
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git history (the code before 0011)")
    added = subprocess.run([git, "-C", str(ROOT), "log", "--diff-filter=A", "--format=%H",
                            "--", MIGRATION], capture_output=True, text=True, check=True)
    commits = added.stdout.split()
    return f"{commits[-1]}^" if commits else "HEAD"


@pytest.fixture(scope="module")
def old_code(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("old-code")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", _old_revision(), "collector",
                              "billing"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, check=True)
    assert not (where / MIGRATION).exists()
    return where


def old_cli(code: Path, *argv: str, env: dict[str, str] | None = None) -> str:
    environment = {**os.environ, **(env or {}), "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, "-m", "collector.cli", *argv], cwd=code,
                          env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


def dump(engine) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with engine.connect() as conn:
        jobs = [tuple(r) for r in conn.execute(text(DUMP_JOBS))]
        lines = sorted((tuple(r) for r in conn.execute(text(DUMP_LINES))), key=repr)
    return jobs, lines


def test_0011_converts_a_filled_0010_database_in_place(fresh_database_url, old_code, tmp_path):
    export = tmp_path / "export.psv"
    with open(export, "w") as fh:
        generate(8000, fh, seed=29)
    url = fresh_database_url
    old_cli(old_code, "migrate", "--database-url", url)
    old_cli(old_code, "collect", "--once", "--source", "file", "--input", str(export),
            "--rates", str(DEMO_CARD), "--database-url", url)
    engine = store_db.make_engine(url)
    try:
        with engine.connect() as conn:
            assert store_db.schema_revision(conn) == "0010"
            first = conn.execute(text("SELECT min(posted_period) FROM charge_lines")).scalar()
            periods = [p for (p,) in conn.execute(text(
                "SELECT DISTINCT posted_period FROM charge_lines ORDER BY 1"))]
        old_cli(old_code, "period", "close", first, "--database-url", url,
                env=audit_key_env(tmp_path))
        doubled = tmp_path / "doubled.toml"
        doubled.write_text(DEMO_CARD.read_text().replace('cpu_hour = "36"', 'cpu_hour = "72"'))
        old_cli(old_code, "reprice", "--since", "2026-01-01", "--until", "2027-01-01",
                "--rates", str(doubled), "--database-url", url)
        before_jobs, before_lines = dump(engine)
        with engine.connect() as conn:
            assert conn.execute(text(
                "SELECT count(*) FROM charge_lines WHERE kind = 'correction'")).scalar() > 0
            periods = [p for (p,) in conn.execute(text(
                "SELECT DISTINCT posted_period FROM charge_lines ORDER BY 1"))]
        reports_before = {p: json.loads(old_cli(
            old_code, "report", "--period", p, "--group-by", "account,resource", "--format",
            "json", "--database-url", url)) for p in periods}
        assert len(before_jobs) > 1000 and len(before_lines) > 2000

        store_db.migrate(engine)
        with engine.connect() as conn:
            assert store_db.schema_revision(conn) == store_db.head_revision()
            assert conn.execute(text("SELECT count(*) FROM pre_engine.jobs")).scalar() \
                == len(before_jobs)
        after_jobs, after_lines = dump(engine)
        assert after_jobs == before_jobs
        assert after_lines == before_lines
        with Session(engine) as session:
            assert store_rollups.verify(session).ok
        for period, rows in reports_before.items():
            assert json.loads(_capture_report(url, period)) == rows, period

        # The digests survived: a re-import of the same export skips every job.
        assert run_cli("collect", "--once", "--source", "file", "--input", str(export),
                       "--rates", str(doubled), "--database-url", url) == 0
        with engine.connect() as conn:
            run = conn.execute(text(
                "SELECT jobs_inserted, jobs_updated, jobs_unchanged FROM collector_runs"
                " ORDER BY id DESC LIMIT 1")).one()
        assert tuple(run) == (0, 0, len(before_jobs))
        assert dump(engine) == (after_jobs, after_lines)

        store_db.downgrade(engine, "0010")
        assert dump(engine) == (before_jobs, before_lines)
    finally:
        engine.dispose()


def _capture_report(url: str, period: str) -> str:
    done = subprocess.run([sys.executable, "-m", "collector.cli", "report", "--period", period,
                           "--group-by", "account,resource", "--format", "json",
                           "--database-url", url], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_0011_refuses_to_continue_when_the_copy_differs(fresh_database_url, old_code, tmp_path):
    """The count/sum check: a damaged database (a charge line of a cluster that has no
    row, possible once someone dropped the foreign key) cannot be copied completely, and
    the migration stops with everything as it was."""
    export = tmp_path / "export.psv"
    with open(export, "w") as fh:
        generate(400, fh, seed=31)
    url = fresh_database_url
    old_cli(old_code, "migrate", "--database-url", url)
    old_cli(old_code, "collect", "--once", "--source", "file", "--input", str(export),
            "--rates", str(DEMO_CARD), "--database-url", url)
    engine = store_db.make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE charge_lines"
                              " DROP CONSTRAINT fk_charge_lines_cluster_jobs"))
            conn.execute(text(
                "INSERT INTO charge_lines (cluster, job_id_raw, submit_time, usage_period,"
                " posted_period, resource, quantity, unit, rate, amount, currency, rule,"
                " rate_card_id, basis, kind) SELECT 'ghost', job_id_raw, submit_time,"
                " usage_period, posted_period, resource, quantity, unit, rate, amount,"
                " currency, rule, rate_card_id, basis, kind FROM charge_lines LIMIT 1"))
        before = dump(engine)
        with pytest.raises(Exception, match="do not match"):
            store_db.migrate(engine)
        with engine.connect() as conn:
            assert store_db.schema_revision(conn) == "0010"
        assert dump(engine) == before
    finally:
        engine.dispose()
