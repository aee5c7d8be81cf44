#!/usr/bin/env python3
"""Ingest benchmark: lines/s for parse alone and for parse + upsert on a generated export.

    python bench/ingest.py [--lines 1000000] [--admin-url postgresql+psycopg2://postgres@127.0.0.1:5432/postgres]

Phases, each in a fresh process so its peak RSS is its own:
  split     read + split every line (the floor any parser pays), lines/s
  parse     the real file source: parse + roll steps into jobs, lines/s
  ingest    parse + COPY + MERGE into an empty scratch database, one transaction, lines/s
  reingest  the same file again, nothing changed (MERGE writes nothing), lines/s
Prints a table and writes the figures as JSON (--json, default bench/results/ingest.json).
The scratch database ``hpcb_bench`` is created and dropped on the admin URL's server.
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
sys.path.insert(0, str(ROOT))


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def phase_split(path: str) -> dict:
    t0 = time.perf_counter()
    n = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
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
    seconds = time.perf_counter() - t0
    return {"lines": source.stats.lines, "jobs": jobs, "quarantined": quarantined, "seconds": seconds}


def phase_ingest(path: str, url: str) -> dict:
    from collector import pipeline
    from collector.slurm.filesource import FileSource
    from collector.store import db

    engine = db.make_engine(url)
    sessions = db.session_factory(engine)
    source = FileSource(path, tz=ZoneInfo("UTC"), cluster=None)
    t0 = time.perf_counter()
    result = pipeline.collect(sessions, source, cluster=None, window=None, kind="file", stream=None)
    seconds = time.perf_counter() - t0
    engine.dispose()
    return {"lines": result.lines_read, "jobs": result.records_read, "inserted": result.inserted,
            "updated": result.updated, "unchanged": result.unchanged,
            "quarantined": result.quarantined, "seconds": seconds}


def _child(args: argparse.Namespace) -> int:
    if args.phase == "split":
        out = phase_split(args.file)
    elif args.phase == "parse":
        out = phase_parse(args.file)
    else:
        out = phase_ingest(args.file, args.url)
    out["peak_rss_mib"] = round(_peak_rss_mib(), 1)
    print(json.dumps(out))
    return 0


def _run_phase(phase: str, path: str, url: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--file", path]
    if url:
        cmd += ["--url", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _scratch_db(admin_url: str) -> tuple[str, object]:
    import sqlalchemy as sa

    from collector.store import db

    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text("DROP DATABASE IF EXISTS hpcb_bench WITH (FORCE)"))
        conn.execute(sa.text("CREATE DATABASE hpcb_bench"))
    url = sa.engine.make_url(admin_url).set(database="hpcb_bench").render_as_string(hide_password=False)
    engine = db.make_engine(url)
    db.migrate(engine)
    engine.dispose()
    return url, admin


def main() -> int:
    parser = argparse.ArgumentParser(description="hpc-billing ingest benchmark")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--admin-url", default=os.environ.get(
        "HPCB_BENCH_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--workdir", default="/tmp/hpcb-bench")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "ingest.json"))
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        return _child(args)

    from bench.gen_sacct import generate

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"sacct-{args.lines}-seed{args.seed}.psv"
    if not path.exists():
        t0 = time.perf_counter()
        with open(path, "w", buffering=1 << 20) as fh:
            generate(args.lines, fh, seed=args.seed)
        print(f"generated {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f}s")

    results: dict[str, dict] = {}
    results["split"] = _run_phase("split", str(path))
    results["parse"] = _run_phase("parse", str(path))
    import sqlalchemy as sa

    url, admin = _scratch_db(args.admin_url)
    try:
        results["ingest"] = _run_phase("ingest", str(path), url)
        results["reingest"] = _run_phase("ingest", str(path), url)
    finally:
        with admin.connect() as conn:  # type: ignore[attr-defined]
            conn.execute(sa.text("DROP DATABASE IF EXISTS hpcb_bench WITH (FORCE)"))
        admin.dispose()  # type: ignore[attr-defined]

    print(f"\nhpc-billing ingest benchmark: {args.lines:,} lines, {platform.node()}, "
          f"{os.cpu_count()} cores, {datetime.now(timezone.utc):%Y-%m-%d %H:%M}Z")
    print(f"{'phase':<10} {'lines/s':>12} {'seconds':>9} {'peak RSS MiB':>13}  notes")
    for name, r in results.items():
        rate = r["lines"] / r["seconds"] if r["seconds"] else float("inf")
        r["lines_per_s"] = round(rate)
        notes = ""
        if "inserted" in r:
            notes = f"jobs {r['jobs']:,}: inserted {r['inserted']:,}, updated {r['updated']:,}, unchanged {r['unchanged']:,}"
        elif "jobs" in r:
            notes = f"jobs {r['jobs']:,}, quarantined {r['quarantined']}"
        print(f"{name:<10} {rate:>12,.0f} {r['seconds']:>9.2f} {r['peak_rss_mib']:>13.1f}  {notes}")
    ratio = results["parse"]["lines_per_s"] / results["split"]["lines_per_s"]
    print(f"\nparse / split = {ratio:.2f}; ingest / parse = "
          f"{results['ingest']['lines_per_s'] / results['parse']['lines_per_s']:.2f}; "
          f"reingest / ingest = {results['reingest']['lines_per_s'] / results['ingest']['lines_per_s']:.2f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"lines": args.lines, "seed": args.seed, "host": platform.node(),
                               "cores": os.cpu_count(),
                               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "phases": results}, indent=2) + "\n")
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
