"""The fault suite's yardstick: what the source holds, what a clean ingest stores, and the
exactly-once check computed from the database alone.

* ``source_keys(data)``: every job record a windowed sacct would print from a
  ``--parsable2`` export with a header (the fake sacct's input): (cluster, JobIDRaw,
  Submit) of each job line whose Eligible is known (a held job is never in a window).
  Plain text parsing, independent of the collector's parser.
* ``snapshot(url)``: the stored jobs (every column but the run bookkeeping) and charge
  lines (every column but ids, run and time of writing; the card by its version), as
  plain Python values.
* ``reference(...)``: a clean ingest of the same input into a database of its own, by the
  same command an operator runs, with no fault; its snapshot is the "fresh pricing of the
  same records" every faulted database must equal.
* ``assert_exactly_once(url, ref, keys)``: every source job stored exactly once, nothing
  else stored, rows equal to the clean ingest, no charge line twice, charges equal to the
  clean ingest's line for line (so every total is equal too).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

from sqlalchemy import text

from collector.store import db as store_db
from tests.daemonkit import DEMO_CARD, ROOT

UTC = timezone.utc
FIXTURE = ROOT / "tests" / "fixtures" / "sacct-wide-header.psv"
# Not the job's content: when and by which run it was written, and the digest of the raw
# lines it was read from (which differs by source, time zone setting or a cut line).
_JOB_BOOKKEEPING = {"first_run_id", "last_run_id", "updated_at", "created_at", "inserted_at",
                    "raw_digest"}
_CHARGE_BOOKKEEPING = {"id", "run_id", "created_at", "rate_card_id"}


def _iso_utc(value: str) -> datetime:
    if value.isdigit():
        return datetime.fromtimestamp(int(value), UTC)
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def source_keys(data: Path, cluster: str | None = None) -> Counter:
    """(cluster, JobIDRaw, Submit) -> how often the source prints that job record."""
    lines = data.read_text(encoding="utf-8").splitlines()
    header = {name.lower(): pos for pos, name in enumerate(lines[0].split("|"))}
    out: Counter = Counter()
    for line in lines[1:]:
        if not line:
            continue
        fields = line.split("|")
        if "." in fields[header["jobid"]]:
            continue
        if fields[header["eligible"]] in ("Unknown", "None", ""):
            continue
        if cluster is not None and fields[header["cluster"]] != cluster:
            continue
        out[(fields[header["cluster"]], int(fields[header["jobidraw"]]),
             _iso_utc(fields[header["submit"]]))] += 1
    return out


@dataclass(frozen=True)
class Snapshot:
    jobs: dict[tuple, tuple]          # key -> the other columns
    charges: Counter                  # charge line (without bookkeeping) -> count
    job_columns: tuple[str, ...]

    def totals(self) -> dict[tuple[str, str], Decimal]:
        """(posted period, currency) -> amount: the bill."""
        out: dict[tuple[str, str], Decimal] = {}
        for line, count in self.charges.items():
            d = dict(line)
            key = (d["posted_period"], d["currency"])
            out[key] = out.get(key, Decimal(0)) + d["amount"] * count
        return out


def _columns(conn, table: str, skip: set[str]) -> list[str]:
    rows = conn.execute(text(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = :t ORDER BY ordinal_position"),
        {"t": table})
    return [r[0] for r in rows if r[0] not in skip]


def snapshot(url: str) -> Snapshot:
    engine = store_db.make_engine(url)
    try:
        with engine.connect() as conn:
            job_cols = _columns(conn, "jobs", _JOB_BOOKKEEPING)
            other = [c for c in job_cols if c not in ("cluster", "job_id_raw", "submit_time")]
            jobs: dict[tuple, tuple] = {}
            for row in conn.execute(text(
                    f"SELECT cluster, job_id_raw, submit_time, {', '.join(other)} FROM jobs")):
                key = (row[0], row[1], row[2].astimezone(UTC))
                assert key not in jobs, f"job {key} stored twice"
                jobs[key] = tuple(row[3:])
            charge_cols = _columns(conn, "charge_lines", _CHARGE_BOOKKEEPING)
            select = ", ".join(f"c.{c}" for c in charge_cols)
            charges: Counter = Counter()
            for row in conn.execute(text(
                    f"SELECT {select}, r.version FROM charge_lines c "
                    f"JOIN rate_cards r ON r.id = c.rate_card_id")):
                values = [v.astimezone(UTC) if isinstance(v, datetime) else v for v in row]
                charges[tuple(zip([*charge_cols, "card_version"], values))] += 1
        return Snapshot(jobs, charges, tuple(other))
    finally:
        engine.dispose()


def duplicate_charge_lines(url: str) -> int:
    """Charge lines that exist twice for one job, period, resource and kind."""
    engine = store_db.make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT count(*) FROM (SELECT 1 FROM charge_lines GROUP BY cluster, job_id_raw, "
                "submit_time, usage_period, posted_period, resource, kind HAVING count(*) > 1) d"
            )).scalar())
    finally:
        engine.dispose()


def assert_exactly_once(url: str, ref: Snapshot, keys: Counter) -> Snapshot:
    got = snapshot(url)
    stored = set(got.jobs)
    missing = set(keys) - stored
    extra = stored - set(keys)
    assert not missing, f"{len(missing)} source jobs not stored: {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} stored jobs the source never printed: {sorted(extra)[:5]}"
    assert len(got.jobs) == len(keys)
    assert got.job_columns == ref.job_columns
    differ = [k for k in ref.jobs if got.jobs.get(k) != ref.jobs[k]]
    assert not differ, (f"{len(differ)} jobs differ from a clean ingest, e.g. {differ[0]}: "
                        f"{got.jobs.get(differ[0])} != {ref.jobs[differ[0]]}")
    assert duplicate_charge_lines(url) == 0
    assert got.charges == ref.charges, (
        f"charges differ from a clean ingest: {len(got.charges - ref.charges)} extra, "
        f"{len(ref.charges - got.charges)} missing line kinds")
    assert got.totals() == ref.totals()
    assert sum(ref.charges.values()) > 0, "a yardstick that charges nothing proves nothing"
    return got


def reference(admin_url: str, data: Path, cluster: str, fake_sacct: Path,
              card: Path = DEMO_CARD, extra_env: dict[str, str] | None = None) -> Snapshot:
    """Snapshot of a clean ingest of ``data`` (one sacct poll, no fault) in a database of
    its own, created and dropped here."""
    from tests.conftest import _create_database, _drop_database

    url = _create_database(admin_url)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "collector.cli", "collect", "--once", "--source", "sacct",
             "--sacct", str(fake_sacct), "--cluster", cluster, "--lookback", "3650d",
             "--rates", str(card)],
            env={**os.environ, "DATABASE_URL": url, "FAKE_SACCT_DATA": str(data),
                 **(extra_env or {})},
            cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return snapshot(url)
    finally:
        _drop_database(url, admin_url)


def write_transaction_open(url: str) -> bool:
    """True while another session on this database is inside a transaction that has
    written (it holds a transaction id) and is waiting: a poll between COPY and commit."""
    engine = store_db.make_engine(url)
    try:
        with engine.connect() as conn:
            return bool(conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state = 'idle in transaction' "
                "AND backend_xid IS NOT NULL")).scalar())
    finally:
        engine.dispose()


def watermark(url: str, cluster: str = "lab") -> datetime | None:
    engine = store_db.make_engine(url)
    try:
        with engine.connect() as conn:
            value = conn.execute(text(
                "SELECT position FROM watermarks WHERE cluster = :c AND stream = 'sacct'"),
                {"c": cluster}).scalar()
            return None if value is None else value.astimezone(UTC)
    finally:
        engine.dispose()


def runs(url: str) -> list[dict]:
    """Every run, oldest first, as dicts."""
    engine = store_db.make_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(text(
                "SELECT * FROM collector_runs ORDER BY id"))]
    finally:
        engine.dispose()


def count(url: str, sql: str) -> int:
    engine = store_db.make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar())
    finally:
        engine.dispose()


class Gate:
    """The fake sacct's mid-output pause (FAKE_SACCT_GATE): ``env`` for the process,
    ``wait_reached()`` until sacct has printed part of its output and stopped,
    ``open()`` to let it finish."""

    def __init__(self, directory: Path, after_lines: int | None = None) -> None:
        self.path = directory / "sacct-gate"
        self.reached = directory / "sacct-gate.reached"
        self.env = {"FAKE_SACCT_GATE": str(self.path), "FAKE_SACCT_GATE_TIMEOUT": "120"}
        if after_lines is not None:
            self.env["FAKE_SACCT_GATE_AFTER"] = str(after_lines)

    def wait_reached(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.reached.exists():
            assert time.monotonic() < deadline, "sacct never reached the gate"
            time.sleep(0.05)

    def open(self) -> None:
        self.path.touch()


def report(name: str, **figures: float | str) -> None:
    """Print a measured figure (collected by the README's reliability table; -s shows it)."""
    parts = ", ".join(f"{k}={v:.2f}s" if isinstance(v, float) else f"{k}={v}"
                      for k, v in figures.items())
    line = f"[reliability] {name}: {parts}"
    print(line)
    out = os.environ.get("HPC_BILLING_RELIABILITY_LOG")
    if out:
        with open(out, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
