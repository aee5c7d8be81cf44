"""sacct faults under a real ``hpc-billing run``: one long-running collector whose fake
sacct (the process boundary) is switched between faults through FAKE_SACCT_MODE_FILE.

Each faulty poll must fail cleanly (run log, counter, log line), store nothing and leave the
watermark where it was; garbage is quarantined with the rest of the window stored (a
partial poll, which keeps the watermark too); an empty output is a clean poll. The test
ends with the exactly-once check.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.daemonkit import Daemon, wait_for
from tests.faults.kit import (FIXTURE, assert_exactly_once, count, report, runs, source_keys,
                              watermark)

pytestmark = pytest.mark.slow

# mode -> what the failed poll's run log error must say
FAILING = {
    "hang": "timed out after 2",
    "fail": "exited with code 1",
    "truncate": "output ended in the middle of a line (truncated)",
    "truncate_fail": "Connection reset by peer",
}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it is gone once its state is Z or it is reaped.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


def _polls(url: str, outcome: str) -> list[dict]:
    return [r for r in runs(url) if r["kind"] == "poll" and r["outcome"] == outcome]


def test_sacct_faults_fail_cleanly_and_the_next_poll_stores_everything_once(
        db_url, fake_sacct, yardstick, tmp_path):
    mode_file = tmp_path / "mode"
    pid_file = tmp_path / "pids"
    mode_file.write_text(next(iter(FAILING)))
    daemon = Daemon(db_url, fake_sacct, "--sacct-timeout", "2s", "--poll-interval", "1s",
                    env={"FAKE_SACCT_MODE_FILE": str(mode_file),
                         "FAKE_SACCT_PID_FILE": str(pid_file)},
                    log_path=tmp_path / "daemon.log")
    figures: dict[str, float | str] = {}
    try:
        for mode, expect in FAILING.items():
            mode_file.write_text(mode)
            before = len(_polls(db_url, "failed"))
            started = time.monotonic()
            failed = wait_for(lambda: (lambda f: f if len(f) > before
                                       and expect in (f[-1]["error"] or "") else None)(
                _polls(db_url, "failed")), 60, f"a failed poll for {mode}")
            figures[f"{mode}_failed_after"] = time.monotonic() - started
            error = failed[-1]["error"]
            assert "sacct" in error and "--parsable2" in error, error   # argv in the error
            # Nothing stored, no watermark: a failed poll moves no watermark.
            assert count(db_url, "SELECT count(*) FROM jobs") == 0
            assert count(db_url, "SELECT count(*) FROM charge_lines") == 0
            assert watermark(db_url) is None
            if mode == "hang":
                # The timeout killed the fake and the child it spawned.
                leader, child = (int(p) for p in pid_file.read_text().split())
                wait_for(lambda: _gone(leader) and _gone(child), 10,
                         "the hung sacct and its child to be killed")
        failed_total = daemon.metric("hpcb_polls_total", cluster="lab", outcome="failed")
        assert failed_total is not None and failed_total >= len(FAILING)
        assert _polls(db_url, "ok") == []
        assert daemon.get("/healthz")[0] == 200

        # Garbage: quarantined with raw text and reason, counted, the rest of the window
        # lands; the poll is partial, so the watermark stays (none yet) and every poll
        # reads the garbage again (three more quarantined records each time).
        mode_file.write_text("garbage")
        started = time.monotonic()
        wait_for(lambda: _polls(db_url, "partial"), 60, "a partial poll with garbage in the output")
        figures["recovered_after"] = time.monotonic() - started
        assert _polls(db_url, "ok") == []
        assert watermark(db_url) is None
        assert count(db_url, "SELECT count(*) FROM jobs") > 0
        quarantined = count(db_url, "SELECT count(*) FROM quarantine")
        assert quarantined >= 3 and quarantined % 3 == 0
        assert count(db_url, "SELECT count(*) FROM quarantine WHERE raw = "
                             "'this is not sacct output' AND reason <> ''") == quarantined // 3
        assert daemon.metric("hpcb_records_quarantined_total", cluster="lab") >= 3
        assert daemon.metric("hpcb_polls_total", cluster="lab", outcome="partial") >= 1

        # Nothing at all: a clean poll that changes nothing, and moves the watermark.
        mode_file.write_text("empty")
        ok_before = len(_polls(db_url, "ok"))
        wait_for(lambda: len(_polls(db_url, "ok")) > ok_before + 1, 60, "ok polls of no output")
        last = _polls(db_url, "ok")[-1]
        assert last["records_read"] == 0 and last["jobs_inserted"] == 0
        assert watermark(db_url) is not None
        mode_file.write_text("normal")
        ok_before = len(_polls(db_url, "ok"))
        wait_for(lambda: len(_polls(db_url, "ok")) > ok_before, 60, "an ok normal poll")
    finally:
        mode_file.write_text("normal")
        code = daemon.stop()
    out = daemon.output()
    assert code == 0, out
    assert out.count("poll failed") + out.count(" failed; ") >= len(FAILING), out[-3000:]
    assert_exactly_once(db_url, yardstick(FIXTURE, "lab"), source_keys(FIXTURE, "lab"))
    report("sacct hang / non-zero exit / truncated output / garbage / nothing", **figures)
