"""deploy/prometheus: promtool checks the scrape configs and the rules and runs the rules'
unit tests (alerts.test.yml); the rules use only metrics the collector exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import tool

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"

REQUIRED_ALERTS = {
    "HpcBillingCollectorDown", "HpcBillingNotReady", "HpcBillingPollsFailing",
    "HpcBillingDataStale", "HpcBillingRecordsQuarantined", "HpcBillingBudgetAbove80Percent",
    "HpcBillingBudgetExceeded", "HpcBillingLeaderMissing", "HpcBillingAuditTrailShrank",
}


def promtool(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([tool("promtool"), *args], cwd=PROMETHEUS, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.head-nodes.yml"])
def test_promtool_accepts_the_scrape_config_and_its_rules(config):
    out = promtool("check", "config", config).stdout
    assert "SUCCESS: 1 rule files found" in out and f"{len(REQUIRED_ALERTS)} rules found" in out


def test_promtool_runs_the_rules_unit_tests():
    promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml").stdout


def test_every_required_alert_exists_and_is_unit_tested():
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert set(alerts) == REQUIRED_ALERTS
    for rule in alerts.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())
    # Each alert is expected to fire in some case (exp_alerts not empty).
    fired = {case["alertname"] for t in tests["tests"] for case in t["alert_rule_test"]
             if case["exp_alerts"]}
    assert fired == REQUIRED_ALERTS


def test_rules_name_only_metrics_the_collector_exports(exported_metric_names):
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    used = {name for g in rules["groups"] for r in g["rules"]
            for name in re.findall(r"\b(hpcb_\w+|up)\b", r["expr"])}
    assert len(used) >= 8
    assert used - exported_metric_names == set()


def test_the_compose_scrape_target_is_the_hpc_service():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "hpc-billing")
    compose = yaml.safe_load((PROMETHEUS.parents[1] / "compose.yaml").read_text())
    hpc = compose["services"]["hpc"]
    assert job["static_configs"][0]["targets"] == ["hpc:8000"]
    assert hpc["environment"]["HPC_BILLING_BIND"] == "0.0.0.0:8000"
    assert "./deploy/prometheus:/etc/prometheus:ro" in compose["services"]["prometheus"]["volumes"]
