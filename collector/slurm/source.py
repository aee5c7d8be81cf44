"""The protocol every accounting source implements (``Source``), and the errors sources raise.

A source turns a window (or a whole file) into a stream of parsed items: JobRecord for
job lines (usage not yet rolled up), StepUsage for step lines, QuarantinedRecord for
input that does not parse. The pipeline rolls steps into jobs (billing.rollup), so
every source, text or JSON, feeds the same path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from billing.records import FetchStats, JobRecord, QuarantinedRecord, StepUsage, Window

Item = JobRecord | StepUsage | QuarantinedRecord


class SourceError(Exception):
    """A source cannot deliver the window at all (bad file, missing column, bad response)."""


class SlurmCommandError(SourceError):
    """A Slurm command failed: carries the argv, exit code and stderr for the log."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str,
                 message: str | None = None) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.message = message or f"exited with code {returncode}"
        super().__init__(str(self))

    def __str__(self) -> str:
        tail = self.stderr.strip()
        if len(tail) > 2000:
            tail = "..." + tail[-2000:]
        return f"{self.argv[0]}: {self.message} (argv={self.argv!r}; stderr={tail!r})"


class SlurmTimeout(SlurmCommandError):
    """A Slurm command ran past its timeout and was killed (with its children)."""


class UnchangedLookup(Protocol):
    """What a source that skips unchanged jobs asks the store (``fetch(unchanged=...)``):
    the store's ``job_writer.UnchangedJobs`` implements it."""

    def stored(self, keys: list[tuple[str, int, str]]) -> set[str]:
        """Of these (cluster, job_id_raw, raw_digest), the digests already stored."""

    def skipped(self, cluster: str) -> None:
        """One job of ``cluster`` was skipped: stored from exactly these lines."""


class Source(Protocol):
    """One accounting source.

    ``name`` is what the run log and metrics call it. ``windowed`` says whether fetch()
    honours the window (sacct, slurmrestd, pyslurm) or returns everything it has (a file
    import, which therefore never moves a watermark). ``skips_unchanged`` says whether
    ``fetch`` uses ``unchanged``: jobs whose raw lines are exactly those they were stored
    from are then skipped before parsing (text sources); the others ignore it.
    ``fetch`` may raise SourceError (or a subclass) at any point of the iteration; the
    caller then rolls the window back. ``stats`` is valid after the iterator is exhausted.
    """

    name: str
    windowed: bool
    skips_unchanged: bool

    def fetch(self, window: Window | None, *,
              unchanged: UnchangedLookup | None = None) -> Iterator[Item]: ...

    @property
    def stats(self) -> FetchStats: ...
