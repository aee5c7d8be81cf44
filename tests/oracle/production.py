"""The other side of the differential tests: the PRODUCTION import into a real PostgreSQL
database, and what it stored, read back through the stable relations (``jobs``,
``charge_lines``, ``quarantine``, ``collector_runs``: their columns are the contract that
outlives the engine's storage change, /work/coord/CONTRACT.md).

Not part of the oracle (``tests.oracle.path`` never imports this module).
"""

from __future__ import annotations

import queue
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.oracle.path import CHARGE_COLUMNS, JOB_COLUMNS, _sort_key

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stored:
    jobs: list[tuple[Any, ...]]
    lines: list[tuple[Any, ...]]
    quarantine: dict[int, list[tuple[Any, ...]]]   # run id -> QUARANTINE_COLUMNS, sorted
    runs: list[tuple[int, str, str | None]]        # (id, outcome, error), oldest first

    def quarantine_of(self, run: int) -> list[tuple[Any, ...]]:
        """What the ``run``-th run (1 = first) quarantined."""
        return self.quarantine.get(self.runs[run - 1][0], [])

    def job_keys(self) -> set[tuple[Any, ...]]:
        return {row[:3] for row in self.jobs}


class ScratchDatabases:
    """Per-case databases cloned from one migrated template on the test server (a clone
    takes ~0.1 s where migrating takes seconds; every case starts from an empty store
    and a fresh process cache of ids cannot point into another case's rows)."""

    def __init__(self, admin_url: str, tag: str = "hpcb_eng_bench") -> None:
        from collector.store import db

        self.admin_url = admin_url
        self.admin = sa.create_engine(make_url(admin_url), isolation_level="AUTOCOMMIT",
                                      poolclass=sa.pool.NullPool)
        self.tag = f"{tag}_{secrets.token_hex(4)}"
        self.template = f"{self.tag}_tmpl"
        self._exec(f'CREATE DATABASE "{self.template}" TEMPLATE template0 ENCODING \'UTF8\'')
        engine = db.make_engine(self._url(self.template))
        try:
            db.migrate(engine)
        finally:
            engine.dispose()
        # Dropping a database waits for a checkpoint (~0.5 s): one thread drops the
        # finished cases' databases while the next cases run; ``close`` waits for it.
        self._drops: queue.Queue[str | None] = queue.Queue()
        self._dropper = threading.Thread(target=self._drop_loop, name="drop-scratch",
                                         daemon=True)
        self._dropper.start()

    def _drop_loop(self) -> None:
        while (name := self._drops.get()) is not None:
            self._exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _exec(self, sql: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(sa.text(sql))

    def _url(self, name: str) -> str:
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    @contextmanager
    def database(self) -> Iterator[str]:
        name = f"{self.tag}_{secrets.token_hex(4)}"
        self._exec(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        try:
            yield self._url(name)
        finally:
            self._drops.put(name)

    def close(self) -> None:
        self._drops.put(None)
        self._dropper.join()
        self._exec(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')
        self.admin.dispose()


def production_import(url: str, path: Path, *, now: datetime, timezone: str = "UTC",
                      cluster: str | None = None, rates: Path | None = None) -> str:
    """``hpc-billing collect --once --source file --input PATH`` as its use case runs it
    (one poll of the configured file source, priced with the card), at a fixed ``now``
    (the pricing's as-of). Returns the run's outcome ("ok", "partial", "failed")."""
    from collector.polling import poll_once
    from collector.run_result import CollectError
    from collector.runtime import Runtime, load_settings

    overrides = {"database_url": url, "source": "file", "input": str(path),
                 "timezone": timezone, "cluster": cluster,
                 "rates": None if rates is None else str(rates)}
    runtime = Runtime(load_settings(overrides, env={}))
    try:
        try:
            result = poll_once(runtime.database.sessions, runtime.settings,
                               runtime.pricing_card(), now=now)
        except CollectError as exc:
            return exc.result.outcome
        return result.outcome
    finally:
        runtime.close()


def production_poll(url: str, *, sacct: Path, cluster: str, now: datetime, lookback_s: int,
                    rates: Path, env: dict[str, str] | None = None) -> str:
    """One ``collect --once`` poll of the sacct source (``sacct`` is the executable: a fake
    at the process boundary in the tests) over [now - lookback, now). Returns the outcome."""
    import os

    from collector.polling import poll_once
    from collector.run_result import CollectError
    from collector.runtime import Runtime, load_settings

    overrides = {"database_url": url, "source": "sacct", "sacct": str(sacct),
                 "cluster": cluster, "lookback_s": str(lookback_s),
                 "rates": str(rates)}
    saved = dict(os.environ)
    os.environ.update(env or {})          # for the fake sacct (a child process)
    runtime = Runtime(load_settings(overrides, env={}))
    try:
        try:
            result = poll_once(runtime.database.sessions, runtime.settings,
                               runtime.pricing_card(), now=now)
        except CollectError as exc:
            return exc.result.outcome
        return result.outcome
    finally:
        runtime.close()
        os.environ.clear()
        os.environ.update(saved)


def verify_rollups(url: str) -> Any:
    """``hpc-billing rollup verify`` (all periods): the rollups recomputed from the lines
    and compared (a ``RollupCheck``; ``.ok`` when no bucket differs)."""
    from collector.runtime import Runtime, load_settings
    from collector.usecases.rollups import verify

    runtime = Runtime(load_settings({"database_url": url}, env={}))
    try:
        return verify(runtime)
    finally:
        runtime.close()


def _hex(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return value


def _job_value(col: str, value: Any) -> Any:
    if col in ("mem_used_byte_s", "db_index") and value is not None:
        if Decimal(value) != Decimal(value).to_integral_value():
            raise AssertionError(f"{col} {value} is not whole")
        return int(value)
    if col == "raw_digest":
        return _hex(value)
    if col == "gpus":
        return dict(value or {})
    if col == "cpu_used_s" and value is not None:
        return Decimal(value)
    return value


def read_stored(url: str) -> Stored:
    """Everything the import stored that the differential tests compare."""
    engine = sa.create_engine(make_url(url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            jobs = [tuple(_job_value(c, v) for c, v in zip(JOB_COLUMNS, row, strict=True))
                    for row in conn.execute(sa.text(
                        f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs"))]
            cols = ", ".join(f"c.{c}" if c != "rate_card" else "r.version"
                             for c in CHARGE_COLUMNS)
            lines = [tuple(row) for row in conn.execute(sa.text(
                f"SELECT {cols} FROM charge_lines c JOIN rate_cards r ON r.id = c.rate_card_id"))]
            quarantine: dict[int, list[tuple[Any, ...]]] = {}
            for row in conn.execute(sa.text(
                    "SELECT run_id, source, line_no, job_id, reason, raw FROM quarantine")):
                quarantine.setdefault(row[0], []).append(tuple(row[1:]))
            runs = [(row[0], row[1], row[2]) for row in conn.execute(sa.text(
                "SELECT id, outcome, error FROM collector_runs ORDER BY id"))]
    finally:
        engine.dispose()
    return Stored(jobs=sorted(jobs, key=_sort_key), lines=sorted(lines, key=_sort_key),
                  quarantine={run: sorted(rows, key=_sort_key)
                              for run, rows in quarantine.items()}, runs=runs)
