"""The daemon's scheduled work: polls and node inventory, only on the leader.

This module owns ``poll_once`` (one poll, as ``collect --once`` and the daemon both run it)
and ``Daemon``: an APScheduler 3 BackgroundScheduler with two jobs, each with
``max_instances=1`` (a slow poll is never overlapped by the next) and ``coalesce=True``
(missed runs collapse into one), both first run at start:

- ``poll`` every HPC_BILLING_POLL_INTERVAL: take or confirm leadership (a PostgreSQL
  advisory lock, collector.store.leader), then collect one window, price it, log one line.
- ``nodes`` every HPC_BILLING_NODE_INTERVAL: on the leader, ``scontrol show node`` into a
  node snapshot (capacity and allocation, for utilisation and metrics).

Each job has the one catch-all of DESIGN §7.8: it logs once, updates the health state
(which feeds the probes and metrics) and lets the scheduler live on. ``stop()`` lets a
running poll finish (its transaction commits or rolls back as a whole), then releases the
lock so the other collector takes over at once.
"""

from __future__ import annotations

import logging
import shutil
import threading
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler

from billing.rates import RateCard
from collector import pipeline
from collector.health import Health, PollReport
from collector.settings import Settings
from collector.store.leader import LeaderLock

log = logging.getLogger("hpc_billing.scheduler")

# On SIGTERM a running poll gets this long to finish before its Slurm command is killed
# (it then fails and rolls back). Below Docker's default 10 s stop timeout, so the
# process exits cleanly before it would be SIGKILLed.
STOP_GRACE_S = 5.0


def poll_once(sessions, settings: Settings, card_and_text: tuple[RateCard, str] | None, *,
              now: datetime | None = None) -> pipeline.RunResult:
    """One poll with the configured source: a window (or the whole file), priced.

    Raises pipeline.CollectError (carrying the failed RunResult) when nothing of the
    window was stored; no watermark moved. A partial window (some records quarantined,
    the rest stored) returns its RunResult with outcome 'partial' and moves no watermark.
    """
    from collector.sources import make_source

    now = now or datetime.now(UTC)
    source = make_source(settings)
    if source.windowed:
        window = pipeline.poll_window(sessions, cluster=settings.cluster, now=now,  # type: ignore[arg-type]
                                      overlap_s=settings.overlap_s, lookback_s=settings.lookback_s,
                                      max_ahead_s=settings.backfill_chunk_s)
        kind, stream = "poll", pipeline.POLL_STREAM
    else:
        window, kind, stream = None, "file", None
    pricer = None
    if card_and_text is not None:
        card, text = card_and_text
        pricer = pipeline.make_pricer(sessions, card, text, source=str(settings.rates),
                                      as_of=now.replace(microsecond=0))
    return pipeline.collect(sessions, source, cluster=settings.cluster, window=window, kind=kind,
                            stream=stream, batch_rows=settings.batch_rows, pricer=pricer,
                            skip_unchanged=settings.skip_unchanged)


def behind(result: pipeline.RunResult, now: datetime) -> bool:
    """True when an ok poll stored a window that ends before ``now``: a backlog (after an
    outage) is being caught up in bounded windows, and the next one should follow at once.
    Never after a partial or failed poll: its watermark did not move, and the next poll
    repeats the window at the usual interval."""
    return (result.outcome == "ok" and result.window is not None
            and result.window.until < pipeline.floor_second(now.astimezone(UTC)))


def _report(result: pipeline.RunResult, cluster: str) -> PollReport:
    return PollReport(
        cluster=cluster, outcome=result.outcome, duration_s=result.duration_s,
        source_s=result.source_s, records_read=result.records_read, inserted=result.inserted,
        updated=result.updated, unchanged=result.unchanged, quarantined=result.quarantined,
        jobs_priced=result.jobs_priced, charge_lines=result.charge_lines,
        window_until_epoch=result.window.until.timestamp() if result.window else None,
        error=result.error)


class Daemon:
    """The scheduler, the leader lock and the health updates of one ``hpc-billing run``."""

    def __init__(self, settings: Settings, *, engine, sessions, health: Health,
                 card_and_text: tuple[RateCard, str] | None) -> None:
        self.settings = settings
        self.sessions = sessions
        self.health = health
        self.card_and_text = card_and_text
        self.cluster = settings.cluster or "(file)"
        self.leader = LeaderLock(engine, settings.cluster)
        self._stopping = threading.Event()
        self._idle = threading.Event()       # set while no poll runs
        self._idle.set()
        self._was_leader: bool | None = None
        self._nodes_disabled_logged = False
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None})

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        now = datetime.now(UTC)
        self.scheduler.add_job(self._poll_job, "interval", id="poll", name="poll",
                               seconds=self.settings.poll_interval_s, next_run_time=now)
        self.scheduler.add_job(self._nodes_job, "interval", id="nodes", name="node inventory",
                               seconds=self.settings.node_interval_s,
                               next_run_time=now + timedelta(seconds=1))
        self.health.bind_scheduler(lambda: self.scheduler.running and not self._stopping.is_set())
        self.scheduler.start()
        log.info("scheduler started: poll every %ss, node inventory every %ss (source %s, cluster %s)",
                 self.settings.poll_interval_s, self.settings.node_interval_s,
                 self.settings.source, self.settings.cluster)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Let a running poll finish (for at most ``grace_s``; after that its Slurm command
        is killed, so the poll fails and rolls back), stop the scheduler, give up
        leadership."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if not self._idle.is_set():
            log.info("stopping: waiting up to %ss for the running poll to finish", grace_s)
            if not self._idle.wait(grace_s):
                from collector.slurm.command import cancel_running

                cancelled = cancel_running()
                log.warning("stopping: the poll is still running after %ss; cancelled %d "
                            "Slurm command(s), the poll rolls back and the next run "
                            "repeats its window", grace_s, cancelled)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.leader.release()
        self.health.set_leader(False)
        log.info("scheduler stopped")

    # ------------------------------------------------------------------ jobs

    def _is_leader(self) -> bool:
        leader = self.leader.ensure()
        self.health.set_leader(leader)
        if leader != self._was_leader and self.leader.error is None:
            if not leader:
                log.info("not the leader: another collector polls cluster %s; serving the API only",
                         self.settings.cluster)
            self._was_leader = leader
        return leader

    def _election_failed(self, error: str) -> None:
        """No database to elect a leader with: that poll failed (logged and counted), it
        was not skipped for another collector. The watermark stays where it was."""
        self._was_leader = None
        log.error("poll failed: the database is unreachable (leader election): %s", error)
        self.health.poll_started()
        self.health.poll_finished(PollReport(cluster=self.cluster, outcome="failed",
                                             duration_s=0.0, source_s=0.0,
                                             error=f"leader election: {error}"))

    def _poll_job(self) -> None:
        if self._stopping.is_set():
            return
        self._idle.clear()
        try:
            self._poll_job_body()
        finally:
            self._idle.set()

    def _poll_job_body(self) -> None:
        if self._stopping.is_set():
            return
        started = False
        try:
            if not self._is_leader():
                if self.leader.error is not None:
                    self._election_failed(self.leader.error)
                return
            while True:
                self.health.poll_started()
                started = True
                now = datetime.now(UTC)
                try:
                    result = poll_once(self.sessions, self.settings, self.card_and_text, now=now)
                except pipeline.CollectError as exc:
                    result = exc.result
                {"ok": log.info, "partial": log.warning}.get(result.outcome, log.error)(
                    "%s", result.summary())
                started = False
                self.health.poll_finished(_report(result, self.cluster))
                # Catching up a backlog: the next bounded window at once, not an interval later.
                if not behind(result, now) or self._stopping.is_set() or not self._is_leader():
                    break
                log.info("catching up: the stored windows end at %s, %s behind",
                         f"{result.window.until:%Y-%m-%dT%H:%M:%SZ}",  # type: ignore[union-attr]
                         now.replace(microsecond=0) - result.window.until)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - the one catch-all: log once, keep scheduling
            log.error("poll failed before it could be logged as a run: %s: %s", type(exc).__name__, exc)
            if started:
                self.health.poll_finished(PollReport(cluster=self.cluster, outcome="failed",
                                                     duration_s=0.0, source_s=0.0,
                                                     error=f"{type(exc).__name__}: {exc}"))

    def _nodes_job(self) -> None:
        if self._stopping.is_set() or self.settings.source == "file":
            return
        if shutil.which(self.settings.scontrol) is None:
            if not self._nodes_disabled_logged:
                log.info("node inventory disabled: %r is not an executable (HPC_BILLING_SCONTROL)",
                         self.settings.scontrol)
                self._nodes_disabled_logged = True
            return
        try:
            if not self.leader.held:
                return
            from collector.slurm.nodes import read_nodes
            from collector.store.nodes import store_snapshot

            nodes = read_nodes(self.settings.scontrol, timeout_s=min(self.settings.sacct_timeout_s, 60),
                               cluster=self.settings.cluster)
            with self.sessions() as session:
                store_snapshot(session, self.settings.cluster, datetime.now(UTC), nodes)
                session.commit()
            self.health.node_snapshot_taken()
            log.debug("node inventory: %d nodes", len(nodes))
        except Exception as exc:  # noqa: BLE001 - the one catch-all: log once, keep scheduling
            log.warning("node inventory failed: %s: %s", type(exc).__name__, exc)
