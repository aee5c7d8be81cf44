"""Helpers for tests that run ``hpc-billing run`` as a real process (plain functions and one
class, no fixtures), shared by tests/integration/test_daemon.py, tests/faults,
tests/security and the load test.

``Daemon`` starts the console entry point (``python -m collector.cli run``) against a real
PostgreSQL, by default with a fake sacct executable (the process boundary), and talks to
it over HTTP on 127.0.0.1. Later flags override earlier ones (argparse), so ``*extra``
can replace any default (``--source file --input F``, ``--poll-interval 3s`` ...).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from sqlalchemy import text

from collector.store import db as store_db

ROOT = Path(__file__).resolve().parents[1]
FAKE_SACCT = ROOT / "tests" / "fakes" / "fake_sacct.py"
DEMO_CARD = ROOT / "collector" / "data" / "demo-rates.toml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 5,
             headers: dict[str, str] | None = None) -> tuple[int, dict | str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            body = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read().decode(), exc.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def wait_for(predicate, timeout: float, what: str, step: float = 0.2):
    """Poll ``predicate`` until it returns something truthy (returned); connection errors
    count as not yet. No timing is asserted: the timeout only bounds a hang."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            last = exc
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Daemon:
    def __init__(self, db_url: str, sacct: Path | None, *extra: str,
                 env: dict[str, str] | None = None, log_path: Path | None = None):
        self.port = free_port()
        self.log = log_path or Path(f"/tmp/hpcb-daemon-{self.port}.log")
        self.log_handle = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        argv = [sys.executable, "-m", "collector.cli", "run", "--source", "sacct",
                "--cluster", "lab", "--lookback", "3650d", "--poll-interval", "1s",
                "--node-interval", "1h", "--stale-after", "30s", "--bind", f"127.0.0.1:{self.port}",
                "--rates", str(DEMO_CARD)]
        if sacct is not None:
            argv += ["--sacct", str(sacct)]
        argv.extend(extra)
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdout=self.log_handle, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, "DATABASE_URL": db_url, **(env or {})})

    def get(self, path: str, timeout: float = 5, headers: dict[str, str] | None = None):
        return http_get(self.port, path, timeout, headers)

    def ready(self) -> bool:
        status, _ = self.get("/readyz")
        return status == 200

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample of /metrics (None when absent)."""
        status, body = self.get("/metrics")
        assert status == 200, body
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in str(body).splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            head, _, rest = series.partition("{")
            got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
            if head == name and got == want:
                return float(value)
        return None

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log_handle.close()

    def kill(self) -> None:
        """SIGKILL: no chance to clean up (its sessions end when the kernel closes them)."""
        self.stop(signal.SIGKILL, timeout=10)

    def output(self) -> str:
        if not self.log_handle.closed:
            self.log_handle.flush()
        return self.log.read_text()


def poll_runs(db_url: str) -> list[tuple]:
    """(id, outcome, started_at, finished_at, jobs_inserted) of every poll run, oldest first."""
    engine = store_db.make_engine(db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(
                "SELECT id, outcome, started_at, finished_at, jobs_inserted FROM collector_runs "
                "WHERE kind = 'poll' ORDER BY id")))
    finally:
        engine.dispose()
