"""A random sacct export (``--parsable2`` with header, job lines only) whose jobs often run
across month ends: charge lines in two or three usage months. For the range-report tests
(distinct jobs across months from the rollups, docs/design/engine.md §13).

``generate`` writes it; ``edit`` rewrites some jobs (another account: an assoc move;
another end: other lines) so a re-import changes them.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from collector.slurm.sacct import SACCT_FIELDS

ACCOUNTS = ("physics", "chemistry", "biology", "astro")
USERS = tuple(f"user{i:02d}" for i in range(12))
PARTITIONS = ("batch", "gpu", "long")
QOS = ("normal", "high")
CLUSTERS = ("bench", "other")
FIRST = datetime(2026, 2, 1, tzinfo=UTC)
LAST_SUBMIT = datetime(2026, 7, 20, tzinfo=UTC)
_IDX = {name: i for i, name in enumerate(SACCT_FIELDS)}
_FMT = "%Y-%m-%dT%H:%M:%S"


def _elapsed(rng: random.Random) -> int:
    kind = rng.random()
    if kind < 0.5:
        return rng.randrange(60, 86_400)                 # within a day
    if kind < 0.85:
        return rng.randrange(86_400, 40 * 86_400)        # often across one month end
    return rng.randrange(40 * 86_400, 75 * 86_400)       # across one or two


def _row(job: dict[str, object]) -> str:
    row = [""] * len(SACCT_FIELDS)
    start: datetime = job["start"]  # type: ignore[assignment]
    elapsed: int = job["elapsed"]  # type: ignore[assignment]
    cpus: int = job["cpus"]  # type: ignore[assignment]
    gpus = f",gres/gpu={job['gpus']}" if job["gpus"] else ""
    values = {
        "JobID": job["raw"], "JobIDRaw": job["raw"], "Cluster": job["cluster"],
        "Partition": job["partition"], "Account": job["account"], "Group": job["account"],
        "User": job["user"], "UID": 20000 + USERS.index(str(job["user"])), "QOS": job["qos"],
        "State": "COMPLETED", "ExitCode": "0:0", "DerivedExitCode": "0:0",
        "Submit": job["submit"].strftime(_FMT),  # type: ignore[attr-defined]
        "Eligible": job["submit"].strftime(_FMT),  # type: ignore[attr-defined]
        "Start": start.strftime(_FMT), "End": (start + timedelta(seconds=elapsed)).strftime(_FMT),
        "ElapsedRaw": elapsed, "TimelimitRaw": 200_000, "NNodes": 1, "NCPUS": cpus,
        "AllocTRES": f"billing={cpus},cpu={cpus}{gpus},mem={cpus * 2}G,node=1",
        "CPUTimeRAW": elapsed * cpus, "NodeList": f"n{int(str(job['raw'])) % 100:03d}",
        "DBIndex": job["raw"], "JobName": "job",
    }
    for name, value in values.items():
        row[_IDX[name]] = str(value)
    return "|".join(row)


def jobs(n: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    span = int((LAST_SUBMIT - FIRST).total_seconds())
    out = []
    for i in range(n):
        submit = FIRST + timedelta(seconds=rng.randrange(span))
        partition = rng.choice(PARTITIONS)
        out.append({
            "raw": 5_000_000 + i, "cluster": rng.choice(CLUSTERS), "partition": partition,
            "account": rng.choice(ACCOUNTS), "user": rng.choice(USERS), "qos": rng.choice(QOS),
            "submit": submit, "start": submit + timedelta(seconds=rng.randrange(3600)),
            "elapsed": _elapsed(rng), "cpus": rng.choice((1, 4, 16)),
            "gpus": rng.choice((1, 2)) if partition == "gpu" else 0})
    return out


def write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("|".join(SACCT_FIELDS) + "\n" + "\n".join(_row(j) for j in rows) + "\n",
                    encoding="utf-8")
    return path


def edit(rows: list[dict[str, object]], seed: int, count: int) -> list[dict[str, object]]:
    """``count`` random jobs moved to another account, ``count`` others with another end
    (shorter or longer: lines in fewer or more months)."""
    rng = random.Random(seed)
    rows = [dict(r) for r in rows]
    picked = rng.sample(range(len(rows)), 2 * count)
    for i in picked[:count]:
        rows[i]["account"] = rng.choice([a for a in ACCOUNTS if a != rows[i]["account"]])
    for i in picked[count:]:
        rows[i]["elapsed"] = _elapsed(rng)
    return rows
