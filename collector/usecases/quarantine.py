"""The quarantine: list records that did not parse, or accept losing some of them."""

from __future__ import annotations

import logging

from collector.runtime import Runtime
from collector.settings import SettingsError
from collector.store import runs as store_runs
from collector.store.runs import QuarantineEntry

log = logging.getLogger("hpc_billing")


def list_quarantine(runtime: Runtime, run_id: int | None, limit: int) -> list[QuarantineEntry]:
    with runtime.database.sessions() as session:
        return store_runs.list_quarantine(session, run_id=run_id, limit=limit)


def accept(runtime: Runtime, run_id: int | None, ids: list[int]) -> int:
    """Accept losing the quarantined records of ``run_id`` / ``ids``: later runs skip the
    same text on purpose. Returns how many were accepted."""
    if run_id is None and not ids:
        raise SettingsError(["quarantine --accept needs --run RUN_ID or --id ID"])
    with runtime.database.sessions() as session:
        count = store_runs.accept_quarantined(session, run_id=run_id, ids=ids)
        session.commit()
    log.warning("accepted the loss of %d quarantined record(s)%s: later runs skip the "
                "same text instead of quarantining it", count,
                f" of run {run_id}" if run_id is not None else "")
    return count
