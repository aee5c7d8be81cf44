"""A requeued job on the real lab (every release): two accounting records, both stored,
each charged only for its own run.

slurmctld holds a requeued job in PENDING (BeginTime) for 120 s before it may run again,
and then starts it at its next scheduling pass (RECIPE §5, gotcha 6: the whole test took
186 s that way). The test does not measure that hold, so it lifts it with
``scontrol update jobid=N StartTime=now`` as soon as the job is requeued: the accounting
is the same (the old record REQUEUED with the original Submit, the new one with
Submit = the requeue time, a later Eligible and its own DBIndex) and the test takes
about 15 s. It releases the hold only after slurmd has finished killing the first run: a
release within a fraction of a second makes slurmd refuse the new launch (measured: the
second run FAILED 1:0, "Job N already killed, do not launch batch job"). Still marked
slow: it is the longest of the group."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from collector.store import charges as store_charges
from collector.store import db as store_db
from collector.store import jobs as store_jobs
from tests.helpers import run_cli
from tests.slurm.labkit import epoch, hand_charges

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_requeued_job_has_two_records_each_charged_for_its_own_run(lab, db_url, rate_card):
    # The first run sleeps long, so the requeue always finds it running; the second
    # (SLURM_RESTART_COUNT=1) ends after 3 s.
    job_id = lab.sbatch("-J", "requeue", "--requeue", "-c2", "--mem=200M", "--wrap",
                        'if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then sleep 3; else sleep 120; fi')
    lab.wait_recorded_running(job_id)
    time.sleep(2)                                   # the first run lasts a couple of seconds
    lab.run("scontrol", "requeue", str(job_id))
    lab.wait_state(job_id, {"PENDING"})
    # Release the hold only once slurmd has finished killing the first run (its batch step
    # is recorded with an End): released earlier, slurmd refuses the new launch ("Job N
    # already killed, do not launch batch job") and the second run is FAILED at once.
    deadline = time.monotonic() + 60
    while not any(row["JobID"] == f"{job_id}.batch" and row["End"].isdigit()
                  for row in lab.sacct([job_id])):
        assert time.monotonic() < deadline, f"the first run of {job_id} never ended"
        time.sleep(0.5)
    time.sleep(2)
    lab.run("scontrol", "update", f"jobid={job_id}", "StartTime=now")

    deadline = time.monotonic() + 240
    while True:
        lines = lab.wait_final([job_id], timeout=240)
        if len(lines) == 2:
            break
        assert time.monotonic() < deadline, f"no second record for {job_id}: {lines}"
        time.sleep(2)
    old, new = sorted(lines, key=lambda line: int(line["Submit"]))
    assert (old["State"], new["State"]) == ("REQUEUED", "COMPLETED")
    assert old["JobIDRaw"] == new["JobIDRaw"] == str(job_id)
    assert old["DBIndex"] != new["DBIndex"]

    assert run_cli("collect", "--once", "--source", "sacct", "--cluster", lab.cluster,
                   "--sacct", lab.sacct_path, "--lookback", "2h", "--database-url", db_url,
                   "--rates", str(rate_card), env=lab.cli_env) == 0
    engine = store_db.make_engine(db_url)
    try:
        sessions = store_db.session_factory(engine)
        with sessions() as session:
            records = [r for r in store_jobs.list_jobs(session, cluster=lab.cluster)
                       if r.job_id_raw == job_id]
            assert [(r.submit, r.state, r.final) for r in records] == [
                (epoch(old["Submit"]), "REQUEUED", True), (epoch(new["Submit"]), "COMPLETED", True)]
            first, second = records
            assert (first.elapsed_s, second.elapsed_s) == (int(old["ElapsedRaw"]), int(new["ElapsedRaw"]))
            assert (first.db_index, second.db_index) == (int(old["DBIndex"]), int(new["DBIndex"]))
            assert first.end <= second.start                  # two separate runs
            for record, line in ((first, old), (second, new)):
                charged: dict[str, tuple[Decimal, Decimal]] = {}
                for charge in store_charges.job_charges(session,
                                                        (lab.cluster, job_id, record.submit)):
                    quantity, amount = charged.get(charge.resource, (Decimal(0), Decimal(0)))
                    charged[charge.resource] = (quantity + charge.quantity, amount + charge.amount)
                expected = hand_charges(line)
                assert expected and charged == expected, line["State"]
            # Each run is charged for its own elapsed time only.
            cpu_hours = [store_charges.job_charges(session, (lab.cluster, job_id, r.submit))
                         for r in records]
            assert [sum(c.quantity for c in lines if c.resource == "cpu") for lines in cpu_hours] == [
                hand_charges(old)["cpu"][0], hand_charges(new)["cpu"][0]]
    finally:
        engine.dispose()
