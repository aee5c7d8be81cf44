"""The reader of ``sacct --parsable2`` text: ``ParsableParser``.

A streaming parser from ``--parsable2`` lines (any column order, any delimiter) to
``JobRecord`` / ``StepUsage`` / ``QuarantinedRecord`` items. It is shared by the sacct
source (fixed SACCT_FIELDS, ``\\x1f``, epoch times) and the file source (header line,
``|``, local times). ``-P`` escapes nothing, so a record can have too many fields (a
delimiter inside a free-text field) or be split over physical lines (a newline in one):
every record's field count is checked, and what cannot be repaired is quarantined. The
parser never raises on one bad record.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any, TypeVar, cast

from billing.records import JobRecord, QuarantinedRecord, StepUsage, is_final_record
from collector.slurm.fields import (
    COUNT_MAX,
    FREE_TEXT_FIELDS,
    IDENTITY_ALTERNATIVES,
    SENTINELS,
    _cpu_seconds,
    count,
    db_index,
    duration_s,
    hostlist_count,
    opt_count,
    parse_alloc_tres,
    parse_gres,
    read_state,
    req_mem_bytes,
    scale_gpus,
    size_bytes,
    split_job_id,
    time_parser,
    timelimit_min,
    tres_value,
)
from collector.slurm.keyset import KeySet
from collector.slurm.source import Item, SourceError, UnchangedLookup

T = TypeVar("T")

SACCT_DELIMITER = "\x1f"


# Columns the parser reads (docs/columns.md says what each one feeds). Anything else in
# a header is ignored, and reported.
_USED = (
    "JobID", "JobIDRaw", "JobName", "Cluster", "Partition", "Account", "User", "UID",
    "Group", "QOS", "WCKey", "Reservation", "State", "ExitCode", "DerivedExitCode",
    "Submit", "Eligible", "Start", "End", "Elapsed", "ElapsedRaw", "Timelimit",
    "TimelimitRaw", "NNodes", "AllocNodes", "NCPUS", "AllocCPUS", "AllocTRES",
    "TRESUsageInTot", "CPUTime", "CPUTimeRAW", "TotalCPU", "UserCPU", "SystemCPU",
    "MaxRSS", "ConsumedEnergyRaw", "ConsumedEnergy", "NodeList", "DBIndex", "ReqMem",
    "AllocGRES", "ReqGRES",
)
_CANONICAL = {name.lower(): name for name in _USED}
_FREE_LOWER = frozenset(name.lower() for name in FREE_TEXT_FIELDS)

# At most this many physical lines are joined to rebuild one record split by newlines.
_MAX_CONTINUATION = 64


# JobRecord's fields in declaration order: _convert builds records positionally.
_JOB_RECORD_FIELDS = (
    "cluster", "job_id", "job_id_raw", "submit", "state", "state_raw",
    "array_job_id", "array_task_id", "het_job_id", "het_job_offset",
    "name", "user", "uid", "group", "account", "partition", "qos", "wckey", "reservation",
    "exit_code", "derived_exit_code", "eligible", "start", "end", "elapsed_s",
    "timelimit_min", "nodes", "cpus", "mem_bytes", "billing", "gpus", "node_list",
    "cpu_time_alloc_s", "cpu_used_s", "max_rss_bytes", "mem_used_byte_s", "energy_j",
    "db_index", "final", "raw_digest",
)
if tuple(f.name for f in dataclasses.fields(JobRecord)) != _JOB_RECORD_FIELDS:
    raise RuntimeError("JobRecord's fields changed: update _JOB_RECORD_FIELDS and _convert")
_STEP_USAGE_FIELDS = ("cluster", "job_id_raw", "step", "job_db_index", "state", "elapsed_s",
                      "cpu_used_s", "max_rss_bytes", "mem_total_bytes", "energy_j", "line_no")
if tuple(f.name for f in dataclasses.fields(StepUsage)) != _STEP_USAGE_FIELDS:
    raise RuntimeError("StepUsage's fields changed: update _STEP_USAGE_FIELDS and _convert")


class _BadValue(ValueError):
    """A record-level problem that already has its full reason text."""


def _fits(step: StepUsage, job: Item) -> bool:
    """Whether billing.rollup attaches ``step`` to ``job`` (the job line before it)."""
    if type(job) is not JobRecord:
        return False
    if step.cluster is not None and step.cluster != job.cluster:
        return False
    return (step.job_db_index is None or job.db_index is None
            or step.job_db_index == job.db_index)


def _opt(value: str) -> str | None:
    return None if value in SENTINELS else value


# Part of every raw digest: bump it when a change to the parser or the roll-up changes
# the record some raw lines give, so that every job is parsed (and stored) again once.
# 2: allocation fallbacks (NCPUS/NNodes/NodeList/ReqMem/AllocGRES for a job that ran with
# an empty AllocTRES), unknown states stored as not final.
RAW_DIGEST_VERSION = "2"
# Groups (jobs) per lookup of stored digests.
SKIP_BATCH_GROUPS = 1000


class ParsableParser:
    """Turns ``sacct --parsable2`` lines into Items, streaming, one line of look-ahead.

    ``columns`` are the column names in output order (the ``--format`` list or the header
    line), matched case-insensitively; unknown names are ignored (``ignored_columns``).
    ``tz`` is the zone naive times are read in (epoch times need none). ``default_cluster``
    is used when there is no Cluster column (or it is empty).

    Identity: Submit, State, and JobID or JobIDRaw. With JobIDRaw only, JobID is the
    raw id (no array or het ids). With JobID only, a plain id is its own raw id; an
    array task or het component (whose own id cannot be derived) is quarantined.

    Allocation comes from AllocTRES. For a job that ran (``_ran``: nodes in its NodeList,
    else a Start and Elapsed > 0) what AllocTRES lacks falls back to NCPUS/AllocCPUS (CPUs), NNodes/AllocNodes
    or the count of NodeList (nodes), ReqMem (memory, ``n``/``c`` suffixes per node or
    CPU) and AllocGRES, else ReqGRES x nodes (GPUs). ``fallbacks`` counts such jobs.

    A State Slurm does not document is kept (``state_raw``), and the record is not final
    and gets no raw digest (so it is read again every time); ``unknown_states`` counts
    them by state.

    Lines are given without their newline (a trailing ``"\\n"`` is tolerated). Record
    assembly (DESIGN §3 "Delimiters"):
      * blank lines are skipped;
      * too many fields: when exactly one free-text column exists, the surplus is joined
        back into it with the delimiter; otherwise the record is quarantined;
      * too few fields: a newline inside a free-text field split the record, so the next
        physical lines are joined with ``"\\n"`` while the break falls in a free-text
        column and the record is still short; if that does not give a record of exactly
        the right width, only the first line is quarantined and the following lines are
        parsed on their own; a short last line (truncated output) is quarantined;
      * a line with no delimiter at all right after a complete record whose LAST column is
        free text is the continuation of that field (a newline in SubmitLine or JobName,
        which sacct prints last; samples/delimiter-hazards.txt).
    """

    def __init__(self, columns: Sequence[str], *, delimiter: str = SACCT_DELIMITER,
                 source: str = "sacct", tz: tzinfo = UTC,
                 default_cluster: str | None = None) -> None:
        if not delimiter:
            raise ValueError("empty delimiter")
        self.columns = tuple(columns)
        self.delimiter = delimiter
        self.source = source
        self.tz = tz
        self.default_cluster = default_cluster or None
        self._ncols = len(self.columns)

        index: dict[str, int] = {}
        ignored: list[str] = []
        for pos, name in enumerate(self.columns):
            canonical = _CANONICAL.get(name.strip().lower())
            if canonical is None or canonical in index:   # unknown, or a repeated column
                if name.strip():                          # -p's trailing empty column
                    ignored.append(name)
                continue
            index[canonical] = pos
        self._index = index
        self.ignored_columns = tuple(ignored)
        self.missing_required = tuple(
            " or ".join(names) for names in IDENTITY_ALTERNATIVES
            if not any(name in index for name in names))
        if self.missing_required:
            raise SourceError("missing required column(s): " + ", ".join(self.missing_required))
        self.has_cluster_column = "Cluster" in index
        # What the reader met, for the run's report (read them after parse_lines).
        self.unknown_states: Counter[str] = Counter()
        self.fallbacks = 0
        # Jobs skipped as unchanged whose very lines were met (and skipped) earlier in
        # the same input: the same job twice (the pipeline counts converted ones).
        self.duplicates_skipped = 0
        # Hashes of the digests skipped so far in this input (one input per parser; the
        # columnar reader's skip stage adds to the same set).
        self.skipped_digests = KeySet()
        # Hashes of the (cluster, JobIDRaw) of the groups met and not skipped so far in
        # this input (the skip path; the columnar reader adds its vector groups).
        self.emitted_keys = KeySet()

        self._free = tuple(name.strip().lower() in _FREE_LOWER for name in self.columns)
        free_names = [name for name, free in zip(self.columns, self._free, strict=True) if free]
        self._free_names = tuple(free_names)
        self._last_free = self._free[-1] if self.columns else False

        # Missing columns read the sentinel slot appended to every record (value "").
        missing = self._ncols

        def ix(name: str) -> int:
            return index.get(name, missing)

        def first(*names: str) -> int:
            for name in names:
                if name in index:
                    return index[name]
            return missing

        self._has_jobid = "JobID" in index
        self._has_raw = "JobIDRaw" in index
        self._derive_ids = not (self._has_jobid and self._has_raw)
        self._has_elapsed_raw = "ElapsedRaw" in index
        self._has_timelimit_raw = "TimelimitRaw" in index
        self._has_cputime_raw = "CPUTimeRAW" in index
        self._has_energy_raw = "ConsumedEnergyRaw" in index
        self._has_start = "Start" in index
        self._has_elapsed = self._has_elapsed_raw or "Elapsed" in index
        self._has_nodelist = "NodeList" in index
        self._has_reqmem = "ReqMem" in index
        self._has_gres = "AllocGRES" in index or "ReqGRES" in index
        self._user_sys = ("TotalCPU" not in index and "UserCPU" in index
                          and "SystemCPU" in index)
        self._has_fallback = any(name in index for name in (
            "NCPUS", "AllocCPUS", "NNodes", "AllocNodes", "NodeList", "ReqMem", "AllocGRES",
            "ReqGRES"))
        self._ix = (
            ix("JobID"), ix("JobIDRaw"), ix("JobName"), ix("Cluster"), ix("Partition"),
            ix("Account"), ix("User"), ix("UID"), ix("Group"), ix("QOS"), ix("WCKey"),
            ix("Reservation"), ix("State"), ix("ExitCode"), ix("DerivedExitCode"),
            ix("Submit"), ix("Eligible"), ix("Start"), ix("End"),
            ix("ElapsedRaw") if self._has_elapsed_raw else ix("Elapsed"),
            ix("TimelimitRaw") if self._has_timelimit_raw else ix("Timelimit"),
            first("NNodes", "AllocNodes"), first("NCPUS", "AllocCPUS"),
            ix("AllocTRES"), ix("TRESUsageInTot"),
            ix("CPUTimeRAW") if self._has_cputime_raw else ix("CPUTime"),
            ix("TotalCPU"), ix("MaxRSS"),
            ix("ConsumedEnergyRaw") if self._has_energy_raw else ix("ConsumedEnergy"),
            ix("NodeList"), ix("DBIndex"),
        )
        # Columns only the fallbacks read (by name, for their error messages too).
        self._fb = {name: ix(name) for name in (
            "NCPUS", "AllocCPUS", "NNodes", "AllocNodes", "NodeList", "ReqMem", "AllocGRES",
            "ReqGRES", "UserCPU", "SystemCPU")}
        # Where the skip path finds a record's ids and cluster (None: no such column).
        self._pos_jobid = index.get("JobID")
        self._pos_raw = index.get("JobIDRaw")
        self._pos_cluster = index.get("Cluster")
        self._time = time_parser(tz)

    # ---------------------------------------------------------------- record assembly

    def parse_lines(self, lines: Iterable[str], *, first_line_no: int = 1,
                    unchanged: UnchangedLookup | None = None) -> Iterator[Item]:
        """Yield one Item per logical record of ``lines`` (numbered from first_line_no).

        With ``unchanged`` (see ``UnchangedLookup``), jobs whose raw lines are exactly
        those already stored are skipped before they are converted (``_parse_skipping``).
        """
        if unchanged is not None:
            yield from self._parse_skipping(self._assemble(lines, first_line_no), unchanged)
            return
        ncols = self._ncols
        convert = self._convert
        finish = self._finish
        for rec in self._assemble(lines, first_line_no):
            if type(rec) is tuple:
                fields, raw, ln = rec
                yield convert(fields, raw, ln) if len(fields) == ncols else finish(fields, raw, ln)
            else:
                yield cast(QuarantinedRecord, rec)

    def _assemble(self, lines: Iterable[str], first_line_no: int
                  ) -> Iterator[tuple[list[str], str, int] | QuarantinedRecord]:
        """Physical lines -> logical records: ``(fields, raw, line_no)`` with exactly
        ncols fields (convert) or more (``_finish`` repairs or quarantines), or a
        QuarantinedRecord for a record that cannot be completed."""
        ncols = self._ncols
        delim = self.delimiter
        free = self._free
        last_free = self._last_free
        source = self.source

        src = iter(lines)
        back: deque[tuple[int, str]] = deque()   # lines to re-read after a failed join
        line_no = first_line_no - 1
        held: tuple[list[str], str, int] | None = None  # a complete record, kept one line
        # so that a delimiter-less continuation of its last (free-text) field can join it.

        while True:
            if back:
                ln, text = back.popleft()
            else:
                next_line = next(src, None)
                if next_line is None:
                    break
                text = next_line
                line_no += 1
                ln = line_no
                if text[-1:] == "\n":
                    text = text[:-1]
            if not text:
                continue
            fields = text.split(delim)
            n = len(fields)
            if n == ncols:
                if held is not None:
                    hf, hraw, hln = held
                    yield hf, hraw, hln
                if last_free:
                    held = (fields, text, ln)
                else:
                    held = None
                    yield fields, text, ln
                continue
            if n == 1 and held is not None and last_free:
                hf, hraw, hln = held
                hf[-1] = hf[-1] + "\n" + text
                held = (hf, hraw + "\n" + text, hln)
                continue
            if held is not None:
                hf, hraw, hln = held
                held = None
                yield hf, hraw, hln
            if n > ncols:
                if last_free:
                    held = (fields, text, ln)
                else:
                    yield fields, text, ln
                continue
            # Too few fields: try to rebuild a record split by newlines in free-text fields.
            parts = [text]
            consumed: list[tuple[int, str]] = []
            count = n
            eof = False
            while count < ncols and free[count - 1] and len(consumed) < _MAX_CONTINUATION:
                if back:
                    nxt = back.popleft()
                else:
                    nxt_text = next(src, None)
                    if nxt_text is None:
                        eof = True
                        break
                    line_no += 1
                    if nxt_text[-1:] == "\n":
                        nxt_text = nxt_text[:-1]
                    nxt = (line_no, nxt_text)
                consumed.append(nxt)
                parts.append(nxt[1])
                count += nxt[1].count(delim)
            # Only an exact fit is accepted: a join that overshoots would most likely glue a
            # good record onto a broken line (repairing it into the free-text column would
            # then lose the good record).
            if consumed and count == ncols:
                joined = "\n".join(parts)
                joined_fields = joined.split(delim)
                if last_free:
                    held = (joined_fields, joined, ln)
                else:
                    yield joined_fields, joined, ln
                continue
            back.extendleft(reversed(consumed))
            if not consumed and not back and not eof:
                # Peek one line: a short line with nothing after it is a truncated output.
                peek = next(src, None)
                if peek is None:
                    eof = True
                else:
                    line_no += 1
                    back.append((line_no, peek[:-1] if peek[-1:] == "\n" else peek))
            if eof and not consumed:
                reason = (f"{n} fields, expected {ncols}: truncated record at the end of "
                          f"the output")
            elif not free[n - 1]:
                reason = (f"{n} fields, expected {ncols}; the record cannot continue on the "
                          f"next line because column {self.columns[n - 1]} is not free text")
            else:
                reason = (f"{n} fields, expected {ncols}; joining the following line(s) did "
                          f"not give a complete record")
            yield QuarantinedRecord(raw=text, reason=reason, source=source, line_no=ln,
                                    job_id=self._best_job_id(fields))
        if held is not None:
            hf, hraw, hln = held
            yield hf, hraw, hln

    def _digest_salt(self) -> bytes:
        """What, besides the raw lines, decides the records parsed from them."""
        return "\x1e".join((RAW_DIGEST_VERSION, self.delimiter, "\x1f".join(self.columns),
                            str(self.tz), self.default_cluster or "")).encode(
                                "utf-8", "surrogatepass")

    def _parse_skipping(self, records: Iterator[tuple[list[str], str, int] | QuarantinedRecord],
                        unchanged: UnchangedLookup) -> Iterator[Item]:
        """Convert records, skipping the jobs stored from exactly these raw lines.

        Records are grouped per job: a job line and the step lines after it with the same
        JobIDRaw (how sacct prints them). A group's digest (blake2b-128 over the parser's
        settings and the group's raw lines, ``RAW_DIGEST_VERSION``) is looked up once per
        ``SKIP_BATCH_GROUPS`` groups; a job whose stored ``raw_digest`` equals it is
        skipped without being converted (``unchanged.skipped``). Other jobs are converted
        and carry the digest to the store (``JobRecord.raw_digest``), unless a record of
        their group was quarantined. Never skipped: groups with a quarantined or
        over-long record, step lines without their job line before them, and, within one
        batch, a job whose step lines also appear apart from it.
        """
        ncols = self._ncols
        convert = self._convert
        finish = self._finish
        # A missing column is read as its neighbour (JobID <-> JobIDRaw) or as "" (Cluster),
        # never past the end of the record.
        i_jobid = self._pos_jobid if self._pos_jobid is not None else self._pos_raw
        i_raw = self._pos_raw if self._pos_raw is not None else self._pos_jobid
        assert i_jobid is not None and i_raw is not None   # the constructor checked
        i_cluster = self._pos_cluster
        default_cluster = self.default_cluster or ""
        salt = self._digest_salt()
        person = b"hpcb-raw"
        blake2b = hashlib.blake2b

        # group: [cluster, head, skippable, items, digest]
        groups: list[list[Any]] = []
        current: list[Any] | None = None
        skipped_before = self.skipped_digests  # hashes of the digests skipped so far

        # The digest is blake2b(salt + "\n" + raw line + "\n" + raw line ...), hashed in
        # one call per group.
        salt_nl = salt + b"\n"

        def flush() -> Iterator[Item]:
            asks = []
            for g in groups:
                if g[2]:
                    g[4] = blake2b(salt_nl + "\n".join([item[1] for item in g[3]]).encode(
                        "utf-8", "surrogatepass"), digest_size=16, person=person).hexdigest()
                    asks.append((g[0], int(g[1]), g[4]))
            stored = unchanged.stored(asks) if asks else set()
            # A job whose steps also appear in a group of their own (no job line before
            # them) is parsed in full, so that those steps find their job.
            loose = {g[1] for g in groups if not g[2] and g[1] is not None} if stored else ()
            emitted = self.emitted_keys
            for g in groups:
                digest = g[4]          # set for skippable groups only
                key = hash((g[0], g[1]))
                # A job met earlier in this input and not skipped there is never skipped
                # here: its later copy must be stored after the earlier one (the last
                # record of a key wins, also on a re-import).
                if (digest is not None and digest in stored and g[1] not in loose
                        and key not in emitted):
                    unchanged.skipped(g[0])
                    mark = hash(digest)
                    if mark in skipped_before:
                        self.duplicates_skipped += 1
                    else:
                        skipped_before.add(mark)
                    continue
                if g[1] is not None:
                    emitted.add(key)
                out: list[Item] = []
                bad = False
                for pending in g[3]:
                    item = pending
                    if type(pending) is tuple:
                        f, raw, ln = pending
                        item = (convert(f, raw, ln, digest) if len(f) == ncols
                                else finish(f, raw, ln))
                    if type(item) is QuarantinedRecord or (
                            type(item) is StepUsage and out and not _fits(item, out[0])):
                        # A quarantined record, or a step the roll-up will not attach to
                        # this job (another cluster or DBIndex): the job gets no digest,
                        # so a re-import reads (and reports) the group again.
                        bad = True
                    out.append(item)
                if bad and digest is not None and len(out) > 1:
                    first = out[0]
                    if type(first) is JobRecord:
                        out[0] = dataclasses.replace(first, raw_digest=None)
                yield from out
            groups.clear()

        for rec in records:
            if type(rec) is not tuple or len(rec[0]) != ncols:
                # Quarantined or over-long: stays with the job it interrupts, which is
                # then never skipped (nor given a digest).
                if current is None:
                    current = [None, None, False, [], None]
                    groups.append(current)
                current[2] = False
                current[3].append(rec)
                continue
            f = rec[0]
            raw_id = f[i_raw]
            head, dot, _ = raw_id.partition(".")
            if dot or "." in f[i_jobid]:
                if current is not None and current[1] == head:
                    current[3].append(rec)
                    continue
                cluster = (f[i_cluster] if i_cluster is not None else "") or default_cluster
                current = [cluster, head, False, [rec], None]
            else:
                if len(groups) >= SKIP_BATCH_GROUPS:
                    yield from flush()
                cluster = (f[i_cluster] if i_cluster is not None else "") or default_cluster
                current = [cluster, head, head.isdigit() and head.isascii(), [rec], None]
            groups.append(current)
        yield from flush()

    def _finish(self, fields: list[str], raw: str, line_no: int) -> Item:
        """A record with too many fields: repair it into the one free-text column, or
        quarantine it."""
        ncols = self._ncols
        n = len(fields)
        free_names = self._free_names
        if len(free_names) == 1:
            k = self._free.index(True)
            surplus = n - ncols
            fields[k:k + surplus + 1] = [self.delimiter.join(fields[k:k + surplus + 1])]
            return self._convert(fields, raw, line_no)
        if not free_names:
            why = "no free-text column could hold the extra delimiter(s)"
        else:
            why = "ambiguous: free-text columns " + " and ".join(free_names)
        return QuarantinedRecord(raw=raw, reason=f"{n} fields, expected {ncols}; {why}",
                                 source=self.source, line_no=line_no,
                                 job_id=self._best_job_id(fields))

    def _best_job_id(self, fields: list[str]) -> str | None:
        for pos in (self._pos_jobid, self._pos_raw):
            if pos is not None and pos < len(fields) and fields[pos]:
                return fields[pos][:64]
        return None

    # ---------------------------------------------------------------- record conversion

    def _convert(self, f: list[str], raw: str, line_no: int, digest: str | None = None) -> Item:
        """One record of exactly ncols fields -> JobRecord / StepUsage / QuarantinedRecord."""
        f.append("")  # the sentinel slot missing columns point at
        (i_jobid, i_raw, i_name, i_cluster, i_part, i_acct, i_user, i_uid, i_group, i_qos,
         i_wckey, i_resv, i_state, i_exit, i_dexit, i_submit, i_elig, i_start, i_end,
         i_elapsed, i_tlimit, _i_nodes, _i_ncpus, i_alloc, i_usage, i_cputime, i_totalcpu,
         i_maxrss, i_energy, i_nodelist, i_dbindex) = self._ix
        what = "JobID"
        try:
            job_id = f[i_jobid]
            raw_id = f[i_raw]
            if self._derive_ids:
                job_id, raw_id = self._derive(job_id, raw_id)
            cluster = f[i_cluster] or self.default_cluster
            if cluster is None:
                raise _BadValue("no Cluster value in the record and no default cluster "
                                "configured")
            what = "State"
            state_raw = f[i_state]
            state, known = read_state(state_raw)
            what = "ElapsedRaw" if self._has_elapsed_raw else "Elapsed"
            value = f[i_elapsed]
            elapsed = int(value) if value.isdigit() else (
                0 if value in SENTINELS else int(duration_s(value)))
            what = "TotalCPU"
            value = f[i_totalcpu]
            cpu_used = _cpu_seconds(value) if value else None
            if cpu_used is None and self._user_sys:
                cpu_used = self._user_plus_system(f)
            what = "ConsumedEnergyRaw" if self._has_energy_raw else "ConsumedEnergy"
            value = f[i_energy]
            energy = (None if value in SENTINELS else
                      int(value) if value.isdigit() else size_bytes(value, 1))
            what = "DBIndex"
            dbindex = db_index(f[i_dbindex])

            if "." in job_id or "." in raw_id:
                # A step line: usage only.
                what = "JobIDRaw"
                head, dot, step = raw_id.partition(".")
                if not dot:
                    step = job_id.partition(".")[2]
                if not step:
                    raise _BadValue(f"step line without a step name: JobID={job_id!r}")
                job_id_raw = count(head)
                what = "MaxRSS"
                value = f[i_maxrss]
                max_rss = None if value in SENTINELS else size_bytes(value, 1)
                what = "TRESUsageInTot"
                usage = f[i_usage]
                mem_total = None
                if usage:
                    tres = tres_value(usage, "mem")
                    if tres is not None:
                        mem_total = size_bytes(tres, 1)
                    if cpu_used is None:
                        tres = tres_value(usage, "cpu")
                        if tres is not None:
                            cpu_used = duration_s(tres)
                return StepUsage(cluster, job_id_raw, step, dbindex, state, elapsed,
                                 cpu_used, max_rss, mem_total, energy, line_no)

            what = "JobIDRaw"
            job_id_raw = count(raw_id)
            what = "JobID"
            array_job, array_task, het_job, het_offset = (
                split_job_id(job_id) if self._has_jobid else (None, None, None, None))
            parse_time = self._time
            what = "Submit"
            submit = parse_time(f[i_submit])
            if submit is None:
                raise _BadValue(f"Submit is {f[i_submit]!r}: a job record without a submit "
                                f"time has no identity")
            what = "Eligible"
            eligible = parse_time(f[i_elig])
            what = "Start"
            start = parse_time(f[i_start])
            what = "End"
            end = parse_time(f[i_end])
            what = "TimelimitRaw" if self._has_timelimit_raw else "Timelimit"
            tlimit = timelimit_min(f[i_tlimit], raw=self._has_timelimit_raw)
            what = "AllocTRES"
            value = f[i_alloc]
            if value:
                cpus, nodes, mem, billing, gpus = parse_alloc_tres(value)
            else:
                cpus = nodes = mem = 0
                billing, gpus = None, ()
            node_list = _opt(f[i_nodelist])
            if (self._has_fallback
                    and (not cpus or not nodes or (not mem and self._has_reqmem)
                         or (not gpus and self._has_gres))
                    and self._ran(start, elapsed, node_list, state)):
                cpus, nodes, mem, gpus = self._fallback(f, cpus, nodes, mem, gpus)
            what = "AllocTRES (or NCPUS, NNodes)"
            if max(cpus, nodes, sum(n for _, n in gpus)) > COUNT_MAX:
                # The jobs table keeps these as integer (as the JSON reader checks too).
                raise ValueError(f"a CPU, node or GPU count above {COUNT_MAX}: no Slurm "
                                 f"allocates that many, and it cannot be stored")
            what = "CPUTimeRAW" if self._has_cputime_raw else "CPUTime"
            value = f[i_cputime]
            cpu_time_alloc = int(value) if value.isdigit() else (
                None if value in SENTINELS else int(duration_s(value)))
            what = "UID"
            uid = opt_count(f[i_uid])
            name = f[i_name]
            if known:
                final = is_final_record(state, end)
            else:
                # Not a state Slurm documents: keep it, never call it final, and give it
                # no digest so that it is read (and stored) again until it is known.
                final = False
                digest = None
                self.unknown_states[state] += 1
            # Positional, in _JOB_RECORD_FIELDS order (a call with 40 keywords costs a
            # third of a conversion); max_rss_bytes and mem_used_byte_s come from steps.
            return JobRecord(
                cluster, job_id, job_id_raw, submit, state, state_raw,
                array_job, array_task, het_job, het_offset,
                name or None, _opt(f[i_user]), uid, _opt(f[i_group]),
                _opt(f[i_acct]), _opt(f[i_part]), _opt(f[i_qos]),
                _opt(f[i_wckey]), _opt(f[i_resv]),
                f[i_exit] or None, f[i_dexit] or None,
                eligible, start, end, elapsed,
                tlimit, nodes, cpus, mem,
                billing, gpus, node_list,
                cpu_time_alloc, cpu_used, None, None, energy,
                dbindex, final, digest,
            )
        except Exception as exc:  # noqa: BLE001 - one bad record must never stop a poll
            del f[-1]
            return QuarantinedRecord(raw=raw, reason=self._reason(what, f, exc),
                                     source=self.source, line_no=line_no,
                                     job_id=self._best_job_id(f))

    # ------------------------------------------------------- the less common columns

    def _derive(self, job_id: str, raw_id: str) -> tuple[str, str]:
        """(JobID, JobIDRaw) when one of the two columns is missing."""
        if not self._has_jobid:
            return raw_id, raw_id                 # JobIDRaw only: no array or het ids
        head = job_id.partition(".")[0]
        if head.isdigit() and head.isascii():
            return job_id, job_id                 # a plain job (or its step): its own id
        raise _BadValue(
            f"the file has no JobIDRaw column, and the own job id of {job_id!r} (an array "
            f"task or het job component) cannot be derived from JobID; export with JobIDRaw")

    def _ran(self, start: datetime | None, elapsed: int, node_list: str | None, state: str) -> bool:
        """Whether the job ran (and so had an allocation), from what the record has.

        A NodeList (not ``None assigned``) says so best: a job cancelled while pending has
        a Start equal to its End in 22.05, and no nodes. Without NodeList, a Start and
        (when there is an Elapsed column) a positive Elapsed; without either, not PENDING.
        """
        if self._has_nodelist:
            return node_list is not None and (start is not None or not self._has_start)
        if self._has_start:
            return start is not None and (elapsed > 0 or not self._has_elapsed)
        if self._has_elapsed:
            return elapsed > 0
        return state != "PENDING"

    def _field(self, f: list[str], name: str, parse: Callable[[str], T]) -> T:
        """``parse(value)`` of fallback column ``name``; its errors name the column."""
        value = f[self._fb[name]]
        try:
            return parse(value)
        except Exception as exc:
            raise _BadValue(f"cannot parse {name}={value!r}: {exc or type(exc).__name__}") \
                from exc

    def _fallback(self, f: list[str], cpus: int, nodes: int, mem: int,
                  gpus: tuple[tuple[str, int], ...]
                  ) -> tuple[int, int, int, tuple[tuple[str, int], ...]]:
        """Fill in what AllocTRES did not give for a job that ran (see the class doc)."""
        used = False
        if not cpus:
            cpus = (self._field(f, "NCPUS", opt_count) or self._field(f, "AllocCPUS", opt_count)
                    or 0)
            used = used or bool(cpus)
        if not nodes:
            nodes = (self._field(f, "NNodes", opt_count)
                     or self._field(f, "AllocNodes", opt_count)
                     or self._field(f, "NodeList", hostlist_count) or 0)
            used = used or bool(nodes)
        if not mem and self._has_reqmem:
            mem = self._field(f, "ReqMem", lambda v: req_mem_bytes(
                v, cpus=cpus, nodes=max(nodes, 1))) or 0
            used = used or bool(mem)
        if not gpus and self._has_gres:
            gpus = self._field(f, "AllocGRES", parse_gres)
            if not gpus:
                # ReqGRES is what --gres asked for, per node (sbatch(1)).
                gpus = scale_gpus(self._field(f, "ReqGRES", parse_gres), max(nodes, 1))
            used = used or bool(gpus)
        if used:
            self.fallbacks += 1
        return cpus, nodes, mem, gpus

    def _user_plus_system(self, f: list[str]) -> Decimal | None:
        """TotalCPU from UserCPU + SystemCPU (an export without TotalCPU)."""
        user = self._field(f, "UserCPU", lambda v: None if v in SENTINELS else duration_s(v))
        system = self._field(f, "SystemCPU",
                             lambda v: None if v in SENTINELS else duration_s(v))
        if user is None and system is None:
            return None
        return (user or Decimal(0)) + (system or Decimal(0))

    def _reason(self, what: str, fields: list[str], exc: Exception) -> str:
        if isinstance(exc, _BadValue):
            return str(exc)
        pos = self._index.get(what)
        value = fields[pos] if pos is not None and pos < len(fields) else None
        detail = str(exc) or type(exc).__name__
        if value is None:
            return f"cannot parse {what}: {detail}"
        return f"cannot parse {what}={value!r}: {detail}"
