"""Security of the running process: hostile values reach sacct as one argv element each,
and the database password never shows in logs or error output, whether the database is
unreachable or a poll fails."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.daemonkit import FAKE_SACCT, Daemon, wait_for
from tests.helpers import executable_wrapper

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = ["lab; touch {marker}", "lab $(touch {marker})", "lab `touch {marker}`",
           "o'brien \"q\" | touch {marker} &", "lab\ttab && touch {marker}"]


def _cli(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "collector.cli", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def _env(**extra: str) -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("HPC_BILLING_")} | extra


@pytest.mark.parametrize("template", HOSTILE)
def test_a_hostile_cluster_name_is_one_sacct_argument(db_url, tmp_path, template):
    marker = tmp_path / f"pwned-{secrets.token_hex(4)}"
    cluster = template.format(marker=marker)
    sacct = executable_wrapper(tmp_path / "bin", "sacct", FAKE_SACCT)
    argv_log = tmp_path / "argv.json"
    proc = _cli("collect", "--once", "--source", "sacct", "--sacct", str(sacct),
                "--cluster", cluster, "--lookback", "1d",
                env=_env(DATABASE_URL=db_url, FAKE_SACCT_ARGV_LOG=str(argv_log),
                         FAKE_SACCT_MODE="empty"))
    assert proc.returncode == 0, proc.stderr
    argv = json.loads(argv_log.read_text())["argv"]
    assert argv.count(f"--clusters={cluster}") == 1
    assert not marker.exists()


def test_the_database_password_never_shows_when_the_database_is_unreachable(tmp_path):
    password = "pw-" + secrets.token_hex(8)
    url = f"postgresql+psycopg2://hpcb:{password}@127.0.0.1:1/hpcb"
    proc = _cli("collect", "--once", "--source", "file", "--input",
                str(ROOT / "tests" / "fixtures" / "sacct-wide-header.psv"),
                env=_env(DATABASE_URL=url))
    assert proc.returncode != 0
    assert "127.0.0.1" in proc.stderr + proc.stdout      # the error does say where
    assert password not in proc.stderr + proc.stdout


def test_the_database_password_never_shows_in_a_daemons_logs_or_answers(db_url, tmp_path):
    password = "pw-" + secrets.token_hex(8)
    # Trust authentication on the test server accepts any password: the URL works.
    url = make_url(db_url).set(password=password).render_as_string(hide_password=False)
    sacct = executable_wrapper(tmp_path / "bin", "sacct", FAKE_SACCT)
    daemon = Daemon(url, sacct, "--log-level", "DEBUG", env={"FAKE_SACCT_MODE": "fail"},
                    log_path=tmp_path / "daemon.log")
    try:
        wait_for(lambda: "poll" in daemon.output() and "fail" in daemon.output(), 60,
                 "a failed poll in the log")
        answers = "".join(str(daemon.get(path)[1]) for path in
                          ("/healthz", "/readyz", "/metrics", "/api/v1/jobs", "/nope"))
    finally:
        daemon.stop()
    assert password not in daemon.output()
    assert password not in answers
    assert "exited with code" in daemon.output()          # the failure itself is logged
