"""``hpc-billing run`` as a real process: probes, SIGTERM, a database outage, two collectors.

Each test starts the console entry point (``python -m collector.cli run``) against a real
PostgreSQL and a fake sacct executable (the process boundary), talks to it over HTTP on
127.0.0.1, and reads the outcome from the database.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from collector.store import db as store_db
from tests.daemonkit import FAKE_SACCT, Daemon
from tests.daemonkit import poll_runs as _poll_runs
from tests.daemonkit import wait_for as _wait
from tests.helpers import executable_wrapper


@pytest.fixture()
def fake_sacct(tmp_path) -> Path:
    return executable_wrapper(tmp_path / "bin", "sacct", FAKE_SACCT)


def test_run_serves_probes_polls_and_stops_cleanly_on_sigterm(db_url, fake_sacct):
    daemon = Daemon(db_url, fake_sacct)
    try:
        _wait(lambda: daemon.get("/healthz")[0] == 200, 30, "/healthz")
        status, body = daemon.get("/healthz")
        assert body["status"] == "ok"
        _wait(daemon.ready, 30, "/readyz 200")
        status, ready = daemon.get("/readyz")
        assert ready["status"] == "ok" and ready["leader"] is True
        _wait(lambda: len([r for r in _poll_runs(db_url) if r[1] == "ok"]) >= 2, 30, "two polls")
        status, metrics = daemon.get("/metrics")
        assert status == 200 and "hpcb_polls_total" in metrics
    finally:
        code = daemon.stop()
    out = daemon.output()
    assert code == 0, out
    assert "signal 15: shutting down" in out and "scheduler stopped" in out
    runs = _poll_runs(db_url)
    assert runs[0][4] == 22 and all(r[1] == "ok" for r in runs)
    # One log line per poll.
    assert out.count(" poll sacct [") == len(runs)


def test_readyz_follows_a_database_outage_and_recovers(private_pg, fake_sacct):
    daemon = Daemon(private_pg.url, fake_sacct)
    try:
        _wait(daemon.ready, 60, "/readyz 200")
        private_pg.pause()
        status, body = _wait(lambda: (lambda r: r if r[0] == 503 else None)(daemon.get("/readyz")),
                             30, "/readyz 503")
        assert "database" in body["failing"]
        assert daemon.get("/healthz")[0] == 200      # the process is alive; only readiness fails
        private_pg.resume()
        _wait(daemon.ready, 60, "/readyz 200 again")
    finally:
        code = daemon.stop()
    assert code == 0, daemon.output()


def test_readyz_reports_stale_data(db_url, fake_sacct):
    daemon = Daemon(db_url, fake_sacct, "--stale-after", "4s", env={"FAKE_SACCT_MODE": "fail"})
    try:
        _wait(lambda: daemon.get("/healthz")[0] == 200, 30, "/healthz")
        # No poll can succeed; during the grace period readiness holds, then it fails.
        status, body = _wait(lambda: (lambda r: r if r[0] == 503 else None)(daemon.get("/readyz")),
                             30, "/readyz 503 after the grace period", step=0.5)
        assert body["failing"] == ["freshness"]
    finally:
        daemon.stop()
    assert all(r[1] == "failed" for r in _poll_runs(db_url))


def test_two_collectors_elect_one_leader_and_the_other_takes_over(db_url, fake_sacct):
    first = Daemon(db_url, fake_sacct)
    second = None
    try:
        _wait(first.ready, 30, "first /readyz")
        second = Daemon(db_url, fake_sacct)
        _wait(lambda: second.get("/healthz")[0] == 200, 30, "second /healthz")
        time.sleep(3)   # several poll intervals with both running
        leaders = [d.get("/readyz")[1]["leader"] for d in (first, second)]
        assert leaders == [True, False]
        # Kill the leader without any chance to clean up: its session ends, the lock frees.
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        _wait(lambda: second.get("/readyz")[1].get("leader") is True, 15, "takeover")
        before = len(_poll_runs(db_url))
        _wait(lambda: len(_poll_runs(db_url)) > before + 1, 15, "polls by the new leader")
    finally:
        first.stop(timeout=5)
        if second is not None:
            second.stop()
    runs = _poll_runs(db_url)
    # Never two polls at once: every run started after the previous one ended (the killed
    # leader's last run may be left 'running' with no end, and nothing overlaps it either).
    for earlier, later in zip(runs, runs[1:]):
        if earlier[3] is not None:
            assert later[2] >= earlier[3], (earlier, later)
    jobs = store_db.make_engine(db_url)
    try:
        with jobs.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 22
            # Every job priced once: no duplicate (job, period, resource) charge lines.
            assert conn.execute(text(
                "SELECT count(*) FROM (SELECT 1 FROM charge_lines GROUP BY cluster, job_id_raw, "
                "submit_time, usage_period, posted_period, resource, kind HAVING count(*) > 1) d"
            )).scalar() == 0
    finally:
        jobs.dispose()


def test_an_open_keepalive_connection_does_not_hold_the_process_after_sigterm(db_url, fake_sacct):
    daemon = Daemon(db_url, fake_sacct)
    conn = None
    try:
        _wait(daemon.ready, 30, "/readyz 200")
        # A scraper-like client: HTTP/1.1, keep-alive, connection left open and idle.
        conn = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        assert conn.recv(4096).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        code = daemon.stop(timeout=20)
        assert code == 0 and time.monotonic() - started < 15, daemon.output()
    finally:
        if conn is not None:
            conn.close()
        if daemon.proc.poll() is None:
            daemon.stop()
