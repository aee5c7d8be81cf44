"""The database roles (deploy/sql/roles.sql, migration 0005): Grafana's read-only role
reads the views of schema ``reporting`` and nothing else.

The database is the one compose would build (tests/deploy/conftest.py: roles first, then
``hpc-billing migrate`` and a collection as the collector's own role).
"""

from __future__ import annotations

import pytest
from psycopg2 import errors
from sqlalchemy.engine import make_url

from tests.conftest import _create_database, _drop_database
from tests.deploy.conftest import APP_ROLE, GRAFANA_ROLE, ReportingDb, apply_roles
from tests.helpers import run_cli

ALL_PRIVILEGES = "SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER"


def _one(db: ReportingDb, url: str, sql: str):
    conn = db.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def _views(db: ReportingDb) -> list[str]:
    rows = _one(db, db.admin_url,
                "SELECT schemaname || '.' || viewname FROM pg_views WHERE schemaname = 'reporting' "
                "ORDER BY 1")
    return [r[0] for r in rows]


def _base_tables(db: ReportingDb) -> list[str]:
    rows = _one(db, db.admin_url,
                "SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname = 'public' "
                "ORDER BY 1")
    return [r[0] for r in rows]


def test_the_reader_selects_every_reporting_view(reporting_db):
    views = _views(reporting_db)
    assert {"reporting.charges", "reporting.budget_use", "reporting.budget_burndown",
            "reporting.job_usage", "reporting.job_gpu_usage", "reporting.clusters",
            "reporting.collector_runs", "reporting.quarantine"} <= set(views)
    for view in views:
        _one(reporting_db, reporting_db.grafana_url, f"SELECT * FROM {view} LIMIT 1")
    rows = _one(reporting_db, reporting_db.grafana_url,
                "SELECT count(*) FROM reporting.node_utilisation_daily('2026-11-22', '2026-11-23')")
    assert rows[0][0] > 0


def test_the_reader_selects_no_base_table(reporting_db):
    tables = _base_tables(reporting_db)
    # (jobs and charge_lines are views over job_rows / charge_rows since 0011; the next
    # test covers every view the reader may not select.)
    assert {"public.job_rows", "public.charge_rows", "public.budgets", "public.node_snapshots",
            "public.alembic_version"} <= set(tables)
    for table in tables:
        with pytest.raises(errors.InsufficientPrivilege):
            _one(reporting_db, reporting_db.grafana_url, f"SELECT 1 FROM {table} LIMIT 1")
    # Nor through the SECURITY INVOKER function of 0004 (only reporting's wrapper may).
    with pytest.raises(errors.InsufficientPrivilege):
        _one(reporting_db, reporting_db.grafana_url,
             "SELECT * FROM public.node_utilisation_daily('2026-11-22', '2026-11-23')")


def test_the_reader_has_no_privilege_but_select_on_the_views(reporting_db):
    rows = _one(reporting_db, reporting_db.admin_url, f"""
        SELECT n.nspname || '.' || c.relname,
               has_table_privilege('{GRAFANA_ROLE}', c.oid, 'SELECT'),
               has_table_privilege('{GRAFANA_ROLE}', c.oid,
                                   'INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
          AND c.relkind IN ('r', 'v', 'm', 'p', 'f', 'S')""")
    readable = sorted(name for name, select, _ in rows if select)
    assert readable == _views(reporting_db)
    assert [name for name, _, write in rows if write] == []
    functions = _one(reporting_db, reporting_db.admin_url, f"""
        SELECT p.oid::regprocedure::text FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND has_function_privilege('{GRAFANA_ROLE}', p.oid, 'EXECUTE') AND p.prosecdef""")
    # The only SECURITY DEFINER function it may call is the utilisation wrapper.
    assert [f[0] for f in functions] == ["reporting.node_utilisation_daily(date,date,text)"]


WRITE_REFUSED = (errors.ReadOnlySqlTransaction, errors.InsufficientPrivilege,
                 errors.ObjectNotInPrerequisiteState)


@pytest.mark.parametrize("statement", [
    "INSERT INTO reporting.clusters (cluster) VALUES ('intruder')",   # an updatable view
    "UPDATE reporting.charges SET amount = 0",
    "DELETE FROM reporting.budget_use",
    "INSERT INTO public.clusters (name) VALUES ('intruder')",
    "CREATE TABLE public.intruder (x int)",
    "CREATE TABLE reporting.intruder (x int)",
    "CREATE TEMP TABLE intruder (x int)",
    "TRUNCATE public.job_rows",
])
def test_a_write_as_the_reader_fails_even_in_a_read_write_transaction(reporting_db, statement):
    conn = reporting_db.connect(reporting_db.grafana_url)
    try:
        with conn.cursor() as cur:
            with pytest.raises(WRITE_REFUSED):
                cur.execute(statement)
            # With the read-only default lifted, it still has no privilege to write.
            cur.execute("SET default_transaction_read_only = off")
            with pytest.raises((errors.InsufficientPrivilege, errors.ObjectNotInPrerequisiteState)):
                cur.execute(statement)
    finally:
        conn.close()
    clusters = _one(reporting_db, reporting_db.admin_url, "SELECT name FROM clusters")
    assert ("intruder",) not in clusters


def test_the_readers_sessions_are_read_only(reporting_db):
    conn = reporting_db.connect(reporting_db.grafana_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW default_transaction_read_only")
            assert cur.fetchone()[0] == "on"
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone()[0] == "30s"
            with pytest.raises(errors.ReadOnlySqlTransaction):
                cur.execute("CREATE TABLE public.intruder (x int)")
    finally:
        conn.close()


def test_the_collector_role_owns_what_it_migrated_and_is_no_superuser(reporting_db):
    rows = _one(reporting_db, reporting_db.admin_url, f"""
        SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb,
               (SELECT pg_get_userbyid(d.datdba) FROM pg_database d
                WHERE d.datname = current_database()),
               (SELECT pg_get_userbyid(n.nspowner) FROM pg_namespace n WHERE n.nspname = 'reporting'),
               (SELECT tableowner FROM pg_tables WHERE tablename = 'jobs')
        FROM pg_roles r WHERE r.rolname = '{APP_ROLE}'""")
    assert rows == [(False, False, False, APP_ROLE, APP_ROLE, APP_ROLE)]


def test_roles_sql_grants_the_views_to_a_role_created_after_the_migration(pg_admin_url,
                                                                         reporting_db):
    """A head node that ran `hpc-billing migrate` before the reader existed: roles.sql
    grants the views then, and the views a later revision adds need no new grant."""
    url = _create_database(pg_admin_url)
    # The roles (and their passwords) are the server's, as the session's fixture set them.
    app_url = make_url(reporting_db.app_url).set(database=make_url(url).database)
    reader_url = make_url(reporting_db.grafana_url).set(database=make_url(url).database)
    app_url, reader_url = (u.render_as_string(hide_password=False) for u in (app_url, reader_url))
    db = ReportingDb(admin_url=url, app_url=app_url, grafana_url=reader_url)
    try:
        apply_roles(pg_admin_url, url)       # no passwords given: the current ones stay
        assert run_cli("migrate", "--database-url", app_url) == 0
        # What the database looks like when the reader did not exist during the upgrade.
        for sql in (f"REVOKE ALL ON ALL TABLES IN SCHEMA reporting FROM {GRAFANA_ROLE}",
                    f"REVOKE ALL ON SCHEMA reporting FROM {GRAFANA_ROLE}",
                    f"REVOKE ALL ON ALL FUNCTIONS IN SCHEMA reporting FROM {GRAFANA_ROLE}",
                    f"ALTER DEFAULT PRIVILEGES IN SCHEMA reporting REVOKE SELECT ON TABLES FROM {GRAFANA_ROLE}"):
            _execute(db, app_url, sql)
        with pytest.raises(errors.InsufficientPrivilege):
            _one(db, reader_url, "SELECT count(*) FROM reporting.charges")

        apply_roles(pg_admin_url, url)
        assert _one(db, reader_url, "SELECT count(*) FROM reporting.charges") == [(0,)]
        # A view a later revision adds (as the collector's role) is readable at once.
        _execute(db, app_url, "CREATE VIEW reporting.later AS SELECT 1 AS one")
        assert _one(db, reader_url, "SELECT one FROM reporting.later") == [(1,)]
    finally:
        _drop_database(url, pg_admin_url)


def _execute(db: ReportingDb, url: str, sql: str) -> None:
    conn = db.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def test_the_collector_may_only_read_and_append_the_audit_trail(reporting_db):
    rows = _one(reporting_db, reporting_db.admin_url, f"""
        SELECT privilege, has_table_privilege('{APP_ROLE}', 'public.audit_log', privilege)
        FROM unnest(string_to_array('{ALL_PRIVILEGES}', ',')) AS privilege ORDER BY 1""")
    allowed = {name for name, granted in rows if granted}
    assert {"SELECT", "INSERT"} <= allowed
    assert allowed.isdisjoint({"UPDATE", "DELETE", "TRUNCATE"})
    conn = reporting_db.connect(reporting_db.app_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for statement in ("TRUNCATE audit_log", "DELETE FROM audit_log",
                              "UPDATE audit_log SET actor = 'x'"):
                with pytest.raises(errors.InsufficientPrivilege):
                    cur.execute(statement)
            cur.execute("SELECT count(*) FROM audit_log")
    finally:
        conn.close()
    # roles.sql, run again, keeps it so (and the Grafana role still reads no table).
    apply_roles(reporting_db.admin_url, reporting_db.admin_url)
    rows = _one(reporting_db, reporting_db.admin_url, f"""
        SELECT has_table_privilege('{APP_ROLE}', 'public.audit_log', 'UPDATE,DELETE,TRUNCATE'),
               has_table_privilege('{GRAFANA_ROLE}', 'public.audit_log', 'SELECT')""")
    assert rows == [(False, False)]
