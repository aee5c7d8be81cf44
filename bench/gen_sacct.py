#!/usr/bin/env python3
"""Generate a realistic synthetic sacct export (``--parsable2`` with a header line).

The mix imitates a busy site: several accounts, users (each mostly charging its own
group's account) and partitions, mostly the default QOS; jobs with a
``.batch`` and ``.extern`` step and often srun steps; array tasks (JobID ``A_T`` with their
own JobIDRaw, the last task keeping the array id); typed and untyped GPUs; every common
state including ``CANCELLED by <uid>``, pending jobs with no allocation, running jobs with
End ``Unknown``; short and multi-day jobs (Elapsed past a day, TotalCPU in both formats).
Columns are hpc-billing's own field list (collector.slurm.sacct.SACCT_FIELDS), times are
ISO local times as a site's hand export prints them (UTC here), sizes in sacct's default
units. Same seed, same file.

    python bench/gen_sacct.py --lines 1000000 --out /tmp/sacct-1M.psv [--seed 7]
"""

from __future__ import annotations

import argparse
import random
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from collector.slurm.sacct import SACCT_FIELDS  # noqa: E402

ACCOUNTS = ["physics", "chemistry", "biology", "astro", "climate", "materials", "genomics", "ml"]
USERS = [f"user{i:03d}" for i in range(120)]
PARTITIONS = [("batch", 0.55), ("gpu", 0.25), ("long", 0.1), ("debug", 0.1)]
QOS = [("normal", 0.8), ("high", 0.08), ("low", 0.08), ("debug", 0.04)]
GPU_TYPES = ["a100", "h100", "v100", None]
STATES = [("COMPLETED", 0.72), ("FAILED", 0.08), ("CANCELLED by {uid}", 0.07), ("TIMEOUT", 0.04),
          ("OUT_OF_MEMORY", 0.02), ("NODE_FAIL", 0.005), ("RUNNING", 0.04), ("PENDING", 0.025)]


def _pick(rng: random.Random, weighted):
    r = rng.random()
    acc = 0.0
    for value, w in weighted:
        acc += w
        if r < acc:
            return value
    return weighted[-1][0]


def _hms(seconds: int) -> str:
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"


def _totalcpu(seconds: float) -> str:
    if seconds < 3600:
        m, s = divmod(seconds, 60)
        return f"{int(m):02d}:{s:06.3f}"
    return _hms(int(seconds))


def _mem(mb: int) -> str:
    return f"{mb // 1024}G" if mb % 1024 == 0 else f"{mb}M"


def _ts(dt: datetime | None) -> str:
    return "Unknown" if dt is None else dt.strftime("%Y-%m-%dT%H:%M:%S")


def generate(lines: int, out, seed: int = 7, start: datetime | None = None) -> int:
    rng = random.Random(seed)
    t = start or datetime(2026, 6, 1, tzinfo=timezone.utc)
    idx = {name: i for i, name in enumerate(SACCT_FIELDS)}
    out.write("|".join(SACCT_FIELDS) + "\n")
    written = 0
    next_id = 1000
    db_index = 1
    blank = [""] * len(SACCT_FIELDS)
    while written < lines:
        # As at a real site, a user mostly charges their own group's account and the
        # default QOS (uniform picks would make nearly every job its own report group).
        user = rng.choice(USERS)
        uid = 2000 + USERS.index(user)
        home = ACCOUNTS[USERS.index(user) % len(ACCOUNTS)]
        account = home if rng.random() < 0.9 else rng.choice(ACCOUNTS)
        partition = _pick(rng, PARTITIONS)
        qos = _pick(rng, QOS)
        state = _pick(rng, STATES).format(uid=uid)
        array = rng.random() < 0.2
        tasks = rng.randint(2, 10) if array else 1
        array_id = next_id
        t += timedelta(seconds=rng.randint(0, 20))
        for task in range(1, tasks + 1):
            if written >= lines:
                break
            # Slurm: the array's own id goes to its last task; the others get ids of their own.
            raw = array_id if (array and task == tasks) else (next_id + task if array else next_id)
            job_id = f"{array_id}_{task}" if array else str(raw)
            nodes = 1 if rng.random() < 0.8 else rng.choice([2, 4, 8])
            cpus = nodes * rng.choice([1, 2, 4, 8, 16, 32, 64])
            mem_mb = cpus * rng.choice([512, 1024, 2048, 4096])
            gpus = ""
            billing = cpus + mem_mb // 4096
            if partition == "gpu":
                n = nodes * rng.choice([1, 2, 4])
                gtype = rng.choice(GPU_TYPES)
                gpus = f",gres/gpu={n}" + (f",gres/gpu:{gtype}={n}" if gtype else "")
                billing += 2 * n
            submit = t
            eligible = submit + timedelta(seconds=rng.randint(0, 2))
            pending = state == "PENDING"
            running = state == "RUNNING"
            start_t = None if pending else eligible + timedelta(seconds=rng.randint(0, 3600))
            long_job = rng.random() < 0.05
            elapsed = 0 if pending else rng.randint(86400, 7 * 86400) if long_job else rng.randint(5, 14400)
            end_t = None if (pending or running) else start_t + timedelta(seconds=elapsed)
            alloc = "" if pending else f"billing={billing},cpu={cpus}{gpus},mem={_mem(mem_mb)},node={nodes}"
            used_cpu = 0.0 if pending else elapsed * cpus * rng.uniform(0.05, 0.98)
            row = blank[:]
            row[idx["JobID"]] = job_id
            row[idx["JobIDRaw"]] = str(raw)
            row[idx["Cluster"]] = "bench"
            row[idx["Partition"]] = partition
            row[idx["Account"]] = account
            row[idx["User"]] = user
            row[idx["UID"]] = str(uid)
            row[idx["Group"]] = account
            row[idx["QOS"]] = qos
            row[idx["State"]] = state
            row[idx["ExitCode"]] = "1:0" if state == "FAILED" else "0:0"
            row[idx["DerivedExitCode"]] = "0:0"
            row[idx["Submit"]] = _ts(submit)
            row[idx["Eligible"]] = _ts(eligible)
            row[idx["Start"]] = "None" if start_t is None else _ts(start_t)
            row[idx["End"]] = _ts(end_t)
            row[idx["ElapsedRaw"]] = str(elapsed)
            row[idx["TimelimitRaw"]] = "UNLIMITED" if partition == "long" else "1440"
            row[idx["NNodes"]] = str(nodes)
            row[idx["NCPUS"]] = str(cpus)
            row[idx["AllocTRES"]] = alloc
            row[idx["CPUTimeRAW"]] = str(elapsed * cpus)
            row[idx["TotalCPU"]] = _totalcpu(used_cpu)
            row[idx["NodeList"]] = "None assigned" if pending else f"n{rng.randint(1, 400):03d}"
            row[idx["DBIndex"]] = str(db_index)
            row[idx["JobName"]] = rng.choice(["run.sh", "train", "sim", "wrap", "analysis", "relax"])
            out.write("|".join(row) + "\n")
            written += 1
            if pending:
                db_index += 1
                continue
            steps = ["batch", "extern"] + [str(i) for i in range(rng.choice([0, 0, 1, 2, 3]))]
            for step in steps:
                if written >= lines:
                    break
                srow = blank[:]
                srow[idx["JobID"]] = f"{job_id}.{step}"
                srow[idx["JobIDRaw"]] = f"{raw}.{step}"
                srow[idx["Cluster"]] = "bench"
                srow[idx["Account"]] = account
                srow[idx["State"]] = "RUNNING" if running else ("CANCELLED" if state.startswith("CANCELLED") else state)
                srow[idx["ExitCode"]] = "0:0"
                srow[idx["Submit"]] = _ts(start_t)
                srow[idx["Eligible"]] = _ts(start_t)
                srow[idx["Start"]] = _ts(start_t)
                srow[idx["End"]] = _ts(end_t)
                srow[idx["ElapsedRaw"]] = str(elapsed)
                srow[idx["NNodes"]] = str(nodes)
                srow[idx["NCPUS"]] = str(cpus)
                srow[idx["AllocTRES"]] = f"cpu={cpus}{gpus},mem={_mem(mem_mb)},node={nodes}"
                srow[idx["CPUTimeRAW"]] = str(elapsed * cpus)
                share = used_cpu / len(steps)
                srow[idx["TotalCPU"]] = _totalcpu(share)
                rss_k = rng.randint(2000, mem_mb * 1024)
                if not running and step != "extern":
                    srow[idx["TRESUsageInTot"]] = (f"cpu={_hms(int(share))},energy=0,fs/disk={rng.randint(0, 10**10)},"
                                                   f"mem={rss_k}K,pages={rng.randint(0, 50)},vmem={rss_k * 2}K")
                    srow[idx["MaxRSS"]] = f"{rss_k}K"
                srow[idx["ConsumedEnergyRaw"]] = "0"
                srow[idx["NodeList"]] = row[idx["NodeList"]]
                srow[idx["DBIndex"]] = str(db_index)
                srow[idx["JobName"]] = step
                out.write("|".join(srow) + "\n")
                written += 1
            db_index += 1
        next_id += tasks if array else 1
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.out, "w", buffering=1 << 20) as fh:
        n = generate(args.lines, fh, seed=args.seed)
    print(f"wrote {n} lines to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
