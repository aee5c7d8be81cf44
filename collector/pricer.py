"""Pricing inside a write: ``Pricer`` prices jobs with one card version and writes their lines.

Closed periods are respected: lines whose usage falls in a closed period become
corrections posted in the first open period after it (``billing.price.plan_lines``).
``make_pricer`` registers the card version first. The pricing itself is pure
(``billing.price``); this module is its glue with the charge store.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from billing.price import PRICED, plan_lines, price_job_outcome
from billing.rates import RateCard
from billing.records import ChargeLine, JobRecord
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

    def __init__(self, card: RateCard, rate_card_id: int, *, as_of: datetime) -> None:
        self.card = card
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
        else:
            lines = [line for key in keys for line in desired[key]]
        counts = store_charges.replace_charges(session, keys, lines, run_id=run_id,
                                               rate_card_ids={self.card.version: self.rate_card_id},
                                               new_jobs=new_jobs)
        self.jobs_priced += len(records)
        self.outcomes.update(outcomes)
        self.lines_written += counts.inserted
        self.lines_deleted += counts.deleted


def make_pricer(session_factory: Sessions, card: RateCard, text: str, *, source: str,
                as_of: datetime) -> Pricer:
    """Register the card version (idempotent, own transaction) and return a Pricer."""
    with session_factory() as session:
        card_id = store_rate_cards.ensure_rate_card(session, version=card.version,
                                                    currency=card.currency, text=text,
                                                    source=source)
        session.commit()
    return Pricer(card, card_id, as_of=as_of)

