"""The pyslurm source: accounting through pyslurm's slurmdbd API (``pyslurm.db``).

This module owns two things:

* ``records_from_pyslurm``: a pure mapping from pyslurm's database job objects to the
  items every source yields (JobRecord per job, StepUsage per step). It reads plain
  attributes or mapping keys only, so it works on real ``pyslurm.db.Job`` objects, on
  their ``to_dict()`` output, and on simple stand-ins (the unit tests feed it the real
  records captured from pyslurm 22.5.3 on the lab, tests/fixtures/pyslurm-22.5-db-jobs.txt).
* ``PyslurmSource``: the Source that loads one window with
  ``pyslurm.db.Jobs.load(pyslurm.db.JobFilter(start_time=..., end_time=..., clusters=[...]))``.
  pyslurm is imported only inside ``fetch`` (it is the optional extra
  ``hpc-billing[pyslurm]``), so nothing else needs it installed.

Which pyslurm: the ``pyslurm.db`` API, as released on PyPI from 23.2 on (the setup.cfg
extra asks for >= 23.2) and present in the 22.5.x branch on GitHub. The target shape was
read from the pyslurm 25.11.2 sources (PyPI sdist): ``Job.allocated_tres`` (a
TrackableResources whose ``cpu``/``mem``/``node``/``billing`` hold counts, memory in MiB,
and whose ``gres`` maps ``gpu`` / ``gpu:<type>`` to GPU objects with ``type`` and
``count``; None while pending), ``Job.steps`` (a dict of JobStep with ``stats``),
``db_index``, ``user_id``; ``JobFilter`` (``JobSearchFilter`` in early 23.2 releases, also
accepted). A release without ``allocated_tres`` falls back to ``cpus``/``memory`` (no GPUs,
no billing). A pyslurm release only builds against the Slurm major version it is named
after (25.11.2 on Slurm 22.05: "Slurm version mismatch: requires Slurm 25.11, found
22.5"), so this source is for sites whose Slurm matches a released pyslurm. There is NO
pyslurm on PyPI for Slurm 22.05 (RECIPE §7); the 22.5.x branch builds from GitHub only,
and that is where the captured records come from.

What pyslurm's db API does NOT give, compared with sacct (be aware before choosing it):

* On 22.5 (the captured records): no TRES at all on a job, so **no GPUs and no
  billing** (gpus is empty, billing None); CPUs and memory come from ``cpus`` and
  ``memory`` (the latter is the REQUESTED memory, in MB); ``group_name`` is None.
* On every version: ``Jobs.load`` keeps one job per (cluster, job id), so the two records
  of a **requeued job collapse into one** (the last); pyslurm's JobFilter does not ask for
  duplicates either. A requeued job's first run is therefore never stored from this source.
* Step CPU time is whole seconds (pyslurm reads ``tot_cpu_sec`` and drops the
  microseconds); a step's summed memory (sacct's TRESUsageInTot mem) is not exposed and is
  estimated as the average RSS x the number of tasks (exact for one-task steps).
* ``state`` has no ``by <uid>`` suffix (pyslurm gives ``cancelled_by`` as a user name).

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
from collector.slurm.fields import MB, SENTINELS, gpu_breakdown, normalise_state
from collector.slurm.source import Item, SourceError

UTC = timezone.utc
# Slurm's NO_VAL / INFINITE (uint32) as pyslurm may pass them through raw (22.5's legacy
# API printed array_task_id=4294967294).
_NO_VAL32 = 0xFFFFFFFE
_INSTALL_HINT = ("pip install 'hpc-billing[pyslurm]' (a pyslurm release matching the "
                 "site's Slurm major version; there is none for Slurm 22.05 on PyPI)")


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """``obj.name`` or ``obj[name]``; ``default`` when absent or when pyslurm raises
    (some properties fail on records that lack the underlying data)."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    try:
        return getattr(obj, name, default)
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


def _job_items(job: Any, *, default_cluster: str | None) -> list[Item]:
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
    db_index = _int(_get(job, "db_index"))

    # Allocation: pyslurm >= 23.2 has allocated_tres (None while pending). 22.5 has only
    # cpus / memory / num_nodes, which pyslurm fills with the REQUESTED figures for a job
    # that never started; sacct's AllocTRES is empty then, so such a job allocates nothing.
    billing: int | None = None
    gpus: tuple[tuple[str, int], ...] = ()
    if _has(job, "allocated_tres"):
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
        energy_j=None, db_index=db_index, final=is_final_record(state, end),
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
                         source: str = "pyslurm") -> Iterator[Item]:
    """Yield a JobRecord (then its StepUsages) for every pyslurm db job in ``objects``.

    Works on ``pyslurm.db.Job`` objects, their ``to_dict()`` mappings or any object with
    the same attribute names (see the module docstring for the fields used and what
    pyslurm lacks). A job that does not convert becomes one QuarantinedRecord holding its
    repr; it never stops the stream.
    """
    for position, job in enumerate(objects, start=1):
        try:
            yield from _job_items(job, default_cluster=default_cluster)
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
    """Source: one window from slurmdbd through pyslurm's db API (pyslurm >= 23.2).

    ``cluster`` is passed as the JobFilter's ``clusters`` (pyslurm otherwise uses the
    local cluster) and used for jobs without one. See the module docstring for what this
    source cannot deliver (GPUs and billing on 22.5, requeue duplicates everywhere).
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
        waited = time.perf_counter() - started
        quarantined = 0
        for item in records_from_pyslurm(objects, default_cluster=self.cluster, source=self.name):
            if type(item) is QuarantinedRecord:
                quarantined += 1
            yield item
        self._stats = FetchStats(lines=0, bytes=0, slurm_seconds=waited,
                                 extra={"jobs": len(objects), "quarantined": quarantined,
                                        "pyslurm": getattr(pyslurm, "__version__", None)})
