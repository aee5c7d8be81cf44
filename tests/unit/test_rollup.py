"""billing.rollup on the real sacct export (tests/fixtures/sacct-wide-header.psv).

Expected numbers are worked out by hand from the fixture text (K = 1024 bytes).
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from billing.records import JobRecord, QuarantinedRecord, StepUsage
from billing.rollup import rollup_steps
from collector.slurm.parse import ParsableParser

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SUBMIT = datetime(2026, 11, 22, 12, 45, 42, tzinfo=timezone.utc)


def wide_items():
    lines = (FIXTURES / "sacct-wide-header.psv").read_text(encoding="utf-8").split("\n")
    parser = ParsableParser(lines[0].split("|"), delimiter="|", source="test")
    return list(parser.parse_lines(lines[1:], first_line_no=2))


@pytest.fixture(scope="module")
def rolled():
    return list(rollup_steps(wide_items()))


def one(records, job_id):
    found = [r for r in records if isinstance(r, JobRecord) and r.job_id == job_id]
    assert len(found) == 1
    return found[0]


def test_job_with_four_steps(rolled):
    rec = one(rolled, "5")
    # Steps 5.batch, 5.0, 5.1, 5.2: MaxRSS 10636K, -, 316648K, 1696K.
    assert rec.max_rss_bytes == 324247552                   # 316648 * 1024
    # TRESUsageInTot mem x ElapsedRaw: 10636K*14 + (none)*1 + 316648K*10 + 3376K*3
    #   = 10891264*14 + 324247552*10 + 3457024*3
    #   = 152477696 + 3242475520 + 10371072
    assert rec.mem_used_byte_s == 3405324288
    # The job line's TotalCPU (00:06.184) wins over the steps' sum (6.182).
    assert rec.cpu_used_s == Decimal("6.184")
    # ConsumedEnergyRaw is "0" on the job line.
    assert rec.energy_j == 0
    # Allocation is untouched.
    assert (rec.cpus, rec.mem_bytes, rec.gpus) == (2, 1073741824, (("untyped", 1),))


def test_single_step_job_and_energy_fallback(rolled):
    rec = one(rolled, "2")
    assert rec.max_rss_bytes == 324423680                   # 316820K
    assert rec.mem_used_byte_s == 3568660480                # 324423680 * 11 s
    assert rec.cpu_used_s == Decimal("6.220")
    assert rec.energy_j == 0                                # job line empty, step "0"


def test_requeued_records_get_their_own_steps(rolled):
    old, new = [r for r in rolled if isinstance(r, JobRecord) and r.job_id == "16"]
    assert (old.state, old.db_index) == ("REQUEUED", 20)
    assert old.max_rss_bytes == 3338240                     # 3260K
    assert old.mem_used_byte_s == 13352960                  # 3338240 * 4 s
    assert (new.state, new.db_index) == ("COMPLETED", 29)
    assert new.max_rss_bytes == 3293184                     # 3216K
    assert new.mem_used_byte_s == 65863680                  # 3293184 * 20 s


def test_requeue_attach_by_db_index_even_out_of_order():
    items = wide_items()
    old = next(i for i in items if isinstance(i, JobRecord) and i.db_index == 20)
    new = next(i for i in items if isinstance(i, JobRecord) and i.db_index == 29)
    old_step = next(i for i in items if isinstance(i, StepUsage) and i.job_db_index == 20)
    new_step = next(i for i in items if isinstance(i, StepUsage) and i.job_db_index == 29)
    # Both job lines first, then the steps in the "wrong" order.
    out = list(rollup_steps([old, new, new_step, old_step]))
    assert [(r.db_index, r.max_rss_bytes) for r in out] == [(20, 3338240), (29, 3293184)]


def test_step_without_db_index_goes_to_most_recent_record():
    first = JobRecord(cluster="lab", job_id="16", job_id_raw=16, submit=SUBMIT,
                      state="REQUEUED", state_raw="REQUEUED")
    second = JobRecord(cluster="lab", job_id="16", job_id_raw=16,
                       submit=datetime(2026, 11, 22, 12, 48, 17, tzinfo=timezone.utc),
                       state="COMPLETED", state_raw="COMPLETED")
    step = StepUsage(cluster=None, job_id_raw=16, step="batch", max_rss_bytes=7)
    out = list(rollup_steps([first, second, step]))
    assert out[0] is first
    assert out[1].max_rss_bytes == 7


def test_mismatched_db_index_is_not_attached():
    rec = JobRecord(cluster="lab", job_id="16", job_id_raw=16, submit=SUBMIT,
                    state="COMPLETED", state_raw="COMPLETED", db_index=29)
    stale = StepUsage(cluster="lab", job_id_raw=16, step="batch", job_db_index=20, max_rss_bytes=1)
    out = list(rollup_steps([rec, stale]))
    assert isinstance(out[0], QuarantinedRecord)
    assert out[1] is rec


def test_jobs_without_steps_are_unchanged_and_order_is_kept(rolled):
    items = wide_items()
    originals = [i for i in items if isinstance(i, JobRecord)]
    assert [r.job_id for r in rolled] == [r.job_id for r in originals]
    het = one(rolled, "14+0")
    assert het == next(r for r in originals if r.job_id == "14+0")
    assert all(isinstance(r, JobRecord) for r in rolled)


def test_cpu_falls_back_to_steps_when_job_line_has_none():
    rec = JobRecord(cluster="lab", job_id="30", job_id_raw=30, submit=SUBMIT,
                    state="COMPLETED", state_raw="COMPLETED")
    steps = [StepUsage(cluster="lab", job_id_raw=30, step="batch", elapsed_s=10,
                       cpu_used_s=Decimal("1.5"), mem_total_bytes=100, energy_j=5),
             StepUsage(cluster="lab", job_id_raw=30, step="0", elapsed_s=4,
                       cpu_used_s=Decimal("2.25"), mem_total_bytes=1000, energy_j=7)]
    (out,) = rollup_steps([rec, *steps])
    assert out.cpu_used_s == Decimal("3.75")
    assert out.mem_used_byte_s == 100 * 10 + 1000 * 4
    assert out.energy_j == 12
    assert out.max_rss_bytes is None                         # no step had MaxRSS


def test_orphan_step_is_quarantined_and_quarantines_pass_through():
    bad = QuarantinedRecord(raw="x|y", reason="3 fields", source="sacct", line_no=1)
    orphan = StepUsage(cluster="lab", job_id_raw=99, step="batch", line_no=7)
    other_cluster = StepUsage(cluster="other", job_id_raw=30, step="batch")
    rec = JobRecord(cluster="lab", job_id="30", job_id_raw=30, submit=SUBMIT,
                    state="COMPLETED", state_raw="COMPLETED")
    out = list(rollup_steps([bad, orphan, rec, other_cluster]))
    assert out[0] is bad
    assert isinstance(out[1], QuarantinedRecord)
    assert out[1].reason == "step line without its job line"
    assert out[1].raw.startswith("step 99.batch") and out[1].line_no == 7
    assert out[1].job_id == "99.batch"
    assert isinstance(out[2], QuarantinedRecord) and out[2].job_id == "30.batch"
    assert out[3] is rec


def test_bounded_buffer_streams_and_still_attaches():
    pulled = 0
    emitted_after: list[int] = []

    def source():
        nonlocal pulled
        for n in range(1, 1001):
            for item in (
                JobRecord(cluster="lab", job_id=str(n), job_id_raw=n, submit=SUBMIT,
                          state="COMPLETED", state_raw="COMPLETED", db_index=n),
                StepUsage(cluster="lab", job_id_raw=n, step="batch", job_db_index=n,
                          elapsed_s=1, max_rss_bytes=n, mem_total_bytes=n),
                StepUsage(cluster="lab", job_id_raw=n, step="0", job_db_index=n,
                          elapsed_s=2, max_rss_bytes=2 * n, mem_total_bytes=n),
            ):
                pulled += 1
                yield item

    out = []
    for rec in rollup_steps(source(), buffer_jobs=2):
        emitted_after.append(pulled)
        out.append(rec)
    assert [r.job_id_raw for r in out] == list(range(1, 1001))
    assert all(r.max_rss_bytes == 2 * r.job_id_raw for r in out)
    assert all(r.mem_used_byte_s == 3 * r.job_id_raw for r in out)   # n*1 s + n*2 s
    # Job k is emitted as soon as job k+2 arrives: never more than 2 jobs (+ steps) held.
    assert emitted_after[0] == 7                             # 3 items for jobs 1, 2 + job 3
    assert all(after - 3 * k <= 7 for k, after in enumerate(emitted_after[:-2]))


def test_small_buffer_matches_default_on_real_data(rolled):
    assert list(rollup_steps(wide_items(), buffer_jobs=2)) == rolled


def test_buffer_size_must_be_positive():
    with pytest.raises(ValueError):
        list(rollup_steps([], buffer_jobs=0))
