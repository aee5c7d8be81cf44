"""billing.reconcile: Slurm's billing TRES recomputed from TRESBillingWeights.

The real records come from tests/fixtures/sacct-wide-header.psv (lab partition ``batch``,
configured with TRESBillingWeights="CPU=1.0,Mem=0.25G,GRES/gpu=2.0"). Memory in MB:
1G = 1024M.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from billing.reconcile import (Mismatch, ReconcileReport, check_job, check_jobs,
                               expected_billing_units, parse_billing_weights, slurm_billing)
from billing.records import JobRecord
from billing.rollup import rollup_steps
from collector.slurm.filesource import FileSource

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "sacct-wide-header.psv"
LAB_WEIGHTS = "CPU=1.0,Mem=0.25G,GRES/gpu=2.0"
UTC = timezone.utc


@pytest.fixture(scope="module")
def jobs() -> list[JobRecord]:
    source = FileSource(FIXTURE, tz=ZoneInfo("UTC"), cluster=None)
    return [r for r in rollup_steps(source.fetch(None)) if isinstance(r, JobRecord)]


def by_id(jobs, job_id) -> JobRecord:
    (found,) = [j for j in jobs if j.job_id == job_id and j.final]
    return found


def synthetic(**kw) -> JobRecord:
    base = dict(cluster="lab", job_id="900", job_id_raw=900,
                submit=datetime(2026, 11, 1, tzinfo=UTC), state="COMPLETED",
                state_raw="COMPLETED", partition="gpu")
    base.update(kw)
    return JobRecord(**base)


def test_every_real_job_matches_its_stored_billing(jobs):
    weights = parse_billing_weights(LAB_WEIGHTS)
    for job in jobs:
        if job.billing is None:
            continue
        assert expected_billing_units(job, weights) == job.billing, job.job_id
        assert check_job(job, weights) is None


@pytest.mark.parametrize(("job_id", "exact", "units"), [
    # cpus x 1.0 + MB x 0.25/1024 + GPUs x 2.0
    ("2", Decimal("4.25"), 4),           # 2 + 1024/1024*0.25 + 1*2 = 4.25 -> 4
    ("3", Decimal("8.5"), 8),            # 4 + 2048/1024*0.25 + 2*2 = 8.5 -> 8
    ("12", Decimal("2.1220703125"), 2),  # 2 + 500/1024*0.25 = 2.1220703125 -> 2
    ("11", Decimal("3.0732421875"), 3),  # 1 + 300/1024*0.25 + 1*2 = 3.0732421875 -> 3
    ("6_3", Decimal("1.048828125"), 1),  # 1 + 200/1024*0.25
])
def test_hand_worked_billing(jobs, job_id, exact, units):
    weights = parse_billing_weights(LAB_WEIGHTS)
    job = by_id(jobs, job_id)
    assert slurm_billing(job, weights) == exact
    assert expected_billing_units(job, weights) == units == job.billing


def test_check_jobs_skips_het_and_cancelled(jobs):
    report = check_jobs(jobs, {"batch": LAB_WEIGHTS})
    # 22 job records; 14+0 and 14+1 (cancelled het components) have no billing.
    assert (report.checked, report.skipped, report.mismatches) == (20, 2, ())
    assert report.no_weights == ()


def test_a_changed_weight_shows_mismatches(jobs):
    weights = parse_billing_weights("CPU=2.0,Mem=0.25G,GRES/gpu=2.0")
    found = check_job(by_id(jobs, "2"), weights)
    # 2*2 + 0.25 + 2 = 6.25 -> 6, stored 4
    assert isinstance(found, Mismatch)
    assert (found.stored, found.expected, found.exact) == (4, 6, Decimal("6.25"))
    assert found.describe() == ("job 2 (lab, partition batch): stored billing=4, "
                                "weights give 6.25 -> 6")
    report = check_jobs(jobs, {"batch": weights})
    assert len(report.mismatches) == 20 and report.checked == 20


def test_partitions_without_weights_are_listed(jobs):
    report = check_jobs(jobs, {"gpu": LAB_WEIGHTS})
    assert (report.checked, report.skipped, report.no_weights) == (0, 22, ("batch",))


def test_parsing_is_case_insensitive_and_lists_unknown_tres():
    w = parse_billing_weights(" cpu=0.5, MEM=2g ,gres/GPU=3,GRES/gpu:a100=4,"
                              "license/matlab=7,bb/cray=1 ")
    assert (w.cpu, w.gpu) == (Decimal("0.5"), Decimal(3))
    assert w.mem_per_mib == Decimal(2) / 1024
    assert w.gpu_by_type == {"a100": Decimal(4)}
    assert w.ignored == ("license/matlab", "bb/cray")


@pytest.mark.parametrize(("text", "per_mib"), [
    ("Mem=0.5", Decimal("0.5")),            # no suffix: per MB
    ("Mem=0.5M", Decimal("0.5")),
    ("Mem=0.5K", Decimal(512)),             # per KB -> x1024 per MB
    ("Mem=1024G", Decimal(1)),
    ("Mem=1048576T", Decimal(1)),
])
def test_memory_units(text, per_mib):
    assert parse_billing_weights(text).mem_per_mib == per_mib


def test_typed_gpus_count_under_both_tres():
    # Slurm's gres/gpu counts all 3 GPUs, gres/gpu:a100 the 2 typed ones:
    # 3*2 + 2*3 + 1 node*5 = 17
    job = synthetic(cpus=0, nodes=1, gpus=(("a100", 2), ("untyped", 1)), billing=17)
    w = parse_billing_weights("GRES/gpu=2,GRES/gpu:a100=3,Node=5")
    assert slurm_billing(job, w) == 17 and check_job(job, w) is None


def test_no_weights_bill_the_allocated_cpus():
    # slurm.conf(5): without TRESBillingWeights a job is billed its allocated CPUs
    for text in ("", "  "):
        assert slurm_billing(synthetic(cpus=8, mem_bytes=2**30), parse_billing_weights(text)) == 8


@pytest.mark.parametrize(("text", "fragment"), [
    ("CPU", "'CPU': expected TRES=weight"),
    ("CPU=", "'CPU=': expected TRES=weight"),
    ("CPU=abc", "CPU: not a non-negative number: 'abc'"),
    ("CPU=1K", "a unit suffix is only understood on Mem"),
    ("CPU=-1", "CPU: not a non-negative number"),
    ("CPU=1,cpu=2", "cpu: given twice"),
    ("Mem=inf", "Mem: not a non-negative number"),
])
def test_bad_weights(text, fragment):
    with pytest.raises(ValueError, match="TRESBillingWeights") as info:
        parse_billing_weights(text)
    assert fragment in str(info.value)


def test_truncation_not_rounding():
    # 1 CPU x 0.999 = 0.999 -> 0, like Slurm's (uint64_t) cast
    w = parse_billing_weights("CPU=0.999")
    assert expected_billing_units(synthetic(cpus=1), w) == 0


def test_unweighted_partitions_bill_cpus_and_jobs_without_allocation_are_skipped(jobs):
    # The CLI's rule (one rule, in check_jobs): a partition without weights is Slurm's
    # default, CPU=1, and still listed; a job with billing but no CPUs is not checked.
    report = check_jobs(jobs, {"gpu": LAB_WEIGHTS}, unweighted=parse_billing_weights(""))
    assert report.no_weights == ("batch",)
    assert (report.checked, report.skipped) == (20, 2)
    # Checked as CPU=1: job 2 (2 CPUs, 1 GiB, 1 GPU; Slurm stored 4) gives 2, a mismatch;
    # job 12 (2 CPUs, 500M; stored 2) agrees.
    mismatched = {m.job_id: m for m in report.mismatches}
    assert (mismatched["2"].stored, mismatched["2"].expected) == (4, 2)
    assert "12" not in mismatched
    no_cpus = synthetic(cpus=0, billing=5)
    assert check_jobs([no_cpus], {"gpu": LAB_WEIGHTS}) == ReconcileReport(
        checked=0, skipped=1, mismatches=(), no_weights=())
