"""deploy/systemd: the unit's user, settings, restart policy and hardening, read from the
file; and systemd's own security analysis of it (offline: no systemd needs to run)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import tool

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "hpc-billing.service"
SYSUSERS = ROOT / "deploy" / "systemd" / "hpc-billing.sysusers"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value (a key may repeat, as systemd allows)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, raw
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    unit = parse_unit(UNIT.read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    return unit["Service"]


def one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key)
    assert values and len(values) == 1, f"{key}: {values}"
    return values[0]


def test_runs_the_daemon_as_its_own_user_with_an_environment_file(service):
    user = one(service, "User")
    assert user == "hpc-billing" == one(service, "Group")
    fields = SYSUSERS.read_text().split("\n")
    entry = next(line for line in fields if line.startswith("u "))
    assert entry.split()[1] == user and entry.split()[-1] == "/usr/sbin/nologin"
    env_file = one(service, "EnvironmentFile")
    assert env_file == "/etc/hpc-billing/env"
    # deploy/env.example tells operators where to put it.
    assert env_file in (ROOT / "deploy" / "env.example").read_text()
    assert one(service, "ExecStart").split() == ["/opt/hpc-billing/bin/hpc-billing", "run"]
    assert one(service, "ExecStartPre").split() == ["/opt/hpc-billing/bin/hpc-billing", "migrate"]


def test_restart_policy_and_graceful_stop(service):
    assert one(service, "Restart") == "on-failure"
    assert one(service, "RestartSec")
    # SIGTERM to the main process only, so a running poll's sacct is not killed with it.
    assert one(service, "KillMode") == "mixed" and one(service, "KillSignal") == "SIGTERM"
    assert int(one(service, "TimeoutStopSec").rstrip("s")) >= 60
    unit = parse_unit(UNIT.read_text())["Unit"]
    assert unit["StartLimitBurst"] and unit["StartLimitIntervalSec"]


@pytest.mark.parametrize("key, value", [
    ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
    ("ProtectHome", "yes"), ("PrivateDevices", "yes"), ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"), ("ProtectControlGroups", "yes"), ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"), ("MemoryDenyWriteExecute", "yes"), ("CapabilityBoundingSet", ""),
    ("SystemCallArchitectures", "native"), ("UMask", "0077"),
])
def test_hardening(service, key, value):
    assert one(service, key) == value


def test_writable_paths_are_only_its_state_dir_and_the_slurm_sockets(service):
    assert one(service, "StateDirectory") == "hpc-billing"
    paths = [p for v in service["ReadWritePaths"] for p in v.split()]
    assert paths == ["-/run/munge", "-/run/slurmrestd"]
    assert one(service, "RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged"]


def test_systemd_analyze_security_rates_the_unit_ok(tmp_path):
    analyze = tool("systemd-analyze")
    # --offline analyses the file itself; a copy keeps the name systemd expects.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text())
    done = subprocess.run([analyze, "security", "--offline=true", "--threshold=20", str(unit)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", done.stdout)
    assert level, done.stdout
    # 0 (best) .. 10; systemd calls < 2 "OK". Each ✗ line is one setting not applied.
    assert float(level.group(1)) < 2.0 and level.group(2) == "OK", done.stdout
