"""One truth per release: every source stores the same rows for the same real jobs.

For the session's job mix on each release (CPU only, typed a100 and h100, an untyped GPU, an
array, a job that fails, a failing step, jobs cancelled while running and while pending, a
het job, other users and accounts, odd names), each path runs as a site would run it,
``hpc-billing collect --once`` into its own fresh database:

* the sacct source (the reference);
* ``--source file`` on ``sacct --json`` of the same window;
* the slurmrestd source (JWT over TCP; it picks the newest data_parser the server offers);
* the pyslurm source (22.05 and 24.11; for 24.11 inside the trixie root, with the pyslurm
  built there by deploy/lab/pyslurm.sh; there is no pyslurm for 26.05).

Then, for every job of the mix (and nothing else: the clusters are shared by all tests):

1. the sacct source's row equals what ``sacct -X -P`` itself reports: JobID, JobIDRaw,
   Submit, State, and from AllocTRES the CPUs, billing and GPUs with their types (a typed GPU
   counts once, AllocTRES lists ``gres/gpu:a100=1`` and ``gres/gpu=1``);
2. every other source's row equals the sacct source's row in every field: identity
   (cluster, JobIDRaw, submit), JobID, state, times, CPUs, memory, GPUs by type, billing,
   the steps' used CPU and peak memory, and the rest. Where a source documentedly cannot
   carry a field, EXCEPTIONS names it for that source and release, with the exact pattern
   the difference must have (anything else fails); the row, with those fields taken from
   sacct, must then hash identically (collector.store.jobs.content_hash).

Each source's poll time is printed (``-s``) as ``[reliability] one truth <release>: ...``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from billing.records import JobRecord
from collector.store import db as store_db
from collector.store import jobs as store_jobs
from collector.store.jobs import content_hash
from tests.conftest import _create_database, _drop_database
from tests.faults.kit import report
from tests.helpers import run_cli
from tests.slurm.labkit import PROJECT, epoch, lab_required

pytestmark = [pytest.mark.slurm]
UTC = timezone.utc
Check = Callable[[JobRecord, JobRecord], bool]


def _absent(field: str) -> Check:
    return lambda ours, theirs: getattr(theirs, field) is None


def _exit_zero(field: str) -> Check:
    # The 22.05 JSON plugin prints SUCCESS/0 for every job, whatever sacct says.
    return lambda ours, theirs: getattr(theirs, field) in ("0:0", getattr(ours, field))


def _state_without_uid(ours: JobRecord, theirs: JobRecord) -> bool:
    # sacct prints "CANCELLED by 0"; the source gives "CANCELLED" (the canceller elsewhere).
    return theirs.state_raw == ours.state and ours.state_raw.startswith(theirs.state_raw)


def _whole_seconds(ours: JobRecord, theirs: JobRecord) -> bool:
    # pyslurm reads each step's tot_cpu_sec and drops its microseconds.
    if ours.cpu_used_s is None or theirs.cpu_used_s is None:
        return ours.cpu_used_s == theirs.cpu_used_s
    return theirs.cpu_used_s == int(theirs.cpu_used_s) and \
        Decimal(0) <= ours.cpu_used_s - theirs.cpu_used_s < Decimal(4)


def _het_as_plain(field: str) -> Check:
    # pyslurm 22.5's db.Job has no het ids: a het component is stored as a plain job.
    def check(ours: JobRecord, theirs: JobRecord) -> bool:
        if ours.het_job_id is None:
            return getattr(ours, field) == getattr(theirs, field)
        return (theirs.job_id, theirs.het_job_id, theirs.het_job_offset) == (
            str(theirs.job_id_raw), None, None)
    return check


JSON_2205: dict[str, tuple[str, Check]] = {
    "uid": ("dbv0.0.38's JSON has no uid", _absent("uid")),
    "db_index": ("dbv0.0.38's JSON has no DBIndex", _absent("db_index")),
    "exit_code": ("the 22.05 JSON plugin prints 0:0 for every job", _exit_zero("exit_code")),
    "derived_exit_code": ("the same for the derived exit code",
                          _exit_zero("derived_exit_code")),
    "state_raw": ("CANCELLED without sacct's 'by <uid>'", _state_without_uid),
}
# data_parser v0.0.40 and later (sacct --json and slurmrestd alike): the job has its user's
# name but no uid, and no DBIndex before v0.0.45 (whose sluid is the DBIndex, base32).
JSON_V40: dict[str, tuple[str, Check]] = {
    "uid": ("v0.0.40+ JSON has the user's name, no uid", _absent("uid")),
    "db_index": ("v0.0.40-v0.0.44 JSON has no DBIndex", _absent("db_index")),
    "state_raw": ("CANCELLED without sacct's 'by <uid>'", _state_without_uid),
}
JSON_V45 = {name: JSON_V40[name] for name in ("uid", "state_raw")}
PYSLURM: dict[str, tuple[str, Check]] = {
    "state_raw": ("pyslurm's state has no 'by <uid>'", _state_without_uid),
    "cpu_used_s": ("pyslurm's step CPU time is whole seconds", _whole_seconds),
}
PYSLURM_2205 = {
    **PYSLURM,
    "job_id": ("pyslurm 22.5's db.Job has no het ids", _het_as_plain("job_id")),
    "het_job_id": ("pyslurm 22.5's db.Job has no het ids", _het_as_plain("het_job_id")),
    "het_job_offset": ("pyslurm 22.5's db.Job has no het ids", _het_as_plain("het_job_offset")),
}
# (source, release) -> field -> (why, the exact pattern of the difference). A pair that is
# not listed must be identical in every field.
EXCEPTIONS: dict[tuple[str, str], dict[str, tuple[str, Check]]] = {
    ("file", "22.05"): JSON_2205,
    ("slurmrestd", "22.05"): JSON_2205,
    ("pyslurm", "22.05"): PYSLURM_2205,
    ("file", "24.11"): JSON_V40,            # sacct --json: v0.0.42, the default of 24.11
    ("slurmrestd", "24.11"): JSON_V40,      # the newest 24.11 serves: v0.0.42
    ("pyslurm", "24.11"): PYSLURM,
    ("file", "26.05"): JSON_V45,            # sacct --json: v0.0.45, the default of 26.05
    ("slurmrestd", "26.05"): JSON_V45,      # the newest 26.05 serves: v0.0.45
}
PYSLURM_RELEASES = ("22.05", "24.11")


# --------------------------------------------------------------------------- the stores

@pytest.fixture(scope="module")
def databases(pg_admin_url):
    """A fresh, migrated database per (release, source), dropped at the end."""
    made: dict[tuple[str, str], str] = {}

    def database(release: str, source: str) -> str:
        if (release, source) not in made:
            url = _create_database(pg_admin_url)
            engine = store_db.make_engine(url)
            try:
                store_db.migrate(engine)
            finally:
                engine.dispose()
            made[(release, source)] = url
        return made[(release, source)]

    yield database
    for url in made.values():
        _drop_database(url, pg_admin_url)


def stored(url: str, cluster: str) -> dict[tuple[int, datetime], JobRecord]:
    engine = store_db.make_engine(url)
    try:
        with store_db.session_factory(engine)() as session:
            return {(r.job_id_raw, r.submit): r
                    for r in store_jobs.list_jobs(session, cluster=cluster)}
    finally:
        engine.dispose()


def rest_token_file(lab, tmp_path_factory) -> str:
    """A token minted now (up.sh's lasts a day), in scontrol's ``SLURM_JWT=...`` form."""
    if not lab.rest_url:
        message = "the lab runs without slurmrestd: start it with bash deploy/lab/up.sh --rest"
        if lab_required():
            pytest.fail(message)
        pytest.skip(message)
    path = tmp_path_factory.mktemp(f"rest-{lab.release}") / "token"
    path.write_text(lab.run("scontrol", "token",
                            f"username={lab.env['HPC_BILLING_LAB_REST_USER']}", "lifespan=3600"))
    path.chmod(0o600)
    return str(path)


@dataclasses.dataclass
class Truth:
    """Every source's stored rows of one release's job mix, and each poll's seconds."""
    rows: dict[str, dict[tuple[int, datetime], JobRecord]]
    seconds: dict[str, float]
    errors: dict[str, str]


@pytest.fixture(scope="module")
def truth(lab, job_mix, databases, tmp_path_factory) -> Truth:
    lab.wait_final(job_mix.all_ids())
    since = job_mix.started - timedelta(seconds=60)
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    lookback = f"{int((until - since).total_seconds()) + 60}s"
    rows: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    errors: dict[str, str] = {}

    def poll(source: str, run: Callable[[str], object]) -> None:
        url = databases(lab.release, source)
        started = time.perf_counter()
        try:
            result = run(url)
        except Exception as exc:  # noqa: BLE001 - reported by the test of that source
            errors[source] = f"{type(exc).__name__}: {exc}"
            return
        seconds[source] = time.perf_counter() - started
        if result not in (0, None):
            errors[source] = f"exit status {result}"
        rows[source] = {key: rec for key, rec in stored(url, lab.cluster).items()
                        if job_mix.owns(rec.job_id_raw)}

    common = ("--cluster", lab.cluster, "--lookback", lookback)
    poll("sacct", lambda url: run_cli("collect", "--once", "--source", "sacct", "--sacct",
                                      lab.sacct_path, *common, "--database-url", url,
                                      env=lab.cli_env))

    export = tmp_path_factory.mktemp(f"json-{lab.release}") / "sacct.json"
    with open(export, "wb") as out:
        subprocess.run([lab.sacct_path, "--json", "--allusers", "--duplicates",
                        "-S", f"{since:%Y-%m-%dT%H:%M:%S}", "-E", f"{until:%Y-%m-%dT%H:%M:%S}",
                        f"--clusters={lab.cluster}"],     # (UTC: lab.child_env has TZ=UTC)
                       env=lab.child_env, stdout=out, check=True, timeout=120)
    poll("file", lambda url: run_cli("collect", "--once", "--source", "file", "--input",
                                     str(export), "--cluster", lab.cluster,
                                     "--database-url", url))

    token_file = rest_token_file(lab, tmp_path_factory)
    poll("slurmrestd", lambda url: run_cli(
        "collect", "--once", "--source", "slurmrestd", "--slurmrestd-url", lab.rest_url,
        "--slurmrestd-user", lab.env["HPC_BILLING_LAB_REST_USER"],
        "--slurmrestd-token-file", token_file, *common, "--database-url", url))

    if lab.release in PYSLURM_RELEASES:
        # A venv with the release's pyslurm and this checkout's hpc-billing (in the trixie
        # root for 24.11), and its runner; the wheel is cached (deploy/lab/pyslurm.sh).
        lab.lock.run_script("pyslurm.sh", "venv", lab.release, str(PROJECT), timeout=1500)
        runner = lab.cmd("hpc-billing-pyslurm")

        def pyslurm(url: str) -> int:
            done = subprocess.run([runner, "collect", "--once", "--source", "pyslurm", *common,
                                   "--database-url", url], capture_output=True, text=True,
                                  timeout=300, env={**os.environ, "TZ": "UTC"})
            if done.returncode != 0:
                raise AssertionError(f"{runner} exited {done.returncode}: "
                                     f"{done.stderr.strip()[-3000:]}")
            return 0
        poll("pyslurm", pyslurm)

    report(f"one truth {lab.release}", jobs=len(job_mix.lines),
           **{f"{source}_poll": value for source, value in seconds.items()})
    return Truth(rows, seconds, errors)


# --------------------------------------------------------------------------- the checks

def sacct_x(lab, job_mix) -> dict[tuple[int, datetime], dict[str, str]]:
    """``sacct -X -P`` of the mix, default output (times as sacct prints them, in UTC)."""
    out = lab.run("sacct", "-X", "-P", "--allusers", "--duplicates", "-o",
                  "JobID,JobIDRaw,Submit,State,AllocTRES", "-j",
                  ",".join(str(i) for i in job_mix.all_ids()))
    lines = out.splitlines()
    header = lines[0].split("|")
    rows = [dict(zip(header, line.split("|"))) for line in lines[1:] if line]
    return {(int(r["JobIDRaw"]), datetime.fromisoformat(r["Submit"]).replace(tzinfo=UTC)): r
            for r in rows}


def alloc_of(alloc_tres: str) -> tuple[int, int | None, dict[str, int]]:
    """(CPUs, billing, GPUs by type) from AllocTRES as sacct prints it by default."""
    values = dict(item.partition("=")[::2] for item in alloc_tres.split(",") if item)
    typed = {key[9:]: int(value) for key, value in values.items() if key.startswith("gres/gpu:")}
    untyped = int(values.get("gres/gpu", 0)) - sum(typed.values())
    gpus = {**typed, **({"untyped": untyped} if untyped else {})}
    billing = int(values["billing"]) if "billing" in values else None
    return int(values.get("cpu", 0)), billing, gpus


def test_sacct_source_stores_what_sacct_x_reports(lab, job_mix, truth):
    assert "sacct" not in truth.errors, truth.errors["sacct"]
    ours = truth.rows["sacct"]
    reported = sacct_x(lab, job_mix)
    assert set(ours) == set(reported)
    assert len(ours) == len(job_mix.lines)
    for key, line in reported.items():
        rec = ours[key]
        assert (rec.job_id, rec.job_id_raw, rec.submit) == (
            line["JobID"], int(line["JobIDRaw"]), key[1])
        assert rec.state_raw == line["State"]
        assert (rec.cpus, rec.billing, rec.gpus_by_type) == alloc_of(line["AllocTRES"]), line
    kinds = {"a100": "a100", "h100": "h100", "untyped": "untyped"}
    for name, gpu in kinds.items():                 # the mix has each kind of GPU
        assert gpu in ours[(job_mix.ids[name], epoch(job_mix.line(name)["Submit"]))].gpus_by_type


def assert_same_rows(reference: dict, theirs_rows: dict, exceptions: dict, label: str) -> int:
    assert set(theirs_rows) == set(reference), (label, set(reference) ^ set(theirs_rows))
    compared = 0
    for key, ours in reference.items():
        theirs = theirs_rows[key]
        for name, (why, check) in exceptions.items():
            assert check(ours, theirs), (label, key, name, why,
                                         getattr(ours, name), getattr(theirs, name))
        differing = {f.name: (getattr(ours, f.name), getattr(theirs, f.name))
                     for f in dataclasses.fields(JobRecord)
                     if f.name not in exceptions and f.name != "raw_digest"
                     and getattr(ours, f.name) != getattr(theirs, f.name)}
        assert differing == {}, (label, key, differing)
        aligned = dataclasses.replace(theirs, **{name: getattr(ours, name) for name in exceptions})
        assert content_hash(aligned) == content_hash(ours), (label, key)
        compared += 1
    return compared


@pytest.mark.parametrize("source", ["file", "slurmrestd", "pyslurm"])
def test_every_source_stores_the_same_rows_as_sacct(lab, job_mix, truth, source):
    if source == "pyslurm" and lab.release not in PYSLURM_RELEASES:
        # Not supported: no pyslurm exists for this Slurm (pyslurm.sh refuses by name).
        done = subprocess.run(["bash", str(PROJECT / "deploy/lab/pyslurm.sh"), "wheel",
                               lab.release], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and f"no pyslurm for Slurm {lab.release}" in done.stderr
        return
    assert source not in truth.errors, f"[{lab.release}] {source}: {truth.errors[source]}"
    assert "sacct" not in truth.errors, truth.errors["sacct"]
    exceptions = EXCEPTIONS.get((source, lab.release), {})
    compared = assert_same_rows(truth.rows["sacct"], truth.rows[source], exceptions,
                                f"{source} on {lab.release}")
    assert compared == len(job_mix.lines)
    # The exceptions are real: each one differs on at least one job (else it is stale).
    for name, (why, _) in exceptions.items():
        assert any(getattr(truth.rows["sacct"][key], name) != getattr(rec, name)
                   for key, rec in truth.rows[source].items()), (source, lab.release, name, why)


def test_slurmrestd_over_its_unix_socket_gives_the_same_rows(lab, job_mix, truth, databases):
    """rest_auth/local: the socket's peer is the user; no token headers (slurmrestd answers
    401 to a local request that carries them)."""
    socket_url = lab.env.get("HPC_BILLING_LAB_REST_SOCKET_URL")
    assert socket_url, "the lab runs without slurmrestd's socket (up.sh --rest)"
    assert "slurmrestd" not in truth.errors, truth.errors["slurmrestd"]
    url = databases(lab.release, "slurmrestd-socket")
    since = job_mix.started - timedelta(seconds=60)
    lookback = f"{int((datetime.now(UTC) - since).total_seconds()) + 60}s"
    assert run_cli("collect", "--once", "--source", "slurmrestd", "--slurmrestd-url", socket_url,
                   "--cluster", lab.cluster, "--lookback", lookback, "--database-url", url) == 0
    over_socket = {key: rec for key, rec in stored(url, lab.cluster).items()
                   if job_mix.owns(rec.job_id_raw)}
    assert over_socket == truth.rows["slurmrestd"] and len(over_socket) == len(job_mix.lines)
