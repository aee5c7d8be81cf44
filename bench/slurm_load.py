#!/usr/bin/env python3
"""Load benchmark on the real Slurm lab: sacct alone vs. a full ``collect --once``.

    bash deploy/lab/up.sh && python -m bench.slurm_load [--rows 10000] [--hours 28]

Needs the lab (deploy/lab; root, for ``mysql`` over MariaDB's socket) and a PostgreSQL
(HPC_BILLING_TEST_DATABASE_URL, default postgres@127.0.0.1:5432) for a scratch database.

1. Runs one real template job (a gpu-partition job with a typed GPU and its batch step)
   and waits until sacct has it final.
2. Clones it into ``--rows`` accounting rows behind slurmdbd's back, in the lab's own
   accounting database only (RECIPE §9): one INSERT ... SELECT joining the template job to
   MariaDB's ``seq_1_to_N`` sequence table, and one for the steps. Job ids start at
   50,000,001 (far above the lab's), submit times are spread over the last ``--hours``,
   users and accounts rotate over the lab's real associations, 1 in 17 is FAILED (3:0).
3. Runs ``sacct`` once over the window to warm MariaDB and slurmdbd (the first read of
   fresh rows was seen at 70 s against 40 s warm), with exactly the collector's argv
   (collector.slurm.sacct.sacct_argv) and environment, reading its output to the end.
4. ``--repeat`` times (default 2): times sacct alone the same way, then a full
   ``collect --once`` over the SAME window into a fresh scratch PostgreSQL database:
   collector.polling.poll_once (the code ``collect --once`` runs) with its clock pinned
   to the window's end and the lookback set to the window, priced with the demo rate
   card. After the last one, the same poll again (every row unchanged). The ratio is
   the median collect over the median sacct.
5. Deletes every cloned row and drops the scratch database, also after a failure.

Prints the figures and their ratio and writes them to bench/results/slurm_load.json.
The rows are written behind slurmdbd's back: fine for sacct load tests, but slurmdbd's
usage rollups (sreport) may count them if an hourly rollup runs meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pwd
import resource
import secrets
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

UTC = timezone.utc
LAB_ENV = os.environ.get("HPC_BILLING_LAB_ENV", "/etc/hpc-billing-lab/env")
ADMIN_URL = os.environ.get("HPC_BILLING_TEST_DATABASE_URL",
                           "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
ID_BASE = 50_000_000
JOB_FAILED = 5                          # slurm.h: enum job_states, JOB_FAILED
EXIT_3 = 3 << 8                         # a wait() status: exited with 3 (sacct: 3:0)


def log(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", flush=True)


def read_env(path: str) -> dict[str, str]:
    import shlex

    env = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            # The lab's env file says PATH=<lab bin>:$PATH: expand against what we have.
            env[name] = os.path.expandvars(value) if name != "PATH" else value.replace(
                "$PATH", os.environ.get("PATH", "/usr/bin:/bin"))
    return env


class Lab:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = {**os.environ, **env, "TZ": "UTC"}
        self.db = env.get("HPC_BILLING_LAB_MARIADB_DB", "hpcb_lab_acct")
        self.cluster = env.get("HPC_BILLING_LAB_CLUSTER", "lab")

    def run(self, *argv: str, timeout: float = 120) -> str:
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd="/tmp")
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        return done.stdout

    def sql(self, statement: str, timeout: float = 1800) -> list[list[str]]:
        out = self.run("mysql", "--batch", "--skip-column-names", self.db, "-e", statement,
                       timeout=timeout)
        return [line.split("\t") for line in out.splitlines() if line]


# --------------------------------------------------------------------------- the rows

def template_job(lab: Lab) -> tuple[int, int]:
    """Run the template job; return (job_db_inx, its elapsed seconds) once sacct has it."""
    out = lab.run("sbatch", "--parsable", "--chdir=/tmp", "--output=/dev/null", "-J",
                  "bench_template", "-p", "gpu", "--gres=gpu:a100:1", "-c2", "--mem=1G",
                  "--wrap", "sleep 2")
    job_id = int(out.strip().split(";")[0])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = lab.sql(
            f"SELECT j.job_db_inx, j.time_end - j.time_start, COUNT(s.id_step), j.job_name, "
            f"j.time_eligible FROM {lab.cluster}_job_table j LEFT JOIN {lab.cluster}_step_table s "
            f"ON s.job_db_inx = j.job_db_inx AND s.time_end > 0 "
            f"WHERE j.id_job = {job_id} AND j.time_end > 0 GROUP BY j.job_db_inx")
        if rows and int(rows[0][2]) >= 1 and rows[0][3] != "allocation" and int(rows[0][4]) > 0:
            return int(rows[0][0]), int(rows[0][1])
        time.sleep(0.5)
    raise SystemExit(f"template job {job_id} did not finish in slurmdbd within 120 s")


def associations(lab: Lab) -> list[tuple[int, str, int, int]]:
    """(id_assoc, account, uid, gid) of every user association of the lab."""
    out = []
    for id_assoc, user, acct in lab.sql(
            f"SELECT id_assoc, user, acct FROM {lab.cluster}_assoc_table "
            f"WHERE deleted = 0 AND user <> '' ORDER BY id_assoc"):
        entry = pwd.getpwnam(user)
        out.append((int(id_assoc), acct, entry.pw_uid, entry.pw_gid))
    return out


def columns(lab: Lab, table: str) -> list[str]:
    return [row[0] for row in lab.sql(
        f"SELECT column_name FROM information_schema.columns WHERE table_schema = '{lab.db}' "
        f"AND table_name = '{table}' ORDER BY ordinal_position")]


def clone(lab: Lab, template: int, elapsed: int, rows: int, first_submit: int,
          spread_s: int) -> None:
    """INSERT ... SELECT the template job (and then its steps) ``rows`` times."""
    assocs = associations(lab)
    jobs, steps = f"{lab.cluster}_job_table", f"{lab.cluster}_step_table"
    values = ", ".join(f"({k}, {a}, '{acct}', {uid}, {gid})"
                       for k, (a, acct, uid, gid) in enumerate(assocs))
    step = max(spread_s // rows, 1)
    override = {
        "mod_time": "UNIX_TIMESTAMP()",
        "id_job": f"{ID_BASE} + s.seq",
        "time_submit": f"{first_submit} + s.seq * {step}",
        "time_eligible": f"{first_submit} + s.seq * {step}",
        "time_start": f"{first_submit} + s.seq * {step} + 1",
        "time_end": f"{first_submit} + s.seq * {step} + 1 + {elapsed}",
        "id_assoc": "a.id_assoc", "account": "a.acct", "id_user": "a.uid", "id_group": "a.gid",
        "state": f"IF(s.seq % 17 = 0, {JOB_FAILED}, t.state)",
        "exit_code": f"IF(s.seq % 17 = 0, {EXIT_3}, t.exit_code)",
    }
    job_cols = [c for c in columns(lab, jobs) if c != "job_db_inx"]
    select = ", ".join(override.get(c, f"t.`{c}`") for c in job_cols)
    step_cols = columns(lab, steps)
    step_override = {"job_db_inx": "j.job_db_inx", "time_start": "j.time_start",
                     "time_end": "j.time_end",
                     "state": f"IF(j.state = {JOB_FAILED}, {JOB_FAILED}, st.state)",
                     "exit_code": f"IF(j.state = {JOB_FAILED}, {EXIT_3}, st.exit_code)"}
    step_select = ", ".join(step_override.get(c, f"st.`{c}`") for c in step_cols)
    lab.sql(f"""
        CREATE TEMPORARY TABLE hpcb_bench_assoc
            (k INT PRIMARY KEY, id_assoc INT, acct TINYTEXT, uid INT, gid INT);
        INSERT INTO hpcb_bench_assoc VALUES {values};
        INSERT INTO {jobs} ({", ".join(f"`{c}`" for c in job_cols)})
            SELECT {select} FROM {jobs} t
            JOIN seq_1_to_{rows} s
            JOIN hpcb_bench_assoc a ON a.k = s.seq % {len(assocs)}
            WHERE t.job_db_inx = {template};
        INSERT INTO {steps} ({", ".join(f"`{c}`" for c in step_cols)})
            SELECT {step_select} FROM {jobs} j JOIN {steps} st ON st.job_db_inx = {template}
            WHERE j.id_job BETWEEN {ID_BASE + 1} AND {ID_BASE + rows};
    """)


def delete_clones(lab: Lab) -> int:
    jobs, steps = f"{lab.cluster}_job_table", f"{lab.cluster}_step_table"
    (count,) = lab.sql(f"SELECT COUNT(*) FROM {jobs} WHERE id_job > {ID_BASE}")[0]
    lab.sql(f"DELETE st FROM {steps} st JOIN {jobs} j ON j.job_db_inx = st.job_db_inx "
            f"WHERE j.id_job > {ID_BASE}; DELETE FROM {jobs} WHERE id_job > {ID_BASE};")
    return int(count)


# --------------------------------------------------------------------------- the timings

def time_sacct(window, cluster: str, keep: str | None = None) -> dict:
    from collector.slurm.sacct import SACCT_ENV, sacct_argv

    argv = sacct_argv("sacct", window, cluster)
    env = {**os.environ, "TZ": "UTC", **SACCT_ENV}
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    lines = size = 0
    assert proc.stdout is not None
    out = open(keep, "wb") if keep else None
    for chunk in iter(lambda: proc.stdout.read(1 << 20), b""):
        lines += chunk.count(b"\n")
        size += len(chunk)
        if out is not None:
            out.write(chunk)
    if out is not None:
        out.close()
    stderr = proc.stderr.read() if proc.stderr else b""
    code = proc.wait()
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"sacct failed ({code}): {stderr.decode(errors='replace')}")
    return {"seconds": round(seconds, 3), "lines": lines, "bytes": size,
            "argv": argv[:1] + ["..."] + argv[-5:]}


def time_collect(window, cluster: str, url: str, *, again: bool = True) -> dict:
    from collector.cards import load_card
    from collector.polling import poll_once
    from collector.settings import Settings
    from collector.store import db as store_db

    card_path = ROOT / "collector" / "data" / "demo-rates.toml"
    card = load_card(str(card_path))
    lookback = int((window.until - window.since).total_seconds())
    settings = Settings.load({"DATABASE_URL": url, "HPC_BILLING_CLUSTER": cluster,
                              "HPC_BILLING_SOURCE": "sacct", "HPC_BILLING_LOOKBACK": str(lookback),
                              # the second poll starts at watermark - overlap: the same window
                              "HPC_BILLING_OVERLAP": str(lookback),
                              "HPC_BILLING_RATES": str(card_path),
                              "HPC_BILLING_SACCT_TIMEOUT": "1800"})
    engine = store_db.make_engine(url)
    store_db.migrate(engine)
    sessions = store_db.session_factory(engine)
    out = {}
    try:
        for label in ("first", "again") if again else ("first",):
            started = time.perf_counter()
            result = poll_once(sessions, settings, card, now=window.until)
            seconds = time.perf_counter() - started
            assert (result.window.since, result.window.until) == (window.since, window.until)
            out[label] = {"seconds": round(seconds, 3), "sacct_wait_s": round(result.source_s, 3),
                          "jobs": result.records_read, "lines": result.lines_read,
                          "inserted": result.inserted, "updated": result.updated,
                          "unchanged": result.unchanged, "quarantined": result.quarantined,
                          "jobs_priced": result.jobs_priced, "charge_lines": result.charge_lines}
            log(f"collect ({label}): {result.summary()}")
    finally:
        engine.dispose()
    return out


def _admin_execute(sql: str) -> None:
    import psycopg2
    from sqlalchemy.engine import make_url

    kwargs = make_url(ADMIN_URL).set(drivername="postgresql+psycopg2").translate_connect_args(
        username="user", database="dbname")
    conn = psycopg2.connect(**kwargs)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def checkpoint() -> None:
    _admin_execute("CHECKPOINT")


def scratch_database() -> tuple[str, callable]:
    from sqlalchemy.engine import make_url

    name = f"hpcb_slurm_load_{secrets.token_hex(4)}"
    _admin_execute(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8'")
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    return url, lambda: _admin_execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000,
                        help="accounting rows to clone (the issue's lab figure: 10,000)")
    parser.add_argument("--hours", type=float, default=28, help="spread of the cloned submits")
    parser.add_argument("--repeat", type=int, default=2,
                        help="timed (sacct alone, collect) pairs after the warm-up sacct")
    parser.add_argument("--keep-output", metavar="PATH",
                        help="also write the warm-up sacct's output to PATH (for profiling "
                             "the collect offline with a fake sacct)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "slurm_load.json"))
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not os.path.isfile(LAB_ENV):
        raise SystemExit(f"no lab ({LAB_ENV}): bash deploy/lab/up.sh")
    lab_env = read_env(LAB_ENV)
    os.environ["SLURM_CONF"] = lab_env["SLURM_CONF"]       # for sacct run by the collector
    lab = Lab(lab_env)
    from billing.records import Window

    leftovers = delete_clones(lab)
    if leftovers:
        log(f"deleted {leftovers} rows left by an earlier run")
    template, elapsed = template_job(lab)
    now = datetime.now(UTC).replace(microsecond=0)
    spread = int(args.hours * 3600)
    first_submit = int(now.timestamp()) - spread - 3600
    window = Window(datetime.fromtimestamp(first_submit, UTC), now)
    sacct_runs: list[dict] = []
    collect_runs: list[dict] = []
    try:
        started = time.perf_counter()
        clone(lab, template, elapsed, args.rows, first_submit, spread)
        clone_s = time.perf_counter() - started
        log(f"cloned job row {template} into {args.rows} jobs + steps in {clone_s:.1f}s")
        # The first sacct over fresh rows reads them cold (MariaDB's buffer pool, slurmdbd):
        # seen here 70 s against 40 s warm. It is reported, not used for the ratio.
        warm = time_sacct(window, lab.cluster, keep=args.keep_output)
        log(f"sacct warm-up: {warm['lines']} lines, {warm['bytes'] / 2**20:.1f} MiB in "
            f"{warm['seconds']:.2f}s")
        for n in range(args.repeat):
            # The previous collect's writes are flushed first, so that PostgreSQL's
            # checkpoint I/O does not land in this sacct's timing.
            checkpoint()
            sacct = time_sacct(window, lab.cluster)
            sacct_runs.append(sacct)
            log(f"sacct alone ({n + 1}/{args.repeat}): {sacct['seconds']:.2f}s")
            url, drop = scratch_database()
            try:
                collect_runs.append(time_collect(window, lab.cluster, url,
                                                 again=n == args.repeat - 1))
            finally:
                drop()
    finally:
        started = time.perf_counter()
        removed = delete_clones(lab)
        delete_s = time.perf_counter() - started
        log(f"deleted {removed} cloned rows in {delete_s:.1f}s")
    sacct_s = _median([r["seconds"] for r in sacct_runs])
    first_s = _median([r["first"]["seconds"] for r in collect_runs])
    own_s = _median([r["first"]["seconds"] - r["first"]["sacct_wait_s"] for r in collect_runs])
    again = collect_runs[-1]["again"]
    ratio = first_s / sacct_s
    report = {
        "rows": args.rows, "host": platform.node(), "cores": os.cpu_count(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "window": [window.since.isoformat(), window.until.isoformat()],
        "clone_s": round(clone_s, 2), "delete_s": round(delete_s, 2),
        "repeat": args.repeat, "warm_up": warm,
        # medians over the timed pairs; every run is under "runs"
        "sacct": {**sacct_runs[0], "seconds": round(sacct_s, 3)},
        "collect": {"first": {**collect_runs[0]["first"], "seconds": round(first_s, 3),
                              "own_s": round(own_s, 3)},
                    "again": again},
        "runs": {"sacct": sacct_runs, "collect": collect_runs},
        "ratio_collect_to_sacct": round(ratio, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    each = ", ".join(f"{r['seconds']:.1f}" for r in sacct_runs)
    print(f"\nsacct warm-up    {warm['seconds']:8.2f} s  ({warm['lines']} lines; not in the ratio)")
    print(f"sacct alone      {sacct_s:8.2f} s  (median of {each})")
    each = ", ".join(f"{r['first']['seconds']:.1f}" for r in collect_runs)
    print(f"collect --once   {first_s:8.2f} s  (median of {each}; {args.rows} jobs stored and "
          f"priced; not waiting on sacct: {own_s:.2f} s)")
    print(f"ratio            {ratio:8.2f} x")
    print(f"again, unchanged {again['seconds']:8.2f} s")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
