"""The probes: ``/healthz`` (is the process alive) and ``/readyz`` (can it serve good data).

Design notes: docs/design/web.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, json

from collector.health import Health
from collector.render import iso
from collector.settings import Settings
from collector.store import db as store_db
from collector.store import runs as store_runs
from collector.web.state import web_state

log = logging.getLogger("hpc_billing.web.probes")

DB_TIMEOUT_S = 2.0
# Polls that stored their window's data (freshness), and every finished poll (``polls``).
STORED_OUTCOMES = ("ok", "partial")
FINISHED_OUTCOMES = ("ok", "partial", "failed")


@dataclass
class _DbFacts:
    """What one background database check found."""

    latency_ms: float = 0.0
    revision: str | None = None
    polls: dict[str, store_runs.LastPoll | None] = field(default_factory=dict)    # ok/partial
    last: dict[str, store_runs.LastPoll | None] = field(default_factory=dict)     # any outcome
    error: str | None = None          # exception type name, for the body
    error_text: str | None = None     # for the log only


class _Check:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.facts = _DbFacts()


class DatabaseChecker:
    """Runs the readiness queries in a daemon thread, one check at a time."""

    def __init__(self, sessions: Callable[[], Any], *, clusters: list[str], head: str,
                 timeout_s: float, redact: Callable[[str], str]) -> None:
        self._sessions = sessions
        self._clusters = clusters
        self._head = head
        self._timeout_s = timeout_s
        self._redact = redact
        self._lock = threading.Lock()
        self._current: _Check | None = None
        self._was_ok: bool | None = None

    def _work(self, check: _Check) -> None:
        facts = check.facts
        started = time.monotonic()
        try:
            with self._sessions() as session:
                store_db.begin_read(session, statement_timeout_s=self._timeout_s)
                store_db.ping(session)
                facts.latency_ms = round((time.monotonic() - started) * 1000, 1)
                facts.revision = store_db.schema_revision(session.connection())
                if facts.revision == self._head:
                    facts.polls = {c: store_runs.last_poll(session, c, STORED_OUTCOMES)
                                   for c in self._clusters}
                    facts.last = {c: store_runs.last_poll(session, c, FINISHED_OUTCOMES)
                                  for c in self._clusters}
        except Exception as exc:  # noqa: BLE001 - a probe reports, it never raises
            facts.error = type(exc).__name__
            facts.error_text = self._redact(str(exc).splitlines()[0] if str(exc) else "")
        finally:
            check.done.set()

    def run(self) -> _DbFacts | None:
        """The facts, or None when the database did not answer within the timeout."""
        with self._lock:
            check = self._current
            if check is None or check.done.is_set():
                check = self._current = _Check()
                threading.Thread(target=self._work, args=(check,), name="readyz-db",
                                 daemon=True).start()
        if not check.done.wait(self._timeout_s):
            self._note(False, f"no answer within {self._timeout_s:g}s")
            return None
        facts = check.facts
        if facts.error is None:
            self._note(True, "")
        else:
            self._note(False, f"{facts.error}: {facts.error_text}")
        return facts

    def _note(self, ok: bool, text: str) -> None:
        # Log transitions only: a probe every few seconds must not flood the log.
        with self._lock:
            before, self._was_ok = self._was_ok, ok
        if before is not False and not ok:
            log.warning("/readyz: database check failed: %s", text)
        elif before is False and ok:
            log.info("/readyz: database check ok again")


def _json(body: dict[str, Any], status: int) -> Response:
    response = Response(json.dumps(body) + "\n", status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


def _freshness(settings: Settings, health: Health,
               polls: dict[str, store_runs.LastPoll | None]) -> dict[str, Any]:
    stale_after = settings.stale_after_s
    snap = health.snapshot()
    grace_left = snap.started_at + stale_after - health.now()
    clusters: dict[str, Any] = {}
    for cluster, poll in polls.items():
        if poll is None:
            if grace_left > 0:
                clusters[cluster] = {
                    "status": "ok", "last_success": None, "age_s": None,
                    "reason": f"no successful poll yet; within the start-up grace period "
                              f"({grace_left:.0f}s left)"}
            else:
                clusters[cluster] = {
                    "status": "fail", "last_success": None, "age_s": None,
                    "reason": f"no successful poll of cluster {cluster!r} in the run log"}
            continue
        age = round(max(0.0, poll.age_s), 1)
        entry = {"status": "ok", "last_success": iso(poll.finished_at), "age_s": age}
        what = "successful" if poll.outcome == "ok" else poll.outcome
        if poll.age_s >= stale_after:
            entry["status"] = "fail"
            entry["reason"] = (f"the last successful poll finished {age:.0f}s ago, more than "
                               f"HPC_BILLING_STALE_AFTER ({stale_after:g}s)")
        else:
            entry["reason"] = f"last {what} poll {age:.0f}s ago"
        clusters[cluster] = entry
    failed = sorted(c for c, e in clusters.items() if e["status"] == "fail")
    return {"status": "fail" if failed else "ok", "stale_after_s": stale_after,
            "reason": (f"stale or missing: {', '.join(failed)}" if failed
                       else "every configured cluster is fresh"),
            "clusters": clusters}


def _polls(last: dict[str, store_runs.LastPoll | None]) -> dict[str, Any]:
    """The ``polls`` check: the newest finished poll per cluster; warns, never fails."""
    clusters: dict[str, Any] = {}
    for cluster, poll in last.items():
        if poll is None:
            clusters[cluster] = {"status": "ok", "outcome": None, "run_id": None,
                                 "reason": "no finished poll yet"}
            continue
        entry: dict[str, Any] = {"status": "ok", "outcome": poll.outcome,
                                 "run_id": poll.run_id}
        if poll.outcome == "partial":
            entry["status"] = "warn"
            entry["reason"] = (f"run {poll.run_id} quarantined {poll.quarantined} record(s) "
                               f"and stored the rest; the watermark stays until they are "
                               f"stored or accepted (hpc-billing quarantine --run "
                               f"{poll.run_id})")
        elif poll.outcome == "failed":
            entry["status"] = "warn"
            entry["reason"] = (f"run {poll.run_id} failed"
                               + (f": {poll.error.splitlines()[0][:200]}" if poll.error else ""))
        else:
            entry["reason"] = f"run {poll.run_id} stored its window"
        clusters[cluster] = entry
    warned = sorted(c for c, e in clusters.items() if e["status"] == "warn")
    return {"status": "warn" if warned else "ok",
            "reason": (f"the newest poll of {', '.join(warned)} was partial or failed"
                       if warned else "the newest polls stored their windows"),
            "clusters": clusters}


bp = Blueprint("probes", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    health = web_state().health
    snap = health.snapshot()
    body = {
        "status": "ok" if snap.scheduler_alive else "fail",
        "scheduler": snap.scheduler_alive,
        "leader": snap.leader,
        "leadership_known": snap.leadership_known,
        "polls_running": snap.polls_running,
        "uptime_s": round(max(0.0, health.now() - snap.started_at), 1),
    }
    if not snap.scheduler_alive:
        body["reason"] = "the scheduler thread is not running"
    return _json(body, 200 if snap.scheduler_alive else 503)


@bp.get("/readyz")
def readyz() -> Response:
    state = web_state()
    facts = state.checker.run()
    checks: dict[str, Any] = {}
    if facts is None or facts.error is not None:
        reason = (f"no answer within {state.db_timeout_s:g}s" if facts is None
                  else f"the database cannot be used ({facts.error})")
        checks["database"] = {"status": "fail", "reason": reason}
        for name in ("schema", "freshness", "polls"):
            checks[name] = {"status": "skipped", "reason": "the database check failed"}
    else:
        checks["database"] = {"status": "ok", "latency_ms": facts.latency_ms,
                              "reason": f"answered in {facts.latency_ms:g} ms"}
        checks["schema"] = _schema(facts.revision, state.head)
        skipped = _freshness_skipped(state.settings, checks["schema"]["status"] == "ok")
        if skipped is not None:
            checks["freshness"] = {"status": "skipped", "reason": skipped}
            checks["polls"] = {"status": "skipped", "reason": skipped}
        else:
            checks["freshness"] = _freshness(state.settings, state.health, facts.polls)
            checks["polls"] = _polls(facts.last)
    failing = [name for name, check in checks.items() if check["status"] == "fail"]
    body = {"status": "fail" if failing else "ok", "failing": failing, "checks": checks,
            "leader": state.health.snapshot().leader}
    return _json(body, 503 if failing else 200)


def _schema(revision: str | None, head: str) -> dict[str, Any]:
    ok = revision == head
    return {"status": "ok" if ok else "fail", "revision": revision, "head": head,
            "reason": ("at head" if ok else
                       "the database has no schema: run 'hpc-billing migrate'"
                       if revision is None else
                       f"the database is at revision {revision}, this version "
                       f"needs {head}: run 'hpc-billing migrate'")}


def _freshness_skipped(settings: Settings, schema_ok: bool) -> str | None:
    """Why freshness and polls are not checked, or None when they are."""
    if not schema_ok:
        return "the schema is not at head"
    if settings.source == "file":
        # A file import is not a feed: there is nothing to be fresh about.
        return "the file source has no polling window"
    if not settings.cluster:
        return "no cluster configured (HPC_BILLING_CLUSTER)"
    return None


def make_checker(settings: Settings, sessions: Callable[[], Any], *, head: str,
                 redact: Callable[[str], str],
                 db_timeout_s: float = DB_TIMEOUT_S) -> DatabaseChecker:
    """The readiness checker of one app (``create_app`` keeps it in the web state)."""
    clusters = [settings.cluster] if settings.cluster else []
    return DatabaseChecker(sessions, clusters=clusters, head=head, timeout_s=db_timeout_s,
                           redact=redact)
