"""collector.store.ingest: the frames writer stores what today's per-record writers store.

Database A is filled by the production pipeline (``collect`` of a generated export).
Its jobs and lines, as records, become frames (``frames_from_records``) and go through
``ingest.Store`` into database B. Both must read back identically (views, reports), the
rollups must equal the lines after every write (insert, re-write, change, an old month
met in a backfill), and the skip lookup must say what is stored.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import polars as pl
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from bench.gen_sacct import generate
from billing.records import ChargeLine, JobRecord
from collector.store import charges as store_charges
from collector.store import db as store_db
from collector.store import jobs as store_jobs
from collector.store import reports as store_reports
from collector.store import rollups as store_rollups
from collector.store.ingest import Store, WriteCounts, frames_from_records, lookup_factory
from collector.store.rate_cards import ensure_rate_card
from tests.helpers import run_cli
from tests.integration.test_migration_0011 import DEMO_CARD, JOB_COLUMNS

LINES = ("SELECT l.cluster, l.job_id_raw, l.submit_time, l.usage_period, l.posted_period,"
         " l.resource, l.quantity, l.unit, l.rate, l.amount, l.currency, l.rule, r.version,"
         " l.basis, l.kind FROM charge_lines l JOIN rate_cards r ON r.id = l.rate_card_id")
JOBS = (f"SELECT {', '.join(c for c in JOB_COLUMNS if not c.endswith('run_id'))} FROM jobs"
        " ORDER BY cluster, job_id_raw, submit_time")


def dump(engine) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with engine.connect() as conn:
        return ([tuple(r) for r in conn.execute(text(JOBS))],
                sorted((tuple(r) for r in conn.execute(text(LINES))), key=repr))


@pytest.fixture(scope="module")
def source(tmp_path_factory, pg_admin_url):
    """Database A, filled by the pipeline; yields its records, lines and cards."""
    from tests.conftest import _create_database, _drop_database
    url = _create_database(pg_admin_url)
    export = tmp_path_factory.mktemp("ingest") / "export.psv"
    with open(export, "w") as fh:
        generate(6000, fh, seed=41)
    assert run_cli("migrate", "--database-url", url) == 0
    assert run_cli("collect", "--once", "--source", "file", "--input", str(export),
                   "--rates", str(DEMO_CARD), "--database-url", url) == 0
    engine = store_db.make_engine(url)
    with Session(engine) as s:
        # (records read back carry no raw digest: it is the store's, not the record's)
        digests = {(c, i, t): d for c, i, t, d in s.execute(text(
            "SELECT cluster, job_id_raw, submit_time, raw_digest FROM jobs"))}
        records = [dataclasses.replace(r, raw_digest=digests[(r.cluster, r.job_id_raw, r.submit)])
                   for r in store_jobs.list_jobs(s)]
        lines = [x for r in records
                 for x in store_charges.job_charges(s, (r.cluster, r.job_id_raw, r.submit))]
        cards = [tuple(r) for r in s.execute(text(
            "SELECT version, currency, text, source FROM rate_cards"))]
    expected = dump(engine)
    engine.dispose()
    try:
        yield records, lines, cards, expected
    finally:
        _drop_database(url, pg_admin_url)


def first_difference(got, want):
    """None when equal, else where the dumps first differ (for a readable failure)."""
    for part, (g, w) in enumerate(zip(got, want, strict=True)):
        if len(g) != len(w):
            return part, "rows", len(g), len(w)
        for i, (a, b) in enumerate(zip(g, w, strict=True)):
            if a != b:
                cols = [k for k, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
                return part, i, [(k, a[k], b[k]) for k in cols]
    return None


def _cards(session: Session, cards) -> tuple[dict[str, int], dict[str, str]]:
    ids = {v: ensure_rate_card(session, version=v, currency=c, text=t, source=src)
           for v, c, t, src in cards}
    return ids, {v: c for v, c, _, _ in cards}


def write(url: str, records: list[JobRecord], lines: list[ChargeLine], cards, *,
          run_id: int, lookup: bool, chunks: int = 2) -> WriteCounts:
    jobs, frame = frames_from_records(records, lines)
    engine = store_db.make_engine(url)
    look = store_db.raw_connect(url)
    try:
        if lookup:
            found = lookup_factory(look)(jobs.select("cluster", "job_id_raw", "submit",
                                                     "raw_digest"))
            jobs = jobs.with_columns(found["exists"])
        with Session(engine) as session:
            ids, currencies = _cards(session, cards)
            store = Store(session, run_id, ids, currencies)
            size = -(-jobs.height // chunks)
            for i in range(chunks):
                part = jobs.slice(i * size, size)
                keys = part.select("cluster", "job_id_raw", "submit")
                part_lines = frame.join(keys, on=["cluster", "job_id_raw", "submit"], how="semi")
                Store.ensure_partitions(look, part, part_lines)
                store.write(part, part_lines)
            counts = store.finish()
            session.commit()
        return counts
    finally:
        look.close()
        engine.dispose()


def check_rollups(url: str) -> None:
    engine = store_db.make_engine(url)
    try:
        with Session(engine) as s:
            check = store_rollups.verify(s)
            assert check.ok and check.resource_buckets > 0, check
    finally:
        engine.dispose()


def test_frames_store_what_the_record_writers_store(source, db_url):
    records, lines, cards, expected = source
    assert len(records) > 1000 and len(lines) > 2000
    counts = write(db_url, records, lines, cards, run_id=1, lookup=True)
    assert counts == WriteCounts(inserted=len(records), updated=0, unchanged=0,
                                 lines_written=len(lines))
    engine = store_db.make_engine(db_url)
    try:
        assert first_difference(dump(engine), expected) is None
        with Session(engine) as s:
            periods = [p for (p,) in s.execute(text(
                "SELECT DISTINCT posted_period FROM charge_lines"))]
            for period in periods:
                for group_by in (["account"], ["user", "resource"], ["partition", "qos"]):
                    assert store_reports.charge_report(s, period=period, group_by=group_by) \
                        == store_reports.charge_report_raw(s, period=period, group_by=group_by)
    finally:
        engine.dispose()
    check_rollups(db_url)

    # The same frames again: the lookup says every job exists, all go through the stage
    # and are found unchanged, no line is written.
    again = write(db_url, records, lines, cards, run_id=2, lookup=True, chunks=3)
    assert again == WriteCounts(0, 0, len(records), 0)
    engine = store_db.make_engine(db_url)
    try:
        assert first_difference(dump(engine), expected) is None
    finally:
        engine.dispose()
    check_rollups(db_url)


def test_changed_jobs_move_their_lines_and_rollups(source, db_url):
    records, lines, cards, _ = source
    write(db_url, records, lines, cards, run_id=1, lookup=False)
    # Ten priced jobs move to another account; two of them also get another price.
    priced = sorted({(x.cluster, x.job_id_raw, x.submit) for x in lines})[:10]
    moved = {k: i for i, k in enumerate(priced)}
    changed = [dataclasses.replace(r, account="moved") for r in records
               if (r.cluster, r.job_id_raw, r.submit) in moved]
    new_lines = [dataclasses.replace(x, amount=x.amount + Decimal("0.01"))
                 if moved.get((x.cluster, x.job_id_raw, x.submit), 99) < 2 else x
                 for x in lines if (x.cluster, x.job_id_raw, x.submit) in moved]
    counts = write(db_url, changed, new_lines, cards, run_id=3, lookup=True, chunks=1)
    repriced = sum(1 for x in lines if moved.get((x.cluster, x.job_id_raw, x.submit), 99) < 2)
    assert counts == WriteCounts(0, 10, 0, repriced)
    check_rollups(db_url)
    engine = store_db.make_engine(db_url)
    try:
        with Session(engine) as s:
            assert s.execute(text("SELECT count(*) FROM jobs WHERE account = 'moved'"
                                  " AND last_run_id = 3")).scalar() == 10
            period = s.execute(text("SELECT max(posted_period) FROM charge_lines l JOIN jobs j"
                                    " USING (cluster, job_id_raw, submit_time)"
                                    " WHERE j.account = 'moved'")).scalar()
            rows = store_reports.charge_report(s, period=period, group_by=["account"])
            assert rows == store_reports.charge_report_raw(s, period=period, group_by=["account"])
            assert any(r["account"] == "moved" for r in rows)
    finally:
        engine.dispose()


def test_an_old_month_met_in_a_backfill_gets_its_partitions(source, db_url):
    records, lines, cards, _ = source
    old = datetime(2019, 3, 14, 9, 30, tzinfo=UTC)
    job = dataclasses.replace(records[0], job_id_raw=990_001, job_id="990001",
                              array_job_id=None, array_task_id=None, het_job_id=None,
                              het_job_offset=None, submit=old, eligible=old, start=old,
                              end=datetime(2019, 3, 14, 10, 30, tzinfo=UTC), raw_digest=None)
    line = ChargeLine(cluster=job.cluster, job_id_raw=job.job_id_raw, submit=old,
                      usage_period="2019-03", posted_period="2019-03", resource="cpu",
                      quantity=Decimal("4"), unit="core_hour", rate=Decimal("0.036"),
                      amount=Decimal("0.144"), currency=cards[0][1], rule="default",
                      rate_card=cards[0][0], basis="allocated", kind="charge")
    counts = write(db_url, [job], [line], cards, run_id=4, lookup=True, chunks=1)
    assert counts == WriteCounts(1, 0, 0, 1)
    engine = store_db.make_engine(db_url)
    try:
        with engine.connect() as conn:
            parts = set(conn.execute(text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'partitions'")).scalars())
            assert {"job_rows_2019_03", "charge_rows_2019_03"} <= parts
            assert conn.execute(text("SELECT amount FROM charge_lines WHERE job_id_raw = 990001")
                                ).scalar() == Decimal("0.144")
    finally:
        engine.dispose()
    check_rollups(db_url)


def test_the_lookup_says_what_is_stored(source, db_url):
    records, lines, cards, _ = source
    write(db_url, records[:50], [x for x in lines if x.job_id_raw in
                                 {r.job_id_raw for r in records[:50]}], cards, run_id=1,
          lookup=False, chunks=1)
    jobs, _ = frames_from_records(records[:60], [])
    keys = jobs.select("cluster", "job_id_raw", "submit", "raw_digest").with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(b"x" * 16)).otherwise(
            pl.col("raw_digest")).alias("raw_digest"))
    look = store_db.raw_connect(db_url)
    try:
        found = lookup_factory(look)(keys)
    finally:
        look.close()
    stored_digest = [r.raw_digest is not None for r in records[:60]]
    assert found["exists"].to_list() == [True] * 50 + [False] * 10
    assert found["skip"].to_list() == [False] + stored_digest[1:50] + [False] * 10
