"""Parse ``sacct --json`` / slurmrestd ``/slurmdb/v0.0.38/jobs`` documents into Items.

This module owns the mapping from the openapi/dbv0.0.38 job schema (Slurm 22.05; both
``sacct --json`` and slurmrestd print it) to the same items the text parser yields: one
JobRecord per job object and one StepUsage per element of its ``steps``. The rollup then
treats JSON and text identically.

Memory: the caller ``json.load``s the whole document, and each job costs about 11 KB of
JSON (RECIPE §6: 22 jobs were 250 KB, 100,000 one-step jobs 1.2 GB), several times that
as Python objects. Use JSON for fixtures, file imports and small windows only; the sacct
text source streams.

Schema facts used (22.05.8, checked on tests/fixtures/sacct-all.json and
slurmrestd-dbv0.0.38-jobs.json):
  * ``job_id`` is JobIDRaw. ``array.job_id`` is 0 for non-array jobs, else the array's
    id with ``array.task_id``; ``het.job_id`` is 0 unless a het job, with ``het.job_offset``.
  * ``time.*`` are epoch seconds; ``end`` is 0 while running, ``start`` 0/null before
    start. ``time.limit`` is minutes (null = UNLIMITED).
  * ``tres.allocated`` is ``[{type, name, id, count}]``: ``mem`` in MB, GPUs as
    ``type=gres, name=gpu`` (typed ones as ``name=gpu:TYPE``), ``billing`` an integer. An
    empty list is a job that never got an allocation (cancelled while pending).
  * The job-level ``time.total/user/system`` are 0 in 22.05; CPU time is per step in
    ``steps[].time.total`` as ``{seconds, microseconds}`` where microseconds may exceed
    one second (``5 s + 1220242 us`` = 6.220242 s; sacct prints 00:06.220).
  * Step usage sits under ``steps[].tres.requested.{total,max}`` (the odd name is
    Slurm's): ``cpu`` in milliseconds, ``mem`` in bytes. ``max`` mem equals MaxRSS.
  * The job-level ``exit_code`` reads SUCCESS/0 even for a job sacct prints as ``3:0``
    (FAILED job 7 in the samples), and ``derived_exit_code`` SUCCESS/0 for a job whose step
    exited 7 (sacct: ``7:0``): a 22.05 quirk of this plugin, kept as printed.
  * There is no DBIndex and no uid: ``db_index`` and ``uid`` stay None. A cancelled job's
    ``state.current`` is ``CANCELLED`` where sacct prints ``CANCELLED by <uid>`` (the JSON
    names the user in ``kill_request_user`` instead); ``state_raw`` keeps what the JSON says.

Agreeing with sacct (so both sources store the same rows; checked against the real lab by
tests/slurm/test_lab_sources.py). Two values are computed as sacct(1) prints them
(src/sacct/print.c, Slurm 22.05), not as the JSON carries them:
  * ``cpu_used_s``: sacct's job-line TotalCPU is the sum of the steps' (seconds,
    microseconds), printed with milliseconds TRUNCATED below one hour (``00:06.220`` for
    6.220242 s) and whole seconds from one hour up (``01:00:00``). The job record gets the
    same truncation, so ``0.015859`` s is stored as 0.015 from either source (the store's
    numeric(18,3) would round the microseconds to 0.016). Steps keep their microseconds:
    only the job's figure is stored.
  * ``energy_j``: sacct's job-line ConsumedEnergyRaw is the ``energy`` count of the job's
    allocated TRES: empty when Slurm stored "no value" (JSON: ``count`` null), 0 when the
    allocation has no energy entry at all (a job cancelled while pending: JSON
    ``tres.allocated`` is empty), else the count.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from billing.records import JobRecord, QuarantinedRecord, StepUsage, is_final_record
from collector.slurm.fields import MB, SENTINELS, gpu_breakdown, normalise_state
from collector.slurm.source import Item

UTC = timezone.utc


def _epoch(value: Any) -> datetime | None:
    """Epoch seconds -> aware UTC datetime; 0 / null (not set) -> None."""
    if value is None or value == 0:
        return None
    if isinstance(value, dict):          # later plugins: {"set": bool, "number": int}
        if not value.get("set", True) or value.get("infinite"):
            return None
        return _epoch(value.get("number"))
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"not an epoch time: {value!r}")
    return datetime.fromtimestamp(value, UTC)


def _minutes(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, dict):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"not a time limit in minutes: {value!r}")
    return value


def _cpu_us(value: Any) -> int:
    """``{"seconds": 5, "microseconds": 1220242}`` -> 6220242 (microseconds may exceed a
    second; they are added, as Slurm does)."""
    if not value:
        return 0
    return int(value.get("seconds") or 0) * 1_000_000 + int(value.get("microseconds") or 0)


def sacct_cpu_seconds(total_us: int) -> Decimal:
    """CPU time in microseconds as sacct(1) prints it (``_elapsed_time`` in
    src/sacct/print.c): milliseconds truncated below one hour (6220242 us -> 6.220),
    whole seconds from one hour up (the milliseconds are dropped)."""
    seconds = total_us // 1_000_000
    if seconds >= 3600:
        return Decimal(seconds)
    return Decimal(total_us // 1000).scaleb(-3)


def _exit_code(value: Any) -> str | None:
    """``{"status", "return_code", "signal": {"signal_id"}}`` -> ``"rc:signal"``."""
    if not value:
        return None
    rc = value.get("return_code") or 0
    signal = (value.get("signal") or {}).get("signal_id") or 0
    return f"{int(rc)}:{int(signal)}"


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, (int, float)):   # reservation name 0 = none
        return None
    text = str(value)
    return None if text in SENTINELS else text


def _tres(entries: Any) -> dict[tuple[str, str | None], int]:
    result: dict[tuple[str, str | None], int] = {}
    for entry in entries or ():
        count = entry.get("count")
        if count is None:               # e.g. energy with no value
            continue
        key = (str(entry.get("type")), entry.get("name"))
        result[key] = result.get(key, 0) + int(count)
    return result


def _job_energy(entries: Any) -> int | None:
    """The job-line ConsumedEnergyRaw sacct would print (see the module docstring)."""
    for entry in entries or ():
        if entry.get("type") == "energy" and not entry.get("name"):
            count = entry.get("count")
            return None if count is None else int(count)
    return 0


def _allocation(entries: Any) -> tuple[int, int, int, int | None, tuple[tuple[str, int], ...]]:
    tres = _tres(entries)
    total_gpus: int | None = None
    typed: dict[str, int] = {}
    for (kind, name), count in tres.items():
        if kind != "gres" or not name:
            continue
        if name == "gpu":
            total_gpus = count
        elif name.startswith("gpu:"):
            typed[name[4:]] = typed.get(name[4:], 0) + count
    billing = tres.get(("billing", None))
    return (tres.get(("cpu", None), 0), tres.get(("node", None), 0),
            tres.get(("mem", None), 0) * MB, billing, gpu_breakdown(total_gpus, typed))


def _display_job_id(job: dict) -> tuple[str, int | None, int | None, int | None, int | None]:
    """The JobID as sacct prints it, plus the array / het ids."""
    job_id_raw = int(job["job_id"])
    array = job.get("array") or {}
    het = job.get("het") or {}
    array_job = array.get("job_id") or 0
    if array_job:
        task = array.get("task_id")
        if task is not None:
            return f"{array_job}_{task}", int(array_job), int(task), None, None
        # The not-yet-split pending part of an array: sacct prints 6_[1-5].
        tasks = str(array.get("task") or "").strip("[]")
        return f"{array_job}_[{tasks}]", int(array_job), None, None, None
    het_job = het.get("job_id") or 0
    if het_job and het.get("job_offset") is not None:
        offset = int(het["job_offset"])
        return f"{het_job}+{offset}", None, None, int(het_job), offset
    return str(job_id_raw), None, None, None, None


def _job_items(job: dict, *, source: str, default_cluster: str | None) -> list[Item]:
    cluster = job.get("cluster") or default_cluster
    if not cluster:
        raise ValueError("no cluster in the job object and no default cluster configured")
    job_id, array_job, array_task, het_job, het_offset = _display_job_id(job)
    job_id_raw = int(job["job_id"])
    times = job.get("time") or {}
    submit = _epoch(times.get("submission"))
    if submit is None:
        raise ValueError("time.submission is missing: a job without a submit time has no "
                         "identity")
    state_raw = str((job.get("state") or {}).get("current") or "")
    state, _ = normalise_state(state_raw)
    end = _epoch(times.get("end"))
    cpus, nodes, mem, billing, gpus = _allocation((job.get("tres") or {}).get("allocated"))
    elapsed = int(times.get("elapsed") or 0)

    steps: list[Item] = []
    cpu_total_us = 0
    for step in job.get("steps") or ():
        step_id = (step.get("step") or {}).get("id")
        if step_id is None or step_id == "":
            raise ValueError("a step without step.id")
        step_times = step.get("time") or {}
        cpu_us = _cpu_us(step_times.get("total"))
        cpu_total_us += cpu_us
        cpu = Decimal(cpu_us).scaleb(-6)      # a step keeps the microseconds
        usage = (step.get("tres") or {}).get("requested") or {}
        total = _tres(usage.get("total"))
        peak = _tres(usage.get("max"))
        energy = ((step.get("statistics") or {}).get("energy") or {}).get("consumed")
        step_state = step.get("state")
        steps.append(StepUsage(
            cluster=cluster, job_id_raw=job_id_raw, step=str(step_id), job_db_index=None,
            state=normalise_state(str(step_state))[0] if step_state else None,
            elapsed_s=int(step_times.get("elapsed") or 0), cpu_used_s=cpu,
            max_rss_bytes=peak.get(("mem", None)), mem_total_bytes=total.get(("mem", None)),
            energy_j=int(energy) if energy is not None else None,
        ))

    record = JobRecord(
        cluster=cluster, job_id=job_id, job_id_raw=job_id_raw, submit=submit,
        state=state, state_raw=state_raw,
        array_job_id=array_job, array_task_id=array_task,
        het_job_id=het_job, het_job_offset=het_offset,
        name=job.get("name") or None, user=_text(job.get("user")), uid=None,
        group=_text(job.get("group")), account=_text(job.get("account")),
        partition=_text(job.get("partition")), qos=_text(job.get("qos")),
        wckey=_text((job.get("wckey") or {}).get("wckey")),
        reservation=_text((job.get("reservation") or {}).get("name")),
        exit_code=_exit_code(job.get("exit_code")),
        derived_exit_code=_exit_code(job.get("derived_exit_code")),
        eligible=_epoch(times.get("eligible")), start=_epoch(times.get("start")),
        end=end, elapsed_s=elapsed,
        timelimit_min=_minutes(times.get("limit")),
        nodes=nodes, cpus=cpus, mem_bytes=mem, billing=billing, gpus=gpus,
        node_list=_text(job.get("nodes")),
        # sacct computes CPUTimeRAW the same way: elapsed x allocated CPUs.
        cpu_time_alloc_s=elapsed * cpus,
        # The job-level time.total is 0 in 22.05; the steps hold the real CPU time, summed
        # and truncated as sacct prints the job line's TotalCPU.
        cpu_used_s=sacct_cpu_seconds(cpu_total_us),
        energy_j=_job_energy((job.get("tres") or {}).get("allocated")),
        db_index=None, final=is_final_record(state, end),
    )
    return [record, *steps]


def parse_sacct_json(doc: dict, *, source: str,
                     default_cluster: str | None) -> Iterator[Item]:
    """Yield a JobRecord (then its StepUsages) for every job object of ``doc["jobs"]``.

    A job object that does not convert becomes one QuarantinedRecord holding its JSON text.
    Raises ValueError only when the document itself has no ``jobs`` list.
    """
    jobs = doc.get("jobs") if isinstance(doc, dict) else None
    if not isinstance(jobs, list):
        raise ValueError("not a sacct --json / slurmrestd jobs document: no 'jobs' list")
    for position, job in enumerate(jobs, start=1):
        try:
            if not isinstance(job, dict):
                raise ValueError(f"job entry is a {type(job).__name__}, not an object")
            yield from _job_items(job, source=source, default_cluster=default_cluster)
        except Exception as exc:  # noqa: BLE001 - one bad job must never stop an import
            job_id = job.get("job_id") if isinstance(job, dict) else None
            yield QuarantinedRecord(
                raw=json.dumps(job, sort_keys=True, default=str),
                reason=f"job #{position} of the JSON document: {exc}",
                source=source, line_no=None,
                job_id=str(job_id) if job_id is not None else None)
