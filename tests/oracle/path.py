"""The per-record path over a whole file, and what it stores (see the package docstring)."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from billing.price import plan_lines, price_job_outcome
from billing.rates import RateCard
from billing.records import JobRecord, QuarantinedRecord, StepUsage
from billing.rollup import rollup_steps
from collector.slurm.fields import REQUIRED_FIELDS
from collector.slurm.jsonparse import check_jobs_document, parse_sacct_json
from collector.slurm.parse import SACCT_DELIMITER, ParsableParser
from collector.slurm.source import SourceError

# What ``jobs`` holds per job (today's columns, readable through the ``jobs`` relation
# before and after the engine's migration), in this order.
JOB_COLUMNS: tuple[str, ...] = (
    "cluster", "job_id_raw", "submit_time", "job_id", "state", "state_raw", "array_job_id",
    "array_task_id", "het_job_id", "het_job_offset", "name", "user_name", "uid", "group_name",
    "account", "partition", "qos", "wckey", "reservation", "exit_code", "derived_exit_code",
    "eligible_time", "start_time", "end_time", "elapsed_s", "timelimit_min", "nodes", "cpus",
    "mem_bytes", "billing_units", "gpus", "gpu_count", "node_list", "cpu_time_alloc_s",
    "cpu_used_s", "max_rss_bytes", "mem_used_byte_s", "energy_j", "db_index", "final",
    "raw_digest",
)
_ATTR = {"submit_time": "submit", "user_name": "user", "group_name": "group",
         "eligible_time": "eligible", "start_time": "start", "end_time": "end",
         "billing_units": "billing"}
# What ``charge_lines`` holds per line (the card by its version, not its surrogate id).
CHARGE_COLUMNS: tuple[str, ...] = (
    "cluster", "job_id_raw", "submit_time", "usage_period", "posted_period", "resource",
    "quantity", "unit", "rate", "amount", "currency", "rule", "rate_card", "basis", "kind",
)
# What ``quarantine`` holds per record (besides its run, cluster and timestamps).
QUARANTINE_COLUMNS: tuple[str, ...] = ("source", "line_no", "job_id", "reason", "raw")

_INT4 = (-(2**31), 2**31 - 1)
_INT8 = (-(2**63), 2**63 - 1)
_INT4_COLUMNS = frozenset({"array_task_id", "het_job_offset", "nodes", "cpus", "gpu_count"})
_INT8_COLUMNS = frozenset({"job_id_raw", "array_job_id", "het_job_id", "uid", "elapsed_s",
                           "timelimit_min", "mem_bytes", "billing_units", "cpu_time_alloc_s",
                           "max_rss_bytes", "energy_j"})
_Q3 = Decimal("0.001")
_Q6 = Decimal("0.000001")
_Q9 = Decimal("0.000000001")

# The columns the sacct source asks for (collector.slurm.sacct.SACCT_FIELDS, copied: that
# module now carries the engine's reader; the differential test checks they are equal).
SACCT_FIELDS: tuple[str, ...] = (
    "JobID", "JobIDRaw", "Cluster", "Partition", "Account", "User", "UID", "Group",
    "QOS", "WCKey", "Reservation", "State", "ExitCode", "DerivedExitCode",
    "Submit", "Eligible", "Start", "End", "ElapsedRaw", "TimelimitRaw",
    "NNodes", "NCPUS", "AllocTRES", "TRESUsageInTot", "CPUTimeRAW", "TotalCPU",
    "MaxRSS", "ConsumedEnergyRaw", "NodeList", "DBIndex", "JobName",
)

_KNOWN_HEADER_HINT = frozenset(name.lower() for name in REQUIRED_FIELDS)
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_BOM = "\ufeff"


class OracleError(Exception):
    """The file cannot be collected at all (the per-record path raised before storing)."""


@dataclass
class OracleResult:
    """What one import of the file leaves in the store, per the per-record path."""

    jobs: dict[tuple[str, int, datetime], dict[str, Any]] = field(default_factory=dict)
    lines: list[tuple[Any, ...]] = field(default_factory=list)       # CHARGE_COLUMNS, sorted
    quarantine: list[tuple[Any, ...]] = field(default_factory=list)  # QUARANTINE_COLUMNS, sorted
    error: str | None = None          # set: nothing is stored (the run fails)
    records: int = 0                  # job records read (duplicates included)
    outcomes: Counter[str] = field(default_factory=Counter)
    # The stored lines per job as billing ChargeLines (for a later import's planning).
    charge_lines: dict[tuple[str, int, datetime], list[Any]] = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        if self.error is not None:
            return "failed"
        if not self.quarantine:
            return "ok"
        return "partial" if self.jobs else "failed"

    def job_rows(self) -> list[tuple[Any, ...]]:
        return sorted((tuple(row[c] for c in JOB_COLUMNS) for row in self.jobs.values()),
                      key=_sort_key)


def _sort_key(row: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple("" if v is None else repr(v) for v in row)


# ------------------------------------------------------------------ reading (per record)

def _split_header(header: str) -> tuple[list[str], str, bool] | None:
    """A sacct header line -> (names, delimiter, trailing delimiter), or None."""
    names = _NAME.findall(header)
    if not names or not any(name.lower() in _KNOWN_HEADER_HINT for name in names):
        return None
    gaps = _NAME.split(header)
    if gaps[0].strip(" "):
        return None
    between = gaps[1:-1]
    if not between:
        return (names, "|", False) if not gaps[-1].strip(" ") else None
    delimiter = between[0]
    if not delimiter or any(gap != delimiter for gap in between):
        return None
    trailing = gaps[-1]
    if trailing not in ("", delimiter):
        return None
    return names, delimiter, trailing == delimiter


class _NothingStored:
    """The digest lookup of a first import: nothing is stored yet (so every job gets the
    raw digest a first import gives it)."""

    def stored(self, keys: list[tuple[str, int, str]]) -> set[str]:
        return set()

    def skipped(self, cluster: str) -> None:  # pragma: no cover - never called
        raise AssertionError("nothing is stored, nothing can be skipped")


def read_items(path: str | os.PathLike[str], *, tz: tzinfo, cluster: str | None,
               name: str) -> Iterator[JobRecord | StepUsage | QuarantinedRecord]:
    """The items of the whole file, as the per-record file source reads them."""
    try:
        handle = open(path, encoding="utf-8-sig", errors="replace", newline="\n")  # noqa: SIM115
    except OSError as exc:
        raise OracleError(f"{name}: cannot open {os.fspath(path)!r}: {exc.strerror}") from exc
    with handle:
        head = handle.read(4096)
        if not head.strip():
            raise OracleError(f"{name}: the file is empty")
        handle.seek(0)
        if head.lstrip()[:1] == "{":
            try:
                doc = json.load(handle)
            except json.JSONDecodeError as exc:
                raise OracleError(f"{name}: not valid JSON: {exc}") from exc
            errors = doc.get("errors") if isinstance(doc, dict) else None
            if errors:
                raise OracleError(f"{name}: the JSON document reports errors: {errors!r}")
            try:
                check_jobs_document(doc)
            except ValueError as exc:
                raise OracleError(f"{name}: {exc}") from None
            yield from parse_sacct_json(doc, source=name, default_cluster=cluster)
            return
        skipped = 0
        header_line = handle.readline()
        while header_line and not header_line.lstrip(_BOM).strip():
            skipped += 1
            header_line = handle.readline()
        header = header_line.rstrip("\r\n").lstrip(_BOM)
        found = _split_header(header)
        if found is None:
            raise OracleError(f"{name}: the first line is not a sacct header")
        columns, delimiter, trailing = found
        if trailing:
            columns = [*columns, ""]
        try:
            parser = ParsableParser(columns, delimiter=delimiter, source=name, tz=tz,
                                    default_cluster=cluster)
        except SourceError as exc:
            raise OracleError(f"{name}: {exc}") from exc
        if not parser.has_cluster_column and not cluster:
            raise OracleError(f"{name}: the file has no Cluster column; pass --cluster")

        def lines() -> Iterator[str]:
            for raw in handle:
                line = raw
                if line.endswith("\n"):
                    line = line[:-1].removesuffix("\r")
                yield line

        yield from parser.parse_lines(lines(), first_line_no=skipped + 2,
                                      unchanged=_NothingStored())


# ------------------------------------------------------------------ what the store holds

def stored_text(value: str | None) -> str | None:
    """Text as a PostgreSQL text column holds it: NUL and lone surrogates become U+FFFD."""
    if value is None:
        return None
    value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return value


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise OracleError(f"naive datetime {value!r}")
    return value.astimezone(UTC)


def as_stored(rec: JobRecord) -> JobRecord:
    """The record as reading it back gives it (cpu_used_s at numeric(18,3), half up)."""
    if rec.cpu_used_s is None:
        return rec
    return replace(rec, cpu_used_s=Decimal(rec.cpu_used_s).quantize(_Q3, rounding=ROUND_HALF_UP))


def job_row(rec: JobRecord) -> dict[str, Any]:
    """``rec`` as its ``jobs`` row (JOB_COLUMNS); OracleError if a value cannot be stored."""
    row: dict[str, Any] = {}
    for col in JOB_COLUMNS:
        if col in ("gpus", "gpu_count", "raw_digest"):
            continue
        value = getattr(rec, _ATTR.get(col, col))
        if isinstance(value, bool) and col != "final":
            raise OracleError(f"{col}: a bool {value!r}")
        if isinstance(value, str):
            value = stored_text(value)
        elif isinstance(value, datetime):
            value = _utc(value)
        row[col] = value
    gpus: dict[str, int] = {}
    for gpu_type, count in rec.gpus:
        gpus[stored_text(gpu_type) or ""] = gpus.get(stored_text(gpu_type) or "", 0) + count
    row["gpus"] = gpus
    row["gpu_count"] = sum(gpus.values())
    row["raw_digest"] = rec.raw_digest
    if row["cpu_used_s"] is not None:
        row["cpu_used_s"] = Decimal(row["cpu_used_s"]).quantize(_Q3, rounding=ROUND_HALF_UP)
    for col in _INT4_COLUMNS | _INT8_COLUMNS:
        lo, hi = _INT4 if col in _INT4_COLUMNS else _INT8
        if row[col] is not None and not lo <= row[col] <= hi:
            raise OracleError(f"{col} {row[col]} does not fit the column")
    if row["db_index"] is not None and not 0 <= row["db_index"] <= 2**64 - 1:
        raise OracleError(f"db_index {row['db_index']} is not an unsigned 64-bit DBIndex")
    for col in ("cluster", "job_id_raw", "submit_time", "job_id", "state", "state_raw",
                "elapsed_s", "nodes", "cpus", "mem_bytes"):
        if row[col] is None:
            raise OracleError(f"{col} is NULL")
    return row


def charge_row(line: Any) -> tuple[Any, ...]:
    """A ``billing.records.ChargeLine`` as its ``charge_lines`` row (CHARGE_COLUMNS)."""
    return (line.cluster, line.job_id_raw, _utc(line.submit), line.usage_period,
            line.posted_period, line.resource,
            Decimal(line.quantity).quantize(_Q6, rounding=ROUND_HALF_UP), line.unit,
            Decimal(line.rate).quantize(_Q9, rounding=ROUND_HALF_UP),
            Decimal(line.amount).quantize(_Q6, rounding=ROUND_HALF_UP),
            line.currency, line.rule, line.rate_card, line.basis, line.kind)


def quarantine_row(item: QuarantinedRecord) -> tuple[Any, ...]:
    return (stored_text(item.source), item.line_no, stored_text(item.job_id),
            stored_text(item.reason), stored_text(item.raw))


def _next_period(period: str) -> str:
    year, month = int(period[:4]), int(period[5:7])
    return f"{year + month // 12:04d}-{month % 12 + 1:02d}"


def _content(row: dict[str, Any]) -> tuple[Any, ...]:
    """A job row without its raw digest (what decides "changed": the digest is not part
    of the record's value)."""
    return tuple(repr(row[c]) for c in JOB_COLUMNS if c != "raw_digest")


def sacct_items(stdout: bytes, *, cluster: str | None
                ) -> Iterator[JobRecord | StepUsage | QuarantinedRecord]:
    """The items of one ``sacct`` run's output as the per-record sacct source reads it
    (collector.slurm.sacct: SACCT_FIELDS, no header, ``\x1f``, epoch times in UTC,
    source "sacct"); lines end only at ``\n`` and are decoded with replacement."""
    if stdout and not stdout.endswith(b"\n"):
        raise OracleError("sacct's output ended in the middle of a line")
    lines = [raw.decode("utf-8", errors="replace") for raw in stdout.split(b"\n")[:-1]]
    parser = ParsableParser(SACCT_FIELDS, delimiter=SACCT_DELIMITER, source="sacct", tz=UTC,
                            default_cluster=cluster)
    yield from parser.parse_lines(lines, unchanged=_NothingStored())


def ingest(path: str | os.PathLike[str] | None, *, tz: tzinfo, cluster: str | None,
           card: RateCard | None, as_of: datetime, before: OracleResult | None = None,
           closed: frozenset[str] = frozenset(), sacct_stdout: bytes | None = None
           ) -> OracleResult:
    """What importing ``path`` leaves in the store: into an empty store, or (``before``)
    into the store a previous import left, with the periods ``closed`` closed since.

    Into a stored state, the per-record path keeps jobs whose record is unchanged (and
    their lines) as they are; a new or changed job gets its lines priced again, lines
    posted in closed periods stay, the rest are planned (``billing.price.plan_lines``:
    corrections posted in the first open period after a closed one). Quarantine is the
    records of this import. ``sacct_stdout`` (with ``path`` None): one sacct run's output
    read as the sacct source reads it, instead of a file."""
    name = "sacct" if path is None else f"file:{Path(path).name}"
    result = OracleResult()
    if before is not None:
        result.jobs = dict(before.jobs)
        result.charge_lines = {k: list(v) for k, v in before.charge_lines.items()}
    records: dict[tuple[str, int, datetime], JobRecord] = {}
    quarantined: list[QuarantinedRecord] = []

    def first_open_after(period: str) -> str:
        candidate = _next_period(period)
        while candidate in closed:
            candidate = _next_period(candidate)
        return candidate

    try:
        items = (sacct_items(sacct_stdout or b"", cluster=cluster) if path is None
                 else read_items(path, tz=tz, cluster=cluster, name=name))
        for item in rollup_steps(items, source=name):
            if isinstance(item, JobRecord):
                result.records += 1
                records[(item.cluster, item.job_id_raw, item.submit)] = item   # last wins
            else:
                quarantined.append(item)
        for key, rec in records.items():
            stored = as_stored(rec)
            row = job_row(stored)
            old = result.jobs.get(key)
            if old is not None and _content(old) == _content(row):
                continue                              # unchanged: not priced again
            result.jobs[key] = row
            if card is None:
                continue
            outcome, desired = price_job_outcome(card, stored, as_of=as_of)
            result.outcomes[outcome] += 1
            kept = [line for line in result.charge_lines.get(key, [])
                    if line.posted_period in closed]
            planned = (plan_lines(desired, kept, closed=closed, first_open_after=first_open_after)
                       if closed else list(desired))
            result.charge_lines[key] = kept + planned
    except (OracleError, ValueError) as exc:
        return OracleResult(error=str(exc))
    result.lines = sorted((charge_row(line) for lines in result.charge_lines.values()
                           for line in lines), key=_sort_key)
    result.quarantine = sorted((quarantine_row(q) for q in quarantined), key=_sort_key)
    return result
