"""collector.store against a real PostgreSQL (see tests/conftest.py): no mocks."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session

from billing.records import JobRecord, QuarantinedRecord, Window
from collector.store import db as store_db
from collector.store.job_writer import _STAGE as STAGE
from collector.store.job_writer import JobWriter, UpsertCounts
from collector.store.jobs import (
    content_hash,
    count_jobs,
    list_jobs,
)
from collector.store.models import Base
from collector.store.runs import (
    add_quarantined,
    backfill_stream,
    ensure_cluster,
    finish_run,
    get_run,
    get_watermark,
    list_quarantine,
    list_runs,
    set_watermark,
    start_run,
)

UTC = timezone.utc
T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def rec(job_id_raw: int = 100, **overrides: object) -> JobRecord:
    """A complete, final job; every nullable field set unless overridden."""
    fields: dict[str, object] = dict(
        cluster="alpha", job_id=str(job_id_raw), job_id_raw=job_id_raw,
        submit=T0 + timedelta(minutes=job_id_raw % 1000),
        state="COMPLETED", state_raw="COMPLETED",
        name="train.sh", user="alice", uid=4_000_000_000, group="lab", account="physics",
        partition="gpu", qos="normal", wckey="*proj", reservation=None,
        exit_code="0:0", derived_exit_code="0:0",
        eligible=T0 + timedelta(minutes=1), start=T0 + timedelta(minutes=2),
        end=T0 + timedelta(hours=3, microseconds=250),
        elapsed_s=10_680, timelimit_min=4320, nodes=2, cpus=64, mem_bytes=256 * 2**30,
        billing=96, gpus=(("a100", 2), ("untyped", 1)), node_list="gpu[01-02]",
        cpu_time_alloc_s=683_520, cpu_used_s=Decimal("512345.678"),
        max_rss_bytes=3 * 2**30, mem_used_byte_s=2**64 + 12345, energy_j=123_456_789,
        db_index=777, final=True,
    )
    fields.update(overrides)
    return JobRecord(**fields)  # type: ignore[arg-type]


def write(session: Session, records: list[JobRecord], run_id: int = 1,
          batch_rows: int = 20_000) -> UpsertCounts:
    writer = JobWriter(session, run_id=run_id, batch_rows=batch_rows)
    for r in records:
        writer.add(r)
    writer.flush()
    return writer.counts


def row_versions(session: Session) -> dict[int, tuple[str, datetime, int, int]]:
    rows = session.execute(text(
        "SELECT v.job_id_raw, j.xmin::text, v.updated_at, v.first_run_id, v.last_run_id"
        " FROM jobs v JOIN job_rows j ON j.job_id_raw = v.job_id_raw"
        " AND j.submit_time = v.submit_time"))
    return {r[0]: tuple(r[1:]) for r in rows}  # type: ignore[misc]


# --------------------------------------------------------------------------- migrations

def test_migrations_upgrade_from_empty_match_models_and_downgrade(fresh_database_url: str):
    engine = store_db.make_engine(fresh_database_url)
    try:
        with engine.connect() as conn:
            assert store_db.schema_revision(conn) is None
        store_db.migrate(engine)
        with engine.connect() as conn:
            assert store_db.schema_revision(conn) == store_db.head_revision()
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True})
            assert compare_metadata(context, Base.metadata) == []
        store_db.migrate(engine)  # idempotent

        store_db.downgrade(engine, "base")
        with engine.connect() as conn:
            assert store_db.schema_revision(conn) is None
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        store_db.migrate(engine)
        with engine.connect() as conn:
            assert {t.name for t in Base.metadata.sorted_tables} <= set(
                inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_compare_metadata_notices_a_difference(fresh_database_url: str):
    # Guards the test above against comparing nothing.
    engine = store_db.make_engine(fresh_database_url)
    try:
        store_db.migrate(engine)
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_job_rows_end_time"))
            # rollup_jobs.jobs: a column no view reads; a view pins the type of every
            # column it reads.
            conn.execute(text("ALTER TABLE rollup_jobs ALTER COLUMN jobs TYPE integer"))
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diffs = compare_metadata(context, Base.metadata)
        assert len(diffs) == 2
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------ engine

def test_engine_session_settings(engine):
    with engine.connect() as conn:
        assert conn.execute(text("SHOW TimeZone")).scalar() == "UTC"
        assert conn.execute(text("SHOW application_name")).scalar() == "hpc-billing"
        conn.rollback()  # TimeZone is a startup option, so it survives a rollback
        assert conn.execute(text("SELECT now()")).scalar().utcoffset() == timedelta(0)


def test_redact_url():
    assert store_db.redact_url("postgresql+psycopg2://bill:s3cr@t@db:5432/x") == (
        "postgresql+psycopg2://bill:***@db:5432/x")
    assert store_db.redact_url("postgresql://u@/db?host=/run/pg&password=pw") == (
        "postgresql://u@/db?host=/run/pg&password=***")
    assert store_db.redact_url("postgresql://db/x") == "postgresql://db/x"
    with pytest.raises(store_db.DatabaseURLError) as err:
        store_db.make_engine("mysql://u:hunter2@h/db")
    assert "hunter2" not in str(err.value)


# ------------------------------------------------------------------------- job writer

def test_round_trip_is_exact(session):
    records = [
        rec(1),
        # Every nullable field None, no GPUs, still running.
        rec(2, name=None, user=None, uid=None, group=None, account=None, partition=None,
            qos=None, wckey=None, exit_code=None, derived_exit_code=None, eligible=None,
            start=None, end=None, timelimit_min=None, billing=None, gpus=(),
            node_list=None, cpu_time_alloc_s=None, cpu_used_s=None, max_rss_bytes=None,
            mem_used_byte_s=None, energy_j=None, db_index=None, final=False,
            state="PENDING", state_raw="PENDING", elapsed_s=0, nodes=0, cpus=0,
            mem_bytes=0),
        # Array task, het job, odd text, a non-UTC zone on input.
        rec(3, job_id="6_3", array_job_id=6, array_task_id=3, het_job_id=14,
            het_job_offset=1, name="a\tb\nc\\d\re \\N ünïcödé \x1f|", state="CANCELLED",
            state_raw="CANCELLED by 0", reservation="maint",
            submit=datetime(2026, 11, 1, 10, 0, tzinfo=timezone(timedelta(hours=2))),
            cpu_used_s=Decimal("0.5"), gpus=(("untyped", 4),)),
        rec(4, name="", account="", cpu_used_s=Decimal("1")),
    ]
    assert write(session, records) == UpsertCounts(4, 0, 0)
    back = list(list_jobs(session))
    assert back == sorted(records, key=lambda r: (r.cluster, r.submit, r.job_id_raw))
    by_id = {r.job_id_raw: r for r in back}
    assert by_id[3].submit.tzinfo is not None and by_id[3].submit.utcoffset() == timedelta(0)
    assert by_id[4].name == "" and by_id[2].name is None
    assert by_id[1].mem_used_byte_s == 2**64 + 12345
    assert by_id[1].gpus == (("a100", 2), ("untyped", 1)) and by_id[1].gpu_count == 3
    # What reads back hashes like what was written (Decimal scale, time zone).
    for r in records:
        assert content_hash(by_id[r.job_id_raw]) == content_hash(r)
    gpus = session.execute(text("SELECT gpus, gpu_count FROM jobs WHERE job_id_raw = 1")).one()
    assert gpus == ({"a100": 2, "untyped": 1}, 3)


def test_same_records_twice_are_unchanged_and_not_rewritten(session):
    records = [rec(1), rec(2), rec(3)]
    assert write(session, records, run_id=1) == UpsertCounts(3, 0, 0)
    session.commit()
    before = row_versions(session)
    session.commit()
    assert write(session, records, run_id=2) == UpsertCounts(0, 0, 3)
    session.commit()
    assert row_versions(session) == before  # same xmin: no row version was written
    assert all(v[2:] == (1, 1) for v in before.values())


def test_changing_one_field_updates_one_row(session):
    write(session, [rec(1), rec(2), rec(3)], run_id=1)
    session.commit()
    before = row_versions(session)
    changed = rec(2, state="FAILED", state_raw="FAILED", exit_code="1:0")
    assert write(session, [rec(1), changed, rec(3)], run_id=7) == UpsertCounts(0, 1, 2)
    session.commit()
    after = row_versions(session)
    assert after[1] == before[1] and after[3] == before[3]
    assert after[2][0] != before[2][0]
    assert after[2][2:] == (1, 7)  # first_run_id kept, last_run_id moved
    assert {r.job_id_raw: r for r in list_jobs(session)}[2] == changed


def test_duplicate_key_in_one_batch_last_wins(session):
    first, last = rec(5, state="RUNNING", final=False, end=None), rec(5)
    assert write(session, [first, rec(6), last]) == UpsertCounts(2, 0, 0)
    assert [r for r in list_jobs(session) if r.job_id_raw == 5] == [last]
    # The same instant in another zone is the same key.
    moved = rec(5, name="renamed", submit=last.submit.astimezone(timezone(timedelta(hours=-7))))
    assert write(session, [moved]) == UpsertCounts(0, 1, 0)
    assert count_jobs(session) == 2


def test_requeued_job_is_two_rows(session):
    old = rec(9, state="REQUEUED", state_raw="REQUEUED", final=False)
    new = rec(9, submit=old.submit + timedelta(minutes=30))
    assert write(session, [old, new]) == UpsertCounts(2, 0, 0)
    assert count_jobs(session) == 2
    assert [r.state for r in list_jobs(session)] == ["REQUEUED", "COMPLETED"]


def test_batches_larger_than_batch_rows_span_several_rounds(session):
    records = [rec(i) for i in range(1, 12)]
    writer = JobWriter(session, run_id=1, batch_rows=3)
    for r in records:
        writer.add(r)
    assert writer.batches_flushed == 3 and writer.pending == 2
    writer.flush()
    assert writer.batches_flushed == 4 and writer.counts == UpsertCounts(11, 0, 0)
    # Second pass in the same transaction, overlapping batches of another size.
    changed = records[:5] + [rec(6, name="x")] + records[6:] + [rec(12)]
    assert write(session, changed, run_id=2, batch_rows=4) == UpsertCounts(1, 1, 10)
    assert count_jobs(session) == 12


def test_rollback_stores_nothing(session):
    run_id = start_run(session, cluster="alpha", source="sacct", kind="poll", window=None)
    write(session, [rec(1), rec(2)], run_id=run_id)
    assert count_jobs(session) == 2
    session.rollback()
    assert count_jobs(session) == 0
    assert list_runs(session) == []
    # The writer still works after the rollback dropped its stage table.
    assert write(session, [rec(1)]) == UpsertCounts(1, 0, 0)


def test_stage_table_survives_transactions_on_one_pooled_connection(db_url):
    engine = store_db.make_engine(db_url, pool_size=1, max_overflow=0)
    try:
        for attempt in range(4):
            with Session(engine) as session:
                counts = write(session, [rec(1), rec(2 + attempt)], run_id=attempt)
                if attempt == 0:
                    session.rollback()  # rolls back the stage table's creation too
                else:
                    session.commit()
                expected = UpsertCounts(2, 0, 0) if attempt < 2 else UpsertCounts(1, 0, 1)
                assert counts == expected
            # Same pooled connection: the stage exists unless its creation was rolled
            # back, and ON COMMIT DELETE ROWS left nothing of the batch in it.
            with engine.connect() as conn:
                exists = conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"),
                                      {"t": f"pg_temp.{STAGE}"}).scalar()
                assert exists == (attempt != 0)
                if exists:
                    assert conn.execute(text(f"SELECT count(*) FROM {STAGE}")).scalar() == 0
        with Session(engine) as session:
            assert count_jobs(session) == 4  # 1, 3, 4, 5 (2 was rolled back)
    finally:
        engine.dispose()


def test_writer_creates_missing_clusters(session):
    assert write(session, [rec(1, cluster="beta"), rec(2, cluster="gamma")]) == (
        UpsertCounts(2, 0, 0))
    names = session.execute(text("SELECT name FROM clusters ORDER BY name")).scalars().all()
    assert names == ["beta", "gamma"]
    assert count_jobs(session, "beta") == 1 and count_jobs(session) == 2


def test_writer_and_listing_refuse_naive_datetimes(session):
    writer = JobWriter(session, run_id=1)
    with pytest.raises(ValueError, match="naive"):
        writer.add(rec(1, submit=datetime(2026, 1, 1)))
    with pytest.raises(ValueError, match="aware"):
        list(list_jobs(session, since=datetime(2026, 1, 1)))


def test_content_hash_is_stable_across_processes():
    code = ("from tests.integration.test_store import rec; "
            "from collector.store.jobs import content_hash; print(content_hash(rec(42)))")
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, env={"PYTHONHASHSEED": seed, "PATH": ""},
                       cwd=str(__import__("pathlib").Path(__file__).parents[2])).stdout.strip()
        for seed in ("1", "2")
    }
    # A golden value: if this changes, every stored row is rewritten once on the next
    # reload. Change it only on purpose (and bump _HASH_PERSON in collector/store/jobs.py).
    assert outputs == {"644c2b83c88e16327d28d4f9eee5bc52"}
    assert content_hash(rec(42)) != content_hash(rec(42, name=None))
    assert content_hash(rec(42, name="")) != content_hash(rec(42, name=None))
    assert content_hash(rec(42, cpu_used_s=Decimal("1.5"))) == content_hash(
        rec(42, cpu_used_s=Decimal("1.500")))


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=40)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.one_of(st.none(), _text), account=st.one_of(st.none(), _text),
       cluster=st.text(st.characters(blacklist_categories=("Cs",),
                                     blacklist_characters="\x00"), min_size=1, max_size=10),
       cpu=st.one_of(st.none(), st.decimals(min_value=0, max_value=10**14, places=3)))
def test_any_text_round_trips_through_copy(session, name, account, cluster, cpu):
    record = rec(77, cluster=cluster, name=name, account=account, cpu_used_s=cpu,
                 node_list=name)
    writer = JobWriter(session, run_id=1)
    writer.add(record)
    writer.flush()
    back = list(list_jobs(session, cluster=cluster))
    session.rollback()
    assert back == [record]


# -------------------------------------------------------------------------- listings

def test_list_jobs_window_semantics(session):
    since, until = T0 + timedelta(hours=10), T0 + timedelta(hours=20)
    jobs = {
        "ended_before": rec(1, submit=T0, end=since - timedelta(seconds=1)),
        "ended_at_since": rec(2, submit=T0, end=since),
        "running": rec(3, submit=T0 + timedelta(hours=1), end=None, final=False),
        "inside": rec(4, submit=since + timedelta(hours=1), end=since + timedelta(hours=2)),
        "submitted_at_until": rec(5, submit=until, end=until + timedelta(hours=1)),
        "spans": rec(6, submit=since - timedelta(hours=1), end=until + timedelta(hours=5)),
        "pending_later": rec(7, submit=until + timedelta(hours=1), end=None),
        "other_cluster": rec(8, cluster="beta", submit=since, end=None),
    }
    write(session, list(jobs.values()))
    names = {v.job_id_raw: k for k, v in jobs.items()}

    def listed(**kw: object) -> list[str]:
        return [names[r.job_id_raw] for r in list_jobs(session, **kw)]  # type: ignore[arg-type]

    assert listed(cluster="alpha", since=since, until=until) == [
        "ended_at_since", "running", "spans", "inside"]
    assert listed(since=since, until=until) == [
        "ended_at_since", "running", "spans", "inside", "other_cluster"]
    assert listed(cluster="alpha", until=since) == [
        "ended_before", "ended_at_since", "running", "spans"]
    assert listed(cluster="alpha", since=until) == [
        "running", "spans", "submitted_at_until", "pending_later"]
    assert listed(limit=2) == ["ended_before", "ended_at_since"]
    assert count_jobs(session, "alpha") == 7 and count_jobs(session, "nope") == 0


def test_list_jobs_streams_large_listing(session):
    write(session, [rec(i) for i in range(1, 2_501)])
    keys = [(r.submit, r.job_id_raw) for r in list_jobs(session, cluster="alpha",
                                                         yield_per=100)]
    assert len(keys) == 2_500 and keys == sorted(keys)


# ------------------------------------------------------------------ runs and watermarks

def test_run_log_start_and_finish(session):
    window = Window(T0, T0 + timedelta(hours=1))
    run_id = start_run(session, cluster="alpha", source="sacct", kind="poll", window=window)
    # A file import without a configured cluster has none.
    file_run = start_run(session, cluster=None, source="file:dump.psv", kind="file",
                         window=None)
    running = get_run(session, run_id)
    assert running is not None and running.outcome == "running"
    assert running.finished_at is None and running.duration_s is None
    assert (running.window_since, running.window_until) == (window.since, window.until)
    session.execute(text("SELECT pg_sleep(0.02)"))
    finish_run(session, run_id, outcome="ok", records_read=10,
               counts=UpsertCounts(3, 2, 5), quarantined=1, lines_read=25)
    finish_run(session, file_run, outcome="failed", records_read=0, counts=UpsertCounts(),
               quarantined=0, lines_read=0, error="bad header\x00")
    runs = list_runs(session)
    assert [r.id for r in runs] == [file_run, run_id]
    done = runs[1]
    assert done.outcome == "ok" and done.kind == "poll" and done.source == "sacct"
    assert (done.records_read, done.jobs_inserted, done.jobs_updated, done.jobs_unchanged,
            done.quarantined, done.lines_read) == (10, 3, 2, 5, 1, 25)
    assert done.finished_at is not None and done.finished_at >= done.started_at
    assert done.duration_s is not None and done.duration_s >= 0.02
    assert done.started_at.utcoffset() == timedelta(0)
    assert runs[0].error == "bad header\ufffd" and runs[0].window_since is None
    assert runs[0].cluster is None and runs[1].cluster == "alpha"
    assert [r.id for r in list_runs(session, cluster="alpha")] == [run_id]
    assert list_runs(session, cluster="beta") == []
    assert len(list_runs(session, limit=1)) == 1
    with pytest.raises(ValueError):
        start_run(session, cluster="alpha", source="sacct", kind="cron", window=None)
    with pytest.raises(ValueError):
        finish_run(session, run_id, outcome="running", records_read=0,
                   counts=UpsertCounts(), quarantined=0, lines_read=0)
    with pytest.raises(LookupError):
        finish_run(session, 99_999, outcome="ok", records_read=0, counts=UpsertCounts(),
                   quarantined=0, lines_read=0)


def test_upsert_counts_add():
    total = UpsertCounts(1, 2, 3) + UpsertCounts(10, 20, 30)
    assert total == UpsertCounts(11, 22, 33) and total.total == 66
    assert sum([UpsertCounts(1, 0, 0)] * 3, UpsertCounts()) == UpsertCounts(3, 0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        total.inserted = 0  # type: ignore[misc]


def test_watermarks_set_get_overwrite(session):
    run_id = start_run(session, cluster="alpha", source="sacct", kind="poll", window=None)
    assert get_watermark(session, "alpha", "sacct") is None
    set_watermark(session, "alpha", "sacct", T0, run_id)
    assert get_watermark(session, "alpha", "sacct") == T0
    later = datetime(2026, 11, 1, 12, 0, tzinfo=timezone(timedelta(hours=3)))
    set_watermark(session, "alpha", "sacct", later, None)
    got = get_watermark(session, "alpha", "sacct")
    assert got == later and got is not None and got.utcoffset() == timedelta(0)
    set_watermark(session, "alpha", "sacct", T0, run_id)  # backwards is allowed
    assert get_watermark(session, "alpha", "sacct") == T0
    stream = backfill_stream(T0)
    assert stream == "backfill:2026-11-01T08:00:00+00:00"
    set_watermark(session, "beta", stream, later, run_id)  # creates cluster beta
    assert get_watermark(session, "beta", stream) == later
    assert get_watermark(session, "alpha", stream) is None
    with pytest.raises(ValueError):
        set_watermark(session, "alpha", "sacct", datetime(2026, 1, 1), run_id)


# -------------------------------------------------------------------------- quarantine

def test_quarantine_keeps_raw_text_byte_exact(session):
    run_id = start_run(session, cluster="alpha", source="sacct", kind="poll", window=None)
    raws = [
        "42\x1fjob\x1fCOMPLETED\x1f",
        "tab\there\nnewline\r\ncrlf",
        "back\\slash \\N \\. \\\\N",
        "\\N",
        "",
        "nul\x00inside",
        "ünïcödé ✓ \U0001F600",
    ]
    records = (QuarantinedRecord(raw=r, reason=f"reason {i}\t!", source="sacct",
                                 line_no=i + 1, job_id=None if i % 2 else str(i))
               for i, r in enumerate(raws))
    assert add_quarantined(session, run_id, records, cluster="alpha") == len(raws)
    stored = list(reversed(list_quarantine(session, run_id=run_id)))
    expected = [r.replace("\x00", "\ufffd") for r in raws]
    assert [q.raw for q in stored] == expected
    assert [q.line_no for q in stored] == list(range(1, len(raws) + 1))
    assert stored[0].job_id == "0" and stored[1].job_id is None
    assert stored[0].reason == "reason 0\t!" and stored[0].cluster == "alpha"
    octets = session.execute(text(
        "SELECT octet_length(raw) FROM quarantine ORDER BY id")).scalars().all()
    assert octets == [len(r.encode()) for r in expected]


def test_quarantine_bulk_and_filters(session):
    first = start_run(session, cluster="alpha", source="sacct", kind="poll", window=None)
    second = start_run(session, cluster="alpha", source="file:x", kind="file", window=None)
    many = (QuarantinedRecord(raw=f"line {i}", reason="bad", source="file:x", line_no=i)
            for i in range(2_345))
    assert add_quarantined(session, first, [], cluster=None) == 0
    assert add_quarantined(session, second, many, cluster=None) == 2_345
    assert len(list_quarantine(session, run_id=second, limit=5_000)) == 2_345
    assert list_quarantine(session, run_id=first) == []
    newest = list_quarantine(session, limit=1)
    assert newest[0].raw == "line 2344" and newest[0].cluster is None


def test_ensure_cluster_is_idempotent(session):
    ensure_cluster(session, "alpha")
    ensure_cluster(session, "alpha")
    assert session.execute(text("SELECT count(*) FROM clusters")).scalar() == 1
