"""The audit trail as the process holds it: its key (from a secret file) and who acts.

``AuditTrail.record`` appends an entry (``billing.audit.chain_entry``, stored by
``collector.store.audit``) in the caller's transaction; a trail without a key is off and
records nothing. The runtime builds it once (``load_trail``); the pricer, the pipeline and
the use cases record through it. Design: docs/finance.md, "Audit trail".
"""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from billing.audit import ACTIONS, MIN_KEY_BYTES, AuditError, chain_entry, check_key
from billing.records import AuditEntry
from collector.settings import SettingsError
from collector.store import audit as store_audit
from collector.store.db import Session

log = logging.getLogger("hpc_billing")

KEY_SETTING = "HPC_BILLING_AUDIT_KEY_FILE"


class AuditKeyError(SettingsError):
    """The audit key is not configured, cannot be read, or is too short (a configuration
    error: the command stops before it does anything, with exit code 2)."""

    def __init__(self, message: str) -> None:
        super().__init__([message])
        self.message = message


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
    """Advice about the key file's permissions: a secret every user can read (the
    service's group may: /etc/hpc-billing is root's, readable by group hpc-billing)."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return []
    if mode & 0o007:
        return [(f"{KEY_SETTING}: every user can read {path} (mode {oct(mode & 0o777)}); "
                 f"chmod o= it")]
    return []


def current_actor() -> str:
    """Who is acting: the login name, else ``uid:<n>`` (a container without passwd)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def append(session: Session, key: bytes, *, actor: str, action: str, subject: str,
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


@dataclass(slots=True)
class AuditTrail:
    """Records actions in the chain when it has a key; without one it is off (and says
    so once, in a warning naming what goes unrecorded)."""

    key: bytes | None = field(repr=False)
    actor: str
    _told_off: bool = field(default=False, repr=False)

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

    def quiet_when_off(self) -> None:
        """Record nothing without a key, and do not say so (the demo)."""
        self._told_off = True

    def record_off(self, action: str, subject: str) -> None:
        """Say (once per process) that the trail is off and this action goes unrecorded."""
        if self.key is None and not self._told_off:
            self._told_off = True
            log.warning("the audit trail is off (%s is unset): %s %s and later actions are "
                        "not recorded", KEY_SETTING, action, subject)

    def record(self, session: Session, action: str, subject: str,
               details: Mapping[str, Any]) -> AuditEntry | None:
        """Append an entry in the caller's transaction (None when the trail is off).
        Call it last before committing: it locks the trail until the commit."""
        if self.key is None:
            self.record_off(action, subject)
            return None
        entry = append(session, self.key, actor=self.actor, action=action, subject=subject,
                       details=details)
        log.info("audit entry %d: %s %s", entry.seq, action, subject)
        return entry


def load_trail(key_file: str | None, actor: str | None = None) -> AuditTrail:
    """The trail of a process: off without ``key_file``; AuditKeyError for a key file
    that cannot be read or is too short (warnings for one others can read)."""
    who = actor or current_actor()
    if not key_file:
        return AuditTrail(None, who)
    key = load_audit_key(key_file)
    for warning in key_file_warnings(key_file):
        log.warning("%s", warning)
    return AuditTrail(key, who)
