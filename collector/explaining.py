"""Why stored jobs cost what they did: ``billing.explain`` over the records, their charge
lines and the stored rate-card versions that priced them. One path for the CLI's
``explain`` (usecases.explain) and the API's ``/jobs/<cluster>/<id>/explain``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from billing.explain import explain_job
from billing.rates import RateCard, RateCardError, load_rate_card
from billing.records import JobRecord
from collector.store import charges as store_charges
from collector.store import rate_cards as store_rate_cards
from collector.store.db import Session


def stored_cards(session: Session, versions: Iterable[str]) -> list[RateCard]:
    """The stored rate cards of these versions that still load, oldest loaded first (a
    card this version cannot read any more is left out: its lines say so)."""
    out = []
    for _version, text in store_rate_cards.card_texts(session, versions):
        try:
            out.append(load_rate_card(text))
        except RateCardError:
            continue
    return out


def explain_records(session: Session, records: Iterable[JobRecord]) -> list[dict[str, Any]]:
    """One ``explain_job`` document per record (its lines in statement order, so the lines
    of posted period P are the statement's lines of that job in P)."""
    found = [(job, store_charges.job_charges(session, (job.cluster, job.job_id_raw,
                                                        job.submit)))
             for job in records]
    versions = {line.rate_card for _, lines in found for line in lines}
    cards = {card.version: card for card in stored_cards(session, versions)}
    return [explain_job(job, lines, cards) for job, lines in found]
