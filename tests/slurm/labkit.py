"""Plain helpers of the slurm test group (no fixtures): the lab's commands, the job mix,
the rate card, and the charges worked out by hand from sacct's own lines.

The hand computation deliberately does not call billing.price: it restates the README's
pricing rules (allocated basis, quantities rounded half-even to 6 places, amounts half-even
to the card's scale) on the numbers sacct prints, so a bug in either side shows.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from pathlib import Path

from billing.records import is_final_record
from collector.slurm.fields import normalise_state

UTC = timezone.utc
LAB_ENV = os.environ.get("HPC_BILLING_LAB_ENV", "/etc/hpc-billing-lab/env")
SACCT_FIELDS = ("JobID", "JobIDRaw", "JobName", "Partition", "Account", "User", "UID", "QOS",
                "State", "ExitCode", "DerivedExitCode", "Submit", "Eligible", "Start", "End",
                "ElapsedRaw", "AllocTRES", "NodeList", "DBIndex", "MaxRSS", "TotalCPU")
# The ASCII unit separator: job names in the mix contain "|" (sacct -P escapes nothing).
SEP = "\x1f"


# --------------------------------------------------------------------------- finding the lab

def read_env_file(path: str) -> dict[str, str]:
    """``export NAME=value`` lines of the lab's env file (shell-quoted values)."""
    env: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            env[name] = value
    return env


def find_lab() -> tuple[dict[str, str] | None, str | None]:
    """(the lab's env, None) when the lab answers, else (None, why not)."""
    if not os.path.isfile(LAB_ENV):
        return None, f"no lab env file {LAB_ENV} (start the lab: bash deploy/lab/up.sh --rest)"
    env = read_env_file(LAB_ENV)
    if "SLURM_CONF" not in env:
        return None, f"{LAB_ENV} sets no SLURM_CONF"
    for command in (["sinfo", "-h", "-o", "%T"], ["sacctmgr", "-nP", "show", "cluster"]):
        if shutil.which(command[0]) is None:
            return None, f"{command[0]} is not installed (bash deploy/lab/up.sh installs Slurm)"
        try:
            done = subprocess.run(command, env={**os.environ, **env}, capture_output=True,
                                  text=True, timeout=15)
        except subprocess.TimeoutExpired:
            return None, f"{' '.join(command)} did not answer within 15 s"
        if done.returncode != 0:
            return None, (f"{' '.join(command)} failed (is the lab down? bash deploy/lab/up.sh "
                          f"--rest): {done.stderr.strip()[:300]}")
    return env, None


def lab_required() -> bool:
    return (os.environ.get("CI", "").lower() == "true"
            or os.environ.get("HPC_BILLING_REQUIRE_LAB") == "1")


# --------------------------------------------------------------------------- the lab

class Lab:
    """The lab's environment and its Slurm commands (sbatch, squeue, scancel, sacct)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.cluster = env.get("HPC_BILLING_LAB_CLUSTER", "lab")
        self.slurm_conf = env["SLURM_CONF"]
        self.sacct_path = shutil.which("sacct") or "sacct"
        self.scontrol_path = shutil.which("scontrol") or "scontrol"

    @property
    def rest_url(self) -> str | None:
        return self.env.get("HPC_BILLING_LAB_REST_URL")

    @property
    def child_env(self) -> dict[str, str]:
        return {**os.environ, **self.env, "TZ": "UTC"}

    @property
    def cli_env(self) -> dict[str, str]:
        """What ``hpc-billing`` needs in its environment to use the lab's Slurm."""
        return {"SLURM_CONF": self.slurm_conf}

    def run(self, *argv: str, timeout: float = 60, check: bool = True) -> str:
        done = subprocess.run(list(argv), env=self.child_env, capture_output=True, text=True,
                              timeout=timeout, cwd="/tmp")
        if check and done.returncode != 0:
            raise AssertionError(f"{shlex.join(argv)} exited {done.returncode}: "
                                 f"{done.stderr.strip()}")
        return done.stdout

    def sbatch(self, *args: str) -> int:
        out = self.run("sbatch", "--parsable", "--chdir=/tmp", "--output=/dev/null", *args)
        return int(out.strip().split(";")[0])

    def squeue_state(self, job_id: int) -> str:
        return self.run("squeue", "-h", "-j", str(job_id), "-o", "%T", check=False).strip()

    def wait_state(self, job_id: int, states: set[str], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            state = self.squeue_state(job_id)
            if state in states:
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} is {state!r}, not {states} after {timeout}s")
            time.sleep(0.3)

    def wait_recorded_running(self, job_id: int, timeout: float = 60) -> dict[str, str]:
        """Wait until slurmdbd has the job as RUNNING with its Eligible time (only then does a
        windowed sacct list it: slurmdbd's record of a job lags squeue by seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.sacct([job_id], steps=False)
            if (len(lines) == 1 and lines[0]["State"] == "RUNNING"
                    and lines[0]["Eligible"] not in ("Unknown", "") and lines[0]["Partition"]):
                return lines[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} not recorded as RUNNING: {lines}")
            time.sleep(0.3)

    def sacct(self, job_ids, *, steps: bool = True) -> list[dict[str, str]]:
        """sacct's own records of these jobs (with their steps unless steps=False): epoch
        times, --noconvert units, every record (--duplicates)."""
        argv = ["sacct", "--allusers", "--duplicates", "--noconvert", "--parsable2",
                "--noheader", f"--delimiter={SEP}", "--format=" + ",".join(SACCT_FIELDS),
                "-j", ",".join(str(j) for j in job_ids)]
        if not steps:
            argv.append("-X")
        env = {**self.child_env, "SLURM_TIME_FORMAT": "%s"}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise AssertionError(f"sacct failed: {done.stderr}")
        rows = []
        for line in done.stdout.splitlines():
            if line:
                values = line.split(SEP)
                assert len(values) == len(SACCT_FIELDS), line
                rows.append(dict(zip(SACCT_FIELDS, values)))
        return rows

    def wait_final(self, job_ids, timeout: float = 120) -> list[dict[str, str]]:
        """Poll sacct until every record of these jobs is final AND complete; return the
        job lines.

        Complete: slurmdbd first stores a job that starts and ends within a few seconds
        with JobName "allocation", Eligible Unknown and no Partition/QOS, and fills them in
        a few seconds later (measured on the lab: about 4.5 s). Windowed sacct does not
        list such a record (no Eligible), so the collector never sees it. The steps' rows
        can also arrive after the job's end: until they do, the job line's TotalCPU is
        short (the collector's overlapping windows pick the later value up). The tests
        wait for both: a job that started has its batch step, and every step has ended.
        """
        deadline = time.monotonic() + timeout
        while True:
            rows = self.sacct(job_ids)
            lines = [r for r in rows if "." not in r["JobID"]]
            steps: dict[str, list[dict[str, str]]] = {}
            for row in rows:
                if "." in row["JobID"]:
                    steps.setdefault(row["JobID"].split(".")[0], []).append(row)
            pending = [r["JobID"] for r in lines if not settled(r, steps.get(r["JobID"], []))]
            seen = {int(r["JobIDRaw"]) for r in lines} | {
                int(r["JobID"].split("_")[0]) for r in lines if "_" in r["JobID"]}
            missing = [j for j in job_ids if j not in seen]
            if lines and not pending and not missing:
                return lines
            if time.monotonic() > deadline:
                raise AssertionError(f"not final after {timeout}s: {pending or missing}")
            time.sleep(0.5)


def epoch(text: str) -> datetime | None:
    return None if text in ("", "Unknown", "None") else datetime.fromtimestamp(int(text), UTC)


def settled(row: dict[str, str], steps: list[dict[str, str]] = ()) -> bool:
    """A job line (with its step lines) that slurmdbd has finished writing."""
    state, _ = normalise_state(row["State"])
    if not (is_final_record(state, epoch(row["End"])) and row["Eligible"] not in ("Unknown", "")
            and bool(row["Partition"]) and row["JobName"] != "allocation"):
        return False
    if epoch(row["Start"]) is None:
        return True                                   # never ran: no steps
    return (any(s["JobID"].endswith(".batch") for s in steps)
            and all(epoch(s["End"]) is not None for s in steps))


# --------------------------------------------------------------------------- the job mix

PIPE_NAME = "odd|name|with|pipes"
ODD_NAME = "tab\there 'sq' $HOME \\back ünï 🙂;&*?"

# name -> sbatch arguments. Small jobs: the node has 16 CPUs, 16000 MB, 2 a100 and 2 v100.
MIX: dict[str, list[str]] = {
    "steps": ["-J", "steps", "-c2", "--mem=1G", "-t", "5",
              "--wrap", "srun -n1 sleep 2; srun -n1 hostname; srun -n1 true"],
    "array": ["-J", "array", "--array=1-3", "-c1", "--mem=100M", "--wrap", "sleep 2"],
    "a100": ["-J", "a100x2", "-p", "gpu", "--gres=gpu:a100:2", "-c2", "--mem=1G",
             "--wrap", "sleep 3"],
    "v100": ["-J", "v100x1", "-p", "gpu", "--gres=gpu:v100:1", "-c1", "--mem=512M",
             "--wrap", "sleep 3"],
    "batch_gpu": ["-J", "batch_v100x2", "--gres=gpu:v100:2", "-c3", "--mem=3G",
                  "--wrap", "sleep 2"],
    "fail3": ["-J", "fail3", "-c1", "--mem=100M", "--wrap", "sleep 1; exit 3"],
    "failstep": ["-J", "failstep", "-c1", "--mem=100M",
                 "--wrap", "srun sh -c 'sleep 1; exit 7'; true"],
    "cancel_running": ["-J", "cancel_running", "-c1", "--mem=100M", "--wrap", "sleep 300"],
    # gpu's MaxTime is 2 h: this job stays PENDING (PartitionTimeLimit) with an Eligible
    # time, so windowed sacct lists it once cancelled (a held job never would).
    "cancel_pending": ["-J", "cancel_pending", "-p", "gpu", "-t", "3:00:00", "-c1",
                       "--mem=100M", "--wrap", "sleep 1"],
    "alice": ["--uid=alice", "--gid=alice", "-A", "chemistry", "-J", "alice_chem", "-c1",
              "--mem=200M", "--wrap", "sleep 2"],
    "bob": ["--uid=bob", "--gid=bob", "-A", "physics", "-J", "bob_phys", "-p", "gpu",
            "--gres=gpu:a100:1", "-c1", "--mem=200M", "--wrap", "sleep 2"],
    "high_qos": ["-J", "high_qos", "-A", "biology", "--qos=high", "-c2", "--mem=256M",
                 "--wrap", "sleep 2"],
    "pipe_name": ["-J", PIPE_NAME, "-c1", "--mem=100M", "--wrap", "sleep 1"],
    "odd_name": ["-J", ODD_NAME, "-c1", "--mem=100M", "--wrap", "sleep 1"],
}


@dataclass
class JobMix:
    started: datetime                       # a little before the first submission
    ids: dict[str, int] = field(default_factory=dict)
    lines: list[dict[str, str]] = field(default_factory=list)   # sacct job lines, final

    def all_ids(self) -> list[int]:
        return list(self.ids.values())

    def line(self, name: str) -> dict[str, str]:
        (row,) = [r for r in self.lines if r["JobIDRaw"] == str(self.ids[name])
                  and "_" not in r["JobID"]]
        return row

    def array_lines(self) -> list[dict[str, str]]:
        prefix = f"{self.ids['array']}_"
        return [r for r in self.lines if r["JobID"].startswith(prefix)]


def start_mix(lab: Lab) -> JobMix:
    """Submit MIX, cancel the two jobs to cancel, and wait until sacct has them all final."""
    started = datetime.now(UTC).replace(microsecond=0)
    mix = JobMix(started=datetime.fromtimestamp(started.timestamp() - 2, UTC))
    for name, args in MIX.items():
        mix.ids[name] = lab.sbatch(*args)
    lab.wait_state(mix.ids["cancel_running"], {"RUNNING"})
    lab.wait_state(mix.ids["cancel_pending"], {"PENDING"})
    time.sleep(2)                            # the running one accrues some elapsed time
    lab.run("scancel", str(mix.ids["cancel_running"]), str(mix.ids["cancel_pending"]))
    mix.lines = lab.wait_final(mix.all_ids(), timeout=120)
    return mix


# --------------------------------------------------------------------------- prices by hand

RATES = """\
currency = "EUR"
scale = 4
period = "month"
timezone = "UTC"
exempt_states = []
accrue_running = false

[[rules]]
name = "base"
from = 2000-01-01
[rules.rates]
cpu_hour = "36.00"
mem_gib_hour = "3.60"
gpu_hour = "90"
node_hour = "1.80"
billing_unit_hour = "0.36"
[rules.rates.gpu_hour_by_type]
a100 = "180"
v100 = "120"

[[rules]]
name = "gpu-partition"
match = { partition = "gpu" }
from = 2000-01-01
[rules.rates]
cpu_hour = "18.00"
mem_gib_hour = "1.80"
gpu_hour = "90"
[rules.rates.gpu_hour_by_type]
a100 = "240"
v100 = "150"
"""
# The same rates as data, for the hand computation (resource -> rate).
HAND_RATES: dict[str, dict[str, Decimal]] = {
    "base": {"cpu": Decimal("36.00"), "mem": Decimal("3.60"), "gpu": Decimal("90"),
             "gpu:a100": Decimal("180"), "gpu:v100": Decimal("120"), "node": Decimal("1.80"),
             "billing": Decimal("0.36")},
    "gpu-partition": {"cpu": Decimal("18.00"), "mem": Decimal("1.80"), "gpu": Decimal("90"),
                      "gpu:a100": Decimal("240"), "gpu:v100": Decimal("150")},
}
SCALE = Decimal("0.0001")


def alloc_tres(text: str) -> dict[str, int]:
    """``billing=9,cpu=2,gres/gpu:a100=2,gres/gpu=2,mem=1024M,node=1`` -> counts (mem in MB,
    as --noconvert prints it)."""
    out: dict[str, int] = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name == "mem":
            assert value.endswith("M"), value
            value = value[:-1]
        out[name] = int(value)
    return out


def hours(count: int | Fraction, seconds: int) -> Decimal:
    """count x seconds / 3600, rounded half-even to 6 places."""
    units = round(Fraction(count) * seconds * 10 ** 6 / 3600)       # round(): half-even
    return Decimal(units).scaleb(-6)


def hand_charges(line: dict[str, str]) -> dict[str, tuple[Decimal, Decimal]]:
    """resource -> (quantity, amount) for one sacct job line, by the README's rules."""
    state, _ = normalise_state(line["State"])
    elapsed = int(line["ElapsedRaw"])
    alloc = alloc_tres(line["AllocTRES"])
    if (not is_final_record(state, epoch(line["End"])) or epoch(line["Start"]) is None
            or not alloc or elapsed == 0):
        return {}
    rates = HAND_RATES["gpu-partition" if line["Partition"] == "gpu" else "base"]
    quantities: dict[str, Decimal] = {
        "cpu": hours(alloc.get("cpu", 0), elapsed),
        "mem": hours(Fraction(alloc.get("mem", 0), 1024), elapsed),     # MB -> GiB
    }
    typed = {name.split(":", 1)[1]: n for name, n in alloc.items()
             if name.startswith("gres/gpu:")}
    untyped = alloc.get("gres/gpu", 0) - sum(typed.values())
    default_gpus = untyped + sum(n for t, n in typed.items() if f"gpu:{t}" not in rates)
    if default_gpus:
        quantities["gpu"] = hours(default_gpus, elapsed)
    for gpu_type, count in typed.items():
        if f"gpu:{gpu_type}" in rates:
            quantities[f"gpu:{gpu_type}"] = hours(count, elapsed)
    quantities["node"] = hours(alloc.get("node", 0), elapsed)
    if "billing" in alloc:
        quantities["billing"] = hours(alloc["billing"], elapsed)
    out = {}
    for resource, quantity in quantities.items():
        if resource in rates and quantity:
            amount = (rates[resource] * quantity).quantize(SCALE, rounding=ROUND_HALF_EVEN)
            out[resource] = (quantity, amount)
    return out
