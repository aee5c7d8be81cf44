"""Plain helpers of the slurm test group (no fixtures): the lab's commands, the job mix,
the rate card, and the charges worked out by hand from sacct's own lines.

The hand computation deliberately does not call billing.price: it restates the README's
pricing rules (allocated basis, quantities rounded half-even to 6 places, amounts half-even
to the card's scale) on the numbers sacct prints, so a bug in either side shows.
"""

from __future__ import annotations

import fcntl
import os
import shlex
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

# The releases the lab runs (deploy/lab/lib.sh); every slurm test runs on each.
RELEASES = ("22.05", "24.11", "26.05")
PROJECT = Path(__file__).resolve().parents[2]
LAB_DIR = PROJECT / "deploy" / "lab"
LAB_LOCK = os.environ.get("HPC_BILLING_LAB_LOCK", "/run/lock/hpc-billing-lab.lock")


def read_env_file(path: str) -> dict[str, str]:
    """``export NAME=value`` lines of the lab's env file (shell-quoted values)."""
    env: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            env[name] = value
    return env


def _answers(env: dict[str, str]) -> str | None:
    """None when the release's sinfo and sacctmgr answer, else why not."""
    bin_dir = env.get("HPC_BILLING_LAB_BIN")
    if not bin_dir:
        return "its env file has no HPC_BILLING_LAB_BIN"
    for command in (["sinfo", "-h", "-o", "%T"], ["sacctmgr", "-nP", "show", "cluster"]):
        path = os.path.join(bin_dir, command[0])
        if not os.access(path, os.X_OK):
            return f"{path} is missing (bash deploy/lab/up.sh --rest)"
        try:
            done = subprocess.run([path, *command[1:]], capture_output=True, text=True,
                                  timeout=15)
        except subprocess.TimeoutExpired:
            return f"{' '.join(command)} did not answer within 15 s"
        if done.returncode != 0:
            return (f"{' '.join(command)} failed (is the lab down? bash deploy/lab/up.sh "
                    f"--rest): {done.stderr.strip()[:300]}")
    return None


def find_labs() -> dict[str, tuple[dict[str, str] | None, str | None]]:
    """release -> (its env, None) when its cluster answers, else (None, why not)."""
    out: dict[str, tuple[dict[str, str] | None, str | None]] = {}
    index: dict[str, str] = {}
    if os.path.isfile(LAB_ENV):
        index = read_env_file(LAB_ENV)
    releases_dir = index.get("HPC_BILLING_LAB_RELEASES_DIR",
                             os.path.join(os.path.dirname(LAB_ENV), "releases"))
    for release in RELEASES:
        path = os.path.join(releases_dir, f"{release}.env")
        if not os.path.isfile(path):
            out[release] = None, (f"no env file {path} (start the lab: bash deploy/lab/up.sh "
                                  f"--rest)")
            continue
        env = read_env_file(path)
        problem = _answers(env)
        out[release] = (None, problem) if problem else (env, None)
    return out


def lab_required() -> bool:
    return (os.environ.get("CI", "").lower() == "true"
            or os.environ.get("HPC_BILLING_REQUIRE_LAB") == "1")


class LabLock:
    """The lab's lock (deploy/lab/lib.sh) held for the test session: no up.sh, down.sh or
    other test session changes the lab under these tests. The descriptor is passed on to
    the lab's scripts run from the tests (HPC_BILLING_LAB_LOCK_FD), which then share it."""

    def __init__(self, path: str = LAB_LOCK, timeout_s: float = 900) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise AssertionError(f"the lab's lock {path} was not free within "
                                         f"{timeout_s:.0f} s (another user of the lab)") from None
                time.sleep(0.5)

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)

    def run_script(self, script: str, *args: str, timeout: float = 900) -> str:
        """Run deploy/lab/SCRIPT ARGS sharing this lock; its stdout."""
        done = subprocess.run(["bash", str(LAB_DIR / script), *args], capture_output=True,
                              text=True, timeout=timeout, pass_fds=(self.fd,),
                              env={**os.environ, "HPC_BILLING_LAB_LOCK_FD": str(self.fd)})
        if done.returncode != 0:
            raise AssertionError(f"deploy/lab/{script} {' '.join(args)} exited "
                                 f"{done.returncode}: {done.stderr.strip()[-2000:]}")
        return done.stdout


# --------------------------------------------------------------------------- the lab

class Lab:
    """One release's cluster: its environment and its Slurm commands (sbatch, squeue,
    scancel, sacct ...) through the lab's wrappers (deploy/lab/up.sh writes them; for a
    release in a root they run the command in the root)."""

    def __init__(self, env: dict[str, str], lock: LabLock | None = None) -> None:
        self.env = env
        self.lock = lock
        self.release = env["HPC_BILLING_LAB_RELEASE"]
        self.slurm_version = env.get("HPC_BILLING_LAB_SLURM_VERSION", self.release)
        self.cluster = env["HPC_BILLING_LAB_CLUSTER"]
        self.bin = Path(env["HPC_BILLING_LAB_BIN"])
        self.root = env.get("HPC_BILLING_LAB_ROOT") or None
        self.jobs_dir = env.get("HPC_BILLING_LAB_JOBS_DIR", "/tmp")
        self.sacct_path = str(self.bin / "sacct")
        self.scontrol_path = str(self.bin / "scontrol")

    def __repr__(self) -> str:
        return f"Lab({self.release}, cluster {self.cluster})"

    @property
    def rest_url(self) -> str | None:
        return self.env.get("HPC_BILLING_LAB_REST_URL")

    @property
    def child_env(self) -> dict[str, str]:
        return {**os.environ, "TZ": "UTC"}

    @property
    def cli_env(self) -> dict[str, str]:
        """What ``hpc-billing`` needs in its environment to use this cluster (the wrappers
        set SLURM_CONF themselves)."""
        return {}

    def cmd(self, name: str) -> str:
        return str(self.bin / name)

    def run(self, *argv: str, timeout: float = 60, check: bool = True) -> str:
        done = subprocess.run([self.cmd(argv[0]), *argv[1:]], env=self.child_env,
                              capture_output=True, text=True, timeout=timeout, cwd="/tmp")
        if check and done.returncode != 0:
            raise AssertionError(f"[{self.release}] {shlex.join(argv)} exited "
                                 f"{done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def daemon(self, action: str, name: str) -> None:
        """Stop or start one of this cluster's daemons through deploy/lab/daemon.sh, which
        records every start (down.sh stops it)."""
        assert self.lock is not None, "the lab's lock is needed to restart a daemon"
        self.lock.run_script("daemon.sh", self.release, action, name, timeout=120)

    def daemon_pid(self, name: str) -> int | None:
        path = Path(self.env["HPC_BILLING_LAB_RUN"]) / f"{name}.pid"
        try:
            pid = int(path.read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        state = subprocess.run(["ps", "-o", "stat=,comm=", "-p", str(pid)],
                               capture_output=True, text=True).stdout.split()
        return pid if state and not state[0].startswith("Z") and state[-1] == name else None

    def sbatch(self, *args: str) -> int:
        out = self.run("sbatch", "--parsable", f"--chdir={self.jobs_dir}", "--output=/dev/null",
                       *args)
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
        argv = [self.sacct_path, "--allusers", "--duplicates", "--noconvert", "--parsable2",
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
                raise AssertionError(f"[{self.release}] not final after {timeout}s: "
                                     f"{pending or missing}")
            time.sleep(0.5)


def epoch(text: str) -> datetime | None:
    return None if text in ("", "Unknown", "None") else datetime.fromtimestamp(int(text), UTC)


def settled(row: dict[str, str], steps: list[dict[str, str]] = ()) -> bool:
    """A job line (with its step lines) that slurmdbd has finished writing."""
    state, _ = normalise_state(row["State"])
    if not (is_final_record(state, epoch(row["End"])) and row["Eligible"] not in ("Unknown", "")
            and bool(row["Partition"]) and row["JobName"] != "allocation"):
        return False
    if epoch(row["Start"]) is None or not row["AllocTRES"]:
        return True          # never ran (a het job cancelled while pending has a Start): no steps
    return (any(s["JobID"].endswith(".batch") for s in steps)
            and all(epoch(s["End"]) is not None for s in steps))


# --------------------------------------------------------------------------- the job mix

PIPE_NAME = "odd|name|with|pipes"
ODD_NAME = "tab\there 'sq' $HOME \\back ünï 🙂;&*?"

# name -> sbatch arguments. Small jobs: each node has 16 CPUs, 16000 MB, 2 a100, 2 h100 and
# 2 l4 GPUs; accounting tracks a100 and h100 by type, so an l4 is an UNTYPED GPU to it
# (AllocTRES gres/gpu=1 alone; deploy/lab/slurm.conf.in says why).
MIX: dict[str, list[str]] = {
    "steps": ["-J", "steps", "-c2", "--mem=1G", "-t", "5",
              "--wrap", "srun -n1 sleep 2; srun -n1 hostname; srun -n1 true"],
    "array": ["-J", "array", "--array=1-3", "-c1", "--mem=100M", "--wrap", "sleep 2"],
    "a100": ["-J", "a100x2", "-p", "gpu", "--gres=gpu:a100:2", "-c2", "--mem=1G",
             "--wrap", "sleep 3"],
    "h100": ["-J", "h100x1", "-p", "gpu", "--gres=gpu:h100:1", "-c1", "--mem=512M",
             "--wrap", "sleep 3"],
    "batch_gpu": ["-J", "batch_h100x2", "--gres=gpu:h100:2", "-c3", "--mem=3G",
                  "--wrap", "sleep 2"],
    "untyped": ["-J", "untyped_gpu", "--gres=gpu:l4:1", "-c1", "--mem=256M",
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
# A heterogeneous job never starts on one node and holds the node for itself while it
# waits (RECIPE gotcha 5): it is submitted after the rest have ended and cancelled while
# pending. sacct shows it as 14+0 / 14+1 on 22.05, as one plain record on 24.11 and 26.05.
HET = ["-J", "het", "-c1", "--mem=100M", ":", "-c1", "--mem=100M", "--wrap", "sleep 1"]


@dataclass
class JobMix:
    release: str
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

    def owns(self, job_id_raw: int) -> bool:
        """The record (by JobIDRaw) is one of this mix's jobs: tests look at nothing else,
        because the clusters are shared by every test."""
        return any(int(r["JobIDRaw"]) == job_id_raw for r in self.lines)


def start_mixes(labs: list[Lab]) -> dict[str, JobMix]:
    """Submit MIX on every cluster at once, cancel the two jobs to cancel, then the het
    job, and wait until sacct has them all final: release -> its JobMix."""
    mixes: dict[str, JobMix] = {}
    for lab in labs:
        started = datetime.now(UTC).replace(microsecond=0)
        mix = mixes[lab.release] = JobMix(lab.release,
                                          datetime.fromtimestamp(started.timestamp() - 2, UTC))
        for name, args in MIX.items():
            mix.ids[name] = lab.sbatch(*args)
    for lab in labs:
        lab.wait_state(mixes[lab.release].ids["cancel_running"], {"RUNNING"})
        lab.wait_state(mixes[lab.release].ids["cancel_pending"], {"PENDING"})
    time.sleep(2)                            # the running one accrues some elapsed time
    for lab in labs:
        ids = mixes[lab.release].ids
        lab.run("scancel", str(ids["cancel_running"]), str(ids["cancel_pending"]))
    for lab in labs:
        lab.wait_final(mixes[lab.release].all_ids(), timeout=120)
        mixes[lab.release].ids["het"] = lab.sbatch(*HET)
    time.sleep(2)
    for lab in labs:
        lab.run("scancel", str(mixes[lab.release].ids["het"]))
    for lab in labs:
        mixes[lab.release].lines = lab.wait_final(mixes[lab.release].all_ids(), timeout=120)
    return mixes


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
h100 = "120"

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
h100 = "150"
"""
# The same rates as data, for the hand computation (resource -> rate).
HAND_RATES: dict[str, dict[str, Decimal]] = {
    "base": {"cpu": Decimal("36.00"), "mem": Decimal("3.60"), "gpu": Decimal("90"),
             "gpu:a100": Decimal("180"), "gpu:h100": Decimal("120"), "node": Decimal("1.80"),
             "billing": Decimal("0.36")},
    "gpu-partition": {"cpu": Decimal("18.00"), "mem": Decimal("1.80"), "gpu": Decimal("90"),
                      "gpu:a100": Decimal("240"), "gpu:h100": Decimal("150")},
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
