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

from collector.run_result import RunResult


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
    own ``running`` flag, or a test's stand-in). ``listeners`` get every RunResult; the
    metrics module registers one to count polls.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._snap = HealthSnapshot(started_at=clock(), scheduler_alive=False, leader=False,
                                    leadership_known=False)
        self._scheduler_alive: Callable[[], bool] = lambda: False
        self._listeners: list[Callable[[RunResult], None]] = []

    def now(self) -> float:
        return self._clock()

    def bind_scheduler(self, alive: Callable[[], bool]) -> None:
        with self._lock:
            self._scheduler_alive = alive

    def add_listener(self, listener: Callable[[RunResult], None]) -> None:
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

    def poll_finished(self, report: RunResult) -> None:
        with self._lock:
            snap = self._snap
            last_success = dict(snap.last_success)
            last_window_end = dict(snap.last_window_end)
            last_error = dict(snap.last_error)
            cluster = report.cluster_label
            if report.outcome == "ok":
                last_success[cluster] = self._clock()
                if report.window_until_epoch is not None:
                    last_window_end[cluster] = report.window_until_epoch
                last_error.pop(cluster, None)
            else:
                last_error[cluster] = report.error or report.outcome
            self._snap = replace(snap, polls_running=max(0, snap.polls_running - 1),
                                 last_success=last_success, last_window_end=last_window_end,
                                 last_error=last_error)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(report)

    def node_snapshot_taken(self) -> None:
        with self._lock:
            self._snap = replace(self._snap, last_node_snapshot=self._clock())
