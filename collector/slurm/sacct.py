"""The sacct source: the command line we run for one window, and ``SacctSource``.

``sacct_argv`` builds the exact invocation (never ``--state``); ``SacctSource`` runs it
through ``slurm_command`` and reads the output with ``collector.slurm.parse``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

from billing.records import FetchStats, QuarantinedRecord, Window
from collector.slurm.columnar import Chunk, ColumnarReader
from collector.slurm.command import slurm_command
from collector.slurm.parse import SACCT_DELIMITER, ParsableParser
from collector.slurm.source import Item, SourceError, UnchangedLookup

# The sacct fields hpc-billing asks for: one tuple shared by the argv and the parser.
# Every name is accepted by Slurm 22.05's ``sacct --format`` (22.05 rejects ArrayJobID,
# ArrayTaskID, HetJobID and Restarts, and one unknown field fails the whole command).
# JobName, the one free-text field we keep, is last so that a stray delimiter or newline
# inside it can only ever spill into the end of the record. The delimiter is the ASCII
# unit separator, unlike "|" never typed in a job name (sacct -P escapes nothing).
SACCT_FIELDS: tuple[str, ...] = (
    "JobID", "JobIDRaw", "Cluster", "Partition", "Account", "User", "UID", "Group",
    "QOS", "WCKey", "Reservation", "State", "ExitCode", "DerivedExitCode",
    "Submit", "Eligible", "Start", "End", "ElapsedRaw", "TimelimitRaw",
    "NNodes", "NCPUS", "AllocTRES", "TRESUsageInTot", "CPUTimeRAW", "TotalCPU",
    "MaxRSS", "ConsumedEnergyRaw", "NodeList", "DBIndex", "JobName",
)

# --------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------

# sacct(1): SLURM_TIME_FORMAT=%s makes every time column print as epoch seconds, which
# removes the time-zone and DST ambiguity of local times (End stays "Unknown" for running
# jobs). The child also runs with TZ=UTC (slurm_command), which is how -S/-E are read.
SACCT_ENV: dict[str, str] = {"SLURM_TIME_FORMAT": "%s"}


def _sacct_time(dt: datetime, *, round_up: bool) -> str:
    """Format an aware datetime as sacct's -S/-E ``YYYY-MM-DDTHH:MM:SS`` in UTC.

    sacct takes whole seconds (22.05 refuses a bare epoch for -S: "Invalid time
    specification"). ``until`` is rounded up so the window is never narrowed.
    """
    dt = dt.astimezone(UTC)
    if round_up and dt.microsecond:
        dt = dt.replace(microsecond=0) + timedelta(seconds=1)
    # isoformat, not strftime: glibc's %Y does not pad years before 1000 to four digits.
    return dt.replace(microsecond=0, tzinfo=None).isoformat()


def sacct_argv(sacct_path: str, window: Window, cluster: str | None) -> list[str]:
    """The sacct argv for one window.

    Without ``--state``, ``-S T1 -E T2`` selects every job eligible before T2 that ended at
    or after T1 or has not ended (sacct(1), "Jobs Eligible in the time window"; tested in
    samples/sacct-window-semantics.txt). Filtering by state would lose running jobs and
    any state a newer Slurm adds, so it is never used. ``--duplicates`` keeps both records
    of a requeued job; ``--allusers`` is needed for a non-root collector.
    """
    argv = [
        sacct_path, "--allusers", "--duplicates", "--noconvert", "--parsable2",
        "--noheader", f"--delimiter={SACCT_DELIMITER}",
        "--format=" + ",".join(SACCT_FIELDS),
        "-S", _sacct_time(window.since, round_up=False),
        "-E", _sacct_time(window.until, round_up=True),
    ]
    if cluster:
        argv.append(f"--clusters={cluster}")
    return argv



# --------------------------------------------------------------------------------------
# The sacct Source
# --------------------------------------------------------------------------------------


class SacctSource:
    """Source: run ``sacct`` for a window and stream its parsed records.

    Each fetch runs one sacct (``sacct_argv``) with ``SLURM_TIME_FORMAT=%s`` through
    ``slurm_command`` and parses its output with SACCT_FIELDS and the ``\\x1f`` delimiter.
    Items are unrolled (steps separate); the pipeline rolls them up (billing.rollup).
    ``stats``: physical lines read, characters read (the byte count for ASCII output), and
    the seconds spent waiting on sacct's output (not counting our own parsing).
    """

    name = "sacct"
    windowed = True
    skips_unchanged = True   # fetch(..., unchanged=) is supported

    def __init__(self, *, sacct_path: str, timeout_s: float, cluster: str | None) -> None:
        self.sacct_path = sacct_path
        self.timeout_s = timeout_s
        self.cluster = cluster or None
        self._stats = FetchStats()

    @property
    def stats(self) -> FetchStats:
        return self._stats

    def fetch(self, window: Window | None, *,
              unchanged: UnchangedLookup | None = None) -> Iterator[Item]:
        """``unchanged``: skip jobs stored from exactly the same lines (see parse_lines)."""
        if window is None:
            raise SourceError("the sacct source needs a window (it never reads everything)")
        argv = sacct_argv(self.sacct_path, window, self.cluster)
        parser = ParsableParser(SACCT_FIELDS, delimiter=SACCT_DELIMITER, source=self.name,
                                tz=UTC, default_cluster=self.cluster)
        return (item for item in self._run(argv, parser, unchanged)
                if not isinstance(item, Chunk))

    def fetch_chunks(self, window: Window | None, *,
                     unchanged: UnchangedLookup | None = None) -> Iterator[Chunk]:
        """The window as chunks of rolled-up jobs (the engine's path: ColumnarReader);
        ``fetch`` is the per-record path, kept for the tests' oracle."""
        if window is None:
            raise SourceError("the sacct source needs a window (it never reads everything)")
        argv = sacct_argv(self.sacct_path, window, self.cluster)
        parser = ParsableParser(SACCT_FIELDS, delimiter=SACCT_DELIMITER, source=self.name,
                                tz=UTC, default_cluster=self.cluster)
        reader = ColumnarReader(parser)

        def read(lines: Iterator[str]) -> Iterator[Item | Chunk]:
            yield from reader.chunks(lines, unchanged=unchanged)

        return (chunk for chunk in self._run(argv, parser, unchanged, read=read)
                if isinstance(chunk, Chunk))

    def _run(self, argv: list[str], parser: ParsableParser,
             unchanged: UnchangedLookup | None = None,
             read: Callable[[Iterator[str]], Iterator[Item | Chunk]] | None = None
             ) -> Iterator[Item | Chunk]:
        counts = {"lines": 0, "chars": 0}
        waited = [0.0]
        self._stats = FetchStats(extra={"argv": argv})

        def timed_lines() -> Iterator[str]:
            clock = time.perf_counter
            lines = slurm_command(argv, timeout_s=self.timeout_s, env=SACCT_ENV)
            try:
                while True:
                    t0 = clock()
                    line = next(lines, None)
                    waited[0] += clock() - t0
                    if line is None:
                        return
                    counts["lines"] += 1
                    counts["chars"] += len(line) + 1
                    yield line
            finally:
                lines.close()

        quarantined = 0
        try:
            items: Iterator[Item | Chunk] = (
                parser.parse_lines(timed_lines(), unchanged=unchanged) if read is None
                else read(timed_lines()))
            for item in items:
                if type(item) is QuarantinedRecord:
                    quarantined += 1
                elif type(item) is Chunk:
                    quarantined += len(item.quarantined)
                yield item
        finally:
            self._stats = FetchStats(lines=counts["lines"], bytes=counts["chars"],
                                     slurm_seconds=waited[0],
                                     extra={"argv": argv, "quarantined": quarantined,
                                            "ignored_columns": list(parser.ignored_columns),
                                            "unknown_states": dict(parser.unknown_states),
                                            "fallbacks": parser.fallbacks,
                                            "duplicates_skipped": parser.duplicates_skipped})
