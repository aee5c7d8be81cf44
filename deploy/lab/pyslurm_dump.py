"""Dump what pyslurm returns for some jobs, as JSON (fixtures for the pyslurm source).

Run with the python of a venv that has the release's pyslurm (deploy/lab/pyslurm.sh venv),
for 24.11 inside the trixie root::

    python deploy/lab/pyslurm_dump.py CLUSTER JOBID[,JOBID...] > pyslurm-jobs.json

It writes: pyslurm's version; the TRES table (``pyslurm.db.TrackableResources``: id, type,
name); every job of ``pyslurm.db.Jobs.load(JobFilter(ids=..., clusters=[CLUSTER]))`` as
``to_dict()`` (steps included); and, for the same ids, the legacy
``pyslurm.slurmdb_jobs().get(...)`` records' identity and TRES strings (``tres_alloc_str`` has
numeric TRES ids, e.g. ``1001=2`` for gres/gpu), which the db API lacks.
"""

from __future__ import annotations

import json
import sys

import pyslurm


def plain(value):
    """JSON-able: dict keys as str (step ids mix ``batch`` and ``0``)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def main() -> int:
    cluster, ids_text = sys.argv[1], sys.argv[2]
    ids = [int(i) for i in ids_text.split(",") if i]
    tres = pyslurm.db.TrackableResources.load(name_is_key=False)
    jobs = pyslurm.db.Jobs.load(pyslurm.db.JobFilter(ids=ids, clusters=[cluster]))
    legacy = pyslurm.slurmdb_jobs().get(jobids=ids, clusters=[cluster])
    keep = ("jobid", "cluster", "submit", "array_job_id", "array_task_id", "het_job_id",
            "het_job_offset", "state", "tres_alloc_str", "tres_req_str")
    out = {
        "pyslurm": pyslurm.__version__,
        "cluster": cluster,
        "ids": ids,
        "tres": sorted(({"id": t.id, "type": t.type, "name": t.name} for t in tres.values()),
                       key=lambda t: t["id"]),
        "jobs": [job.to_dict() for _, job in sorted(jobs.items())],
        "slurmdb_jobs": [{k: rec.get(k) for k in keep} for _, rec in sorted(legacy.items())],
    }
    json.dump(plain(out), sys.stdout, indent=1, sort_keys=True, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
