"""Leader election between collectors sharing one database: a PostgreSQL advisory lock.

Design notes: docs/design/store.md.
"""

from __future__ import annotations

import hashlib
import logging
import threading

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)


def lock_key(cluster: str | None) -> int:
    """A stable signed 64-bit advisory-lock key for the cluster's collector."""
    digest = hashlib.blake2b(f"hpc-billing leader:{cluster or ''}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class LeaderLock:
    """Holds (or tries to hold) the collector's advisory lock on its own connection."""

    def __init__(self, engine: Engine, cluster: str | None) -> None:
        # A separate engine without pooling: the lock's connection is never shared with,
        # returned to, or recycled by the pool the pipeline uses.
        self._engine = create_engine(engine.url, poolclass=NullPool,
                                     connect_args=_connect_args(engine))
        self.key = lock_key(cluster)
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self.held = False
        # Why the last ensure() could not answer (the database, not another collector,
        # said no): "OperationalError: ...". None when the database answered.
        self.error: str | None = None

    def ensure(self) -> bool:
        """True when this process is the leader now (taking the lock if it is free)."""
        with self._lock:
            if self.held and self._conn is not None:
                try:
                    self._conn.execute(text("SELECT 1"))
                    return True
                except Exception as exc:  # noqa: BLE001 - a dead session means the lock is gone
                    log.warning("lost leadership: the lock's database session failed (%s)",
                                type(exc).__name__)
                    self._drop()
                    self.error = _describe(exc)
            try:
                if self._conn is None:
                    self._conn = self._engine.connect()
                got = bool(self._conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                              {"k": self.key}).scalar())
                self._conn.commit()
            except Exception as exc:  # noqa: BLE001 - no database, no leadership; retried next time
                log.debug("leader election failed: %s", type(exc).__name__)
                self._drop()
                self.error = _describe(exc)
                return False
            self.error = None
            if got and not self.held:
                log.info("this process is now the leader (advisory lock %d)", self.key)
            self.held = got
            return got

    def release(self) -> None:
        """Give the lock up (at shutdown) so the other collector takes over at once."""
        with self._lock:
            if self._conn is not None and self.held:
                try:
                    self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                    self._conn.commit()
                except Exception:  # noqa: BLE001, S110 - closing the session frees it anyway
                    pass
            self._drop()
        self._engine.dispose()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001, S110 - already broken
                pass
        self._conn = None
        self.held = False


def _describe(exc: Exception) -> str:
    """``Type: first line`` of a database error (libpq messages name host and port, never a
    password)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:500]


def _connect_args(engine: Engine) -> dict[str, object]:
    """The connect options of the main engine that matter for a lock connection."""
    args: dict[str, object] = {"application_name": "hpc-billing leader lock"}
    if engine.url.host and not str(engine.url.host).startswith("/"):
        args["connect_timeout"] = 5
    return args
