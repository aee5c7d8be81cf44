"""The 10M-job scale: a year of a 10,000-node site in the PRODUCTION store, and how fast
``report --period`` and the API's month queries answer on it (issue 19's targets:
report < 1 s, API month queries < 300 ms).

    python -m bench.scale [--jobs 10000000] [--assocs 20000] [--active 0.6]

1. Generates a sacct export of ``--jobs`` job lines (no step lines: the report reads
   charges, and a year of job lines is what the store keeps), spread over the twelve
   months of 2026: ``--assocs`` associations (5,000 users, 500 accounts, 10 partitions,
   5 QOS, as the prototype's report10m did, docs/design/engine.md §13), ``--active`` of them active in a month,
   a quarter of the partitions with GPUs (typed and untyped).
2. Imports it with the production path (``poll_once``, file source, the demo card) into a
   scratch database: the production tables, rollups and indexes, filled by production
   code. Prints the import's wall time and the store's bytes per job.
3. Times, best of 5 after one warm-up, through production code only:
   - ``report --period`` (``collector.usecases.reports.report``, the CLI's code) for the
     busiest month, grouped by account (the default), by account,user and by
     account,resource;
   - the API's month queries through the Flask app (``create_app``, a real token):
     ``/api/v1/report?period=``, with the same groupings, and the range query
     ``from=2026-01&to=2026-12`` (its job counts come from the lines, engine.md §13).

Writes bench/results/scale.json. At small ``--jobs`` (e.g. 20,000) it checks that every
phase works; the figures for the issue are at 10,000,000 (a quiet machine: the lead).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGETS = {"report_s": 1.0, "api_month_s": 0.300}
AS_OF = datetime(2027, 1, 1, tzinfo=UTC)
PARTITIONS = [f"p{i}" for i in range(10)]
QOS = ["normal", "high", "low", "debug", "long"]


def generate(path: Path, *, jobs: int, assocs: int, active: float, seed: int = 19) -> int:
    """Write the export; returns the number of job lines."""
    from collector.slurm.sacct import SACCT_FIELDS

    rng = random.Random(seed)
    idx = {name: i for i, name in enumerate(SACCT_FIELDS)}
    # An association: (user, account, partition, qos); users mostly in one account.
    combos = []
    for a in range(assocs):
        user = a % 5000
        account = (user * 7 + a // 5000) % 500
        combos.append((f"u{user:04d}", 20000 + user, f"acct{account:03d}",
                       PARTITIONS[(a * 3) % 10], QOS[(a // 10) % 5]))
    per_month = jobs // 12
    raw = 1_000_000
    blank = [""] * len(SACCT_FIELDS)
    written = 0
    with open(path, "w", encoding="utf-8", buffering=1 << 22) as out:
        out.write("|".join(SACCT_FIELDS) + "\n")
        for month in range(12):
            first = datetime(2026, month + 1, 1, tzinfo=UTC)
            last = datetime(2026 + (month + 1) // 12, (month + 1) % 12 + 1, 1, tzinfo=UTC)
            span = int((last - first).total_seconds()) - 86_400 * 2
            live = rng.sample(range(assocs), int(assocs * active))
            n = per_month if month < 11 else jobs - written
            rows = []
            for i in range(n):
                user, uid, account, partition, qos = combos[live[i % len(live)]]
                raw += 1
                submit = first + timedelta(seconds=rng.randrange(span))
                start = submit + timedelta(seconds=rng.randrange(600))
                elapsed = rng.randrange(60, 86_400)
                cpus = rng.choice((1, 2, 4, 8, 16, 32, 64))
                mem_g = cpus * rng.choice((1, 2, 4))
                gpus = ""
                if partition in ("p0", "p1"):
                    g = rng.choice((1, 2, 4))
                    gpus = f",gres/gpu={g}" + (f",gres/gpu:a100={g}" if partition == "p0" else "")
                row = blank[:]
                row[idx["JobID"]] = row[idx["JobIDRaw"]] = str(raw)
                row[idx["Cluster"]] = "big"
                row[idx["Partition"]] = partition
                row[idx["Account"]] = row[idx["Group"]] = account
                row[idx["User"]] = user
                row[idx["UID"]] = str(uid)
                row[idx["QOS"]] = qos
                row[idx["State"]] = "COMPLETED"
                row[idx["ExitCode"]] = row[idx["DerivedExitCode"]] = "0:0"
                row[idx["Submit"]] = row[idx["Eligible"]] = submit.strftime("%Y-%m-%dT%H:%M:%S")
                row[idx["Start"]] = start.strftime("%Y-%m-%dT%H:%M:%S")
                row[idx["End"]] = (start + timedelta(seconds=elapsed)).strftime("%Y-%m-%dT%H:%M:%S")
                row[idx["ElapsedRaw"]] = str(elapsed)
                row[idx["TimelimitRaw"]] = "1440"
                row[idx["NNodes"]] = "1"
                row[idx["NCPUS"]] = str(cpus)
                row[idx["AllocTRES"]] = f"billing={cpus},cpu={cpus}{gpus},mem={mem_g}G,node=1"
                row[idx["CPUTimeRAW"]] = str(elapsed * cpus)
                row[idx["NodeList"]] = f"n{raw % 10000:05d}"
                row[idx["DBIndex"]] = str(raw)
                row[idx["JobName"]] = "job"
                rows.append("|".join(row))
                if len(rows) >= 50_000:
                    out.write("\n".join(rows) + "\n")
                    rows = []
            if rows:
                out.write("\n".join(rows) + "\n")
            written += n
    return written


def _best(fn, n: int = 5) -> tuple[float, object]:
    fn()                                              # warm-up (plans, caches)
    times, result = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def run(args: argparse.Namespace) -> dict:
    from bench.run import Scratch, store_bytes
    from collector.polling import poll_once
    from collector.runtime import Runtime, load_settings
    from collector.usecases.reports import report as report_usecase
    from collector.web.app import create_app
    from collector.web.auth import new_token
    from collector.health import Health

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"scale-{args.jobs}-{args.assocs}.psv"
    scratch = Scratch(args.admin_url, name=args.db_name, reuse=args.reuse)
    out: dict = {"jobs_requested": args.jobs, "assocs": args.assocs, "active": args.active,
                 "database": args.db_name, "reused": scratch.reused}
    try:
        card = ROOT / "collector" / "data" / "demo-rates.toml"
        settings = load_settings({"database_url": scratch.url, "source": "file",
                                  "input": str(path), "timezone": "UTC", "rates": str(card),
                                  "cluster": None}, env={})
        runtime = Runtime(settings)
        try:
            if scratch.reused:
                print(f"reusing database {args.db_name} (no import)", flush=True)
                with runtime.database.engine.connect() as conn:
                    out["jobs"] = conn.exec_driver_sql("SELECT count(*) FROM jobs").scalar_one()
                    out["charge_lines"] = conn.exec_driver_sql(
                        "SELECT count(*) FROM charge_lines").scalar_one()
            else:
                if not path.exists():
                    t0 = time.perf_counter()
                    tmp = path.with_suffix(".tmp")
                    generate(tmp, jobs=args.jobs, assocs=args.assocs, active=args.active)
                    tmp.rename(path)
                    print(f"generated {path} ({path.stat().st_size / 2**20:.0f} MiB) in "
                          f"{time.perf_counter() - t0:.1f} s", flush=True)
                print("import ...", flush=True)
                t0 = time.perf_counter()
                result = poll_once(runtime.database.sessions, settings, runtime.pricing_card(),
                                   now=AS_OF)
                out["import_s"] = time.perf_counter() - t0
                out["jobs"] = result.records_read
                out["charge_lines"] = result.charge_lines
                out["lines_per_s"] = result.lines_read / out["import_s"]
                # The process's peak (the generator streams: this is the poll's peak).
                out["import_peak_rss_mib"] = resource.getrusage(
                    resource.RUSAGE_SELF).ru_maxrss / 1024
            sizes = store_bytes(scratch.url)
            out["store_bytes"] = sizes["total"]
            out["bytes_per_job"] = sizes["total"] / max(sizes["jobs"], 1)
            out["largest_relations"] = sizes["largest"]
            period = "2026-07"
            out["period"] = period
            timings: dict[str, dict] = {}
            for label, group_by in (("account", ["account"]),
                                    ("account,user", ["account", "user"]),
                                    ("account,resource", ["account", "resource"])):
                best, rows = _best(lambda g=group_by: report_usecase(runtime, period, g))
                timings[f"report --period {period} --group-by {label}"] = {
                    "seconds": best, "rows": len(rows), "target_s": TARGETS["report_s"]}
            token, line = new_token("all")
            tokens = work / "scale-api-tokens"
            tokens.write_text(line + "\n", encoding="utf-8")
            tokens.chmod(0o600)
            web_settings = load_settings({"database_url": scratch.url,
                                          "api_tokens_file": str(tokens)}, env={})
            health = Health()
            health.bind_scheduler(lambda: True)
            engine = runtime.database.engine
            app = create_app(web_settings, engine=engine, sessions=runtime.database.sessions,
                             health=health)
            client = app.test_client()
            headers = {"Authorization": f"Bearer {token}"}
            for label, query in (
                    ("account", f"period={period}"),
                    ("account,user", f"period={period}&group_by=account,user"),
                    ("account,resource", f"period={period}&group_by=account,resource"),
                    ("12 months, account", "from=2026-01&to=2026-12")):
                def get(q: str = query) -> bytes:
                    # The server's answer: the request through Flask to the response's
                    # bytes. Parsing them (the client's work) is outside the timing.
                    response = client.get(f"/api/v1/report?{q}", headers=headers)
                    if response.status_code != 200:
                        raise SystemExit(f"API {q}: {response.status_code} {response.data[:300]!r}")
                    return response.data
                best, body = _best(get)
                timings[f"API /report {label}"] = {
                    "seconds": best, "rows": len(json.loads(body)["rows"]),
                    "bytes": len(body), "target_s": TARGETS["api_month_s"]}
            out["timings"] = timings
        finally:
            runtime.close()
    finally:
        if args.keep:
            print(f"kept database {args.db_name} (--keep); drop it with "
                  f"DROP DATABASE \"{args.db_name}\"", flush=True)
        else:
            scratch.drop()
        scratch.admin.dispose()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=10_000_000)
    ap.add_argument("--assocs", type=int, default=20_000)
    ap.add_argument("--active", type=float, default=0.6)
    ap.add_argument("--admin-url", default=os.environ.get(
        "HPCB_BENCH_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "hpcb-bench"))
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "scale.json"))
    ap.add_argument("--db-name", default="hpcb_bench_scale",
                    help="scratch database (dropped first unless --reuse finds it)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the database afterwards (to time the queries again with --reuse)")
    ap.add_argument("--reuse", action="store_true",
                    help="if the database exists, skip the import and only time the queries")
    args = ap.parse_args(argv)
    out = run(args)
    imported = (f"imported in {out['import_s']:.1f} s ({out['lines_per_s']:,.0f} lines/s, "
                f"peak RSS {out['import_peak_rss_mib']:,.0f} MiB)"
                if "import_s" in out else f"in the reused database {out['database']}")
    print(f"\n{out['jobs']:,} jobs, {out['charge_lines']:,} charge lines, {imported}; "
          f"{out['bytes_per_job']:,.0f} bytes per stored job (all tables, indexes, rollups)")
    for name, t in out["timings"].items():
        verdict = "met" if t["seconds"] < t["target_s"] else "NOT met"
        print(f"{name:<48} {t['seconds'] * 1000:9.1f} ms  {t['rows']:>7,} rows  "
              f"({verdict}: < {t['target_s'] * 1000:.0f} ms)")
    doc = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "host": platform.node(),
           "cores": os.cpu_count(), "targets": TARGETS, **out}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"figures written to {path}")
    return 0 if all(t["seconds"] < t["target_s"] for t in out["timings"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
