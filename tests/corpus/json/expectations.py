"""The hand-written expectations of the JSON corpus (expected.json), for the tests.

Loaded by path (``load()`` in tests/unit/test_sacct_json.py and
tests/integration/test_json_corpus.py): this directory is data, not a package.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from billing.records import JobRecord

HERE = Path(__file__).resolve().parent
VERSIONS = [f"v0.0.{n}" for n in range(36, 46)]
EXPECTED = json.loads((HERE / "expected.json").read_text(encoding="utf-8"))
CLUSTER = EXPECTED["cluster"]
JOB_FIELDS = ("job_id", "job_id_raw", "state", "state_raw", "final", "elapsed_s",
              "timelimit_min", "cpus", "nodes", "mem_bytes", "billing", "energy_j",
              "cpu_time_alloc_s", "max_rss_bytes", "mem_used_byte_s", "exit_code",
              "derived_exit_code", "array_job_id", "array_task_id", "het_job_id",
              "het_job_offset", "node_list", "partition", "db_index")
TIME_FIELDS = ("submit", "eligible", "start", "end")


def document(version: str) -> dict:
    return json.loads((HERE / version / "sacct.json").read_text(encoding="utf-8"))


def epoch(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def expected_jobs(version: str) -> dict[tuple[int, int], dict]:
    """(job_id_raw, submit) -> the expectation, with the version's overrides applied."""
    out = {}
    overrides = EXPECTED["overrides"].get(version, {})
    for job in EXPECTED["jobs"]:
        job = {"db_index": None, **job}
        key = f"{job['job_id_raw']}@{job['submit']}"
        job.update({k: v for k, v in overrides.get(key, {}).items() if k != "why"})
        out[(job["job_id_raw"], job["submit"])] = job
    return out


def assert_matches_expected(version: str, records: list[JobRecord],
                            steps: dict[tuple[int, int], list[str]] | None = None) -> None:
    """Every expected job is there once, with every expected value; nothing else is."""
    expected = expected_jobs(version)
    got = {(r.job_id_raw, epoch(r.submit)): r for r in records}
    assert len(got) == len(records), "a job came out twice"
    assert set(got) == set(expected)
    for key, want in expected.items():
        rec = got[key]
        for name in JOB_FIELDS:
            assert getattr(rec, name) == want[name], (version, key, name)
        for name in TIME_FIELDS:
            assert epoch(getattr(rec, name)) == want[name], (version, key, name)
        assert rec.cluster == CLUSTER
        assert dict(rec.gpus) == want["gpus"], (version, key)
        assert rec.cpu_used_s == Decimal(want["cpu_used_s"]), (version, key)
        if steps is not None:
            assert steps[key] == want["steps"], (version, key)
