"""Alembic environment for hpc-billing's store.

Migrations normally run through ``collector.store.db.migrate``, which passes an open
connection in ``config.attributes["connection"]``. Offline mode (``--sql``) and a bare
``alembic`` run read the URL from the ``sqlalchemy.url`` option of the config; this file
reads no environment variables (DESIGN.md §7.1).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from collector.store.models import Base

target_metadata = Base.metadata
config = context.config


def _configure(**kwargs: object) -> None:
    context.configure(target_metadata=target_metadata, compare_type=True,
                      compare_server_default=True, **kwargs)


def run_migrations_offline() -> None:
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True,
               dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    # Imported here so offline mode needs no driver.
    from collector.store.db import make_engine

    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection and no sqlalchemy.url: use collector.store.db.migrate")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            _run_on(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
