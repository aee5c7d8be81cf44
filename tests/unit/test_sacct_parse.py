"""ParsableParser on real sacct 22.05 output (tests/fixtures, captured on the lab cluster).

Expected values are written out by hand from the fixture text; the comments show the
arithmetic (sizes are 1024-based: 1G = 1073741824 bytes, 1M = 1048576 bytes).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from billing.records import JobRecord, QuarantinedRecord, StepUsage
from collector.slurm.fields import (
    duration_s,
    hostlist_count,
    parse_alloc_tres,
    parse_gres,
    req_mem_bytes,
    size_bytes,
    split_job_id,
)
from collector.slurm.parse import SACCT_DELIMITER, ParsableParser
from collector.slurm.sacct import SACCT_FIELDS
from collector.slurm.source import SourceError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def at(text: str) -> datetime:
    """A UTC instant written as in the fixtures (the lab cluster ran in UTC)."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def parse_text(text: str, *, delimiter: str = "|", tz=UTC, cluster: str | None = None):
    lines = text.split("\n")
    parser = ParsableParser(lines[0].split(delimiter), delimiter=delimiter,
                            source="test", tz=tz, default_cluster=cluster)
    return list(parser.parse_lines(lines[1:], first_line_no=2))


def parse_fixture(name: str, **kwargs):
    return parse_text((FIXTURES / name).read_text(encoding="utf-8"), **kwargs)


@pytest.fixture(scope="module")
def wide():
    return parse_fixture("sacct-wide-header.psv")


def jobs(items, job_id: str | None = None) -> list[JobRecord]:
    return [i for i in items if isinstance(i, JobRecord) and (job_id is None or i.job_id == job_id)]


def job(items, job_id: str) -> JobRecord:
    found = jobs(items, job_id)
    assert len(found) == 1, found
    return found[0]


def steps(items, raw: int) -> list[StepUsage]:
    return [i for i in items if isinstance(i, StepUsage) and i.job_id_raw == raw]


def quarantined(items) -> list[QuarantinedRecord]:
    return [i for i in items if isinstance(i, QuarantinedRecord)]


# ---------------------------------------------------------------- the wide real export


def test_wide_export_parses_without_quarantine(wide):
    assert quarantined(wide) == []
    # 22 job lines (16 twice) and 24 step lines in the file.
    assert len(jobs(wide)) == 22
    assert len([i for i in wide if isinstance(i, StepUsage)]) == 24


def test_plain_job_fields(wide):
    rec = job(wide, "2")
    assert rec == JobRecord(
        cluster="lab", job_id="2", job_id_raw=2, submit=at("2026-11-22T12:45:42"),
        state="COMPLETED", state_raw="COMPLETED", name="cpu_gpu1", user="root", uid=0,
        group="root", account="physics", partition="batch", qos="normal", wckey=None,
        reservation=None, exit_code="0:0", derived_exit_code="0:0",
        eligible=at("2026-11-22T12:45:42"), start=at("2026-11-22T12:45:43"),
        end=at("2026-11-22T12:45:54"), elapsed_s=11, timelimit_min=5, nodes=1, cpus=2,
        mem_bytes=1073741824,                   # mem=1G
        billing=4, gpus=(("untyped", 1),), node_list="vm", cpu_time_alloc_s=22,
        cpu_used_s=Decimal("6.220"),            # TotalCPU 00:06.220
        max_rss_bytes=None, mem_used_byte_s=None, energy_j=None, db_index=3, final=True)


def test_step_fields(wide):
    (batch,) = steps(wide, 2)
    assert batch == StepUsage(
        cluster="lab", job_id_raw=2, step="batch", job_db_index=3, state="COMPLETED",
        elapsed_s=11, cpu_used_s=Decimal("6.220"),
        max_rss_bytes=324423680,                # MaxRSS 316820K = 316820 * 1024
        mem_total_bytes=324423680,              # TRESUsageInTot mem=316820K
        energy_j=0, line_no=5)


def test_array_tasks(wide):
    task3 = job(wide, "6_3")
    assert (task3.job_id_raw, task3.array_job_id, task3.array_task_id) == (19, 6, 3)
    task1 = job(wide, "6_1")
    assert (task1.job_id_raw, task1.array_job_id, task1.array_task_id) == (17, 6, 1)
    # The last task keeps the array's own id.
    task5 = job(wide, "6_5")
    assert (task5.job_id_raw, task5.array_job_id, task5.array_task_id) == (6, 6, 5)
    assert task5.het_job_id is None
    # 6_1.batch has JobIDRaw 17.batch.
    (step,) = steps(wide, 17)
    assert (step.step, step.job_db_index) == ("batch", 21)


@pytest.mark.parametrize("job_id, expected", [
    ("42", (None, None, None, None)),
    ("6_3", (6, 3, None, None)),
    ("6_[1-5]", (6, None, None, None)),
    ("6_[1,3]", (6, None, None, None)),
    ("6_[1-5%2]", (6, None, None, None)),
    ("14+1", (None, None, 14, 1)),
])
def test_split_job_id(job_id, expected):
    assert split_job_id(job_id) == expected


def test_pending_array_line():
    text = ("JobID|JobIDRaw|Cluster|State|Submit|Start|AllocTRES\n"
            "6_[1-5]|6|lab|PENDING|2026-11-22T12:45:42|Unknown|")
    (rec,) = parse_text(text)
    assert (rec.job_id, rec.job_id_raw, rec.array_job_id, rec.array_task_id) == (
        "6_[1-5]", 6, 6, None)
    assert rec.state == "PENDING" and rec.final is False
    assert (rec.cpus, rec.mem_bytes, rec.gpus, rec.start) == (0, 0, (), None)


def test_het_job_cancelled_while_pending(wide):
    first, second = job(wide, "14+0"), job(wide, "14+1")
    assert (first.job_id_raw, first.het_job_id, first.het_job_offset) == (14, 14, 0)
    assert (second.job_id_raw, second.het_job_id, second.het_job_offset) == (15, 14, 1)
    for rec in (first, second):
        assert rec.state == "CANCELLED" and rec.state_raw == "CANCELLED by 0"
        assert rec.start is None                          # Start "None"
        assert rec.node_list is None                      # NodeList "None assigned"
        assert rec.end == at("2026-11-22T12:48:05")
        # Empty AllocTRES: nothing was allocated.
        assert (rec.cpus, rec.nodes, rec.mem_bytes, rec.billing, rec.gpus) == (0, 0, 0, None, ())
        assert rec.array_job_id is None
        assert rec.final is True
    assert steps(wide, 14) == [] and steps(wide, 15) == []


def test_requeued_job_gives_two_records(wide):
    old, new = jobs(wide, "16")
    assert (old.job_id_raw, new.job_id_raw) == (16, 16)
    assert old.submit == at("2026-11-22T12:45:43") and new.submit == at("2026-11-22T12:48:17")
    # Slurm never updates the old record of a requeued job again (it has an End).
    assert (old.state, old.final, old.db_index) == ("REQUEUED", True, 20)
    assert (new.state, new.final, new.db_index) == ("COMPLETED", True, 29)
    assert new.eligible == at("2026-11-22T12:50:18")
    old_step, new_step = steps(wide, 16)
    assert (old_step.job_db_index, old_step.state, old_step.elapsed_s) == (20, "CANCELLED", 4)
    assert (new_step.job_db_index, new_step.state, new_step.elapsed_s) == (29, "COMPLETED", 20)


def test_running_job(wide):
    rec = job(wide, "21")
    assert rec.state == "RUNNING" and rec.final is False
    assert rec.end is None                                # End "Unknown"
    assert rec.start == at("2026-11-22T12:50:39")
    assert (rec.elapsed_s, rec.timelimit_min, rec.gpus) == (29, 15, (("untyped", 1),))


def test_end_states(wide):
    cancelled = job(wide, "9")
    assert (cancelled.state, cancelled.state_raw, cancelled.final) == (
        "CANCELLED", "CANCELLED by 0", True)
    timeout = job(wide, "10")
    assert (timeout.state, timeout.elapsed_s, timeout.timelimit_min) == ("TIMEOUT", 76, 1)
    (timeout_batch,) = steps(wide, 10)
    assert timeout_batch.state == "CANCELLED"
    failed = job(wide, "7")
    assert (failed.state, failed.exit_code, failed.derived_exit_code) == ("FAILED", "3:0", "0:0")
    stepfail = job(wide, "8")
    assert (stepfail.state, stepfail.exit_code, stepfail.derived_exit_code) == (
        "COMPLETED", "0:0", "7:0")
    assert [s.state for s in steps(wide, 8)] == ["COMPLETED", "FAILED"]
    unlimited = job(wide, "1")
    assert unlimited.timelimit_min is None                # TimelimitRaw UNLIMITED


def test_state_normalisation():
    text = ("JobID|JobIDRaw|Cluster|State|Submit\n"
            "1|1|lab|cancelled+|2026-11-22T12:45:42\n"
            "2|2|lab|COMPLETED|2026-11-22T12:45:42\n"
            "3|3|lab|NODE_FAIL|2026-11-22T12:45:42")
    a, b, c = parse_text(text)
    assert (a.state, a.state_raw, a.final) == ("CANCELLED", "cancelled+", True)
    assert (b.state, b.final) == ("COMPLETED", True)
    assert (c.state, c.final) == ("NODE_FAIL", True)


def test_gpus_and_billing(wide):
    assert job(wide, "3").gpus == (("untyped", 2),)
    assert job(wide, "3").gpu_count == 2
    assert job(wide, "4").gpus == ()
    # billing is Slurm's truncated integer: 4.25 -> 4, 8.5 -> 8, 2.75 -> 2.
    assert [job(wide, j).billing for j in ("2", "3", "12", "11")] == [4, 8, 2, 3]


@pytest.mark.parametrize("alloc, expected_gpus", [
    ("billing=10,cpu=8,gres/gpu=2,gres/gpu:a100=2,mem=64G,node=1", (("a100", 2),)),
    ("cpu=4,gres/gpu=3,gres/gpu:a100=1,gres/gpu:v100=1,node=1",
     (("a100", 1), ("untyped", 1), ("v100", 1))),
    ("cpu=4,gres/gpu:a100=2,node=1", (("a100", 2),)),
    ("cpu=4,gres/gpu=4,node=1", (("untyped", 4),)),
    ("cpu=4,gres/gpu=0,node=1", ()),
    ("billing=1,cpu=1,mem=100M,node=1", ()),
])
def test_typed_gpu_alloc_tres(alloc, expected_gpus):
    assert parse_alloc_tres(alloc)[4] == expected_gpus


def test_typed_gpu_line_through_parser():
    text = ("JobID|JobIDRaw|Cluster|State|Submit|AllocTRES\n"
            "40|40|lab|COMPLETED|2026-11-22T12:45:42|"
            "billing=10,cpu=8,gres/gpu=3,gres/gpu:a100=2,mem=64G,node=2")
    (rec,) = parse_text(text)
    assert rec.gpus == (("a100", 2), ("untyped", 1))
    assert (rec.cpus, rec.nodes, rec.billing) == (8, 2, 10)
    assert rec.mem_bytes == 64 * 1073741824               # never multiplied by NNodes


def test_alloc_tres_values():
    # mem unit suffixes are 1024-based; a bare AllocTRES mem is MB.
    assert parse_alloc_tres("billing=4,cpu=2,gres/gpu=1,mem=1024M,node=1") == (
        2, 1, 1073741824, 4, (("untyped", 1),))
    assert parse_alloc_tres("cpu=1,mem=512,node=1")[2] == 536870912      # 512 MB
    assert parse_alloc_tres("cpu=1,mem=2T,node=1")[2] == 2199023255552   # 2 * 1024**4
    assert parse_alloc_tres("") == (0, 0, 0, None, ())


def merge_row(wide_text: str, job_id: str, replacements: dict[str, str]) -> str:
    """Header + the wide export's line for job_id with some columns replaced by name."""
    lines = wide_text.split("\n")
    header = lines[0].split("|")
    for line in lines[1:]:
        fields = line.split("|")
        if fields[0] == job_id:
            for name, value in replacements.items():
                fields[header.index(name)] = value
            return lines[0] + "\n" + "|".join(fields)
    raise AssertionError(job_id)


def fixture_rows(name: str) -> dict[str, dict[str, str]]:
    lines = (FIXTURES / name).read_text(encoding="utf-8").splitlines()
    header = lines[0].split("|")
    return {line.split("|")[0]: dict(zip(header, line.split("|"))) for line in lines[1:]}


def test_default_units_and_noconvert_give_identical_bytes():
    wide_text = (FIXTURES / "sacct-wide-header.psv").read_text(encoding="utf-8")
    noconvert = fixture_rows("sacct-noconvert.psv")
    for job_id, step_id, alloc_bytes, rss_bytes in (
            ("2", "2.batch", 1073741824, 324423680),    # 1G / 1024M; 316820K / 324423680
            ("3", "3.batch", 2147483648, 3334144),      # 2G / 2048M; 3256K / 3334144
            ("11", "11.batch", 314572800, 324288512)):  # 300M; 316688K / 324288512
        default_job = parse_text(merge_row(wide_text, job_id, {}))[0]
        converted_job = parse_text(merge_row(
            wide_text, job_id, {"AllocTRES": noconvert[job_id]["AllocTRES"]}))[0]
        assert default_job.mem_bytes == converted_job.mem_bytes == alloc_bytes
        default_step = parse_text(merge_row(wide_text, step_id, {}))[0]
        converted_step = parse_text(merge_row(wide_text, step_id, {
            "TRESUsageInTot": noconvert[step_id]["TRESUsageInTot"],
            "MaxRSS": noconvert[step_id]["MaxRSS"]}))[0]
        assert default_step.max_rss_bytes == converted_step.max_rss_bytes == rss_bytes
        assert default_step.mem_total_bytes == converted_step.mem_total_bytes == rss_bytes


def test_units_g_is_accepted_but_lossy():
    wide_text = (FIXTURES / "sacct-wide-header.psv").read_text(encoding="utf-8")
    units_g = fixture_rows("sacct-units-G.psv")
    (job2,) = parse_text(merge_row(wide_text, "2", {"AllocTRES": units_g["2"]["AllocTRES"]}))
    assert job2.mem_bytes == 1073741824                     # mem=1G is exact
    (job11,) = parse_text(merge_row(wide_text, "11", {"AllocTRES": units_g["11"]["AllocTRES"]}))
    assert job11.mem_bytes == 311385129                     # 0.29G = 311385128.96 -> 311385129
    (step,) = parse_text(merge_row(wide_text, "2.batch", {
        "TRESUsageInTot": units_g["2.batch"]["TRESUsageInTot"],
        "MaxRSS": units_g["2.batch"]["MaxRSS"]}))
    assert step.max_rss_bytes == 322122547                  # 0.30G = 322122547.2 (true: 324423680)
    assert step.mem_total_bytes == 322122547
    (small,) = parse_text(merge_row(wide_text, "3.batch", {"MaxRSS": units_g["3.batch"]["MaxRSS"]}))
    assert small.max_rss_bytes == 0                         # 0.00G


def test_size_bytes():
    assert size_bytes("316820K", 1) == 324423680
    assert size_bytes("324423680", 1) == 324423680
    assert size_bytes("1024M", 1048576) == 1073741824
    assert size_bytes("1", 1048576) == 1048576
    assert size_bytes("0.5K", 1) == 512
    assert size_bytes("2.5", 1) == 2                        # half-even
    with pytest.raises(ValueError):
        size_bytes("12Q", 1)


def test_duration_formats_fixture():
    # duration-formats.psv lacks identity columns: add JobIDRaw, Cluster, State, Submit.
    rows = (FIXTURES / "duration-formats.psv").read_text(encoding="utf-8").splitlines()
    head = "JobIDRaw|Cluster|State|Submit|"
    text = "\n".join([head + rows[0]] + [
        f"{row.split('|')[0]}|lab|COMPLETED|2026-11-22T12:45:42|{row}" for row in rows[1:]])
    items = parse_text(text)
    job1, step1, job2, step2 = items
    assert job1.elapsed_s == 90061                          # ElapsedRaw (1-01:01:01)
    assert job1.cpu_time_alloc_s == 180122                  # CPUTimeRAW (2-02:02:02)
    assert job1.cpu_used_s == Decimal(3725)                 # TotalCPU 01:02:05
    assert job1.timelimit_min is None                       # Timelimit UNLIMITED
    assert step1.cpu_used_s == Decimal(3725)
    assert job2.cpu_used_s == Decimal("59.999")             # TotalCPU 00:59.999
    assert step2.elapsed_s == 2

    # Without the Raw columns (a file export): Elapsed and CPUTime are parsed instead.
    header = (head + rows[0]).split("|")
    keep = [i for i, name in enumerate(header) if name not in ("ElapsedRaw", "CPUTimeRAW")]
    trimmed = "\n".join("|".join(line.split("|")[i] for i in keep) for line in text.split("\n"))
    job1b, step1b, job2b, _ = parse_text(trimmed)
    assert job1b.elapsed_s == 90061                         # 1-01:01:01
    assert job1b.cpu_time_alloc_s == 180122                 # 2-02:02:02
    assert step1b.elapsed_s == 90061
    assert job2b.elapsed_s == 3725                          # 01:02:05


@pytest.mark.parametrize("text, seconds", [
    ("1-01:01:01", Decimal(90061)), ("01:02:05", Decimal(3725)), ("00:59.999", Decimal("59.999")),
    ("00:06.220", Decimal("6.220")), ("05:00", Decimal(300)), ("2-00:00:00", Decimal(172800)),
])
def test_duration_s(text, seconds):
    assert duration_s(text) == seconds


@pytest.mark.parametrize("limit, minutes", [
    ("00:05:00", 5), ("05:00", 5), ("1-00:00:00", 1440), ("UNLIMITED", None),
    ("Partition_Limit", None)])
def test_timelimit_text_formats(limit, minutes):
    text = ("JobID|JobIDRaw|Cluster|State|Submit|Timelimit\n"
            f"1|1|lab|COMPLETED|2026-11-22T12:45:42|{limit}")
    assert parse_text(text)[0].timelimit_min == minutes


def tz_line(prefix: str) -> str:
    lines = (FIXTURES / "tz-and-time-format.txt").read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        if line.startswith(prefix):
            # "TZ=...: 2|..." on one line; "SLURM_TIME_FORMAT=%s:" has its data below.
            return line[len(prefix):].strip() or lines[n + 1]
    raise AssertionError(prefix)


@pytest.mark.parametrize("prefix, zone", [
    ("TZ=UTC:", "UTC"), ("TZ=America/New_York:", "America/New_York"),
    ("TZ=Europe/Berlin:", "Europe/Berlin"), ("TZ=Asia/Kolkata:", "Asia/Kolkata"),
    ("SLURM_TIME_FORMAT=%s:", "Asia/Kolkata"),   # epoch needs no zone (any tz is ignored)
])
def test_times_in_other_zones(prefix, zone):
    # e.g. "2|2026-11-22T07:45:42|2026-11-22T07:45:43|2026-11-22T07:45:54" in New York
    line = tz_line(prefix)
    job_id, submit, start, end = line.split("|")
    text = ("JobID|JobIDRaw|Cluster|State|Submit|Start|End\n"
            f"{job_id}|{job_id}|lab|COMPLETED|{submit}|{start}|{end}")
    (rec,) = parse_text(text, tz=ZoneInfo(zone))
    assert rec.submit == at("2026-11-22T12:45:42")
    assert rec.start == at("2026-11-22T12:45:43")
    assert rec.end == at("2026-11-22T12:45:54")
    assert rec.submit.tzinfo is UTC


def test_epoch_times_and_space_separator():
    (rec,) = parse_text("JobID|JobIDRaw|Cluster|State|Submit|Start|End\n"
                        "21|21|lab|RUNNING|1795351838|2026-11-22 12:50:39|Unknown")
    assert rec.submit == at("2026-11-22T12:50:38")          # tz-and-time-format.txt, job 21
    assert rec.start == at("2026-11-22T12:50:39")
    assert rec.end is None


def test_dst_ambiguous_and_missing_local_times():
    new_york = ZoneInfo("America/New_York")
    text = ("JobID|JobIDRaw|Cluster|State|Submit|Start\n"
            # 2026-11-01 01:30 happens twice in New York; fold=0 is the first (EDT, -4).
            "1|1|lab|COMPLETED|2026-11-01T01:30:00|"
            # 2026-03-08 02:30 does not exist; fold=0 reads it with the EST offset (-5).
            "2026-03-08T02:30:00")
    (rec,) = parse_text(text, tz=new_york)
    assert rec.submit == at("2026-11-01T05:30:00")
    assert rec.start == at("2026-03-08T07:30:00")


# ---------------------------------------------------------------- delimiter hazards


def hazard_sections() -> tuple[list[str], list[str]]:
    """The two captures of delimiter-hazards.txt: with -P ('|') and with \\x1f (cat -A)."""
    lines = (FIXTURES / "delimiter-hazards.txt").read_text(encoding="utf-8").splitlines()
    pipe = lines[1:5]
    unit = [line.replace("^_", SACCT_DELIMITER).removesuffix("$") for line in lines[6:10]]
    return pipe, unit


IDENTITY_HEAD = ["JobIDRaw", "Submit", "Cluster"]


def with_identity(section: list[str], delimiter: str) -> str:
    """Prefix JobIDRaw/Submit/Cluster to the header and to each line starting a record
    (the continuation line 'echo second line' is left as sacct printed it)."""
    out = [delimiter.join(IDENTITY_HEAD) + delimiter + section[0]]
    for line in section[1:]:
        if line.startswith("23"):
            raw = line.split(delimiter)[0].split("|")[0]
            out.append(delimiter.join([raw, "2026-11-22T12:51:51", "lab"]) + delimiter + line)
        else:
            out.append(line)
    return "\n".join(out)


def test_pipe_in_job_name_is_quarantined_when_two_free_text_columns():
    pipe, _ = hazard_sections()
    items = parse_text(with_identity(pipe, "|"))
    first, step = items
    assert isinstance(first, QuarantinedRecord)
    assert "ambiguous: free-text columns JobName and SubmitLine" in first.reason
    assert first.reason.startswith("10 fields, expected 7")
    # The --wrap newline's continuation line stays with the quarantined record.
    assert first.raw.endswith('echo "x|y"\necho second line')
    assert (first.line_no, first.job_id) == (2, "23")
    # The step line after it is not lost.
    assert isinstance(step, StepUsage) and (step.job_id_raw, step.step) == (23, "batch")


def test_pipe_in_job_name_is_repaired_when_job_name_is_the_only_free_text_column():
    pipe, _ = hazard_sections()
    # The same job without SubmitLine: "23|pipe|name|COMPLETED" under JobID|JobName|State.
    line = pipe[1].split("|")
    text = ("JobIDRaw|Submit|Cluster|JobID|JobName|State\n"
            f"23|2026-11-22T12:51:51|lab|{'|'.join(line[:4])}")
    (rec,) = parse_text(text)
    assert isinstance(rec, JobRecord)
    assert (rec.job_id, rec.name, rec.state) == ("23", "pipe|name", "COMPLETED")


def test_unit_separator_keeps_pipe_and_joins_wrap_newline():
    _, unit = hazard_sections()
    items = parse_text(with_identity(unit, SACCT_DELIMITER), delimiter=SACCT_DELIMITER)
    rec, step = items
    assert isinstance(rec, JobRecord)
    assert rec.name == "pipe|name"
    assert isinstance(step, StepUsage) and step.step == "batch"


def test_newline_in_middle_free_text_column_joins_following_line():
    text = ("JobID|JobIDRaw|Submit|State|JobName|Cluster\n"
            "5|5|2026-11-22T12:45:42|COMPLETED|first\n"
            "second|lab\n"
            "6|6|2026-11-22T12:45:43|COMPLETED|plain|lab")
    a, b = parse_text(text)
    assert (a.job_id, a.name, a.cluster) == ("5", "first\nsecond", "lab")
    assert (b.job_id, b.name) == ("6", "plain")


def test_short_line_that_cannot_continue_does_not_eat_the_next_record():
    text = ("JobID|JobIDRaw|Submit|State|JobName|Cluster\n"
            "5|5|2026-11-22T12:45:42\n"                         # break in Submit: not free text
            "6|6|2026-11-22T12:45:43|COMPLETED|plain|lab\n"
            "7|7|2026-11-22T12:45:43|COMPLETED|broken\n"        # would continue in JobName...
            "8|8|2026-11-22T12:45:44|COMPLETED|good|lab")       # ...but that overshoots: 10 fields
    bad5, good6, bad7, good8 = parse_text(text)
    assert isinstance(bad5, QuarantinedRecord) and bad5.line_no == 2
    assert "3 fields, expected 6" in bad5.reason and "Submit is not free text" in bad5.reason
    assert (good6.job_id, good6.name) == ("6", "plain")
    assert isinstance(bad7, QuarantinedRecord) and bad7.line_no == 4 and bad7.raw.endswith("broken")
    assert (good8.job_id, good8.name) == ("8", "good")


def test_garbage_lines_are_quarantined_and_records_survive(wide):
    text = (FIXTURES / "sacct-wide-header.psv").read_text(encoding="utf-8").split("\n")
    garbage = [text[0], "complete nonsense|with|pipes", text[1], "", "x|y", text[2]] + text[3:]
    items = parse_text("\n".join(garbage))
    bad = quarantined(items)
    assert [q.raw for q in bad] == ["complete nonsense|with|pipes", "x|y"]
    assert [q.line_no for q in bad] == [2, 5]
    # Every real record survives (step line numbers shift by the inserted lines).
    assert jobs(items) == jobs(wide)
    assert [(s.job_id_raw, s.step, s.job_db_index) for s in items if isinstance(s, StepUsage)] \
        == [(s.job_id_raw, s.step, s.job_db_index) for s in wide if isinstance(s, StepUsage)]


def test_truncated_last_line_is_quarantined():
    text = (FIXTURES / "sacct-wide-header.psv").read_text(encoding="utf-8")
    lines = text.rstrip("\n").split("\n")
    cut = lines[-1][: len(lines[-1]) // 2]
    items = parse_text("\n".join(lines[:-1] + [cut]))
    last = items[-1]
    assert isinstance(last, QuarantinedRecord)
    assert "truncated record at the end of the output" in last.reason
    assert last.raw == cut and last.job_id == "21.batch"
    assert len(quarantined(items)) == 1


def test_bad_values_are_quarantined_with_field_and_value():
    text = ("JobID|JobIDRaw|Cluster|State|Submit|AllocTRES|ElapsedRaw\n"
            "1|1|lab|COMPLETED|yesterday|cpu=1|5\n"
            "2|2|lab|COMPLETED|2026-11-22T12:45:42|cpu=two|5\n"
            "3|3|lab|COMPLETED|Unknown|cpu=1|5\n"
            "4|x4|lab|COMPLETED|2026-11-22T12:45:42|cpu=1|5\n"
            "5|5|lab|COMPLETED|2026-11-22T12:45:42|cpu=1|5")
    q1, q2, q3, q4, good = parse_text(text)
    assert "Submit='yesterday'" in q1.reason
    assert "AllocTRES='cpu=two'" in q2.reason
    assert "Submit is 'Unknown'" in q3.reason and "no identity" in q3.reason
    assert "JobIDRaw='x4'" in q4.reason
    assert [q.job_id for q in (q1, q2, q3, q4)] == ["1", "2", "3", "4"]
    assert isinstance(good, JobRecord) and good.cpus == 1


def test_counts_the_store_cannot_hold_are_quarantined():
    # Found by tests/integration/test_fuzz_runs.py: node=2^31 failed the whole COPY.
    text = ("JobID|JobIDRaw|Cluster|State|Submit|AllocTRES|NNodes|ElapsedRaw\n"
            "1|1|lab|COMPLETED|2026-11-22T12:45:42|cpu=1,node=2147483648|1|5\n"
            "2|2|lab|COMPLETED|2026-11-22T12:45:42|cpu=2147483648|1|5\n"
            "3|3|lab|COMPLETED|2026-11-22T12:45:42|cpu=1,gres/gpu=2147483648|1|5\n"
            "4|4|lab|COMPLETED|2026-11-22T12:45:42|cpu=2147483647,node=2147483647|1|5")
    *bad, good = parse_text(text)
    assert [q.job_id for q in bad] == ["1", "2", "3"]
    assert all("above 2147483647" in q.reason and "AllocTRES" in q.reason for q in bad)
    assert isinstance(good, JobRecord) and good.cpus == good.nodes == 2**31 - 1


def test_no_cluster_anywhere_is_quarantined_and_default_cluster_applies():
    text = "JobID|JobIDRaw|State|Submit\n1|1|COMPLETED|2026-11-22T12:45:42"
    (q,) = parse_text(text)
    assert isinstance(q, QuarantinedRecord) and "no default cluster" in q.reason
    (rec,) = parse_text(text, cluster="lab")
    assert rec.cluster == "lab"


def test_missing_required_column_is_refused():
    # JobIDRaw alone is not required (a plain JobID is its own raw id), Submit is.
    with pytest.raises(SourceError, match=r"^missing required column\(s\): Submit$"):
        ParsableParser(["JobID", "State", "Cluster"], delimiter="|")
    with pytest.raises(SourceError,
                       match=r"^missing required column\(s\): JobID or JobIDRaw, State$"):
        ParsableParser(["Submit", "Cluster", "AllocTRES"], delimiter="|")


def test_unknown_column_is_ignored(wide):
    lines = (FIXTURES / "sacct-wide-header.psv").read_text(encoding="utf-8").split("\n")
    extra = ["Bogus|" + lines[0]] + [f"junk{n}|{line}" if line else line
                                     for n, line in enumerate(lines[1:])]
    parser = ParsableParser(extra[0].split("|"), delimiter="|", source="test")
    assert "Bogus" in parser.ignored_columns
    assert list(parser.parse_lines(extra[1:], first_line_no=2)) == wide


def test_shuffled_columns_and_case_give_identical_records(wide):
    lines = (FIXTURES / "sacct-wide-header.psv").read_text(encoding="utf-8").split("\n")
    header = lines[0].split("|")
    order = list(range(len(header)))[::-1]
    order = order[1::2] + order[0::2]                      # a deterministic shuffle
    shuffled = ["|".join(header[i].lower() for i in order)]
    shuffled += ["|".join(line.split("|")[i] for i in order) if line else "" for line in lines[1:]]
    assert parse_text("\n".join(shuffled)) == wide


def test_sacct_fields_with_unit_separator_and_epoch():
    # One real job and step re-emitted as the collector asks for them (SACCT_FIELDS,
    # \x1f, --noconvert, SLURM_TIME_FORMAT=%s): values typed from the fixtures by hand.
    values = {
        "JobID": "2", "JobIDRaw": "2", "Cluster": "lab", "Partition": "batch",
        "Account": "physics", "User": "root", "UID": "0", "Group": "root", "QOS": "normal",
        "WCKey": "", "Reservation": "", "State": "COMPLETED", "ExitCode": "0:0",
        "DerivedExitCode": "0:0", "Submit": "1795351542", "Eligible": "1795351542",
        "Start": "1795351543", "End": "1795351554", "ElapsedRaw": "11", "TimelimitRaw": "5",
        "NNodes": "1", "NCPUS": "2", "AllocTRES": "billing=4,cpu=2,gres/gpu=1,mem=1024M,node=1",
        "TRESUsageInTot": "", "CPUTimeRAW": "22", "TotalCPU": "00:06.220", "MaxRSS": "",
        "ConsumedEnergyRaw": "", "NodeList": "vm", "DBIndex": "3", "JobName": "cpu_gpu1",
    }
    step = dict(values, JobID="2.batch", JobIDRaw="2.batch", User="", UID="", Group="",
                Partition="", QOS="", TimelimitRaw="",
                TRESUsageInTot="cpu=00:00:06,energy=0,fs/disk=59396,mem=324423680,"
                               "pages=3,vmem=331415552",
                MaxRSS="324423680", ConsumedEnergyRaw="0", JobName="batch")
    parser = ParsableParser(SACCT_FIELDS, delimiter=SACCT_DELIMITER)
    lines = [SACCT_DELIMITER.join(v[f] for f in SACCT_FIELDS) for v in (values, step)]
    rec, usage = parser.parse_lines(lines)
    wide_items = parse_fixture("sacct-wide-header.psv")
    assert rec == job(wide_items, "2")
    assert usage == StepUsage(cluster="lab", job_id_raw=2, step="batch", job_db_index=3,
                              state="COMPLETED", elapsed_s=11, cpu_used_s=Decimal("6.220"),
                              max_rss_bytes=324423680, mem_total_bytes=324423680,
                              energy_j=0, line_no=2)


def test_job_name_newline_continues_last_column():
    # SACCT_FIELDS ends with JobName: a newline in it leaves a delimiter-less line.
    fields = ["9", "9", "lab", "batch", "physics", "root", "0", "root", "normal", "", "",
              "COMPLETED", "0:0", "0:0", "1795351543", "1795351543", "1795351557",
              "1795351561", "4", "5", "1", "1", "billing=1,cpu=1,mem=100M,node=1", "", "4",
              "00:00.002", "", "", "vm", "13", "two"]
    line = SACCT_DELIMITER.join(fields)
    parser = ParsableParser(SACCT_FIELDS, delimiter=SACCT_DELIMITER)
    (rec,) = parser.parse_lines([line, "lines", ""])
    assert rec.name == "two\nlines"


def test_empty_and_blank_input():
    parser = ParsableParser(SACCT_FIELDS, delimiter=SACCT_DELIMITER)
    assert list(parser.parse_lines([])) == []
    assert list(parser.parse_lines(["", "", ""])) == []


def test_het_extern_and_array_step_lines():
    text = ("JobID|JobIDRaw|Cluster|State|Submit|DBIndex|ElapsedRaw|TRESUsageInTot\n"
            "14+1.0|15.0|lab|COMPLETED|2026-11-22T12:45:43|19|3|cpu=00:01:02,mem=2048K\n"
            "5.extern|5.extern|lab|COMPLETED|2026-11-22T12:45:48|9|14|energy=0\n"
            "6_1.batch|17.batch|lab|CANCELLED|2026-11-22T12:45:51|21|3|")
    het, extern, array = parse_text(text)
    assert (het.job_id_raw, het.step, het.job_db_index) == (15, "0", 19)
    # No TotalCPU column: the cpu= of TRESUsageInTot (1 min 2 s) is used instead.
    assert het.cpu_used_s == Decimal(62)
    assert het.mem_total_bytes == 2097152                   # 2048K, bare would be bytes
    assert (extern.job_id_raw, extern.step, extern.mem_total_bytes) == (5, "extern", None)
    assert (array.job_id_raw, array.step, array.state) == (17, "batch", "CANCELLED")
    assert array.cpu_used_s is None


# ---------------------------------------------------------------- older and newer forms


@pytest.mark.parametrize("text, gpus", [
    ("gpu:2", (("untyped", 2),)),
    ("gpu:tesla:2", (("tesla", 2),)),
    ("gpu:2(IDX:0-1)", (("untyped", 2),)),
    ("gpu:tesla:2(IDX:0,1)", (("tesla", 2),)),
    ("gpu", (("untyped", 1),)),
    ("gpu:k80", (("k80", 1),)),
    ("mic:1,gpu:k80:4", (("k80", 4),)),
    ("gres:gpu:a100:1", (("a100", 1),)),
    ("gres/gpu:h100:2", (("h100", 2),)),
    ("gpu:a100:1,gpu:v100:2", (("a100", 1), ("v100", 2))),
    ("gpu:3,gpu:a100:1", (("a100", 1), ("untyped", 2))),      # untyped next to typed: total
    ("gpumem:40G,shard:4,mps:100", ()),                        # never GPUs
    ("", ()), ("(null)", ()), ("None", ()),
])
def test_gres_forms(text, gpus):
    assert parse_gres(text) == gpus


@pytest.mark.parametrize("text, cpus, nodes, expected", [
    ("4000Mn", 32, 2, 2 * 4000 * 1048576),        # per node (Slurm <= 21.02)
    ("2000Mc", 4, 1, 4 * 2000 * 1048576),         # per CPU
    ("1.50Gn", 1, 2, 2 * 1610612736),             # converted (default units)
    ("0n", 8, 1, 0),
    ("1G", 8, 2, 1073741824),                     # 21.08+: the job's memory
    ("1024", 1, 1, 1073741824),                   # a bare number is MB
    ("", 1, 1, None), ("Unknown", 1, 1, None),
])
def test_req_mem_forms(text, cpus, nodes, expected):
    assert req_mem_bytes(text, cpus=cpus, nodes=nodes) == expected


@pytest.mark.parametrize("text, count", [
    ("vm", 1), ("node[01-04,07],gpu1", 6), ("rack[1-2]-node[1-3]", 6), ("c[01-02]", 2),
    ("None assigned", 0), ("", 0),
])
def test_hostlist_count(text, count):
    assert hostlist_count(text) == count


def test_unknown_state_is_kept_not_final_and_never_digested():
    text = ("JobID|JobIDRaw|Cluster|State|Submit|Start|End|AllocTRES\n"
            "1|1|lab|PARKED|2026-11-22T12:45:42|2026-11-22T12:45:43|2026-11-22T12:46:43|cpu=1\n"
            "2|2|lab|CD|2026-11-22T12:45:42|2026-11-22T12:45:43|2026-11-22T12:46:43|cpu=1")
    lines = text.split("\n")
    parser = ParsableParser(lines[0].split("|"), delimiter="|", source="test")

    class Nothing:
        def stored(self, keys):
            return set()

        def skipped(self, cluster):  # pragma: no cover - nothing is stored
            raise AssertionError

    parked, done = parser.parse_lines(lines[1:], unchanged=Nothing())
    assert (parked.state, parked.state_raw, parked.final, parked.raw_digest) == (
        "PARKED", "PARKED", False, None)
    assert (done.state, done.final) == ("COMPLETED", True) and done.raw_digest
    assert parser.unknown_states == {"PARKED": 1}


def test_allocation_fallbacks_only_for_jobs_that_ran():
    text = ("JobID|JobIDRaw|Cluster|State|Submit|Start|NNodes|NCPUS|ReqMem|AllocGRES|AllocTRES|"
            "NodeList\n"
            "1|1|lab|COMPLETED|2026-11-22T12:45:42|2026-11-22T12:45:43|2|8|1Gn|gpu:a100:2||n[1-2]\n"
            "2|2|lab|CANCELLED by 0|2026-11-22T12:45:42|None|2|8|1Gn|gpu:a100:2||None assigned\n"
            "3|3|lab|COMPLETED|2026-11-22T12:45:42|2026-11-22T12:45:43|1|2|4Gn|gpu:1|"
            "billing=2,cpu=2,mem=1G,node=1|n3\n"
            # 22.05 gives a het job cancelled while pending a Start (= its End), no nodes.
            "4+0|4|lab|CANCELLED by 0|2026-11-22T12:45:42|2026-11-22T12:46:00|1|1|100M|||"
            "None assigned")
    ran, never, tres, het = parse_text(text)
    assert (het.start is not None, het.cpus, het.nodes, het.mem_bytes) == (True, 0, 0, 0)
    # AllocTRES empty, ran: NCPUS, NNodes, ReqMem 1G per node x 2, AllocGRES.
    assert (ran.cpus, ran.nodes, ran.mem_bytes, ran.gpus) == (8, 2, 2 * 1073741824,
                                                              (("a100", 2),))
    assert (never.cpus, never.nodes, never.mem_bytes, never.gpus) == (0, 0, 0, ())
    # AllocTRES wins where it has a value; only its missing GPUs come from AllocGRES.
    assert (tres.cpus, tres.mem_bytes, tres.gpus) == (2, 1073741824, (("untyped", 1),))


def test_negative_counts_and_dbindex_out_of_range_are_quarantined_naming_the_column():
    text = ("JobID|JobIDRaw|Cluster|State|Submit|Start|NCPUS|AllocTRES|NodeList|DBIndex\n"
            "1|1|lab|COMPLETED|2026-11-22T12:45:42|2026-11-22T12:45:43|-1||n1|7\n"
            "2|2|lab|COMPLETED|2026-11-22T12:45:42|2026-11-22T12:45:43|2|cpu=-2|n1|8\n"
            "3|3|lab|COMPLETED|2026-11-22T12:45:42|2026-11-22T12:45:43|2|cpu=2|n1|"
            "18446744073709551616\n"
            "4|4|lab|COMPLETED|2026-11-22T12:45:42|2026-11-22T12:45:43|2|cpu=2|n1|"
            "18446744073709551615")
    ncpus, alloc, too_big, biggest = parse_text(text)
    assert "NCPUS='-1'" in ncpus.reason
    assert "AllocTRES='cpu=-2'" in alloc.reason
    assert "DBIndex='18446744073709551616'" in too_big.reason
    assert biggest.db_index == 2 ** 64 - 1 and biggest.cpus == 2


@pytest.mark.parametrize("job_id", ["6_3_4", "1_000_2", "6_+3", "14+ 1", "٣", "6_٣"])
def test_job_ids_with_numbers_python_would_stretch_are_refused(job_id):
    # int() accepts "1_000", " 7", "+7" and other digits; JobIDs never hold them.
    with pytest.raises(ValueError):
        split_job_id(job_id)
