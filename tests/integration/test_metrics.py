"""/metrics' registry (collector.web.metrics) over a real PostgreSQL.

Charges come from collecting the bundled export with the demo card, which posts them in
2026-11; the registry's clock is set inside that month. Expected amounts are worked out
by hand from the sacct lines (tests/fixtures/sacct-wide-header.psv) with the demo card
(collector/data/demo-rates.toml: per hour cpu 36, chemistry cpu 30, mem 3.6 per GiB, gpu
360; quantities rounded half-even to 6 places, each line's amount to 2 places):

physics (root's jobs 2-10 and 16 twice, bob's job 13; job 1 ran 0 s, 14 never started,
21 is still running and cards do not accrue):
  cpu  2 cpus x 11 s -> 0.006111 h x 36 = 0.22; 4 x 8 s -> 0.008889 = 0.32; 2 x 5 s -> 0.10;
       2 x 14 s -> 0.28; 6_1..6_5 (3..7 s) 0.03+0.04+0.05+0.06+0.07; 7 (2 s) 0.02;
       8 (1 s) 0.01; 9 (4 s) 0.04; 10 (76 s -> 0.021111 h) 0.76; 13 (4 s) 0.04;
       16 (4 s, 20 s) 0.04 + 0.20                                           = 2.28
  gpu  job 2: 1 x 11 s -> 0.003056 x 360 = 1.10; job 3: 2 x 8 s -> 0.004444 = 1.60;
       job 5: 1 x 14 s -> 0.003889 = 1.40                                   = 4.10
  mem  job 2: 1 GiB x 11 s -> 0.003056 x 3.6 = 0.011 -> 0.01; job 3: 2 GiB x 8 s -> 0.02;
       job 4: 5 s -> 0.001389 x 3.6 = 0.0050004 -> 0.01; job 5: 14 s -> 0.01;
       job 10: 100 MiB x 76 s -> 0.002062 x 3.6 = 0.0074 -> 0.01; the rest round to 0 = 0.06
chemistry (alice's job 11, bob's job 12; see tests/integration/test_pricing_cli.py):
  cpu 0.09 + 0.10 = 0.19; gpu 1.10; mem 0.00 + 0.00 = 0.00
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from datetime import datetime, timezone
from decimal import Decimal as D
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import text

from billing.records import QuarantinedRecord
from collector.health import Health
from collector.run_result import RunResult as PollReport
from collector.settings import Settings
from collector.slurm.nodes import parse_nodes
from collector.store import budgets as store_budgets
from collector.store import db as store_db
from collector.store import runs as store_runs
from collector.store.nodes import store_snapshot
from collector.web.metrics import build_registry, current_period
from tests.helpers import run_cli

UTC = timezone.utc
ROOT = Path(__file__).resolve().parents[2]
WIDE = ROOT / "tests" / "fixtures" / "sacct-wide-header.psv"
DEMO_CARD = ROOT / "collector" / "data" / "demo-rates.toml"
NODES = ROOT / "tests" / "fixtures" / "scontrol-show-node.txt"
MIB = 2**20

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC).timestamp()
SNAPSHOT_AT = datetime(2026, 11, 25, 11, 55, tzinfo=UTC)
WATERMARK = datetime(2026, 11, 25, 11, 50, tzinfo=UTC)


@pytest.fixture()
def settings() -> Settings:
    return Settings.load({"HPC_BILLING_CLUSTER": "lab"})


def collect(db_url: str, card: Path = DEMO_CARD) -> None:
    assert run_cli("collect", "--once", "--source", "file", "--input", str(WIDE),
                   "--rates", str(card), "--database-url", db_url) == 0


def populate(db_url: str, sessions) -> None:
    """The demo export priced, budgets, a watermark, quarantine and a node snapshot."""
    collect(db_url)
    with sessions() as s:
        store_budgets.set_budget(s, "physics", "2026-11", D("10"), "EUR")
        store_budgets.set_budget(s, "chemistry", "2026-11", D("2"), "EUR")
        store_budgets.set_budget(s, "nobody", "2026-11", D("0"), "EUR")
        store_budgets.set_budget(s, "physics", "2026-10", D("1"), "EUR")
        store_runs.set_watermark(s, "lab", store_runs.SACCT_STREAM, WATERMARK, None)
        run_id = store_runs.start_run(s, cluster="lab", source="sacct", kind="poll", window=None)
        store_runs.add_quarantined(s, run_id, [QuarantinedRecord(raw="x|y", reason="too few fields",
                                                                 source="sacct")] * 2, "lab")
        store_snapshot(s, "lab", SNAPSHOT_AT, parse_nodes(NODES.read_text().splitlines()))
        store_runs.ensure_cluster(s, "idle")
        s.commit()


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One collection of the registry: (sample name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in registry.collect() for s in metric.samples}


def value(got: dict, name: str, **labels: str) -> float | None:
    return got.get((name, tuple(sorted(labels.items()))))


def names(got: dict) -> set[str]:
    return {name for name, _ in got}


def build(sessions, health: Health, settings: Settings, **kwargs) -> CollectorRegistry:
    kwargs.setdefault("clock", lambda: NOW)
    return build_registry(sessions=sessions, health=health, settings=settings, **kwargs)


# ------------------------------------------------------------------------- promtool

def test_promtool_accepts_the_output(db_url, sessions, settings):
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing on CI: install Debian's 'prometheus' package "
                        "(apt-get install -y --no-install-recommends prometheus)")
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    populate(db_url, sessions)
    health = Health()
    registry = build(sessions, health, settings)
    health.poll_finished(PollReport(cluster="lab", outcome="ok", duration_s=3.5, source_s=1.25,
                                    records_read=40, inserted=22, jobs_priced=22, charge_lines=50))
    output = generate_latest(registry)
    assert b"hpcb_node_gpus{" in output and b"hpcb_charges_current_period{" in output
    checked = subprocess.run([promtool, "check", "metrics"], input=output, capture_output=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert checked.stdout.strip() == b"" and checked.stderr.strip() == b"", (
        "promtool lint findings:\n" + checked.stdout.decode() + checked.stderr.decode())


# --------------------------------------------------------------------------- values

def test_poll_counters_and_histograms(db_url, sessions, settings):
    health = Health(clock=lambda: 1_800_000_000.0)
    registry = build(sessions, health, settings)
    got = samples(registry)
    # The configured cluster's series exist at 0 before any poll.
    assert value(got, "hpcb_polls_total", cluster="lab", outcome="failed") == 0
    assert value(got, "hpcb_poll_duration_seconds_count", cluster="lab") == 0

    health.poll_finished(PollReport(cluster="lab", outcome="ok", duration_s=2.0, source_s=0.3,
                                    records_read=40, inserted=20, updated=2, unchanged=5,
                                    quarantined=1, jobs_priced=22, charge_lines=51))
    health.poll_finished(PollReport(cluster="lab", outcome="ok", duration_s=700.0, source_s=650.0,
                                    records_read=5, updated=1, unchanged=30))
    # A failed poll's window was rolled back: it counts as a poll, not as work.
    health.poll_finished(PollReport(cluster="lab", outcome="failed", duration_s=0.05, source_s=0.04,
                                    records_read=99, inserted=99, error="sacct: timed out"))
    got = samples(registry)
    assert value(got, "hpcb_polls_total", cluster="lab", outcome="ok") == 2
    assert value(got, "hpcb_polls_total", cluster="lab", outcome="failed") == 1
    assert value(got, "hpcb_records_read_total", cluster="lab") == 45
    assert value(got, "hpcb_jobs_written_total", cluster="lab", change="inserted") == 20
    assert value(got, "hpcb_jobs_written_total", cluster="lab", change="updated") == 3
    assert value(got, "hpcb_jobs_unchanged_total", cluster="lab") == 35
    assert value(got, "hpcb_records_quarantined_total", cluster="lab") == 1
    assert value(got, "hpcb_jobs_priced_total", cluster="lab") == 22
    assert value(got, "hpcb_charge_lines_written_total", cluster="lab") == 51
    assert value(got, "hpcb_poll_duration_seconds_count", cluster="lab") == 3
    assert value(got, "hpcb_poll_duration_seconds_sum", cluster="lab") == pytest.approx(702.05)
    assert value(got, "hpcb_poll_duration_seconds_bucket", cluster="lab", le="0.1") == 1
    assert value(got, "hpcb_poll_duration_seconds_bucket", cluster="lab", le="600.0") == 2
    assert value(got, "hpcb_poll_duration_seconds_bucket", cluster="lab", le="+Inf") == 3
    assert value(got, "hpcb_source_duration_seconds_bucket", cluster="lab", le="0.5") == 2
    # Health gauges.
    assert value(got, "hpcb_last_success_timestamp_seconds", cluster="lab") == 1_800_000_000.0
    assert value(got, "hpcb_start_time_seconds") == 1_800_000_000.0
    assert value(got, "hpcb_leader") == 0 and value(got, "hpcb_scheduler_up") == 0
    health.set_leader(True)
    health.bind_scheduler(lambda: True)
    got = samples(registry)
    assert value(got, "hpcb_leader") == 1 and value(got, "hpcb_scheduler_up") == 1
    # Another cluster's poll makes its own series; a second registry counts on its own.
    health.poll_finished(PollReport(cluster="other", outcome="ok", duration_s=1, source_s=1))
    assert value(samples(registry), "hpcb_polls_total", cluster="other", outcome="ok") == 1
    assert build(sessions, Health(), settings) is not registry


def test_partial_polls_count_their_work_and_their_own_outcome(db_url, sessions, settings):
    health = Health(clock=lambda: 1_800_000_000.0)
    registry = build(sessions, health, settings)
    assert value(samples(registry), "hpcb_polls_total", cluster="lab", outcome="partial") == 0
    # Partial: its jobs were stored (counted) and so were its quarantined records.
    health.poll_finished(PollReport(cluster="lab", outcome="partial", duration_s=1.0,
                                    source_s=0.5, records_read=10, inserted=9, quarantined=2,
                                    jobs_priced=9, charge_lines=18))
    # Failed with every record quarantined: the quarantine was stored, no job was.
    health.poll_finished(PollReport(cluster="lab", outcome="failed", duration_s=1.0,
                                    source_s=0.5, records_read=0, quarantined=3,
                                    error="nothing stored"))
    got = samples(registry)
    assert value(got, "hpcb_polls_total", cluster="lab", outcome="partial") == 1
    assert value(got, "hpcb_polls_total", cluster="lab", outcome="failed") == 1
    assert value(got, "hpcb_polls_total", cluster="lab", outcome="ok") == 0
    assert value(got, "hpcb_jobs_written_total", cluster="lab", change="inserted") == 9
    assert value(got, "hpcb_records_read_total", cluster="lab") == 10
    assert value(got, "hpcb_records_quarantined_total", cluster="lab") == 5
    assert value(got, "hpcb_charge_lines_written_total", cluster="lab") == 18
    # Neither was a success: no last-success time.
    assert value(got, "hpcb_last_success_timestamp_seconds", cluster="lab") is None


def test_a_listener_error_never_reaches_the_poll(db_url, sessions, settings):
    health = Health()
    registry = build(sessions, health, settings)
    # A negative count would make Counter.inc raise; the poll's finish must not.
    health.poll_finished(PollReport(cluster="lab", outcome="ok", duration_s=1, source_s=1,
                                    records_read=-5))
    assert value(samples(registry), "hpcb_polls_total", cluster="lab", outcome="ok") == 1


def test_database_gauges_equal_hand_computed_numbers(db_url, sessions, settings):
    populate(db_url, sessions)
    got = samples(build(sessions, Health(), settings))
    assert value(got, "hpcb_scrape_database_up") == 1
    assert value(got, "hpcb_lag_seconds", cluster="lab") == 600          # 12:00 - 11:50
    assert value(got, "hpcb_open_jobs", cluster="lab") == 1              # job 21 is running
    assert value(got, "hpcb_quarantine_records", cluster="lab") == 2
    # A known cluster with nothing open or quarantined reports 0, not nothing; it has no
    # sacct watermark (file imports move none), so no lag.
    assert value(got, "hpcb_open_jobs", cluster="idle") == 0
    assert value(got, "hpcb_quarantine_records", cluster="idle") == 0
    assert value(got, "hpcb_lag_seconds", cluster="idle") is None

    charges = {(dict(k)["account"], dict(k)["resource"]): v for (n, k), v in got.items()
               if n == "hpcb_charges_current_period"}
    assert charges == {("physics", "cpu"): 2.28, ("physics", "gpu"): 4.10, ("physics", "mem"): 0.06,
                       ("chemistry", "cpu"): 0.19, ("chemistry", "gpu"): 1.10,
                       ("chemistry", "mem"): 0.0}
    assert value(got, "hpcb_charges_current_period", cluster="lab", account="physics",
                 resource="gpu", currency="EUR") == 4.10
    # Budgets of the current period only; a budget of 0 has no ratio.
    # physics (2.28 + 4.10 + 0.06) / 10; chemistry (0.19 + 1.10) / 2.
    ratios = {dict(k)["account"]: v for (n, k), v in got.items() if n == "hpcb_budget_used_ratio"}
    assert ratios == {"physics": pytest.approx(0.644), "chemistry": pytest.approx(0.645)}
    assert value(got, "hpcb_budget_used_ratio", account="physics", period="2026-11") == pytest.approx(0.644)

    # Node capacity of the newest snapshot (see tests/integration/test_nodes.py for the sums).
    assert value(got, "hpcb_node_cpus", cluster="lab", partition="batch", state="total") == 168
    assert value(got, "hpcb_node_cpus", cluster="lab", partition="batch", state="allocated") == 82
    assert value(got, "hpcb_node_cpus", cluster="lab", partition="gpu", state="total") == 126
    assert value(got, "hpcb_node_memory_bytes", cluster="lab", partition="debug", state="total") == 16000 * MIB
    assert value(got, "hpcb_node_memory_bytes", cluster="lab", partition="debug", state="allocated") == 1024 * MIB
    assert value(got, "hpcb_node_gpus", cluster="lab", partition="gpu", type="a100", state="total") == 6
    assert value(got, "hpcb_node_gpus", cluster="lab", partition="gpu", type="a100", state="allocated") == 4
    assert value(got, "hpcb_node_gpus", cluster="lab", partition="gpu", type="v100", state="allocated") == 0
    assert value(got, "hpcb_node_gpus", cluster="lab", partition="batch", type="untyped", state="total") == 4
    assert value(got, "hpcb_node_snapshot_timestamp_seconds", cluster="lab") == SNAPSHOT_AT.timestamp()


def test_the_current_period_follows_the_clock_and_the_card_zone(db_url, sessions, settings, tmp_path):
    # Prices with a card whose periods begin in Berlin (the export's jobs are mid-November
    # there too), so the current period is November until 23:00 UTC on 30 November.
    berlin = tmp_path / "berlin.toml"
    berlin.write_text(DEMO_CARD.read_text().replace('timezone = "UTC"', 'timezone = "Europe/Berlin"'))
    collect(db_url, berlin)

    def physics_cpu(clock_at: datetime, **kwargs) -> float | None:
        got = samples(build(sessions, Health(), settings, clock=clock_at.timestamp, **kwargs))
        return value(got, "hpcb_charges_current_period", cluster="lab", account="physics",
                     resource="cpu", currency="EUR")

    assert physics_cpu(datetime(2026, 11, 30, 22, 30, tzinfo=UTC)) == 2.28
    assert physics_cpu(datetime(2026, 11, 30, 23, 30, tzinfo=UTC)) is None       # December in Berlin
    assert physics_cpu(datetime(2026, 11, 30, 23, 30, tzinfo=UTC), period_timezone="UTC") == 2.28
    assert physics_cpu(datetime(2026, 10, 15, tzinfo=UTC)) is None
    assert current_period(datetime(2026, 12, 31, 23, 30, tzinfo=UTC).timestamp(), UTC) == "2026-12"


def test_database_down_the_scrape_still_answers(settings):
    engine = store_db.make_engine("postgresql+psycopg2://postgres@127.0.0.1:1/nothing")
    try:
        health = Health(clock=lambda: 1_800_000_000.0)
        registry = build(store_db.session_factory(engine), health, settings)
        health.poll_finished(PollReport(cluster="lab", outcome="ok", duration_s=1, source_s=1))
        got = samples(registry)
        assert value(got, "hpcb_scrape_database_up") == 0
        assert value(got, "hpcb_polls_total", cluster="lab", outcome="ok") == 1
        assert value(got, "hpcb_last_success_timestamp_seconds", cluster="lab") == 1_800_000_000.0
        assert "hpcb_open_jobs" in {m.name for m in registry.collect()}    # metadata, no samples
        assert not any(name == "hpcb_open_jobs" for name, _ in got)
        assert b"hpcb_scrape_database_up 0.0" in generate_latest(registry)
    finally:
        engine.dispose()

    # A session factory that cannot even make a session.
    def broken():
        raise RuntimeError("no pool")
    got = samples(build(broken, Health(), settings))
    assert value(got, "hpcb_scrape_database_up") == 0


def test_a_slow_read_times_out_and_the_others_still_report(db_url, sessions, settings, engine):
    populate(db_url, sessions)
    locked = threading.Event()
    release = threading.Event()

    def hold_lock() -> None:
        with engine.connect() as conn:
            conn.execute(text("LOCK TABLE watermarks IN ACCESS EXCLUSIVE MODE"))
            locked.set()
            release.wait(30)
            conn.rollback()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(30)
        got = samples(build(sessions, Health(), settings, db_timeout_s=0.3))
    finally:
        release.set()
        holder.join(30)
    assert value(got, "hpcb_scrape_database_up") == 0
    assert value(got, "hpcb_lag_seconds", cluster="lab") is None            # timed out
    assert value(got, "hpcb_open_jobs", cluster="lab") == 1                  # still read
    assert value(got, "hpcb_node_cpus", cluster="lab", partition="batch", state="total") == 168
    assert value(got, "hpcb_charges_current_period", cluster="lab", account="chemistry",
                 resource="gpu", currency="EUR") == 1.10
