"""Change check: the prototype's stage path (stored jobs that changed) against a fresh
ingest, and its rollups against the aggregate of its lines.

    python -m bench.engine_proto.changecheck [FILE]

Ingests FILE (default: the bench's 100,000-line export), then a copy in which, among the
first 30,000 lines, account ``physics`` became ``chemistry`` (an assoc change: rollup
buckets move and another rule prices the jobs) and running jobs ended. Compares every
charge line with a fresh ingest of the changed copy, and both rollup tables with the
aggregate of the lines, in both directions. Exit status 1 on any difference.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bench.engine_proto.run import ADMIN, Scratch, _conninfo, _run  # noqa: E402

LINES = (
    "SELECT j.job_id_raw, j.submit_time, c.usage_month, p.resource, p.rule, p.rate_text,"
    " c.quantity_micro, c.amount_micro, a.account FROM e_charges c"
    " JOIN e_prices p ON p.id = c.price_id"
    " JOIN e_jobs j USING (cluster_id, job_id_raw, submit_time)"
    " JOIN e_assocs a ON a.id = j.assoc_id")
ROLLUP = (
    "SELECT posted_month, cluster_id, assoc_id, currency, resource, unit, quantity_micro,"
    " amount_micro, lines, jobs FROM e_rollup_resource")
ROLLUP_FROM_LINES = (
    "SELECT c.posted_month, c.cluster_id, j.assoc_id, p.currency, p.resource, p.unit,"
    " sum(c.quantity_micro), sum(c.amount_micro), count(*),"
    " count(DISTINCT (c.job_id_raw, c.submit_time)) FROM e_charges c"
    " JOIN e_prices p ON p.id = c.price_id"
    " JOIN e_jobs j USING (cluster_id, job_id_raw, submit_time) GROUP BY 1, 2, 3, 4, 5, 6")
ROLLUP_JOBS = ("SELECT posted_month, cluster_id, assoc_id, currency, amount_micro, jobs"
               " FROM e_rollup_jobs")
ROLLUP_JOBS_FROM_LINES = (
    "SELECT c.posted_month, c.cluster_id, j.assoc_id, p.currency, sum(c.amount_micro),"
    " count(DISTINCT (c.job_id_raw, c.submit_time)) FROM e_charges c"
    " JOIN e_prices p ON p.id = c.price_id"
    " JOIN e_jobs j USING (cluster_id, job_id_raw, submit_time) GROUP BY 1, 2, 3, 4")


def changed_copy(src: str, dst: str) -> None:
    with open(src, encoding="utf-8") as fin, open(dst, "w", encoding="utf-8") as out:
        for i, line in enumerate(fin):
            if 0 < i < 30000:
                line = line.replace("|physics|", "|chemistry|")
                f = line.rstrip("\n").split("|")
                if len(f) > 17 and f[11] == "RUNNING" and "." not in f[0]:
                    f[11], f[17] = "COMPLETED", f[16]
                    line = "|".join(f) + "\n"
            out.write(line)


def _state(url: str) -> tuple[set, int]:
    with psycopg.connect(_conninfo(url)) as conn:
        lines = set(conn.execute(LINES).fetchall())
        bad = 0
        for a, b in ((ROLLUP, ROLLUP_FROM_LINES), (ROLLUP_JOBS, ROLLUP_JOBS_FROM_LINES)):
            bad += len(conn.execute(f"({a}) EXCEPT ({b})").fetchall())
            bad += len(conn.execute(f"({b}) EXCEPT ({a})").fetchall())
    return lines, bad


def main() -> int:
    src = sys.argv[1] if len(sys.argv) > 1 else "/tmp/hpcb-bench/sacct-100000-seed7.psv"
    changed = "/tmp/hpcb-engine-changed.psv"
    changed_copy(src, changed)
    scratch = Scratch(ADMIN)
    try:
        _run("ingest", file=src, url=scratch.url)
        second = _run("ingest", file=changed, url=scratch.url)
        after_change, bad_change = _state(scratch.url)
    finally:
        scratch.drop()
    scratch = Scratch(ADMIN)
    try:
        _run("ingest", file=changed, url=scratch.url)
        fresh, bad_fresh = _state(scratch.url)
    finally:
        scratch.drop()
    print(f"second ingest: skipped {second['skipped']:,}, staged {second['staged']:,}, "
          f"changed {second['changed']:,}, new {second['inserted']:,}")
    print(f"charge lines after the change: {len(after_change):,}; fresh ingest of the "
          f"changed file: {len(fresh):,}; equal: {after_change == fresh}")
    print(f"rollup rows that disagree with the lines: after the change {bad_change}, "
          f"fresh {bad_fresh}")
    return 0 if after_change == fresh and not bad_change and not bad_fresh else 1


if __name__ == "__main__":
    sys.exit(main())
