"""slurmdbd stopped under a running collector, then started again (the real lab, every
release; the restart goes through deploy/lab/daemon.sh, which records the new PID).

While slurmdbd is down sacct cannot answer: every poll fails, is logged and counted, and
the watermark stays. A job that ends meanwhile is queued by slurmctld and written when
slurmdbd is back; the next poll's window still covers it (the watermark did not move),
so it is stored once, final, and every job is stored exactly as often as sacct lists it.
"""

from __future__ import annotations

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


def _stop_slurmdbd(lab) -> None:
    assert lab.daemon_pid("slurmdbd") is not None, "slurmdbd is not running"
    lab.daemon("stop", "slurmdbd")          # deploy/lab/daemon.sh: waits until it is gone


def _start_slurmdbd(lab) -> None:
    # daemon.sh records the new PID (deploy/lab/down.sh stops it) and waits until it answers.
    lab.daemon("start", "slurmdbd")
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


def _stored(url: str, cluster: str) -> Counter:
    engine = store_db.make_engine(url)
    try:
        with engine.connect() as conn:
            return Counter((raw, submit) for raw, submit in conn.execute(text(
                "SELECT job_id_raw, submit_time FROM jobs WHERE cluster = :cluster"),
                {"cluster": cluster}))
    finally:
        engine.dispose()


def _state(url: str, cluster: str, job_id_raw: int) -> tuple[str, bool] | None:
    engine = store_db.make_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(text(
                "SELECT state, final FROM jobs WHERE cluster = :cluster AND job_id_raw = :raw"),
                {"raw": job_id_raw, "cluster": cluster}).one_or_none()
    finally:
        engine.dispose()
    return None if row is None else (row[0], row[1])


def test_slurmdbd_down_then_up_fails_polls_and_then_stores_everything_once(
        lab, job_mix, db_url, tmp_path):
    daemon = Daemon(db_url, Path(lab.sacct_path), "--cluster", lab.cluster, "--lookback", "2h",
                    "--overlap", "10m", env=lab.cli_env, log_path=tmp_path / "daemon.log")
    outage_job = None
    try:
        wait_for(lambda: any(o == "ok" for _, o, _ in _polls(db_url)), 60, "a first ok poll")
        _stop_slurmdbd(lab)
        try:
            stopped = time.monotonic()
            # A job that runs and ends while slurmdbd is down: slurmctld keeps its record.
            outage_job = lab.sbatch("-J", "during_outage", "-c1", "--mem=100M", "--wrap",
                                    "sleep 2")
            before = len(_polls(db_url))
            wait_for(lambda: any(o == "failed" for _, o, _ in _polls(db_url)[before:]),
                     120, "a failed poll")
            # The watermark once polls fail: a poll whose sacct ran before slurmdbd stopped
            # may still have committed (and moved it) after the stop (polls run every second).
            mark = watermark(db_url, lab.cluster)
            failing = len(_polls(db_url))
            wait_for(lambda: sum(o == "failed" for _, o, _ in _polls(db_url)[failing:]) >= 2,
                     120, "two more failed polls")
            failed_after = time.monotonic() - stopped
            failures = [(o, e) for _, o, e in _polls(db_url)[before:] if o == "failed"]
            assert all("sacct" in error for _, error in failures), failures
            assert watermark(db_url, lab.cluster) == mark           # nothing moved
            assert daemon.metric("hpcb_polls_total", cluster=lab.cluster, outcome="failed") >= 2
        finally:
            _start_slurmdbd(lab)
        restarted = time.monotonic()
        (line,) = lab.wait_final([outage_job], timeout=120)
        key = (outage_job, epoch(line["Submit"]))
        wait_for(lambda: _stored(db_url, lab.cluster).get(key) == 1
                 and _state(db_url, lab.cluster, outage_job) == ("COMPLETED", True), 120,
                 "the outage job to be stored, final")
        recovered_after = time.monotonic() - restarted
        wait_for(lambda: watermark(db_url, lab.cluster) > mark, 60, "the watermark to move")
    finally:
        daemon.stop()
    assert _state(db_url, lab.cluster, outage_job) == ("COMPLETED", True)
    # Exactly once: every job sacct lists for the stored ids, stored once; nothing extra.
    stored = _stored(db_url, lab.cluster)
    assert set(stored.values()) == {1}
    listed = Counter((int(r["JobIDRaw"]), epoch(r["Submit"]))
                     for r in lab.sacct(sorted({raw for raw, _ in stored}), steps=False))
    assert stored == listed
    report(f"slurmdbd {lab.release} stopped under a running collector, then started",
           failed_polls_after=failed_after, outage_job_stored_after_restart=recovered_after)
