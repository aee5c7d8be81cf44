"""PostgreSQL faults under a real ``hpc-billing run``: the server stopped in the middle of a
poll (after COPY batches were written, before the commit), and unreachable for several
poll intervals. Each test ends with the exactly-once check (tests/faults/kit.py).

The server is the test's own (``private_pg``), stopped with ``pg_ctl stop -m fast`` (its
sessions are terminated, as in a crash of the connection) and started again on the same
port with its data.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from tests.daemonkit import DEMO_CARD, Daemon, wait_for
from tests.faults.conftest import GATE_AFTER
from tests.faults.kit import (FIXTURE, Gate, assert_exactly_once, report, runs, source_keys,
                              watermark, write_transaction_open)

pytestmark = pytest.mark.slow


def _ok_polls(url: str) -> list[dict]:
    return [r for r in runs(url) if r["kind"] == "poll" and r["outcome"] == "ok"]


def test_postgres_stopped_between_copy_and_commit(private_pg, fake_sacct, bench_data, yardstick,
                                                  tmp_path):
    gate = Gate(tmp_path, GATE_AFTER)
    daemon = Daemon(private_pg.url, fake_sacct, "--cluster", "bench", "--batch-rows", "500",
                    "--poll-interval", "1s",
                    env={"FAKE_SACCT_DATA": str(bench_data), **gate.env},
                    log_path=tmp_path / "daemon.log")
    try:
        gate.wait_reached()
        # The poll has COPYed and merged batches into its open transaction and waits for
        # the rest of sacct's output: exactly "between COPY and commit".
        wait_for(lambda: write_transaction_open(private_pg.url), 60, "a written, open transaction")
        private_pg.pause()
        gate.open()
        wait_for(lambda: "poll failed" in daemon.output() or " failed; " in daemon.output(),
                 60, "the poll to fail")
        status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(daemon.get("/readyz")),
                                30, "/readyz 503")
        assert "database" in body["failing"]
        resumed = time.monotonic()
        private_pg.resume()
        wait_for(lambda: _ok_polls(private_pg.url), 120, "an ok poll after the restart")
        recovered = time.monotonic() - resumed
        wait_for(daemon.ready, 60, "/readyz 200")
    finally:
        gate.open()
        code = daemon.stop()
    assert code == 0, daemon.output()
    # Nothing of the interrupted transaction survived: the first ok poll inserted every job.
    first_ok = _ok_polls(private_pg.url)[0]
    keys = source_keys(bench_data, "bench")
    assert first_ok["jobs_inserted"] == len(keys)
    assert_exactly_once(private_pg.url, yardstick(bench_data, "bench"), keys)
    report("PostgreSQL stopped between COPY and commit",
           recovery_after_restart=recovered)


def test_postgres_unreachable_for_several_intervals(private_pg, fake_sacct, yardstick, tmp_path):
    daemon = Daemon(private_pg.url, fake_sacct, "--poll-interval", "1s", "--overlap", "1s",
                    "--chunk", "2s", log_path=tmp_path / "daemon.log")
    try:
        wait_for(daemon.ready, 60, "/readyz 200")
        wait_for(lambda: len(_ok_polls(private_pg.url)) >= 2, 60, "two ok polls")
        failed_before = daemon.metric("hpcb_polls_total", cluster="lab", outcome="failed") or 0
        private_pg.pause()
        stopped = time.monotonic()
        mark_before = None
        status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(daemon.get("/readyz")),
                                30, "/readyz 503")
        assert "database" in body["failing"]
        detected = time.monotonic() - stopped
        # Several poll intervals without a database: every poll fails, is logged and counted.
        wait_for(lambda: (daemon.metric("hpcb_polls_total", cluster="lab", outcome="failed") or 0)
                 >= failed_before + 4, 60, "four failed polls", step=0.5)
        assert daemon.get("/healthz")[0] == 200
        outage = time.monotonic() - stopped
        resumed = time.monotonic()
        private_pg.resume()
        mark_before = _ok_polls(private_pg.url)[-1]["window_until"]
        # The watermark did not move while the database was away.
        assert watermark(private_pg.url) == mark_before
        wait_for(daemon.ready, 60, "/readyz 200 again")
        ready_after = time.monotonic() - resumed
        # Caught up: the newest window ends within a poll interval or two of now.
        wait_for(lambda: (lambda m: m is not None and m > mark_before
                          + timedelta(seconds=outage - 1))(watermark(private_pg.url)),
                 60, "the backlog to be caught up")
        caught_up = time.monotonic() - resumed
    finally:
        code = daemon.stop()
    out = daemon.output()
    assert code == 0, out
    assert "poll failed" in out
    polls = _ok_polls(private_pg.url)
    after = [r for r in polls if r["window_until"] > mark_before]
    # Caught up in bounded windows: each reads at most --chunk (2 s) past the previous
    # watermark plus the --overlap (1 s) before it, and they leave no gap.
    assert len(after) >= 2, [(r["window_since"], r["window_until"]) for r in after]
    previous = mark_before
    for run in after:
        assert run["window_since"] == previous - timedelta(seconds=1), run
        assert run["window_until"] - run["window_since"] <= timedelta(seconds=3), run
        previous = run["window_until"]
    assert_exactly_once(private_pg.url, yardstick(FIXTURE, "lab"), source_keys(FIXTURE, "lab"))
    report("PostgreSQL unreachable for several poll intervals", readyz_503_after=detected,
           outage=outage, readyz_200_after_restart=ready_after, caught_up_after_restart=caught_up,
           catch_up_windows=str(len(after)))


def test_collect_once_catches_a_backlog_up_in_bounded_windows(db_url, fake_sacct, yardstick):
    """A collector that was away (the watermark 20 s old) reads the backlog in windows of at
    most --chunk past the watermark, one transaction each, until it reaches now."""
    from sqlalchemy import text

    from collector.store import db as store_db
    from tests.helpers import run_cli

    base = ("collect", "--once", "--source", "sacct", "--sacct", str(fake_sacct), "--cluster",
            "lab", "--database-url", db_url, "--rates", str(DEMO_CARD))
    assert run_cli(*base, "--lookback", "3650d") == 0
    engine = store_db.make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE watermarks SET position = position - interval '20 seconds'"))
    finally:
        engine.dispose()
    start = watermark(db_url)
    assert run_cli(*base, "--overlap", "2s", "--chunk", "5s") == 0
    polls = [r for r in runs(db_url) if r["kind"] == "poll"][1:]
    assert len(polls) >= 4 and all(r["outcome"] == "ok" for r in polls)
    previous = start
    for run in polls:
        assert run["window_since"] == previous - timedelta(seconds=2)
        assert run["window_until"] - previous <= timedelta(seconds=5)
        previous = run["window_until"]
    assert watermark(db_url) == previous
    assert_exactly_once(db_url, yardstick(FIXTURE, "lab"), source_keys(FIXTURE, "lab"))
