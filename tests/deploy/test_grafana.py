"""Grafana: provisioning, the dashboards' JSON, and every query in them.

Every SQL query (panels and template variables) runs against the real migrated schema AS
the read-only role, with Grafana's macros and the template variables expanded the way
Grafana expands them, and must return exactly the columns its panel shows, and rows.
Every PromQL expression must parse (promtool) and name only metrics the collector exports.
"""

from __future__ import annotations

import json
import re
import runpy
import subprocess
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest
import yaml

from tests.deploy.conftest import GRAFANA_ROLE, ReportingDb, tool

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

# The time range the macros are expanded with: the bundled export's month, up to after
# now (the run log and quarantine rows the fixture writes are stamped with the real clock).
TIME_FROM = datetime(2026, 11, 1, tzinfo=UTC)
TIME_TO = max(datetime.now(UTC), datetime(2026, 12, 1, tzinfo=UTC)) + timedelta(days=1)

# (dashboard uid, panel title) -> the columns the panel shows, in order.
EXPECTED_COLUMNS = {
    ("hpcb-money", "Charged in the time range"): ["currency", "amount"],
    ("hpcb-money", "Charges per day by account"): ["time", "metric", "amount"],
    ("hpcb-money", "Charges by account and period"): ["period", "account", "currency", "amount", "jobs"],
    ("hpcb-money", "Charges by user and period"): ["period", "user", "account", "currency", "amount"],
    ("hpcb-money", "Charges by partition and period"): ["period", "partition", "currency", "amount"],
    ("hpcb-money", "GPU charges by type and period"):
        ["period", "gpu_type", "currency", "gpu_hours", "amount"],
    ("hpcb-money", "Charges by resource"): ["resource", "amount"],
    ("hpcb-money", "Top 10 users"): ["user", "amount"],
    ("hpcb-money", "Budgets"):
        ["account", "period", "currency", "budget", "used", "remaining", "used_fraction"],
    ("hpcb-money", "Budget burn-down"): ["time", "metric", "remaining"],
    ("hpcb-usage", "CPU core-hours per day by account"): ["time", "metric", "cpu_hours"],
    ("hpcb-usage", "GPU-hours per day by GPU type"): ["time", "metric", "gpu_hours"],
    ("hpcb-usage", "Memory GiB-hours per day by account"): ["time", "metric", "mem_gib_hours"],
    ("hpcb-usage", "Usage by account and user"):
        ["account", "user", "jobs", "cpu_hours", "cpu_used_hours", "cpu_efficiency", "gpu_hours",
         "mem_gib_hours"],
    ("hpcb-usage", "Jobs by state"): ["state", "jobs"],
    ("hpcb-usage", "CPU utilisation per day"): ["time", "metric", "cpu_fraction"],
    ("hpcb-usage", "GPU utilisation per day"): ["time", "metric", "gpu_fraction"],
    ("hpcb-usage", "Memory utilisation per day"): ["time", "metric", "mem_fraction"],
    ("hpcb-usage", "Capacity and allocation per partition"):
        ["cluster", "partition", "cpu_hours_available", "cpu_hours_allocated",
         "gpu_hours_available", "gpu_hours_allocated", "mem_gib_hours_available",
         "mem_gib_hours_allocated"],
    ("hpcb-health", "Recent runs"):
        ["time", "cluster", "kind", "outcome", "records_read", "jobs_inserted", "jobs_updated",
         "jobs_unchanged", "quarantined", "duration_s", "error"],
    ("hpcb-health", "Quarantine by reason"): ["cluster", "reason", "records", "last_seen"],
}


def _dashboards() -> list[dict]:
    return [json.loads(p.read_text()) for p in DASHBOARDS]


def _datasources() -> dict[str, dict]:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "hpc-billing.yaml").read_text())
    return {ds["uid"]: ds for ds in doc["datasources"]}


def _sql_targets() -> list[tuple[dict, dict, dict]]:
    return [(board, panel, target) for board in _dashboards() for panel in board["panels"]
            for target in panel["targets"] if "rawSql" in target]


# ------------------------------------------------------------------ Grafana's expansion

def _quote_time(t: datetime) -> str:
    return "'" + t.strftime("%Y-%m-%dT%H:%M:%SZ") + "'"


def _interval_s(text: str) -> int:
    number, unit = re.fullmatch(r"'?(\d+)([smhd])'?", text.strip()).groups()
    return int(number) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def expand_macros(sql: str) -> str:
    """Grafana's PostgreSQL macros, as its SQL datasource expands them."""
    def group(m: re.Match, alias: bool) -> str:
        column, interval = (part.strip() for part in m.group(1).split(",", 1))
        s = _interval_s(interval)
        out = f"floor(extract(epoch from {column})/{s})*{s}"
        return out + ' AS "time"' if alias else out

    sql = re.sub(r"\$__timeGroupAlias\(([^)]*)\)", lambda m: group(m, True), sql)
    sql = re.sub(r"\$__timeGroup\(([^)]*)\)", lambda m: group(m, False), sql)
    sql = re.sub(r"\$__timeFilter\(([^)]*)\)",
                 lambda m: f"{m.group(1).strip()} BETWEEN {_quote_time(TIME_FROM)} AND {_quote_time(TIME_TO)}",
                 sql)
    sql = sql.replace("$__timeFrom()", _quote_time(TIME_FROM))
    return sql.replace("$__timeTo()", _quote_time(TIME_TO))


def expand_variables(sql: str, values: dict[str, list[str]]) -> str:
    """Multi-value variables in SQL: each value single-quoted, joined by commas."""
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise AssertionError(f"undefined template variable ${name} in {sql}")
        return ",".join("'" + v.replace("'", "''") + "'" for v in values[name])
    return re.sub(r"\$\{(\w+)\}|\$(?!__)(\w+)", sub, sql)


def run_as_reader(db: ReportingDb, sql: str) -> tuple[list[str], list[tuple]]:
    assert "$" not in sql, f"unexpanded macro or variable: {sql}"
    conn = db.connect(db.grafana_url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return [d.name for d in cur.description], cur.fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def variable_values(reporting_db: ReportingDb) -> dict[str, dict[str, list[str]]]:
    """Dashboard uid -> variable -> the values its query returns as the read-only role."""
    out: dict[str, dict[str, list[str]]] = {}
    for board in _dashboards():
        values: dict[str, list[str]] = {}
        for var in board["templating"]["list"]:
            if var["datasource"]["uid"] != "hpcb-postgres":
                continue
            columns, rows = run_as_reader(reporting_db, expand_macros(var["query"]))
            assert len(columns) == 1 and rows, (board["uid"], var["name"], rows)
            values[var["name"]] = [r[0] for r in rows]
        out[board["uid"]] = values
    return out


# ----------------------------------------------------------------------------- tests

def test_dashboards_are_generated_from_the_script_and_up_to_date():
    rendered = runpy.run_path(str(GRAFANA / "make_dashboards.py"))["render"]()
    assert sorted(rendered) == [p.name for p in DASHBOARDS]
    for path in DASHBOARDS:
        assert path.read_text() == rendered[path.name], \
            f"{path.name} is stale: run python deploy/grafana/make_dashboards.py"


def test_dashboards_are_valid_with_unique_ids_and_provisioned_datasources():
    datasources = _datasources()
    boards = _dashboards()
    assert {b["uid"] for b in boards} == {"hpcb-money", "hpcb-usage", "hpcb-health"}
    assert len({b["title"] for b in boards}) == len(boards)
    for board in boards:
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), board["uid"]
        assert len({p["title"] for p in board["panels"]}) == len(ids), board["uid"]
        for panel in board["panels"]:
            refs = [panel["datasource"], *(t["datasource"] for t in panel["targets"])]
            for ref in refs:
                assert ref["uid"] in datasources, (board["uid"], panel["title"], ref)
                assert ref["type"] == datasources[ref["uid"]]["type"]
            assert panel["targets"], panel["title"]
            pos = panel["gridPos"]
            assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24
    # Money and usage panels read PostgreSQL; health panels Prometheus (plus the run log).
    sql_panels = {(b["uid"], p["title"]) for b, p, _ in _sql_targets()}
    assert sql_panels == set(EXPECTED_COLUMNS)


def test_postgres_datasource_is_the_read_only_role_on_the_compose_database():
    ds = _datasources()["hpcb-postgres"]
    assert ds["user"] == GRAFANA_ROLE
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert ds["jsonData"]["database"] == compose["services"]["pg"]["environment"]["POSTGRES_DB"]
    assert ds["url"] == "pg:5432" and ds["secureJsonData"]["password"] == "$GRAFANA_DB_PASSWORD"
    assert "GRAFANA_DB_PASSWORD" in compose["services"]["grafana"]["environment"]
    assert _datasources()["hpcb-prometheus"]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "hpc-billing.yaml").read_text())["providers"][0]
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_every_sql_query_runs_as_the_read_only_role_and_returns_the_panels_columns(
        reporting_db, variable_values):
    checked = 0
    for board, panel, target in _sql_targets():
        sql = expand_variables(expand_macros(target["rawSql"]), variable_values[board["uid"]])
        columns, rows = run_as_reader(reporting_db, sql)
        key = (board["uid"], panel["title"])
        assert columns == EXPECTED_COLUMNS[key], key
        assert rows, f"{key} returned no rows over the bundled export: {sql}"
        if target["format"] == "time_series":
            assert columns[0] == "time" and columns[1] == "metric", key
            assert all(isinstance(r[1], str) for r in rows), key
        checked += 1
    assert checked == len(EXPECTED_COLUMNS)


def test_money_panels_agree_with_the_cli_figures(reporting_db, variable_values):
    """The panels' numbers are the store's: per account the amounts the README's worked
    example and `budget list` give (chemistry 1.29 EUR; physics 6.44 EUR of a 5 EUR budget)."""
    by_title = {p["title"]: t for b, p, t in _sql_targets() if b["uid"] == "hpcb-money"}
    values = variable_values["hpcb-money"]
    _, rows = run_as_reader(reporting_db, expand_variables(
        expand_macros(by_title["Charges by account and period"]["rawSql"]), values))
    amounts = {(r[0], r[1]): r[3] for r in rows}
    assert {k: str(v) for k, v in amounts.items()} == {
        ("2026-11", "physics"): "6.440000", ("2026-11", "chemistry"): "1.290000"}
    _, budgets = run_as_reader(reporting_db, expand_variables(
        expand_macros(by_title["Budgets"]["rawSql"]), values))
    physics = next(r for r in budgets if r[0] == "physics")
    assert str(physics[4]) == "6.440000" and physics[6] == Decimal("1.288")
    _, burn = run_as_reader(reporting_db, expand_variables(
        expand_macros(by_title["Budget burn-down"]["rawSql"]), values))
    physics_days = [r for r in burn if r[1].startswith("physics")]
    # Everything was spent on 2026-11-22: 5 EUR left before it, -1.44 from then on.
    before = [r[2] for r in physics_days if r[0] < datetime(2026, 11, 22, tzinfo=UTC)]
    after = [r[2] for r in physics_days if r[0] >= datetime(2026, 11, 22, tzinfo=UTC)]
    assert before and set(map(str, before)) == {"5.000000"}
    assert after and set(map(str, after)) == {"-1.440000"}


def test_the_reader_cannot_run_a_dashboard_query_against_a_base_table(reporting_db):
    # Guards the test above: the same query shape on a table instead of a view is refused.
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        run_as_reader(reporting_db, "SELECT currency, sum(amount) FROM public.charge_lines GROUP BY 1")


def test_every_promql_expression_parses_and_names_exported_metrics(tmp_path, exported_metric_names):
    promtool = tool("promtool")
    exprs = []
    for board in _dashboards():
        for panel in board["panels"]:
            exprs += [t["expr"] for t in panel["targets"] if "expr" in t]
        for var in board["templating"]["list"]:
            if var["datasource"]["uid"] == "hpcb-prometheus":
                metric = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"])
                assert metric, var["query"]
                exprs.append(metric.group(1))
    assert len(exprs) >= 10
    concrete = [e.replace("$__rate_interval", "2m").replace("$cluster", ".*") for e in exprs]
    assert not [e for e in concrete if "$" in e]
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:check:{n}", "expr": e} for n, e in enumerate(concrete)]}]}
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    used = {name for e in concrete for name in re.findall(r"\b(hpcb_\w+|up)\b", e)}
    assert used - exported_metric_names == set()
