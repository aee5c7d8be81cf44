"""Report latency on rollups shaped for a year of a large site (10M+ jobs).

    python -m bench.engine_proto.report10m [--assocs 20000] [--active 0.6]

Generates, in a scratch database, the prototype's dimension and rollup tables as a
10,000-node site would fill them in a year: ``--assocs`` associations (5,000 users, 500
accounts, 10 partitions, 5 QOS), of which ``--active`` are active in a month, each with
4 resources (cpu, mem, gpu, node), and job counts summing to ~10M jobs. Then times, best
of 5, the month report by account, by account and user, and by account and resource
(what ``report --period`` and the API's month query ask), plus a 12-month range.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bench.engine_proto.run import ADMIN, Scratch, _conninfo  # noqa: E402

FILL = """
INSERT INTO e_clusters (name) VALUES ('big');
INSERT INTO e_assocs (cluster_id, account, user_name, uid, group_name, partition, qos)
SELECT 1, 'acct' || (u % 500), 'user' || u, 10000 + u, 'grp' || (u % 500),
       'part' || ((i / 5000) % 10), 'qos' || ((i / 50000) % 5)
FROM generate_series(0, {assocs} - 1) AS i, LATERAL (SELECT i % 5000 AS u) x;
INSERT INTO e_rollup_resource
SELECT make_date(2026, m, 1), 1, a.id, 'EUR', r.resource, r.unit,
       (random() * 1e12)::bigint, (random() * 1e10)::bigint, j.n * r.k, j.n
FROM generate_series(1, 12) AS m
CROSS JOIN e_assocs a
CROSS JOIN LATERAL (SELECT (1 + random() * 140)::int AS n) j
CROSS JOIN (VALUES ('cpu', 'core_hour', 1), ('mem', 'gib_hour', 1),
                   ('gpu', 'gpu_hour', 1), ('node', 'node_hour', 1)) AS r(resource, unit, k)
WHERE random() < {active};
INSERT INTO e_rollup_jobs
SELECT posted_month, cluster_id, assoc_id, currency, sum(amount_micro), max(jobs)
FROM e_rollup_resource GROUP BY 1, 2, 3, 4;
VACUUM ANALYZE e_assocs, e_rollup_resource, e_rollup_jobs;
"""

QUERIES = {
    "month by account": (
        "SELECT a.account, r.currency, sum(r.jobs), sum(r.amount_micro) FROM e_rollup_jobs r"
        " JOIN e_assocs a ON a.id = r.assoc_id WHERE r.posted_month = '2026-10-01'"
        " GROUP BY 1, 2 ORDER BY 1, 2"),
    "month by account, user": (
        "SELECT a.account, a.user_name, r.currency, sum(r.jobs), sum(r.amount_micro)"
        " FROM e_rollup_jobs r JOIN e_assocs a ON a.id = r.assoc_id"
        " WHERE r.posted_month = '2026-10-01' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"),
    "month by account, resource": (
        "SELECT a.account, r.currency, r.resource, r.unit, sum(r.jobs), sum(r.quantity_micro),"
        " sum(r.amount_micro) FROM e_rollup_resource r JOIN e_assocs a ON a.id = r.assoc_id"
        " WHERE r.posted_month = '2026-10-01' GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"),
    "12 months by account (amounts)": (
        "SELECT a.account, r.currency, sum(r.amount_micro) FROM e_rollup_jobs r"
        " JOIN e_assocs a ON a.id = r.assoc_id WHERE r.posted_month >= '2026-01-01'"
        " AND r.posted_month < '2027-01-01' GROUP BY 1, 2 ORDER BY 1, 2"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--assocs", type=int, default=20_000)
    ap.add_argument("--active", type=float, default=0.6)
    args = ap.parse_args(argv)
    scratch = Scratch(ADMIN)
    try:
        with psycopg.connect(_conninfo(scratch.url), autocommit=True) as conn:
            t0 = time.perf_counter()
            for statement in FILL.split(";"):
                if statement.strip():
                    conn.execute(statement.format(assocs=args.assocs,
                                                  active=args.active))
            fill_s = time.perf_counter() - t0
            jobs = conn.execute("SELECT sum(jobs) FROM e_rollup_jobs").fetchone()[0]
            rows = conn.execute("SELECT count(*) FROM e_rollup_resource").fetchone()[0]
            size = conn.execute(
                "SELECT pg_total_relation_size('e_rollup_resource')"
                " + pg_total_relation_size('e_rollup_jobs')").fetchone()[0]
            print(f"rollups for {jobs:,} jobs: {rows:,} resource rows, "
                  f"{size / 2**20:.0f} MiB (filled in {fill_s:.1f} s)")
            for name, sql in QUERIES.items():
                best = float("inf")
                n = 0
                for _ in range(5):
                    t = time.perf_counter()
                    n = len(conn.execute(sql).fetchall())
                    best = min(best, time.perf_counter() - t)
                print(f"{name:<34} {best * 1000:8.1f} ms  ({n:,} rows)")
    finally:
        scratch.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
