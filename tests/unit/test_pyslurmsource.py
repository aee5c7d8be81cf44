"""records_from_pyslurm on REAL pyslurm records, and PyslurmSource without the lab.

Two sets of real records:

* pyslurm 22.5.3's db API alone (tests/fixtures/pyslurm-22.5-db-jobs.txt, a copy of
  shared/slurm/samples), compared with the sacct export of the SAME cluster
  (sacct-wide-header.psv): what the db API gives without the allocation;
* what pyslurm 22.5.3 on Slurm 22.05 and 24.11.0 on Slurm 24.11 returned on the lab for the
  captured job mix (tests/fixtures/pyslurm-<version>-jobs.json, written by
  deploy/lab/pyslurm_dump.py: db.Job.to_dict(), the legacy slurmdb_jobs records'
  tres_alloc_str and the TRES table), compared with ``sacct --format=ALL`` of the same jobs
  (tests/corpus/json/real/<release>/sacct-all.psv.gz): with the allocation, CPUs, memory,
  billing and GPUs by type are sacct's.

The fetch tests put a fake ``pyslurm`` package on sys.path: a third-party library at the
process boundary, never our own code.
"""

from __future__ import annotations

import ast
import gzip
import json
import sys
import textwrap
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest

from billing.records import JobRecord, QuarantinedRecord, StepUsage, Window
from billing.rollup import rollup_steps
from collector.slurm.pyslurmsource import PyslurmSource, alloc_tres_text, records_from_pyslurm
from collector.slurm.parse import ParsableParser
from collector.slurm.source import SourceError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
UTC = timezone.utc


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def parse_capture(path: Path) -> tuple[list[dict], dict, dict]:
    """The capture as data: the summary job dicts (each with 'stats' and a 'steps' id list),
    the full attribute dump of job 2, and the one full step dict (job 2's batch)."""
    summaries: list[dict] = []
    full: dict = {}
    step: dict = {}
    in_dump = False
    after_step_keys = False
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if line.startswith("{'id':"):
            summaries.append(ast.literal_eval(line))
        elif stripped.startswith("stats = {") and summaries and not in_dump:
            summaries[-1]["stats"] = ast.literal_eval(stripped.partition("= ")[2])
        elif stripped.startswith("steps: [") and summaries:
            summaries[-1]["steps"] = ast.literal_eval(stripped.partition(": ")[2])
        elif line.startswith("ALL KEYS of db.Job.to_dict()"):
            in_dump = True
        elif in_dump and line.startswith("  ") and " = " in line:
            key, _, value = stripped.partition(" = ")
            full[key] = ast.literal_eval(value)
        elif in_dump and not line.startswith("  "):
            in_dump = False
        if line.startswith("step keys:"):
            after_step_keys = True
        elif after_step_keys and line.startswith("{"):
            step = ast.literal_eval(line)
            after_step_keys = False
    return summaries, full, step


def as_objects(summary: dict) -> SimpleNamespace:
    """A summary dict as a pyslurm-like object: attributes, ``stats`` as an object, and
    ``steps`` as a dict of step objects keyed by id (as pyslurm's JobSteps)."""
    data = {k: v for k, v in summary.items() if k not in ("stats", "steps")}
    steps = {str(i): SimpleNamespace(id=i, state=None, elapsed_time=None, ntasks=None,
                                     stats=None)
             for i in summary.get("steps", [])}
    return SimpleNamespace(**data, stats=SimpleNamespace(**summary.get("stats", {})),
                           steps=steps)


@pytest.fixture(scope="module")
def capture():
    return parse_capture(FIXTURES / "pyslurm-22.5-db-jobs.txt")


@pytest.fixture(scope="module")
def sacct_jobs() -> dict[int, JobRecord]:
    lines = (FIXTURES / "sacct-wide-header.psv").read_text(encoding="utf-8").split("\n")
    parser = ParsableParser(lines[0].split("|"), delimiter="|", source="test")
    return {r.job_id_raw: r for r in rollup_steps(parser.parse_lines(lines[1:]))
            if isinstance(r, JobRecord) and r.job_id_raw != 16}


def jobs(items) -> list[JobRecord]:
    return [i for i in items if isinstance(i, JobRecord)]


def test_the_capture_parses(capture):
    summaries, full, step = capture
    assert [s["id"] for s in summaries] == [2, 5, 10, 11, 18, 21]
    assert summaries[1]["steps"] == ["batch", 0, 1, 2]
    assert full["id"] == 2 and full["db_index"] == 3 and full["user_id"] == 0
    assert step["id"] == "batch" and step["job_id"] == 2


@pytest.mark.parametrize("form", ["objects", "dicts"])
def test_real_records_agree_with_sacct_on_what_pyslurm_has(capture, sacct_jobs, form):
    summaries, _, _ = capture
    objects = [as_objects(s) for s in summaries] if form == "objects" else summaries
    items = list(records_from_pyslurm(objects))
    assert not [i for i in items if isinstance(i, QuarantinedRecord)]
    records = jobs(items)
    assert [r.job_id_raw for r in records] == [2, 5, 10, 11, 18, 21]
    for rec in records:
        ref = sacct_jobs[rec.job_id_raw]
        for field in ("cluster", "job_id", "job_id_raw", "submit", "state", "name", "user",
                      "account", "partition", "qos", "eligible", "start", "timelimit_min",
                      "cpus", "mem_bytes", "nodes", "array_job_id", "array_task_id",
                      "wckey", "reservation", "exit_code", "derived_exit_code", "final"):
            assert getattr(rec, field) == getattr(ref, field), (rec.job_id_raw, field)
        if rec.final:
            assert (rec.end, rec.elapsed_s) == (ref.end, ref.elapsed_s)
            assert rec.cpu_time_alloc_s == ref.cpu_time_alloc_s
    by_id = {r.job_id_raw: r for r in records}
    # The array task 6_2 (JobIDRaw 18) is rebuilt as sacct prints it.
    assert (by_id[18].job_id, by_id[18].array_job_id, by_id[18].array_task_id) == ("6_2", 6, 2)
    # The running job: open, no End (pyslurm's elapsed is its own moment's).
    assert (by_id[21].state, by_id[21].final, by_id[21].end) == ("RUNNING", False, None)
    assert by_id[21].elapsed_s == 506
    # What pyslurm 22.5's db API lacks: TRES, so no GPUs and no billing (sacct: gres/gpu=1,
    # billing=4), and the group name.
    assert (sacct_jobs[2].gpus, sacct_jobs[2].billing) == ((("untyped", 1),), 4)
    assert (by_id[2].gpus, by_id[2].billing, by_id[2].group) == ((), None, None)


def test_steps_become_step_usage_and_roll_up(capture):
    summaries, _, _ = capture
    items = list(records_from_pyslurm([as_objects(s) for s in summaries]))
    steps = [i for i in items if isinstance(i, StepUsage) and i.job_id_raw == 5]
    assert [s.step for s in steps] == ["batch", "0", "1", "2"]
    rolled = {r.job_id_raw: r for r in rollup_steps(items) if isinstance(r, JobRecord)}
    # The summary objects carry no step statistics: no usage, and no invented zeros.
    assert rolled[5].cpu_used_s is None and rolled[5].max_rss_bytes is None


def test_full_record_gives_db_index_uid_and_the_batch_step(capture, sacct_jobs):
    _, full, step = capture
    job = dict(full, steps={"batch": dict(step, stats={
        "total_cpu_time": 6, "max_resident_memory": 324423680,
        "avg_resident_memory": 324423680, "consumed_energy": 0})})
    items = list(records_from_pyslurm([job]))
    rec = next(i for i in items if isinstance(i, JobRecord))
    ref = sacct_jobs[2]
    assert (rec.db_index, rec.uid, rec.node_list) == (ref.db_index, ref.uid, ref.node_list) == (3, 0, "vm")
    assert (rec.exit_code, rec.cpus, rec.mem_bytes, rec.timelimit_min) == ("0:0", 2, 2 ** 30, 5)
    (batch,) = [i for i in items if isinstance(i, StepUsage)]
    assert (batch.step, batch.job_db_index, batch.state, batch.elapsed_s) == ("batch", 3, "COMPLETED", 11)
    assert (batch.max_rss_bytes, batch.mem_total_bytes, batch.energy_j) == (324423680, 324423680, 0)
    rolled = next(r for r in rollup_steps(items) if isinstance(r, JobRecord))
    # pyslurm's step CPU time is whole seconds (tot_cpu_sec); sacct says 00:06.220.
    assert rolled.cpu_used_s == Decimal(6) and ref.cpu_used_s == Decimal("6.220")
    assert rolled.max_rss_bytes == ref.max_rss_bytes == 324423680


def _gpu(count, gpu_type=None):
    return SimpleNamespace(count=count, type=gpu_type)


def test_pyslurm_23_and_later_allocated_tres_with_typed_gpus():
    """The shape of pyslurm >= 23.2's db.Job (read from the 25.11.2 sources)."""
    tres = SimpleNamespace(cpu=SimpleNamespace(count=4), mem=SimpleNamespace(count=2048),
                           node=SimpleNamespace(count=1), billing=SimpleNamespace(count=9),
                           gres={"gpu": _gpu(3), "gpu:a100": _gpu(2, "a100")})
    running = SimpleNamespace(
        id=40, cluster="lab", submit_time=1795351542, eligible_time=1795351542,
        start_time=1795351543, end_time=None, elapsed_time=30, state="RUNNING",
        array_id=None, array_task_id=None, heterogeneous_id=None, heterogeneous_offset=None,
        name="typed", user_name="alice", user_id=1001, group_name="alice", account="chemistry",
        partition="gpu", qos="high", wckey="", reservation=None, exit_code=0,
        exit_code_signal=0, derived_exit_code=0, derived_exit_code_signal=0,
        time_limit=None, nodelist="vm", db_index=77, allocated_tres=tres,
        cpus=4, memory=2048, num_nodes=1, steps={})
    pending = SimpleNamespace(**{**vars(running), "id": 41, "state": "CANCELLED",
                                 "start_time": None, "end_time": 1795351600,
                                 "allocated_tres": None, "cpus": 4, "memory": 2048})
    a, b = jobs(records_from_pyslurm([running, pending]))
    assert (a.cpus, a.mem_bytes, a.nodes, a.billing) == (4, 2 * 2 ** 30, 1, 9)
    assert a.gpus == (("a100", 2), ("untyped", 1))
    assert (a.final, a.uid, a.db_index, a.wckey, a.timelimit_min, a.qos) == (
        False, 1001, 77, None, None, "high")
    # Cancelled while pending: pyslurm reports the REQUESTED cpus, sacct an empty AllocTRES.
    assert (b.cpus, b.mem_bytes, b.nodes, b.billing, b.gpus, b.final) == (0, 0, 0, None, (), True)
    assert b.cpu_used_s == Decimal(0)


def test_bad_records_are_quarantined_not_fatal():
    good = {"id": 1, "cluster": "lab", "submit_time": 1795351542, "state": "COMPLETED"}
    no_submit = {"id": 2, "cluster": "lab", "submit_time": 0, "state": "COMPLETED"}
    no_cluster = {"id": 3, "submit_time": 1795351542, "state": "COMPLETED"}
    items = list(records_from_pyslurm([no_submit, good, no_cluster]))
    q1, rec, q2 = items
    assert isinstance(q1, QuarantinedRecord) and "submit_time" in q1.reason and q1.job_id == "2"
    assert isinstance(rec, JobRecord) and rec.job_id == "1"
    assert isinstance(q2, QuarantinedRecord) and "cluster" in q2.reason
    assert jobs(records_from_pyslurm([no_cluster], default_cluster="lab"))[0].cluster == "lab"


# ------------------------------------------------ the allocation from tres_alloc_str

CAPTURES = {"22.05": "pyslurm-22.5.3-jobs.json", "24.11": "pyslurm-24.11.0-jobs.json"}


def load_capture(release: str) -> tuple[dict, dict[int, str], dict[tuple[int, int], str]]:
    """The capture, its TRES table (id -> type[/name]) and (job id, submit) -> tres_alloc_str."""
    data = json.loads((FIXTURES / CAPTURES[release]).read_text(encoding="utf-8"))
    names = {t["id"]: t["type"] + (f"/{t['name']}" if t["name"] else "") for t in data["tres"]}
    alloc = {(r["jobid"], r["submit"]): r["tres_alloc_str"] for r in data["slurmdb_jobs"]}
    return data, names, alloc


def sacct_capture(release: str) -> dict[int, JobRecord]:
    """``sacct --format=ALL`` of the same jobs, captured at the same time (the JSON corpus
    keeps the lab's captures, tests/fixtures/slurm-README.md)."""
    path = FIXTURES.parent / "corpus" / "json" / "real" / release / "sacct-all.psv.gz"
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = handle.read()
    rows = [line for line in lines.split("\n") if line]
    parser = ParsableParser(rows[0].split("|"), delimiter="|", source="test")
    return {r.job_id_raw: r for r in rollup_steps(parser.parse_lines(rows[1:]))
            if isinstance(r, JobRecord)}


def test_alloc_tres_text_names_the_ids_as_sacct_prints_them():
    _, names, _ = load_capture("24.11")
    assert names[1001] == "gres/gpu" and names[1002] == "gres/gpu:a100"
    text = alloc_tres_text("1=2,2=1024,3=18446744073709551614,4=1,5=9,1001=2,1002=2", names)
    assert text == "cpu=2,mem=1024M,node=1,billing=9,gres/gpu=2,gres/gpu:a100=2"
    assert alloc_tres_text("", names) == ""               # cancelled while pending
    with pytest.raises(ValueError, match="TRES id 1999 .* not in the TRES table"):
        alloc_tres_text("1=1,1999=1", names)
    with pytest.raises(ValueError, match="is not <id>=<count>"):
        alloc_tres_text("cpu=1", names)


@pytest.mark.parametrize("release", sorted(CAPTURES))
def test_real_records_with_their_allocation_agree_with_sacct(release):
    data, names, alloc = load_capture(release)
    sacct = sacct_capture(release)
    items = list(rollup_steps(records_from_pyslurm(data["jobs"], tres_alloc=alloc,
                                                   tres_names=names)))
    assert not [i for i in items if isinstance(i, QuarantinedRecord)]
    records = jobs(items)
    assert sorted(r.job_id_raw for r in records) == sorted(data["ids"] + [
        i for r in data["jobs"] for i in [r["id"]] if r["id"] not in data["ids"]])
    compared = 0
    for rec in records:
        ref = sacct[rec.job_id_raw]
        if not ref.final:          # the running job: pyslurm read it after it was cancelled
            assert rec.state == "CANCELLED"
            continue
        assert ref.het_job_id is None or release == "22.05"
        expected_id = str(ref.job_id_raw) if ref.het_job_id is not None else ref.job_id
        assert (rec.cluster, rec.job_id, rec.submit, rec.state) == (
            ref.cluster, expected_id, ref.submit, ref.state), rec.job_id_raw
        assert (rec.eligible, rec.start, rec.end, rec.elapsed_s) == (
            ref.eligible, ref.start, ref.end, ref.elapsed_s)
        assert (rec.cpus, rec.mem_bytes, rec.nodes, rec.billing, rec.gpus) == (
            ref.cpus, ref.mem_bytes, ref.nodes, ref.billing, ref.gpus), rec.job_id
        assert (rec.user, rec.uid, rec.account, rec.partition, rec.qos) == (
            ref.user, ref.uid, ref.account, ref.partition, ref.qos)
        assert (rec.db_index, rec.exit_code, rec.timelimit_min) == (
            ref.db_index, ref.exit_code, ref.timelimit_min)
        assert (rec.max_rss_bytes, rec.energy_j) == (ref.max_rss_bytes, ref.energy_j)
        # Step CPU time in whole seconds (sacct: milliseconds).
        assert rec.cpu_used_s is None or 0 <= ref.cpu_used_s - rec.cpu_used_s < 1
        compared += 1
    by_name = {r.name: r for r in records}
    assert by_name["a100x2"].gpus == (("a100", 2),) and by_name["a100x2"].billing == 9
    assert by_name["h100x1"].gpus == (("h100", 1),)
    assert by_name["untyped_gpu"].gpus == (("untyped", 1),)
    assert by_name["cancel_pending"].cpus == 0 and by_name["cancel_pending"].billing is None
    assert compared >= 10


def test_a_job_without_its_legacy_record_is_quarantined():
    data, names, alloc = load_capture("24.11")
    first = data["jobs"][0]
    missing = {k: v for k, v in alloc.items() if k[0] != first["id"]}
    items = list(records_from_pyslurm(data["jobs"][:2], tres_alloc=missing, tres_names=names))
    assert isinstance(items[0], QuarantinedRecord)
    assert "returned no record of job" in items[0].reason and items[0].job_id == str(first["id"])
    assert any(isinstance(i, JobRecord) for i in items[1:])


# ----------------------------------------------------------------------- the Source

WINDOW = Window(at("2026-11-22T12:00:00"), at("2026-11-22T13:00:00.5"))


def test_fetch_without_pyslurm_names_the_extra(monkeypatch, tmp_path):
    # A directory where "import pyslurm" finds a package that fails like a missing one.
    (tmp_path / "pyslurm").mkdir()
    (tmp_path / "pyslurm" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'pyslurm'\", name='pyslurm')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pyslurm", raising=False)
    source = PyslurmSource(cluster="lab")
    assert (source.name, source.windowed) == ("pyslurm", True)
    with pytest.raises(SourceError, match=r"pyslurm whose major\.minor equals the site's Slurm"):
        list(source.fetch(WINDOW))
    with pytest.raises(SourceError, match="needs a window"):
        list(source.fetch(None))


FAKE_PYSLURM = '''
"""A stand-in for pyslurm's db API (the process boundary of the pyslurm source)."""
__version__ = "25.11.2-fake"
import json, os
from types import SimpleNamespace

class _Db:
    class JobFilter:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class Jobs(dict):
        @staticmethod
        def load(db_filter=None, db_connection=None):
            with open(os.environ["FAKE_PYSLURM_LOG"], "w") as log:
                json.dump(db_filter.kwargs, log)
            if os.environ.get("FAKE_PYSLURM_FAIL"):
                raise RuntimeError("Failed to get Jobs from slurmdbd")
            out = _Db.Jobs()
            for job in json.loads(os.environ["FAKE_PYSLURM_JOBS"]):
                out[job["id"]] = SimpleNamespace(**job)
            return out

db = _Db
'''


@pytest.fixture
def fake_pyslurm(monkeypatch, tmp_path):
    (tmp_path / "pyslurm").mkdir()
    (tmp_path / "pyslurm" / "__init__.py").write_text(textwrap.dedent(FAKE_PYSLURM))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pyslurm", raising=False)
    monkeypatch.setenv("FAKE_PYSLURM_LOG", str(tmp_path / "filter.json"))
    yield tmp_path / "filter.json"
    sys.modules.pop("pyslurm", None)


def test_fetch_filters_to_sacct_window_semantics(fake_pyslurm, monkeypatch):
    import json

    since = int(WINDOW.since.timestamp())
    base = {"cluster": "lab", "state": "COMPLETED", "submit_time": since - 100}
    monkeypatch.setenv("FAKE_PYSLURM_JOBS", json.dumps([
        dict(base, id=1, eligible_time=since - 100, end_time=since),          # ends at since: in
        dict(base, id=2, eligible_time=since - 100, end_time=since - 1),      # ended before: out
        dict(base, id=3, eligible_time=since + 3601, end_time=0, state="PENDING"),  # after until: out
        dict(base, id=4, eligible_time=since + 3600, end_time=0, state="RUNNING"),  # before until (rounded up): in
        dict(base, id=5, eligible_time=0, end_time=0, state="PENDING"),       # held: never
    ]))
    source = PyslurmSource(cluster="lab")
    records = jobs(source.fetch(WINDOW))
    assert [r.job_id_raw for r in records] == [1, 4]
    assert json.loads(fake_pyslurm.read_text()) == {
        "start_time": since, "end_time": since + 3601, "clusters": ["lab"]}
    assert source.stats.extra["jobs"] == 2 and source.stats.extra["pyslurm"] == "25.11.2-fake"


def test_fetch_reports_pyslurm_failures_as_source_errors(fake_pyslurm, monkeypatch):
    monkeypatch.setenv("FAKE_PYSLURM_JOBS", "[]")
    monkeypatch.setenv("FAKE_PYSLURM_FAIL", "1")
    with pytest.raises(SourceError, match="Failed to get Jobs from slurmdbd"):
        list(PyslurmSource(cluster=None).fetch(WINDOW))


def test_a_pyslurm_without_the_db_api_is_refused_by_name(monkeypatch, tmp_path):
    # pyslurm 18.8 / 17.11 (still on PyPI) have only the legacy API.
    (tmp_path / "pyslurm").mkdir()
    (tmp_path / "pyslurm" / "__init__.py").write_text('__version__ = "18.8.4"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pyslurm", raising=False)
    try:
        with pytest.raises(SourceError, match=r"pyslurm 18\.8\.4 has no pyslurm\.db\.Jobs"):
            list(PyslurmSource(cluster="lab").fetch(WINDOW))
    finally:
        sys.modules.pop("pyslurm", None)
