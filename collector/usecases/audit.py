"""The audit trail in use: its key, recording actions, closing a period with its digest,
verifying the chain and the closed periods, listing entries.

The chain and digests are ``billing.audit``'s; the table is ``collector.store.audit``'s.
An ``AuditTrail`` without a key records nothing (the trail is off); the commands that
exist to be recorded (period close and reopen, audit verify) refuse to run without one.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from billing.audit import (
    ACTIONS,
    MIN_KEY_BYTES,
    PERIOD_CLOSE,
    PERIOD_REOPEN,
    AuditError,
    Mismatch,
    chain_entry,
    check_key,
    closed_period_digests,
    entry_time,
    period_digest,
    verify_chain,
)
from billing.records import AuditEntry
from collector.store import audit as store_audit
from collector.store import charges as store_charges
from collector.store import finance_reads

Sessions = Callable[[], Any]
KEY_SETTING = "HPC_BILLING_AUDIT_KEY_FILE"


class AuditKeyError(ValueError):
    """The audit key is not configured, cannot be read, or is too short."""


def load_audit_key(path: str | Path) -> bytes:
    """The HMAC key held in ``path``: its bytes, less one trailing newline; at least
    ``MIN_KEY_BYTES`` (32). AuditKeyError with what to do otherwise."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise AuditKeyError(f"{KEY_SETTING}: cannot read the audit key {path}: "
                            f"{exc.strerror or exc}") from None
    key = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if raw.endswith(b"\n") else raw
    try:
        return check_key(key)
    except AuditError:
        raise AuditKeyError(
            f"{KEY_SETTING}: the audit key in {path} has {len(key)} bytes, it needs at least "
            f"{MIN_KEY_BYTES} (make one with: head -c 48 /dev/urandom | base64 > {path}; "
            f"chmod 600 {path})") from None


def key_file_warnings(path: str | Path) -> list[str]:
    """Advice about the key file's permissions (a secret others can read)."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return []
    if mode & 0o077:
        return [(f"{KEY_SETTING}: {path} can be read by other users (mode "
                 f"{oct(mode & 0o777)}); chmod 600 it")]
    return []


def current_actor() -> str:
    """Who is acting: the login name, else ``uid:<n>`` (a container without passwd)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


@dataclass(frozen=True, slots=True)
class AuditTrail:
    """Records actions in the chain when it has a key; without one it is off."""

    key: bytes | None = field(repr=False)
    actor: str

    @property
    def on(self) -> bool:
        return self.key is not None

    def require(self, what: str) -> bytes:
        """The key, or AuditKeyError saying that ``what`` needs it."""
        if self.key is None:
            raise AuditKeyError(f"{what} needs the audit trail: set {KEY_SETTING} (or "
                                f"--audit-key-file) to a file holding at least "
                                f"{MIN_KEY_BYTES} secret bytes")
        return self.key

    def record(self, session: Any, action: str, subject: str,
               details: Mapping[str, Any]) -> AuditEntry | None:
        """Append an entry in the caller's transaction (None when the trail is off).
        Call it last before committing (it locks the trail until the commit)."""
        if self.key is None:
            return None
        return append(session, self.key, actor=self.actor, action=action, subject=subject,
                      details=details)


def append(session: Any, key: bytes, *, actor: str, action: str, subject: str,
           details: Mapping[str, Any], at: datetime | None = None) -> AuditEntry:
    """Append one entry (``action`` from ``billing.audit.ACTIONS``) in the caller's
    transaction. AuditError for an unknown action, a short key or a value the chain
    cannot hold (floats, Decimals); AuditStoreError for one the table cannot (NUL)."""
    if action not in ACTIONS:
        raise AuditError(f"unknown audit action {action!r}; one of {', '.join(ACTIONS)}")
    check_key(key)
    when = datetime.now(UTC) if at is None else at
    return store_audit.append(session, lambda tail: chain_entry(
        key, tail, at=when, actor=actor, action=action, subject=subject, details=details))


# ------------------------------------------------------------------------- periods

@dataclass(frozen=True, slots=True)
class ClosedPeriod:
    """What ``close_period`` did: the digest and line count it recorded, and the entry."""

    period: str
    already_closed: bool
    digest: str | None = None
    lines: int = 0
    entry: AuditEntry | None = None


def close_period(sessions: Sessions, trail: AuditTrail, period: str, *, by: str,
                 note: str | None = None) -> ClosedPeriod:
    """Close ``period`` and record a ``period.close`` entry with the digest of the lines
    posted in it. Needs the trail's key. The digest is read after the close's INSERT,
    which waits for every charge writer (they hold a SHARE lock on billing_periods) and
    makes later ones wait for this commit, so it covers exactly the lines that stay.
    Closing a closed period changes and records nothing."""
    trail.require("period close")
    store_charges.check_period(period)
    with sessions() as session:
        already = period in store_charges.closed_periods(session)
        store_charges.close_period(session, period, by=by, note=note)
        if already:
            session.commit()
            return ClosedPeriod(period, already_closed=True)
        digest, count = period_digest(finance_reads.period_lines(session, period))
        details: dict[str, Any] = {"digest": digest, "lines": count}
        if note:
            details["note"] = note
        entry = trail.record(session, PERIOD_CLOSE, period, details)
        session.commit()
    return ClosedPeriod(period, already_closed=False, digest=digest, lines=count, entry=entry)


# -------------------------------------------------------------------------- verify

@dataclass(frozen=True, slots=True)
class Anchor:
    """An entry known to exist (from an earlier verify, a log or a metric): its seq and,
    optionally, its hash. A trail that no longer holds it was cut back."""

    seq: int
    hash: str | None = None

    @classmethod
    def parse(cls, text: str, where: str) -> Anchor:
        """``<seq> [<hash>]`` (what ``anchor_text`` writes; ``#`` starts a comment)."""
        words = text.split("#", 1)[0].split()
        try:
            if not 1 <= len(words) <= 2:
                raise ValueError
            seq = int(words[0])
            digest = words[1].lower() if len(words) == 2 else None
            if seq < 0 or (digest is not None and (
                    len(digest) != 64 or set(digest) - set("0123456789abcdef"))):
                raise ValueError
        except ValueError:
            raise AuditError(f"{where}: expected '<seq> [<64 hex hash>]', got {text.strip()!r}"
                             ) from None
        return cls(seq, digest)


def anchor_text(head: AuditEntry | None) -> str:
    """The anchor of a trail's head, as an anchor file holds it."""
    if head is None:
        return "0  # the audit trail is empty\n"
    return f"{head.seq} {head.hash}\n"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What ``verify`` found: the first mismatch (None: intact), how many entries it
    checked and the head, the closed periods whose digest it recomputed, and closed
    periods that have no ``period.close`` entry (closed before the trail existed, or
    outside hpc-billing), which it could not check."""

    problem: Mismatch | None
    entries: int
    head: AuditEntry | None
    periods_checked: tuple[str, ...] = ()
    unsealed: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.problem is None


def _check_anchor(anchor: Anchor, head: AuditEntry | None,
                  found: AuditEntry | None) -> Mismatch | None:
    if anchor.seq == 0:
        return None
    if head is None or head.seq < anchor.seq:
        ends = "is empty" if head is None else f"ends at entry {head.seq}"
        return Mismatch(f"entry {anchor.seq}",
                        f"missing: the trail {ends}, but entry {anchor.seq} was anchored "
                        f"(the newest entries were removed)")
    if anchor.hash is not None and (found is None or found.hash != anchor.hash):
        return Mismatch(f"entry {anchor.seq}",
                        f"its hash is not the anchored {anchor.hash[:12]} (the trail from "
                        f"there on was replaced)")
    return None


def verify(sessions: Sessions, key: bytes, *, anchor: Anchor | None = None) -> VerifyReport:
    """Recompute the chain and each closed period's digest in one consistent snapshot.

    The first mismatch is named: an entry (edited, inserted, removed, reordered, another
    key; or, with ``anchor``, the tail cut back past it), else a period (its lines
    changed since its ``period.close`` entry, or it is no longer closed although no
    ``period.reopen`` entry says so). Without an anchor, removing the newest entries
    leaves a shorter chain that verifies: compare ``head`` with an earlier run's.
    """
    check_key(key)
    with sessions() as session:
        store_audit.begin_snapshot(session)
        counted = [0]
        period_entries: list[AuditEntry] = []
        wanted = anchor.seq if anchor is not None else None
        anchored: list[AuditEntry] = []

        def walk(items: Iterable[AuditEntry]) -> Iterator[AuditEntry]:
            for item in items:
                counted[0] += 1
                if item.action in (PERIOD_CLOSE, PERIOD_REOPEN):
                    period_entries.append(item)
                if item.seq == wanted:
                    anchored.append(item)
                yield item

        head = store_audit.head(session)
        problem = verify_chain(key, walk(store_audit.entries(session)))
        if problem is not None:
            return VerifyReport(problem, counted[0], head)
        if anchor is not None:
            problem = _check_anchor(anchor, head, anchored[0] if anchored else None)
            if problem is not None:
                return VerifyReport(problem, counted[0], head)
        try:
            recorded = closed_period_digests(period_entries)
        except AuditError as exc:
            return VerifyReport(Mismatch("trail", str(exc)), counted[0], head)
        closed = store_charges.closed_periods(session)
        checked: list[str] = []
        for period in sorted(recorded):
            digest, count, seq = recorded[period]
            if period not in closed:
                return VerifyReport(Mismatch(
                    f"period {period}",
                    f"entry {seq} closed it, it is open now, and no period.reopen entry "
                    f"says so (its billing_periods row was deleted)"),
                    counted[0], head, tuple(checked))
            now, now_count = period_digest(finance_reads.period_lines(session, period))
            if now != digest:
                return VerifyReport(Mismatch(
                    f"period {period}",
                    f"its charge lines changed since it was closed (entry {seq}: {count} "
                    f"lines, digest {digest[:12]}; now {now_count} lines, digest "
                    f"{now[:12]})"), counted[0], head, tuple(checked))
            checked.append(period)
        unsealed = tuple(sorted(closed - recorded.keys()))
        return VerifyReport(None, counted[0], head, tuple(checked), unsealed)


# ---------------------------------------------------------------------------- list

def list_entries(sessions: Sessions, *, action: str | None = None, subject: str | None = None,
                 limit: int | None = 100, after_seq: int = 0,
                 newest_first: bool = True) -> list[AuditEntry]:
    """Entries, newest first by default (``limit`` None: all)."""
    with sessions() as session:
        return list(store_audit.entries(session, after_seq=after_seq, action=action,
                                        subject=subject, limit=limit,
                                        newest_first=newest_first))


def entry_to_dict(entry: AuditEntry) -> dict[str, Any]:
    """An entry as JSON-ready values (``at`` exactly as the chain hashes it)."""
    return {"seq": entry.seq, "at": entry_time(entry.at), "actor": entry.actor,
            "action": entry.action, "subject": entry.subject, "details": entry.details,
            "prev": entry.prev, "hash": entry.hash}
