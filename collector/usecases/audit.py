"""The audit trail in use: verifying the chain and the closed periods, listing entries.

The chain and digests are ``billing.audit``'s, the table ``collector.store.audit``'s, the
key the runtime's (``collector.audit_trail``). Closing and reopening a period, which
record the period's digest, are in ``usecases.periods``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from billing.audit import (
    PERIOD_CLOSE,
    PERIOD_REOPEN,
    AuditError,
    Mismatch,
    closed_period_digests,
    entry_time,
    period_digest,
    verify_chain,
)
from billing.records import AuditEntry
from collector.runtime import Runtime
from collector.store import audit as store_audit
from collector.store import periods as store_periods
from collector.store import reports as store_reports

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


def read_anchor(path: str | None, seq: int | None, digest: str | None) -> Anchor | None:
    """The anchor a verify checks: ``seq``/``digest`` as given (--expect-seq,
    --expect-hash), else the one in the file ``path`` (a missing file: none yet, the
    first verify writes it). AuditError for an unreadable or malformed anchor."""
    if seq is not None:
        text = f"{seq} {digest}" if digest else str(seq)
        return Anchor.parse(text, "--expect-seq/--expect-hash")
    if digest is not None:
        raise AuditError("--expect-hash needs --expect-seq")
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditError(f"--anchor: cannot read {path}: {exc.strerror or exc}") from None
    return Anchor.parse(text, f"anchor file {path}")


def write_anchor(path: str, head: AuditEntry | None) -> None:
    """Write the head as the anchor a later verify checks (atomically)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(anchor_text(head), encoding="utf-8")
    os.replace(tmp, target)


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


def verify(runtime: Runtime, *, anchor: Anchor | None = None) -> VerifyReport:
    """Recompute the chain and each closed period's digest in one consistent snapshot.

    The first mismatch is named: an entry (edited, inserted, removed, reordered, another
    key; or, with ``anchor``, the tail cut back past it), else a period (its lines
    changed since its ``period.close`` entry, or it is no longer closed although no
    ``period.reopen`` entry says so). Without an anchor, removing the newest entries
    leaves a shorter chain that verifies: compare ``head`` with an earlier run's.
    """
    key = runtime.audit.require("audit verify")
    with runtime.database.sessions() as session:
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
        closed = store_periods.closed_periods(session)
        checked: list[str] = []
        for period in sorted(recorded):
            digest, count, seq = recorded[period]
            if period not in closed:
                return VerifyReport(Mismatch(
                    f"period {period}",
                    f"entry {seq} closed it, it is open now, and no period.reopen entry "
                    f"says so (its billing_periods row was deleted)"),
                    counted[0], head, tuple(checked))
            now, now_count = period_digest(store_reports.period_lines(session, period))
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

def list_entries(runtime: Runtime, *, action: str | None = None, subject: str | None = None,
                 limit: int | None = 100, after_seq: int = 0,
                 newest_first: bool = True) -> list[AuditEntry]:
    """Entries, newest first by default (``limit`` None: all). Reading needs no key."""
    with runtime.database.sessions() as session:
        return list(store_audit.entries(session, after_seq=after_seq, action=action,
                                        subject=subject, limit=limit,
                                        newest_first=newest_first))


def entry_to_dict(entry: AuditEntry) -> dict[str, Any]:
    """An entry as JSON-ready values (``at`` exactly as the chain hashes it)."""
    return {"seq": entry.seq, "at": entry_time(entry.at), "actor": entry.actor,
            "action": entry.action, "subject": entry.subject, "details": entry.details,
            "prev": entry.prev, "hash": entry.hash}


__all__ = ["Anchor", "AuditError", "VerifyReport", "anchor_text", "entry_to_dict",
           "list_entries", "read_anchor", "verify", "write_anchor"]
