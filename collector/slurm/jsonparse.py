"""Read ``sacct --json`` and slurmrestd ``/slurmdb/v0.0.NN/jobs`` documents into Items.

Design notes: docs/design/slurm.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from billing.records import JobRecord, QuarantinedRecord, StepUsage, is_final_record
from collector.slurm.fields import (
    MB,
    SENTINELS,
    gpu_breakdown,
    normalise_state,
    parse_alloc_tres,
)
from collector.slurm.source import Item

# Data versions this reader was written for (openapi dbv0.0.36..38, data_parser
# v0.0.39..45). Others are read by shape too; stats name them as unknown.
KNOWN_VERSIONS = range(36, 46)

# slurm.h "no value" / "unlimited" sentinels, as unsigned and as int64 (INT64 dumps).
_SENTINEL_INTS = frozenset({0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFE, 0xFFFFFFFFFFFFFFFF})
_INT64_SENTINELS = frozenset({-1, -2})
_INFINITY_TEXT = frozenset({"infinity", "+infinity", "inf", "+inf", "unlimited"})

# job_state_string() (src/common/slurm_protocol_defs.c): a state flag, in this order,
# names the state before the base state does.
_STATE_FLAG_PRECEDENCE = ("COMPLETING", "STAGE_OUT", "CONFIGURING", "RESIZING", "REQUEUED",
                          "REQUEUE_FED", "REQUEUE_HOLD", "SPECIAL_EXIT", "STOPPED", "REVOKED",
                          "RESV_DEL_HOLD", "SIGNALING")
_BASE_STATES = frozenset({"PENDING", "RUNNING", "SUSPENDED", "COMPLETED", "CANCELLED", "FAILED",
                          "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
                          "OUT_OF_MEMORY"})

_VERSION_RE = re.compile(r"v0\.0\.(\d+)")


class JsonDocumentError(ValueError):
    """The document is not an accounting jobs document; nothing of it is read."""


class JsonFieldError(ValueError):
    """A value of a job object that does not convert; the message starts with its path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """What a document says about itself (``meta``); every field may be None."""

    plugin: str | None            # "openapi/dbv0.0.38", "data_parser/v0.0.44"
    version: int | None           # NN of v0.0.NN
    slurm_release: str | None     # "24.11.5"

    @property
    def version_name(self) -> str | None:
        return None if self.version is None else f"v0.0.{self.version}"

    @property
    def known(self) -> bool:
        return self.version in KNOWN_VERSIONS


def document_info(doc: Any) -> DocumentInfo:
    """The plugin, data version and Slurm release a document's ``meta`` names.

    dbv0.0.3N: ``meta.plugin.type = "openapi/dbv0.0.38"``, ``meta.Slurm.release``;
    data_parser: ``meta.plugin.data_parser = "data_parser/v0.0.41"`` (or ``v0.0.41``),
    ``meta.slurm.release`` (``Slurm`` in v0.0.39).
    """
    meta = doc.get("meta") if isinstance(doc, dict) else None
    if not isinstance(meta, dict):
        return DocumentInfo(None, None, None)
    plugin_obj = meta.get("plugin")
    plugin: str | None = None
    if isinstance(plugin_obj, dict):
        for key in ("data_parser", "type"):
            value = plugin_obj.get(key)
            if isinstance(value, str) and _VERSION_RE.search(value):
                plugin = value
                break
    version = None
    if plugin is not None:
        match = _VERSION_RE.search(plugin)
        version = int(match.group(1)) if match else None
    release = None
    for key in ("slurm", "Slurm"):
        slurm = meta.get(key)
        if isinstance(slurm, dict) and isinstance(slurm.get("release"), str):
            release = slurm["release"]
            break
    return DocumentInfo(plugin, version, release)


# --------------------------------------------------------------------------- values

def _unwrap(value: Any, path: str) -> Any:
    """``{set, infinite, number}`` -> the number, or None when not set or infinite; the
    ``+complex`` forms (null, "Infinity") -> None; anything else unchanged."""
    if isinstance(value, dict):
        if not ({"set", "infinite", "number"} & value.keys()):
            raise JsonFieldError(path, f"expected a number or {{set, infinite, number}}, "
                                       f"got an object with keys {sorted(value)[:5]}")
        if value.get("infinite") is True or value.get("set") is False:
            return None
        value = value.get("number")
    if isinstance(value, str) and value.strip().lower() in _INFINITY_TEXT:
        return None
    return value


def _int(value: Any, path: str) -> int | None:
    """A number in any form Slurm prints; None for unset, infinite and the NO_VAL /
    INFINITE sentinels."""
    value = _unwrap(value, path)
    if value is None:
        return None
    if isinstance(value, bool):
        raise JsonFieldError(path, f"expected a number, got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    else:
        raise JsonFieldError(path, f"expected a whole number, got {value!r}")
    return None if number in _SENTINEL_INTS else number


def _count(value: Any, path: str) -> int:
    """A non-negative whole number; unset is 0."""
    number = _int(value, path)
    if number is None:
        return 0
    if number < 0:
        raise JsonFieldError(path, f"negative: {number}")
    return number


def _time(value: Any, path: str) -> datetime | None:
    """Epoch seconds -> aware UTC datetime; 0 / unset -> None."""
    seconds = _int(value, path)
    if not seconds:
        return None
    if seconds < 0:
        raise JsonFieldError(path, f"negative time {seconds}")
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise JsonFieldError(path, f"not an epoch time: {seconds}") from None


def _text(value: Any, path: str) -> str | None:
    """A string field; Slurm's "no value" words -> None. A number is no name (dbv0.0.3N
    prints ``reservation.name`` as 0)."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return None
    if not isinstance(value, str):
        raise JsonFieldError(path, f"expected a string, got {type(value).__name__}")
    return None if value in SENTINELS else value


def _obj(value: Any, path: str) -> dict[str, Any]:
    """An object field; missing/null -> {}."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise JsonFieldError(path, f"expected an object, got {type(value).__name__}")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise JsonFieldError(path, f"expected a list, got {type(value).__name__}")
    return value


def _state(value: Any, path: str) -> str:
    """``"COMPLETED"`` (dbv0.0.3N) or ``["PENDING", "REQUEUED"]`` (v0.0.39+) -> the word
    sacct prints (``REQUEUED``)."""
    if isinstance(value, str):
        if not value.strip():
            raise JsonFieldError(path, "empty state")
        return value.strip()
    if isinstance(value, list):
        names = []
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise JsonFieldError(f"{path}[{index}]", f"not a state name: {item!r}")
            names.append(item.strip().upper())
        if not names:
            raise JsonFieldError(path, "empty state list")
        for flag in _STATE_FLAG_PRECEDENCE:
            if flag in names:
                return flag
        for name in names:
            if name in _BASE_STATES:
                return name
        return names[0]
    raise JsonFieldError(path, f"expected a state string or list, got {value!r}")


def _exit_code(value: Any, path: str) -> str | None:
    """``{status, return_code, signal: {id | signal_id}}`` -> ``"rc:signal"`` as sacct
    prints ExitCode. A bare number is a wait(2) status."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value in _SENTINEL_INTS or value < 0:
            return None
        signal = value & 0x7F
        return f"0:{signal}" if signal else f"{(value >> 8) & 0xFF}:0"
    value = _obj(value, path)
    rc = _int(value.get("return_code"), f"{path}.return_code") or 0
    signal_obj = value.get("signal")
    signal = 0
    if isinstance(signal_obj, dict):
        key = "id" if "id" in signal_obj else "signal_id"
        signal = _int(signal_obj.get(key), f"{path}.signal.{key}") or 0
    elif signal_obj is not None:
        signal = _int(signal_obj, f"{path}.signal") or 0
    return f"{rc}:{signal}"


# --------------------------------------------------------------------------- TRES

TresKey = tuple[str, str | None]


def _tres(entries: Any, path: str) -> dict[TresKey, int]:
    """``[{type, name, id, count}]`` -> {(type, name or None): count}. An entry whose
    count has no value (null, NO_VAL, -2 in INT64 dumps) is left out."""
    result: dict[TresKey, int] = {}
    for index, entry in enumerate(_list(entries, path)):
        where = f"{path}[{index}]"
        if not isinstance(entry, dict):
            raise JsonFieldError(where, f"expected a TRES object, got {type(entry).__name__}")
        kind = entry.get("type")
        if not isinstance(kind, str) or not kind:
            raise JsonFieldError(f"{where}.type", f"not a TRES type: {kind!r}")
        name = entry.get("name")
        if name is not None and not isinstance(name, str):
            raise JsonFieldError(f"{where}.name", f"not a TRES name: {name!r}")
        count = _int(entry.get("count"), f"{where}.count")
        if count is None or count in _INT64_SENTINELS:
            continue
        if count < 0:
            raise JsonFieldError(f"{where}.count", f"negative count {count}")
        key = (kind, name or None)
        result[key] = result.get(key, 0) + count
    return result


def _allocation(entries: Any, path: str
                ) -> tuple[int, int, int, int | None, tuple[tuple[str, int], ...]]:
    """(cpus, nodes, mem_bytes, billing, gpus) of an allocated-TRES list (or string)."""
    if isinstance(entries, str):
        try:
            return parse_alloc_tres(entries)
        except ValueError as exc:
            raise JsonFieldError(path, str(exc)) from None
    tres = _tres(entries, path)
    total_gpus: int | None = None
    typed: dict[str, int] = {}
    for (kind, name), count in tres.items():
        if kind != "gres" or not name:
            continue
        if name == "gpu":
            total_gpus = count
        elif name.startswith("gpu:") and len(name) > 4:
            typed[name[4:]] = typed.get(name[4:], 0) + count
    return (tres.get(("cpu", None), 0), tres.get(("node", None), 0),
            tres.get(("mem", None), 0) * MB, tres.get(("billing", None)),
            gpu_breakdown(total_gpus, typed))


def _job_energy(entries: Any, path: str) -> int | None:
    """The job-line ConsumedEnergyRaw sacct prints (see the module docstring)."""
    if isinstance(entries, str):
        return 0
    for index, entry in enumerate(_list(entries, path)):
        if isinstance(entry, dict) and entry.get("type") == "energy" and not entry.get("name"):
            count = _int(entry.get("count"), f"{path}[{index}].count")
            return None if count is None or count < 0 else count
    return 0


# --------------------------------------------------------------------------- ids

def _array_tasks(text: str) -> str:
    """The pending task list as sacct prints it: slurmdbd may hold it as a hex bitmask
    (``0x3E`` = tasks 1-5), which becomes ranges; ranges stay as they are."""
    text = text.strip().strip("[]")
    if not text.lower().startswith("0x"):
        return text
    try:
        mask = int(text, 16)
    except ValueError:
        return text
    ranges, bit = [], 0
    while mask >> bit:
        if mask >> bit & 1:
            first = bit
            while mask >> (bit + 1) & 1:
                bit += 1
            ranges.append(str(first) if first == bit else f"{first}-{bit}")
        bit += 1
    return ",".join(ranges)


def _job_ids(job: dict[str, Any], job_id_raw: int
             ) -> tuple[str, int | None, int | None, int | None, int | None]:
    """The JobID as sacct prints it (``6_3``, ``6_[1-5%2]``, ``14+1``, ``42``) and the
    array / het ids."""
    array = _obj(job.get("array"), "array")
    array_job = _int(array.get("job_id"), "array.job_id") or 0
    if array_job:
        task = _int(array.get("task_id"), "array.task_id")
        if task is not None:
            return f"{array_job}_{task}", array_job, task, None, None
        tasks = _text(array.get("task"), "array.task")
        if tasks:
            limits = _obj(array.get("limits"), "array.limits")
            running = _obj(_obj(limits.get("max"), "array.limits.max").get("running"),
                           "array.limits.max.running")
            throttle = _int(running.get("tasks"), "array.limits.max.running.tasks")
            suffix = f"%{throttle}" if throttle else ""
            return f"{array_job}_[{_array_tasks(tasks)}{suffix}]", array_job, None, None, None
    het = _obj(job.get("het"), "het")
    het_job = _int(het.get("job_id"), "het.job_id") or 0
    offset = _int(het.get("job_offset"), "het.job_offset")
    if het_job and offset is not None:
        return f"{het_job}+{offset}", None, None, het_job, offset
    return str(job_id_raw), None, None, None, None


def _step_name(step: Any, path: str) -> str:
    """``step.id``: ``"5.batch"`` / ``"5.0"`` (v0.0.39+), ``"batch"`` / ``0`` (dbv0.0.3N,
    with ``step.het.component``) or ``{job_id, step_id}`` -> ``batch``, ``0``, ``0+1``."""
    step = _obj(step, path)
    value = step.get("id")
    component: int | None = None
    if isinstance(value, dict):
        value = value.get("step_id")
    het = step.get("het")
    if isinstance(het, dict):
        component = _int(het.get("component"), f"{path}.het.component")
    if isinstance(value, bool) or value is None:
        raise JsonFieldError(f"{path}.id", f"no step id: {value!r}")
    if isinstance(value, int):
        name = str(value)
    elif isinstance(value, str):
        name = value.strip()
        if "." in name:
            name = name.partition(".")[2]
    else:
        raise JsonFieldError(f"{path}.id", f"not a step id: {value!r}")
    if not name:
        raise JsonFieldError(f"{path}.id", f"not a step id: {value!r}")
    if component is not None and "+" not in name:
        name = f"{name}+{component}"
    return name


def _cpu_us(value: Any, path: str) -> int:
    """``{"seconds": 5, "microseconds": 1220242}`` -> 6220242 (the microseconds may
    exceed a second; they are added, as Slurm does)."""
    value = _obj(value, path)
    return (_count(value.get("seconds"), f"{path}.seconds") * 1_000_000
            + _count(value.get("microseconds"), f"{path}.microseconds"))


def sacct_cpu_seconds(total_us: int) -> Decimal:
    """CPU time in microseconds as sacct(1) prints it (``_elapsed_time`` in
    src/sacct/print.c): milliseconds truncated below one hour (6220242 us -> 6.220),
    whole seconds from one hour up (the milliseconds are dropped)."""
    seconds = total_us // 1_000_000
    if seconds >= 3600:
        return Decimal(seconds)
    return Decimal(total_us // 1000).scaleb(-3)


def _name(value: Any) -> str | None:
    """The job name exactly as given (a job may be called "None")."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise JsonFieldError("name", f"expected a string, got {type(value).__name__}")
    return value


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_SLUID_RE = re.compile(r"[sS]([0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{1,13})")


def _sluid(value: Any) -> int | None:
    """v0.0.45's ``sluid``: ``s`` and the DBIndex in Crockford base32 (``s18HM92GS74R00``
    is 1461005848967012352, as the same job's sacct DBIndex); absent or "" -> None."""
    if value is None or value == "":
        return None
    match = _SLUID_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise JsonFieldError("sluid", f"not a SLUID: {value!r}")
    number = 0
    for char in match.group(1).upper():
        number = number * 32 + _CROCKFORD.index(char)
    if number >= 2**64:
        raise JsonFieldError("sluid", f"{value!r} is beyond 64 bits")
    return number


def _wckey(value: Any) -> str | None:
    if isinstance(value, dict):
        return _text(value.get("wckey"), "wckey.wckey")
    return _text(value, "wckey")


# --------------------------------------------------------------------------- jobs

def _steps(job: dict[str, Any], cluster: str, job_id_raw: int,
           db_index: int | None) -> tuple[list[Item], int]:
    items: list[Item] = []
    cpu_total_us = 0
    for index, step in enumerate(_list(job.get("steps"), "steps")):
        path = f"steps[{index}]"
        if not isinstance(step, dict):
            raise JsonFieldError(path, f"expected a step object, got {type(step).__name__}")
        name = _step_name(step.get("step"), f"{path}.step")
        times = _obj(step.get("time"), f"{path}.time")
        cpu_us = _cpu_us(times.get("total"), f"{path}.time.total")
        cpu_total_us += cpu_us
        tres = _obj(step.get("tres"), f"{path}.tres")
        usage = _obj(tres.get("requested"), f"{path}.tres.requested")
        total = _tres(usage.get("total"), f"{path}.tres.requested.total")
        peak = _tres(usage.get("max"), f"{path}.tres.requested.max")
        statistics = _obj(step.get("statistics"), f"{path}.statistics")
        energy = _int(_obj(statistics.get("energy"), f"{path}.statistics.energy")
                      .get("consumed"), f"{path}.statistics.energy.consumed")
        state_value = step.get("state")
        state = (normalise_state(_state(state_value, f"{path}.state"))[0]
                 if state_value not in (None, "", []) else None)
        items.append(StepUsage(
            cluster=cluster, job_id_raw=job_id_raw, step=name, job_db_index=db_index,
            state=state, elapsed_s=_count(times.get("elapsed"), f"{path}.time.elapsed"),
            cpu_used_s=Decimal(cpu_us).scaleb(-6),       # a step keeps the microseconds
            max_rss_bytes=peak.get(("mem", None)), mem_total_bytes=total.get(("mem", None)),
            energy_j=energy if energy is None or energy >= 0 else None,
        ))
    return items, cpu_total_us


def _job_items(job: dict[str, Any], *, default_cluster: str | None, version: int | None) -> list[Item]:
    job_id_raw = _int(job.get("job_id"), "job_id")
    if job_id_raw is None or job_id_raw <= 0:
        raise JsonFieldError("job_id", f"not a job id: {job.get('job_id')!r}")
    cluster = _text(job.get("cluster"), "cluster") or default_cluster
    if not cluster:
        raise JsonFieldError("cluster", "no cluster in the job object and no default "
                                        "cluster configured")
    job_id, array_job, array_task, het_job, het_offset = _job_ids(job, job_id_raw)
    times = _obj(job.get("time"), "time")
    submit = _time(times.get("submission"), "time.submission")
    if submit is None:
        raise JsonFieldError("time.submission", "missing: a job without a submit time has "
                                                "no identity")
    state_obj = _obj(job.get("state"), "state")
    state_raw = _state(state_obj.get("current"), "state.current")
    state, _ = normalise_state(state_raw)
    eligible = _time(times.get("eligible"), "time.eligible")
    start = _time(times.get("start"), "time.start")
    end = _time(times.get("end"), "time.end")
    elapsed = _count(times.get("elapsed"), "time.elapsed")
    tres = _obj(job.get("tres"), "tres")
    cpus, nodes, mem, billing, gpus = _allocation(tres.get("allocated"), "tres.allocated")
    if version in (36, 37) and start is not None and start == eligible:
        # dbv0.0.36/37 print the eligible time as time.start (parse.c maps `eligible` to
        # both). slurmdbd's elapsed is end - start - suspended, so an ended job's start
        # is recovered; a job that never ran (pending; or ended without elapsed time or
        # allocation) has none. A running job's stays the eligible time.
        if state == "PENDING":
            start = None
        elif end is not None:
            suspended = _count(times.get("suspended"), "time.suspended")
            start = (end - timedelta(seconds=elapsed + suspended)
                     if elapsed or cpus else None)

    db_index = _sluid(job.get("sluid"))
    steps, cpu_total_us = _steps(job, cluster, job_id_raw, db_index)
    if not steps:
        # No steps in the document (skip_steps): the job-level total, where filled.
        cpu_total_us = _cpu_us(times.get("total"), "time.total")
    energy = _job_energy(tres.get("allocated"), "tres.allocated")
    _check_ranges(job_id_raw, array_job, array_task, het_job, het_offset, elapsed, cpus,
                  nodes, mem, billing, gpus, times.get("limit"), cpu_total_us, energy, steps)

    record = JobRecord(
        cluster=cluster, job_id=job_id, job_id_raw=job_id_raw, submit=submit,
        state=state, state_raw=state_raw,
        array_job_id=array_job, array_task_id=array_task,
        het_job_id=het_job, het_job_offset=het_offset,
        name=_name(job.get("name")),
        user=_text(job.get("user"), "user"), uid=None,
        group=_text(job.get("group"), "group"), account=_text(job.get("account"), "account"),
        partition=_text(job.get("partition"), "partition"), qos=_text(job.get("qos"), "qos"),
        wckey=_wckey(job.get("wckey")),
        reservation=_text(_obj(job.get("reservation"), "reservation").get("name"),
                          "reservation.name"),
        exit_code=_exit_code(job.get("exit_code"), "exit_code"),
        derived_exit_code=_exit_code(job.get("derived_exit_code"), "derived_exit_code"),
        eligible=eligible, start=start, end=end, elapsed_s=elapsed,
        timelimit_min=_int(times.get("limit"), "time.limit"),
        nodes=nodes, cpus=cpus, mem_bytes=mem, billing=billing, gpus=gpus,
        node_list=_text(job.get("nodes"), "nodes"),
        # sacct computes CPUTimeRAW the same way: elapsed x allocated CPUs.
        cpu_time_alloc_s=elapsed * cpus,
        cpu_used_s=sacct_cpu_seconds(cpu_total_us),
        energy_j=energy, db_index=db_index,
        final=is_final_record(state, end),
    )
    return [record, *steps]


_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1
_CPU_S_MAX = 10**15              # numeric(18, 3)


def _check_ranges(job_id_raw: int, array_job: int | None, array_task: int | None,
                  het_job: int | None, het_offset: int | None, elapsed: int, cpus: int,
                  nodes: int, mem: int, billing: int | None,
                  gpus: tuple[tuple[str, int], ...], limit: Any, cpu_total_us: int,
                  job_energy: int | None, steps: list[Item]) -> None:
    """Refuse (quarantine) a job whose numbers cannot be stored: a value no Slurm prints
    must not fail the whole poll at the database."""
    checks: list[tuple[str, int | None, int]] = [
        ("job_id", job_id_raw, _INT64_MAX), ("array.job_id", array_job, _INT64_MAX),
        ("array.task_id", array_task, _INT32_MAX), ("het.job_id", het_job, _INT64_MAX),
        ("het.job_offset", het_offset, _INT32_MAX), ("time.elapsed", elapsed, _INT64_MAX),
        ("tres.allocated cpu", cpus, _INT32_MAX), ("tres.allocated node", nodes, _INT32_MAX),
        ("tres.allocated mem", mem, _INT64_MAX), ("tres.allocated billing", billing, _INT64_MAX),
        ("tres.allocated gres/gpu", sum(c for _, c in gpus), _INT32_MAX),
        ("time.limit", _int(limit, "time.limit"), _INT64_MAX),
        ("elapsed x cpus", elapsed * cpus, _INT64_MAX),
        ("steps[].time.total", cpu_total_us // 1_000_000, _CPU_S_MAX - 1),
        ("tres.allocated energy", job_energy, _INT64_MAX),
    ]
    energy = 0
    for index, step in enumerate(steps):
        assert isinstance(step, StepUsage)
        where = f"steps[{index}]"
        checks += [(f"{where}.time.elapsed", step.elapsed_s, _INT64_MAX),
                   (f"{where}.tres.requested.max mem", step.max_rss_bytes, _INT64_MAX),
                   (f"{where}.tres.requested.total mem", step.mem_total_bytes, _INT64_MAX)]
        energy += step.energy_j or 0
    checks.append(("steps[].statistics.energy.consumed (sum)", energy, _INT64_MAX))
    for name, value, limit_value in checks:
        if value is not None and not 0 <= value <= limit_value:
            raise JsonFieldError(name, f"{value} is out of range (0..{limit_value})")


def _looks_like_slurmctld(jobs: list[Any]) -> bool:
    """squeue --json / ``/slurm/v0.0.NN/jobs`` objects: ``job_state`` and ``submit_time``,
    no ``time`` or ``state`` object."""
    objects = [job for job in jobs if isinstance(job, dict)]
    return bool(objects) and all(
        "job_state" in job and "time" not in job and "state" not in job for job in objects)


def _job_label(job: Any, position: int) -> tuple[str, str | None]:
    raw = job.get("job_id") if isinstance(job, dict) else None
    job_id = str(raw) if isinstance(raw, (int, str)) and not isinstance(raw, bool) else None
    return f"job #{position}" + (f" (job_id {job_id})" if job_id else ""), job_id


def check_jobs_document(doc: Any) -> list[Any]:
    """``doc["jobs"]`` when ``doc`` is an accounting jobs document, else JsonDocumentError
    saying what it is instead."""
    if not isinstance(doc, dict):
        raise JsonDocumentError(f"not a sacct --json / slurmrestd jobs document: the top "
                                f"level is a {type(doc).__name__}, not an object")
    jobs = doc.get("jobs")
    if not isinstance(jobs, list):
        keys = ", ".join(sorted(str(k) for k in doc)[:8]) or "none"
        raise JsonDocumentError(f"not a sacct --json / slurmrestd jobs document: no 'jobs' "
                                f"list (top-level keys: {keys})")
    if _looks_like_slurmctld(jobs):
        raise JsonDocumentError("this is a slurmctld job list (squeue --json, scontrol --json "
                                "or /slurm/v0.0.NN/jobs): queued jobs, not accounting. Use "
                                "sacct --json or slurmrestd /slurmdb/v0.0.NN/jobs")
    return jobs


def parse_sacct_json(doc: Any, *, source: str,
                     default_cluster: str | None) -> Iterator[Item]:
    """Yield a JobRecord (then its StepUsages) for every job object of ``doc["jobs"]``.

    A job object that does not convert becomes one QuarantinedRecord holding its JSON
    text, with a reason naming its position, its job_id and the field. Raises
    JsonDocumentError (a ValueError), before yielding anything, when the document is not
    an accounting jobs document.
    """
    jobs = check_jobs_document(doc)
    version = document_info(doc).version
    for position, job in enumerate(jobs, start=1):
        try:
            if not isinstance(job, dict):
                raise JsonFieldError("(job)", f"expected an object, got {type(job).__name__}")
            items = _job_items(job, default_cluster=default_cluster, version=version)
        except Exception as exc:  # noqa: BLE001 - one bad job must never stop an import
            label, job_id = _job_label(job, position)
            detail = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            yield QuarantinedRecord(
                raw=json.dumps(job, sort_keys=True, default=str),
                reason=f"{label} of the JSON document: {detail}",
                source=source, line_no=None, job_id=job_id)
            continue
        yield from items
