"""parse_sacct_json: the real 22.05 captures, the corpus of every data version
(tests/corpus/json), each documented shape, refusals, and hypothesis mutations."""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import json
from copy import deepcopy
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.records import JobRecord, QuarantinedRecord, StepUsage
from billing.rollup import rollup_steps
from collector.slurm.jsonparse import JsonFieldError, document_info, parse_sacct_json
from collector.slurm.parse import ParsableParser

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


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


# --------------------------------------------------------------------------- the corpus
#
# tests/corpus/json/v0.0.NN/sacct.json: the same records as each data version prints them
# (build.py, from Slurm's parser tables), checked against values written by hand
# (expected.json).

CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "json"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"corpus_json_{name}", CORPUS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


corpus = _load("expectations")
VERSIONS = corpus.VERSIONS
corpus_doc = corpus.document
epoch = corpus.epoch


@pytest.mark.parametrize("version", VERSIONS)
def test_corpus_file_is_what_the_builder_writes(version):
    n = int(version.rsplit(".", 1)[1])
    assert (CORPUS / version / "sacct.json").read_text(encoding="utf-8") == _load("build").text(n)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_corpus_job_is_read_right(version):
    doc = corpus_doc(version)
    info = document_info(doc)
    assert (info.version_name, info.known) == (version, True)
    items = parse(doc)
    assert [i for i in items if isinstance(i, QuarantinedRecord)] == []
    steps: dict[tuple[int, int], list[str]] = {}
    current = None
    for item in items:
        if isinstance(item, JobRecord):
            current = (item.job_id_raw, epoch(item.submit))
            steps[current] = []
        else:
            assert current is not None and item.job_id_raw == current[0]
            steps[current].append(item.step)
    corpus.assert_matches_expected(version, [r for r in rollup_steps(items)
                                             if isinstance(r, JobRecord)], steps)


def test_the_versions_differ_where_slurm_says_they_do():
    """Guards the corpus against rendering every version alike."""
    first = {v: corpus_doc(v)["jobs"][0] for v in VERSIONS}
    assert first["v0.0.38"]["state"]["current"] == "COMPLETED"
    assert first["v0.0.39"]["state"]["current"] == ["COMPLETED"]
    assert first["v0.0.38"]["tres"]["allocated"][0]["name"] is None
    assert first["v0.0.41"]["tres"]["allocated"][0]["name"] == ""
    assert first["v0.0.38"]["time"]["limit"] == 60
    assert first["v0.0.42"]["time"]["limit"] == {"set": True, "infinite": False, "number": 60}
    assert first["v0.0.38"]["steps"][0]["step"]["id"] == "batch"
    assert first["v0.0.44"]["steps"][0]["step"]["id"] == "101.batch"
    assert first["v0.0.39"]["steps"][0]["time"]["end"] == 1796000610
    assert first["v0.0.40"]["steps"][0]["time"]["end"]["number"] == 1796000610
    assert first["v0.0.36"]["time"]["start"] == first["v0.0.36"]["time"]["eligible"]
    assert "sluid" in first["v0.0.45"] and "sluid" not in first["v0.0.44"]
    assert first["v0.0.45"]["sluid"] == "sFS5M92GS73635"      # 18200885663903094885
    requeued = {v: corpus_doc(v)["jobs"][10]["state"]["current"] for v in ("v0.0.38", "v0.0.40")}
    assert requeued == {"v0.0.38": "REQUEUED", "v0.0.40": ["PENDING", "REQUEUED"]}


# --------------------------------------------------------------------------- shapes

def test_state_lists_read_as_sacct_prints_them():
    cases = {("COMPLETED",): "COMPLETED", ("PENDING", "REQUEUED"): "REQUEUED",
             ("RUNNING", "COMPLETING"): "COMPLETING", ("FAILED", "LAUNCH_FAILED"): "FAILED",
             ("CANCELLED",): "CANCELLED", ("PENDING", "REQUEUE_HOLD"): "REQUEUE_HOLD",
             ("OUT_OF_MEMORY",): "OUT_OF_MEMORY", ("SOMETHING_NEW",): "SOMETHING_NEW"}
    for flags, word in cases.items():
        (rec,) = jobs(parse({"jobs": [minimal_job(state={"current": list(flags)})]}))
        assert (rec.state, rec.state_raw) == (word, word), flags
    # A state a newer Slurm added is kept, and the job read again (not final).
    (new,) = jobs(parse({"jobs": [minimal_job(state={"current": ["SOMETHING_NEW"]})]}))
    (old,) = jobs(parse({"jobs": [minimal_job(state={"current": "SOMETHING_NEW"})]}))
    assert (new.final, old.final, new.end is not None) == (False, False, True)
    (requeued,) = jobs(parse({"jobs": [minimal_job(state={"current": ["PENDING", "REQUEUED"]})]}))
    assert requeued.final is True                      # a requeued record with an End


@pytest.mark.parametrize("limit, minutes", [
    (60, 60), (None, None), ({"set": True, "infinite": False, "number": 60}, 60),
    ({"set": False, "infinite": False, "number": 0}, None),
    ({"set": False, "infinite": True, "number": 0}, None), (4294967295, None), (4294967294, None),
    ("Infinity", None), (60.0, 60)])
def test_time_limit_in_every_form(limit, minutes):
    times = dict(minimal_job()["time"], limit=limit)
    (rec,) = jobs(parse({"jobs": [minimal_job(time=times)]}))
    assert rec.timelimit_min == minutes


def tres(*entries):
    return {"allocated": [{"type": t, "name": n, "id": 0, "count": c} for t, n, c in entries]}


def test_untyped_tres_names_are_null_or_empty():
    for untyped in (None, ""):
        (rec,) = jobs(parse({"jobs": [minimal_job(tres=tres(
            ("cpu", untyped, 4), ("mem", untyped, 2048), ("node", untyped, 1),
            ("billing", untyped, 7), ("energy", untyped, 99)))]}))
        assert (rec.cpus, rec.mem_bytes, rec.nodes, rec.billing, rec.energy_j) == (
            4, 2 * 1024 ** 3, 1, 7, 99)


def test_new_tres_keys_are_never_gpus_and_typed_gpus_count_once():
    (rec,) = jobs(parse({"jobs": [minimal_job(tres=tres(
        ("cpu", "", 2), ("gres", "gpu", 3), ("gres", "gpu:a100", 1), ("gres", "gpu:h100", 1),
        ("gres", "gpumem", 40960), ("gres", "gpuutil", 100), ("gres", "shard", 8),
        ("gres", "mps", 100), ("fs", "disk", 123), ("license", "matlab", 2),
        ("energy", "", 5), ("bb", "datawarp", 10)))]}))
    assert rec.gpus == (("a100", 1), ("h100", 1), ("untyped", 1))
    (shards,) = jobs(parse({"jobs": [minimal_job(tres=tres(
        ("cpu", "", 1), ("gres", "shard", 4), ("gres", "gpumem", 1024)))]}))
    assert shards.gpus == ()


def test_tres_counts_without_a_value_are_left_out():
    (rec,) = jobs(parse({"jobs": [minimal_job(tres=tres(
        ("cpu", "", 2), ("energy", "", None)))]}))
    assert (rec.cpus, rec.energy_j) == (2, None)          # energy: no value (sacct prints "")
    (rec,) = jobs(parse({"jobs": [minimal_job(tres=tres(("cpu", "", 2), ("energy", "", -2)))]}))
    assert rec.energy_j is None                           # INT64 dump of NO_VAL64
    (rec,) = jobs(parse({"jobs": [minimal_job(tres=tres(("cpu", "", 2)))]}))
    assert rec.energy_j == 0                              # no energy entry at all


@pytest.mark.parametrize("code, text", [
    ({"status": "SUCCESS", "return_code": 0}, "0:0"),
    ({"status": "FAILED", "return_code": 3}, "3:0"),
    ({"status": "SIGNALED", "signal": {"signal_id": 9, "name": "KILL"}}, "0:9"),
    ({"status": ["ERROR"], "return_code": {"set": True, "infinite": False, "number": 2},
      "signal": {"id": {"set": False, "infinite": False, "number": 0}, "name": ""}}, "2:0"),
    ({"status": ["SIGNALED"], "return_code": {"set": False, "infinite": False, "number": 0},
      "signal": {"id": {"set": True, "infinite": False, "number": 15}, "name": "TERM"}}, "0:15"),
    ({"status": ["PENDING"], "return_code": {"set": False, "infinite": False, "number": 0}}, "0:0"),
    (256, "1:0"), (9, "0:9"), (None, None)])
def test_exit_codes_in_every_form(code, text):
    (rec,) = jobs(parse({"jobs": [minimal_job(exit_code=code)]}))
    assert rec.exit_code == text


@pytest.mark.parametrize("step_obj, name", [
    ({"id": "batch", "job_id": 40, "het": {"component": None}}, "batch"),
    ({"id": 0, "job_id": 40}, "0"),
    ({"id": "40.extern"}, "extern"),
    ({"id": "40.interactive"}, "interactive"),
    ({"id": "40.3"}, "3"),
    ({"id": "40.0+1"}, "0+1"),
    ({"id": 2, "het": {"component": 1}}, "2+1"),
    ({"id": {"job_id": 40, "step_id": "batch"}}, "batch")])
def test_step_ids_in_every_form(step_obj, name):
    job = minimal_job(steps=[{"step": step_obj, "time": {"elapsed": 1}}])
    (step,) = [i for i in parse({"jobs": [job]}) if isinstance(i, StepUsage)]
    assert (step.step, step.job_id_raw) == (name, 40)


def test_wrapped_ids_and_times():
    wrapped = minimal_job(
        array={"job_id": 30, "task_id": {"set": True, "infinite": False, "number": 7},
               "task": ""},
        time={"submission": {"set": True, "infinite": False, "number": 1795351542},
              "eligible": 1795351542, "start": 1795351543,
              "end": {"set": False, "infinite": False, "number": 0}, "elapsed": 11},
        state={"current": ["RUNNING"]})
    (rec,) = jobs(parse({"jobs": [wrapped]}))
    assert (rec.job_id, rec.array_task_id, rec.end, rec.final) == ("30_7", 7, None, False)
    het = minimal_job(het={"job_id": 50, "job_offset": {"set": True, "infinite": False,
                                                       "number": 0}})
    not_het = minimal_job(het={"job_id": 0, "job_offset": {"set": False, "infinite": False,
                                                          "number": 0}})
    a, b = jobs(parse({"jobs": [het, not_het]}))
    assert (a.job_id, a.het_job_id, a.het_job_offset) == ("50+0", 50, 0)
    assert (b.job_id, b.het_job_id) == ("40", None)


@pytest.mark.parametrize("task, shown", [("1-5", "1-5"), ("0x3E", "1-5"), ("0x2D", "0,2-3,5"),
                                         ("[1,3]", "1,3")])
def test_pending_array_task_lists(task, shown):
    pending = minimal_job(job_id=30, array={"job_id": 30, "task_id": None, "task": task},
                          state={"current": ["PENDING"]})
    (rec,) = jobs(parse({"jobs": [pending]}))
    assert rec.job_id == f"30_[{shown}]"


def test_dbv0_0_37_start_time_is_recovered_from_end_and_elapsed():
    """dbv0.0.36/37 print the eligible time as time.start (their parse.c maps eligible to
    both); an ended job's start is end - elapsed - suspended."""
    meta = {"plugin": {"type": "openapi/dbv0.0.37", "name": "Slurm OpenAPI DB v0.0.37"}}
    ran = minimal_job(time={"submission": 100, "eligible": 100, "start": 100, "end": 400,
                            "elapsed": 200, "suspended": 50})
    never = minimal_job(job_id=41, time={"submission": 100, "eligible": 100, "start": 100,
                                         "end": 160, "elapsed": 0},
                        state={"current": "CANCELLED"})
    a, b = jobs(parse({"meta": meta, "jobs": [ran, never]}))
    assert (epoch(a.start), b.start) == (150, None)
    # The same document from 22.05 (dbv0.0.38) is taken as printed.
    meta38 = {"plugin": {"type": "openapi/dbv0.0.38"}}
    (c,) = jobs(parse({"meta": meta38, "jobs": [ran]}))
    assert epoch(c.start) == 100


@pytest.mark.parametrize("meta, name, release", [
    ({"plugin": {"type": "openapi/dbv0.0.36"}, "Slurm": {"release": "20.11.9"}},
     "v0.0.36", "20.11.9"),
    ({"plugin": {"type": "openapi/slurmdbd", "data_parser": "data_parser/v0.0.42"},
      "slurm": {"release": "24.11.5"}}, "v0.0.42", "24.11.5"),
    ({"plugin": {"type": "", "name": "", "data_parser": "v0.0.44"}}, "v0.0.44", None),
    ({}, None, None)])
def test_document_info(meta, name, release):
    info = document_info({"meta": meta, "jobs": []})
    assert (info.version_name, info.slurm_release) == (name, release)


def test_an_unknown_version_is_read_by_shape():
    doc = corpus_doc("v0.0.45")
    doc["meta"]["plugin"]["data_parser"] = "data_parser/v0.0.46"
    assert document_info(doc).known is False
    assert len(jobs(parse(doc))) == 16


# --------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("doc, message", [
    ([], "top level is a list"),
    ("jobs", "top level is a str"),
    ({"meta": {}, "errors": []}, r"no 'jobs' list \(top-level keys: errors, meta\)"),
    ({"jobs": {"1": {}}}, "no 'jobs' list"),
    ({"jobs": [{"job_id": 1, "job_state": ["RUNNING"], "submit_time": {"number": 1}}]},
     "slurmctld job list"),
])
def test_a_document_of_unknown_shape_is_refused_by_name(doc, message):
    with pytest.raises(ValueError, match=message):
        parse(doc)


@pytest.mark.parametrize("change, field", [
    ({"time": {"submission": "yesterday"}}, "time.submission"),
    ({"time": {"submission": 1795351542, "end": {"sets": 1}}}, "time.end"),
    ({"time": {"submission": 1795351542, "elapsed": -5}}, "time.elapsed"),
    ({"state": {"current": []}}, "state.current"),
    ({"state": {"current": [7]}}, "state.current[0]"),
    ({"tres": {"allocated": [{"type": "cpu", "name": "", "count": "many"}]}},
     "tres.allocated[0].count"),
    ({"tres": {"allocated": [{"name": "", "count": 1}]}}, "tres.allocated[0].type"),
    ({"tres": {"allocated": "cpu=x"}}, "tres.allocated"),
    ({"steps": [{"step": {"id": None}}]}, "steps[0].step.id"),
    ({"steps": [{"step": {"id": "1.batch"}, "time": {"total": {"seconds": "a"}}}]},
     "steps[0].time.total.seconds"),
    ({"steps": "none"}, "steps"),
    ({"array": {"job_id": 30, "task_id": True}}, "array.task_id"),
    ({"exit_code": {"return_code": [1]}}, "exit_code.return_code"),
    ({"tres": {"allocated": [{"type": "cpu", "name": "", "count": 2**40}]}},
     "tres.allocated cpu"),
    ({"time": {"submission": 1795351542, "elapsed": 2**70}}, "time.elapsed"),
    ({"job_id": 0}, "job_id"),
    ({"sluid": "not-a-sluid"}, "sluid"),
    ({"sluid": "sZZZZZZZZZZZZZ"}, "sluid"),                   # beyond 64 bits
])
def test_a_bad_job_is_quarantined_naming_the_job_and_the_field(change, field):
    good = minimal_job(job_id=39)
    bad = minimal_job(**change)
    items = parse({"jobs": [good, bad]})
    rec, quarantined = items
    assert isinstance(rec, JobRecord) and rec.job_id_raw == 39
    assert isinstance(quarantined, QuarantinedRecord), quarantined
    job_id = bad["job_id"]
    assert quarantined.reason.startswith(f"job #2 (job_id {job_id}) of the JSON document: "
                                         f"{field}: "), quarantined.reason
    assert json.loads(quarantined.raw) == json.loads(json.dumps(bad))
    assert quarantined.job_id == str(job_id)


def test_json_field_error_carries_the_path():
    error = JsonFieldError("steps[2].time.total", "bad")
    assert (error.path, str(error)) == ("steps[2].time.total", "steps[2].time.total: bad")


# --------------------------------------------------------------------------- hypothesis
#
# Any mutation of a real-shaped job object (every corpus version, and the real 22.05
# capture) gives a record (with its steps) or one quarantined item, never an exception;
# and it never changes how the other jobs of the document are read.

CORPUS_JOBS = [(v, job) for v in VERSIONS for job in corpus_doc(v)["jobs"]] + [
    ("22.05", job) for job in load("sacct-all.json")["jobs"]]

SLURM_VALUES = st.sampled_from([
    None, 0, -1, -2, 1, 4294967294, 4294967295, 18446744073709551614, 18446744073709551615,
    2**63, 2**70, 1.5, float("nan"), float("inf"), True, "", "Infinity", "None", "Unknown",
    "None assigned", "abc", "1", [], {}, ["COMPLETED"], ["PENDING", "REQUEUED"],
    {"set": True, "infinite": False, "number": 5}, {"set": False, "infinite": False, "number": 0},
    {"set": True, "infinite": True, "number": 0}, {"set": True, "number": "x"},
    {"set": True, "infinite": False, "number": -7}, {"type": "gres", "name": "gpu", "count": 1},
    [{"type": "gres", "name": "gpu:a100", "count": 2}], "7.batch", "7.", {"id": None}])
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3), max_leaves=8)
HYPOTHESIS = settings(max_examples=400, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def mutate(value, data):
    """Replace or delete one node somewhere inside ``value`` (a deep copy)."""
    if isinstance(value, dict) and value and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(value)))
        if data.draw(st.integers(0, 5)) == 0:
            del value[key]
        else:
            value[key] = mutate(value[key], data)
        return value
    if isinstance(value, list) and value and data.draw(st.booleans()):
        index = data.draw(st.integers(0, len(value) - 1))
        value[index] = mutate(value[index], data)
        return value
    return data.draw(SLURM_VALUES | ANY_JSON)


@HYPOTHESIS
@given(st.data())
def test_any_mutation_of_a_real_shaped_job_is_a_record_or_quarantined(data):
    _, original = data.draw(st.sampled_from(CORPUS_JOBS))
    _, neighbour = data.draw(st.sampled_from(CORPUS_JOBS))
    job = original
    for _ in range(data.draw(st.integers(1, 4))):
        job = mutate(deepcopy(job), data)
    doc = {"jobs": [neighbour, job, neighbour]}
    items = list(parse_sacct_json(doc, source="fuzz", default_cluster="fuzz"))
    alone = list(parse_sacct_json({"jobs": [neighbour]}, source="fuzz", default_cluster="fuzz"))
    n = len(alone)
    # The neighbours read exactly as alone; the mutated job is one record with its steps
    # or one quarantined item holding its JSON and a reason naming it.
    assert items[:n] == alone and items[-n:] == alone
    middle = items[n:len(items) - n]
    assert middle, "the mutated job vanished"
    if isinstance(middle[0], QuarantinedRecord):
        (quarantined,) = middle
        assert quarantined.reason.startswith("job #2")
        assert ": " in quarantined.reason
        assert quarantined.raw == json.dumps(job, sort_keys=True, default=str)
    else:
        record, *steps = middle
        assert isinstance(record, JobRecord)
        assert all(isinstance(s, StepUsage) and s.job_id_raw == record.job_id_raw
                   for s in steps)
        assert record.submit.tzinfo is not None and record.cpus >= 0 and record.mem_bytes >= 0
    rolled = list(rollup_steps(items))
    assert sum(isinstance(r, JobRecord) for r in rolled) == sum(
        isinstance(i, JobRecord) for i in items)


# --------------------------------------------------------------------------- real output
#
# tests/corpus/json/real: the lab's Slurm 22.05.8, 24.11.5 and 26.05.5, the same job mix
# exported as text (--format=ALL) and as JSON in every data version each release has.
# Job by job, the JSON gives the rows the text gives, but for what the JSON does not
# carry (uid, DBIndex, "by <uid>"), 22.05's exit-code quirk, a running job's clock, and
# the start of a job that never ran in dbv0.0.36/37 (printed as the eligible time).

REAL = CORPUS / "real"
REAL_JSON = sorted((p.parent.name, p.name) for p in REAL.glob("*/*.json.gz"))
JSON_LACKS = {"uid", "db_index", "state_raw"}   # v0.0.45 has db_index (its sluid)


def real_json(release: str, name: str) -> dict:
    with gzip.open(REAL / release / name, "rt", encoding="utf-8") as handle:
        return json.load(handle)


def real_text_records(release: str) -> dict:
    with gzip.open(REAL / release / "sacct-all.psv.gz", "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    parser = ParsableParser(lines[0].split("|"), delimiter="|", source="test")
    items = list(parser.parse_lines(lines[1:]))
    assert not [i for i in items if isinstance(i, QuarantinedRecord)]
    return {(r.job_id_raw, r.submit): r for r in rollup_steps(items) if isinstance(r, JobRecord)}


def test_the_real_captures_are_all_here():
    assert REAL_JSON == sorted(
        [("22.05", "sacct-json-v0.0.38.json.gz")]
        + [("22.05", f"slurmrestd-v0.0.{n}-jobs.json.gz") for n in (36, 37, 38)]
        + [("24.11", f"{kind}-v0.0.{n}{tail}.json.gz") for n in (40, 41, 42)
           for kind, tail in (("sacct-json", ""), ("slurmrestd", "-jobs"))]
        + [("26.05", f"{kind}-v0.0.{n}{tail}.json.gz") for n in (42, 43, 44, 45)
           for kind, tail in (("sacct-json", ""), ("slurmrestd", "-jobs"))])


@pytest.mark.parametrize("release, name", REAL_JSON)
def test_real_json_of_every_version_gives_the_rows_of_the_text_export(release, name):
    doc = real_json(release, name)
    info = document_info(doc)
    assert info.slurm_release.startswith(release) and info.known
    items = parse(doc)
    assert [i for i in items if isinstance(i, QuarantinedRecord)] == []
    from_json = {(r.job_id_raw, r.submit): r for r in rollup_steps(items)
                 if isinstance(r, JobRecord)}
    text = real_text_records(release)
    common = set(text) & set(from_json)
    # The sacct export holds exactly the job mix; slurmrestd's window may hold more.
    assert common == set(text) and len(common) >= 12
    allowed = set(JSON_LACKS) - ({"db_index"} if info.version >= 45 else set())
    if info.version == 38 or info.version in (36, 37):
        allowed |= {"exit_code", "derived_exit_code"}       # 22.05's openapi plugins
    for key in common:
        ours, theirs = text[key], from_json[key]
        assert ours.state_raw.startswith(theirs.state_raw), key
        differences = {f.name for f in dataclasses.fields(JobRecord)
                       if getattr(ours, f.name) != getattr(theirs, f.name)}
        if not ours.final:                      # running: read at two moments
            differences -= {"elapsed_s", "cpu_time_alloc_s", "cpu_used_s", "max_rss_bytes",
                            "mem_used_byte_s"}
        if info.version in (36, 37) and not theirs.elapsed_s and not theirs.cpus:
            differences -= {"start"}            # never ran: no start in dbv0.0.36/37
        assert differences <= allowed, (name, ours.job_id, differences - allowed)
    # The GPU mix, by type: a100 x2, h100 x1, one untyped (l4 is not an accounted type).
    gpus = {theirs.name: theirs.gpus for theirs in from_json.values()}
    assert (gpus["a100x2"], gpus["h100x1"], gpus["untyped_gpu"], gpus["cpu_only"]) == (
        (("a100", 2),), (("h100", 1),), (("untyped", 1),), ())


def test_real_24_11_db_indexes_are_above_bigint():
    """Why jobs.db_index is numeric(20,0): every 24.11 DBIndex of the capture is > 2^63."""
    records = real_text_records("24.11").values()
    assert records and all(r.db_index is not None and r.db_index > 2**63 - 1 for r in records)


@pytest.mark.parametrize("sluid, db_index", [
    ("s18HM92GS74R00", 1461005848967012352),        # a 26.05 job: its sacct DBIndex
    ("s18hm92gs74r00", 1461005848967012352), ("sFS5M92GS73635", 18200885663903094885),
    ("s0000000000000", 0), ("sFZZZZZZZZZZZZ", 2**64 - 1), ("", None), (None, None)])
def test_the_v0_0_45_sluid_is_the_db_index(sluid, db_index):
    job = minimal_job(sluid=sluid, steps=[{"step": {"id": "40.batch"}, "time": {"elapsed": 1}}])
    rec, step = parse({"jobs": [job]})
    assert (rec.db_index, step.job_db_index) == (db_index, db_index)
