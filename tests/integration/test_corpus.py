"""The hand-written sacct corpus (tests/corpus/sacct) through ``hpc-billing collect --once
--source file`` into the real PostgreSQL: one test per failure class of issue 18, each
asserting the STORED values (CPUs, GPUs by type, memory, times, state) and the run's
outcome, exit code and report.

Every expected figure below is worked out by hand from the file's text (sizes are
1024-based: 1G = 1073741824 bytes; a bare AllocTRES/ReqMem number is MB).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import text

from collector.store import jobs as store_jobs
from collector.store import runs as store_runs
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus" / "sacct"
GIB = 1024 ** 3
MIB = 1024 ** 2


def at(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def collect(db_url: str, name: str, *extra: str) -> int:
    return run_cli("collect", "--once", "--source", "file", "--input", str(CORPUS / name),
                   "--database-url", db_url, *extra)


def stored(sessions) -> dict[tuple[str, str], list]:
    """(cluster, job_id) -> the stored records (a requeued job has two)."""
    out: dict[tuple[str, str], list] = {}
    with sessions() as s:
        for job in store_jobs.list_jobs(s):
            out.setdefault((job.cluster, job.job_id), []).append(job)
    for records in out.values():
        records.sort(key=lambda j: j.submit)
    return out


def one(jobs, cluster: str, job_id: str):
    (job,) = jobs[(cluster, job_id)]
    return job


def last_run(sessions):
    with sessions() as s:
        return store_runs.list_runs(s, limit=1)[0]


def log_lines(capsys) -> list[str]:
    """The collector's log lines of the calls so far (cli sets up its own stderr handler)."""
    return capsys.readouterr().err.splitlines()


def quarantine(sessions, run_id: int):
    with sessions() as s:
        return store_runs.list_quarantine(s, run_id=run_id)


# ------------------------------------------------------------ 1: no Cluster column

def test_no_cluster_column_with_cluster_setting_stores_every_job(db_url, sessions):
    name = "slurm-14.11-gres-nocluster.psv"
    # Without a cluster the file is refused by name (configuration, before any record).
    assert collect(db_url, name, "--timezone", "America/Chicago") == 1
    assert "no Cluster column" in (last_run(sessions).error or "")
    # With --cluster: stored (the skip path, on by default, used to crash with IndexError),
    # and a second import skips every job as unchanged through that same path.
    for inserted, unchanged in ((5, 0), (0, 5)):
        assert collect(db_url, name, "--timezone", "America/Chicago", "--cluster", "old") == 0
        run = last_run(sessions)
        assert (run.outcome, run.jobs_inserted, run.jobs_unchanged, run.quarantined) == \
            ("ok", inserted, unchanged, 0)
    jobs = stored(sessions)
    assert {cluster for cluster, _ in jobs} == {"old"}
    assert len(jobs) == 5


# ----------------------------------------------------- 3: empty AllocTRES on a job that ran

def test_empty_alloc_tres_falls_back_to_ncpus_nnodes_nodelist_and_reqmem(db_url, sessions):
    assert collect(db_url, "slurm-20.11-empty-alloctres.psv") == 0
    jobs = stored(sessions)
    a = one(jobs, "c20", "4001")
    # NCPUS 16, NNodes 2; ReqMem 2Gc = 2 GiB per CPU x 16 CPUs.
    assert (a.cpus, a.nodes, a.mem_bytes, a.gpus, a.billing) == (16, 2, 32 * GIB, (), None)
    b = one(jobs, "c20", "4002")
    # NCPUS empty -> AllocCPUS 8; NNodes empty -> NodeList node[03-06] = 4 nodes;
    # ReqMem 4000Mn = 4000 MB per node x 4 nodes.
    assert (b.cpus, b.nodes, b.mem_bytes) == (8, 4, 4 * 4000 * MIB)
    # Cancelled before it started (Start None): no allocation, whatever NCPUS says.
    c = one(jobs, "c20", "4003")
    assert (c.cpus, c.nodes, c.mem_bytes, c.start, c.state, c.final) == (
        0, 0, 0, None, "CANCELLED", True)
    # AllocTRES present: it wins (ReqMem 2Gn would say 2 GiB; AllocTRES says 8G).
    d = one(jobs, "c20", "4004")
    assert (d.cpus, d.nodes, d.mem_bytes, d.billing) == (4, 1, 8 * GIB, 4)


# ---------------------------------------------------------- 4: GPUs in AllocGRES/ReqGRES

def test_gpus_from_alloc_gres_and_req_gres(db_url, sessions):
    assert collect(db_url, "slurm-14.11-gres-nocluster.psv", "--cluster", "old",
                   "--timezone", "America/Chicago") == 0
    assert collect(db_url, "slurm-15.08-tres-allocgres-noconvert-D.psv") == 0
    assert collect(db_url, "slurm-17.11-parsable-bom-blank-lines.psv") == 0
    jobs = stored(sessions)
    # AllocGRES gpu:tesla:2; ReqMem 2000Mc = 2000 MB x 4 CPUs.
    tesla = one(jobs, "old", "1002")
    assert (tesla.gpus, tesla.cpus, tesla.mem_bytes) == ((("tesla", 2),), 4, 4 * 2000 * MIB)
    # AllocGRES empty, ReqGRES gpu:1 is per node: x NNodes 2.
    assert one(jobs, "old", "1003").gpus == (("untyped", 2),)
    # AllocTRES (15.08) has no gres/gpu: AllocGRES gpu:k80:4; memory from AllocTRES.
    k80 = one(jobs, "c15", "2001")
    assert (k80.gpus, k80.cpus, k80.mem_bytes) == ((("k80", 4),), 8, 16000 * MIB)
    assert one(jobs, "c15", "2003").gpus == (("untyped", 2),)
    # 17.11's gres detail form gpu:2(IDX:0-1) on the het component 3001+1.
    assert one(jobs, "c17", "3001+1").gpus == (("untyped", 2),)
    assert one(jobs, "c17", "3001+0").gpus == ()
    # A CPU job stays without GPUs.
    assert one(jobs, "old", "1001").gpus == ()


# ------------------------------------------------------------ 5: ignored columns

def test_ignored_columns_are_logged_once_and_counted(db_url, sessions, capsys):
    assert collect(db_url, "slurm-25.11-unit-separator-new-columns.psv") == 0
    lines = log_lines(capsys)
    notes = [line for line in lines if "not used by hpc-billing" in line]
    assert len(notes) == 1
    for column in ("SLUID", "Planned", "PlannedCPU", "Restarts", "QOSREQ", "ReqTRES", "Extra"):
        assert column in notes[0]
    assert any(": ok; read 5 jobs" in line and "ignored columns 7" in line for line in lines)
    jobs = stored(sessions)
    # The \x1f export: het components with their steps, an array task with its own raw id.
    het0, het1 = one(jobs, "c25", "9001+0"), one(jobs, "c25", "9001+1")
    assert (het0.job_id_raw, het0.het_job_id, het0.het_job_offset) == (9001, 9001, 0)
    assert (het1.job_id_raw, het1.gpus, het1.billing) == (9002, (("h100", 1),), 10)
    assert het1.max_rss_bytes == 6 * GIB                       # from step 9001+1.0 (9002.0)
    task = one(jobs, "c25", "9010_4")
    assert (task.job_id_raw, task.array_job_id, task.array_task_id, task.mem_bytes) == (
        9014, 9010, 4, 500 * MIB)
    pending = one(jobs, "c25", "9010_[1-3%2]")
    assert (pending.job_id_raw, pending.array_job_id, pending.array_task_id, pending.cpus,
            pending.final) == (9010, 9010, None, 0, False)
    # salloc's .interactive step: its usage rolls up like any step.
    interactive = one(jobs, "c25", "9020")
    assert (interactive.cpu_used_s, interactive.max_rss_bytes) == (Decimal(120), 300 * MIB)


# ------------------------------------------------------ 6 and 9: duplicates, unknown states

def summary_of(lines: list[str], run_id: int) -> str:
    return next(line for line in lines if f" run {run_id} file " in line and "; read " in line)


def test_duplicates_and_unknown_states_are_counted_and_reported(db_url, sessions, capsys):
    name = "slurm-23.02-interactive-unknown-state-duplicates.psv"
    assert collect(db_url, name) == 0
    run = last_run(sessions)
    # 4 job records read (7002 twice), 3 jobs stored.
    assert (run.outcome, run.records_read, run.jobs_inserted, run.quarantined) == ("ok", 4, 3, 0)
    messages = log_lines(capsys)
    summary = summary_of(messages, run.id)
    assert "duplicates 1" in summary and "unknown states 1" in summary
    assert any("read more than once" in m and "c23/7002" in m for m in messages)
    assert any("does not document (PARKED 1)" in m for m in messages)

    jobs = stored(sessions)
    assert len(jobs[("c23", "7002")]) == 1
    parked = one(jobs, "c23", "7003")
    # Kept as printed, never final (so it is read again), still a job with its allocation.
    assert (parked.state, parked.state_raw, parked.final, parked.cpus) == (
        "PARKED", "PARKED", False, 2)
    # Typed GPU counted once: gres/gpu:a100=1 next to gres/gpu=1 is one a100.
    salloc = one(jobs, "c23", "7001")
    assert (salloc.gpus, salloc.cpus, salloc.mem_bytes) == ((("a100", 1),), 8, 32 * GIB)
    # Steps .interactive (1G for 3000 s), .extern (none) and .0 (4G for 1200 s).
    assert salloc.max_rss_bytes == 4 * GIB
    assert salloc.mem_used_byte_s == GIB * 3000 + 4 * GIB * 1200
    assert salloc.cpu_used_s == Decimal(1500)                  # the job line's 25:00.000

    # Again: every known job is skipped unchanged before parsing, the duplicate still
    # counted; the unknown-state job has no raw digest, so it is parsed (read) again.
    assert collect(db_url, name) == 0
    again = last_run(sessions)
    assert (again.outcome, again.records_read, again.jobs_unchanged) == ("ok", 4, 4)
    summary = summary_of(log_lines(capsys), again.id)
    assert "duplicates 1" in summary and "unknown states 1" in summary
    with sessions() as s:
        digests = dict(s.execute(text(
            "SELECT job_id, raw_digest IS NOT NULL FROM jobs WHERE cluster = 'c23'")).all())
    assert digests == {"7001": True, "7002": True, "7003": False}


# ------------------------------------------------------------ 7: blank lines before header

def test_blank_lines_and_bom_before_the_header_and_trailing_delimiters(db_url, sessions):
    assert collect(db_url, "slurm-17.11-parsable-bom-blank-lines.psv") == 0
    run = last_run(sessions)
    assert (run.outcome, run.jobs_inserted, run.quarantined) == ("ok", 3, 0)
    jobs = stored(sessions)
    het0 = one(jobs, "c17", "3001+0")
    assert (het0.job_id_raw, het0.het_job_id, het0.het_job_offset, het0.cpus, het0.mem_bytes,
            het0.billing) == (3001, 3001, 0, 4, 8 * GIB, 4)
    # The .batch step's TRESUsageInTot mem=10M for 3600 s; .extern has no mem.
    assert het0.mem_used_byte_s == 10 * MIB * 3600
    het1 = one(jobs, "c17", "3001+1")
    # Step 3001+1.0 (JobIDRaw 3002.0): mem=2G for 3594 s.
    assert (het1.job_id_raw, het1.max_rss_bytes, het1.mem_used_byte_s) == (
        3002, 2 * GIB, 2 * GIB * 3594)
    timeout = one(jobs, "c17", "3005")
    assert (timeout.state, timeout.final, timeout.elapsed_s, timeout.mem_bytes,
            timeout.cpu_used_s) == ("TIMEOUT", True, 630, 1000 * MIB, Decimal("629.99"))
    assert (timeout.start, timeout.end) == (at("2018-03-02T08:00:00"), at("2018-03-02T08:10:30"))


# ----------------------------------------------------- 8: a rate card that matches nothing

CARD = """\
currency = "EUR"
scale = 2
period = "month"
timezone = "UTC"

[[rules]]
name = "only-cluster-nope"
match = {{ cluster = "{cluster}" }}
from = 2020-01-01
[rules.rates]
cpu_hour = "0.10"
gpu_hour = "2"
"""


def test_a_rate_card_that_matches_no_job_warns_with_counts_by_reason(db_url, sessions, tmp_path,
                                                                      capsys):
    card = tmp_path / "rates.toml"
    card.write_text(CARD.format(cluster="nope"))
    assert collect(db_url, "slurm-24.11-tres-extras-epoch-noconvert.psv", "--rates",
                   str(card)) == 0
    run = last_run(sessions)
    assert (run.outcome, run.jobs_inserted, run.jobs_priced, run.charge_lines_written) == (
        "ok", 6, 6, 0)
    lines = log_lines(capsys)
    warnings = [line for line in lines if " WARNING " in line]
    # 8001, 8002, 8003 and the requeued 8004 ran and match no rule; the rerun of 8004 is
    # running (not accrued), the array 8005_[4-6%2] never started.
    (warning,) = [w for w in warnings if "priced no line" in w]
    assert "for 6 of 6 job(s)" in warning
    assert "no matching rule 4" in warning and "running 1" in warning
    assert "not started 1" in warning and "clusters read: c24" in warning
    summary = summary_of(lines, run.id)
    assert "unpriced 6 (no matching rule 4, not started 1, running 1)" in summary

    # The same data with a card for its cluster: priced, no warning.
    card.write_text(CARD.format(cluster="c24"))
    with sessions() as s:
        s.execute(text("TRUNCATE job_rows, charge_rows, rollup_resource, rollup_jobs,"
                       " collector_runs RESTART IDENTITY CASCADE"))
        s.commit()
    assert collect(db_url, "slurm-24.11-tres-extras-epoch-noconvert.psv", "--rates",
                   str(card)) == 0
    assert not [line for line in log_lines(capsys) if "priced no line" in line]
    assert last_run(sessions).charge_lines_written > 0


# ------------------------------------------------------------ 10: JobID / JobIDRaw missing

def test_no_jobid_column_derives_the_job_id_from_jobidraw(db_url, sessions):
    assert collect(db_url, "slurm-22.05-jobidraw-only.psv") == 0
    jobs = stored(sessions)
    a = one(jobs, "c22", "5001")
    assert (a.job_id_raw, a.array_job_id, a.het_job_id, a.cpus, a.mem_bytes) == (
        5001, None, None, 2, 2 * GIB)
    b = one(jobs, "c22", "5002")
    assert (b.job_id_raw, b.cpus, b.elapsed_s) == (5002, 1, 300)


def test_no_jobidraw_column_stores_plain_jobs_and_quarantines_what_it_cannot_derive(
        db_url, sessions):
    # An array task and a het component have their own raw ids, which JobID does not
    # show: those records are quarantined naming the missing column; the run is partial.
    assert collect(db_url, "slurm-22.05-jobid-only.psv") == 3
    run = last_run(sessions)
    assert (run.outcome, run.jobs_inserted, run.quarantined) == ("partial", 1, 3)
    reasons = {q.job_id: q.reason for q in quarantine(sessions, run.id)}
    assert set(reasons) == {"5100_2", "5100_2.batch", "5110+1"}
    assert all("no JobIDRaw column" in reason for reason in reasons.values())
    plain = one(stored(sessions), "c22", "5101")
    assert (plain.job_id_raw, plain.cpus, plain.mem_bytes) == (5101, 2, 2 * GIB)


def test_neither_jobid_nor_jobidraw_is_refused_naming_the_columns(db_url, sessions, tmp_path):
    path = tmp_path / "noid.psv"
    path.write_text("Cluster|State|Submit|AllocTRES\nc22|COMPLETED|2023-01-05T10:00:00|cpu=1\n")
    assert run_cli("collect", "--once", "--source", "file", "--input", str(path),
                   "--database-url", db_url) == 1
    run = last_run(sessions)
    assert run.outcome == "failed"
    assert "missing required column(s): JobID or JobIDRaw" in (run.error or "")


# ------------------------------------------------------------ 11: values in other forms

def test_local_times_durations_and_sentinels_across_releases(db_url, sessions):
    assert collect(db_url, "slurm-26.05-local-times-berlin.psv", "--timezone",
                   "Europe/Berlin") == 0
    assert collect(db_url, "slurm-14.11-gres-nocluster.psv", "--timezone", "America/Chicago",
                   "--cluster", "old") == 0
    jobs = stored(sessions)
    # Berlin, the spring-forward night: 01:30 CET (+1) to 03:30 CEST (+2) is one hour.
    dst = one(jobs, "c26", "10001")
    assert (dst.submit, dst.start, dst.end) == (
        at("2026-03-28T22:00:00"), at("2026-03-29T00:30:00"), at("2026-03-29T01:30:00"))
    assert (dst.elapsed_s, dst.timelimit_min, dst.cpu_time_alloc_s, dst.cpu_used_s) == (
        3600, 1440, 4 * 3600, Decimal(3 * 3600 + 59 * 60 + 59))
    # Elapsed 2-03:04:05, CPUTime 4-06:08:10, TotalCPU 1-00:00:01, Timelimit UNLIMITED.
    long = one(jobs, "c26", "10002")
    assert (long.elapsed_s, long.cpu_time_alloc_s, long.cpu_used_s, long.timelimit_min) == (
        2 * 86400 + 3 * 3600 + 4 * 60 + 5, 4 * 86400 + 6 * 3600 + 8 * 60 + 10,
        Decimal(86401), None)
    assert long.end == at("2026-07-03T11:04:10")
    # Running with a blank End; TotalCPU 05:00.250 (MM:SS.mmm).
    running = one(jobs, "c26", "10003")
    assert (running.state, running.end, running.final, running.cpu_used_s) == (
        "RUNNING", None, False, Decimal("300.25"))
    assert running.start == at("2026-11-01T07:00:01")          # CET again: +1
    # Pending: Start/End None, Timelimit Partition_Limit, nothing allocated.
    pending = one(jobs, "c26", "10004")
    assert (pending.start, pending.end, pending.timelimit_min, pending.cpus, pending.final) == (
        None, None, None, 0, False)

    # Chicago: CST (-6) in January, CDT (-5) in July. Elapsed 1-02:03:04 = 93784 s.
    cfd = one(jobs, "old", "1001")
    assert (cfd.start, cfd.end, cfd.elapsed_s) == (
        at("2015-01-10T14:05:00"), at("2015-01-11T16:08:04"), 93784)
    # ReqMem 4000Mn x NNodes 2; TotalCPU 1-16:12:05; MaxRSS max(1024K, 2.50G).
    assert (cfd.cpus, cfd.nodes, cfd.mem_bytes, cfd.cpu_used_s, cfd.max_rss_bytes) == (
        32, 2, 2 * 4000 * MIB, Decimal(144725), int(2.5 * GIB))
    train = one(jobs, "old", "1002")
    assert (train.start, train.end, train.cpu_used_s, train.max_rss_bytes) == (
        at("2015-07-04T17:00:00"), at("2015-07-04T17:30:00"), Decimal("3599.5"), 3 * GIB)
    assert one(jobs, "old", "1003").elapsed_s == 300                 # Elapsed 05:00
    pending_array = one(jobs, "old", "1004_[1-3%2]")
    assert (pending_array.array_job_id, pending_array.array_task_id, pending_array.start,
            pending_array.cpus, pending_array.final) == (1004, None, None, 0, False)
    cancelled = one(jobs, "old", "1005")
    assert (cancelled.state, cancelled.state_raw, cancelled.start, cancelled.cpus) == (
        "CANCELLED", "CANCELLED by 5000", None, 0)


def test_epoch_noconvert_requeue_and_tres_keys_that_are_never_gpus(db_url, sessions):
    assert collect(db_url, "slurm-24.11-tres-extras-epoch-noconvert.psv") == 0
    assert collect(db_url, "slurm-15.08-tres-allocgres-noconvert-D.psv") == 0
    jobs = stored(sessions)
    # energy, fs/disk, gres/gpumem, gres/gpuutil, license/matlab: none is a GPU; the typed
    # h100=2 next to gres/gpu=2 counts once.
    big = one(jobs, "c24", "8001")
    assert (big.gpus, big.cpus, big.mem_bytes, big.billing, big.energy_j) == (
        (("h100", 2),), 16, 131072 * MIB, 36, 1200)
    assert (big.submit, big.start, big.end) == (
        at("2025-03-10T08:00:00"), at("2025-03-10T08:00:05"), at("2025-03-10T10:00:05"))
    # The batch step's TRESUsageInTot mem is bytes under --noconvert: 50 GiB for 7200 s.
    assert (big.max_rss_bytes, big.mem_used_byte_s) == (50 * GIB, 50 * GIB * 7200)
    assert big.cpu_used_s == Decimal(30 * 3600)                      # 1-06:00:00
    assert one(jobs, "c24", "8002").gpus == ()                       # gres/shard=2 only
    # gres/gpu=3 with a100=1 and h100=1 typed: one untyped remainder.
    assert one(jobs, "c24", "8003").gpus == (("a100", 1), ("h100", 1), ("untyped", 1))
    # -D: the requeued record (final: it has an End) and the rerun, still running.
    old, rerun = jobs[("c24", "8004")]
    assert (old.state, old.final, old.db_index, old.end) == (
        "REQUEUED", True, 9010, at("2025-03-10T12:11:00"))
    assert (rerun.state, rerun.final, rerun.db_index, rerun.end, rerun.submit) == (
        "RUNNING", False, 9011, None, at("2025-03-10T12:15:00"))
    pending = one(jobs, "c24", "8005_[4-6%2]")
    assert (pending.array_job_id, pending.start, pending.cpus) == (8005, None, 0)

    # 15.08 --noconvert: AllocTRES mem=16000M is MB; MaxRSS 8589934592 is bytes.
    k80 = one(jobs, "c15", "2001")
    assert (k80.mem_bytes, k80.max_rss_bytes, k80.energy_j, k80.timelimit_min) == (
        16000 * MIB, 8 * GIB, 3600000, 180)
    first, second = jobs[("c15", "2002")]
    assert (first.state, first.elapsed_s, first.max_rss_bytes) == ("REQUEUED", 1200, MIB)
    assert (second.state, second.elapsed_s, second.max_rss_bytes) == ("COMPLETED", 1800, 2 * MIB)
    running = one(jobs, "c15", "2004")
    assert (running.end, running.final, running.mem_bytes) == (None, False, 8000 * MIB)
    assert one(jobs, "c15", "2003").timelimit_min is None            # TimelimitRaw UNLIMITED


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*.psv")))
def test_every_corpus_file_imports_without_a_crash(db_url, sessions, name):
    extra = {"slurm-14.11-gres-nocluster.psv": ("--cluster", "old")}.get(name, ())
    code = collect(db_url, name, *extra)
    run = last_run(sessions)
    expect = {"slurm-22.05-jobid-only.psv": (3, "partial")}.get(name, (0, "ok"))
    assert (code, run.outcome) == expect, run.error
