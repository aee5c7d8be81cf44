"""What one collection run did: ``RunResult`` (counts, outcome, the summary line).

The one result type of a run: the pipeline returns it (or raises ``CollectError``
carrying it), the run log stores the same numbers, and the health state and the metrics
consume it (the scheduler hands each finished poll to ``Health.poll_finished``).
Outcomes: ``ok``, ``partial``, ``failed`` (README, "Outcome of a run").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from billing.records import Window

OUTCOMES = ("ok", "partial", "failed")


@dataclass(frozen=True, slots=True)
class RunResult:
    """One run's outcome and counts. ``run_id`` is None for a poll that failed before it
    could be logged as a run (no database to elect a leader with)."""

    cluster: str | None
    outcome: str                      # "ok" | "partial" | "failed"
    run_id: int | None = None
    source: str = ""
    kind: str = "poll"
    window: Window | None = None
    records_read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    lines_read: int = 0
    duration_s: float = 0.0
    error: str | None = None
    clusters_seen: frozenset[str] = field(default_factory=frozenset)
    jobs_priced: int = 0
    charge_lines: int = 0
    source_s: float = 0.0             # time spent inside the source (sacct, slurmrestd ...)
    duplicates: int = 0               # job records met again in the run (stored once)
    accepted: int = 0                 # quarantined texts an operator accepted, skipped
    ignored_columns: tuple[str, ...] = ()
    unknown_states: tuple[tuple[str, int], ...] = ()   # (state, jobs), not final
    unpriced: tuple[tuple[str, int], ...] = ()         # (pricing outcome, jobs)
    watermark_moved: bool = False     # this run set its stream's watermark (ok windows)

    @property
    def cluster_label(self) -> str:
        """The cluster as health and metrics name it ("(file)" for a file import)."""
        return self.cluster or "(file)"

    @property
    def unknown_state_jobs(self) -> int:
        return sum(count for _, count in self.unknown_states)

    @property
    def unpriced_jobs(self) -> int:
        return sum(count for _, count in self.unpriced)

    @property
    def window_until_epoch(self) -> float | None:
        return self.window.until.timestamp() if self.window is not None else None

    def summary(self) -> str:
        span = (f"[{self.window.since:%Y-%m-%dT%H:%M:%SZ}, {self.window.until:%Y-%m-%dT%H:%M:%SZ})"
                if self.window else "whole file")
        unpriced = f"unpriced {self.unpriced_jobs}"
        if self.unpriced:
            unpriced += " (" + ", ".join(f"{reason} {n}" for reason, n in self.unpriced) + ")"
        text = (f"run {self.run_id} {self.kind} {self.source} {span}: {self.outcome}; "
                f"read {self.records_read} jobs from {self.lines_read} lines, "
                f"inserted {self.inserted}, updated {self.updated}, unchanged {self.unchanged}, "
                f"duplicates {self.duplicates}, quarantined {self.quarantined}"
                + (f", accepted {self.accepted}" if self.accepted else "")
                + f", priced {self.jobs_priced} ({self.charge_lines} charge lines), {unpriced}, "
                f"ignored columns {len(self.ignored_columns)}, "
                f"unknown states {self.unknown_state_jobs} in {self.duration_s:.2f}s")
        if self.error:
            text += f"; error: {self.error}"
        return text


class CollectError(Exception):
    """A window could not be stored; the run log has the details and nothing was written."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        super().__init__(result.error or "collection failed")
