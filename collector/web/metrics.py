"""Prometheus metrics of the collector: ``build_registry`` makes the registry ``/metrics`` serves.

Design notes: docs/design/web.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from billing.rates import RateCardError, load_rate_card
from collector.health import Health
from collector.run_result import OUTCOMES, RunResult
from collector.settings import Settings
from collector.store import audit as store_audit
from collector.store import budgets as store_budgets
from collector.store import nodes as store_nodes
from collector.store import reports as store_reports
from collector.store import scrape as store_scrape

log = logging.getLogger(__name__)


# 0.1 s .. 10 min: a small poll takes well under a second, a large sacct window minutes,
# and sacct's default timeout (HPC_BILLING_SACCT_TIMEOUT) is 5 min.
DURATION_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# Each database read of a scrape may take this long, and all of them together
# DB_BUDGET_S (Prometheus' default scrape timeout is 10 s).
DB_TIMEOUT_S = 1.0
DB_BUDGET_S = 5.0

# Every cluster's poll series exist from the start, one per outcome.
POLL_OUTCOMES = OUTCOMES

# SQLSTATE query_canceled: the statement timeout fired (the database itself is fine).
_QUERY_CANCELED = "57014"


def current_period(now_s: float, tz: tzinfo) -> str:
    """The billing period 'YYYY-MM' that the instant ``now_s`` (epoch) falls in, in ``tz``."""
    local = datetime.fromtimestamp(now_s, tz)
    return f"{local.year:04d}-{local.month:02d}"


# ------------------------------------------------------------------ poll counters

class _PollMetrics:
    """The counters and histograms fed from RunResults (source 1 in the module doc)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ("cluster",)) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, ("cluster",), buckets=DURATION_BUCKETS_S,
                             registry=registry)

        self.polls = counter("hpcb_polls_total",
                             "Finished polls, by outcome (ok; partial: some records "
                             "quarantined, the rest stored; failed: nothing stored).",
                             ("cluster", "outcome"))
        self.records_read = counter("hpcb_records_read_total",
                                    "Accounting records (job and step lines) read by stored polls.")
        self.jobs_written = counter("hpcb_jobs_written_total",
                                    "Jobs stored by polls, by change (inserted, updated).",
                                    ("cluster", "change"))
        self.jobs_unchanged = counter("hpcb_jobs_unchanged_total",
                                      "Jobs re-read by polls and found unchanged (not rewritten).")
        self.quarantined = counter("hpcb_records_quarantined_total",
                                   "Records that did not parse and were quarantined by polls.")
        self.jobs_priced = counter("hpcb_jobs_priced_total", "Jobs priced by polls.")
        self.charge_lines = counter("hpcb_charge_lines_written_total",
                                    "Charge lines written by polls.")
        self.poll_duration = histogram("hpcb_poll_duration_seconds",
                                       "Wall time of one poll (fetch, parse, store, price).")
        self.source_duration = histogram("hpcb_source_duration_seconds",
                                         "Time one poll spent in its source (sacct, slurmrestd ...).")

    def touch(self, cluster: str) -> None:
        """Create a cluster's series at 0, so rate() and absent() work before any poll."""
        for outcome in POLL_OUTCOMES:
            self.polls.labels(cluster, outcome)
        for change in ("inserted", "updated"):
            self.jobs_written.labels(cluster, change)
        for metric in (self.records_read, self.jobs_unchanged, self.quarantined,
                       self.jobs_priced, self.charge_lines, self.poll_duration,
                       self.source_duration):
            metric.labels(cluster)

    def observe(self, report: RunResult) -> None:
        """The Health listener. Never raises: it runs inside the scheduler's poll job."""
        try:
            cluster = report.cluster_label
            self.polls.labels(cluster, report.outcome).inc()
            self.poll_duration.labels(cluster).observe(max(0.0, report.duration_s))
            self.source_duration.labels(cluster).observe(max(0.0, report.source_s))
            if report.quarantined > 0:
                self.quarantined.labels(cluster).inc(report.quarantined)
            if report.outcome not in ("ok", "partial"):
                return
            for metric, value in ((self.records_read.labels(cluster), report.records_read),
                                  (self.jobs_written.labels(cluster, "inserted"), report.inserted),
                                  (self.jobs_written.labels(cluster, "updated"), report.updated),
                                  (self.jobs_unchanged.labels(cluster), report.unchanged),
                                  (self.jobs_priced.labels(cluster), report.jobs_priced),
                                  (self.charge_lines.labels(cluster), report.charge_lines)):
                if value > 0:
                    metric.inc(value)
        except Exception:  # metrics must never break a poll
            log.exception("metrics: could not count a poll report")


# -------------------------------------------------------------------- health gauges

class _HealthCollector(Collector):
    """Gauges read from Health at scrape time (source 2): no I/O."""

    def __init__(self, health: Health) -> None:
        self._health = health

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        snap = self._health.snapshot()
        last = GaugeMetricFamily("hpcb_last_success_timestamp_seconds",
                                 "When the last successful poll of the cluster finished (epoch).",
                                 labels=["cluster"])
        for cluster, at in sorted(snap.last_success.items()):
            last.add_metric([cluster], at)
        yield last
        yield GaugeMetricFamily("hpcb_leader",
                                "1 when this collector holds the leader lock and polls, else 0.",
                                value=1 if snap.leader else 0)
        yield GaugeMetricFamily("hpcb_scheduler_up", "1 when the poll scheduler is running, else 0.",
                                value=1 if snap.scheduler_alive else 0)
        yield GaugeMetricFamily("hpcb_start_time_seconds", "When this process started (epoch).",
                                value=snap.started_at)


# ------------------------------------------------------------------ database gauges

class _Families:
    """The database gauges of one scrape (created empty, filled by the reads that work)."""

    def __init__(self) -> None:
        g = GaugeMetricFamily
        self.lag = g("hpcb_lag_seconds",
                     "Seconds from the newest stored sacct watermark (end of the last stored "
                     "window) to now.", labels=["cluster"])
        self.open_jobs = g("hpcb_open_jobs", "Stored jobs that are not final (pending, running ...).",
                           labels=["cluster"])
        self.charges = g("hpcb_charges_current_period",
                         "Sum of the charge amounts posted in the current billing period, in the "
                         "currency's units.", labels=["cluster", "account", "resource", "currency"])
        self.budget = g("hpcb_budget_used_ratio",
                        "Charges posted in the period / the account's budget for it (current "
                        "period; budgets of 0 are left out).", labels=["account", "period"])
        self.quarantine = g("hpcb_quarantine_records", "Quarantined records stored.",
                            labels=["cluster"])
        self.cpus = g("hpcb_node_cpus",
                      "CPUs of the partition's nodes in the newest node snapshot (state: total, "
                      "allocated); a node in two partitions counts in both.",
                      labels=["cluster", "partition", "state"])
        self.gpus = g("hpcb_node_gpus",
                      "GPUs of the partition's nodes in the newest node snapshot, by type "
                      "(untyped: 'untyped'; state: total, allocated).",
                      labels=["cluster", "partition", "type", "state"])
        self.memory = g("hpcb_node_memory_bytes",
                        "Memory of the partition's nodes in the newest node snapshot (state: "
                        "total, allocated).", labels=["cluster", "partition", "state"])
        self.snapshot = g("hpcb_node_snapshot_timestamp_seconds",
                          "When the cluster's newest node snapshot was taken (epoch).",
                          labels=["cluster"])
        self.audit = g("hpcb_audit_entries",
                       "The newest audit trail entry's seq (0: empty). It only grows: a drop "
                       "means entries were removed (alert HpcBillingAuditTrailShrank).")

    def all(self) -> list[Metric]:
        return [self.lag, self.open_jobs, self.charges, self.budget, self.quarantine,
                self.cpus, self.gpus, self.memory, self.snapshot, self.audit]


class _DatabaseCollector(Collector):
    """Gauges read from PostgreSQL at scrape time (source 3 in the module doc)."""

    def __init__(self, sessions: Callable[[], Any], *, clock: Callable[[], float],
                 period_tz: tzinfo | None, db_timeout_s: float, db_budget_s: float) -> None:
        self._sessions = sessions
        self._clock = clock
        self._period_tz = period_tz
        self._db_timeout_s = db_timeout_s
        self._db_budget_s = db_budget_s
        self._card_tz: tuple[int, tzinfo] | None = None    # (card id, its zone), cached
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        return []

    # The reads, in order of importance (a timeout late in the budget loses the last ones).
    def _reads(self, fam: _Families, now: float) -> list[tuple[str, Callable[[Any], None]]]:
        def lag(session: Any) -> None:
            for cluster, mark in sorted(store_scrape.sacct_watermarks(session).items()):
                fam.lag.add_metric([cluster], now - mark.timestamp())

        def open_jobs(session: Any) -> None:
            for cluster, count in sorted(store_scrape.open_jobs(session).items()):
                fam.open_jobs.add_metric([cluster], count)

        def quarantine(session: Any) -> None:
            for cluster, count in sorted(store_scrape.quarantine_counts(session).items(),
                                         key=lambda kv: kv[0] or ""):
                fam.quarantine.add_metric([cluster or ""], count)

        def capacity(session: Any) -> None:
            stamps: dict[str, float] = {}
            for cap in store_nodes.latest_capacity(session):
                key = [cap.cluster, cap.partition]
                fam.cpus.add_metric([*key, "total"], cap.cpus_total)
                fam.cpus.add_metric([*key, "allocated"], cap.cpus_alloc)
                fam.memory.add_metric([*key, "total"], cap.mem_total_bytes)
                fam.memory.add_metric([*key, "allocated"], cap.mem_alloc_bytes)
                total, allocated = dict(cap.gpus_total), dict(cap.gpus_alloc)
                for gtype in sorted(total.keys() | allocated.keys()):
                    fam.gpus.add_metric([*key, gtype, "total"], total.get(gtype, 0))
                    fam.gpus.add_metric([*key, gtype, "allocated"], allocated.get(gtype, 0))
                stamps[cap.cluster] = cap.taken_at.timestamp()
            for cluster, at in sorted(stamps.items()):
                fam.snapshot.add_metric([cluster], at)

        def money(session: Any) -> None:
            period = current_period(now, self._zone(session))
            for row in store_reports.charge_report(session, period=period,
                                                   group_by=["cluster", "account"]):
                for resource, total in sorted(row.resources.items()):
                    fam.charges.add_metric([row["cluster"] or "", row["account"] or "",
                                            resource, row.currency], float(total.amount))
            for budget in store_budgets.list_budgets(session, period):
                if budget.used_fraction is not None:
                    fam.budget.add_metric([budget.account, budget.period],
                                          float(budget.used_fraction))

        def audit(session: Any) -> None:
            head = store_audit.head(session)
            fam.audit.add_metric([], head.seq if head is not None else 0)

        return [("lag", lag), ("open jobs", open_jobs), ("quarantine", quarantine),
                ("audit trail", audit), ("node capacity", capacity),
                ("charges and budgets", money)]

    def _zone(self, session: Any) -> tzinfo:
        if self._period_tz is not None:
            return self._period_tz
        card = store_scrape.newest_run_card(session)
        if card is None:
            return UTC
        with self._lock:
            if self._card_tz is not None and self._card_tz[0] == card[0]:
                return self._card_tz[1]
        zone: tzinfo = UTC
        try:
            zone = ZoneInfo(load_rate_card(card[1]).timezone)
        except (RateCardError, ZoneInfoNotFoundError, ValueError):
            log.warning("metrics: rate card %d has no usable timezone; periods in UTC", card[0])
        with self._lock:
            self._card_tz = (card[0], zone)
        return zone

    def collect(self) -> Iterator[Metric]:
        fam = _Families()
        now = self._clock()
        ok = self._read_all(fam, now)
        yield from fam.all()
        yield GaugeMetricFamily("hpcb_scrape_database_up",
                                "1 when every database read of this scrape succeeded, else 0.",
                                value=1 if ok else 0)

    def _read_all(self, fam: _Families, now: float) -> bool:
        deadline = time.monotonic() + self._db_budget_s
        ok = True
        try:
            session = self._sessions()
        except Exception as exc:  # noqa: BLE001 - a scrape must never raise
            log.warning("metrics: no database session: %s: %s", type(exc).__name__, exc)
            return False
        try:
            for name, read in self._reads(fam, now):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("metrics: database budget of %ss spent before reading %s",
                                self._db_budget_s, name)
                    return False
                try:
                    with session.begin_nested():
                        store_scrape.limit_statements(session, min(self._db_timeout_s, remaining))
                        read(session)
                except Exception as exc:  # noqa: BLE001 - a scrape must never raise
                    ok = False
                    log.warning("metrics: reading %s failed: %s: %s", name, type(exc).__name__,
                                str(exc).splitlines()[0] if str(exc) else "")
                    if getattr(getattr(exc, "orig", None), "sqlstate", None) != _QUERY_CANCELED:
                        return False   # the database is gone: do not try every read
            return ok
        finally:
            try:
                session.rollback()
                session.close()
            except Exception:  # noqa: BLE001, S110 - closing a dead session must not fail the scrape
                pass


# ----------------------------------------------------------------------- registry

def _zone(value: str | tzinfo | None) -> tzinfo | None:
    if value is None or isinstance(value, tzinfo):
        return value
    return ZoneInfo(value)


def build_registry(*, sessions: Callable[[], Any], health: Health, settings: Settings,
                   clock: Callable[[], float] | None = None,
                   period_timezone: str | tzinfo | None = None,
                   db_timeout_s: float = DB_TIMEOUT_S,
                   db_budget_s: float = DB_BUDGET_S) -> CollectorRegistry:
    """A new registry with every hpc-billing metric, and a listener on ``health``.

    ``sessions`` opens a database session (a sessionmaker); ``clock`` gives now as epoch
    seconds (default: ``health.now``) for the lag and the current period;
    ``period_timezone`` fixes the zone periods begin in (default: the rate card's, see the
    module doc); ``db_timeout_s`` bounds each database read of a scrape and
    ``db_budget_s`` all of them.
    """
    if db_timeout_s <= 0 or db_budget_s <= 0:
        raise ValueError(f"db_timeout_s and db_budget_s must be positive, got "
                         f"{db_timeout_s!r} and {db_budget_s!r}")
    registry = CollectorRegistry(auto_describe=False)
    polls = _PollMetrics(registry)
    if settings.cluster:
        polls.touch(settings.cluster)
    health.add_listener(polls.observe)
    registry.register(_HealthCollector(health))
    registry.register(_DatabaseCollector(sessions, clock=clock or health.now,
                                         period_tz=_zone(period_timezone),
                                         db_timeout_s=db_timeout_s, db_budget_s=db_budget_s))
    return registry


__all__ = ["DB_BUDGET_S", "DB_TIMEOUT_S", "DURATION_BUCKETS_S", "build_registry", "current_period"]
