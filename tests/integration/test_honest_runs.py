"""Honest runs, end to end through the CLI with a fake sacct and the real PostgreSQL: a run
is ``ok`` only when everything it read was stored or deliberately skipped; ``partial``
(exit 3) stores the rest and keeps its watermark; ``failed`` (exit 1) when nothing read
was stored; an operator can accept the loss of quarantined records so the watermark moves.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from collector.store import jobs as store_jobs
from collector.store import runs as store_runs
from tests.helpers import executable_wrapper, run_cli

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
FAKE_SACCT = ROOT / "tests" / "fakes" / "fake_sacct.py"
WIDE = FIXTURES / "sacct-wide-header.psv"
WIDE_JOB_RECORDS = 22
# FAKE_SACCT_MODE=garbage adds three lines that are not sacct records (fake_sacct.py).
GARBAGE_LINES = 3


@pytest.fixture()
def fake_sacct(tmp_path) -> Path:
    return executable_wrapper(tmp_path / "bin", "sacct", FAKE_SACCT)


def _runs(sessions):
    with sessions() as s:
        return store_runs.list_runs(s, limit=100)


def _mark(sessions):
    with sessions() as s:
        return store_runs.get_watermark(s, "lab", "sacct")


def _mark_run(sessions) -> int | None:
    """The run that last set the sacct watermark of lab (None: no watermark)."""
    with sessions() as s:
        return s.execute(text("SELECT run_id FROM watermarks WHERE cluster = 'lab' AND "
                              "stream = 'sacct'")).scalar_one_or_none()


def _jobs(sessions) -> int:
    with sessions() as s:
        return store_jobs.count_jobs(s)


def _poll(db_url, fake_sacct, mode: str = "normal", *extra: str) -> int:
    return run_cli("collect", "--once", "--source", "sacct", "--sacct", str(fake_sacct),
                   "--cluster", "lab", "--database-url", db_url, "--lookback", "3650d",
                   "--overlap", "3650d", *extra, env={"FAKE_SACCT_MODE": mode})


def test_a_partial_sacct_window_stores_the_rest_and_keeps_the_watermark(db_url, sessions,
                                                                         fake_sacct, capsys):
    # First poll, with garbage in sacct's output: partial, exit 3, every real job stored,
    # the garbage quarantined with its text, and no watermark (none was stored before).
    assert _poll(db_url, fake_sacct, "garbage") == 3
    run = _runs(sessions)[0]
    assert (run.outcome, run.jobs_inserted, run.quarantined) == (
        "partial", WIDE_JOB_RECORDS, GARBAGE_LINES)
    assert "watermark stays" in (run.error or "")
    assert _mark(sessions) is None
    assert _jobs(sessions) == WIDE_JOB_RECORDS
    err = capsys.readouterr().err
    assert f"run {run.id} poll sacct" in err and ": partial; " in err

    # A clean poll: ok, the watermark moves.
    assert _poll(db_url, fake_sacct) == 0
    mark = _mark(sessions)
    ok_run = _runs(sessions)[0]
    assert mark is not None and ok_run.outcome == "ok" and _mark_run(sessions) == ok_run.id

    # Garbage again: partial, the watermark stays where the ok poll left it, and the
    # stored jobs were found unchanged (read again, nothing lost).
    assert _poll(db_url, fake_sacct, "garbage") == 3
    run = _runs(sessions)[0]
    assert (run.outcome, run.jobs_unchanged, run.quarantined) == (
        "partial", WIDE_JOB_RECORDS, GARBAGE_LINES)
    assert _mark(sessions) == mark and _mark_run(sessions) == ok_run.id

    # The operator accepts losing those records: the same garbage is then skipped on
    # purpose, the run is ok, and the watermark moves past it.
    assert run_cli("quarantine", "--accept", "--run", str(run.id), "--database-url",
                   db_url) == 0
    with sessions() as s:
        entries = store_runs.list_quarantine(s, run_id=run.id)
    assert len(entries) == GARBAGE_LINES and all(e.accepted_at is not None for e in entries)
    capsys.readouterr()
    assert _poll(db_url, fake_sacct, "garbage") == 0
    run = _runs(sessions)[0]
    assert (run.outcome, run.quarantined) == ("ok", 0)
    assert f"accepted {GARBAGE_LINES}" in capsys.readouterr().err
    assert _mark_run(sessions) == run.id and _mark(sessions) >= mark


def test_a_run_that_stores_nothing_it_read_fails_and_keeps_the_quarantine(db_url, sessions,
                                                                           tmp_path):
    header = WIDE.read_text().splitlines()[0]
    path = tmp_path / "all-bad.psv"
    path.write_text(header + "\nnot|a record\n12|12|x|lab\n")
    assert run_cli("collect", "--once", "--source", "file", "--input", str(path),
                   "--database-url", db_url) == 1
    run = _runs(sessions)[0]
    assert (run.outcome, run.jobs_inserted, run.quarantined) == ("failed", 0, 2)
    assert "nothing stored" in (run.error or "")
    # The run names the first bad records, their lines and why, not just a count.
    assert "first: line 2" in (run.error or "") and "line 3 (JobID 12)" in (run.error or "")
    with sessions() as s:
        raws = {q.raw for q in store_runs.list_quarantine(s, run_id=run.id)}
    assert raws == {"not|a record", "12|12|x|lab"}
    assert _jobs(sessions) == 0


def test_an_empty_window_is_ok(db_url, sessions, fake_sacct):
    assert _poll(db_url, fake_sacct, "empty") == 0
    run = _runs(sessions)[0]
    assert (run.outcome, run.records_read, run.quarantined) == ("ok", 0, 0)
    assert _mark(sessions) is not None


def test_backfill_stops_at_a_partial_chunk_and_resumes_there(db_url, sessions, fake_sacct):
    base = ("backfill", "--sacct", str(fake_sacct), "--cluster", "lab", "--database-url",
            db_url, "--since", "2026-11-22T12:45:00Z", "--until", "2026-11-22T12:55:00Z",
            "--chunk", "5m")
    stream = "backfill:2026-11-22T12:45:00Z"
    assert run_cli(*base, env={"FAKE_SACCT_MODE": "garbage"}) == 3
    backfills = [r for r in _runs(sessions) if r.kind == "backfill"]
    assert [r.outcome for r in backfills] == ["partial"]          # stopped at the first
    with sessions() as s:
        assert store_runs.get_watermark(s, "lab", stream) is None
    assert run_cli(*base) == 0
    with sessions() as s:
        cursor = store_runs.get_watermark(s, "lab", stream)
    assert cursor is not None and cursor.isoformat().startswith("2026-11-22T12:55:00")
    # The clean run started at the partial chunk, not after it.
    ok = [r for r in _runs(sessions) if r.kind == "backfill" and r.outcome == "ok"]
    assert min(r.window_since for r in ok).isoformat().startswith("2026-11-22T12:45:00")


def test_the_schema_takes_partial_and_nothing_else(engine):
    # The check constraint of revision 0009 takes 'partial'; anything else is refused.
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO collector_runs (source, kind, outcome) "
                          "VALUES ('t', 'file', 'partial')"))
    with pytest.raises(Exception, match="ck_collector_runs_outcome"), engine.begin() as conn:
        conn.execute(text("INSERT INTO collector_runs (source, kind, outcome) "
                          "VALUES ('t', 'file', 'halfway')"))


def test_a_held_watermark_never_stalls_collection(sessions):
    """Partial polls hold the watermark but move the read cursor: the next window starts at
    the watermark (the quarantined record is read again) and still reaches past everything
    read so far, at most max_ahead further, so new jobs keep being collected."""
    from datetime import UTC, datetime, timedelta

    from collector import polling

    mark = datetime(2026, 11, 1, tzinfo=UTC)
    day = timedelta(days=1)
    with sessions() as s:
        store_runs.ensure_cluster(s, "lab")
        run_id = store_runs.start_run(s, cluster="lab", source="sacct", kind="poll", window=None)
        store_runs.set_watermark(s, "lab", "sacct", mark, run_id)
        s.commit()

    def window(now: datetime):
        return polling.poll_window(sessions, cluster="lab", now=now, overlap_s=600,
                                    lookback_s=86400, max_ahead_s=86400)

    # No read cursor yet: a backlog is read a day at a time from the watermark.
    first = window(mark + 10 * day)
    assert (first.since, first.until) == (mark - timedelta(seconds=600), mark + day)
    # Partial polls have read three days past the held watermark: the window still starts
    # at the watermark and ends a day past the cursor, not a day past the watermark.
    with sessions() as s:
        store_runs.set_watermark(s, "lab", store_runs.read_stream("sacct"), mark + 3 * day,
                                 run_id)
        s.commit()
    held = window(mark + 10 * day)
    assert (held.since, held.until) == (mark - timedelta(seconds=600), mark + 4 * day)
    # Caught up: the window ends now.
    now = mark + 3 * day + timedelta(hours=5)
    assert window(now).until == now


def test_partial_polls_move_the_read_cursor_only(db_url, sessions, fake_sacct):
    assert _poll(db_url, fake_sacct) == 0
    mark = _mark(sessions)
    assert _poll(db_url, fake_sacct, "garbage") == 3
    with sessions() as s:
        cursor = store_runs.get_watermark(s, "lab", store_runs.read_stream("sacct"))
    assert _mark(sessions) == mark and cursor is not None and cursor >= mark
