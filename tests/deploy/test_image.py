"""The Dockerfile, and its install steps exercised outside Docker.

Statically: a pinned slim Python base, a wheel-building builder stage, a non-root runtime
stage, EXPOSE, OCI labels from build args, a stdlib HEALTHCHECK on /readyz, ``hpc-billing
run`` as the command, and build-context files that .dockerignore does not drop.

Then the image's steps on this machine (slow, still run in CI): the files the builder
copies, ``pip wheel --wheel-dir`` on them, ``pip install --no-index --find-links`` of the
result into a fresh venv, then ``hpc-billing migrate`` and ``hpc-billing run`` from that
venv as an unprivileged user against a database set up as compose sets it up, collecting
the sample the wheel ships. The Dockerfile's own HEALTHCHECK command must pass against it,
and fail once the app is not ready.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy.engine import make_url

from collector.store import db as store_db
from tests.conftest import _libpq_dsn
from tests.daemonkit import free_port as _free_port
from tests.daemonkit import http_get as _get
from tests.daemonkit import wait_for as _wait
from tests.deploy.conftest import apply_roles

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    out, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions(text):
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes; '**' any depth."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        candidates = [path] + [str(Path(*Path(path).parts[:i])) for i in range(1, len(Path(path).parts))]
        glob = pat.replace("**/", "*")
        if any(fnmatch.fnmatch(c, pat) or fnmatch.fnmatch(c, glob) for c in candidates):
            ignored = not negate
    return ignored


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


def test_multi_stage_on_a_pinned_slim_python(dockerfile):
    args = dict(a.split("=", 1) for w, a in instructions(dockerfile) if w == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    builder, runtime = stages(dockerfile)
    assert builder[0] == ("FROM", "${PYTHON_IMAGE} AS builder")
    assert runtime[0] == ("FROM", "${PYTHON_IMAGE}")
    runs = [a for w, a in runtime if w == "RUN"]
    # Only runtime pieces in the final stage: no compiler, no package manager run.
    assert not [r for r in runs if re.search(r"\b(apt-get|apt|gcc|make)\b", r)]
    assert "pip wheel --wheel-dir /wheels ." in [a for w, a in builder if w == "RUN"]
    assert any("pip install --no-cache-dir --no-index --find-links /wheels hpc-billing" in r
               for r in runs)
    assert any("--mount=type=bind,from=builder,source=/wheels" in r for r in runs)


def test_non_root_exposed_labelled_healthchecked_and_runs_the_daemon(dockerfile):
    runtime = stages(dockerfile)[-1]
    words = [w for w, _ in runtime]
    user = [a for w, a in runtime if w == "USER"]
    assert user == ["hpcb"]
    assert re.search(r"useradd --system --uid (\d+)", dockerfile).group(1) != "0"
    assert words.index("USER") < words.index("CMD")
    assert ("EXPOSE", "8000") in runtime
    assert json.loads(dict(runtime)["CMD"]) == ["hpc-billing", "run"]
    assert {"ARG VERSION=dev", "ARG GIT_REVISION=unknown"} <= {f"{w} {a}" for w, a in runtime}
    labels = dict(runtime)["LABEL"]
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert 'org.opencontainers.image.revision="${GIT_REVISION}"' in labels
    check = healthcheck_argv(dockerfile)
    assert check[0] == "python" and "/readyz" in check[-1] and "curl" not in " ".join(check)
    env = dict(runtime)["ENV"]
    assert "HPC_BILLING_BIND=0.0.0.0:8000" in env and "PATH=/opt/hpc-billing/bin:$PATH" in env


def healthcheck_argv(dockerfile: str) -> list[str]:
    args = dict(stages(dockerfile)[-1])["HEALTHCHECK"]
    options, _, command = args.partition(" CMD ")
    assert "--interval=" in options and "--timeout=" in options
    return json.loads(command)


def copy_sources(dockerfile: str) -> list[str]:
    sources = []
    for word, args in instructions(dockerfile):
        if word == "COPY" and "--from" not in args:
            sources += shlex.split(args)[:-1]
    return sources


def test_every_copied_file_is_in_the_build_context(dockerfile):
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for source in copy_sources(dockerfile):
        assert (ROOT / source).exists(), source
        assert not dockerignored(source.rstrip("/"), patterns), source
    for kept_out in (".git", ".venv", "tests", ".env", "collector/__pycache__", "deploy/lab"):
        assert dockerignored(kept_out, patterns), kept_out
    assert not dockerignored(".env.example", patterns)


# ------------------------------------------------------------- the install, for real

def _system_python() -> str:
    """An interpreter an unprivileged user can run (the venv links to it)."""
    python = shutil.which("python3", path="/usr/bin:/usr/local/bin")
    if python is None:
        pytest.fail("no python3 in /usr/bin or /usr/local/bin for the unprivileged venv")
    version = subprocess.run([python, "-c", "import sys, venv, ensurepip; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=False)
    assert version.returncode == 0, f"{python} lacks venv/ensurepip: {version.stderr}"
    return python


@pytest.fixture(scope="module")
def image_venv() -> Iterator[Path]:
    """The Dockerfile's builder and install steps, in a world-readable temp dir."""
    top = Path(tempfile.mkdtemp(prefix="hpcb-image-"))
    try:
        top.chmod(0o755)
        src, wheels, venv = top / "src", top / "wheels", top / "venv"
        src.mkdir()
        builder = stages(DOCKERFILE.read_text())[0]
        for word, args in builder:
            if word == "COPY":
                for source in shlex.split(args)[:-1]:
                    path = ROOT / source
                    if path.is_dir():
                        shutil.copytree(path, src / source, ignore=shutil.ignore_patterns(
                            "__pycache__", "*.pyc", "*.egg-info"))
                    else:
                        (src / source).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(path, src / source)
        subprocess.run([_system_python(), "-m", "venv", str(venv)], check=True, timeout=120)
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        # `pip wheel --wheel-dir /wheels .` and `pip install --no-cache-dir --no-index
        # --find-links /wheels hpc-billing`, as in the Dockerfile.
        done = subprocess.run([str(venv / "bin" / "pip"), "wheel", "--quiet", "--wheel-dir",
                               str(wheels), "."], cwd=src, env=env, capture_output=True,
                              text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        assert [p.name for p in wheels.glob("hpc_billing-*.whl")]
        done = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-cache-dir",
                               "--no-index", "--find-links", str(wheels), "hpc-billing"],
                              env=env, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        subprocess.run(["chmod", "-R", "a+rX", str(top)], check=True)
        yield venv
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.slow
def test_the_wheel_ships_the_one_api_contract(image_venv):
    # docs/api/openapi.yaml is the only copy in the repository; the build packages it.
    python = str(image_venv / "bin" / "python")
    code = ("import importlib.resources, sys; sys.stdout.buffer.write(importlib.resources"
            ".files('collector.web').joinpath('openapi.yaml').read_bytes())")
    shipped = subprocess.run([python, "-c", code], capture_output=True, cwd="/", timeout=60,
                             check=True).stdout
    assert shipped == (ROOT / "docs" / "api" / "openapi.yaml").read_bytes()
    assert not (ROOT / "collector" / "web" / "openapi.yaml").exists()


def _unprivileged() -> dict[str, object]:
    """Popen arguments that drop root to nobody (already unprivileged: nothing to do)."""
    if os.geteuid() != 0:
        return {}
    return {"user": "nobody", "group": "nogroup", "extra_groups": []}


def _clean_env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items()
            if k in ("PATH", "LANG", "LC_ALL", "TZ")}
    return {**keep, "HOME": "/nonexistent", **extra}


@pytest.mark.slow
def test_the_installed_wheel_runs_as_non_root_and_the_healthcheck_follows_readyz(
        image_venv, fresh_database_url, pg_admin_url, reporting_db):
    # The database as compose prepares it; the roles (and passwords) are the server's.
    apply_roles(pg_admin_url, fresh_database_url)
    app_url = make_url(reporting_db.app_url).set(
        database=make_url(fresh_database_url).database).render_as_string(hide_password=False)
    hpc_billing = str(image_venv / "bin" / "hpc-billing")
    data = next(image_venv.glob("lib/python3*/site-packages/collector/data"))
    port = _free_port()
    env = _clean_env(DATABASE_URL=app_url, HPC_BILLING_SOURCE="file",
                     HPC_BILLING_INPUT=str(data / "lab-sample.psv"),
                     HPC_BILLING_RATES=str(data / "demo-rates.toml"),
                     HPC_BILLING_BIND=f"127.0.0.1:{port}", HPC_BILLING_POLL_INTERVAL="1h")

    migrated = subprocess.run([hpc_billing, "migrate"], env=env, capture_output=True, text=True,
                              timeout=120, check=False, **_unprivileged())
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.strip() == f"schema at revision {store_db.head_revision()}"

    log = Path(tempfile.mkstemp(prefix="hpcb-image-run-", suffix=".log")[1])
    with open(log, "w") as out:
        daemon = subprocess.Popen([hpc_billing, "run"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                  cwd="/", **_unprivileged())
    try:
        _wait(lambda: _get(port, "/readyz")[0] == 200, 60, "/readyz 200 from the installed wheel")
        status = Path(f"/proc/{daemon.pid}/status").read_text()
        uid = int(re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE).group(1))
        assert uid != 0
        _, body = _get(port, "/readyz")
        assert body["checks"]["schema"]["status"] == "ok"
        _wait(lambda: "hpcb_charge_lines_written_total" in _get(port, "/metrics")[1]
              and _jobs(app_url) == 22, 30, "the shipped sample collected and priced")

        check = healthcheck_argv(DOCKERFILE.read_text())
        argv = [str(image_venv / "bin" / check[0]), *check[1:]]

        def healthcheck(bind: str) -> int:
            return subprocess.run(argv, env=_clean_env(HPC_BILLING_BIND=bind), capture_output=True,
                                  timeout=30, check=False, **_unprivileged()).returncode

        assert healthcheck(f"0.0.0.0:{port}") == 0
        # Not ready: the schema is behind this code (what an image upgrade without migrate
        # looks like). /readyz answers 503 and the healthcheck fails.
        _set_revision(fresh_database_url, "0004")
        try:
            assert _get(port, "/readyz")[0] == 503
            assert healthcheck(f"0.0.0.0:{port}") != 0
        finally:
            _set_revision(fresh_database_url, store_db.head_revision())
        assert healthcheck(f"0.0.0.0:{port}") == 0
        assert healthcheck(f"0.0.0.0:{_free_port()}") != 0      # nothing listening
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=30)
        output = log.read_text()
        log.unlink()
    assert code == 0, output
    assert "stopped" in output


def _jobs(url: str) -> int:
    conn = psycopg2.connect(**_libpq_dsn(url))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM jobs")
            return cur.fetchone()[0]
    finally:
        conn.close()


def _set_revision(url: str, revision: str) -> None:
    conn = psycopg2.connect(**_libpq_dsn(url))
    try:
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE alembic_version SET version_num = %s", (revision,))
    finally:
        conn.close()

