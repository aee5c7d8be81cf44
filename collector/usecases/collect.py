"""Collecting: ``migrate``, one poll until caught up (``collect_once``), or polls until stopped."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from collector.polling import behind, poll_once
from collector.run_result import CollectError, RunResult
from collector.runtime import Runtime

log = logging.getLogger("hpc_billing")


def migrate(runtime: Runtime) -> str | None:
    """Upgrade the schema to the newest revision; returns the revision it is at."""
    return runtime.connect().migrate()


def collect_once(runtime: Runtime) -> RunResult:
    """One poll; when it stored a bounded catch-up window that ends before now (a backlog
    after an outage, see polling.poll_window), the next windows follow until caught up.

    Returns the last run (``ok`` or ``partial``: a partial one stops the catch-up);
    raises CollectError (logged) when a window stored nothing.
    """
    settings = runtime.settings
    settings.check_for_collect()
    card = runtime.pricing_card()
    database = runtime.database
    while True:
        now = datetime.now(UTC)
        try:
            result = poll_once(database.sessions, settings, card, now=now, trail=runtime.audit)
        except CollectError as exc:
            log.error("%s", exc.result.summary())
            raise
        if result.outcome == "partial":
            log.warning("%s", result.summary())
            return result
        log.info("%s", result.summary())
        if not behind(result, now):
            return result


def collect_until_stopped(runtime: Runtime, stop: threading.Event) -> None:
    """``collect_once`` every HPC_BILLING_POLL_INTERVAL until ``stop`` is set (a window
    being stored is finished first). A failed window is logged and the next one follows."""
    settings = runtime.settings
    settings.check_for_collect()
    runtime.pricing_card()
    runtime.database  # noqa: B018 - open it (and check the schema) before the first poll
    log.info("polling every %ss (source %s, cluster %s)", settings.poll_interval_s,
             settings.source, settings.cluster)
    while not stop.is_set():
        try:
            collect_once(runtime)
        except CollectError:
            pass          # logged; the next poll repeats the window
        stop.wait(settings.poll_interval_s)
