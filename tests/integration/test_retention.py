"""Retention of node snapshots and the run log, and the partitions made ahead
(``hpc-billing prune``, collector.store.retention)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text

from collector.store.retention import ensure_partitions_ahead
from tests.helpers import run_cli

NOW = datetime.now(UTC).replace(microsecond=0)
SNAPSHOT = (
    "INSERT INTO node_snapshots (taken_at, cluster, node, partitions, state, state_raw,"
    " cpus_total, cpus_alloc, mem_total_bytes, mem_alloc_bytes, gpus_total, gpus_alloc)"
    " VALUES (:at, 'lab', :node, ARRAY['batch'], 'idle', 'IDLE', 8, 0, 1, 0, '{}', '{}')")
RUN = ("INSERT INTO collector_runs (cluster, source, kind, started_at, outcome)"
       " VALUES (:cluster, 'sacct', 'poll', :at, :outcome) RETURNING id")


def _parts(conn) -> set[str]:
    return set(conn.execute(text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'partitions'"))
        .scalars())


def test_prune_keeps_what_is_young_quarantined_or_newest(db_url, engine):
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO clusters (name) VALUES ('lab'), ('other')"))
        for days, node in ((100, "old1"), (40, "old2"), (10, "young"), (0, "now")):
            conn.execute(text(SNAPSHOT), {"at": NOW - timedelta(days=days), "node": node})

        def run(cluster, days, outcome="ok"):
            return conn.execute(text(RUN), {"cluster": cluster, "outcome": outcome,
                                            "at": NOW - timedelta(days=days)}).scalar()
        old_plain = run("lab", 90)
        old_quarantined = run("lab", 80)
        old_accepted = run("lab", 70)
        old_watermarked = run("lab", 60)
        young = run("lab", 5)
        other_newest_but_old = run("other", 200)
        conn.execute(text("INSERT INTO quarantine (run_id, cluster, source, reason, raw)"
                          " VALUES (:a, 'lab', 'sacct', 'bad', 'x|y'),"
                          " (:b, 'lab', 'sacct', 'bad', 'z'), (:b, 'lab', 'sacct', 'bad', 'w')"),
                     {"a": old_quarantined, "b": old_accepted})
        conn.execute(text("UPDATE quarantine SET accepted_at = now() WHERE run_id = :b"),
                     {"b": old_accepted})
        conn.execute(text("INSERT INTO watermarks (cluster, stream, position, run_id)"
                          " VALUES ('lab', 'sacct', now(), :r)"), {"r": old_watermarked})

    assert run_cli("prune", "--node-retention", "30d", "--run-retention", "30d",
                   "--database-url", db_url) == 0

    with engine.connect() as conn:
        nodes = set(conn.execute(text("SELECT node FROM node_snapshots")).scalars())
        runs = set(conn.execute(text("SELECT id FROM collector_runs")).scalars())
        watermark_run = conn.execute(text("SELECT run_id FROM watermarks")).scalar()
        quarantined = conn.execute(text("SELECT count(*) FROM quarantine")).scalar()
        parts = _parts(conn)
    assert nodes == {"young", "now"}
    assert runs == {old_quarantined, young, other_newest_but_old}
    assert old_plain not in runs and old_accepted not in runs
    assert watermark_run is None            # the run went, the watermark stays
    assert quarantined == 1                 # the accepted records went with their run
    month = date(NOW.year, NOW.month, 1)
    for i in range(3):
        m = date(month.year + (month.month - 1 + i) // 12, (month.month - 1 + i) % 12 + 1, 1)
        assert {f"job_rows_{m:%Y_%m}", f"charge_rows_{m:%Y_%m}"} <= parts


def test_partitions_ahead_are_made_once(engine, sessions):
    with sessions() as s:
        made = ensure_partitions_ahead(s, date(2031, 11, 20), months_ahead=2)
        s.commit()
    with sessions() as s:
        again = ensure_partitions_ahead(s, date(2031, 11, 20), months_ahead=2)
        s.commit()
    assert (made, again) == (6, 0)
    with engine.connect() as conn:
        assert {"job_rows_2031_11", "job_rows_2031_12", "job_rows_2032_01",
                "charge_rows_2032_01"} <= _parts(conn)
        # The bounds: a job submitted at the last microsecond of a month goes in that one.
        bounds = conn.execute(text(
            "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class c"
            " WHERE c.relname = 'job_rows_2031_12'")).scalar()
    assert "2031-12-01 00:00:00+00" in bounds and "2032-01-01 00:00:00+00" in bounds
