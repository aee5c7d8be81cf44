"""Shared fixtures: a real PostgreSQL for the integration tests (no mocks, DESIGN.md §7.9).

Which server:

1. ``HPC_BILLING_TEST_DATABASE_URL``, when set: an admin URL (a role that may create and
   drop databases), e.g. ``postgresql+psycopg2://postgres@127.0.0.1:5432/postgres``.
2. Else the PostgreSQL on 127.0.0.1:5432 as user ``postgres`` (trust auth), when it answers.
3. Else a private server started from the machine's PostgreSQL binaries
   (``/usr/lib/postgresql/*/bin``) in a temporary directory on a free port, stopped at the
   end. initdb refuses to run as root, so as root the binaries run as the ``postgres``
   system user (``runuser``).

On that server the session gets one fresh database ``hpcb_test_<random>``, migrated once
and dropped (WITH FORCE) at the end. Each test that asks for ``db_url``, ``engine`` or
``session`` starts from empty tables (TRUNCATE ... RESTART IDENTITY CASCADE).
``fresh_database_url`` gives an empty, unmigrated database for migration tests.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session

from collector.store.db import make_engine, migrate, session_factory
from collector.store.models import Base

ENV_ADMIN_URL = "HPC_BILLING_TEST_DATABASE_URL"
LOCAL_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


# ------------------------------------------------------------------ server and databases

def _libpq_dsn(url: str | URL) -> dict[str, object]:
    """psycopg2.connect() keyword arguments for a SQLAlchemy URL (TCP or ?host=/dir)."""
    parsed = make_url(url) if isinstance(url, str) else url
    kwargs = parsed.set(drivername="postgresql+psycopg2").translate_connect_args(
        username="user", database="dbname")
    kwargs.update({k: v for k, v in parsed.query.items() if isinstance(v, str)})
    return kwargs


def _answers(url: str) -> bool:
    try:
        psycopg2.connect(connect_timeout=3, **_libpq_dsn(url)).close()
    except psycopg2.OperationalError:
        return False
    return True


def _admin_execute(admin_url: str, sql: str) -> None:
    conn = psycopg2.connect(**_libpq_dsn(admin_url))
    try:
        conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def _create_database(admin_url: str) -> str:
    name = f"hpcb_test_{secrets.token_hex(6)}"
    _admin_execute(admin_url,
                   f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8'")
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def _drop_database(url: str, admin_url: str) -> None:
    name = make_url(url).database
    _admin_execute(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _PrivateServer:
    """A throwaway PostgreSQL cluster in a temp dir, owned by ``postgres`` when root."""

    def __init__(self) -> None:
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                            key=lambda p: int(Path(p).parts[-3]))
        if not candidates:
            # Fail, not skip: a green run that tested no database would hide the gap.
            pytest.fail("no PostgreSQL answers on 127.0.0.1:5432 and no binaries under "
                        f"/usr/lib/postgresql; set {ENV_ADMIN_URL}")
        self.bindir = Path(candidates[-1]).parent
        self.root = Path(tempfile.mkdtemp(prefix="hpcb-pg-"))
        self.datadir = self.root / "data"
        self.port = _free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *argv: str) -> None:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> str:
        self._run("initdb", "-D", str(self.datadir), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--no-sync")
        self.resume()
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def resume(self) -> None:
        """Start the (initialised) cluster again on the same port."""
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.root} -c fsync=off")
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.root / "log"),
                  "-o", options, "-w", "-t", "60", "start")

    def pause(self) -> None:
        """Stop the server, keeping its data (a database outage)."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop")

    def stop(self) -> None:
        try:
            self.pause()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A URL of a role that may create databases, on a server that answers."""
    configured = os.environ.get(ENV_ADMIN_URL)
    if configured:
        yield configured
        return
    if _answers(LOCAL_ADMIN_URL):
        yield LOCAL_ADMIN_URL
        return
    server = _PrivateServer()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _migrated_database_url(pg_admin_url: str) -> Iterator[str]:
    url = _create_database(pg_admin_url)
    engine = make_engine(url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    try:
        yield url
    finally:
        _drop_database(url, pg_admin_url)


@pytest.fixture(scope="session")
def _session_engine(_migrated_database_url: str) -> Iterator[Engine]:
    engine = make_engine(_migrated_database_url)
    try:
        yield engine
    finally:
        engine.dispose()


_ALL_TABLES = ", ".join(table.name for table in Base.metadata.sorted_tables)


@pytest.fixture
def db_url(_migrated_database_url: str, _session_engine: Engine) -> str:
    """URL of the migrated test database, every store table emptied for this test."""
    with _session_engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {_ALL_TABLES} RESTART IDENTITY CASCADE"))
    return _migrated_database_url


@pytest.fixture
def engine(db_url: str, _session_engine: Engine) -> Engine:
    """The shared engine on the emptied test database (do not dispose it)."""
    return _session_engine


@pytest.fixture
def sessions(db_url: str) -> Iterator[object]:
    """A session factory on the emptied test database through an engine of the test's own
    (as the collector makes one), disposed at the end."""
    engine = make_engine(db_url)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session on the emptied test database; whatever the test left uncommitted is
    rolled back at the end."""
    with Session(engine, expire_on_commit=False) as sess:
        try:
            yield sess
        finally:
            sess.rollback()


@pytest.fixture
def private_pg() -> Iterator[_PrivateServer]:
    """A PostgreSQL server of this test's own, from the machine's binaries, that the test
    may stop (``pause()``) and start again (``resume()``); ``url`` is its admin URL."""
    server = _PrivateServer()
    server.url = server.start()  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        try:
            server.stop()
        except subprocess.CalledProcessError:
            shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def fresh_database_url(pg_admin_url: str) -> Iterator[str]:
    """URL of a new, EMPTY (unmigrated) database, dropped after the test."""
    url = _create_database(pg_admin_url)
    try:
        yield url
    finally:
        _drop_database(url, pg_admin_url)
