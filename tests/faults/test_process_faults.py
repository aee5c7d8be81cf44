"""Process faults under a real ``hpc-billing run``: SIGTERM and SIGKILL while a poll has
written COPY batches into its open transaction, and two collectors on one database with
the leader killed in the middle of a poll. Each ends with the exactly-once check.

The fake sacct's gate (tests/faults/kit.py ``Gate``) holds sacct in the middle of its
output, after the poll has merged several batches (--batch-rows 500) but before it can
commit: exactly "during a write".
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.daemonkit import Daemon, wait_for
from tests.faults.conftest import GATE_AFTER
from tests.faults.kit import (Gate, assert_exactly_once, count, report, runs, source_keys,
                              watermark, write_transaction_open)

pytestmark = pytest.mark.slow


def _ok_polls(url: str) -> list[dict]:
    return [r for r in runs(url) if r["kind"] == "poll" and r["outcome"] == "ok"]


def _daemon(url, sacct, data, tmp_path, name, gate=None):
    return Daemon(url, sacct, "--cluster", "bench", "--batch-rows", "500",
                  "--poll-interval", "1s",
                  env={"FAKE_SACCT_DATA": str(data), **(gate.env if gate else {})},
                  log_path=tmp_path / f"{name}.log")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_signal_during_a_write_then_a_restart_stores_everything_once(
        db_url, fake_sacct, bench_data, yardstick, tmp_path, sig):
    gate = Gate(tmp_path, GATE_AFTER)
    first = _daemon(db_url, fake_sacct, bench_data, tmp_path, "first", gate)
    try:
        gate.wait_reached()
        wait_for(lambda: write_transaction_open(db_url), 60, "a written, open transaction")
        signalled = time.monotonic()
        code = first.stop(sig, timeout=30)
        stopped_after = time.monotonic() - signalled
    finally:
        gate.open()          # an orphaned sacct (SIGKILL) finishes into a closed pipe
        if first.proc.poll() is None:
            first.kill()
    if sig == signal.SIGTERM:
        # SIGTERM rolls the running poll back and exits 0 (it does not wait for sacct).
        assert code == 0, first.output()
        assert "cancelled 1 Slurm command(s)" in first.output(), first.output()
    else:
        assert code == -signal.SIGKILL
    # Nothing of the interrupted poll is visible: its transaction never committed.
    wait_for(lambda: not write_transaction_open(db_url), 30, "the dead session to end")
    assert count(db_url, "SELECT count(*) FROM jobs") == 0
    assert count(db_url, "SELECT count(*) FROM charge_lines") == 0
    assert watermark(db_url, "bench") is None

    restarted = time.monotonic()
    second = _daemon(db_url, fake_sacct, bench_data, tmp_path, "second")
    try:
        wait_for(lambda: _ok_polls(db_url), 180, "an ok poll after the restart")
        resumed_after = time.monotonic() - restarted
        wait_for(second.ready, 60, "/readyz 200")
    finally:
        code = second.stop()
    assert code == 0, second.output()
    keys = source_keys(bench_data, "bench")
    assert _ok_polls(db_url)[0]["jobs_inserted"] == len(keys)
    assert_exactly_once(db_url, yardstick(bench_data, "bench"), keys)
    report(f"{sig.name} during a write, then a restart", stopped_after=stopped_after,
           first_ok_poll_after_restart=resumed_after)


def test_two_collectors_the_leader_killed_mid_poll(db_url, fake_sacct, bench_data, yardstick,
                                                  tmp_path):
    """Two ``run`` processes on one database: one leads (the advisory lock), the other
    serves the API only. The leader is SIGKILLed between COPY and commit; PostgreSQL ends
    its sessions, which frees the lock, and the standby takes over at its next poll."""
    gate = Gate(tmp_path, GATE_AFTER)
    a = _daemon(db_url, fake_sacct, bench_data, tmp_path, "a", gate)
    b = _daemon(db_url, fake_sacct, bench_data, tmp_path, "b", gate)
    daemons = {"a": a, "b": b}
    try:
        gate.wait_reached()
        wait_for(lambda: write_transaction_open(db_url), 60, "a written, open transaction")
        leaders = wait_for(lambda: (lambda ls: ls if len(ls) == 1 else None)(
            [n for n, d in daemons.items() if d.metric("hpcb_leader") == 1]),
            30, "exactly one leader")
        leader, standby = daemons[leaders[0]], daemons[({"a", "b"} - set(leaders)).pop()]
        assert standby.metric("hpcb_leader") == 0
        assert standby.ready() or standby.get("/healthz")[0] == 200
        killed = time.monotonic()
        leader.kill()
        wait_for(lambda: standby.metric("hpcb_leader") == 1, 60, "the standby to lead")
        takeover = time.monotonic() - killed
        wait_for(lambda: _ok_polls(db_url), 180, "an ok poll by the new leader")
        first_poll = time.monotonic() - killed
        wait_for(lambda: len(_ok_polls(db_url)) >= 2, 60, "a second ok poll")
    finally:
        gate.open()
        codes = {n: d.stop() for n, d in daemons.items()}
    assert codes[leaders[0]] == -signal.SIGKILL
    standby_name = ({"a", "b"} - set(leaders)).pop()
    assert codes[standby_name] == 0, standby.output()
    polls = [r for r in runs(db_url) if r["kind"] == "poll"]
    # Only the new leader ever finished a poll; the killed one left no run behind as "ok".
    keys = source_keys(bench_data, "bench")
    ok = _ok_polls(db_url)
    assert ok[0]["jobs_inserted"] == len(keys)
    assert sum(r["jobs_inserted"] for r in ok) == len(keys), polls   # no job stored twice
    assert_exactly_once(db_url, yardstick(bench_data, "bench"), keys)
    report("two collectors, the leader SIGKILLed mid-poll", standby_leads_after=takeover,
           first_ok_poll_after_kill=first_poll)
