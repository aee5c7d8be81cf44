"""The daemon's scheduled work (``Daemon``): polls and node inventory, on the leader only.

Two APScheduler 3 jobs, each ``max_instances=1`` and ``coalesce=True``, both run at
start: ``poll`` (take or confirm leadership, then ``polling.poll_once``) and ``nodes``
(``scontrol show node`` into a node snapshot). Each has the one catch-all of DESIGN §7.8:
it logs once, updates the health state and lets the scheduler live on. ``stop()`` lets a
running poll finish, then releases the leader lock. Details: docs/design/collection.md.
"""

from __future__ import annotations

import logging
import shutil
import threading
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler

from collector.audit_trail import AuditTrail
from collector.cards import LoadedCard
from collector.health import Health
from collector.polling import behind, poll_once
from collector.run_result import CollectError, RunResult
from collector.settings import Settings
from collector.store.db import Engine, Sessions
from collector.store.leader import LeaderLock

log = logging.getLogger("hpc_billing.scheduler")

# On SIGTERM a running poll gets this long to finish before its Slurm command is killed
# (it then fails and rolls back). Below Docker's default 10 s stop timeout, so the
# process exits cleanly before it would be SIGKILLed.
STOP_GRACE_S = 5.0


class Daemon:
    """The scheduler, the leader lock and the health updates of one ``hpc-billing run``."""

    def __init__(self, settings: Settings, *, engine: Engine, sessions: Sessions,
                 health: Health, card: LoadedCard | None,
                 trail: AuditTrail | None = None) -> None:
        self.settings = settings
        self.sessions = sessions
        self.health = health
        self.card = card
        self.trail = trail
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
        self.scheduler.add_job(self._maintenance_job, "interval", id="maintenance",
                               name="retention and partitions ahead", days=1,
                               next_run_time=now + timedelta(seconds=2))
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
        self.health.poll_finished(RunResult(cluster=self.settings.cluster, outcome="failed",
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
                    result = poll_once(self.sessions, self.settings, self.card, now=now,
                                       trail=self.trail)
                except CollectError as exc:
                    result = exc.result
                {"ok": log.info, "partial": log.warning}.get(result.outcome, log.error)(
                    "%s", result.summary())
                started = False
                self.health.poll_finished(result)
                # Catching up a backlog: the next bounded window at once, not an interval later.
                if not behind(result, now) or self._stopping.is_set() or not self._is_leader():
                    break
                log.info("catching up: the stored windows end at %s, %s behind",
                         f"{result.window.until:%Y-%m-%dT%H:%M:%SZ}",  # type: ignore[union-attr]
                         now.replace(microsecond=0) - result.window.until)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - the one catch-all: log once, keep scheduling
            log.error("poll failed before it could be logged as a run: %s: %s", type(exc).__name__, exc)
            if started:
                self.health.poll_finished(RunResult(cluster=self.settings.cluster,
                                                    outcome="failed",
                                                    error=f"{type(exc).__name__}: {exc}"))

    def _maintenance_job(self) -> None:
        """Daily, on the leader: prune node snapshots and runs past their retention and
        create the coming months' partitions (at start-up too)."""
        if self._stopping.is_set() or not self.leader.held:
            return
        try:
            from collector.store.retention import maintain

            done = maintain(self.sessions, now=datetime.now(UTC),
                            node_retention_s=self.settings.node_retention_s,
                            run_retention_s=self.settings.run_retention_s)
            log.info("maintenance: pruned %d node snapshot rows and %d runs, %d partitions"
                     " created ahead", done.node_snapshots, done.runs, done.partitions_created)
        except Exception as exc:  # noqa: BLE001 - the one catch-all: log once, keep scheduling
            log.warning("maintenance failed: %s: %s", type(exc).__name__, exc)

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

            cluster = self.settings.cluster
            if cluster is None:     # a file import has no cluster to take an inventory of
                return
            nodes = read_nodes(self.settings.scontrol,
                               timeout_s=min(self.settings.sacct_timeout_s, 60), cluster=cluster)
            with self.sessions() as session:
                store_snapshot(session, cluster, datetime.now(UTC), nodes)
                session.commit()
            self.health.node_snapshot_taken()
            log.debug("node inventory: %d nodes", len(nodes))
        except Exception as exc:  # noqa: BLE001 - the one catch-all: log once, keep scheduling
            log.warning("node inventory failed: %s: %s", type(exc).__name__, exc)
