"""compose.yaml and compose.prod.yaml, without a Docker engine.

``docker-compose config`` (Debian's docker-compose, installed by tests/run.sh) interpolates
.env.example into compose.yaml and validates the result against the Compose
specification's schema. The production overlay uses Compose v2's ``!reset``/``!override``
merge tags, which that validator predates: the test merges the two files by the Compose
specification's rules (mappings merged key by key, a tagged value removed or replaced)
and validates the merged file the same way. Every file and directory the stack mounts or
builds from must exist.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import tool

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
PROD = ROOT / "compose.prod.yaml"
ENV_EXAMPLE = ROOT / ".env.example"

SERVICES = {"pg", "hpc", "prometheus", "grafana", "adminer", "swagger"}
DEV_TOOLS = {"adminer", "swagger"}
# service -> (host port, container port) with .env.example's values.
HOST_PORTS = {"hpc": (8000, 8000), "grafana": (3000, 3000), "prometheus": (9090, 9090),
              "pg": (5432, 5432), "adminer": (8080, 8080), "swagger": (8081, 8080)}


# ------------------------------------------------------------------ compose's merge

class Tagged:
    """A value carrying Compose v2's !reset or !override tag."""

    def __init__(self, tag: str, value: Any) -> None:
        self.tag, self.value = tag, value


class TagLoader(yaml.SafeLoader):
    pass


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.MappingNode):
        value: Any = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return Tagged(node.tag, value)


for _tag in ("!reset", "!override"):
    TagLoader.add_constructor(_tag, _tagged)

# Compose's "shell command" attributes are replaced, never appended.
REPLACED = {"command", "entrypoint", "test"}


def merge(base: Any, override: Any, key: str = "") -> Any:
    """Compose specification, "Merge": mappings merge by key, sequences append (unique
    resources by their key), scalars and the shell-command attributes are replaced;
    ``!reset`` removes, ``!override`` replaces whole."""
    if isinstance(override, Tagged):
        assert override.tag == "!override", key
        return override.value
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            if isinstance(v, Tagged) and v.tag == "!reset":
                out.pop(k, None)
            else:
                out[k] = merge(base[k], v, k) if k in base else v
        return out
    if isinstance(base, list) and isinstance(override, list) and key not in REPLACED:
        return base + [item for item in override if item not in base]
    return override


def load_merged(*files: Path) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in files:
        merged = merge(merged, yaml.load(path.read_text(), Loader=TagLoader))
    return merged


# ----------------------------------------------------------------- docker-compose

def docker_compose(*args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess:
    # Only PATH: variables of the test run (DATABASE_URL ...) must not leak into the
    # interpolation, which reads the env file.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}
    return subprocess.run([tool("docker-compose"), "--project-directory", str(ROOT),
                           "--env-file", str(env_file), *args],
                          capture_output=True, text=True, timeout=120, env=env, check=False)


def rendered(*files: Path) -> dict[str, Any]:
    args = [a for f in files for a in ("-f", str(f))]
    done = docker_compose(*args, "config")
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def ports(service: dict[str, Any]) -> set[tuple[str, int, int]]:
    """(host ip, published, target) of every port, in either of config's notations."""
    out = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.add((port.get("host_ip", "0.0.0.0"), int(port["published"]), int(port["target"])))
        else:
            parts = port.split("/")[0].split(":")
            ip = parts[0] if len(parts) == 3 else "0.0.0.0"
            out.add((ip, int(parts[-2]), int(parts[-1])))
    return out


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return rendered(COMPOSE)


@pytest.fixture(scope="module")
def prod(tmp_path_factory) -> dict[str, Any]:
    merged = tmp_path_factory.mktemp("compose") / "compose.merged.yaml"
    merged.write_text(yaml.safe_dump(load_merged(COMPOSE, PROD)))
    return rendered(merged)


# ----------------------------------------------------------------------------- tests

def test_compose_renders_with_the_example_env_and_has_the_services(stack):
    services = stack["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), (name, image)
        assert service.get("restart") == "unless-stopped", name
        assert set(service.get("profiles", [])) == ({"dev"} if name in DEV_TOOLS else set()), name
        host_port, container_port = HOST_PORTS[name]
        assert {(p[1], p[2]) for p in ports(service)} == {(host_port, container_port)}, name
    # Dev tools and the database listen on the host's loopback only.
    for name in (*DEV_TOOLS, "pg"):
        assert {p[0] for p in ports(services[name])} == {"127.0.0.1"}, name


def test_pg_is_postgres_16_with_a_volume_a_healthcheck_and_the_role_script(stack):
    pg = stack["services"]["pg"]
    assert pg["image"].startswith("postgres:16")
    assert "pgdata:/var/lib/postgresql/data:rw" in pg["volumes"] and "pgdata" in stack["volumes"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert pg["environment"]["POSTGRES_DB"] == "hpc_billing"
    mounts = dict(v.split(":")[:2] for v in pg["volumes"])
    init_dir = Path(next(src for src, dst in mounts.items() if dst == "/docker-entrypoint-initdb.d"))
    script = init_dir / "10-hpc-billing-roles.sh"
    sql_dir = Path(next(src for src, dst in mounts.items() if dst == "/opt/hpc-billing/sql"))
    # The init script reads roles.sql where compose mounts deploy/sql.
    assert "-f /opt/hpc-billing/sql/roles.sql" in script.read_text()
    assert (sql_dir / "roles.sql").is_file()
    done = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    for var in ("HPC_BILLING_DB_PASSWORD", "GRAFANA_DB_PASSWORD"):
        assert var in pg["environment"] and f'"${var}"' in script.read_text()


def test_hpc_waits_for_pg_migrates_then_runs_the_bundled_sample(stack):
    hpc = stack["services"]["hpc"]
    assert hpc["depends_on"] == {"pg": {"condition": "service_healthy"}}
    assert hpc["command"] == ["sh", "-c", "hpc-billing migrate && exec hpc-billing run"]
    env = hpc["environment"]
    assert env["DATABASE_URL"].startswith("postgresql+psycopg2://hpc_billing:")
    assert env["DATABASE_URL"].endswith("@pg:5432/hpc_billing")
    assert env["HPC_BILLING_SOURCE"] == "file"
    # The defaults are files the image ships (Dockerfile COPY into /usr/share/hpc-billing).
    dockerfile = (ROOT / "Dockerfile").read_text()
    copy = re.search(r"^COPY ((?:.|\\\n)*?/usr/share/hpc-billing/)$", dockerfile, re.MULTILINE)
    assert copy, "the Dockerfile copies no data into /usr/share/hpc-billing"
    sources = copy.group(1).replace("\\\n", " ").split()[:-1]
    shipped = {Path(s).name: ROOT / s for s in sources}
    for var in ("HPC_BILLING_INPUT", "HPC_BILLING_RATES"):
        path = Path(env[var])
        assert path.parent == Path("/usr/share/hpc-billing") and shipped[path.name].is_file(), var
    assert hpc["build"]["context"] == str(ROOT) and (ROOT / "Dockerfile").is_file()
    assert hpc["read_only"] is True and hpc["cap_drop"] == ["ALL"]


def test_every_mounted_path_exists(stack):
    count = 0
    for name, service in stack["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("/"):
                assert Path(source).exists(), (name, volume)
                assert Path(source).resolve().is_relative_to(ROOT), (name, volume)
                count += 1
    assert count >= 6
    grafana = stack["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    local = Path(next(src for src, dst in mounts.items() if dst == str(home.parent)))
    assert (local / home.name).is_file()
    assert (Path(next(src for src, dst in mounts.items() if dst == "/etc/grafana/provisioning"))
            / "datasources" / "hpc-billing.yaml").is_file()


def test_secrets_are_required_and_come_from_an_env_file_git_ignores(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    done = docker_compose("-f", str(COMPOSE), "config", env_file=empty)
    assert done.returncode != 0 and "POSTGRES_PASSWORD" in done.stderr
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, ".env is not ignored by git"
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def test_env_example_sets_every_variable_the_compose_files_use():
    defined = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines()
               if re.match(r"^[A-Z_][A-Z0-9_]*=", line)}
    used = set()
    for path in (COMPOSE, PROD):
        used |= set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", path.read_text()))
    assert used - defined == set()
    assert "COMPOSE_PROJECT_NAME" in defined


def test_the_production_overlay_drops_dev_tools_and_binds_to_loopback(stack, prod):
    services = prod["services"]
    assert set(services) == SERVICES - DEV_TOOLS
    assert "ports" not in services["pg"]
    for name in ("hpc", "prometheus", "grafana"):
        assert ports(services[name]) == {("127.0.0.1", *HOST_PORTS[name])}, name
    hpc = services["hpc"]
    assert "build" not in hpc and hpc["image"] == "hpc-billing:dev"   # HPC_BILLING_IMAGE
    assert services["grafana"]["environment"]["GF_SERVER_ROOT_URL"].startswith("https://")
    # Everything else is the base file's.
    assert hpc["command"] == stack["services"]["hpc"]["command"]
    assert hpc["environment"] == stack["services"]["hpc"]["environment"]


def test_the_merge_follows_compose_rules():
    # Guards the merge the overlay test relies on.
    base = {"services": {"a": {"ports": ["1:1"], "environment": {"X": "1"}, "command": ["x"]},
                         "b": {"image": "b:1"}}}
    over = yaml.load("services:\n  a:\n    ports: !override ['127.0.0.1:1:1']\n"
                     "    environment: {Y: '2'}\n    command: [y]\n    dns: [d]\n  b: !reset null\n",
                     Loader=TagLoader)
    assert merge(base, over) == {"services": {"a": {
        "ports": ["127.0.0.1:1:1"], "environment": {"X": "1", "Y": "2"}, "command": ["y"],
        "dns": ["d"]}}}
    assert merge({"dns": ["a"]}, {"dns": ["b", "a"]}) == {"dns": ["a", "b"]}
