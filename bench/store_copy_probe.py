"""Throughput probe of collector.store.jobs.JobWriter (COPY -> stage -> MERGE).

Creates a scratch database on an admin URL, migrates it, writes N synthetic JobRecords
in one transaction (first load), writes the same records again (unchanged reload: no row
may be rewritten), then a reload where 10 % of the records changed, and prints rows/s.
The scratch database is dropped at the end.

    python bench/store_copy_probe.py [--admin-url URL] [--rows 200000] [--batch-rows 20000]
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg2  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from billing.records import JobRecord  # noqa: E402
from collector.store.db import make_engine, migrate  # noqa: E402
from collector.store.job_writer import JobWriter  # noqa: E402
from collector.store.jobs import _encode  # noqa: E402

T0 = datetime(2026, 6, 1, tzinfo=timezone.utc)


def synthetic(n: int) -> list[JobRecord]:
    out = []
    for i in range(n):
        submit = T0 + timedelta(seconds=i * 7)
        start = submit + timedelta(seconds=30 + i % 600)
        elapsed = 60 + (i * 37) % 86_400
        gpus = (("a100", 4),) if i % 5 == 0 else ((("untyped", 1),) if i % 7 == 0 else ())
        out.append(JobRecord(
            cluster="bench", job_id=f"{1000 + i}_{i % 50}" if i % 5 == 1 else str(1000 + i),
            job_id_raw=1000 + i, submit=submit,
            state="COMPLETED" if i % 10 else "CANCELLED",
            state_raw="COMPLETED" if i % 10 else "CANCELLED by 31071",
            array_job_id=1000 + i - i % 50 if i % 5 == 1 else None,
            array_task_id=i % 50 if i % 5 == 1 else None,
            name=f"job-{i % 997}.sh", user=f"user{i % 211}", uid=10_000 + i % 211,
            group="users", account=f"acct{i % 37}", partition="gpu" if gpus else "cpu",
            qos="normal", exit_code="0:0", derived_exit_code="0:0",
            eligible=submit, start=start, end=start + timedelta(seconds=elapsed),
            elapsed_s=elapsed, timelimit_min=2880, nodes=1 + i % 4, cpus=64,
            mem_bytes=16 * 2**30, billing=96, gpus=gpus, node_list=f"n[{i % 100:03d}]",
            cpu_time_alloc_s=elapsed * 64, cpu_used_s=Decimal(elapsed * 50) / 3,
            max_rss_bytes=3 * 2**30 + i, mem_used_byte_s=elapsed * 3 * 2**30,
            energy_j=None, db_index=5_000_000 + i, final=True,
        ))
    return out


def timed_write(engine, records, run_id, batch_rows):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    with Session(engine) as session:
        writer = JobWriter(session, run_id=run_id, batch_rows=batch_rows)
        for r in records:
            writer.add(r)
        writer.flush()
        session.commit()
    return time.perf_counter() - t, writer.counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--admin-url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch-rows", type=int, default=20_000)
    args = ap.parse_args()

    admin = make_url(args.admin_url)
    dsn = admin.set(drivername="postgresql+psycopg2").translate_connect_args(
        username="user", database="dbname")
    name = f"hpcb_bench_{secrets.token_hex(4)}"
    conn = psycopg2.connect(**dsn)
    conn.autocommit = True
    conn.cursor().execute(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8'")
    engine = make_engine(admin.set(database=name))
    try:
        migrate(engine)
        records = synthetic(args.rows)
        t = time.perf_counter()
        for r in records:
            _encode(r)
        encode_s = time.perf_counter() - t
        n = len(records)
        print(f"rows={n} batch_rows={args.batch_rows}")
        print(f"python encode only        : {n / encode_s:>9,.0f} rows/s")
        dt, counts = timed_write(engine, records, 1, args.batch_rows)
        print(f"first load                : {n / dt:>9,.0f} rows/s  {counts}")
        with engine.connect() as c:
            xmin_before = c.execute(text("SELECT sum(xmin::text::bigint) FROM jobs")).scalar()
        dt, counts = timed_write(engine, records, 2, args.batch_rows)
        print(f"unchanged reload          : {n / dt:>9,.0f} rows/s  {counts}")
        with engine.connect() as c:
            xmin_after = c.execute(text("SELECT sum(xmin::text::bigint) FROM jobs")).scalar()
        print(f"rows rewritten by reload  : {'none' if xmin_before == xmin_after else 'SOME'}")
        changed = [replace(r, state="FAILED") if i % 10 == 0 else r
                   for i, r in enumerate(records)]
        dt, counts = timed_write(engine, changed, 3, args.batch_rows)
        print(f"reload, 10% changed       : {n / dt:>9,.0f} rows/s  {counts}")
        with engine.connect() as c:
            size = c.execute(text(
                "SELECT pg_size_pretty(pg_total_relation_size('jobs'))")).scalar()
        print(f"jobs total size           : {size}")
    finally:
        engine.dispose()
        conn.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.close()


if __name__ == "__main__":
    main()
