"""Writes hpc-billing's Grafana dashboards (deploy/grafana/dashboards/*.json).

    python deploy/grafana/make_dashboards.py            # rewrite the JSON files
    python deploy/grafana/make_dashboards.py --check    # exit 1 if a file is out of date

The JSON files are what Grafana provisions; this script is their source, so that panel
ids, grid positions and datasource references stay consistent. Edit here, run it, commit
both. tests/deploy/test_grafana.py checks the files are up to date, that every SQL query
runs as the read-only role against the migrated schema, and every PromQL expression
parses and names metrics the collector exports.

Money and usage come from PostgreSQL, only through the views of schema ``reporting``
(migration 0005); collector health from Prometheus. Money is never summed across
currencies: every money query groups by currency.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"

PG = {"type": "grafana-postgresql-datasource", "uid": "hpcb-postgres"}
PROM = {"type": "prometheus", "uid": "hpcb-prometheus"}

FILTER_CLUSTER_ACCOUNT = "cluster IN ($cluster) AND account IN ($account)"


class Board:
    """One dashboard: panels are laid out left to right, rows of 24 grid units."""

    def __init__(self, uid: str, title: str, description: str) -> None:
        self.uid, self.title, self.description = uid, title, description
        self.panels: list[dict[str, Any]] = []
        self.variables: list[dict[str, Any]] = []
        self._x = self._y = self._row_h = 0

    def _place(self, w: int, h: int) -> dict[str, int]:
        if self._x + w > 24:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        pos = {"x": self._x, "y": self._y, "w": w, "h": h}
        self._x += w
        self._row_h = max(self._row_h, h)
        return pos

    def panel(self, kind: str, title: str, description: str, datasource: dict[str, str],
              targets: list[dict[str, Any]], *, w: int = 12, h: int = 8, unit: str | None = None,
              options: dict[str, Any] | None = None,
              overrides: list[dict[str, Any]] | None = None) -> None:
        defaults: dict[str, Any] = {}
        if unit:
            defaults["unit"] = unit
        for ref, target in zip("ABCDEFGH", targets):
            target.setdefault("refId", ref)
            target["datasource"] = datasource
        self.panels.append({
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": datasource,
            "gridPos": self._place(w, h),
            "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
            "options": options or {},
        })

    def sql(self, kind: str, title: str, description: str, query: str, *,
            fmt: str = "table", **kw: Any) -> None:
        target = {"editorMode": "code", "format": fmt, "rawQuery": True,
                  "rawSql": " ".join(query.split())}
        self.panel(kind, title, description, PG, [target], **kw)

    def promql(self, kind: str, title: str, description: str, *exprs: tuple[str, str],
               **kw: Any) -> None:
        targets = [{"expr": expr, "legendFormat": legend, "range": True}
                   for expr, legend in exprs]
        self.panel(kind, title, description, PROM, targets, **kw)

    def variable(self, name: str, label: str, datasource: dict[str, str], query: str,
                 all_value: str | None = None) -> None:
        extra = {} if all_value is None else {"allValue": all_value}
        self.variables.append({**extra,
            "name": name, "label": label, "type": "query", "datasource": datasource,
            "query": query, "definition": query, "refresh": 2, "sort": 1,
            "multi": True, "includeAll": True,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        })

    def json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["hpc-billing"],
            "timezone": "utc",
            "editable": False,
            "graphTooltip": 1,
            "schemaVersion": 39,
            "version": 1,
            "time": {"from": "now-30d", "to": "now"},
            "refresh": "",
            "annotations": {"list": []},
            "links": [{"type": "dashboards", "tags": ["hpc-billing"], "asDropdown": False,
                       "title": "hpc-billing"}],
            "templating": {"list": self.variables},
            "panels": self.panels,
        }


def _money_unit_overrides(*columns: str) -> list[dict[str, Any]]:
    """Money columns get 2 decimals (their currency is a column next to them)."""
    return [{"matcher": {"id": "byName", "options": c},
             "properties": [{"id": "decimals", "value": 2}]} for c in columns]


def _sql_board(uid: str, title: str, description: str) -> Board:
    """A PostgreSQL dashboard with its cluster variable."""
    b = Board(uid, title, description)
    b.variable("cluster", "cluster", PG, "SELECT cluster FROM reporting.clusters ORDER BY 1")
    return b


def money() -> Board:
    b = _sql_board("hpcb-money", "hpc-billing: money",
                   "Charges posted by hpc-billing, from the reporting views in PostgreSQL. "
                   "Per-period panels show whole billing periods overlapping the time range "
                   "(what finance bills); per-day panels place each line at its job's end.")
    b.variable("account", "account", PG,
               "SELECT account FROM reporting.charges "
               "WHERE account IS NOT NULL AND $__timeFilter(spent_at) "
               "UNION SELECT account FROM reporting.budget_use "
               "WHERE period_start < $__timeTo() AND period_end > $__timeFrom() ORDER BY 1")
    period_range = "period_start < $__timeTo() AND period_end > $__timeFrom()"

    b.sql("stat", "Charged in the time range",
          "Sum of the charge lines whose job ended in the range, per currency.",
          f"""SELECT currency, sum(amount) AS amount FROM reporting.charges
              WHERE $__timeFilter(spent_at) AND {FILTER_CLUSTER_ACCOUNT}
              GROUP BY currency ORDER BY currency""",
          w=6, options={"reduceOptions": {"values": True, "calcs": [], "fields": "/^amount$/"},
                        "textMode": "value_and_name"},
          overrides=_money_unit_overrides("amount"))
    b.sql("timeseries", "Charges per day by account",
          "Daily sum of charge lines by account (the day the job ended, UTC).",
          f"""SELECT $__timeGroupAlias(spent_at, '1d'), account || ' (' || currency || ')' AS metric,
                     sum(amount) AS amount
              FROM reporting.charges WHERE $__timeFilter(spent_at) AND {FILTER_CLUSTER_ACCOUNT}
              GROUP BY 1, 2 ORDER BY 1""",
          fmt="time_series", w=18,
          options={"legend": {"displayMode": "table", "placement": "right", "calcs": ["sum"]}})
    b.sql("table", "Charges by account and period",
          "Lines posted in each period, by account. A period is billed whole.",
          f"""SELECT posted_period AS period, account, currency, sum(amount) AS amount,
                     count(DISTINCT (cluster, job_id_raw, submit_time)) AS jobs
              FROM reporting.charges WHERE {period_range} AND {FILTER_CLUSTER_ACCOUNT}
              GROUP BY 1, 2, 3 ORDER BY 1 DESC, 4 DESC""",
          overrides=_money_unit_overrides("amount"))
    b.sql("table", "Charges by user and period",
          "Lines posted in each period, by user and account.",
          f"""SELECT posted_period AS period, user_name AS "user", account, currency,
                     sum(amount) AS amount
              FROM reporting.charges WHERE {period_range} AND {FILTER_CLUSTER_ACCOUNT}
              GROUP BY 1, 2, 3, 4 ORDER BY 1 DESC, 5 DESC""",
          overrides=_money_unit_overrides("amount"))
    b.sql("table", "Charges by partition and period",
          "Lines posted in each period, by Slurm partition.",
          f"""SELECT posted_period AS period, partition, currency, sum(amount) AS amount
              FROM reporting.charges WHERE {period_range} AND {FILTER_CLUSTER_ACCOUNT}
              GROUP BY 1, 2, 3 ORDER BY 1 DESC, 4 DESC""",
          w=8, overrides=_money_unit_overrides("amount"))
    b.sql("table", "GPU charges by type and period",
          "GPU lines by GPU type ('other': untyped GPUs and types without a rate of their own).",
          f"""SELECT posted_period AS period, gpu_type, currency, sum(quantity) AS gpu_hours,
                     sum(amount) AS amount
              FROM reporting.charges
              WHERE gpu_type IS NOT NULL AND {period_range} AND {FILTER_CLUSTER_ACCOUNT}
              GROUP BY 1, 2, 3 ORDER BY 1 DESC, 5 DESC""",
          w=8, overrides=_money_unit_overrides("amount"))
    b.sql("piechart", "Charges by resource",
          "Share of each resource (cpu, gpu, gpu:<type>, mem ...) in the range's charges.",
          f"""SELECT resource || ' (' || currency || ')' AS resource, sum(amount) AS amount
              FROM reporting.charges WHERE $__timeFilter(spent_at) AND {FILTER_CLUSTER_ACCOUNT}
              GROUP BY 1 ORDER BY 2 DESC""",
          w=8, options={"reduceOptions": {"values": True, "calcs": [], "fields": "/^amount$/"},
                        "pieType": "donut", "legend": {"displayMode": "table", "placement": "right"}})
    b.sql("bargauge", "Top 10 users",
          "Users with the largest charges in the range (per currency).",
          f"""SELECT user_name || ' / ' || account || ' (' || currency || ')' AS "user",
                     sum(amount) AS amount
              FROM reporting.charges WHERE $__timeFilter(spent_at) AND {FILTER_CLUSTER_ACCOUNT}
              GROUP BY 1 ORDER BY 2 DESC LIMIT 10""",
          options={"reduceOptions": {"values": True, "calcs": [], "fields": "/^amount$/"},
                   "orientation": "horizontal", "displayMode": "basic"},
          overrides=_money_unit_overrides("amount"))
    b.sql("table", "Budgets",
          "Budgets of the periods in the range: amount used (lines posted in the period, "
          "in the budget's currency) and the fraction; warn at 80%, alert at 100%.",
          f"""SELECT account, period, currency, budget, used, remaining, used_fraction
              FROM reporting.budget_use WHERE {period_range} AND account IN ($account)
              ORDER BY period DESC, used_fraction DESC NULLS LAST""",
          overrides=[*_money_unit_overrides("budget", "used", "remaining"),
                     {"matcher": {"id": "byName", "options": "used_fraction"},
                      "properties": [
                          {"id": "unit", "value": "percentunit"},
                          {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                          {"id": "thresholds", "value": {"mode": "absolute", "steps": [
                              {"color": "green", "value": None},
                              {"color": "orange", "value": 0.8},
                              {"color": "red", "value": 1}]}}]}])
    b.sql("timeseries", "Budget burn-down",
          "What remains of each budget at the end of each day of its period (UTC days).",
          """SELECT day AS "time", account || ' ' || period || ' (' || currency || ')' AS metric,
                    remaining
             FROM reporting.budget_burndown
             WHERE day >= $__timeFrom() AND day < $__timeTo() AND account IN ($account)
             ORDER BY 1""",
          fmt="time_series",
          options={"legend": {"displayMode": "list", "placement": "bottom"}})
    return b


def usage() -> Board:
    b = _sql_board("hpcb-usage", "hpc-billing: usage",
                   "Allocated CPU, GPU and memory hours of the jobs that ended in the range "
                   "(reporting.job_usage), and the utilisation of the nodes from the node "
                   "inventory snapshots (reporting.node_utilisation_daily).")
    b.variable("account", "account", PG,
               "SELECT DISTINCT account FROM reporting.job_usage "
               "WHERE account IS NOT NULL AND $__timeFilter(end_time) ORDER BY 1")
    per_day = """SELECT $__timeGroupAlias(end_time, '1d'), {metric} AS metric, sum({value}) AS {value}
                 FROM {view} WHERE $__timeFilter(end_time) AND {where}
                 GROUP BY 1, 2 ORDER BY 1"""
    b.sql("timeseries", "CPU core-hours per day by account",
          "CPUs x elapsed of the jobs that ended each day (allocated, not used).",
          per_day.format(metric="account", value="cpu_hours", view="reporting.job_usage",
                         where=FILTER_CLUSTER_ACCOUNT), fmt="time_series", w=8)
    b.sql("timeseries", "GPU-hours per day by GPU type",
          "GPUs x elapsed by type ('untyped' for GRES without a type).",
          per_day.format(metric="gpu_type", value="gpu_hours", view="reporting.job_gpu_usage",
                         where=FILTER_CLUSTER_ACCOUNT), fmt="time_series", w=8)
    b.sql("timeseries", "Memory GiB-hours per day by account",
          "Allocated memory x elapsed (GiB = 2^30 bytes).",
          per_day.format(metric="account", value="mem_gib_hours", view="reporting.job_usage",
                         where=FILTER_CLUSTER_ACCOUNT), fmt="time_series", w=8)
    b.sql("table", "Usage by account and user",
          "Jobs that ended in the range. cpu_efficiency = CPU time used / CPU time allocated.",
          f"""SELECT account, user_name AS "user", count(*) AS jobs, sum(cpu_hours) AS cpu_hours,
                     sum(cpu_used_hours) AS cpu_used_hours,
                     sum(cpu_used_hours) / NULLIF(sum(cpu_hours), 0) AS cpu_efficiency,
                     sum(gpu_hours) AS gpu_hours, sum(mem_gib_hours) AS mem_gib_hours
              FROM reporting.job_usage WHERE $__timeFilter(end_time) AND {FILTER_CLUSTER_ACCOUNT}
              GROUP BY 1, 2 ORDER BY 4 DESC""",
          w=16, overrides=[{"matcher": {"id": "byName", "options": "cpu_efficiency"},
                            "properties": [{"id": "unit", "value": "percentunit"}]}])
    b.sql("piechart", "Jobs by state",
          "Final state of the jobs that ended in the range.",
          f"""SELECT state, count(*) AS jobs FROM reporting.job_usage
              WHERE $__timeFilter(end_time) AND {FILTER_CLUSTER_ACCOUNT}
              GROUP BY 1 ORDER BY 2 DESC""",
          w=8, options={"reduceOptions": {"values": True, "calcs": [], "fields": "/^jobs$/"},
                        "legend": {"displayMode": "table", "placement": "right"}})
    utilisation = """SELECT (day::timestamp AT TIME ZONE 'UTC') AS "time",
                            cluster || '/' || partition AS metric, {column}
                     FROM reporting.node_utilisation_daily($__timeFrom()::date, $__timeTo()::date + 1)
                     WHERE cluster IN ($cluster) ORDER BY 1"""
    for resource, column in (("CPU", "cpu_fraction"), ("GPU", "gpu_fraction"),
                             ("Memory", "mem_fraction")):
        b.sql("timeseries", f"{resource} utilisation per day",
              f"Allocated / available {resource} hours per partition and UTC day, integrated "
              "over the node snapshots (a node in two partitions counts in both).",
              utilisation.format(column=column), fmt="time_series", w=8, unit="percentunit",
              options={"legend": {"displayMode": "list", "placement": "bottom"}})
    b.sql("table", "Capacity and allocation per partition",
          "Hours available and allocated in the range, from the node snapshots.",
          """SELECT cluster, partition,
                    sum(cpu_hours_available) AS cpu_hours_available,
                    sum(cpu_hours_allocated) AS cpu_hours_allocated,
                    sum(gpu_hours_available) AS gpu_hours_available,
                    sum(gpu_hours_allocated) AS gpu_hours_allocated,
                    sum(mem_gib_hours_available) AS mem_gib_hours_available,
                    sum(mem_gib_hours_allocated) AS mem_gib_hours_allocated
             FROM reporting.node_utilisation_daily($__timeFrom()::date, $__timeTo()::date + 1)
             WHERE cluster IN ($cluster) GROUP BY 1, 2 ORDER BY 1, 2""",
          w=24)
    return b


def health() -> Board:
    b = Board("hpcb-health", "hpc-billing: collector health",
              "The collectors as Prometheus sees them (job hpc-billing), and the run log and "
              "quarantine from PostgreSQL. Alerts: deploy/prometheus/alerts.yml.")
    # "All" is any cluster, also those of gauges with no poll counter here (a file import's
    # polls count under "(file)", its jobs under their own cluster).
    b.variable("cluster", "cluster", PROM, "label_values(hpcb_polls_total, cluster)",
               all_value=".*")
    job = 'job="hpc-billing"'
    sel = f'{job}, cluster=~"$cluster"'
    stat = {"reduceOptions": {"values": False, "calcs": ["lastNotNull"], "fields": ""},
            "colorMode": "background", "textMode": "value_and_name"}
    b.promql("stat", "Collectors up", "1: Prometheus scrapes the collector.",
             (f"up{{{job}}}", "{{instance}}"), w=6, h=5, options=stat)
    b.promql("stat", "Leader", "1: this collector holds the leader lock and polls.",
             (f"hpcb_leader{{{job}}}", "{{instance}}"), w=6, h=5, options=stat)
    b.promql("stat", "Database reachable", "1: every database read of the last scrape worked.",
             (f"hpcb_scrape_database_up{{{job}}}", "{{instance}}"), w=6, h=5, options=stat)
    b.promql("stat", "Scheduler running", "1: the poll scheduler runs (/healthz).",
             (f"hpcb_scheduler_up{{{job}}}", "{{instance}}"), w=6, h=5, options=stat)
    b.promql("timeseries", "Lag",
             "now - the end of the newest stored window; alert above 30 min.",
             (f"max by (cluster) (hpcb_lag_seconds{{{sel}}})", "{{cluster}}"), unit="s")
    b.promql("timeseries", "Poll outcomes",
             "Finished polls per interval, ok and failed.",
             (f"sum by (cluster, outcome) (increase(hpcb_polls_total{{{sel}}}[$__rate_interval]))",
              "{{cluster}} {{outcome}}"))
    p95 = ("histogram_quantile(0.95, sum by (le, cluster) "
           f"(rate({{metric}}{{{{{sel}}}}}[$__rate_interval])))")
    b.promql("timeseries", "Poll and source duration (p95)",
             "95th percentile of a poll's wall time, and of the part spent in sacct/slurmrestd.",
             (p95.format(metric="hpcb_poll_duration_seconds_bucket"), "{{cluster}} poll"),
             (p95.format(metric="hpcb_source_duration_seconds_bucket"), "{{cluster}} source"),
             unit="s")
    b.promql("timeseries", "Jobs written per second",
             "Jobs inserted and updated, and re-read unchanged.",
             (f"sum by (cluster, change) (rate(hpcb_jobs_written_total{{{sel}}}[$__rate_interval]))",
              "{{cluster}} {{change}}"),
             (f"sum by (cluster) (rate(hpcb_jobs_unchanged_total{{{sel}}}[$__rate_interval]))",
              "{{cluster}} unchanged"), unit="ops")
    b.promql("timeseries", "Quarantined records stored",
             "Input that did not parse, kept with its reason (hpc-billing quarantine).",
             (f"max by (cluster) (hpcb_quarantine_records{{{sel}}})", "{{cluster}}"), w=8)
    b.promql("timeseries", "Open jobs", "Stored jobs not final yet (pending, running ...).",
             (f"max by (cluster) (hpcb_open_jobs{{{sel}}})", "{{cluster}}"), w=8)
    b.promql("timeseries", "Node snapshot age",
             "Seconds since the newest node inventory snapshot.",
             (f"time() - max by (cluster) (hpcb_node_snapshot_timestamp_seconds{{{sel}}})",
              "{{cluster}}"), w=8, unit="s")
    b.sql("table", "Recent runs",
          "The run log (newest first): polls, file imports, backfill chunks, reprices.",
          """SELECT started_at AS "time", cluster, kind, outcome, records_read, jobs_inserted,
                    jobs_updated, jobs_unchanged, quarantined, duration_s, error
             FROM reporting.collector_runs WHERE $__timeFilter(started_at)
             ORDER BY started_at DESC LIMIT 50""",
          w=16, h=10)
    b.sql("table", "Quarantine by reason",
          "Records quarantined in the range, by reason (the raw input is not shown).",
          """SELECT cluster, reason, count(*) AS records, max(created_at) AS last_seen
             FROM reporting.quarantine WHERE $__timeFilter(created_at)
             GROUP BY 1, 2 ORDER BY 3 DESC""",
          w=8, h=10)
    return b


BOARDS = {"hpc-billing-money.json": money, "hpc-billing-usage.json": usage,
          "hpc-billing-health.json": health}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: json.dumps(make().json(), indent=2, sort_keys=True) + "\n"
            for name, make in BOARDS.items()}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, text in render().items():
        path = OUT / name
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("out of date (run python deploy/grafana/make_dashboards.py): " + ", ".join(stale),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
