"""Fixtures for the deployment tests: a database set up the way compose sets it up, the
read-only role's connection, the tools the tests run, and the metric names the collector
really exports.

``reporting_db`` follows compose's order: an empty database, deploy/sql/roles.sql run by
the admin (as the pg container's init script does), then ``hpc-billing migrate`` and a
collection AS the collector's role ``hpc_billing``, so migration 0005 runs as a
non-superuser and grants its views to the read-only role that already exists. Roles are
global to a PostgreSQL server: the two roles stay on the test server afterwards (other
test databases may hold grants to them), the database is dropped.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest
from prometheus_client import generate_latest
from sqlalchemy.engine import make_url

from collector.health import Health
from collector.settings import Settings
from collector.slurm.nodes import parse_nodes
from collector.store import budgets as store_budgets
from collector.store import db as store_db
from collector.store import runs as store_runs
from collector.store.nodes import store_snapshot
from collector.web.metrics import build_registry
from tests.conftest import _create_database, _drop_database, _libpq_dsn
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
ROLES_SQL = ROOT / "deploy" / "sql" / "roles.sql"
SAMPLE = ROOT / "collector" / "data" / "lab-sample.psv"
DEMO_CARD = ROOT / "collector" / "data" / "demo-rates.toml"
NODES = ROOT / "tests" / "fixtures" / "scontrol-show-node.txt"

APP_ROLE = "hpc_billing"
GRAFANA_ROLE = "hpc_billing_grafana"


def tool(name: str, *candidates: str) -> str:
    """Path of a command-line tool; a missing tool fails the test in CI (where
    tests/run.sh installs it) and skips it elsewhere."""
    found = shutil.which(name) or next((c for p in candidates for c in sorted(glob.glob(p))), None)
    if found:
        return found
    message = f"{name} is not installed (tests/run.sh installs it as root)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run_psql(admin_url: str, database_url: str, *args: str) -> subprocess.CompletedProcess:
    """psql as the admin of ``admin_url`` in the database of ``database_url``."""
    dsn = _libpq_dsn(make_url(admin_url).set(database=make_url(database_url).database))
    env = {**os.environ, "PGHOST": str(dsn.get("host") or ""), "PGPORT": str(dsn.get("port") or 5432),
           "PGUSER": str(dsn["user"]), "PGDATABASE": str(dsn["dbname"])}
    if dsn.get("password"):
        env["PGPASSWORD"] = str(dsn["password"])
    psql = tool("psql", "/usr/lib/postgresql/*/bin/psql")
    return subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


@dataclass(frozen=True)
class ReportingDb:
    admin_url: str          # a superuser on the database
    app_url: str            # the collector's role
    grafana_url: str        # the read-only role

    def connect(self, url: str):
        conn = psycopg2.connect(**_libpq_dsn(url))
        conn.autocommit = True
        return conn


def apply_roles(admin_url: str, url: str, **passwords: str) -> None:
    args = [f"-v{k}={v}" for k, v in passwords.items()]
    done = run_psql(admin_url, url, *args, "-f", str(ROLES_SQL))
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="session")
def reporting_db(pg_admin_url: str) -> Iterator[ReportingDb]:
    """A database prepared as compose prepares it, with the bundled export priced, budgets,
    two node snapshots and a quarantined record."""
    url = _create_database(pg_admin_url)
    app_pw, grafana_pw = secrets.token_hex(12), secrets.token_hex(12)
    try:
        apply_roles(pg_admin_url, url, app_password=app_pw, grafana_password=grafana_pw)
        base = make_url(url)
        app_url = base.set(username=APP_ROLE, password=app_pw).render_as_string(hide_password=False)
        grafana_url = base.set(username=GRAFANA_ROLE, password=grafana_pw).render_as_string(
            hide_password=False)
        assert run_cli("migrate", "--database-url", app_url) == 0
        assert run_cli("collect", "--once", "--source", "file", "--input", str(SAMPLE),
                       "--rates", str(DEMO_CARD), "--database-url", app_url) == 0
        _populate(app_url)
        yield ReportingDb(admin_url=url, app_url=app_url, grafana_url=grafana_url)
    finally:
        _drop_database(url, pg_admin_url)


def _populate(app_url: str) -> None:
    engine = store_db.make_engine(app_url)
    try:
        with store_db.session_factory(engine)() as s:
            store_budgets.set_budget(s, "physics", "2026-11", Decimal(5), "EUR")
            store_budgets.set_budget(s, "chemistry", "2026-11", Decimal(100), "EUR")
            # As a sacct poll leaves it (the file import moves no watermark): hpcb_lag_seconds.
            store_runs.set_watermark(s, "lab", store_runs.SACCT_STREAM,
                                     datetime(2026, 11, 25, 11, 50, tzinfo=UTC), None)
            nodes = parse_nodes(NODES.read_text().splitlines())
            first = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
            for n in range(3):
                store_snapshot(s, "lab", first + timedelta(minutes=5 * n), nodes)
            s.commit()
    finally:
        engine.dispose()
    # One record that does not parse, through the real file import (a partial run: exit 3).
    bad = Path(os.environ.get("TMPDIR", "/tmp")) / f"hpcb-bad-{secrets.token_hex(4)}.psv"
    lines = SAMPLE.read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1], "99|99|broken"]) + "\n")
    try:
        assert run_cli("collect", "--once", "--source", "file", "--input", str(bad),
                       "--database-url", app_url) == 3
    finally:
        bad.unlink()


@pytest.fixture(scope="session")
def exported_metric_names(reporting_db: ReportingDb) -> set[str]:
    """Every sample name the collector's /metrics registry exports over a populated
    database (histograms with their _bucket/_sum/_count, counters with _total)."""
    engine = store_db.make_engine(reporting_db.app_url)
    try:
        health = Health()
        registry = build_registry(sessions=store_db.session_factory(engine), health=health,
                                  settings=Settings.load({"HPC_BILLING_CLUSTER": "lab"}),
                                  period_timezone="UTC",
                                  clock=lambda: datetime(2026, 11, 25, tzinfo=UTC).timestamp())
        text = generate_latest(registry).decode()
    finally:
        engine.dispose()
    names = {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.MULTILINE)}
    # The scrape's database reads all worked, so the database-backed gauges are present.
    assert "hpcb_scrape_database_up 1.0" in text, text
    return names | {"up"}   # Prometheus' own per-target series
