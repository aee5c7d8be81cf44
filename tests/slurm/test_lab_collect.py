"""``hpc-billing collect --once --source sacct`` against the real lab, on every release:
what is stored and what it is charged, checked against sacct's own lines for every job of
the mix (and only those: the clusters are shared by all tests)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from billing.reconcile import check_jobs, expected_billing_units, parse_billing_weights
from billing.records import JobRecord
from collector.slurm.partitions import read_billing_weights
from collector.slurm.fields import duration_s
from collector.store import charges as store_charges
from collector.store import db as store_db
from collector.store import jobs as store_jobs
from collector.store import runs as store_runs
from tests.helpers import run_cli
from tests.slurm.labkit import ODD_NAME, PIPE_NAME, alloc_tres, epoch, hand_charges

pytestmark = [pytest.mark.slurm]
UTC = timezone.utc


@pytest.fixture
def sessions(db_url):
    engine = store_db.make_engine(db_url)
    yield store_db.session_factory(engine)
    engine.dispose()


def collect(lab, job_mix, db_url: str, *extra: str) -> int:
    """One sacct poll of this cluster from the session's job mix on: what an older lab
    holds is not this test's."""
    since = job_mix.started - timedelta(seconds=60)
    lookback = f"{int((datetime.now(UTC) - since).total_seconds()) + 60}s"
    return run_cli("collect", "--once", "--source", "sacct", "--cluster", lab.cluster,
                   "--sacct", lab.sacct_path, "--lookback", lookback, "--database-url", db_url,
                   *extra, env=lab.cli_env)


def stored(sessions, cluster: str) -> dict[tuple[int, datetime], list[JobRecord]]:
    out: dict[tuple[int, datetime], list[JobRecord]] = {}
    with sessions() as session:
        for rec in store_jobs.list_jobs(session, cluster=cluster):
            out.setdefault((rec.job_id_raw, rec.submit), []).append(rec)
    return out


def key(line: dict[str, str]) -> tuple[int, datetime]:
    return int(line["JobIDRaw"]), epoch(line["Submit"])


def test_every_job_is_stored_once_as_sacct_shows_it(lab, job_mix, db_url, sessions):
    assert collect(lab, job_mix, db_url) == 0
    jobs = stored(sessions, lab.cluster)
    assert all(len(records) == 1 for records in jobs.values())      # identity is unique
    # The array has 3 tasks; the het job is 2 records on 22.05, one on 24.11 and 26.05.
    assert len(job_mix.lines) == len(job_mix.ids) + 2 + (lab.release == "22.05")
    for line in job_mix.lines:
        (rec,) = jobs[key(line)]
        alloc = alloc_tres(line["AllocTRES"])
        typed = {k.split(":", 1)[1]: v for k, v in alloc.items() if k.startswith("gres/gpu:")}
        assert (rec.job_id, rec.name, rec.state_raw) == (
            line["JobID"], line["JobName"], line["State"])
        assert (rec.user, rec.uid, rec.account, rec.partition, rec.qos) == (
            line["User"], int(line["UID"]), line["Account"], line["Partition"], line["QOS"])
        assert (rec.eligible, rec.start, rec.end, rec.elapsed_s) == (
            epoch(line["Eligible"]), epoch(line["Start"]), epoch(line["End"]),
            int(line["ElapsedRaw"]))
        assert (rec.cpus, rec.mem_bytes, rec.nodes, rec.billing) == (
            alloc.get("cpu", 0), alloc.get("mem", 0) * 2 ** 20, alloc.get("node", 0),
            alloc.get("billing"))
        untyped = alloc.get("gres/gpu", 0) - sum(typed.values())    # a typed GPU counts once
        assert rec.gpus_by_type == {**typed, **({"untyped": untyped} if untyped else {})}
        assert rec.gpu_count == alloc.get("gres/gpu", 0)
        assert (rec.exit_code, rec.derived_exit_code) == (line["ExitCode"], line["DerivedExitCode"])
        assert (rec.db_index, rec.final) == (int(line["DBIndex"]), True)
    with sessions() as session:
        (run,) = store_runs.list_runs(session, limit=1)
    assert (run.outcome, run.quarantined) == ("ok", 0)


def test_gpu_types_users_states_and_names(lab, job_mix, db_url, sessions):
    assert collect(lab, job_mix, db_url) == 0
    jobs = stored(sessions, lab.cluster)

    def rec(name: str) -> JobRecord:
        return jobs[key(job_mix.line(name))][0]

    assert rec("a100").gpus == (("a100", 2),) and rec("a100").partition == "gpu"
    assert rec("h100").gpus == (("h100", 1),)
    assert rec("batch_gpu").gpus == (("h100", 2),) and rec("batch_gpu").partition == "batch"
    assert rec("untyped").gpus == (("untyped", 1),)         # an l4: not tracked by type
    assert (rec("bob").user, rec("bob").account, rec("bob").gpus) == ("bob", "physics", (("a100", 1),))
    assert (rec("alice").user, rec("alice").group, rec("alice").account) == (
        "alice", "alice", "chemistry")
    assert (rec("high_qos").qos, rec("high_qos").account) == ("high", "biology")
    assert (rec("fail3").state, rec("fail3").exit_code) == ("FAILED", "3:0")
    failstep = rec("failstep")
    assert (failstep.state, failstep.exit_code, failstep.derived_exit_code) == (
        "COMPLETED", "0:0", "7:0")
    step_states = {r["JobID"]: r["State"] for r in lab.sacct([job_mix.ids["failstep"]])}
    assert step_states[f"{job_mix.ids['failstep']}.0"] == "FAILED"
    running = rec("cancel_running")
    assert (running.state, running.state_raw, running.final) == ("CANCELLED", "CANCELLED by 0", True)
    assert running.start is not None and running.elapsed_s >= 2 and running.cpus == 1
    pending = rec("cancel_pending")
    assert (pending.state, pending.start, pending.node_list) == ("CANCELLED", None, None)
    assert (pending.cpus, pending.mem_bytes, pending.gpus, pending.billing) == (0, 0, (), None)
    assert pending.eligible is not None                      # so windowed sacct lists it
    assert (rec("pipe_name").name, rec("odd_name").name) == (PIPE_NAME, ODD_NAME)
    tasks = sorted((r.array_task_id, r.job_id) for r in jobs_of_array(jobs, job_mix))
    array_id = job_mix.ids["array"]
    assert tasks == [(1, f"{array_id}_1"), (2, f"{array_id}_2"), (3, f"{array_id}_3")]
    # The steps job: usage rolled up from its step lines.
    steps = rec("steps")
    rows = lab.sacct([job_mix.ids["steps"]])
    step_lines = [r for r in rows if "." in r["JobID"]]
    (job_line,) = [r for r in rows if "." not in r["JobID"]]
    assert {r["JobID"].split(".")[1] for r in step_lines} == {"batch", "0", "1", "2"}
    assert steps.cpu_used_s == duration_s(job_line["TotalCPU"]).quantize(Decimal("0.001"))
    assert steps.cpu_used_s > 0
    assert steps.max_rss_bytes == max(int(r["MaxRSS"]) for r in step_lines if r["MaxRSS"])


def jobs_of_array(jobs, job_mix) -> list[JobRecord]:
    return [records[0] for records in jobs.values() if records[0].array_job_id == job_mix.ids["array"]]


def test_running_job_is_stored_open_then_final_without_duplicate(lab, job_mix, db_url, sessions):
    job_id = lab.sbatch("-J", "open_then_final", "-c1", "--mem=100M", "--wrap", "sleep 12")
    lab.wait_recorded_running(job_id)
    assert collect(lab, job_mix, db_url) == 0
    (first,) = [r[0] for (raw, _), r in stored(sessions, lab.cluster).items() if raw == job_id]
    assert (first.state, first.final, first.end) == ("RUNNING", False, None)
    (line,) = lab.wait_final([job_id], timeout=60)
    assert collect(lab, job_mix, db_url) == 0
    records = [r for (raw, _), rs in stored(sessions, lab.cluster).items() if raw == job_id
               for r in rs]
    assert len(records) == 1
    (last,) = records
    assert (last.submit, last.state, last.final) == (first.submit, "COMPLETED", True)
    assert (last.end, last.elapsed_s) == (epoch(line["End"]), int(line["ElapsedRaw"]))
    with sessions() as session:
        second, _ = store_runs.list_runs(session, limit=2)
    assert second.jobs_updated >= 1


def test_slurm_billing_is_recomputed_for_every_job(lab, job_mix, db_url, sessions):
    assert collect(lab, job_mix, db_url) == 0
    # The partitions' TRESBillingWeights as slurmctld has them (the real scontrol).
    weights = read_billing_weights(lab.scontrol_path, timeout_s=30, cluster=lab.cluster)
    assert set(weights) == {"batch", "gpu"}
    with sessions() as session:
        jobs = [job for job in store_jobs.list_jobs(session, cluster=lab.cluster)
                if job_mix.owns(job.job_id_raw)]
    billed = [job for job in jobs if job.billing is not None]
    # All but the jobs cancelled while pending (no allocation, no billing).
    assert len(billed) == sum("billing=" in line["AllocTRES"] for line in job_mix.lines)
    for job in billed:
        assert expected_billing_units(job, parse_billing_weights(weights[job.partition])) \
            == job.billing, job
    report = check_jobs(jobs, weights)
    assert (report.checked, report.mismatches, report.no_weights) == (len(billed), (), ())
    # The same through the CLI, weights from the real scontrol.
    period = datetime.now(UTC).strftime("%Y-%m")
    assert run_cli("reconcile", "--period", period, "--weights-from", "scontrol",
                   "--cluster", lab.cluster, "--scontrol", lab.scontrol_path,
                   "--database-url", db_url, env=lab.cli_env) == 0


def test_charges_equal_the_hand_computation_from_sacct(lab, job_mix, db_url, sessions, rate_card):
    assert collect(lab, job_mix, db_url, "--rates", str(rate_card)) == 0
    priced = 0
    with sessions() as session:
        for line in job_mix.lines:
            lines = store_charges.job_charges(session, (lab.cluster,) + key(line))
            got: dict[str, tuple[Decimal, Decimal]] = {}
            for charge in lines:
                quantity, amount = got.get(charge.resource, (Decimal(0), Decimal(0)))
                got[charge.resource] = (quantity + charge.quantity, amount + charge.amount)
                assert charge.currency == "EUR" and charge.kind == "charge"
            expected = hand_charges(line)
            assert got == expected, (line["JobID"], line["JobName"])
            priced += bool(expected)
    # Not the jobs cancelled while pending; maybe a job of 0 s.
    assert priced >= sum("billing=" in line["AllocTRES"] for line in job_mix.lines) - 1
