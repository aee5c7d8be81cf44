"""Why a job cost what it did: ``billing.explain`` over the stored records of a job, their
charge lines and the rate-card versions that priced them (the same for the CLI and the
API)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from billing.explain import explain_job, explain_text
from billing.records import JobRecord
from collector.store import charges as store_charges
from collector.store import finance_reads
from collector.usecases.documents import FinanceInputError, stored_cards

Sessions = Callable[[], Any]


def explain_records(session: Any, records: Iterable[JobRecord]) -> list[dict[str, Any]]:
    """One ``explain_job`` document per record (its lines in statement order, so the lines
    of posted period P are the statement's lines of that job in P)."""
    found = [(job, store_charges.job_charges(session, (job.cluster, job.job_id_raw,
                                                        job.submit)))
             for job in records]
    versions = {line.rate_card for _, lines in found for line in lines}
    cards = {card.version: card for card in stored_cards(session, versions)}
    return [explain_job(job, lines, cards) for job, lines in found]


def explain(sessions: Sessions, *, job_id: str, cluster: str | None = None
            ) -> list[dict[str, Any]]:
    """The explanation of every stored record that ``job_id`` names (JobIDRaw or JobID),
    of ``cluster`` when given. FinanceInputError when none is stored."""
    job_id = job_id.strip()
    if not job_id:
        raise FinanceInputError("a job id is needed (--job)")
    with sessions() as session:
        records = finance_reads.job_records(session, job_id, cluster)
        if not records:
            where = f" of cluster {cluster!r}" if cluster else ""
            raise FinanceInputError(f"no job {job_id!r}{where} is stored")
        return explain_records(session, records)


def explain_lines(docs: Iterable[dict[str, Any]]) -> list[str]:
    """The documents for a terminal, a blank line between records."""
    out: list[str] = []
    for doc in docs:
        if out:
            out.append("")
        out.extend(explain_text(doc))
    return out
