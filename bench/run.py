"""The performance benchmark: one command, the issue's table, one JSON document.

    python -m bench [--lines 1000000] [--small 100000] [--slurm] [--json PATH]

For a generated export of ``--lines`` sacct lines (bench/gen_sacct.py, seeded) it prints:

1. parse only: the file source's parse + step roll-up, lines/s;
2. the ceiling, measured in the same run: the raw read + split of the same file, plus a
   COPY (same driver, psycopg2) of the same job rows into a scratch table shaped like
   ``jobs`` with its primary key; their times add up to the ceiling's lines/s;
3. end to end: parse, roll up, price (the demo rate card), upsert jobs and charge lines,
   commit, as ``hpc-billing import`` does, lines/s and the ratio to the ceiling; and the
   CPU it used, the collector's (all its threads) and the rest of the machine's busy
   time over the phase (PostgreSQL's, on an otherwise idle machine), with the rates
   those CPU seconds allow on this machine's cores even if all of it ran in parallel;
4. a re-ingest of the same file, nothing changed, and its speed-up over the first;
5. peak RSS of the end-to-end run at ``--small`` and at ``--lines`` lines;
6. the monthly report (``hpc-billing report``, grouped by account) for the busiest
   month, from the rollup table, and the same aggregate from the raw charge lines, with
   their ratio (both are checked to give the same rows).

With ``--slurm`` (the lab must be up, as root) it also runs ``bench.slurm_load``: 100,000
real accounting rows, sacct alone against a full collect over the same window.

Each measured phase runs in a fresh process (its own peak RSS) against a scratch
database ``hpcb_bench`` created and dropped on ``--admin-url``. Figures are printed and
written as one JSON document (default bench/results/bench.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGETS = {
    "end_to_end_vs_ceiling": 0.50,
    "end_to_end_vs_seed_lines_per_s": 3 * 47_000,
    "reingest_speedup": 3.0,
    "rss_growth": 1.5,
    "rss_max_mib": 300,
    "slurm_collect_vs_sacct": 1.25,
    "report_speedup": 20.0,
}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)          # all of this process's threads
    return usage.ru_utime + usage.ru_stime


def _machine_busy_s() -> float | None:
    """CPU seconds the whole machine has been busy (user, nice, system, irq, softirq;
    /proc/stat), or None off Linux. Over a phase, minus the collector's own CPU, this is
    what PostgreSQL (and anything else running) used."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------- phases (child side)

def phase_split(path: str) -> dict:
    t0 = time.perf_counter()
    n = 0
    with open(path, encoding="utf-8", errors="replace", newline="\n") as fh:
        for line in fh:
            line.rstrip("\n").split("|")
            n += 1
    return {"lines": n, "seconds": time.perf_counter() - t0}


def phase_parse(path: str) -> dict:
    from billing.records import JobRecord
    from billing.rollup import rollup_steps
    from collector.slurm.filesource import FileSource

    source = FileSource(path, tz=ZoneInfo("UTC"), cluster=None)
    t0 = time.perf_counter()
    jobs = quarantined = 0
    for item in rollup_steps(source.fetch(None)):
        if isinstance(item, JobRecord):
            jobs += 1
        else:
            quarantined += 1
    return {"lines": source.stats.lines, "jobs": jobs, "quarantined": quarantined,
            "seconds": time.perf_counter() - t0}


def phase_ingest(path: str, url: str) -> dict:
    """What ``hpc-billing import`` does: one file, priced, one transaction."""
    from billing.rates import load_rate_card
    from collector import pipeline
    from collector.pricer import make_pricer
    from collector.usecases.demo import demo_rates_path
    from collector.slurm.filesource import FileSource
    from collector.store import db

    engine = db.make_engine(url)
    sessions = db.session_factory(engine)
    text = demo_rates_path().read_text(encoding="utf-8")
    card = load_rate_card(text)
    source = FileSource(path, tz=ZoneInfo("UTC"), cluster=None)
    busy0, cpu0 = _machine_busy_s(), _own_cpu_s()
    t0 = time.perf_counter()
    pricer = make_pricer(sessions, card, text, source="demo",
                         as_of=datetime(2030, 1, 1, tzinfo=timezone.utc))
    result = pipeline.collect(sessions, source, cluster=None, window=None, kind="file",
                              stream=None, pricer=pricer)
    seconds = time.perf_counter() - t0
    own_cpu = _own_cpu_s() - cpu0
    busy1 = _machine_busy_s()
    engine.dispose()
    return {"lines": result.lines_read, "jobs": result.records_read, "inserted": result.inserted,
            "updated": result.updated, "unchanged": result.unchanged,
            "quarantined": result.quarantined, "charge_lines": result.charge_lines,
            "seconds": seconds, "collector_cpu_s": own_cpu,
            "other_cpu_s": None if busy0 is None or busy1 is None
            else max(busy1 - busy0 - own_cpu, 0.0)}


def phase_copy(dump: str, url: str) -> dict:
    """COPY the job rows (as dumped from ``jobs``) into a scratch table shaped like it."""
    import psycopg2

    from collector.store import db

    dsn = db.make_engine(url).url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS bench_copy_ceiling")
            cur.execute("CREATE TABLE bench_copy_ceiling (LIKE jobs INCLUDING DEFAULTS "
                        "INCLUDING CONSTRAINTS INCLUDING INDEXES)")
            conn.commit()
            rows = sum(1 for _ in open(dump, encoding="utf-8"))
            t0 = time.perf_counter()
            with open(dump, encoding="utf-8") as fh:
                cur.copy_expert("COPY bench_copy_ceiling FROM STDIN (FORMAT text)", fh,
                                size=1 << 20)
            conn.commit()
            seconds = time.perf_counter() - t0
            cur.execute("DROP TABLE bench_copy_ceiling")
            conn.commit()
    finally:
        conn.close()
    return {"rows": rows, "seconds": seconds}


def phase_report(url: str) -> dict:
    """The busiest posted month: the report from the rollups and from the raw lines."""
    from sqlalchemy import text

    from collector.store import db, reports

    engine = db.make_engine(url)
    sessions = db.session_factory(engine)
    with sessions() as s:
        period, lines = s.execute(text(
            "SELECT posted_period, count(*) FROM charge_lines GROUP BY 1 ORDER BY 2 DESC "
            "LIMIT 1")).one()
        jobs = s.execute(text("SELECT count(DISTINCT (job_id_raw, submit_time)) FROM "
                              "charge_lines WHERE posted_period = :p"), {"p": period}).scalar()

    def best_of(fn, n=5):
        times, rows = [], None
        for _ in range(n):
            with sessions() as s:
                t0 = time.perf_counter()
                rows = fn(s)
                times.append(time.perf_counter() - t0)
        return min(times), rows

    rollup_s, from_rollup = best_of(
        lambda s: reports.charge_report(s, period=period, group_by=["account"]))
    raw_s, from_raw = best_of(
        lambda s: reports.charge_report_raw(s, period=period, group_by=["account"]))
    engine.dispose()
    if from_rollup != from_raw:
        raise SystemExit("the report from the rollups differs from the raw aggregate")
    return {"period": period, "charge_lines": lines, "jobs": jobs, "groups": len(from_raw),
            "rollup_seconds": rollup_s, "raw_seconds": raw_s, "seconds": rollup_s}


def _child(args: argparse.Namespace) -> int:
    if args.phase == "split":
        out = phase_split(args.file)
    elif args.phase == "parse":
        out = phase_parse(args.file)
    elif args.phase == "ingest":
        out = phase_ingest(args.file, args.url)
    elif args.phase == "copy":
        out = phase_copy(args.file, args.url)
    else:
        out = phase_report(args.url)
    out["peak_rss_mib"] = round(_peak_rss_mib(), 1)
    print(json.dumps(out))
    return 0


# ------------------------------------------------------------------- driver (parent side)

def _run_phase(phase: str, path: str | None = None, url: str | None = None) -> dict:
    cmd = [sys.executable, "-m", "bench.run", "--phase", phase]
    if path:
        cmd += ["--file", path]
    if url:
        cmd += ["--url", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Scratch:
    """A scratch database on the admin URL's server, migrated to head."""

    def __init__(self, admin_url: str, name: str = "hpcb_bench") -> None:
        import sqlalchemy as sa

        from collector.store import db

        self._sa = sa
        self.name = name
        self.admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.url = sa.engine.make_url(admin_url).set(database=name).render_as_string(
            hide_password=False)
        self.drop()
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine = db.make_engine(self.url)
        db.migrate(engine)
        engine.dispose()

    def drop(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(self._sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))

    def dump_jobs(self, path: Path) -> int:
        import psycopg2

        dsn = self._sa.engine.make_url(self.url).set(drivername="postgresql").render_as_string(
            hide_password=False)
        conn = psycopg2.connect(dsn)
        try:
            with conn.cursor() as cur, open(path, "w", encoding="utf-8") as fh:
                cur.copy_expert("COPY jobs TO STDOUT (FORMAT text)", fh)
                return cur.rowcount
        finally:
            conn.close()


def _generate(lines: int, seed: int, workdir: Path) -> Path:
    from bench.gen_sacct import generate

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"sacct-{lines}-seed{seed}.psv"
    if not path.exists():
        t0 = time.perf_counter()
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", buffering=1 << 20) as fh:
            generate(lines, fh, seed=seed)
        tmp.rename(path)
        print(f"generated {path} ({path.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
    return path


def _rate(lines: int, seconds: float) -> float:
    return lines / seconds if seconds > 0 else float("inf")


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000,
                        help="the smaller input for the peak-RSS comparison")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--admin-url", default=os.environ.get(
        "HPCB_BENCH_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--workdir", default="/tmp/hpcb-bench")
    parser.add_argument("--slurm", action="store_true",
                        help="also run bench.slurm_load against the lab (root, lab up)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "bench.json"))
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        return _child(args)

    work = Path(args.workdir)
    big = _generate(args.lines, args.seed, work)
    small = _generate(args.small, args.seed, work)
    r: dict[str, dict] = {}
    print("parse ...", flush=True)
    r["parse"] = _run_phase("parse", str(big))
    r["split"] = _run_phase("split", str(big))

    scratch = Scratch(args.admin_url)
    try:
        print("end to end ...", flush=True)
        r["ingest"] = _run_phase("ingest", str(big), scratch.url)
        print("re-ingest ...", flush=True)
        r["reingest"] = _run_phase("ingest", str(big), scratch.url)
        print("report ...", flush=True)
        r["report"] = _run_phase("report", url=scratch.url)
        dump = work / "jobs.copy"
        scratch.dump_jobs(dump)
        print("ceiling COPY ...", flush=True)
        r["copy"] = _run_phase("copy", str(dump), scratch.url)
        dump.unlink()
    finally:
        scratch.drop()
    scratch = Scratch(args.admin_url)
    try:
        print(f"end to end at {args.small:,} lines ...", flush=True)
        r["ingest_small"] = _run_phase("ingest", str(small), scratch.url)
    finally:
        scratch.drop()
        scratch.admin.dispose()

    lines = r["parse"]["lines"]
    ceiling_s = r["split"]["seconds"] + r["copy"]["seconds"]
    e2e = _rate(lines, r["ingest"]["seconds"])
    figures = {
        "parse_lines_per_s": _rate(lines, r["parse"]["seconds"]),
        "split_lines_per_s": _rate(lines, r["split"]["seconds"]),
        "copy_rows_per_s": _rate(r["copy"]["rows"], r["copy"]["seconds"]),
        "ceiling_lines_per_s": _rate(lines, ceiling_s),
        "end_to_end_lines_per_s": e2e,
        "end_to_end_vs_ceiling": e2e / _rate(lines, ceiling_s),
        # The CPU the first ingest used, and the best rate it allows on this machine's
        # cores even if all of it ran in parallel; the same for PostgreSQL's part alone
        # (the machine's busy time minus the collector's: what storing these rows costs).
        "end_to_end_cpu_s": r["ingest"]["collector_cpu_s"] + (r["ingest"]["other_cpu_s"] or 0),
        "end_to_end_cpu_bound_lines_per_s": _rate(lines, (r["ingest"]["collector_cpu_s"] + (
            r["ingest"]["other_cpu_s"] or 0)) / (os.cpu_count() or 1)),
        "store_cpu_bound_lines_per_s": (_rate(lines, r["ingest"]["other_cpu_s"] / (os.cpu_count() or 1))
                                        if r["ingest"]["other_cpu_s"] else None),
        "reingest_lines_per_s": _rate(lines, r["reingest"]["seconds"]),
        "reingest_speedup": r["ingest"]["seconds"] / r["reingest"]["seconds"],
        "peak_rss_small_mib": r["ingest_small"]["peak_rss_mib"],
        "peak_rss_mib": r["ingest"]["peak_rss_mib"],
        "rss_growth": r["ingest"]["peak_rss_mib"] / r["ingest_small"]["peak_rss_mib"],
        "report_rollup_s": r["report"]["rollup_seconds"],
        "report_raw_s": r["report"]["raw_seconds"],
        "report_speedup": r["report"]["raw_seconds"] / r["report"]["rollup_seconds"],
    }
    slurm = None
    if args.slurm:
        print("real Slurm load (bench.slurm_load) ...", flush=True)
        out = work / "slurm_load.json"
        proc = subprocess.run([sys.executable, "-m", "bench.slurm_load", "--json", str(out)],
                              cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"bench.slurm_load failed:\n{proc.stdout}\n{proc.stderr}")
        slurm = json.loads(out.read_text())

    n_jobs = r["ingest"]["jobs"]
    print(f"\nhpc-billing benchmark: {lines:,} sacct lines ({n_jobs:,} jobs, "
          f"{r['ingest']['charge_lines']:,} charge lines), {platform.node()}, "
          f"{os.cpu_count()} cores, {datetime.now(timezone.utc):%Y-%m-%d %H:%M}Z\n")
    rows = [
        ("1 parse + roll-up", f"{figures['parse_lines_per_s']:,.0f} lines/s",
         f"{r['parse']['seconds']:.2f} s", ""),
        ("2 ceiling: split", f"{figures['split_lines_per_s']:,.0f} lines/s",
         f"{r['split']['seconds']:.2f} s", ""),
        ("2 ceiling: COPY job rows", f"{figures['copy_rows_per_s']:,.0f} rows/s",
         f"{r['copy']['seconds']:.2f} s", f"{r['copy']['rows']:,} rows"),
        ("2 ceiling: split + COPY", f"{figures['ceiling_lines_per_s']:,.0f} lines/s",
         f"{ceiling_s:.2f} s", ""),
        ("3 end to end (priced, committed)", f"{e2e:,.0f} lines/s",
         f"{r['ingest']['seconds']:.2f} s",
         f"{figures['end_to_end_vs_ceiling']:.2f} x ceiling "
         f"({_verdict(figures['end_to_end_vs_ceiling'] >= TARGETS['end_to_end_vs_ceiling'])}: "
         f">= 0.50); {e2e / 47_000:.2f} x seed "
         f"({_verdict(e2e >= TARGETS['end_to_end_vs_seed_lines_per_s'])}: >= 3)"),
        ("3 its CPU: collector + PostgreSQL",
         f"{r['ingest']['collector_cpu_s']:.0f} + {r['ingest']['other_cpu_s'] or 0:.0f} s", "",
         f"on {os.cpu_count()} cores at best {figures['end_to_end_cpu_bound_lines_per_s']:,.0f}"
         f" lines/s = {figures['end_to_end_cpu_bound_lines_per_s'] / figures['ceiling_lines_per_s']:.2f}"
         f" x ceiling; PostgreSQL's part alone allows "
         + (f"{figures['store_cpu_bound_lines_per_s']:,.0f} lines/s = "
            f"{figures['store_cpu_bound_lines_per_s'] / figures['ceiling_lines_per_s']:.2f} x"
            if figures["store_cpu_bound_lines_per_s"] else "(no /proc/stat)")),
        ("4 re-ingest, unchanged", f"{figures['reingest_lines_per_s']:,.0f} lines/s",
         f"{r['reingest']['seconds']:.2f} s",
         f"{figures['reingest_speedup']:.1f} x faster "
         f"({_verdict(figures['reingest_speedup'] >= TARGETS['reingest_speedup'])}: >= 3)"),
        (f"5 peak RSS at {args.small:,} lines", f"{figures['peak_rss_small_mib']:.0f} MiB", "", ""),
        (f"5 peak RSS at {lines:,} lines", f"{figures['peak_rss_mib']:.0f} MiB", "",
         f"{figures['rss_growth']:.2f} x ({_verdict(figures['rss_growth'] <= TARGETS['rss_growth'] and figures['peak_rss_mib'] < TARGETS['rss_max_mib'])}: "
         f"<= 1.5 and < 300 MiB)"),
        (f"6 report {r['report']['period']} by account, rollups",
         f"{figures['report_rollup_s'] * 1000:.1f} ms", "",
         f"{r['report']['charge_lines']:,} lines of {r['report']['jobs']:,} jobs"),
        ("6 same from raw charge lines", f"{figures['report_raw_s'] * 1000:.1f} ms", "",
         f"{figures['report_speedup']:.0f} x "
         f"({_verdict(figures['report_speedup'] >= TARGETS['report_speedup'])}: >= 20)"),
    ]
    if slurm:
        ratio = slurm["ratio_collect_to_sacct"]
        again = slurm["collect"]["again"]["seconds"] / slurm["sacct"]["seconds"]
        rows.append(("7 real Slurm: sacct alone", f"{slurm['sacct']['seconds']:.1f} s", "",
                     f"{slurm['rows']:,} jobs, {slurm['sacct']['lines']:,} lines; median of "
                     f"{slurm['repeat']} after a warm-up"))
        rows.append(("7 real Slurm: collect --once", f"{slurm['collect']['first']['seconds']:.1f} s",
                     "", f"{ratio:.2f} x sacct "
                         f"({_verdict(ratio <= TARGETS['slurm_collect_vs_sacct'])}: <= 1.25); "
                         f"{slurm['collect']['first']['own_s']:.1f} s not waiting on sacct"))
        rows.append(("7 real Slurm: same poll again", f"{slurm['collect']['again']['seconds']:.1f} s",
                     "", f"{again:.2f} x sacct"))
    width = max(len(row[0]) for row in rows)
    for name, rate, secs, note in rows:
        print(f"{name:<{width}}  {rate:>16}  {secs:>8}  {note}")

    doc = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "host": platform.node(), "cores": os.cpu_count(), "python": platform.python_version(),
           "lines": lines, "jobs": n_jobs, "seed": args.seed, "small_lines": args.small,
           "targets": TARGETS, "figures": figures, "phases": r, "slurm_load": slurm}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"\nfigures written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
