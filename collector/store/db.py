"""Engines, sessions and schema migrations.

Design notes: docs/design/store.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import Connection, create_engine, text
from sqlalchemy import Engine as Engine  # re-exported: the type callers annotate with
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session as Session  # re-exported: the type callers annotate with
from sqlalchemy.orm import sessionmaker

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# What every caller gets to open sessions with (``session_factory``).
Sessions = sessionmaker[Session]

APPLICATION_NAME = "hpc-billing"
CONNECT_TIMEOUT_S = 10

# Serialises concurrent `migrate` calls (two collectors starting at once) on one database.
# Any constant works as long as nothing else in the database uses it: "hpcb" + "mig".
_MIGRATE_LOCK_KEY = 0x6870_6362_6D69_67


class DatabaseURLError(ValueError):
    """The database URL cannot be used (bad syntax or a driver other than psycopg)."""


def _parse_url(url: str | URL) -> URL:
    if isinstance(url, URL):
        parsed = url
    else:
        raw = url.strip()
        # Heroku-style "postgres://" is common in the wild; SQLAlchemy >= 1.4 refuses it.
        if raw.startswith("postgres://"):
            raw = "postgresql://" + raw[len("postgres://"):]
        try:
            parsed = make_url(raw)
        except ArgumentError as exc:
            raise DatabaseURLError(f"cannot parse database URL {redact_url(raw)}") from exc
    backend, _, driver = parsed.drivername.partition("+")
    if backend != "postgresql":
        raise DatabaseURLError(
            f"database URL {redact_url(parsed)} is not PostgreSQL "
            "(expected postgresql+psycopg2://user:pw@host:port/db)")
    if driver not in ("", "psycopg2", "psycopg"):
        # The bulk writers use psycopg 3's cursor.copy (binary COPY); other drivers would
        # need their own.
        raise DatabaseURLError(
            f"database URL {redact_url(parsed)} uses driver {driver!r}; "
            "hpc-billing needs psycopg (postgresql+psycopg://...)")
    # psycopg 3 under every accepted URL (engine.md §10): the same libpq conninfo, so a
    # ``postgresql+psycopg2://`` URL of an existing deployment keeps working unchanged.
    return parsed.set(drivername="postgresql+psycopg")


def _is_unix_socket(url: URL) -> bool:
    host = url.query.get("host")
    if isinstance(host, tuple):
        host = host[0] if host else None
    if host is not None:
        return str(host).startswith("/")
    # No host at all means libpq's default socket directory.
    return url.host is None or url.host.startswith("/")


def make_engine(url: str | URL, **engine_kwargs: object) -> Engine:
    """Create the SQLAlchemy engine for ``url``.

    Accepts ``postgresql+psycopg://``, ``postgresql+psycopg2://`` and ``postgresql://``
    URLs, all driven by psycopg 3
    (including ``?host=/socket/dir`` for an embedded server). Every connection runs with
    ``TimeZone=UTC`` (set as a startup option, so it survives ROLLBACK and needs no extra
    round trip), ``client_encoding=UTF8`` (COPY sends UTF-8 text), and
    ``application_name=hpc-billing`` (visible in pg_stat_activity). TCP connections get
    a short ``connect_timeout`` so a dead database fails a readiness probe quickly.
    Values given in the URL's query string take precedence.
    """
    parsed = _parse_url(url)
    query = parsed.query
    connect_args: dict[str, object] = {}
    if "application_name" not in query:
        connect_args["application_name"] = APPLICATION_NAME
    if "client_encoding" not in query:
        connect_args["client_encoding"] = "utf8"
    if "connect_timeout" not in query and not _is_unix_socket(parsed):
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    options = query.get("options")
    if isinstance(options, tuple):
        options = " ".join(options)
    tz_option = "-c TimeZone=UTC"
    connect_args["options"] = f"{options} {tz_option}" if options else tz_option
    kwargs: dict[str, object] = {"pool_pre_ping": True, "connect_args": connect_args}
    kwargs.update(engine_kwargs)
    return create_engine(parsed, **kwargs)


def raw_connect(url: str | URL, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A plain psycopg 3 connection to ``url`` with the engine's session settings (UTC,
    UTF-8, application name): the reading thread's second connection, for the skip
    lookups and partition DDL outside the poll's transaction (engine.md §5)."""
    parsed = _parse_url(url)
    conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    options = parsed.query.get("options")
    if isinstance(options, tuple):
        options = " ".join(options)
    tz_option = "-c TimeZone=UTC"
    kwargs: dict[str, Any] = {"options": f"{options} {tz_option}" if options else tz_option}
    if "application_name" not in parsed.query:
        kwargs["application_name"] = APPLICATION_NAME
    if "client_encoding" not in parsed.query:
        kwargs["client_encoding"] = "utf8"
    return psycopg.connect(conninfo, autocommit=autocommit, **kwargs)


def session_factory(engine: Engine) -> Sessions:
    """A sessionmaker for ``engine``.

    ``expire_on_commit=False``: nothing outside the store holds ORM objects, and inside
    it a commit by the caller should not trigger reloads.
    """
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(connection: Connection | None = None) -> Config:
    """The Alembic configuration, built in code (no alembic.ini).

    With ``connection``, migrations run on it (inside its transaction).
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _run(engine: Engine, fn: str, revision: str) -> None:
    # One transaction: PostgreSQL has transactional DDL, so a failed migration leaves the
    # schema where it was. The advisory lock makes a second migrator wait, then find
    # nothing to do.
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                           {"key": _MIGRATE_LOCK_KEY})
        from alembic import command

        getattr(command, fn)(alembic_config(connection), revision)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (default: the newest), committing on success."""
    _run(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the schema to ``revision`` ("base" drops every table of the store)."""
    _run(engine, "downgrade", revision)


def schema_revision(connection: Connection) -> str | None:
    """The revision the database is at, or None when it has never been migrated (what
    Alembic's MigrationContext reads, without importing Alembic: a poll or a probe needs
    only this row)."""
    if connection.execute(text("SELECT to_regclass('alembic_version')")).scalar() is None:
        return None
    rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(rows) > 1:
        raise RuntimeError(f"the database has {len(rows)} schema revisions: {sorted(rows)}")
    return str(rows[0]) if rows else None


# The newest migration's revision. Alembic (and the migration scripts it imports) is
# loaded only to migrate; tests/unit/test_schema_head.py checks that this is Alembic's head.
HEAD_REVISION = "0012"


def head_revision() -> str:
    """The newest revision this code knows (what ``/readyz`` expects the database at)."""
    return HEAD_REVISION


def alembic_head_revision() -> str:
    """The head of the migration scripts, as Alembic reads it (imports Alembic)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


# Greedy up to the last "@" of the authority: a password may contain an unencoded "@".
_USERINFO_PASSWORD = re.compile(r"(?P<head>://[^/@:]*:)(?P<pw>[^/]*)(?P<tail>@)")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<pw>[^&]*)", re.IGNORECASE)


def redact_url(url: str | URL) -> str:
    """``url`` with any password replaced by ``***``, for logs and error messages."""
    if isinstance(url, URL):
        rendered = url.render_as_string(hide_password=True)
    else:
        rendered = _USERINFO_PASSWORD.sub(r"\g<head>***\g<tail>", url)
    return _QUERY_PASSWORD.sub(r"\g<head>***", rendered)


# -------------------------------------------------------------------- read sessions

def begin_read(session: Session, *, statement_timeout_s: float) -> None:
    """Make the session's (new) transaction READ ONLY with a statement timeout.

    Call first thing in the transaction: ``SET TRANSACTION`` must precede any query.
    Both settings end with the transaction, so a pooled connection is not affected.
    """
    timeout_ms = max(1, int(statement_timeout_s * 1000))
    session.execute(text("SET TRANSACTION READ ONLY"))
    # set_config(..., true) is SET LOCAL with a bind parameter.
    session.execute(text("SELECT set_config('statement_timeout', :ms, true)"),
                    {"ms": str(timeout_ms)})


def database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` says the database could not be used right now (refused or lost
    connection, pool exhausted, statement timeout), as opposed to a bug."""
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.TimeoutError)):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)


def ping(session: Session) -> None:
    """``SELECT 1``: raises when the database does not answer."""
    session.execute(text("SELECT 1")).scalar_one()


def raw_connection(session: Session, what: str) -> psycopg.Connection[Any]:
    """The psycopg 3 connection under the session (in its transaction): for COPY, binary
    COPY and statements SQLAlchemy has no form for. ``what`` names the caller in the
    error raised for another driver."""
    dbapi_conn = session.connection().connection.driver_connection
    if not isinstance(dbapi_conn, psycopg.Connection):
        raise TypeError(f"{what} needs the psycopg 3 driver (postgresql+psycopg://)")
    return dbapi_conn


def raw_cursor(session: Session, what: str) -> psycopg.Cursor[Any]:
    """A psycopg 3 cursor on the session's connection (in its transaction); close it (it
    is a context manager)."""
    return raw_connection(session, what).cursor()
