"""The columnar reader of ``sacct --parsable2`` text: ``ColumnarReader`` (issue 19).

Lines -> chunks (about 8,000 lines, cut before the last job line so that a job's steps
stay with it) -> one polars frame of rolled-up jobs per chunk (``JOB_SCHEMA``), plus the
chunk's quarantined records. Design: docs/design/engine.md §2, §8, §9.

- **Skip stage** (before any value is parsed): every well-formed job group (a job line
  and the step lines after it with its JobIDRaw) gets today's raw digest
  (``ParsableParser._digest_salt``, ``RAW_DIGEST_VERSION``, blake2b-128, bit for bit), one
  lookup per chunk asks the store which digests it holds (``UnchangedLookup``), and the
  stored groups are dropped (``lookup.skipped``).
- **Vector forms**: a value is read by a column expression only in a form whose meaning
  is unambiguous (``[0-9]{1,18}``, epoch seconds, ``YYYY-MM-DD[T ]HH:MM:SS`` in the
  reader's zone, ``[D-][HH:]MM:SS[.mmm]``, sizes ``NNN[KMGTPE]``, the sentinels). State
  and AllocTRES go through today's ``read_state`` / ``parse_alloc_tres`` on the chunk's
  distinct values.
- **Fallback** (§8): a job group with anything else (a ragged line, a value outside the
  forms, an unknown state, a job that ran without cpu/node in AllocTRES, a count past
  ``COUNT_MAX``, a step that does not fit its job line) goes, as raw lines, through
  today's ``ParsableParser`` + ``rollup_steps``, with the line that follows it as a
  look-ahead. A step whose job line is further back takes the groups from that job line
  down to the step as one unit; when the job line was in an earlier chunk, the reader
  keeps the raw lines of the last ``HISTORY_GROUPS`` groups and re-parses that group with
  the step (the job is emitted again, flagged ``reemitted``: the writer's "last record of
  a key wins" then stores what today's roll-up gives).
- A header whose used columns are not exactly ``VECTOR_COLUMNS`` (older Slurm exports,
  other column sets), or a zone without an IANA name, is read entirely by the per-record
  path (``ParsableParser`` over the whole stream), in chunks of records.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from itertools import islice
from typing import Any

import polars as pl

from billing.records import JobRecord, QuarantinedRecord, StepUsage, is_final_record
from billing.rollup import rollup_steps
from collector.slurm.fields import COUNT_MAX, SENTINELS, parse_alloc_tres, read_state
from collector.slurm.parse import _CANONICAL, ParsableParser
from collector.slurm.source import Item, UnchangedLookup

SENT = sorted(SENTINELS)

# The columns the vector path reads; a header must use exactly these (in any order,
# plus columns the parser ignores). The sacct source asks for exactly these.
VECTOR_COLUMNS = (
    "JobID", "JobIDRaw", "Cluster", "Partition", "Account", "User", "UID", "Group",
    "QOS", "WCKey", "Reservation", "State", "ExitCode", "DerivedExitCode", "Submit",
    "Eligible", "Start", "End", "ElapsedRaw", "TimelimitRaw", "NNodes", "NCPUS",
    "AllocTRES", "TRESUsageInTot", "CPUTimeRAW", "TotalCPU", "MaxRSS",
    "ConsumedEnergyRaw", "NodeList", "DBIndex", "JobName")

# The raw text columns a job line still needs once its values are read (the stored
# text fields, NodeList for "ran", JobID/JobIDRaw for the groups); a step line needs
# only JobID/JobIDRaw. The others are dropped as soon as they are read: every later
# filter, join and concat carries fewer columns, and a chunk's peak holds less.
_JOB_TEXT = ("JobID", "JobIDRaw", "State", "JobName", "User", "Group", "Account",
             "Partition", "QOS", "WCKey", "Reservation", "ExitCode", "DerivedExitCode",
             "NodeList")
_EVERY_LINE_READ = ("ElapsedRaw", "ConsumedEnergyRaw", "DBIndex", "TotalCPU", "Cluster")
_JOB_READ = tuple(n for n in VECTOR_COLUMNS if n not in _JOB_TEXT and n not in _EVERY_LINE_READ)
_STEP_READ = tuple(n for n in VECTOR_COLUMNS
                   if n not in ("JobID", "JobIDRaw") and n not in _EVERY_LINE_READ)

# Lines per chunk. Each chunk costs a fixed ~60 ms of CPU (reader ~18, pricer ~15: their
# polars operations, not planning alone; the writer's statements the rest; engine.md
# §18), so larger chunks cost less CPU and more memory. Measured at 1M lines on the
# machine of §19, after the raw columns were dropped early: 12,288 lines 12.1 CPU-s and
# a 238 MiB peak, 16,384 10.5-10.9 and 257-266 MiB, 20,480 10.1 and 279 MiB (the 300 MB
# budget is 286 MiB).
CHUNK_LINES = 16384
# Job groups whose raw lines are kept for a step printed after a later chunk (§8).
HISTORY_GROUPS = 4096

_TS: pl.DataType = pl.Datetime("us", "UTC")
# The frame every job ends up in (vector path or fallback), in this order.
JOB_SCHEMA = pl.Schema({
    "cluster": pl.String(), "job_id": pl.String(), "job_id_raw": pl.Int64(),
    "submit": _TS, "state": pl.String(), "state_raw": pl.String(),
    "array_job_id": pl.Int64(), "array_task_id": pl.Int64(), "het_job_id": pl.Int64(),
    "het_job_offset": pl.Int64(), "name": pl.String(), "user": pl.String(), "uid": pl.Int64(),
    "group": pl.String(), "account": pl.String(), "partition": pl.String(), "qos": pl.String(),
    "wckey": pl.String(), "reservation": pl.String(), "exit_code": pl.String(),
    "derived_exit_code": pl.String(), "eligible": _TS, "start": _TS, "end": _TS,
    "elapsed_s": pl.Int64(), "timelimit_min": pl.Int64(), "nodes": pl.Int64(), "cpus": pl.Int64(),
    "mem_bytes": pl.Int64(), "billing": pl.Int64(), "gpus": pl.String(), "node_list": pl.String(),
    "cpu_time_alloc_s": pl.Int64(), "cpu_used_ms": pl.Int64(), "max_rss_bytes": pl.Int64(),
    "mem_used_byte_s": pl.Int128(), "energy_j": pl.Int64(), "db_index": pl.UInt64(),
    "final": pl.Boolean(), "raw_digest": pl.Binary(),
})
# What a chunk's frame adds: input order, and whether the job was emitted before (§8).
CHUNK_SCHEMA = pl.Schema({**JOB_SCHEMA, "order": pl.Int64(), "reemitted": pl.Boolean()})

_UNIT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50,
         "E": 1 << 60}
_PERSON = b"hpcb-raw"


def gpus_key(gpus: tuple[tuple[str, int], ...]) -> str:
    """JobRecord.gpus as one string (a dictionary key): ``a100=2,untyped=1``."""
    return ",".join(f"{t}={n}" for t, n in gpus)


def gpus_tuple(key: str | None) -> tuple[tuple[str, int], ...]:
    if not key:
        return ()
    return tuple((t, int(n)) for t, _, n in (item.rpartition("=") for item in key.split(",")))


@dataclass
class Chunk:
    """One chunk's output: jobs (``CHUNK_SCHEMA``, in input order, not deduplicated) and
    the quarantined records, with what the chunk's parts took."""

    jobs: pl.DataFrame
    quarantined: list[QuarantinedRecord] = field(default_factory=list)
    vector_jobs: int = 0
    fallback_jobs: int = 0
    fallback_groups: int = 0
    skipped: int = 0


def _opt_int(c: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """(value, bad): sentinel -> null; digits -> int; anything else is bad."""
    num = c.str.contains(r"^[0-9]{1,18}$")
    return (pl.when(num).then(c.cast(pl.Int64, strict=False)),
            ~num & ~c.is_in(SENT))


def _opt_str(c: pl.Expr) -> pl.Expr:
    return pl.when(c.is_in(SENT)).then(None).otherwise(c)


# [D-]HH:MM:SS | [D-]MM:SS | SS, each with an optional .f (f: 1-3 digits), as one regex:
# groups 1-4 the first form, 5-7 the second, 8 the third, 9 the fraction. The forms have
# two, one and no colons, so at most one alternative matches a value.
_DUR = (r"^(?:(?:([0-9]{1,6})-)?([0-9]{1,6}):([0-9]{1,6}):([0-9]{1,6})"
        r"|(?:([0-9]{1,6})-)?([0-9]{1,6}):([0-9]{1,6})"
        r"|([0-9]{1,12}))(?:\.([0-9]{1,3}))?$")
_SIZE = r"^([0-9]{1,12})([KMGTPEkmgtpe]?)$"


def _with_dur_ms(df: pl.DataFrame, src: pl.Expr, out: str) -> pl.DataFrame:
    """``df`` with ``out`` (ms) and ``out_ok`` (matched) for the durations in ``src``:
    [D-]HH:MM:SS[.f], [D-]MM:SS[.f], SS[.f] (f: 1-3 digits). The regex runs once (one
    pass with captures costs ~15 % less than one per form): eager polars evaluates a
    repeated sub-expression again at every use, so the groups become a column before the
    arithmetic reads them."""
    c = pl.col
    g = f"{out}__g"
    df = df.with_columns(src.str.extract_groups(_DUR).alias(g))

    def f(n: int) -> pl.Expr:
        return c(g).struct.field(str(n))

    def i(e: pl.Expr) -> pl.Expr:
        return e.cast(pl.Int64, strict=False).fill_null(0)

    frac = i(f(9).str.pad_end(3, "0"))
    v3 = (((i(f(1)) * 24 + i(f(2))) * 60 + i(f(3))) * 60 + i(f(4))) * 1000 + frac
    # [D-]MM:SS: the days are whole days (fields.duration_s)
    v2 = ((i(f(5)) * 24 * 60 + i(f(6))) * 60 + i(f(7))) * 1000 + frac
    v1 = i(f(8)) * 1000 + frac
    m3 = f(4).is_not_null()
    m2 = f(7).is_not_null()
    m1 = f(8).is_not_null()
    return df.with_columns(
        pl.when(m3).then(v3).when(m2).then(v2).when(m1).then(v1).alias(out),
        (m3 | m2 | m1).alias(f"{out}_ok")).drop(g)


def _with_size(df: pl.DataFrame, src: pl.Expr, out: str) -> pl.DataFrame:
    """``df`` with ``out`` (bytes) and ``out_ok`` (matched) for ``NNN[KMGTPE]`` sizes in
    ``src`` (a bare number is bytes); the regex runs once (``_with_dur_ms``)."""
    c = pl.col
    g = f"{out}__g"
    df = df.with_columns(src.str.extract_groups(_SIZE).alias(g))
    num = c(g).struct.field("1").cast(pl.Int64, strict=False)
    unit = c(g).struct.field("2").str.to_uppercase().replace_strict(
        _UNIT, default=None, return_dtype=pl.Int64)
    return df.with_columns((num * unit).alias(out),
                           num.is_not_null().alias(f"{out}_ok")).drop(g)


def _salted(salt_nl: bytes) -> hashlib.blake2b:
    """blake2b-128 (person ``hpcb-raw``) that has read the salt and its newline: a
    copy of it per group digests ``salt_nl + text`` without the concatenation, and
    without building the hash's parameters again per group."""
    return hashlib.blake2b(salt_nl, digest_size=16, person=_PERSON)


def _digest(salted: hashlib.blake2b, text: str) -> bytes:
    h = salted.copy()
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.digest()


def _tz_name(tz: tzinfo) -> str | None:
    if tz is UTC:
        return "UTC"
    key = getattr(tz, "key", None)
    return key if isinstance(key, str) else None


class _History:
    """The raw lines of the reader's last ``HISTORY_GROUPS`` groups, for a step whose job
    line was in an earlier chunk (§8): the chunks' groups as frames (head, line_no, line),
    oldest first, read only when such a step asks (rare). Like ``rollup_steps``' buffer
    of the last 4,096 job records, it counts groups, not distinct JobIDRaws: a job is
    found while its newest group is among the last ``HISTORY_GROUPS``."""

    _SCHEMA = pl.Schema({"head": pl.Int64(), "line_no": pl.List(pl.Int64()),
                         "line": pl.List(pl.String())})

    def __init__(self) -> None:
        self._frames: deque[pl.DataFrame] = deque()

    def add(self, groups: pl.DataFrame) -> None:
        frames = self._frames
        frames.append(groups)
        while len(frames) > 1 and sum(f.height for f in frames) - frames[0].height \
                >= HISTORY_GROUPS:
            frames.popleft()

    def _newest(self, head: int, window: int = HISTORY_GROUPS) -> tuple[int, int] | None:
        """(frame index, row) of ``head``'s newest group among the last ``window``."""
        seen = 0
        for i in range(len(self._frames) - 1, -1, -1):
            if seen >= window:
                return None
            f = self._frames[i]
            rows = f.with_row_index("_row").filter(
                (pl.col("head") == head)
                & (pl.col("_row") >= max(f.height - (window - seen), 0)))["_row"]
            if rows.len():
                return i, int(rows[-1])
            seen += f.height
        return None

    def get(self, head: int, groups_since: int = 0) -> tuple[list[int], list[str]] | None:
        """``head``'s newest group (line numbers, lines) if it is among the last
        HISTORY_GROUPS groups, counting ``groups_since`` later ones not added yet."""
        at = self._newest(head, HISTORY_GROUPS - groups_since)
        if at is None:
            return None
        row = self._frames[at[0]].row(at[1], named=True)
        return list(row["line_no"]), list(row["line"])

    def replace(self, head: int, line_nos: list[int], lines: list[str]) -> None:
        """``head``'s newest group now holds these lines (a late step joined it)."""
        at = self._newest(head)
        assert at is not None
        i, r = at
        f = self._frames[i]
        new = pl.DataFrame({"head": [head], "line_no": [line_nos], "line": [lines]},
                           schema=self._SCHEMA)
        self._frames[i] = pl.concat([f.slice(0, r), new, f.slice(r + 1)])


class ColumnarReader:
    """``sacct --parsable2`` lines -> Chunks (module docstring).

    ``parser`` is today's per-record reader with the same settings: it reads the
    fallback units and owns the counters the run reports (``unknown_states``,
    ``fallbacks``, ``duplicates_skipped``, ``ignored_columns``).
    """

    def __init__(self, parser: ParsableParser, *, chunk_lines: int = CHUNK_LINES) -> None:
        self.parser = parser
        self.chunk_lines = chunk_lines
        self.delimiter = parser.delimiter
        self.columns = list(parser.columns)
        self.ncols = len(self.columns)
        self.source = parser.source
        self.default_cluster = parser.default_cluster
        self.tzname = _tz_name(parser.tz)
        used = {_CANONICAL[c.strip().lower()] for c in self.columns
                if c.strip().lower() in _CANONICAL}
        self.vectorizable = (used == set(VECTOR_COLUMNS) and self.tzname is not None
                             and len(self.delimiter) >= 1)
        canon = {n.lower(): n for n in VECTOR_COLUMNS}
        self.field_names: list[str] = []
        seen: set[str] = set()
        for i, c in enumerate(self.columns):
            name = canon.get(c.strip().lower())
            if name is None or name in seen:
                name = f"_ignored{i}"
            seen.add(name)
            self.field_names.append(name)
        self._ignored = [n for n in self.field_names if n.startswith("_ignored")]
        self.salted = _salted(parser._digest_salt() + b"\n")
        # Raw lines of the last HISTORY_GROUPS groups (§8).
        self._history = _History()
        self.vector_jobs = 0
        self.fallback_jobs = 0
        self.reemitted = 0

    # ------------------------------------------------------------------ chunking

    def chunks(self, lines: Iterable[str], *, first_line_no: int = 1,
               unchanged: UnchangedLookup | None = None) -> Iterator[Chunk]:
        """Read ``lines`` (without their newline) in chunks. ``unchanged``: the skip
        stage's lookup (None: no skip path, and, as in the per-record path, no digests)."""
        self._lookup = unchanged
        if not self.vectorizable:
            yield from self._records_only(lines, first_line_no, unchanged)
            return
        it = iter(lines)
        carry: list[str] = []
        line_no = first_line_no
        while True:
            batch = carry
            want = len(batch) + self.chunk_lines
            batch.extend(islice(it, self.chunk_lines))
            eof = len(batch) < want
            if not batch:
                return
            chunk, consumed = self._chunk(batch, line_no, eof)
            carry = batch[consumed:]
            line_no += consumed
            if chunk is not None:
                yield chunk
            if eof and not carry:
                return
            if eof:
                # the held-back group had nowhere to go: read it now, as the end
                chunk, consumed = self._chunk(carry, line_no, True)
                if chunk is not None:
                    yield chunk
                return

    def _records_only(self, lines: Iterable[str], first_line_no: int,
                      unchanged: UnchangedLookup | None) -> Iterator[Chunk]:
        """The per-record path over the whole stream (columns the vector path does not
        read), as chunks of jobs."""
        items = self.parser.parse_lines(lines, first_line_no=first_line_no,
                                        unchanged=unchanged)
        for chunk in chunks_from_items(items, source=self.source,
                                       jobs_per_chunk=self.chunk_lines // 4):
            self.fallback_jobs += chunk.fallback_jobs
            yield chunk

    def _chunk(self, batch: list[str], first_line_no: int, eof: bool
               ) -> tuple[Chunk | None, int]:
        c = pl.col
        d = self.delimiter
        n = len(batch)
        df = pl.DataFrame({"line": pl.Series("line", batch, dtype=pl.String)}).with_columns(
            (pl.int_range(pl.len(), dtype=pl.Int64) + first_line_no).alias("line_no"))
        pos = {name: self.field_names.index(name) for name in ("JobID", "JobIDRaw", "Cluster")}
        head3 = max(pos.values())
        names3 = [f"_p{i}" for i in range(head3 + 1)]
        df = df.with_columns(
            (c("line").str.count_matches(d, literal=True) == self.ncols - 1).alias("ok"),
            (c("line").str.len_bytes() == 0).alias("blank"),
            c("line").str.split_exact(d, head3).struct.rename_fields(names3).alias("p"),
        ).with_columns(
            c("p").struct.field(f"_p{pos['JobID']}").alias("p_jobid"),
            c("p").struct.field(f"_p{pos['JobIDRaw']}").alias("p_raw"),
            c("p").struct.field(f"_p{pos['Cluster']}").alias("p_cluster"),
        ).drop("p")
        df = df.with_columns(
            (c("ok") & (c("p_raw").str.contains(".", literal=True)
                        | c("p_jobid").str.contains(".", literal=True))).alias("is_step"))
        df = df.with_columns((c("ok") & ~c("is_step")).alias("is_job"))
        df = df.with_columns(c("is_job").cast(pl.Int64).cum_sum().alias("grp"))
        peek: str | None = None
        if not eof:
            last = df["grp"].max()
            if (not isinstance(last, int) or last <= 1) and n < 16 * self.chunk_lines:
                # fewer than two job lines: read them with the next lines (or at the end)
                return None, 0
            if isinstance(last, int) and last > 1:
                cut = int(df.filter(c("grp") == last)["line_no"].min()) - first_line_no  # type: ignore[arg-type]
                peek = batch[cut]
                df = df.slice(0, cut)
        consumed = df.height
        self._batch, self._batch_first = batch, first_line_no
        chunk = self._groups(df, peek)
        return chunk, consumed

    # ------------------------------------------------------------------ skip stage

    def _preskip(self, df: pl.DataFrame, lookup: UnchangedLookup) -> tuple[pl.DataFrame, int]:
        """Drop the groups stored from exactly these lines (today's digest and rules:
        ``ParsableParser._parse_skipping``)."""
        c = pl.col
        head = c("p_raw").str.split_exact(".", 1).struct.field("field_0")
        dc = self.default_cluster or ""
        jl = df.filter(c("is_job")).select(
            "grp", c("p_raw").alias("g_rawtxt"),
            pl.when(c("p_cluster") == "").then(pl.lit(dc)).otherwise(c("p_cluster"))
            .alias("g_cl"))
        x = df.join(jl, on="grp", how="left").with_columns(
            pl.when(c("p_cluster") == "").then(pl.lit(dc)).otherwise(c("p_cluster"))
            .alias("l_cl"))
        # heads of steps that are not in their job's group ("loose"): their jobs are
        # parsed in full, so the steps find them
        loose = x.filter(c("is_step") & (head != c("g_rawtxt")).fill_null(True)).select(
            head.alias("g_rawtxt")).unique()
        groups = x.filter(c("grp") > 0).group_by("grp", maintain_order=True).agg(
            (c("blank") | (c("ok") & (~c("is_step") | ((head == c("g_rawtxt"))
                                                       & (c("l_cl") == c("g_cl"))))))
            .all().alias("cand"),
            c("g_rawtxt").first().alias("raw"), c("g_cl").first().alias("cl"))
        groups = groups.with_columns(
            (c("cand") & c("raw").str.contains(r"^[0-9]{1,18}$")
             & ~c("raw").is_in(loose["g_rawtxt"].implode())).alias("cand"))
        good = df.join(groups.filter(c("cand")).select("grp"), on="grp",
                       how="semi").filter(~c("blank"))
        if not good.height:
            return df, 0
        # a group's text is its lines joined: sliced from the chunk's list of lines
        # when they are consecutive (no blank line among them), else joined here
        spans = good.group_by("grp").agg(c("line_no").min().alias("a"),
                                         c("line_no").max().alias("b"), pl.len().alias("n"))
        batch, first = self._batch, self._batch_first
        salted = self.salted
        by_grp: dict[int, bytes] = {}
        broken: list[int] = []
        for g, a, b, n in spans.iter_rows():
            if b - a + 1 == n:
                by_grp[g] = _digest(salted, "\n".join(batch[a - first:b - first + 1]))
            else:
                broken.append(g)
        if broken:
            for g, text in good.filter(c("grp").is_in(broken)).group_by("grp").agg(
                    c("line").str.join("\n")).iter_rows():
                by_grp[g] = _digest(salted, text)
        cand = groups.filter(c("cand"))
        grps = cand["grp"].to_list()
        digests = [by_grp[g] for g in grps]
        hexes = [d.hex() for d in digests]
        asks = list(zip(cand["cl"].to_list(), map(int, cand["raw"].to_list()), hexes,
                        strict=True))
        digest_of = dict(zip(grps, hexes, strict=True))
        self._pre_digests = dict(zip(grps, digests, strict=True))
        stored = lookup.stored(asks)
        if not stored:
            return df, 0
        skip: list[int] = []
        marks = self.parser.skipped_digests
        grps_all = groups["grp"].to_list()
        raws = groups["raw"].to_list()
        cls = groups["cl"].to_list()
        keys = [hash(k) for k in zip(cls, raws, strict=True)]
        was_emitted = self.parser.emitted_keys.contains_many(keys)
        found_all = [digest_of.get(g) for g in grps_all]
        known_marks = marks.contains_many([hash(f) for f in found_all])
        new_marks: set[int] = set()
        here: set[int] = set()            # keys of this chunk's groups that are not skipped
        for g, raw, cl, key, found, emitted, known in zip(
                grps_all, raws, cls, keys, found_all, was_emitted, known_marks, strict=True):
            if found is not None and found in stored and not emitted and key not in here:
                skip.append(g)
                lookup.skipped(cl)
                mark = hash(found)
                if known or mark in new_marks:
                    self.parser.duplicates_skipped += 1
                else:
                    new_marks.add(mark)
            elif raw is not None:
                here.add(key)
        marks.update(new_marks)
        if skip:
            df = df.filter(~c("grp").is_in(skip))
        return df, len(skip)

    # ------------------------------------------------------------------ the groups

    def _groups(self, df: pl.DataFrame, peek: str | None) -> Chunk:
        """One chunk of whole job groups -> Chunk (the lookup was set by ``chunks``)."""
        lookup = self._lookup
        skipped = 0
        self._pre_digests = {}
        # Job lines before the skip stage: a fallback unit's look-ahead is the line that
        # follows it in the input, also when that line's group is skipped.
        self._job_lines = df.filter(pl.col("is_job")).select("line_no", "line")
        if lookup is not None:
            df, skipped = self._preskip(df, lookup)
        c = pl.col
        if not df.height or bool(df["blank"].all()):
            return Chunk(jobs=pl.DataFrame(schema=CHUNK_SCHEMA), skipped=skipped)
        d = self.delimiter
        df = df.drop("p_jobid", "p_raw", "p_cluster").with_columns(
            c("line").str.split_exact(d, self.ncols - 1)
            .struct.rename_fields(self.field_names).alias("f")).unnest("f")
        if self._ignored:
            df = df.drop(self._ignored)
        chunk = self._vector(df, peek)
        chunk.skipped = skipped
        return chunk

    _lookup: UnchangedLookup | None = None
    _batch: list[str] = []                 # noqa: RUF012 - the chunk's lines, replaced per chunk
    _batch_first = 1
    _pre_digests: dict[int, bytes] = {}    # noqa: RUF012 - replaced per chunk, never mutated
    _job_lines: pl.DataFrame = pl.DataFrame()

    # ------------------------------------------------------------------ per record

    def _python_records(self, lines: list[str], first_line_no: int, peek: str | None,
                        skip: bool = True
                        ) -> tuple[list[JobRecord], list[QuarantinedRecord]]:
        """Today's path over ``lines`` (consecutive from ``first_line_no``). ``peek``:
        the job line that follows them in the input, given to the parser so that it sees
        what it sees in the whole stream, and its record dropped again."""
        parser = self.parser
        lookup = self._lookup if skip else None
        src = lines + ([peek] if peek is not None else [])
        peek_key: tuple[str, str] | None = None
        was_emitted = True
        if peek is not None and lookup is not None:
            # The look-ahead line is the next unit's: the skip path must neither skip
            # it here (nor count it) nor remember it as met.
            f = peek.split(self.delimiter)
            pos = self.field_names.index
            peek_key = ((f[pos("Cluster")] or self.default_cluster or ""),
                        f[pos("JobIDRaw")])
            was_emitted = hash(peek_key) in parser.emitted_keys
            lookup = _NotThe(lookup, (peek_key[0], peek_key[1]))
        items: list[Item] = list(parser.parse_lines(src, first_line_no=first_line_no,
                                                    unchanged=lookup))
        if peek_key is not None and not was_emitted:
            parser.emitted_keys.discard(hash(peek_key))
        if peek is not None and items:
            # the peek's own record is the next unit's: drop it (a job line's record,
            # or its quarantine when it does not convert)
            last = items[-1]
            peek_no = first_line_no + len(lines)
            peek_id = peek.split(self.delimiter, 1)[0]
            if ((isinstance(last, JobRecord) and last.job_id == peek_id)
                    or (isinstance(last, QuarantinedRecord | StepUsage)
                        and last.line_no == peek_no)):
                items.pop()
        jobs: list[JobRecord] = []
        quarantined: list[QuarantinedRecord] = []
        for item in rollup_steps(items, source=self.source):
            if isinstance(item, JobRecord):
                jobs.append(item)
            else:
                quarantined.append(item)
        return jobs, quarantined

    # ------------------------------------------------------------------ vector path

    def _vector(self, df: pl.DataFrame, peek: str | None) -> Chunk:
        c = pl.col
        tz = self.tzname
        assert tz is not None
        dc = self.default_cluster

        # ---- values every line has
        elapsed_num = c("ElapsedRaw").str.contains(r"^[0-9]{1,12}$")
        elapsed = (pl.when(elapsed_num).then(c("ElapsedRaw").cast(pl.Int64, strict=False))
                   .when(c("ElapsedRaw").is_in(SENT)).then(0))
        energy, energy_bad = _opt_int(c("ConsumedEnergyRaw"))
        dbi, dbi_bad = _opt_int(c("DBIndex"))
        df = _with_dur_ms(df, c("TotalCPU"), "t_tot")
        tot_ms, tot_ok = c("t_tot"), c("t_tot_ok")
        tot_sent = c("TotalCPU").is_in(SENT)
        cluster = pl.when(c("Cluster") == "").then(pl.lit(dc, pl.String)).otherwise(c("Cluster"))
        df = df.with_columns(
            elapsed.alias("v_elapsed"), energy.alias("v_energy"), dbi.alias("v_dbi"),
            pl.when(tot_sent).then(None).otherwise(tot_ms).alias("v_cpu_ms"),
            cluster.alias("v_cluster"),
            (elapsed.is_null() | energy_bad | dbi_bad | (~tot_sent & ~tot_ok)
             | cluster.is_null()).alias("bad"),
        ).drop("t_tot", "t_tot_ok", *_EVERY_LINE_READ)

        # State: today's read_state over the distinct values; an unknown state (counted,
        # kept, never final) is the per-record path's.
        srows: list[tuple[str, str | None, bool]] = []
        for raw in df.filter(c("ok"))["State"].unique().to_list():
            try:
                st, known = read_state(raw)
                srows.append((raw, st, known))
            except Exception:  # noqa: BLE001 - an unreadable state is the fallback's
                srows.append((raw, None, False))
        sdf = pl.DataFrame(srows, schema={"State": pl.String, "v_state": pl.String,
                                          "state_ok": pl.Boolean}, orient="row")
        df = df.join(sdf, on="State", how="left").with_columns(
            (c("bad") | (c("ok") & ~c("state_ok").fill_null(False))).alias("bad"))

        jdf = df.filter(c("is_job"))
        df = df.filter(~c("is_job"))

        # ---- step lines
        raw_head = c("JobIDRaw").str.split_exact(".", 1).struct.field("field_0")
        step_name = pl.when(c("JobIDRaw").str.contains(".", literal=True)).then(
            c("JobIDRaw").str.split_exact(".", 1).struct.field("field_1")).otherwise(
            c("JobID").str.split_exact(".", 1).struct.field("field_1"))
        df = df.with_columns(
            c("TRESUsageInTot").str.extract(r"(?:^|,)mem=([^,]*)", 1).alias("t_mem_txt"),
            c("TRESUsageInTot").str.extract(r"(?:^|,)cpu=([^,]*)", 1).alias("t_cpu_txt"))
        df = _with_size(df, c("MaxRSS"), "t_rss")
        df = _with_size(df, c("t_mem_txt"), "t_tmem")
        df = _with_dur_ms(df, c("t_cpu_txt"), "t_tcpu")
        rss, rss_ok = c("t_rss"), c("t_rss_ok")
        tres_mem_txt = c("t_mem_txt")
        tmem, tmem_ok = c("t_tmem"), c("t_tmem_ok")
        tres_cpu_txt = c("t_cpu_txt")
        tcpu, tcpu_ok = c("t_tcpu"), c("t_tcpu_ok")
        use_tres_cpu = (c("v_cpu_ms").is_null() & (c("TRESUsageInTot") != "")
                        & tres_cpu_txt.is_not_null())
        df = df.with_columns(
            pl.when(c("is_step")).then(raw_head.cast(pl.Int64, strict=False)).alias("s_head"),
            pl.when(c("MaxRSS").is_in(SENT)).then(None).otherwise(rss).alias("s_rss"),
            pl.when((c("TRESUsageInTot") != "") & tres_mem_txt.is_not_null()).then(tmem)
            .alias("s_mem"),
            pl.when(use_tres_cpu).then(tcpu).otherwise(c("v_cpu_ms")).alias("s_cpu"),
            (c("is_step") & (
                ~raw_head.str.contains(r"^[0-9]{1,18}$").fill_null(False)
                | (step_name.fill_null("") == "")
                | (~c("MaxRSS").is_in(SENT) & ~rss_ok)
                | ((c("TRESUsageInTot") != "") & tres_mem_txt.is_not_null() & ~tmem_ok)
                | (use_tres_cpu & ~tcpu_ok))).alias("s_bad"),
        ).with_columns((c("bad") | c("s_bad")).alias("bad")).drop(
            "t_mem_txt", "t_cpu_txt", "t_rss", "t_rss_ok", "t_tmem", "t_tmem_ok", "t_tcpu",
            "t_tcpu_ok", *_STEP_READ)

        # ---- job lines
        tl, tl_bad = _opt_int(c("TimelimitRaw"))
        uid, uid_bad = _opt_int(c("UID"))
        cta_num = c("CPUTimeRAW").str.contains(r"^[0-9]{1,18}$")
        cta = pl.when(cta_num).then(c("CPUTimeRAW").cast(pl.Int64, strict=False))
        cta_bad = ~cta_num & ~c("CPUTimeRAW").is_in(SENT)
        jid = c("JobID")
        plain = jid.str.contains(r"^[0-9]{1,18}$")
        arr = jid.str.extract_groups(r"^([0-9]{1,18})_([0-9]{1,9})$")
        arr_pending = jid.str.extract(r"^([0-9]{1,18})_\[.*\]$", 1)
        het = jid.str.extract_groups(r"^([0-9]{1,18})\+([0-9]{1,9})$")
        jid_ok = (plain | arr.struct.field("1").is_not_null() | arr_pending.is_not_null()
                  | het.struct.field("1").is_not_null())
        raw_ok = c("JobIDRaw").str.contains(r"^[0-9]{1,18}$")
        times: dict[str, pl.Expr] = {}
        tbad = pl.lit(False)
        for col in ("Submit", "Eligible", "Start", "End"):
            v, b = self._time(c(col), tz)
            times[col] = v
            tbad = tbad | b
        jdf = jdf.with_columns(
            times["Submit"].alias("v_submit"), times["Eligible"].alias("v_eligible"),
            times["Start"].alias("v_start"), times["End"].alias("v_end"),
            tl.alias("v_tl"), uid.alias("v_uid"), cta.alias("v_cta"),
            pl.when(plain).then(None).otherwise(
                pl.coalesce(arr.struct.field("1"), arr_pending)).cast(pl.Int64).alias("v_arr"),
            arr.struct.field("2").cast(pl.Int64).alias("v_task"),
            het.struct.field("1").cast(pl.Int64).alias("v_het"),
            het.struct.field("2").cast(pl.Int64).alias("v_hoff"),
            (tl_bad | uid_bad | cta_bad | ~jid_ok | ~raw_ok | tbad).alias("j_bad"),
        )
        jdf = jdf.with_columns(
            (c("bad") | c("j_bad") | c("v_submit").is_null()).alias("bad"))

        # AllocTRES: today's parse_alloc_tres over the distinct values.
        arows: list[tuple[str, int | None, int | None, int | None, int | None, str | None,
                          int | None, bool]] = []
        for text in jdf["AllocTRES"].unique().to_list():
            try:
                cpus, nodes, mem, billing, gpus = parse_alloc_tres(text)
                arows.append((text, cpus, nodes, mem, billing, gpus_key(gpus),
                              sum(g for _, g in gpus), True))
            except Exception:  # noqa: BLE001 - an unreadable AllocTRES is the fallback's
                arows.append((text, None, None, None, None, None, None, False))
        adf = pl.DataFrame(arows, schema={
            "AllocTRES": pl.String, "a_cpus": pl.Int64, "a_nodes": pl.Int64,
            "a_mem": pl.Int64, "a_billing": pl.Int64, "a_gpus": pl.String,
            "a_gpu_n": pl.Int64, "a_ok": pl.Boolean}, orient="row")
        # A job that ran (a NodeList and a Start: ParsableParser._ran) without cpu or
        # node in AllocTRES takes NCPUS/NNodes/NodeList (the parser's fallbacks, counted
        # there); a count past COUNT_MAX is quarantined there.
        ran = ~c("NodeList").is_in(SENT) & c("v_start").is_not_null()
        jdf = jdf.join(adf, on="AllocTRES", how="left").with_columns(
            (c("bad") | ~c("a_ok").fill_null(False)
             | (ran & ((c("a_cpus") == 0) | (c("a_nodes") == 0)))
             | (pl.max_horizontal("a_cpus", "a_nodes", "a_gpu_n") > COUNT_MAX)
             ).alias("bad")).drop(*_JOB_READ)

        # job lines first, then the other lines: within a group its job line comes first
        # and its steps follow in input order (what the digests and roll-up read); the
        # per-record units below are sorted back into input order
        df = pl.concat([jdf, df], how="diagonal_relaxed")

        # ---- groups: clean = every line ok and readable, steps belong to the job line
        job_cols = df.filter(c("is_job")).select(
            "grp", c("JobIDRaw").cast(pl.Int64, strict=False).alias("g_raw"),
            c("v_cluster").alias("g_cluster"), c("v_dbi").alias("g_dbi"))
        df = df.join(job_cols, on="grp", how="left")
        step_fit = (c("s_head") == c("g_raw")) & (c("v_cluster") == c("g_cluster")) & (
            c("v_dbi").is_null() | (c("g_dbi").is_not_null() & (c("v_dbi") == c("g_dbi"))))
        df = df.with_columns(
            (~c("blank") & (
                ~c("ok") | c("bad") | (c("grp") == 0)
                | (c("is_step") & ~step_fit.fill_null(False)))).alias("line_bad"))
        misplaced = df.filter(c("is_step") & ~(c("s_head") == c("g_raw")).fill_null(False)
                              & c("ok")).select("grp", "line_no", "s_head")
        grp_bad = df.group_by("grp").agg(c("line_bad").any().alias("grp_bad"))
        units: dict[int, int] = {}
        history_for: dict[int, int] = {}     # unit -> JobIDRaw whose old lines lead it
        old_groups: dict[int, tuple[list[int], list[str]]] = {}   # JobIDRaw -> its lines
        if misplaced.height:
            # job lines, and lines that look like one (an over-long job line the parser
            # repairs into its free-text column)
            heads = df.filter(_looks_like_job()).select(
                "grp", "line_no", c("JobIDRaw").cast(pl.Int64, strict=False).alias("s_head"))
            spans: list[tuple[int, int, int | None]] = []
            for g_step, ln, head in misplaced.iter_rows():
                cands = heads.filter((c("s_head") == head) & (c("line_no") < ln))
                if cands.height:
                    spans.append((int(cands["grp"].max()), g_step, None))  # type: ignore[arg-type]
                else:
                    # this chunk's groups above the step count toward the kept ones
                    found = None if head is None else self._history.get(
                        head, heads.filter((c("line_no") < ln)
                                           & c("s_head").is_not_null()).height)
                    if found is not None:
                        old_groups[head] = found
                    spans.append((g_step, g_step, head if found is not None else None))
            spans.sort(key=lambda s: (s[0], s[1]))
            merged: list[list[Any]] = []
            for g0, g1, hist in spans:
                if merged and g0 <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], g1)
                    if hist is not None and merged[-1][2] is None and g0 == merged[-1][0]:
                        merged[-1][2] = hist
                else:
                    merged.append([g0, g1, hist])
            for g0, g1, hist in merged:
                for g in range(g0, g1 + 1):
                    units[g] = g0
                if hist is not None:
                    history_for[g0] = hist
            grp_bad = grp_bad.with_columns(
                (c("grp_bad") | c("grp").is_in(list(units))).alias("grp_bad"))
        df = df.join(grp_bad, on="grp", how="left")

        if self._lookup is not None:
            # the vector groups are met (not skipped): a later copy of one of them is
            # never skipped (ParsableParser.emitted_keys)
            met = df.filter(c("is_job") & ~c("grp_bad"))
            self.parser.emitted_keys.update(map(hash, zip(
                met["v_cluster"].to_list(), met["JobIDRaw"].to_list(), strict=True)))

        # ---- the per-record path, unit by unit, in input order
        quarantined: list[QuarantinedRecord] = []
        fb_frames: list[pl.DataFrame] = []
        fb = df.filter(c("grp_bad")).sort("line_no")
        nfb_groups = 0
        nfb_jobs = 0
        if fb.height:
            unit = (c("grp").replace_strict(units, default=c("grp"), return_dtype=pl.Int64)
                    if units else c("grp"))
            fb = fb.with_columns(unit.alias("unit"))
            nxt = self._job_lines
            for (u,), part in fb.group_by(["unit"], maintain_order=True):
                nfb_groups += 1
                after = nxt.filter(c("line_no") > part["line_no"].max()).head(1)
                ahead = after["line"][0] if after.height else peek
                lines = part["line"].to_list()
                first = int(part["line_no"][0])
                hist = history_for.get(int(u)) if isinstance(u, int) else None
                nos = part["line_no"].to_list()
                if hist is not None:
                    old_nos, old_lines = old_groups[hist]
                    # the old group first, then this unit: re-parsed without the skip
                    # stage, its job is emitted again with the late step attached
                    all_nos = old_nos + nos
                    jobs, q = self._python_records(old_lines + lines, all_nos[0], ahead,
                                                   skip=False)
                    q = [_renumber(x, all_nos) for x in q]
                    mine = set(nos)
                    q = [x for x in q if x.line_no is None or x.line_no in mine]
                    # the job's group now holds its late steps (not the unit's other
                    # jobs: a later step of this job re-parses only this job's lines)
                    late = part.filter(c("is_step") & (c("s_head") == hist))
                    old_groups[hist] = (old_nos + late["line_no"].to_list(),
                                        old_lines + late["line"].to_list())
                    self._history.replace(hist, *old_groups[hist])
                    self.reemitted += sum(1 for j in jobs if j.job_id_raw == hist)
                else:
                    jobs, q = self._python_records(lines, first, ahead)
                    q = [_renumber(x, nos) for x in q]
                nfb_jobs += len(jobs)
                quarantined.extend(q)
                if jobs:
                    fb_frames.append(records_frame(jobs).with_columns(
                        pl.lit(first, pl.Int64).alias("order"),
                        (pl.col("job_id_raw") == hist if hist is not None
                         else pl.lit(False)).alias("reemitted")))
        good = df.filter(~c("grp_bad") & ~c("blank"))
        self._remember(good, fb)

        # ---- digests of the vector groups: the skip stage's for the same lines, the
        # others (a group it did not ask about) from their lines here
        jobs_df = good.filter(c("is_job"))
        pre = dict(self._pre_digests)
        self._pre_digests = {}
        if self._lookup is not None:
            groups = jobs_df["grp"].to_list()
            missing = [g for g in groups if g not in pre]
            if missing:
                salted = self.salted
                for g, text in good.filter(c("grp").is_in(missing)).group_by(
                        "grp", maintain_order=True).agg(
                        c("line").str.join("\n")).iter_rows():
                    pre[g] = _digest(salted, text)
            digests = pl.Series("raw_digest", [pre[g] for g in groups], dtype=pl.Binary)
        else:
            digests = pl.Series("raw_digest", [None] * jobs_df.height, dtype=pl.Binary)
        jobs_df = jobs_df.with_columns(digests)

        # ---- roll the steps up (steps sit right after their job line)
        steps = good.filter(c("is_step")).group_by("grp").agg(
            c("s_rss").max().alias("r_rss"),
            pl.when(c("s_mem").is_not_null()).then(
                c("s_mem").cast(pl.Int128) * c("v_elapsed").cast(pl.Int128)).sum()
            .alias("r_mem_sum"),
            c("s_mem").is_not_null().any().alias("r_mem_any"),
            c("s_cpu").sum().alias("r_cpu"), c("s_cpu").is_not_null().any().alias("r_cpu_any"),
            c("v_energy").sum().alias("r_energy"),
            c("v_energy").is_not_null().any().alias("r_energy_any"),
        )
        jobs_df = jobs_df.join(steps, on="grp", how="left")
        # final: today's is_final_record on the distinct (state, has End)
        fin = jobs_df.select("v_state", c("v_end").is_null().alias("no_end")).unique()
        fin = fin.with_columns(pl.Series("v_final", [
            is_final_record(s, None if ne else _SOME_END)
            for s, ne in fin.iter_rows()], dtype=pl.Boolean))
        jobs_df = jobs_df.with_columns(c("v_end").is_null().alias("no_end")).join(
            fin, on=["v_state", "no_end"], how="left")
        frame = jobs_df.select(
            c("v_cluster").alias("cluster"), c("JobID").alias("job_id"),
            c("g_raw").alias("job_id_raw"), c("v_submit").alias("submit"),
            c("v_state").alias("state"), c("State").alias("state_raw"),
            c("v_arr").alias("array_job_id"), c("v_task").alias("array_task_id"),
            c("v_het").alias("het_job_id"), c("v_hoff").alias("het_job_offset"),
            pl.when(c("JobName") == "").then(None).otherwise(c("JobName")).alias("name"),
            _opt_str(c("User")).alias("user"), c("v_uid").alias("uid"),
            _opt_str(c("Group")).alias("group"), _opt_str(c("Account")).alias("account"),
            _opt_str(c("Partition")).alias("partition"), _opt_str(c("QOS")).alias("qos"),
            _opt_str(c("WCKey")).alias("wckey"), _opt_str(c("Reservation")).alias("reservation"),
            pl.when(c("ExitCode") == "").then(None).otherwise(c("ExitCode")).alias("exit_code"),
            pl.when(c("DerivedExitCode") == "").then(None).otherwise(c("DerivedExitCode"))
            .alias("derived_exit_code"),
            c("v_eligible").alias("eligible"), c("v_start").alias("start"),
            c("v_end").alias("end"), c("v_elapsed").alias("elapsed_s"),
            c("v_tl").alias("timelimit_min"), c("a_nodes").alias("nodes"),
            c("a_cpus").alias("cpus"), c("a_mem").alias("mem_bytes"),
            c("a_billing").alias("billing"), c("a_gpus").alias("gpus"),
            _opt_str(c("NodeList")).alias("node_list"), c("v_cta").alias("cpu_time_alloc_s"),
            pl.when(c("v_cpu_ms").is_not_null()).then(c("v_cpu_ms"))
            .when(c("r_cpu_any").fill_null(False)).then(c("r_cpu")).alias("cpu_used_ms"),
            c("r_rss").alias("max_rss_bytes"),
            pl.when(c("r_mem_any").fill_null(False)).then(c("r_mem_sum")).cast(pl.Int128)
            .alias("mem_used_byte_s"),
            pl.when(c("v_energy").is_not_null()).then(c("v_energy"))
            .when(c("r_energy_any").fill_null(False)).then(c("r_energy")).alias("energy_j"),
            c("v_dbi").alias("db_index"), c("v_final").alias("final"), "raw_digest",
            c("line_no").alias("order"), pl.lit(False).alias("reemitted"),
        ).cast(CHUNK_SCHEMA)
        out = pl.concat([frame, *[f.cast(CHUNK_SCHEMA) for f in fb_frames]],
                        how="vertical").sort("order", maintain_order=True)
        self.vector_jobs += frame.height
        self.fallback_jobs += nfb_jobs
        return Chunk(jobs=out, quarantined=quarantined, vector_jobs=frame.height,
                     fallback_jobs=nfb_jobs, fallback_groups=nfb_groups)

    def _remember(self, good: pl.DataFrame, fb: pl.DataFrame) -> None:
        """Keep the raw lines of the chunk's job groups (the last HISTORY_GROUPS) for a
        step that comes in a later chunk (§8). A group here starts at every line that
        looks like a job line (also one the vector path refused)."""
        c = pl.col
        cols = ["line_no", "line", "JobID", "JobIDRaw"]
        parts = [good.select(cols)]
        if fb.height:
            parts.append(fb.filter(~c("blank")).select(cols))
        allg = pl.concat(parts).sort("line_no").with_columns(
            _looks_like_job().alias("head_line"))
        allg = allg.with_columns(
            c("head_line").cast(pl.Int64).cum_sum().alias("hgrp"),
            pl.when(c("head_line")).then(c("JobIDRaw").cast(pl.Int64, strict=False))
            .alias("head"))
        g = allg.filter(c("hgrp") > 0).group_by("hgrp", maintain_order=True).agg(
            c("head").first(), c("line_no"), c("line")).filter(
            c("head").is_not_null()).select("head", "line_no", "line")
        self._history.add(g)

    def _time(self, col: pl.Expr, tz: str) -> tuple[pl.Expr, pl.Expr]:
        """(aware UTC value, bad) for a time column: epoch digits, sentinels,
        ``YYYY-MM-DD[T ]HH:MM:SS`` in the reader's zone."""
        epoch = col.str.contains(r"^[0-9]{1,11}$")
        iso = col.str.contains(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}$")
        parsed = col.str.replace(" ", "T", literal=True).str.strptime(
            pl.Datetime("us"), "%Y-%m-%dT%H:%M:%S", strict=False)
        if tz == "UTC":
            local = parsed.dt.replace_time_zone("UTC")
        else:
            local = parsed.dt.replace_time_zone(tz, ambiguous="earliest",
                                                non_existent="null").dt.convert_time_zone("UTC")
        secs = col.cast(pl.Int64, strict=False)
        from_epoch = pl.when(secs != 0).then(
            (secs * 1_000_000).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"))
        value = pl.when(epoch).then(from_epoch).when(iso).then(local)
        bad = ~col.is_in(SENT) & ~epoch & (~iso | local.is_null())
        return value, bad


_SOME_END = datetime(2000, 1, 1, tzinfo=UTC)


def _looks_like_job() -> pl.Expr:
    """A non-blank line whose JobID and JobIDRaw fields have no step part."""
    c = pl.col
    return (c("JobIDRaw").is_not_null() & (c("JobIDRaw") != "")
            & ~c("JobIDRaw").str.contains(".", literal=True)
            & ~c("JobID").fill_null("").str.contains(".", literal=True))


class _NotThe:
    """An UnchangedLookup that never finds the jobs of one (cluster, JobIDRaw): the
    look-ahead line's, which a fallback unit's parser sees but does not own."""

    def __init__(self, lookup: UnchangedLookup, key: tuple[str, str]) -> None:
        self.lookup = lookup
        self.cluster = key[0]
        self.raw = int(key[1]) if key[1].isdigit() and key[1].isascii() else None

    def stored(self, keys: list[tuple[str, int, str]]) -> set[str]:
        asks = [k for k in keys if (k[0], k[1]) != (self.cluster, self.raw)]
        return self.lookup.stored(asks) if asks else set()

    def skipped(self, cluster: str) -> None:
        self.lookup.skipped(cluster)


def _renumber(q: QuarantinedRecord, line_nos: list[int]) -> QuarantinedRecord:
    """A quarantined record of a unit whose lines need not be consecutive in the input
    (groups dropped by the skip stage, held history): the parser numbered the unit's
    lines from ``line_nos[0]`` on; this gives the record its real line number."""
    if q.line_no is None:
        return q
    idx = q.line_no - line_nos[0]
    if 0 <= idx < len(line_nos) and line_nos[idx] != q.line_no:
        return dataclasses.replace(q, line_no=line_nos[idx])
    return q


# ------------------------------------------------------------------ frames <-> records

def _cpu_ms(value: Decimal | None) -> int | None:
    if value is None:
        return None
    return int(Decimal(value).quantize(Decimal("0.001"), rounding=ROUND_HALF_UP) * 1000)


def records_frame(records: list[JobRecord]) -> pl.DataFrame:
    """JobRecords (the per-record path: fallback units, JSON and pyslurm sources) as a
    JOB_SCHEMA frame (cpu_used_s as stored: milliseconds, half up)."""
    rows = []
    for r in records:
        rows.append((r.cluster, r.job_id, r.job_id_raw, r.submit, r.state, r.state_raw,
                     r.array_job_id, r.array_task_id, r.het_job_id, r.het_job_offset, r.name,
                     r.user, r.uid, r.group, r.account, r.partition, r.qos, r.wckey,
                     r.reservation, r.exit_code, r.derived_exit_code, r.eligible, r.start,
                     r.end, r.elapsed_s, r.timelimit_min, r.nodes, r.cpus, r.mem_bytes,
                     r.billing, gpus_key(r.gpus), r.node_list, r.cpu_time_alloc_s,
                     _cpu_ms(r.cpu_used_s), r.max_rss_bytes, r.mem_used_byte_s, r.energy_j,
                     r.db_index, r.final,
                     bytes.fromhex(r.raw_digest) if r.raw_digest else None))
    try:
        return pl.DataFrame(rows, schema=JOB_SCHEMA, orient="row")
    except Exception as exc:
        raise ValueError(_out_of_range(rows) or str(exc)) from exc


_BOUNDS: dict[pl.DataType, tuple[int, int]] = {pl.Int64(): (-(2 ** 63), 2 ** 63 - 1),
                                               pl.UInt64(): (0, 2 ** 64 - 1)}


def _out_of_range(rows: list[tuple[Any, ...]]) -> str | None:
    """Which value of a record does not fit its bigint column (the store's too: the
    poll fails, as PostgreSQL would have refused the row)."""
    names = list(JOB_SCHEMA)
    for row in rows:
        for name, value in zip(names, row, strict=True):
            bounds = _BOUNDS.get(JOB_SCHEMA[name])
            if type(value) is int and bounds is not None and not bounds[0] <= value <= bounds[1]:
                return f"{name} {value} of job {row[1]} is out of range for type bigint"
    return None


def _utc(value: datetime | None) -> datetime | None:
    """polars gives ZoneInfo('UTC'); the readers give datetime.UTC (same instants; the
    pricer's fast path looks for the latter)."""
    return None if value is None else value.replace(tzinfo=UTC)


def frame_records(df: pl.DataFrame) -> list[JobRecord]:
    """A JOB_SCHEMA frame as JobRecords (cpu_used_s as stored: 3 decimals)."""
    out = []
    names = list(JOB_SCHEMA)
    for row in df.select(names).iter_rows():
        (cluster, job_id, job_id_raw, submit, state, state_raw, array_job_id,
         array_task_id, het_job_id, het_job_offset, name, user, uid, group, account,
         partition, qos, wckey, reservation, exit_code, derived_exit_code, eligible, start,
         end, elapsed_s, timelimit_min, nodes, cpus, mem_bytes, billing, gpus, node_list,
         cpu_time_alloc_s, cpu_ms, max_rss_bytes, mem_used, energy_j, db_index, final,
         digest) = row
        out.append(JobRecord(
            cluster, job_id, job_id_raw, submit.replace(tzinfo=UTC), state, state_raw, array_job_id,
            array_task_id, het_job_id, het_job_offset, name, user, uid, group, account,
            partition, qos, wckey, reservation, exit_code, derived_exit_code, _utc(eligible),
            _utc(start), _utc(end), elapsed_s, timelimit_min, nodes, cpus, mem_bytes, billing,
            gpus_tuple(gpus), node_list, cpu_time_alloc_s,
            None if cpu_ms is None else Decimal(cpu_ms).scaleb(-3), max_rss_bytes,
            None if mem_used is None else int(mem_used), energy_j, db_index, final,
            None if digest is None else digest.hex()))
    return out


def chunks_from_items(items: Iterable[Item], *, source: str,
                      jobs_per_chunk: int = CHUNK_LINES // 4) -> Iterator[Chunk]:
    """The records->frame builder: a per-record source's items (JSON, slurmrestd,
    pyslurm; unrolled, as ``Source.fetch`` yields them) rolled up (``rollup_steps``) and
    framed in chunks, for the same pricer and writer as the text sources."""
    jobs: list[JobRecord] = []
    quarantined: list[QuarantinedRecord] = []
    order = 0

    def chunk() -> Chunk:
        frame = records_frame(jobs).with_columns(
            (pl.int_range(pl.len(), dtype=pl.Int64) + order).alias("order"),
            pl.lit(False).alias("reemitted"))
        return Chunk(jobs=frame, quarantined=list(quarantined), fallback_jobs=len(jobs))

    for item in rollup_steps(items, source=source):
        if isinstance(item, JobRecord):
            jobs.append(item)
        else:
            quarantined.append(item)
        if len(jobs) >= jobs_per_chunk:
            yield chunk()
            order += len(jobs)
            jobs.clear()
            quarantined.clear()
    if jobs or quarantined:
        yield chunk()
