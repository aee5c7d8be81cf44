"""The daemon's in-process health state: what the scheduler did, for the probes and metrics.

This module owns one small, thread-safe object (``Health``) that the scheduler's jobs write
(poll started/finished, node inventory, leadership) and the web app reads (``/healthz``,
``/readyz``, ``/metrics``). It holds no database handle and does no I/O, so ``/healthz`` can
answer from it alone. Poll outcomes are also counted here so the metrics module can export
them without importing the pipeline (DESIGN §2: web never imports pipeline or scheduler).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace


@dataclass(frozen=True, slots=True)
class PollReport:
    """What one finished poll reports (a plain copy of the pipeline's RunResult numbers)."""

    cluster: str
    outcome: str                 # "ok" | "partial" | "failed" (pipeline's outcomes)
    duration_s: float
    source_s: float              # time spent in the source (sacct, slurmrestd ...)
    records_read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    jobs_priced: int = 0
    charge_lines: int = 0
    window_until_epoch: float | None = None   # end of the stored window (ok polls)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    started_at: float                         # epoch seconds
    scheduler_alive: bool
    leader: bool
    leadership_known: bool                    # False until the first election attempt
    last_success: dict[str, float] = field(default_factory=dict)     # cluster -> epoch
    last_window_end: dict[str, float] = field(default_factory=dict)  # cluster -> epoch
    last_error: dict[str, str] = field(default_factory=dict)         # cluster -> text
    polls_running: int = 0
    last_node_snapshot: float | None = None


class Health:
    """Thread-safe health state shared by the scheduler (writer) and web app (reader).

    ``scheduler_alive`` is a callable so the answer is always current (the scheduler's
    own ``running`` flag, or a test's stand-in). ``listeners`` get every PollReport; the
    metrics module registers one to count polls.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._snap = HealthSnapshot(started_at=clock(), scheduler_alive=False, leader=False,
                                    leadership_known=False)
        self._scheduler_alive: Callable[[], bool] = lambda: False
        self._listeners: list[Callable[[PollReport], None]] = []

    def now(self) -> float:
        return self._clock()

    def bind_scheduler(self, alive: Callable[[], bool]) -> None:
        with self._lock:
            self._scheduler_alive = alive

    def add_listener(self, listener: Callable[[PollReport], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def snapshot(self) -> HealthSnapshot:
        with self._lock:
            alive = self._scheduler_alive
            snap = self._snap
        try:
            is_alive = bool(alive())
        except Exception:  # noqa: BLE001 - a probe must answer, never raise
            is_alive = False
        return replace(snap, scheduler_alive=is_alive, last_success=dict(snap.last_success),
                       last_window_end=dict(snap.last_window_end), last_error=dict(snap.last_error))

    def set_leader(self, leader: bool) -> None:
        with self._lock:
            self._snap = replace(self._snap, leader=leader, leadership_known=True)

    def poll_started(self) -> None:
        with self._lock:
            self._snap = replace(self._snap, polls_running=self._snap.polls_running + 1)

    def poll_finished(self, report: PollReport) -> None:
        with self._lock:
            snap = self._snap
            last_success = dict(snap.last_success)
            last_window_end = dict(snap.last_window_end)
            last_error = dict(snap.last_error)
            if report.outcome == "ok":
                last_success[report.cluster] = self._clock()
                if report.window_until_epoch is not None:
                    last_window_end[report.cluster] = report.window_until_epoch
                last_error.pop(report.cluster, None)
            else:
                last_error[report.cluster] = report.error or report.outcome
            self._snap = replace(snap, polls_running=max(0, snap.polls_running - 1),
                                 last_success=last_success, last_window_end=last_window_end,
                                 last_error=last_error)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(report)

    def node_snapshot_taken(self) -> None:
        with self._lock:
            self._snap = replace(self._snap, last_node_snapshot=self._clock())
