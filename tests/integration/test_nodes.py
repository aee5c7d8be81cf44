"""Node snapshots on a real PostgreSQL: storing, newest capacity, and daily utilisation.

Expected figures are worked out by hand from the fixture lines and the snapshot times.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal as D
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from collector.slurm.nodes import NodeInfo, parse_nodes, read_nodes
from collector.store import db as store_db
from collector.store.nodes import (PartitionCapacity, UtilisationDay, latest_capacity,
                                   node_utilisation_daily, store_snapshot)
from tests.helpers import executable_wrapper

UTC = timezone.utc
ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "scontrol-show-node.txt"
FAKE_SCONTROL = ROOT / "tests" / "fakes" / "fake_scontrol.py"
MIB, GIB = 2**20, 2**30
T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def fixture_nodes() -> list[NodeInfo]:
    return parse_nodes(FIXTURE.read_text().splitlines())


def node(name="n1", partitions=("p",), cpus=(10, 4), mem_gib=(8, 2), gpus=(2, 1),
         state="MIXED") -> NodeInfo:
    return NodeInfo(name=name, partitions=tuple(partitions), state=state, state_raw=state,
                    cpus_total=cpus[0], cpus_alloc=cpus[1],
                    mem_total_bytes=mem_gib[0] * GIB, mem_alloc_bytes=mem_gib[1] * GIB,
                    gpus_total=(("a100", gpus[0]),), gpus_alloc=(("a100", gpus[1]),))


# -------------------------------------------------------------------------- snapshots

def test_store_snapshot_round_trip_and_idempotence(session):
    nodes = fixture_nodes()
    assert store_snapshot(session, "lab", T0, nodes) == 7
    assert store_snapshot(session, "lab", T0, nodes) == 0          # same snapshot again
    row = session.execute(text(
        "SELECT taken_at, partitions, state, state_raw, cpus_total, cpus_alloc, mem_total_bytes,"
        " mem_alloc_bytes, gpus_total, gpus_alloc FROM node_snapshots WHERE node = 'gpu01'")).one()
    assert tuple(row) == (T0, ["gpu"], "MIXED", "MIXED", 62, 16, 515000 * MIB, 65536 * MIB,
                          {"a100": 2, "v100": 2}, {"a100": 1, "v100": 0})
    assert session.execute(text("SELECT name FROM clusters")).scalars().all() == ["lab"]
    assert store_snapshot(session, "lab", T0, []) == 0


def test_store_snapshot_refuses_bad_input(session):
    with pytest.raises(ValueError, match="timezone-aware"):
        store_snapshot(session, "lab", datetime(2026, 11, 22), [node()])
    with pytest.raises(ValueError, match="non-negative"):
        store_snapshot(session, "lab", T0, [node(cpus=(-1, 0))])
    with pytest.raises(ValueError, match="cluster"):
        store_snapshot(session, "", T0, [node()])


def test_latest_capacity_sums_the_newest_snapshot_per_partition(session):
    # An older snapshot with other numbers must not count.
    store_snapshot(session, "lab", T0 - timedelta(minutes=5), [node("vm", ("batch", "debug"), cpus=(99, 99))])
    store_snapshot(session, "lab", T0, fixture_nodes())
    store_snapshot(session, "other", T0 - timedelta(hours=1), [node("x1", ("p",))])
    caps = {(c.cluster, c.partition): c for c in latest_capacity(session)}
    assert list(caps) == [("lab", "batch"), ("lab", "debug"), ("lab", "gpu"), ("other", "p")]
    # batch: vm 8/2, gpu02 64/48, cn001 32/0, cn002 32/32, cn003 32/0 (spare01 is in no
    # partition); memory MB 16000+515000+3x192000 / 1024+393216+0+122880+0.
    assert caps[("lab", "batch")] == PartitionCapacity(
        cluster="lab", partition="batch", taken_at=T0, nodes=5, cpus_total=168, cpus_alloc=82,
        mem_total_bytes=1_107_000 * MIB, mem_alloc_bytes=517_120 * MIB,
        gpus_total=(("a100", 4), ("untyped", 4)), gpus_alloc=(("a100", 3), ("untyped", 1)))
    # debug: only vm. gpu: gpu01 (62/16, a100 2/1, v100 2/0) and gpu02 (64/48, a100 4/3).
    assert (caps[("lab", "debug")].cpus_total, caps[("lab", "debug")].gpus_alloc) == (8, (("untyped", 1),))
    gpu = caps[("lab", "gpu")]
    assert (gpu.nodes, gpu.cpus_total, gpu.cpus_alloc) == (2, 126, 64)
    assert (gpu.mem_total_bytes, gpu.mem_alloc_bytes) == (1_030_000 * MIB, 458_752 * MIB)
    assert (gpu.gpus_total, gpu.gpus_alloc) == ((("a100", 6), ("v100", 2)), (("a100", 4), ("v100", 0)))
    assert caps[("other", "p")].taken_at == T0 - timedelta(hours=1)
    assert [c.partition for c in latest_capacity(session, "other")] == ["p"]
    assert latest_capacity(session, "nope") == []


def test_snapshot_from_the_fake_scontrol(session, tmp_path):
    scontrol = executable_wrapper(tmp_path / "bin", "scontrol", FAKE_SCONTROL)
    nodes = read_nodes(str(scontrol), timeout_s=30, cluster="lab")
    assert store_snapshot(session, "lab", T0, nodes) == 7
    assert {c.partition for c in latest_capacity(session, "lab")} == {"batch", "debug", "gpu"}


# ------------------------------------------------------------------------ utilisation

def day_row(rows: list[UtilisationDay], day: date, partition: str = "p") -> UtilisationDay:
    return next(r for r in rows if r.day == day and r.partition == partition)


def test_two_snapshots_30_minutes_apart_across_midnight(session):
    # A at 23:45 (10 cpus/4 alloc, 8/2 GiB, 2/1 GPUs), B at 00:15 (everything allocated).
    # Median interval 30 min -> hold limit 60 min: A holds 23:45-00:15 (until B),
    # B holds 00:15-01:15 (no later snapshot).
    a, b = datetime(2026, 10, 31, 23, 45, tzinfo=UTC), datetime(2026, 11, 1, 0, 15, tzinfo=UTC)
    store_snapshot(session, "c1", a, [node(partitions=("p", "q"))])
    store_snapshot(session, "c1", b, [node(partitions=("p", "q"), cpus=(10, 10), mem_gib=(8, 8), gpus=(2, 2))])
    rows = node_utilisation_daily(session, cluster="c1", since=date(2026, 10, 31), until=date(2026, 11, 2))
    assert [(r.day, r.partition) for r in rows] == [
        (date(2026, 10, 31), "p"), (date(2026, 10, 31), "q"), (date(2026, 11, 1), "p"), (date(2026, 11, 1), "q")]
    # Oct 31: A for 15 min = 0.25 h.
    assert day_row(rows, date(2026, 10, 31)) == UtilisationDay(
        day=date(2026, 10, 31), cluster="c1", partition="p",
        cpu_hours_available=D("2.5"), cpu_hours_allocated=D("1"),
        gpu_hours_available=D("0.5"), gpu_hours_allocated=D("0.25"),
        mem_gib_hours_available=D("2"), mem_gib_hours_allocated=D("0.5"),
        cpu_fraction=D("0.4"), gpu_fraction=D("0.5"), mem_fraction=D("0.25"))
    # Nov 1: A for 0.25 h + B for 1 h. cpu 10x1.25 = 12.5 available, 4x0.25 + 10x1 = 11
    # allocated (0.88); gpu 2.5 / 0.25 + 2 = 2.25 (0.9); mem 10 / 0.5 + 8 = 8.5 (0.85).
    nov1 = day_row(rows, date(2026, 11, 1), "q")     # a node counts in both partitions
    assert (nov1.cpu_hours_available, nov1.cpu_hours_allocated, nov1.cpu_fraction) == (D("12.5"), D("11"), D("0.88"))
    assert (nov1.gpu_hours_available, nov1.gpu_hours_allocated, nov1.gpu_fraction) == (D("2.5"), D("2.25"), D("0.9"))
    assert (nov1.mem_gib_hours_available, nov1.mem_gib_hours_allocated, nov1.mem_fraction) == (
        D("10"), D("8.5"), D("0.85"))
    assert day_row(rows, date(2026, 11, 1), "p") == replace(nov1, partition="p")

    # until is exclusive; a snapshot before since still holds into the range.
    only_oct = node_utilisation_daily(session, cluster="c1", since=date(2026, 10, 31), until=date(2026, 11, 1))
    assert {r.day for r in only_oct} == {date(2026, 10, 31)}
    only_nov = node_utilisation_daily(session, cluster="c1", since=date(2026, 11, 1), until=date(2026, 11, 2))
    assert day_row(only_nov, date(2026, 11, 1)).cpu_hours_available == D("12.5")
    assert node_utilisation_daily(session, cluster="c1", since=date(2026, 11, 5), until=date(2026, 11, 6)) == []
    assert node_utilisation_daily(session, cluster="other", since=date(2026, 10, 31), until=date(2026, 11, 2)) == []
    # The SQL function Grafana calls gives the same numbers.
    grafana = session.execute(text(
        "SELECT day, partition, cpu_hours_allocated FROM node_utilisation_daily('2026-10-31', '2026-11-02')"
        " WHERE cluster = 'c1' ORDER BY day, partition")).all()
    assert [tuple(r) for r in grafana] == [(r.day, r.partition, r.cpu_hours_allocated) for r in rows]


def test_an_outage_does_not_invent_capacity(session):
    # Every 10 minutes from 08:00 to 09:00, then nothing until 12:00: the median interval
    # is 10 min, so 09:00 holds 20 min. 08:00-09:20 = 80 min of 10 cpus, plus 12:00's
    # snapshot held 20 min = 100 min in all = 16.666667 cpu-hours (not 4 h 20 min worth).
    times = [datetime(2026, 11, 3, 8, m, tzinfo=UTC) for m in range(0, 60, 10)]
    times += [datetime(2026, 11, 3, 9, 0, tzinfo=UTC), datetime(2026, 11, 3, 12, 0, tzinfo=UTC)]
    for t in times:
        store_snapshot(session, "c1", t, [node(cpus=(10, 5))])
    (row,) = node_utilisation_daily(session, cluster="c1", since=date(2026, 11, 3), until=date(2026, 11, 4))
    assert (row.cpu_hours_available, row.cpu_hours_allocated, row.cpu_fraction) == (
        D("16.666667"), D("8.333333"), D("0.5"))
    # An explicit hold limit of 1 h: 08:00-09:00 (60 min) + 09:00-10:00 + 12:00-13:00.
    (row,) = node_utilisation_daily(session, cluster="c1", since=date(2026, 11, 3), until=date(2026, 11, 4),
                                    max_hold=timedelta(hours=1))
    assert row.cpu_hours_available == D("30")


def test_one_snapshot_holds_an_hour_and_never_past_now(session):
    store_snapshot(session, "c1", datetime(2026, 11, 4, 6, 0, tzinfo=UTC), [node(gpus=(0, 0))])
    (row,) = node_utilisation_daily(session, cluster="c1", since=date(2026, 11, 4), until=date(2026, 11, 5))
    assert (row.cpu_hours_available, row.gpu_hours_available, row.gpu_fraction) == (D("10"), D("0"), None)
    # A hold never exceeds one day: 06:00 to midnight (18 h) and on to 06:00 (6 h).
    rows = node_utilisation_daily(session, cluster="c1", since=date(2026, 11, 4), until=date(2026, 11, 7),
                                  max_hold=timedelta(days=3))
    assert [(r.day, r.cpu_hours_available) for r in rows] == [
        (date(2026, 11, 4), D("180")), (date(2026, 11, 5), D("60"))]

    recent = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=6)
    store_snapshot(session, "c2", recent, [node()])
    session.commit()   # now() below is a later transaction's start
    today = recent.date()
    rows = node_utilisation_daily(session, cluster="c2", since=today - timedelta(days=1),
                                  until=today + timedelta(days=2))
    held_h = sum(r.cpu_hours_available for r in rows) / 10
    assert D("0.1") <= held_h < D("0.2")                 # about 6 minutes, not an hour


def test_utilisation_argument_checks(session):
    with pytest.raises(TypeError):
        node_utilisation_daily(session, cluster=None, since=datetime(2026, 11, 1, tzinfo=UTC),
                               until=date(2026, 11, 2))
    with pytest.raises(ValueError):
        node_utilisation_daily(session, cluster=None, since=date(2026, 11, 2), until=date(2026, 11, 1))
    assert node_utilisation_daily(session, cluster=None, since=date(2026, 11, 2), until=date(2026, 11, 2)) == []


# ------------------------------------------------------------------------- migration

def test_migration_0004_up_and_down(fresh_database_url):
    engine = store_db.make_engine(fresh_database_url)
    try:
        store_db.migrate(engine, "0004")
        with engine.connect() as conn:
            assert "node_snapshots" in inspect(conn).get_table_names()
            assert "ix_jobs_cluster_open" in {i["name"] for i in inspect(conn).get_indexes("jobs")}
        store_db.downgrade(engine, "0003")
        with engine.connect() as conn:
            assert "node_snapshots" not in inspect(conn).get_table_names()
            assert "ix_jobs_cluster_open" not in {i["name"] for i in inspect(conn).get_indexes("jobs")}
            assert conn.execute(text("SELECT count(*) FROM pg_proc WHERE proname = 'node_utilisation_daily'")
                                ).scalar() == 0
        store_db.migrate(engine, "0004")
    finally:
        engine.dispose()
