"""The pyslurm source: accounting through pyslurm's slurmdbd API.

This module owns two things:

* ``records_from_pyslurm``: a pure mapping from pyslurm's database job objects to the
  items every source yields (JobRecord per job, StepUsage per step). It reads plain
  attributes or mapping keys only, so it works on real ``pyslurm.db.Job`` objects, on
  their ``to_dict()`` output (the unit tests feed it real records captured on the lab from
  pyslurm 22.5.3 on Slurm 22.05 and 24.11.0 on Slurm 24.11,
  tests/fixtures/pyslurm-*-jobs.json), and on simple stand-ins.
* ``PyslurmSource``: the Source that loads one window with
  ``pyslurm.db.Jobs.load(pyslurm.db.JobFilter(start_time=..., end_time=..., clusters=[...]))``
  and the allocation of those jobs (below). pyslurm is imported only inside ``fetch`` (it
  is an optional extra), so nothing else needs it installed.

Which pyslurm: one whose major.minor equals the site's Slurm (pyslurm refuses to build
against another: "Slurm version mismatch: requires Slurm 25.11, found 22.5"). The package
registry has only 25.11.x; 22.5.3 and 24.11.0 build from their source tags (the README
says how). Both are tested live on the lab (tests/slurm).

The allocation. ``pyslurm.db.Job`` has no allocated TRES in 22.5 or 24.11 (its ``cpus`` is
the allocation, its ``memory`` the REQUEST, and there are no GPUs and no billing). The older
``pyslurm.slurmdb_jobs().get(jobids=..., clusters=...)`` returns each job's
``tres_alloc_str``, sacct's AllocTRES with numeric TRES ids (``1=2,2=1024,4=1,5=9,1001=2,
1002=2``), and ``pyslurm.db.TrackableResources.load(name_is_key=False)`` maps the ids to
names (1 cpu, 2 mem in MB, 4 node, 5 billing, 1001 gres/gpu, 1002 gres/gpu:a100 ...; ids
above 1000 are per site). ``alloc_tres_text`` turns the two into AllocTRES text and the
sacct source's own parser reads it, so CPUs, memory, billing and GPUs by type (a typed GPU
counted once) are stored exactly as from sacct. The legacy records are matched to the db
jobs by (job id, submit); a job without one is quarantined, never stored with a guessed
allocation. A pyslurm without the legacy API falls back to ``Job.allocated_tres`` (the
shape read from the pyslurm 25.11.2 sources: a TrackableResources whose ``gres`` maps
``gpu`` / ``gpu:<type>`` to objects with ``count``), and without that to ``cpus`` /
``memory`` (no GPUs, no billing).

What pyslurm does NOT give, compared with sacct (measured on the lab; tests/slurm names
exactly these as the pyslurm source's exceptions):

* ``Jobs.load`` keeps one job per (cluster, job id), so the two records of a **requeued
  job collapse into one** (the last). A requeued job's first run is never stored from
  this source.
* Step CPU time is whole seconds (pyslurm reads ``tot_cpu_sec`` and drops the
  microseconds); a step's summed memory (sacct's TRESUsageInTot mem) is not exposed and is
  estimated as the average RSS x the number of tasks (exact for one-task steps).
* ``state`` has no ``by <uid>`` suffix (pyslurm gives ``cancelled_by`` as a user name);
  ``group_name`` is None; a heterogeneous job's components carry no het id in 22.5 (they
  are stored with their own JobIDRaw as JobID, sacct prints ``14+0``).

The window: JobFilter's start_time/end_time fill slurmdbd's usage_start/usage_end, the
same query as sacct's -S/-E (no --state), and the result is filtered again to sacct's
rule (Eligible < until and (End >= since or not ended)), as the slurmrestd source does.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from billing.records import (
    FetchStats,
    JobRecord,
    QuarantinedRecord,
    StepUsage,
    Window,
    is_final_record,
)
from collector.slurm.fields import MB, SENTINELS, gpu_breakdown, normalise_state, parse_alloc_tres
from collector.slurm.source import Item, SourceError

UTC = timezone.utc
# Slurm's NO_VAL / INFINITE (uint32) as pyslurm may pass them through raw (22.5's legacy
# API printed array_task_id=4294967294).
_NO_VAL32 = 0xFFFFFFFE
# NO_VAL64 / INFINITE64: a TRES count that is not set (energy without an energy plugin).
_NO_VAL64 = 0xFFFFFFFFFFFFFFFE
_INSTALL_HINT = ("install the pyslurm whose major.minor equals the site's Slurm: "
                 "pip install 'pyslurm==25.11.*' for Slurm 25.11, else build it from its "
                 "source tag (README, 'pyslurm')")
# (job id, submit epoch) -> the legacy record's tres_alloc_str
TresAlloc = Mapping[tuple[int, int], str]


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """``obj.name`` or ``obj[name]``; ``default`` when absent or when pyslurm raises
    (some properties fail on records that lack the underlying data). A method is called:
    pyslurm 22.5 and 24.11 define ``db.Job.group_name`` / ``group_id`` without @property
    (and so leave them out of ``to_dict()``)."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    try:
        value = getattr(obj, name, default)
        return value() if callable(value) and not isinstance(value, type) else value
    except Exception:  # noqa: BLE001 - a broken pyslurm property is "no value"
        return default


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if value >= _NO_VAL32 else value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _int64(value: Any) -> int | None:
    """An unsigned 64-bit id (DBIndex: above 2^63 on 24.11); NO_VAL64 / INFINITE64 = unset."""
    if isinstance(value, int) and not isinstance(value, bool):
        return None if value >= _NO_VAL64 else value
    return _int(value)


def _time(value: Any) -> datetime | None:
    """pyslurm times are epoch seconds; 0 / None / NO_VAL mean "not set"."""
    number = _int(value)
    if not number:
        return None
    return datetime.fromtimestamp(number, UTC)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return None if text in SENTINELS else text


def alloc_tres_text(tres_alloc_str: str, tres_names: Mapping[int, str]) -> str:
    """pyslurm's ``tres_alloc_str`` (``1=2,2=1024,3=18446744073709551614,4=1,5=9,1001=2``:
    TRES ids) -> AllocTRES as sacct prints it with --noconvert (``cpu=2,mem=1024M,node=1,
    billing=9,gres/gpu=2``), through the TRES table (id -> ``type`` or ``type/name``).

    Unset counts (NO_VAL64, e.g. energy without an energy plugin) are left out, as sacct
    leaves them out. An id the table does not know is an error: the allocation would be
    incomplete.
    """
    parts: list[str] = []
    for item in filter(None, tres_alloc_str.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isdigit() or not value.strip().isdigit():
            raise ValueError(f"tres_alloc_str entry {item!r} is not <id>=<count>")
        count = int(value)
        if count >= _NO_VAL64:
            continue
        name = tres_names.get(int(key))
        if name is None:
            raise ValueError(f"TRES id {key} of tres_alloc_str {tres_alloc_str!r} is not in "
                             f"the TRES table")
        parts.append(f"{name}={count}M" if name == "mem" else f"{name}={count}")
    return ",".join(parts)


def energy_from_tres(tres_alloc_str: str, tres_names: Mapping[int, str]) -> int | None:
    """The job's ConsumedEnergyRaw as sacct prints it, from ``tres_alloc_str``: the energy
    TRES's count; unset (NO_VAL64: no energy plugin) is no value (sacct prints nothing); no
    energy entry at all (a job cancelled while pending, a job whose steps never reported)
    is 0, as sacct prints 0."""
    for item in filter(None, tres_alloc_str.split(",")):
        key, _, value = item.partition("=")
        if key.isdigit() and tres_names.get(int(key)) == "energy" and value.isdigit():
            return None if int(value) >= _NO_VAL64 else int(value)
    return 0


def _count(tres: Any, name: str) -> int | None:
    """The count of one TRES of a TrackableResources (attribute or mapping form)."""
    entry = _get(tres, name)
    if entry is None:
        return None
    if isinstance(entry, (int, float)):
        return _int(entry)
    return _int(_get(entry, "count"))


def _gpus(tres: Any) -> tuple[tuple[str, int], ...]:
    """GPUs from TrackableResources.gres: ``gpu`` is the total, ``gpu:<type>`` the typed
    part (as in AllocTRES; gpu_breakdown never adds the two)."""
    gres = _get(tres, "gres") or {}
    items = gres.items() if isinstance(gres, Mapping) else ()
    total: int | None = None
    typed: dict[str, int] = {}
    for key, entry in items:
        count = _int(entry if isinstance(entry, (int, float)) else _get(entry, "count"))
        if count is None:
            continue
        name = str(key)
        if name.startswith("gres/"):
            name = name[len("gres/"):]
        if name == "gpu":
            total = count
        elif name.startswith("gpu:"):
            typed[name[4:]] = typed.get(name[4:], 0) + count
    return gpu_breakdown(total, typed)


def _exit_code(code: Any, signal: Any) -> str | None:
    rc = _int(code)
    if rc is None:
        return None
    return f"{rc}:{_int(signal) or 0}"


def _steps(job: Any) -> list[tuple[str, Any]]:
    steps = _get(job, "steps")
    if not steps:
        return []
    if isinstance(steps, Mapping):
        return [(str(key), step) for key, step in steps.items()]
    return [(str(_get(step, "id")), step) for step in steps]


def _display_id(job_id_raw: int, array_job: int | None, array_task: int | None,
                het_job: int | None, het_offset: int | None) -> str:
    if array_job and array_task is not None:
        return f"{array_job}_{array_task}"
    if het_job and het_offset is not None:
        return f"{het_job}+{het_offset}"
    return str(job_id_raw)


def _job_items(job: Any, *, default_cluster: str | None, tres_alloc: TresAlloc | None,
               tres_names: Mapping[int, str]) -> list[Item]:
    job_id_raw = _int(_get(job, "id"))
    if job_id_raw is None:
        raise ValueError(f"no job id: {_get(job, 'id')!r}")
    cluster = _get(job, "cluster") or default_cluster
    if not cluster:
        raise ValueError("no cluster on the job and no default cluster configured")
    submit = _time(_get(job, "submit_time"))
    if submit is None:
        raise ValueError("submit_time is missing: a job without a submit time has no identity")
    state_raw = str(_get(job, "state") or "")
    state, _ = normalise_state(state_raw)
    array_job = _int(_get(job, "array_id"))
    array_task = _int(_get(job, "array_task_id"))
    het_job = _int(_get(job, "heterogeneous_id", _get(job, "het_job_id")))
    het_offset = _int(_get(job, "heterogeneous_offset", _get(job, "het_job_offset")))
    start = _time(_get(job, "start_time"))
    end = _time(_get(job, "end_time"))
    elapsed = _int(_get(job, "elapsed_time")) or 0
    db_index = _int64(_get(job, "db_index"))

    # Allocation (module docstring): the legacy records' tres_alloc_str when the source has
    # them; else allocated_tres (None while pending); else cpus / memory / num_nodes, which
    # pyslurm fills with the REQUESTED figures for a job that never started (sacct's
    # AllocTRES is empty then, so such a job allocates nothing).
    billing: int | None = None
    energy: int | None = None
    gpus: tuple[tuple[str, int], ...] = ()
    if tres_alloc is not None:
        text = tres_alloc.get((job_id_raw, int(submit.timestamp())))
        if text is None:
            raise ValueError(f"slurmdb_jobs() returned no record of job {job_id_raw} submitted "
                             f"{submit:%Y-%m-%dT%H:%M:%SZ}: its allocation is unknown")
        cpus, nodes, mem_bytes, billing, gpus = parse_alloc_tres(
            alloc_tres_text(text, tres_names))
        mem_mb = mem_bytes // MB
        energy = energy_from_tres(text, tres_names)
    elif _has(job, "allocated_tres"):
        tres = _get(job, "allocated_tres")
        cpus = _count(tres, "cpu") or 0
        mem_mb = _count(tres, "mem") or 0
        nodes = _count(tres, "node") or 0
        billing = _count(tres, "billing")
        gpus = _gpus(tres) if tres is not None else ()
    elif start is not None:
        cpus = _int(_get(job, "cpus")) or 0
        mem_mb = _int(_get(job, "memory")) or 0
        nodes = _int(_get(job, "num_nodes")) or 0
    else:
        cpus = mem_mb = nodes = 0

    steps: list[Item] = []
    for step_id, step in _steps(job):
        stats = _get(step, "stats")
        cpu = _get(stats, "total_cpu_time")
        ntasks = _int(_get(step, "ntasks"))
        average_rss = _int(_get(stats, "avg_resident_memory"))
        step_state = _get(step, "state")
        energy = _int(_get(stats, "consumed_energy"))
        steps.append(StepUsage(
            cluster=cluster, job_id_raw=job_id_raw, step=step_id, job_db_index=db_index,
            state=normalise_state(str(step_state))[0] if step_state else None,
            elapsed_s=_int(_get(step, "elapsed_time")) or 0,
            cpu_used_s=Decimal(str(cpu)) if isinstance(cpu, (int, float)) else None,
            max_rss_bytes=_int(_get(stats, "max_resident_memory")),
            mem_total_bytes=(average_rss * ntasks if average_rss is not None and ntasks
                             else None),
            energy_j=energy,
        ))

    record = JobRecord(
        cluster=str(cluster), job_id=_display_id(job_id_raw, array_job, array_task, het_job,
                                                 het_offset),
        job_id_raw=job_id_raw, submit=submit, state=state, state_raw=state_raw,
        array_job_id=array_job if array_job else None,
        array_task_id=array_task if array_job else None,
        het_job_id=het_job if het_job else None,
        het_job_offset=het_offset if het_job else None,
        name=_get(job, "name") or None, user=_text(_get(job, "user_name")),
        uid=_int(_get(job, "user_id")), group=_text(_get(job, "group_name")),
        account=_text(_get(job, "account")), partition=_text(_get(job, "partition")),
        qos=_text(_get(job, "qos")), wckey=_text(_get(job, "wckey")),
        reservation=_text(_get(job, "reservation")),
        exit_code=_exit_code(_get(job, "exit_code"), _get(job, "exit_code_signal")),
        derived_exit_code=_exit_code(_get(job, "derived_exit_code"),
                                     _get(job, "derived_exit_code_signal")),
        eligible=_time(_get(job, "eligible_time")), start=start, end=end, elapsed_s=elapsed,
        timelimit_min=_int(_get(job, "time_limit")),
        nodes=nodes, cpus=cpus, mem_bytes=mem_mb * MB, billing=billing, gpus=gpus,
        node_list=_text(_get(job, "nodelist")),
        cpu_time_alloc_s=elapsed * cpus,
        # The rollup sums the steps' CPU time (as sacct's job-line TotalCPU does); a job
        # without steps used none (sacct prints 00:00:00).
        cpu_used_s=None if steps else Decimal(0),
        energy_j=energy, db_index=db_index, final=is_final_record(state, end),
    )
    return [record, *steps]


def _has(obj: Any, name: str) -> bool:
    if isinstance(obj, Mapping):
        return name in obj
    try:
        return hasattr(obj, name)
    except Exception:  # noqa: BLE001
        return False


def _raw(job: Any) -> str:
    try:
        data = job if isinstance(job, Mapping) else _get(job, "to_dict", lambda: None)()
    except Exception:  # noqa: BLE001
        data = None
    text = repr(data if data is not None else job)
    return text if len(text) <= 4000 else text[:4000] + "..."


def records_from_pyslurm(objects: Iterable[Any], *, default_cluster: str | None = None,
                         source: str = "pyslurm", tres_alloc: TresAlloc | None = None,
                         tres_names: Mapping[int, str] | None = None) -> Iterator[Item]:
    """Yield a JobRecord (then its StepUsages) for every pyslurm db job in ``objects``.

    Works on ``pyslurm.db.Job`` objects, their ``to_dict()`` mappings or any object with
    the same attribute names (see the module docstring for the fields used and what
    pyslurm lacks). ``tres_alloc`` maps (job id, submit epoch) to the legacy records'
    ``tres_alloc_str`` and ``tres_names`` TRES ids to names: with them the allocation
    (CPUs, memory, billing, GPUs by type) is sacct's AllocTRES. A job that does not
    convert becomes one QuarantinedRecord holding its repr; it never stops the stream.
    """
    names = tres_names or {}
    for position, job in enumerate(objects, start=1):
        try:
            yield from _job_items(job, default_cluster=default_cluster, tres_alloc=tres_alloc,
                                  tres_names=names)
        except Exception as exc:  # noqa: BLE001 - one bad job must never stop a poll
            job_id = _get(job, "id")
            yield QuarantinedRecord(raw=_raw(job), reason=f"pyslurm job #{position}: {exc}",
                                    source=source, line_no=None,
                                    job_id=str(job_id) if job_id is not None else None)


def _in_window(job: Any, since: int, until: int) -> bool:
    eligible = _int(_get(job, "eligible_time")) or 0
    end = _int(_get(job, "end_time")) or 0
    return 0 < eligible < until and (end == 0 or end >= since)


class PyslurmSource:
    """Source: one window from slurmdbd through pyslurm's db API, with each job's allocation
    from the legacy ``slurmdb_jobs`` API and the TRES table (module docstring).

    ``cluster`` is passed as the JobFilter's ``clusters`` (pyslurm otherwise uses the
    local cluster) and used for jobs without one. See the module docstring for what this
    source cannot deliver (requeue duplicates, sub-second step CPU time).
    """

    name = "pyslurm"
    windowed = True
    skips_unchanged = False

    def __init__(self, cluster: str | None) -> None:
        self.cluster = cluster or None
        self._stats = FetchStats()

    @property
    def stats(self) -> FetchStats:
        return self._stats

    def fetch(self, window: Window | None, *, unchanged: object = None) -> Iterator[Item]:
        if window is None:
            raise SourceError("the pyslurm source needs a window (it never reads everything)")
        return self._fetch(window)

    def _fetch(self, window: Window) -> Iterator[Item]:
        try:
            import pyslurm  # noqa: PLC0415 - optional extra, imported only when used
        except ImportError as exc:
            raise SourceError(f"the pyslurm source needs pyslurm, which is not installed: "
                              f"{_INSTALL_HINT} ({exc})") from None
        db = getattr(pyslurm, "db", None)
        job_filter = (getattr(db, "JobFilter", None) or getattr(db, "JobSearchFilter", None)
                      if db is not None else None)
        if db is None or job_filter is None or not hasattr(db, "Jobs"):
            version = getattr(pyslurm, "__version__", "unknown")
            raise SourceError(f"pyslurm {version} has no pyslurm.db.Jobs / JobFilter API; the "
                              f"pyslurm source needs pyslurm >= 23.2 ({_INSTALL_HINT})")
        since = int(window.since.astimezone(UTC).replace(microsecond=0).timestamp())
        until_dt = window.until.astimezone(UTC)
        if until_dt.microsecond:
            until_dt = until_dt.replace(microsecond=0) + timedelta(seconds=1)
        until = int(until_dt.timestamp())
        kwargs: dict[str, Any] = {"start_time": since, "end_time": until}
        if self.cluster:
            kwargs["clusters"] = [self.cluster]
        started = time.perf_counter()
        try:
            jobs = db.Jobs.load(job_filter(**kwargs))
            objects = [job for job in jobs.values() if _in_window(job, since, until)]
        except Exception as exc:  # noqa: BLE001 - pyslurm raises RPCError, ValueError ...
            raise SourceError(f"pyslurm: loading jobs from slurmdbd failed: "
                              f"{type(exc).__name__}: {exc}") from None
        try:
            tres_alloc, tres_names = self._allocations(pyslurm, db, objects)
        except SourceError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise SourceError(f"pyslurm: loading the jobs' allocation (slurmdb_jobs, TRES "
                              f"table) failed: {type(exc).__name__}: {exc}") from None
        waited = time.perf_counter() - started
        quarantined = 0
        for item in records_from_pyslurm(objects, default_cluster=self.cluster, source=self.name,
                                         tres_alloc=tres_alloc, tres_names=tres_names):
            if type(item) is QuarantinedRecord:
                quarantined += 1
            yield item
        self._stats = FetchStats(lines=0, bytes=0, slurm_seconds=waited,
                                 extra={"jobs": len(objects), "quarantined": quarantined,
                                        "pyslurm": getattr(pyslurm, "__version__", None)})

    def _allocations(self, pyslurm: Any, db: Any, objects: list[Any]
                     ) -> tuple[TresAlloc | None, dict[int, str]]:
        """(job id, submit) -> tres_alloc_str for these jobs, and the TRES table; (None, {})
        when this pyslurm lacks the legacy ``slurmdb_jobs`` or ``db.TrackableResources``."""
        legacy = getattr(pyslurm, "slurmdb_jobs", None)
        tres_api = getattr(db, "TrackableResources", None)
        if legacy is None or tres_api is None:
            return None, {}
        names = {int(_get(tres, "id")): str(_get(tres, "type_and_name"))
                 for tres in tres_api.load(name_is_key=False).values()}
        ids = sorted({job_id for job in objects if (job_id := _int(_get(job, "id"))) is not None})
        if not ids:
            return {}, names
        kwargs: dict[str, Any] = {"jobids": ids}
        if self.cluster:
            kwargs["clusters"] = [self.cluster]
        records = legacy().get(**kwargs)
        alloc: dict[tuple[int, int], str] = {}
        for record in records.values():
            job_id, submit = _int(_get(record, "jobid")), _int(_get(record, "submit"))
            if job_id is not None and submit is not None:
                alloc[(job_id, submit)] = str(_get(record, "tres_alloc_str") or "")
        return alloc, names
