"""End to end through the CLI: real PostgreSQL, a fake sacct executable, real captured output.

Each test calls ``collector.cli.main`` (the same code the console script runs) and then
checks the database through the store's read functions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.helpers import executable_wrapper, run_cli
from collector.store import jobs as store_jobs
from collector.store import runs as store_runs

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
FAKE_SACCT = ROOT / "tests" / "fakes" / "fake_sacct.py"
WIDE = FIXTURES / "sacct-wide-header.psv"

# The 22 job records of sacct-wide-header.psv, counted by hand from the file: jobs 1-5,
# array tasks 6_1..6_5, 7-13, het components 14+0 and 14+1, the two records of the
# requeued job 16 (REQUEUED, then COMPLETED with a later Submit), and the running job 21.
WIDE_JOB_RECORDS = 22


@pytest.fixture()
def fake_sacct(tmp_path) -> Path:
    """An executable `sacct` (the fake, run by this interpreter) on a path of its own."""
    return executable_wrapper(tmp_path / "bin", "sacct", FAKE_SACCT)


def _runs(sessions):
    with sessions() as s:
        return store_runs.list_runs(s, limit=100)


def _jobs(sessions):
    with sessions() as s:
        return list(store_jobs.list_jobs(s))


def test_file_import_twice_stores_each_job_once_and_changes_nothing(db_url, sessions):
    assert run_cli("collect", "--once", "--source", "file", "--input", str(WIDE),
                   "--database-url", db_url) == 0
    first = _jobs(sessions)
    keys = {(j.cluster, j.job_id_raw, j.submit) for j in first}
    assert len(first) == len(keys) == WIDE_JOB_RECORDS

    assert run_cli("collect", "--once", "--source", "file", "--input", str(WIDE),
                   "--database-url", db_url) == 0
    assert _jobs(sessions) == first
    newest, older = _runs(sessions)[:2]
    assert (older.outcome, older.jobs_inserted, older.jobs_updated, older.jobs_unchanged) == \
        ("ok", WIDE_JOB_RECORDS, 0, 0)
    assert (newest.outcome, newest.jobs_inserted, newest.jobs_updated, newest.jobs_unchanged) == \
        ("ok", 0, 0, WIDE_JOB_RECORDS)
    assert newest.kind == "file" and newest.window_since is None
    # A file import moves no watermark.
    with sessions() as s:
        assert store_runs.get_watermark(s, "lab", "sacct") is None


def test_requeue_array_and_het_identity(db_url, sessions):
    assert run_cli("collect", "--once", "--source", "file", "--input", str(WIDE),
                   "--database-url", db_url) == 0
    jobs = {(j.job_id, j.submit.strftime("%H:%M:%S")): j for j in _jobs(sessions)}
    # Requeue: one JobIDRaw, two records told apart by Submit (RECIPE §6).
    old, new = jobs[("16", "12:45:43")], jobs[("16", "12:48:17")]
    # The old record has an End and Slurm never updates it again: final, and billable.
    assert (old.job_id_raw, old.state, old.final) == (16, "REQUEUED", True)
    assert (new.job_id_raw, new.state, new.final) == (16, "COMPLETED", True)
    assert (old.elapsed_s, new.elapsed_s) == (4, 20)
    # Arrays: 6_3 is raw 19; the last task 6_5 keeps the array's id 6.
    assert jobs[("6_3", "12:45:42")].job_id_raw == 19
    t5 = jobs[("6_5", "12:45:42")]
    assert (t5.job_id_raw, t5.array_job_id, t5.array_task_id) == (6, 6, 5)
    # Het job cancelled while pending: empty AllocTRES costs nothing.
    het = jobs[("14+1", "12:45:43")]
    assert (het.job_id_raw, het.het_job_id, het.het_job_offset) == (15, 14, 1)
    assert (het.state, het.state_raw, het.cpus, het.mem_bytes, het.start) == \
        ("CANCELLED", "CANCELLED by 0", 0, 0, None)
    running = jobs[("21", "12:50:38")]
    assert (running.state, running.end, running.final) == ("RUNNING", None, False)


def test_default_units_noconvert_and_shuffled_columns_store_identical_rows(db_url, sessions, tmp_path,
                                                                            fake_sacct):
    fields = (WIDE.read_text().splitlines()[0]).split("|")
    # The same export as sacct prints it with --noconvert, made by the fake sacct from the
    # captured default-unit export; the fake's unit conversion is itself checked against the
    # real `sacct --noconvert` capture (sacct-noconvert.psv) just below.
    noconvert = subprocess.run(
        [str(fake_sacct), "--allusers", "--duplicates", "--noconvert", "--parsable2",
         "--format=" + ",".join(fields), "-S", "2026-11-01T00:00:00", "-E", "2026-12-01T00:00:00"],
        capture_output=True, text=True, check=True).stdout
    header, *rows = noconvert.splitlines()
    idx = {name: i for i, name in enumerate(header.split("|"))}
    real = {line.split("|")[0]: line.split("|") for line in
            (FIXTURES / "sacct-noconvert.psv").read_text().splitlines()[1:]}
    checked = 0
    for line in rows:
        cols = line.split("|")
        if cols[idx["JobID"]] in real:
            want = real[cols[idx["JobID"]]]
            assert cols[idx["ReqMem"]] == want[1] and cols[idx["AllocTRES"]] == want[2]
            assert cols[idx["TRESUsageInTot"]] == want[3] and cols[idx["MaxRSS"]] == want[4]
            checked += 1
    assert checked == 6  # 2, 2.batch, 3, 3.batch, 11, 11.batch
    nc_path = tmp_path / "noconvert.psv"
    nc_path.write_text(noconvert)

    # The same export with its columns in another order.
    wide_rows = [line.split("|") for line in WIDE.read_text().splitlines()]
    order = list(reversed(range(len(wide_rows[0]))))
    shuffled = tmp_path / "shuffled.psv"
    shuffled.write_text("\n".join("|".join(r[i] for i in order) for r in wide_rows) + "\n")

    for path in (WIDE, nc_path, shuffled):
        assert run_cli("collect", "--once", "--source", "file", "--input", str(path),
                       "--database-url", db_url) == 0
    runs = _runs(sessions)[:3]
    assert [(r.jobs_inserted, r.jobs_updated, r.jobs_unchanged) for r in reversed(runs)] == \
        [(WIDE_JOB_RECORDS, 0, 0), (0, 0, WIDE_JOB_RECORDS), (0, 0, WIDE_JOB_RECORDS)]


def test_sacct_source_polls_and_moves_the_watermark(db_url, sessions, fake_sacct, tmp_path):
    argv_log = tmp_path / "argv.log"
    env = {"FAKE_SACCT_ARGV_LOG": str(argv_log)}
    base = ("collect", "--once", "--source", "sacct", "--sacct", str(fake_sacct), "--cluster", "lab",
            "--database-url", db_url)
    before = datetime.now(timezone.utc).replace(microsecond=0)
    assert run_cli(*base, "--lookback", "3650d", env=env) == 0
    jobs = _jobs(sessions)
    assert len(jobs) == WIDE_JOB_RECORDS
    with sessions() as s:
        mark = store_runs.get_watermark(s, "lab", "sacct")
    assert mark is not None and mark >= before
    argv = argv_log.read_text()
    assert "--state" not in argv and "--noconvert" in argv and "--duplicates" in argv
    assert "--clusters=lab" in argv

    # The next poll re-reads [watermark - overlap, now): only the running job is in it.
    assert run_cli(*base, "--overlap", "10m", env=env) == 0
    last = _runs(sessions)[0]
    assert (last.kind, last.outcome, last.records_read, last.jobs_unchanged) == ("poll", "ok", 1, 1)
    assert last.window_since is not None and last.window_since < mark


@pytest.mark.parametrize("mode,expect", [
    ("fail", "exited with code 1"),
    ("hang", "timed out"),
])
def test_failed_poll_moves_no_watermark_and_is_logged(db_url, sessions, fake_sacct, mode, expect):
    base = ("collect", "--once", "--source", "sacct", "--sacct", str(fake_sacct), "--cluster", "lab",
            "--database-url", db_url, "--lookback", "3650d", "--sacct-timeout", "3")
    assert run_cli(*base) == 0
    with sessions() as s:
        mark = store_runs.get_watermark(s, "lab", "sacct")
    assert run_cli(*base, env={"FAKE_SACCT_MODE": mode}) == 1
    failed = _runs(sessions)[0]
    assert failed.outcome == "failed" and expect in (failed.error or "")
    with sessions() as s:
        assert store_runs.get_watermark(s, "lab", "sacct") == mark
    assert len(_jobs(sessions)) == WIDE_JOB_RECORDS


def test_failure_on_an_empty_database_stores_nothing(db_url, sessions, fake_sacct):
    assert run_cli("collect", "--once", "--source", "sacct", "--sacct", str(fake_sacct),
                   "--cluster", "lab", "--database-url", db_url, "--lookback", "3650d",
                   env={"FAKE_SACCT_MODE": "truncate_fail"}) == 1
    assert _jobs(sessions) == []
    with sessions() as s:
        assert store_runs.get_watermark(s, "lab", "sacct") is None


def test_garbage_is_quarantined_and_the_rest_lands(db_url, sessions, tmp_path):
    lines = WIDE.read_text().splitlines()
    bad = tmp_path / "bad.psv"
    # Has delimiters but not enough fields. (A line with no delimiter at all right after a
    # record whose last column is free text is read as that field's continuation: the
    # newline-in---wrap repair of delimiter-hazards.txt; see README "Bad input".)
    garbage = "this|is not|a sacct line"
    bad_time = lines[3].split("|")
    bad_time[14] = "2026-13-45T99:00:00"   # Submit of job 2: no identity without it
    bad.write_text("\n".join([lines[0], lines[1], garbage, "|".join(bad_time), *lines[4:]]) + "\n")
    # Partial: exit 3, the quarantined records kept, the rest stored.
    assert run_cli("collect", "--once", "--source", "file", "--input", str(bad),
                   "--database-url", db_url) == 3
    run = _runs(sessions)[0]
    # The garbage line, job 2 (no valid Submit, so no identity), and job 2's .batch step,
    # which has no job line left to belong to.
    assert run.outcome == "partial" and run.quarantined == 3
    assert "3 record(s) quarantined" in (run.error or "")
    assert len(_jobs(sessions)) == WIDE_JOB_RECORDS - 1
    with sessions() as s:
        q = store_runs.list_quarantine(s, run_id=run.id)
    raws = {item.raw: item.reason for item in q}
    assert garbage in raws and "|".join(bad_time) in raws
    assert "Submit" in raws["|".join(bad_time)]
    assert sum("without its job line" in reason for reason in raws.values()) == 1
    assert all(item.reason for item in q)


def test_missing_required_column_is_refused_with_its_name(db_url, sessions, tmp_path, capsys):
    rows = [line.split("|") for line in WIDE.read_text().splitlines()]
    drop = rows[0].index("Submit")
    path = tmp_path / "nosubmit.psv"
    path.write_text("\n".join("|".join(c for i, c in enumerate(r) if i != drop) for r in rows) + "\n")
    assert run_cli("collect", "--once", "--source", "file", "--input", str(path),
                   "--database-url", db_url) == 1
    assert "Submit" in (_runs(sessions)[0].error or "")
    assert _jobs(sessions) == []


def test_backfill_walks_chunks_and_resumes(db_url, sessions, fake_sacct, caplog):
    base = ("backfill", "--sacct", str(fake_sacct), "--cluster", "lab", "--database-url", db_url,
            "--since", "2026-11-22T12:40:00Z", "--chunk", "5m")
    assert run_cli(*base, "--until", "2026-11-22T12:50:00Z") == 0
    runs = [r for r in _runs(sessions) if r.kind == "backfill"]
    assert len(runs) == 2 and all(r.outcome == "ok" for r in runs)
    with sessions() as s:
        cursor = store_runs.get_watermark(s, "lab", "backfill:2026-11-22T12:40:00Z")
        assert store_runs.get_watermark(s, "lab", "sacct") is None  # backfill is not polling
    assert cursor == datetime(2026, 11, 22, 12, 50, tzinfo=timezone.utc)

    # A failing chunk stops the walk and leaves the cursor where it was.
    assert run_cli(*base, "--until", "2026-11-22T13:00:00Z", env={"FAKE_SACCT_MODE": "fail"}) == 1
    with sessions() as s:
        assert store_runs.get_watermark(s, "lab", "backfill:2026-11-22T12:40:00Z") == cursor

    # Run again: it resumes at 12:50, not at 12:40.
    assert run_cli(*base, "--until", "2026-11-22T13:00:00Z") == 0
    ok = [r for r in _runs(sessions) if r.kind == "backfill" and r.outcome == "ok"]
    assert len(ok) == 4
    assert min(r.window_since for r in ok[:2]) == cursor
    keys = {(j.cluster, j.job_id_raw, j.submit) for j in _jobs(sessions)}
    assert len(keys) == len(_jobs(sessions)) == WIDE_JOB_RECORDS


def test_jobs_json_has_the_documented_fields(db_url, capsys):
    assert run_cli("collect", "--once", "--source", "file", "--input", str(WIDE),
                   "--database-url", db_url) == 0
    capsys.readouterr()
    assert run_cli("jobs", "--format", "json", "--database-url", db_url) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == WIDE_JOB_RECORDS
    required = {"cluster", "job_id", "job_id_raw", "submit", "start", "end", "state", "user", "account",
                "partition", "qos", "elapsed_s", "cpus", "mem_bytes", "nodes", "billing", "gpus",
                "cpu_used_s", "max_rss_bytes", "final"}
    assert all(required <= set(r) for r in rows)
    job2 = next(r for r in rows if r["job_id"] == "2")
    # From the sacct line of job 2: AllocTRES billing=4,cpu=2,gres/gpu=1,mem=1G,node=1;
    # TotalCPU 00:06.220; the batch step's MaxRSS 316820K = 324423680 bytes.
    assert job2 == {**job2, "cluster": "lab", "job_id_raw": 2, "submit": "2026-11-22T12:45:42Z",
                    "start": "2026-11-22T12:45:43Z", "end": "2026-11-22T12:45:54Z",
                    "state": "COMPLETED", "user": "root", "account": "physics", "partition": "batch",
                    "qos": "normal", "elapsed_s": 11, "cpus": 2, "mem_bytes": 1073741824, "nodes": 1,
                    "billing": 4, "gpus": {"untyped": 1}, "cpu_used_s": 6.22,
                    "max_rss_bytes": 324423680, "final": True}
    capsys.readouterr()
    assert run_cli("jobs", "--format", "csv", "--database-url", db_url) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("cluster,job_id,job_id_raw,submit") and len(out) == WIDE_JOB_RECORDS + 1
    assert run_cli("runs", "--format", "json", "--database-url", db_url) == 0
    runs = json.loads(capsys.readouterr().out)
    assert runs[0]["jobs_inserted"] == WIDE_JOB_RECORDS and runs[0]["outcome"] == "ok"


def test_configuration_errors_are_all_listed_and_exit_2(capsys):
    code = run_cli("collect", "--once", "--source", "sacct", "--sacct", "/nonexistent/sacct",
                   "--overlap", "soon", "--bind", "nowhere")
    err = capsys.readouterr().err
    assert code == 2
    assert "HPC_BILLING_OVERLAP" not in err or "--overlap" in err
    assert "--overlap" in err and "--bind" in err


def test_console_script_runs_the_demo_in_a_real_process(db_url):
    env = {**os.environ, "DATABASE_URL": db_url}
    proc = subprocess.run([sys.executable, "-m", "collector.cli", "demo"], capture_output=True,
                          text=True, env=env, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "Stored jobs" in proc.stdout
    assert proc.stdout.count("\nlab ") == WIDE_JOB_RECORDS


def test_collect_loop_polls_until_sigterm_and_exits_cleanly(db_url, sessions, fake_sacct):
    import signal
    import time

    env = {**os.environ, "DATABASE_URL": db_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "collect", "--source", "sacct", "--sacct", str(fake_sacct),
         "--cluster", "lab", "--lookback", "3650d", "--poll-interval", "1s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len([r for r in _runs(sessions) if r.outcome == "ok"]) >= 2:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    runs = _runs(sessions)
    assert len(runs) >= 2 and all(r.outcome == "ok" for r in runs)
    assert runs[-1].jobs_inserted == WIDE_JOB_RECORDS
    # Every later poll started before the previous watermark (the overlap) and inserted nothing.
    assert all(r.jobs_inserted == 0 for r in runs[:-1])
    assert "stopping after the current poll" in err
