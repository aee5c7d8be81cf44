"""JobWriter tells the caller exactly which records it inserted or changed (for pricing)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from decimal import Decimal

from billing.records import JobRecord
from collector.store import runs as store_runs
from collector.store.job_writer import JobWriter, UpsertCounts


def _job(raw: int, **kw) -> JobRecord:
    base = dict(cluster="lab", job_id=str(raw), job_id_raw=raw,
                submit=datetime(2026, 11, 1, 12, 0, raw, tzinfo=timezone.utc),
                state="COMPLETED", state_raw="COMPLETED", cpus=2, elapsed_s=60, final=True,
                cpu_used_s=Decimal("1.2345"))
    base.update(kw)
    return JobRecord(**base)


def _write(session, records, batch_rows=2):
    seen: list[list[JobRecord]] = []
    run_id = store_runs.start_run(session, cluster="lab", source="test", kind="file", window=None)
    writer = JobWriter(session, run_id=run_id, batch_rows=batch_rows, on_changed=seen.append)
    for rec in records:
        writer.add(rec)
    writer.flush()
    return writer.counts, [r for batch in seen for r in batch]


def test_on_changed_gets_new_and_changed_records_only(session):
    jobs = [_job(1), _job(2), _job(3)]
    counts, changed = _write(session, jobs)
    assert counts == UpsertCounts(3, 0, 0)
    assert sorted(r.job_id_raw for r in changed) == [1, 2, 3]
    # Handed over as stored: cpu_used_s at numeric(18,3)'s scale.
    assert {r.cpu_used_s for r in changed} == {Decimal("1.235")}

    counts, changed = _write(session, [jobs[0], replace(jobs[1], elapsed_s=61), jobs[2]])
    assert counts == UpsertCounts(0, 1, 2)
    assert [(r.job_id_raw, r.elapsed_s) for r in changed] == [(2, 61)]

    counts, changed = _write(session, jobs[:1] + [replace(jobs[1], elapsed_s=61)] + jobs[2:])
    assert counts == UpsertCounts(0, 0, 3) and changed == []


def test_on_inserted_takes_the_new_records_and_on_changed_the_rest(session):
    jobs = [_job(1), _job(2)]
    _write(session, jobs)
    new: list[list[JobRecord]] = []
    changed: list[list[JobRecord]] = []
    run_id = store_runs.start_run(session, cluster="lab", source="test", kind="file", window=None)
    writer = JobWriter(session, run_id=run_id, batch_rows=10, on_changed=changed.append,
                       on_inserted=new.append)
    for rec in [jobs[0], replace(jobs[1], elapsed_s=61), _job(3)]:
        writer.add(rec)
    writer.flush()
    assert writer.counts == UpsertCounts(1, 1, 1)
    assert [[r.job_id_raw for r in batch] for batch in new] == [[3]]
    assert [[(r.job_id_raw, r.elapsed_s) for r in batch] for batch in changed] == [[(2, 61)]]
