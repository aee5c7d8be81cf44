"""The audit trail's pure part: an HMAC-SHA256 hash chain, and digests of closed periods.

Design notes: docs/design/billing.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from billing.records import AuditEntry, ChargeLine

GENESIS = "0" * 64

# Actions the trail records (the store and use cases append them).
CARD_LOADED = "card.load"
REPRICE = "reprice"
PERIOD_CLOSE = "period.close"
PERIOD_REOPEN = "period.reopen"
BUDGET_SET = "budget.set"
TOKEN_CREATED = "token.create"  # noqa: S105 - an audit action name, not a secret
EXPORT = "export"
CORRECTION = "correction"
ACTIONS = (CARD_LOADED, REPRICE, PERIOD_CLOSE, PERIOD_REOPEN, BUDGET_SET, TOKEN_CREATED,
           EXPORT, CORRECTION)
MIN_KEY_BYTES = 32


class AuditError(ValueError):
    """An entry, key or value the trail cannot hold."""


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The first entry (``seq``) or period that does not match, and why."""

    where: str          # "entry 7" or "period 2026-10"
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def check_key(key: bytes) -> bytes:
    """The HMAC key, refused when shorter than MIN_KEY_BYTES (32 bytes = 256 bits)."""
    if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
        raise AuditError(f"the audit HMAC key must be at least {MIN_KEY_BYTES} bytes, got "
                         f"{len(key) if isinstance(key, bytes) else type(key).__name__}")
    return key


def _plain(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal):
        raise AuditError(f"{where}: write Decimal {value} as a string (exact text)")
    if isinstance(value, float):
        raise AuditError(f"{where}: floats are not canonical; write {value!r} as a string")
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise AuditError(f"{where}: keys must be strings, got {k!r}")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    raise AuditError(f"{where}: {type(value).__name__} is not a JSON value")


def entry_time(at: datetime) -> str:
    """``at`` as the chain writes it: UTC with microseconds and ``Z``."""
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise AuditError(f"entry time must be a timezone-aware datetime, got {at!r}")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_entry(seq: int, at: datetime, actor: str, action: str, subject: str,
                    details: Mapping[str, Any], prev: str) -> bytes:
    """The bytes an entry's HMAC is computed over (see the module docstring)."""
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise AuditError(f"seq must be a positive integer, got {seq!r}")
    for name, value in (("actor", actor), ("action", action), ("subject", subject)):
        if not isinstance(value, str):
            raise AuditError(f"{name} must be a string, got {value!r}")
    if not isinstance(prev, str) or len(prev) != 64:
        raise AuditError(f"prev must be a 64-character hex hash, got {prev!r}")
    if not isinstance(details, Mapping):
        raise AuditError(f"details must be a JSON object, got {details!r}")
    document = {"seq": seq, "at": entry_time(at), "actor": actor, "action": action,
                "subject": subject, "details": _plain(dict(details), "details"),
                "prev": prev}
    return json.dumps(document, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def entry_hash(key: bytes, seq: int, at: datetime, actor: str, action: str, subject: str,
               details: Mapping[str, Any], prev: str) -> str:
    """HMAC-SHA256(key, canonical form), lower-case hex."""
    message = canonical_entry(seq, at, actor, action, subject, details, prev)
    return hmac.new(check_key(key), message, hashlib.sha256).hexdigest()


def chain_entry(key: bytes, tail: AuditEntry | None, *, at: datetime, actor: str,
                action: str, subject: str, details: Mapping[str, Any]) -> AuditEntry:
    """The entry that follows ``tail`` (None: the first entry)."""
    seq = 1 if tail is None else tail.seq + 1
    prev = GENESIS if tail is None else tail.hash
    plain = _plain(dict(details), "details")
    digest = entry_hash(key, seq, at, actor, action, subject, plain, prev)
    return AuditEntry(seq=seq, at=at.astimezone(UTC), actor=actor, action=action,
                      subject=subject, details=plain, prev=prev, hash=digest)


def verify_chain(key: bytes, entries: Iterable[AuditEntry]) -> Mismatch | None:
    """None when the entries (in seq order) form an intact chain, else the first entry
    that does not: a seq out of order, a ``prev`` that is not the previous entry's hash,
    or a hash that the key does not reproduce (an edited entry, or another key)."""
    check_key(key)
    expected_seq, prev = 1, GENESIS
    for entry in entries:
        where = f"entry {entry.seq}"
        if entry.seq != expected_seq:
            return Mismatch(where, f"expected entry {expected_seq} here (an entry was "
                                   f"removed, inserted or reordered)")
        if entry.prev != prev:
            return Mismatch(where, "its prev is not the hash of the entry before it")
        try:
            recomputed = entry_hash(key, entry.seq, entry.at, entry.actor, entry.action,
                                    entry.subject, entry.details, entry.prev)
        except AuditError as exc:
            return Mismatch(where, f"cannot be serialised: {exc}")
        if not hmac.compare_digest(recomputed, entry.hash):
            return Mismatch(where, "its hash does not match its content (edited, or "
                                   "written with another key)")
        expected_seq, prev = entry.seq + 1, entry.hash
    return None


# ------------------------------------------------------------------------ period digests

def _number(value: Decimal) -> str:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise AuditError(f"expected a finite Decimal, got {value!r}")
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def canonical_line(line: ChargeLine) -> str:
    """One line as the period digest reads it: every field, tab-separated; text fields
    JSON-quoted (so no value can forge a separator), numbers normalised, times UTC."""
    def q(text: str) -> str:
        return json.dumps(text, ensure_ascii=False)
    return "\t".join((
        q(line.cluster), str(line.job_id_raw), entry_time(line.submit), line.usage_period,
        line.posted_period, q(line.resource), _number(line.quantity), q(line.unit),
        _number(line.rate), _number(line.amount), q(line.currency), q(line.rule),
        q(line.rate_card), q(line.basis), q(line.kind)))


def period_digest(lines: Iterable[ChargeLine]) -> tuple[str, int]:
    """(SHA-256 hex, number of lines) of a period's lines, in any order."""
    texts = sorted(canonical_line(line) for line in lines)
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest(), len(texts)


def closed_period_digests(entries: Iterable[AuditEntry]) -> dict[str, tuple[str, int, int]]:
    """period -> (digest, line count, seq of the close entry) for every period whose
    latest close or reopen entry is a close (``subject`` is the period)."""
    state: dict[str, tuple[str, int, int] | None] = {}
    for entry in entries:
        if entry.action == PERIOD_CLOSE:
            digest, lines = entry.details.get("digest"), entry.details.get("lines")
            if not isinstance(digest, str) or isinstance(lines, bool) or not isinstance(
                    lines, int):
                raise AuditError(f"entry {entry.seq}: a period.close entry needs details "
                                 f"digest (text) and lines (integer)")
            state[entry.subject] = (digest, lines, entry.seq)
        elif entry.action == PERIOD_REOPEN:
            state[entry.subject] = None
    return {period: found for period, found in sorted(state.items()) if found is not None}


def verify_periods(recorded: Mapping[str, tuple[str, int, int]],
                   current: Mapping[str, Iterable[ChargeLine]]) -> Mismatch | None:
    """None when every recorded closed period's lines (``current[period]``, the lines
    posted in it now) still have the digest its close entry recorded; else the first
    period, in order, that does not."""
    for period in sorted(recorded):
        digest, count, seq = recorded[period]
        now, now_count = period_digest(current.get(period, ()))
        if now != digest:
            return Mismatch(f"period {period}",
                            f"its charge lines changed since it was closed (entry {seq}: "
                            f"{count} lines, digest {digest[:12]}; now {now_count} lines, "
                            f"digest {now[:12]})")
    return None
