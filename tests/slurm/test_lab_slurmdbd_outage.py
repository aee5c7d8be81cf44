"""slurmdbd stopped under a running collector, then started again (the real lab).

While slurmdbd is down sacct cannot answer: every poll fails, is logged and counted, and
the watermark stays. A job that ends meanwhile is queued by slurmctld and written when
slurmdbd is back; the next poll's window still covers it (the watermark did not move),
so it is stored once, final, and every job is stored exactly as often as sacct lists it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import text

from collector.store import db as store_db
from tests.daemonkit import Daemon, wait_for
from tests.faults.kit import report, watermark
from tests.slurm.labkit import epoch

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _slurmdbd_pid(lab) -> int | None:
    path = Path(lab.env.get("HPC_BILLING_LAB_RUN", "/run/hpc-billing-lab")) / "slurmdbd.pid"
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _stop_slurmdbd(lab) -> None:
    pid = _slurmdbd_pid(lab)
    assert pid is not None, "slurmdbd is not running"
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: _slurmdbd_pid(lab) is None, 30, "slurmdbd to stop")


def _start_slurmdbd(lab) -> None:
    if _slurmdbd_pid(lab) is None:
        subprocess.run(["/usr/sbin/slurmdbd"], env=lab.child_env, check=True, timeout=60)
    wait_for(lambda: lab.run("sacctmgr", "-n", "show", "cluster", check=False).strip(), 60,
             "slurmdbd to answer")


def _polls(url: str) -> list[tuple]:
    engine = store_db.make_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(
                "SELECT id, outcome, coalesce(error, '') FROM collector_runs"
                " WHERE kind = 'poll' ORDER BY id")))
    finally:
        engine.dispose()


def _stored(url: str) -> Counter:
    engine = store_db.make_engine(url)
    try:
        with engine.connect() as conn:
            return Counter((raw, submit) for raw, submit in conn.execute(text(
                "SELECT job_id_raw, submit_time FROM jobs WHERE cluster = 'lab'")))
    finally:
        engine.dispose()


def test_slurmdbd_down_then_up_fails_polls_and_then_stores_everything_once(
        lab, job_mix, db_url, tmp_path):
    daemon = Daemon(db_url, Path(lab.sacct_path), "--cluster", lab.cluster, "--lookback", "2h",
                    "--overlap", "10m", env=lab.cli_env, log_path=tmp_path / "daemon.log")
    outage_job = None
    try:
        wait_for(lambda: any(o == "ok" for _, o, _ in _polls(db_url)), 60, "a first ok poll")
        mark = watermark(db_url, lab.cluster)
        _stop_slurmdbd(lab)
        stopped = time.monotonic()
        # A job that runs and ends while slurmdbd is down: slurmctld keeps its record.
        outage_job = lab.sbatch("-J", "during_outage", "-c1", "--mem=100M", "--wrap", "sleep 2")
        before = len(_polls(db_url))
        wait_for(lambda: sum(o == "failed" for _, o, _ in _polls(db_url)[before:]) >= 2, 120,
                 "two failed polls")
        failed_after = time.monotonic() - stopped
        failures = [(o, e) for _, o, e in _polls(db_url)[before:] if o == "failed"]
        assert all("sacct" in error for _, error in failures), failures
        assert watermark(db_url, lab.cluster) == mark           # nothing moved
        assert daemon.metric("hpcb_polls_total", cluster=lab.cluster, outcome="failed") >= 2
    finally:
        _start_slurmdbd(lab)
    try:
        restarted = time.monotonic()
        (line,) = lab.wait_final([outage_job], timeout=120)
        key = (outage_job, epoch(line["Submit"]))
        wait_for(lambda: _stored(db_url).get(key) == 1, 120, "the outage job to be stored")
        recovered_after = time.monotonic() - restarted
        wait_for(lambda: watermark(db_url, lab.cluster) > mark, 60, "the watermark to move")
    finally:
        daemon.stop()
    engine = store_db.make_engine(db_url)
    try:
        with engine.connect() as conn:
            state, final = conn.execute(text(
                "SELECT state, final FROM jobs WHERE cluster = 'lab' AND job_id_raw = :raw"),
                {"raw": outage_job}).one()
    finally:
        engine.dispose()
    assert (state, final) == ("COMPLETED", True)
    # Exactly once: every job sacct lists for the stored ids, stored once; nothing extra.
    stored = _stored(db_url)
    assert set(stored.values()) == {1}
    listed = Counter((int(r["JobIDRaw"]), epoch(r["Submit"]))
                     for r in lab.sacct(sorted({raw for raw, _ in stored}), steps=False))
    assert stored == listed
    report("slurmdbd stopped under a running collector, then started",
           failed_polls_after=failed_after, outage_job_stored_after_restart=recovered_after)
