"""parse_sacct_json on the real ``sacct --json`` and slurmrestd dbv0.0.38 captures."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from billing.records import JobRecord, QuarantinedRecord, StepUsage
from billing.rollup import rollup_steps
from collector.slurm.jsonparse import parse_sacct_json
from collector.slurm.parse import ParsableParser

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
UTC = timezone.utc


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def parse(doc: dict, cluster: str | None = None) -> list:
    return list(parse_sacct_json(doc, source="test", default_cluster=cluster))


@pytest.fixture(scope="module")
def sacct_json():
    return parse(load("sacct-all.json"))


def jobs(items):
    return [i for i in items if isinstance(i, JobRecord)]


def by_raw(items, raw: int) -> list[JobRecord]:
    return [i for i in jobs(items) if i.job_id_raw == raw]


@pytest.mark.parametrize("name, job_count, step_count", [
    ("sacct-all.json", 22, 24),
    ("slurmrestd-dbv0.0.38-jobs.json", 23, 25),    # one more job (23, with one step)
])
def test_both_json_fixtures_parse(name, job_count, step_count):
    items = parse(load(name))
    assert [i for i in items if isinstance(i, QuarantinedRecord)] == []
    assert len(jobs(items)) == job_count
    assert len([i for i in items if isinstance(i, StepUsage)]) == step_count


def test_same_jobs_as_the_text_export(sacct_json):
    lines = (FIXTURES / "sacct-wide-header.psv").read_text(encoding="utf-8").split("\n")
    parser = ParsableParser(lines[0].split("|"), delimiter="|", source="test")
    text_jobs = jobs(parser.parse_lines(lines[1:]))

    def key(rec: JobRecord):
        return (rec.job_id_raw, rec.submit, rec.state, rec.cpus, rec.mem_bytes, rec.gpus)

    text_keys = {(r.job_id_raw, r.submit) for r in text_jobs}
    json_keys = {(r.job_id_raw, r.submit) for r in jobs(sacct_json)}
    # Both captures hold the same 22 records (16 twice). The RUNNING job 21 was captured at
    # different moments (elapsed 29 s in the text, 540 s in the JSON), but the fields
    # compared here do not change while it runs, so no job needs excluding.
    assert json_keys == text_keys
    common = text_keys & json_keys
    assert len(common) == 22
    assert {key(r) for r in jobs(sacct_json) if (r.job_id_raw, r.submit) in common} == \
        {key(r) for r in text_jobs}
    # The display JobID is rebuilt as sacct prints it.
    assert {(r.job_id_raw, r.submit, r.job_id) for r in jobs(sacct_json)
            if (r.job_id_raw, r.submit) in common} == \
        {(r.job_id_raw, r.submit, r.job_id) for r in text_jobs}


def test_array_and_het_ids(sacct_json):
    (task3,) = by_raw(sacct_json, 19)
    assert (task3.job_id, task3.array_job_id, task3.array_task_id) == ("6_3", 6, 3)
    (task5,) = by_raw(sacct_json, 6)
    assert (task5.job_id, task5.array_job_id, task5.array_task_id) == ("6_5", 6, 5)
    (het1,) = by_raw(sacct_json, 15)
    assert (het1.job_id, het1.het_job_id, het1.het_job_offset) == ("14+1", 14, 1)
    assert het1.start is None and het1.node_list is None
    assert (het1.cpus, het1.mem_bytes, het1.billing, het1.gpus) == (0, 0, None, ())
    assert (het1.state, het1.final) == ("CANCELLED", True)


def test_job_fields(sacct_json):
    (rec,) = by_raw(sacct_json, 2)
    assert rec.submit == at("2026-11-22T12:45:42")          # time.submission 1795351542
    assert (rec.start, rec.end) == (at("2026-11-22T12:45:43"), at("2026-11-22T12:45:54"))
    assert (rec.elapsed_s, rec.timelimit_min) == (11, 5)
    assert (rec.cpus, rec.nodes, rec.billing) == (2, 1, 4)
    assert rec.mem_bytes == 1073741824                      # mem count 1024 (MB)
    assert rec.gpus == (("untyped", 1),)                    # gres/gpu 1
    assert rec.cpu_used_s == Decimal("6.220")   # batch: 5 s + 1220242 us, truncated to ms as sacct prints TotalCPU
    assert rec.cpu_time_alloc_s == 22                       # 11 s x 2 CPUs
    assert (rec.exit_code, rec.derived_exit_code) == ("0:0", "0:0")
    assert (rec.user, rec.group, rec.account, rec.partition, rec.qos) == (
        "root", "root", "physics", "batch", "normal")
    assert (rec.wckey, rec.reservation, rec.node_list) == (None, None, "vm")
    (unlimited,) = by_raw(sacct_json, 1)
    assert unlimited.timelimit_min is None                  # time.limit null
    (running,) = by_raw(sacct_json, 21)
    assert (running.state, running.final, running.end) == ("RUNNING", False, None)  # end 0
    # Known 22.05 dbv0.0.38 quirk: FAILED job 7 (sacct ExitCode 3:0) reads SUCCESS/0 here.
    (failed,) = by_raw(sacct_json, 7)
    assert (failed.state, failed.exit_code) == ("FAILED", "0:0")


def test_steps(sacct_json):
    steps = [i for i in sacct_json if isinstance(i, StepUsage) and i.job_id_raw == 5]
    assert [s.step for s in steps] == ["batch", "0", "1", "2"]
    sleep = steps[3]
    assert sleep.mem_total_bytes == 3457024                 # requested.total mem (3376K)
    assert sleep.max_rss_bytes == 1736704                   # requested.max mem (1696K)
    assert sleep.cpu_used_s == Decimal("0.004352")
    assert (sleep.elapsed_s, sleep.state, sleep.energy_j) == (3, "COMPLETED", 0)
    assert steps[1].mem_total_bytes is None                 # total: energy only
    (cancelled,) = [i for i in sacct_json if isinstance(i, StepUsage) and i.job_id_raw == 9]
    assert cancelled.state == "CANCELLED"


def test_rollup_of_json_matches_text_numbers(sacct_json):
    rolled = {(r.job_id_raw, r.submit): r for r in rollup_steps(sacct_json)}
    five = rolled[(5, at("2026-11-22T12:45:42"))]
    assert five.max_rss_bytes == 324247552
    assert five.mem_used_byte_s == 3405324288               # same as from the text export
    old = rolled[(16, at("2026-11-22T12:45:43"))]
    new = rolled[(16, at("2026-11-22T12:48:17"))]
    assert (old.state, old.max_rss_bytes) == ("REQUEUED", 3338240)
    assert (new.state, new.max_rss_bytes) == ("COMPLETED", 3293184)


def minimal_job(**overrides) -> dict:
    job = {"job_id": 40, "cluster": "lab", "name": "x",
           "time": {"submission": 1795351542, "start": 1795351543, "end": 1795351554,
                    "eligible": 1795351542, "elapsed": 11, "limit": 5},
           "state": {"current": "COMPLETED"},
           "array": {"job_id": 0, "task_id": None}, "het": {"job_id": 0, "job_offset": None},
           "tres": {"allocated": []}, "steps": []}
    job.update(overrides)
    return job


def test_typed_gpus_and_pending_array():
    typed = minimal_job(tres={"allocated": [
        {"type": "cpu", "name": None, "count": 8},
        {"type": "gres", "name": "gpu", "count": 3},
        {"type": "gres", "name": "gpu:a100", "count": 2},
        {"type": "mem", "name": None, "count": 2048}]})
    pending = minimal_job(job_id=30, array={"job_id": 30, "task_id": None, "task": "1-5"},
                          state={"current": "PENDING"})
    rec, arr = jobs(parse({"jobs": [typed, pending]}))
    assert rec.gpus == (("a100", 2), ("untyped", 1))
    assert rec.mem_bytes == 2147483648
    assert (arr.job_id, arr.array_job_id, arr.array_task_id, arr.final) == (
        "30_[1-5]", 30, None, False)


def test_malformed_job_is_quarantined_with_its_json():
    good = minimal_job()
    no_submit = minimal_job(job_id=41, time={"submission": 0})
    bad_id = minimal_job(job_id="abc")
    no_cluster = minimal_job(job_id=42, cluster=None)
    items = parse({"jobs": [no_submit, good, bad_id, "junk", no_cluster]})
    q1, rec, q2, q3, q4 = items
    assert isinstance(rec, JobRecord) and rec.job_id == "40"
    assert isinstance(q1, QuarantinedRecord) and "submission" in q1.reason
    assert json.loads(q1.raw)["job_id"] == 41 and q1.job_id == "41"
    assert isinstance(q2, QuarantinedRecord) and q2.job_id == "abc"
    assert isinstance(q3, QuarantinedRecord) and "job #4" in q3.reason
    assert isinstance(q4, QuarantinedRecord) and "cluster" in q4.reason
    # With a default cluster the last one parses.
    assert jobs(parse({"jobs": [no_cluster]}, cluster="lab"))[0].cluster == "lab"


def test_document_without_jobs_is_refused():
    with pytest.raises(ValueError, match="no 'jobs' list"):
        parse({"meta": {}})
