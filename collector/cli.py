"""The command line: arguments in, one use case called, its result printed.

``hpc-billing <command>``; settings come from the environment and flags override them
(``runtime.load_settings``). Exit codes: 0 ok, 1 a failed collection or an error (logged
once), 2 invalid configuration (every problem listed), 3 a partial collection.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from types import FrameType
from typing import Any, TextIO

from collector import __version__, render
from collector.run_result import CollectError
from collector.runtime import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    Runtime,
    load_settings,
    redact_secrets,
    setup_logging,
)
from collector.runtime import wsgi_application as wsgi_application  # gunicorn's entry
from collector.settings import SPECS, SettingsError
from collector.usecases import (
    audit,
    backfill,
    budgets,
    collect,
    demo,
    explain,
    exports,
    jobs,
    periods,
    quarantine,
    rates,
    reconcile,
    reports,
    reprice,
    retention,
    rollups,
    runs,
    serve,
    statement,
    tokens,
)
from collector.usecases.documents import FinanceDataError, FinanceInputError
from collector.usecases.exports import GlCodeError, NoGlCodesError

log = logging.getLogger("hpc_billing")


# --------------------------------------------------------------------------- arguments

def _settings_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("settings (each overrides its environment variable)")
    for spec in SPECS:
        group.add_argument(spec.flag, dest=f"setting_{spec.field}", metavar=spec.env,
                           # argparse %-formats help texts: a setting's help may say
                           # '19%' (tax rate), so its % signs are escaped here.
                           default=None, help=spec.help.replace("%", "%%"))
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
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _period_arg(text: str) -> str:
    """A billing period, ``YYYY-MM``."""
    value = text.strip()
    try:
        datetime.strptime(value, "%Y-%m")  # noqa: DTZ007 - a month name, not an instant
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a period: {text!r} (use YYYY-MM, e.g. 2026-11)") from None
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


FORMATS = ("table", "csv", "json")


def build_parser() -> argparse.ArgumentParser:
    settings = _settings_parent()
    parser = argparse.ArgumentParser(
        prog="hpc-billing",
        description="Collect Slurm accounting into PostgreSQL and price it.")
    parser.add_argument("--version", action="version", version=f"hpc-billing {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("migrate", parents=[settings],
                   help="upgrade the database schema to the newest version")

    p = sub.add_parser("collect", parents=[settings],
                       help="read accounting into the database (one window with --once)")
    p.add_argument("--once", action="store_true",
                   help="collect one window (or the whole --input file) and exit")

    sub.add_parser("run", parents=[settings],
                   help="the daemon: poll on a schedule and serve probes, metrics and the API")

    p = sub.add_parser("token", help="API tokens")
    token_sub = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    q = token_sub.add_parser("new", parents=[settings],
                             help="make a token; prints it once, and the line for the tokens "
                                  "file (recorded in the audit trail when it is on)")
    q.add_argument("--scope", required=True, help="'all', or 'account:<name>[,<name>...]'")

    p = sub.add_parser("backfill", parents=[settings],
                       help="walk history in bounded windows, resumably")
    p.add_argument("--since", type=_date_arg, required=True,
                   help="start (UTC unless a zone is given)")
    p.add_argument("--until", type=_date_arg, default=None, help="end (default: now)")

    p = sub.add_parser("jobs", parents=[settings], help="list stored jobs")
    p.add_argument("--since", type=_date_arg, default=None)
    p.add_argument("--until", type=_date_arg, default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--format", choices=FORMATS, default="table")

    p = sub.add_parser("runs", parents=[settings], help="list the collector run log, newest first")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--format", choices=FORMATS, default="table")

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
    p.add_argument("--format", choices=FORMATS, default="table")

    sub.add_parser("demo", parents=[settings],
                   help="import the bundled real sacct export and show what was collected")

    p = sub.add_parser("rates", help="rate cards: check a file, list stored versions")
    rates_sub = p.add_subparsers(dest="rates_command", required=True, metavar="ACTION")
    q = rates_sub.add_parser("check", parents=[settings],
                             help="validate a rate card and show what each rule matches")
    q.add_argument("file")
    rates_sub.add_parser("list", parents=[settings], help="rate-card versions stored in the database")

    p = sub.add_parser("reprice", parents=[settings],
                       help="price stored jobs again with the current rate card (HPC_BILLING_RATES)")
    p.add_argument("--since", type=_date_arg, required=True)
    p.add_argument("--until", type=_date_arg, default=None, help="default: now")

    p = sub.add_parser("period", help="billing periods: close one, reopen one, list them")
    period_sub = p.add_subparsers(dest="period_command", required=True, metavar="ACTION")
    q = period_sub.add_parser("close", parents=[settings],
                              help="freeze a period: later changes become corrections; the "
                                   "audit trail records the digest of its charges")
    q.add_argument("period", type=_period_arg)
    q.add_argument("--note", default=None)
    q = period_sub.add_parser("reopen", parents=[settings],
                              help="open a closed period again (recorded in the audit trail "
                                   "with the reason)")
    q.add_argument("period", type=_period_arg)
    q.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    period_sub.add_parser("list", parents=[settings], help="closed periods")

    p = sub.add_parser("rollup", help="the monthly rollups: check them against the lines, "
                                      "rewrite them")
    rollup_sub = p.add_subparsers(dest="rollup_command", required=True, metavar="ACTION")
    for action, text in (("verify", "recompute the rollups from the charge lines and compare "
                                    "(exit 1 on a difference)"),
                         ("rebuild", "rewrite the rollups from the charge lines")):
        q = rollup_sub.add_parser(action, parents=[settings], help=text)
        q.add_argument("--period", type=_period_arg, default=None,
                       help="one posted period (default: all)")

    sub.add_parser("prune", parents=[settings],
                   help="delete node snapshots and runs older than their retention "
                        "(HPC_BILLING_NODE_RETENTION, HPC_BILLING_RUN_RETENTION) and create "
                        "the coming months' partitions (the daemon does this daily)")

    p = sub.add_parser("report", parents=[settings], help="charges of a period, grouped")
    p.add_argument("--period", type=_period_arg, required=True)
    p.add_argument("--group-by", default="account",
                   help="comma-separated: account, user, partition, qos, cluster, resource "
                        "(default account)")
    p.add_argument("--format", choices=FORMATS, default="table")

    p = sub.add_parser("statement", parents=[settings],
                       help="one account's statement for a period: CSV or JSON (one line per "
                            "job and resource) or the PDF invoice")
    p.add_argument("--period", type=_period_arg, required=True)
    p.add_argument("--account", required=True)
    p.add_argument("--format", choices=statement.FORMATS, default="csv")
    p.add_argument("--output", default="-", help="file to write (default: standard output)")

    p = sub.add_parser("export", help="a period's charges for finance systems")
    export_sub = p.add_subparsers(dest="export_command", required=True, metavar="KIND")
    q = export_sub.add_parser("gl", parents=[settings],
                              help="the balanced general-ledger journal (CSV; GL codes from "
                                   "--gl-mapping FILE or the rate card's [gl] table)")
    q.add_argument("--period", type=_period_arg, required=True)
    q.add_argument("--output", default="-", help="file to write (default: standard output)")
    q = export_sub.add_parser("focus", parents=[settings],
                              help="FinOps FOCUS 1.x rows (CSV), one per charge line")
    q.add_argument("--period", type=_period_arg, required=True)
    q.add_argument("--output", default="-", help="file to write (default: standard output)")

    p = sub.add_parser("explain", parents=[settings],
                       help="why a job cost what it did: each line's card, rule, quantity, "
                            "rate, period split and corrections")
    p.add_argument("--job", required=True, help="JobIDRaw or JobID (42, 6_3, 14+1)")
    p.add_argument("--format", choices=("text", "json"), default="text")

    p = sub.add_parser("audit", help="the audit trail: verify it, list its entries")
    audit_sub = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    q = audit_sub.add_parser("verify", parents=[settings],
                             help="recompute the hash chain and every closed period's digest; "
                                  "exit 1 naming the first entry or period that does not match")
    q.add_argument("--expect-seq", type=int, default=None,
                   help="an entry known to exist (from an earlier verify): fail if the trail "
                        "ends before it")
    q.add_argument("--expect-hash", default=None, help="with --expect-seq: its hash")
    q.add_argument("--anchor", default=None, metavar="FILE",
                   help="read the expected entry from FILE ('<seq> <hash>'), and write the "
                        "new head there when the trail verifies (keep FILE out of the "
                        "database's reach)")
    q = audit_sub.add_parser("list", parents=[settings], help="entries, newest first")
    q.add_argument("--action", default=None, help="only this action (period.close, export ...)")
    q.add_argument("--subject", default=None, help="only this subject (e.g. a period)")
    q.add_argument("--limit", type=int, default=100)
    q.add_argument("--format", choices=FORMATS, default="table")

    p = sub.add_parser("reconcile", parents=[settings],
                       help="recompute Slurm's billing= from TRESBillingWeights and list mismatches")
    p.add_argument("--period", type=_period_arg, required=True)
    p.add_argument("--weights-from", choices=("auto", "scontrol", "card"), default="auto",
                   help="auto: scontrol when it answers, else the rate card's "
                        "[slurm.billing_weights]")
    p.add_argument("--format", choices=FORMATS, default="table")

    p = sub.add_parser("budget", help="account budgets per period")
    budget_sub = p.add_subparsers(dest="budget_command", required=True, metavar="ACTION")
    q = budget_sub.add_parser("set", parents=[settings], help="set an account's budget for a period")
    q.add_argument("account")
    q.add_argument("period", type=_period_arg)
    q.add_argument("amount", type=_money_arg)
    q.add_argument("--currency", default=None, help="default: the rate card's currency, else EUR")
    q = budget_sub.add_parser("list", parents=[settings], help="budgets with what is used")
    q.add_argument("--period", type=_period_arg, default=None)
    q.add_argument("--format", choices=FORMATS, default="table")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, str | None]:
    return {spec.field: getattr(args, f"setting_{spec.field}", None) for spec in SPECS}


def _stop_on_signals(message: str) -> threading.Event:
    """An event set by SIGTERM or SIGINT (logged once)."""
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        if not stop.is_set():
            log.info(message, signum)
            stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return stop


def _emit(fmt: str, columns: Sequence[str], rows: Iterable[dict[str, Any]],
          table_columns: Sequence[str] | None = None,
          out: TextIO | None = None) -> None:
    stream = out or sys.stdout
    if fmt == "json":
        render.write_json_array(stream, rows)
    elif fmt == "csv":
        render.write_csv(stream, columns, rows)
    else:
        render.write_table(stream, table_columns or columns, rows)


def _exit_code(outcome: str) -> int:
    return {"ok": EXIT_OK, "partial": EXIT_PARTIAL}.get(outcome, EXIT_FAILED)


class _Progress:
    """A backfill's progress: a bar on a terminal, one log line per window otherwise."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.total, self.done, self.stream = 0, 0, stream
        self.tty = stream.isatty()

    def start(self, total: int) -> None:
        self.total = total

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

    def interrupt(self) -> None:
        if self.tty:
            self.stream.write("\n")


# --------------------------------------------------------------------------- commands

def cmd_migrate(rt: Runtime, args: argparse.Namespace) -> int:
    print(f"schema at revision {collect.migrate(rt)}")
    return EXIT_OK


def cmd_collect(rt: Runtime, args: argparse.Namespace) -> int:
    if args.once or rt.settings.source == "file":
        return _exit_code(collect.collect_once(rt).outcome)
    collect.collect_until_stopped(rt, _stop_on_signals("signal %d: stopping after the "
                                                       "current poll"))
    return EXIT_OK


def cmd_run(rt: Runtime, args: argparse.Namespace) -> int:
    serve.serve(rt, _stop_on_signals("signal %d: shutting down"))
    return EXIT_OK


def cmd_backfill(rt: Runtime, args: argparse.Namespace) -> int:
    return _exit_code(backfill.backfill(rt, args.since, args.until, _Progress()).outcome)


def cmd_jobs(rt: Runtime, args: argparse.Namespace) -> int:
    found = jobs.list_jobs(rt, since=args.since, until=args.until, limit=args.limit)
    rows = (render.job_to_dict(j, extra=args.format != "table") for j in found)
    _emit(args.format, render.JOB_COLUMNS + render.JOB_EXTRA_COLUMNS, rows,
          render.TABLE_JOB_COLUMNS)
    return EXIT_OK


def cmd_runs(rt: Runtime, args: argparse.Namespace) -> int:
    rows = render.run_rows(runs.list_runs(rt, args.limit))
    columns = list(rows[0].keys()) if rows else list(render.RUN_TABLE_COLUMNS)
    _emit(args.format, columns, rows, render.RUN_TABLE_COLUMNS)
    return EXIT_OK


def cmd_quarantine(rt: Runtime, args: argparse.Namespace) -> int:
    if args.ids and not args.accept:
        raise SettingsError(["quarantine --id is for --accept; list a run's records with --run"])
    if args.accept:
        count = quarantine.accept(rt, args.run, args.ids)
        print(f"accepted {count} quarantined record(s)")
        return EXIT_OK
    rows = list(render.iter_dicts(quarantine.list_quarantine(rt, args.run, args.limit)))
    columns = list(rows[0].keys()) if rows else ["id", "run_id", "line_no", "job_id", "reason",
                                                 "raw"]
    if args.format == "table":
        table_rows = [{**r, "raw": (r.get("raw") or "").replace("\x1f", "␟")
                       .replace("\n", "⏎")[:80],
                       "accepted": "yes" if r.get("accepted_at") else ""}
                      for r in rows]
        _emit("table", columns, table_rows,
              ["id", "run_id", "line_no", "job_id", "reason", "accepted", "raw"])
    else:
        _emit(args.format, columns, rows)
    return EXIT_OK


def cmd_demo(rt: Runtime, args: argparse.Namespace) -> int:
    """Import the bundled real export into the configured (or embedded) database, price
    it, show it."""
    demo_rt = demo.demo_runtime(rt)
    try:
        card = demo_rt.require_card("the demo")
        counts = demo.sample_counts()
        print(f"hpc-billing {__version__}: importing the bundled real sacct export "
              f"{demo.sample_path().name} (Slurm 22.05 lab cluster: {counts.records} job "
              f"records of {counts.jobs} jobs; a requeued job has a record per run)",
              flush=True)
        print(f"pricing with {card.path}" + ("" if rt.settings.rates else
              " (demo rates, inflated because the lab's jobs run for seconds)"), flush=True)
        result = demo.run_demo(demo_rt)
    finally:
        demo_rt.close()
    if result.run.outcome != "ok":
        return _exit_code(result.run.outcome)
    print("\nStored jobs (hpc-billing jobs):", flush=True)
    rows = [render.job_to_dict(j, extra=False) for j in result.jobs]
    render.write_table(sys.stdout, render.TABLE_JOB_COLUMNS, rows)
    group_by = list(demo.REPORT_GROUPS)
    for period, report in result.reports:
        print(f"\nCharges posted in {period} (hpc-billing report --period {period} "
              "--group-by account,user):")
        dicts = [render.report_row_to_dict(r, group_by) for r in report]
        render.write_table(sys.stdout, [*group_by, "jobs", "amount", "currency", "resources"],
                           render.report_table_rows(dicts, group_by),
                           empty_message="(no charges)")
        charged = sum(row.jobs for row in report)
        uncharged = sum(n for _, n in result.uncharged)
        print(f"{charged} of the {len(result.jobs)} job records have charges posted in "
              f"{period}" + (f"; {uncharged} have none: " + ", ".join(
                  f"{reason} {n}" for reason, n in result.uncharged) if uncharged else "")
              + ".")
    print("\nRun log (hpc-billing runs):")
    render.write_table(sys.stdout, render.RUN_TABLE_COLUMNS, render.run_rows(result.runs))
    settings = rt.settings
    where = ("DATABASE_URL" if settings.database_url
             else f"the embedded PostgreSQL in {settings.data_dir}")
    if result.run.inserted or result.run.updated:
        print(f"\n{len(rows)} job records are in {where}. Run the demo again: the run log "
              "then shows nothing inserted or updated (idempotent upsert).")
    else:
        print(f"\n{len(rows)} job records are in {where}; this run inserted and updated "
              "nothing: every record was stored already (idempotent upsert).")
    return EXIT_OK


def cmd_rates(rt: Runtime, args: argparse.Namespace) -> int:
    if args.rates_command == "check":
        loaded, description = rates.check_card(args.file)
        card = loaded.card
        print(f"{args.file}: valid rate card, version {card.version[:12]} "
              f"({card.currency}, scale {card.scale}, period {card.period}, "
              f"timezone {card.timezone})")
        for line in description:
            print(line)
        return EXIT_OK
    rows = [render.dataclass_to_dict(c) for c in rates.list_cards(rt)]
    columns = [c for c in (rows[0].keys() if rows else ["id", "version", "currency", "loaded_at"])
               if c != "text"]
    render.write_table(sys.stdout, columns, rows, empty_message="(no rate card loaded yet)")
    return EXIT_OK


def cmd_reprice(rt: Runtime, args: argparse.Namespace) -> int:
    reprice.reprice(rt, args.since, args.until)
    return EXIT_OK


def cmd_period(rt: Runtime, args: argparse.Namespace) -> int:
    if args.period_command == "close":
        closed = periods.close_period(rt, args.period, note=args.note)
        if closed.already_closed:
            print(f"period {args.period} was closed already: nothing changed")
            return EXIT_OK
        seq = closed.entry.seq if closed.entry else "-"
        print(f"period {args.period} is closed: its charges will not change; later changes "
              f"are posted as corrections in the next open period\n"
              f"audit entry {seq}: {closed.lines} charge lines, digest {closed.digest}")
        return EXIT_OK
    if args.period_command == "reopen":
        reopened = periods.reopen_period(rt, args.period, reason=args.reason)
        seq = reopened.entry.seq if reopened.entry else "-"
        print(f"period {args.period} is open again (closed by {reopened.closed_by}); audit "
              f"entry {seq}: {reopened.lines} charge lines, digest {reopened.digest}")
        return EXIT_OK
    rows = [render.dataclass_to_dict(p) for p in periods.list_periods(rt)]
    render.write_table(sys.stdout, list(rows[0].keys()) if rows else ["period", "closed_at"],
                       rows, empty_message="(no closed period)")
    return EXIT_OK


def cmd_rollup(rt: Runtime, args: argparse.Namespace) -> int:
    check = (rollups.rebuild if args.rollup_command == "rebuild" else rollups.verify)(
        rt, args.period)
    scope = f"period {check.period}" if check.period else "every period"
    print(f"rollups of {scope}: {check.resource_buckets} resource buckets,"
          f" {check.job_buckets} job buckets, {check.reentry_buckets} re-entry buckets;"
          f" {check.resource_differing} resource, {check.jobs_differing} job and"
          f" {check.reentries_differing} re-entry buckets differ from the charge lines")
    if not check.ok:
        print("hpc-billing: the rollups do not match the charge lines; "
              "`hpc-billing rollup rebuild` rewrites them", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_prune(rt: Runtime, args: argparse.Namespace) -> int:
    done = retention.prune(rt)
    print(f"pruned {done.node_snapshots} node snapshot rows and {done.runs} runs; "
          f"created {done.partitions_created} partitions ahead")
    return EXIT_OK


def cmd_report(rt: Runtime, args: argparse.Namespace) -> int:
    group_by = reports.parse_group_by(args.group_by)
    rows = reports.report(rt, args.period, group_by)
    dicts = [render.report_row_to_dict(row, group_by) for row in rows]
    if args.format == "json":
        render.write_json_array(sys.stdout, dicts)
        return EXIT_OK
    flat = [render.flatten_report_row(d, group_by) for d in dicts]
    columns = [*group_by, "jobs", "amount", "currency", "resources"]
    if args.format == "csv":
        render.write_csv(sys.stdout, columns, flat)
    else:
        render.write_table(sys.stdout, columns, render.report_table_rows(dicts, group_by),
                           empty_message=f"(no charges posted in {args.period})")
    return EXIT_OK


def cmd_statement(rt: Runtime, args: argparse.Namespace) -> int:
    result = statement.write_statement(rt, args.period, args.account, fmt=args.format,
                                       output=args.output)
    if args.output != "-":
        for doc in result.written:
            print(f"{doc.output}: {doc.bytes} bytes, sha256 {doc.sha256}", file=sys.stderr)
    return EXIT_OK


def cmd_export(rt: Runtime, args: argparse.Namespace) -> int:
    if args.export_command == "gl":
        result = exports.export_gl(rt, args.period, output=args.output)
    else:
        result = exports.export_focus(rt, args.period, output=args.output)
    totals = ", ".join(f"{t} {c}" for c, t in sorted(result.totals.items()))
    log.info("export %s %s: %d charge lines, %d rows, total %s%s", result.kind, args.period,
             result.lines, result.rows, totals,
             f", GL codes from {result.codes_from}" if result.codes_from else "")
    return EXIT_OK


def cmd_explain(rt: Runtime, args: argparse.Namespace) -> int:
    docs = explain.explain(rt, args.job)
    if args.format == "json":
        json.dump({"records": docs}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for line in explain.explain_lines(docs):
            print(line)
    return EXIT_OK


def cmd_audit(rt: Runtime, args: argparse.Namespace) -> int:
    if args.audit_command == "list":
        entries = audit.list_entries(rt, action=args.action, subject=args.subject,
                                     limit=args.limit)
        rows = [audit.entry_to_dict(e) for e in entries]
        if args.format == "table":
            rows = [{**r, "details": json.dumps(r["details"], sort_keys=True)[:80],
                     "hash": r["hash"][:12]} for r in rows]
        elif args.format == "csv":
            rows = [{**r, "details": json.dumps(r["details"], sort_keys=True)} for r in rows]
        columns = ["seq", "at", "actor", "action", "subject", "details", "prev", "hash"]
        if args.format == "table":
            render.write_table(sys.stdout, [c for c in columns if c != "prev"], rows,
                               empty_message="(the audit trail is empty)")
        else:
            _emit(args.format, columns, rows)
        return EXIT_OK
    anchor = audit.read_anchor(args.anchor, args.expect_seq, args.expect_hash)
    report = audit.verify(rt, anchor=anchor)
    head = report.head
    where = f"head entry {head.seq} {head.hash}" if head else "empty"
    if not report.ok:
        assert report.problem is not None
        print(f"audit trail does NOT verify: {report.problem} ({report.entries} entries "
              f"read; {where})")
        return EXIT_FAILED
    print(f"audit trail verifies: {report.entries} entries, {where}; "
          f"{len(report.periods_checked)} closed period(s) match their digest"
          + (f" ({', '.join(report.periods_checked)})" if report.periods_checked else ""))
    if report.unsealed:
        print(f"closed without a recorded digest (closed before the trail, or outside "
              f"hpc-billing; not checked): {', '.join(report.unsealed)}")
    if anchor is not None:
        print(f"anchor entry {anchor.seq} is in the trail")
    if args.anchor:
        audit.write_anchor(args.anchor, head)
        print(f"anchor file {args.anchor} now holds entry {head.seq if head else 0}")
    return EXIT_OK


def cmd_reconcile(rt: Runtime, args: argparse.Namespace) -> int:
    result = reconcile.reconcile(rt, args.period, args.weights_from)
    rows = [render.dataclass_to_dict(m) for m in result.mismatches]
    if args.format == "json":
        render.write_json_array(sys.stdout, rows)
    elif rows:
        _emit(args.format, list(rows[0].keys()), rows)
    return EXIT_FAILED if result.mismatches else EXIT_OK


def cmd_budget(rt: Runtime, args: argparse.Namespace) -> int:
    if args.budget_command == "set":
        currency = budgets.set_budget(rt, args.account, args.period, args.amount, args.currency)
        print(f"budget of {args.account} for {args.period}: {args.amount} {currency}")
        return EXIT_OK
    rows = [render.budget_to_dict(b) for b in budgets.list_budgets(rt, args.period)]
    columns = list(rows[0].keys()) if rows else ["account", "period", "amount", "currency", "used"]
    _emit(args.format, columns, rows)
    return EXIT_OK


def cmd_token(rt: Runtime, args: argparse.Namespace) -> int:
    token, line = tokens.new_token(rt, args.scope)
    print(f"token (shown once; give it to the client as 'Authorization: Bearer <token>'):\n"
          f"{token}\n")
    print(f"line for HPC_BILLING_API_TOKENS_FILE (stores only the hash):\n{line}")
    return EXIT_OK


COMMANDS: dict[str, Callable[[Runtime, argparse.Namespace], int]] = {
    "migrate": cmd_migrate, "collect": cmd_collect, "backfill": cmd_backfill, "jobs": cmd_jobs,
    "runs": cmd_runs, "quarantine": cmd_quarantine, "demo": cmd_demo, "rates": cmd_rates,
    "reprice": cmd_reprice, "period": cmd_period, "report": cmd_report,
    "rollup": cmd_rollup, "prune": cmd_prune,
    "statement": cmd_statement, "reconcile": cmd_reconcile, "budget": cmd_budget,
    "run": cmd_run, "token": cmd_token, "export": cmd_export, "explain": cmd_explain,
    "audit": cmd_audit,
}

# Commands that record in the audit trail or verify it: a configured key that cannot be
# read, or is too short, stops them at start (exit 2), before they do anything.
AUDITED = frozenset({"collect", "run", "backfill", "reprice", "period", "budget", "token",
                     "statement", "export", "audit", "demo"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(_overrides(args))
    except SettingsError as exc:
        print(f"hpc-billing: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_level)
    try:
        with Runtime(settings) as rt:
            if args.command in AUDITED:
                rt.audit  # noqa: B018 - read the key now: a bad one stops the command here
            return COMMANDS[args.command](rt, args)
    except SettingsError as exc:
        print(f"hpc-billing: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CollectError:
        return EXIT_FAILED         # logged by the use case, with the run's summary
    except (FinanceInputError, FinanceDataError) as exc:
        print(f"hpc-billing: {exc}", file=sys.stderr)
        return EXIT_FAILED         # nothing to bill: an unknown account, an empty period
    except (GlCodeError, NoGlCodesError, audit.AuditError) as exc:
        print(f"hpc-billing: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BrokenPipeError:
        # `hpc-billing jobs | head`: the reader went away; not an error.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return EXIT_OK
    except Exception as exc:
        log.error("%s: %s", type(exc).__name__, redact_secrets(str(exc), settings))
        log.debug("traceback", exc_info=True)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
