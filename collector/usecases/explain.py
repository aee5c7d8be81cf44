"""``hpc-billing explain``: why a job cost what it did (``collector.explaining``, which the
API's explain route uses too)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from billing.explain import explain_text
from collector.explaining import explain_records
from collector.runtime import Runtime
from collector.store import jobs as store_jobs
from collector.usecases.documents import FinanceInputError


def explain(runtime: Runtime, job_id: str, cluster: str | None = None) -> list[dict[str, Any]]:
    """The explanation of every stored record that ``job_id`` names (JobIDRaw or JobID),
    of ``cluster`` (default: HPC_BILLING_CLUSTER, when set). FinanceInputError when none
    is stored."""
    job_id = job_id.strip()
    if not job_id:
        raise FinanceInputError("a job id is needed (--job)")
    cluster = cluster or runtime.settings.cluster
    with runtime.database.sessions() as session:
        records = store_jobs.job_records(session, job_id, cluster)
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
