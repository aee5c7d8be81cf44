"""The audit trail's table ``audit_log`` (revision 0010): appending and reading entries.

``append`` adds the entry that follows the tail in the caller's transaction, under
``LOCK TABLE audit_log IN EXCLUSIVE MODE``: appenders queue one behind the other until
each one's transaction ends, so seq has no gap and no fork, while readers (ACCESS SHARE)
are never blocked. The caller builds the entry from the tail (``billing.audit.chain_entry``
with its key). Append last in a transaction that also writes charges or periods (the
lock is held until commit). Like every store function these never commit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import UTC
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from billing.records import AuditEntry
from collector.store.models import AuditLog, table_of

_LOG = table_of(AuditLog)
_SQL_LOCK = text("LOCK TABLE audit_log IN EXCLUSIVE MODE")
_COLUMNS = (_LOG.c.seq, _LOG.c.at, _LOG.c.actor, _LOG.c.action, _LOG.c.subject,
            _LOG.c.details, _LOG.c.prev, _LOG.c.hash)


class AuditStoreError(ValueError):
    """An entry the table cannot hold as given."""


def _no_nul(value: Any, where: str) -> None:
    """PostgreSQL text and jsonb cannot hold U+0000: refuse it with a clear message
    instead of a database error in the middle of a transaction."""
    if isinstance(value, str):
        if "\x00" in value:
            raise AuditStoreError(f"{where}: text with a NUL character cannot be stored")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _no_nul(k, f"{where} key")
            _no_nul(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _no_nul(v, f"{where}[{i}]")


def _entry(row: Any) -> AuditEntry:
    seq, at, actor, action, subject, details, prev, digest = row
    return AuditEntry(seq=int(seq), at=at.astimezone(UTC), actor=actor, action=action,
                      subject=subject, details=details, prev=prev, hash=digest)


def begin_snapshot(session: Session) -> None:
    """Make the session's (new) transaction REPEATABLE READ and READ ONLY: every read
    after this sees one snapshot (a verify compares the trail with the lines as they
    were at one instant). Call first thing in the transaction."""
    session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))


def head(session: Session) -> AuditEntry | None:
    """The newest entry (highest seq), or None when the trail is empty."""
    row = session.execute(select(*_COLUMNS).order_by(_LOG.c.seq.desc()).limit(1)).first()
    return None if row is None else _entry(row)


def count(session: Session) -> int:
    """How many entries are stored."""
    return int(session.execute(select(func.count()).select_from(_LOG)).scalar_one())


def append(session: Session, build: Callable[[AuditEntry | None], AuditEntry]) -> AuditEntry:
    """Lock the trail, read its tail, and insert ``build(tail)`` (None: the trail is
    empty), which must be the entry that follows it (seq + 1, prev = tail's hash).
    AuditStoreError for an entry that does not follow the tail or holds a NUL
    character; nothing is written then."""
    session.execute(_SQL_LOCK)
    tail = head(session)
    entry = build(tail)
    expected = 1 if tail is None else tail.seq + 1
    if entry.seq != expected or (tail is not None and entry.prev != tail.hash):
        raise AuditStoreError(f"entry {entry.seq} does not follow the trail's tail "
                              f"(entry {expected - 1})")
    _no_nul({"actor": entry.actor, "action": entry.action, "subject": entry.subject,
             "details": entry.details}, f"entry {entry.seq}")
    session.execute(insert(AuditLog).values(
        seq=entry.seq, at=entry.at, actor=entry.actor, action=entry.action,
        subject=entry.subject, details=entry.details, prev=entry.prev, hash=entry.hash))
    return entry


def entries(session: Session, *, after_seq: int = 0, action: str | None = None,
            subject: str | None = None, limit: int | None = None, newest_first: bool = False,
            yield_per: int = 5_000) -> Iterator[AuditEntry]:
    """Entries with seq > ``after_seq`` (optionally of one action and subject), in seq
    order (``newest_first``: the reverse), at most ``limit``; streamed."""
    stmt = select(*_COLUMNS).where(_LOG.c.seq > after_seq)
    if action is not None:
        stmt = stmt.where(_LOG.c.action == action)
    if subject is not None:
        stmt = stmt.where(_LOG.c.subject == subject)
    stmt = stmt.order_by(_LOG.c.seq.desc() if newest_first else _LOG.c.seq)
    if limit is not None:
        stmt = stmt.limit(limit)
    result = session.execute(stmt.execution_options(yield_per=yield_per))
    try:
        for row in result:
            yield _entry(row)
    finally:
        result.close()


def entry(session: Session, seq: int) -> AuditEntry | None:
    """The entry with this seq, or None."""
    row = session.execute(select(*_COLUMNS).where(_LOG.c.seq == seq)).first()
    return None if row is None else _entry(row)


__all__ = ["AuditStoreError", "append", "begin_snapshot", "count", "entries", "entry", "head"]
