"""Pricing inside a write: ``Pricer`` prices jobs with one card version and writes their lines.

Closed periods are respected: lines whose usage falls in a closed period become
corrections posted in the first open period after it (``billing.price.plan_lines``).
``make_pricer`` registers the card version first. The pricing itself is pure
(``billing.price``); this module is its glue with the charge store.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from billing.audit import CARD_LOADED, CORRECTION
from billing.price import PRICED, money_text, plan_lines, price_job_outcome
from billing.rates import RateCard
from billing.records import ChargeLine, JobRecord
from collector.audit_trail import AuditTrail
from collector.store import charges as store_charges
from collector.store import periods as store_periods
from collector.store import rate_cards as store_rate_cards
from collector.store.db import Session, Sessions

JobKey = tuple[str, int, datetime]


def next_period(period: str) -> str:
    """The billing period after ``period`` ("2026-12" -> "2027-01"; months only)."""
    year, month = int(period[:4]), int(period[5:7])
    return f"{year + month // 12:04d}-{month % 12 + 1:02d}"


class Pricer:
    """Prices jobs with one rate-card version and writes their lines (never commits).

    Closed periods are respected: lines whose usage falls in a closed period become
    corrections posted in the first open period after it (billing.price.plan_lines), so
    nothing stored in a closed period ever changes.
    """

    def __init__(self, card: RateCard, rate_card_id: int, *, as_of: datetime,
                 trail: AuditTrail | None = None) -> None:
        self.card = card
        self.trail = trail
        self.rate_card_id = rate_card_id
        self.as_of = as_of
        self.jobs_priced = 0
        self.lines_written = 0
        self.lines_deleted = 0
        # Jobs priced, by billing.price outcome ("priced", "no matching rule" ...).
        self.outcomes: Counter[str] = Counter()
        self._closed: frozenset[str] = frozenset()
        # key -> (record, (outcome, its lines)), priced ahead by the reading thread
        self._prepared: dict[JobKey, tuple[JobRecord, tuple[str, list[ChargeLine]]]] = {}
        # Corrections this pricer posted that were not stored before (for the audit trail).
        self.new_corrections: list[ChargeLine] = []

    @property
    def unpriced(self) -> dict[str, int]:
        """Jobs priced in this run that got no line (or not for every period), by why."""
        return {reason: n for reason, n in sorted(self.outcomes.items()) if reason != PRICED}

    def prepare(self, rec: JobRecord) -> tuple[str, list[ChargeLine]] | None:
        """``price_job_outcome`` for ``rec``, for ``remember``; None when it fails
        (``price`` then prices the job again and raises). Pure: any thread."""
        try:
            return price_job_outcome(self.card, rec, as_of=self.as_of)
        except Exception:  # noqa: BLE001 - priced again, and the failure raised, by price()
            return None

    def remember(self, rec: JobRecord, priced: tuple[str, list[ChargeLine]] | None) -> None:
        """Keep ``prepare``'s answer for ``rec`` until ``price`` asks for it."""
        if priced is not None:
            self._prepared[(rec.cluster, rec.job_id_raw, rec.submit)] = (rec, priced)

    def forget_prepared(self) -> None:
        """Drop what ``price`` did not use (jobs the writer found unchanged)."""
        self._prepared.clear()

    def _first_open_after(self, period: str) -> str:
        candidate = next_period(period)
        while candidate in self._closed:
            candidate = next_period(candidate)
        return candidate

    def price(self, session: Session, records: list[JobRecord], *, run_id: int,
              new_jobs: bool = False) -> None:
        """Price ``records`` and make their open-period lines match. ``new_jobs``: the
        jobs were inserted in this transaction, so they have no lines to compare with."""
        # Read the closed periods in this transaction, under the lock close_period waits
        # for: a period closed by another process is respected from the next batch on,
        # and cannot close under a batch being written.
        self._closed = store_periods.closed_periods(session, lock=True)
        keys: list[JobKey] = [(r.cluster, r.job_id_raw, r.submit) for r in records]
        desired: dict[JobKey, list[ChargeLine]] = {}
        prepared = self._prepared
        outcomes: Counter[str] = Counter()
        for rec in records:
            key = (rec.cluster, rec.job_id_raw, rec.submit)
            hit = prepared.pop(key, None)
            # Prepared lines serve only the very record the writer stored (the same
            # object, or an equal one: not when storing rounded its cpu_used_s).
            if hit is not None and (hit[0] is rec or hit[0] == rec):
                outcome, desired[key] = hit[1]
            else:
                outcome, desired[key] = price_job_outcome(self.card, rec, as_of=self.as_of)
            outcomes[outcome] += 1
        if self._closed:
            frozen = store_charges.frozen_lines(session, keys)
            lines = [line for key in keys for line in plan_lines(
                desired[key], frozen.get(key, []), closed=self._closed,
                first_open_after=self._first_open_after)]
            if self.trail is not None and self.trail.on:
                self._note_new_corrections(session, lines)
        else:
            lines = [line for key in keys for line in desired[key]]
        counts = store_charges.replace_charges(session, keys, lines, run_id=run_id,
                                               rate_card_ids={self.card.version: self.rate_card_id},
                                               new_jobs=new_jobs)
        self.jobs_priced += len(records)
        self.outcomes.update(outcomes)
        self.lines_written += counts.inserted
        self.lines_deleted += counts.deleted


    def _note_new_corrections(self, session: Session, lines: list[ChargeLine]) -> None:
        """Remember the planned corrections that are not stored yet (a re-poll plans
        the same corrections again; only new or changed ones are news)."""
        planned = [line for line in lines if line.kind == "correction"]
        if not planned:
            return
        stored = store_charges.open_corrections(session, {line.job_key for line in planned})
        for key in {line.job_key for line in planned}:
            before = [_comparable(x) for x in stored.get(key, [])]
            for line in (x for x in planned if x.job_key == key):
                found = _comparable(line)
                if found in before:
                    before.remove(found)
                else:
                    self.new_corrections.append(line)

    def record(self, session: Session, *, run_id: int, kind: str) -> None:
        """Append a ``correction`` audit entry for the new corrections priced since the
        last call (none: nothing), in the caller's transaction, last before its commit."""
        if not self.new_corrections or self.trail is None:
            return
        lines, self.new_corrections = self.new_corrections, []
        amounts: dict[str, Decimal] = {}
        for line in lines:
            amounts[line.currency] = amounts.get(line.currency, Decimal(0)) + line.amount
        self.trail.record(session, CORRECTION, f"run {run_id}", {
            "run_id": run_id, "kind": kind, "lines": len(lines),
            "jobs": len({line.job_key for line in lines}),
            "usage_periods": sorted({line.usage_period for line in lines}),
            "posted_periods": sorted({line.posted_period for line in lines}),
            "amounts": {c: money_text(a) for c, a in sorted(amounts.items())},
            "rate_card": self.card.version})


def _comparable(line: ChargeLine) -> tuple[object, ...]:
    """A line as stored (quantities at 6 decimals, numbers by value) for comparison."""
    quantity = line.quantity.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)
    return (line.usage_period, line.posted_period, line.resource, quantity, line.unit,
            line.rate, line.amount, line.currency, line.rule, line.rate_card, line.basis,
            line.kind)


def make_pricer(session_factory: Sessions, card: RateCard, text: str, *, source: str,
                as_of: datetime, trail: AuditTrail | None = None) -> Pricer:
    """Register the card version (idempotent, own transaction) and return a Pricer.
    A version stored for the first time is recorded in the audit trail (``card.load``)."""
    with session_factory() as session:
        new = not store_rate_cards.card_stored(session, card.version)
        card_id = store_rate_cards.ensure_rate_card(session, version=card.version,
                                                    currency=card.currency, text=text,
                                                    source=source)
        if new and trail is not None:
            trail.record(session, CARD_LOADED, card.version, {
                "version": card.version, "currency": card.currency, "source": source,
                "rules": len(card.rules), "scale": card.scale, "timezone": card.timezone})
        session.commit()
    return Pricer(card, card_id, as_of=as_of, trail=trail)

