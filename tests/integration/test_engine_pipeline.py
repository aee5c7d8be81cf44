"""The engine as the pipeline's path, against the real PostgreSQL: a generated export with
hostile lines is collected (columnar reader -> vector pricer -> writer), and what the
database holds is what today's per-record path gives for the same file: the same job rows
(read back), the same quarantine (raw, reason, line, job id), the same charge lines and
totals; the run's counts are the oracle's; a second collect skips every stored job.
"""

from __future__ import annotations

import io
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import text

from bench.gen_sacct import generate
from billing.price import price_job_outcome
from billing.rates import load_rate_card
from billing.records import JobRecord, QuarantinedRecord
from billing.rollup import rollup_steps
from collector import pipeline
from collector.pricer import make_pricer
from collector.slurm.filesource import FileSource
from collector.store import charges as store_charges
from collector.store import jobs as store_jobs
from collector.usecases.demo import demo_rates_path

AS_OF = datetime(2030, 1, 1, tzinfo=UTC)


def _damage(text_: str) -> str:
    """A few lines of each kind the vector path refuses, and a step far below its job."""
    lines = text_.split("\n")
    head = lines[0].split("|")
    at = {name: i for i, name in enumerate(head)}
    jobs = [i for i, line in enumerate(lines[1:], 1) if line and "." not in line.split("|")[1]]
    steps = [i for i, line in enumerate(lines[1:], 1) if line and "." in line.split("|")[1]]

    def edit(i: int, column: str, value: str) -> None:
        f = lines[i].split("|")
        f[at[column]] = value
        lines[i] = "|".join(f)

    edit(jobs[10], "JobName", "a|b")                  # repaired into the free text
    edit(jobs[20], "UID", "1_000")                    # quarantined
    edit(jobs[30], "State", "PARKED")                 # unknown state: kept, counted
    edit(jobs[40], "AllocTRES", "cpu=x")              # quarantined
    edit(steps[50], "TotalCPU", "01:02.1234")         # 4 decimals: per record
    edit(jobs[60], "AllocTRES", "")                   # ran: NCPUS/NNodes fallback
    lines[jobs[70]] = lines[jobs[70]][:40]            # truncated
    lines.insert(steps[90] + 600, lines.pop(steps[90]))  # a step 600 lines down
    return "\n".join(lines)


@pytest.fixture()
def export(tmp_path) -> Path:
    buf = io.StringIO()
    generate(5000, buf, seed=21)
    path = tmp_path / "damaged.psv"
    path.write_text(_damage(buf.getvalue()))
    return path


def _oracle(path: Path):
    source = FileSource(str(path), tz=UTC, cluster=None)
    items = list(rollup_steps(source.fetch(None), source=source.name))
    jobs = {}
    for item in items:
        if isinstance(item, JobRecord):
            jobs[(item.cluster, item.job_id_raw, item.submit)] = store_jobs._as_stored(item)
    bad = [item for item in items if isinstance(item, QuarantinedRecord)]
    return jobs, bad, source.stats


def test_the_engine_stores_what_the_per_record_path_gives(sessions, export):
    text_ = demo_rates_path().read_text(encoding="utf-8")
    card = load_rate_card(text_)
    pricer = make_pricer(sessions, card, text_, source="test", as_of=AS_OF)
    source = FileSource(str(export), tz=UTC, cluster=None)
    result = pipeline.collect(sessions, source, cluster=None, window=None, kind="file",
                              stream=None, pricer=pricer)
    jobs, bad, stats = _oracle(export)
    assert result.outcome == "partial"
    assert result.records_read == len(jobs) == result.inserted
    assert result.quarantined == len(bad) >= 3
    assert dict(result.unknown_states) == dict(stats.extra["unknown_states"]) == {"PARKED": 1}

    with sessions() as s:
        stored = {(j.cluster, j.job_id_raw, j.submit): j for j in store_jobs.list_jobs(s)}
        rows = s.execute(text("SELECT raw, reason, line_no, job_id FROM quarantine "
                              "WHERE run_id = :r"), {"r": result.run_id}).all()
        assert stored == jobs
        assert Counter(tuple(r) for r in rows) == \
            Counter((q.raw, q.reason, q.line_no, q.job_id) for q in bad)
        want_total = Decimal(0)
        outcomes: Counter[str] = Counter()
        for key, job in jobs.items():
            outcome, want = price_job_outcome(card, job, as_of=AS_OF)
            outcomes[outcome] += 1
            want_total += sum((line.amount for line in want), Decimal(0))
            got = store_charges.job_charges(s, key)
            assert Counter((x.usage_period, x.resource, x.quantity, x.rate, x.amount, x.rule,
                            x.basis) for x in got) == \
                Counter((x.usage_period, x.resource, x.quantity, x.rate, x.amount, x.rule,
                         x.basis) for x in want), key
        got_total = s.execute(text("SELECT sum(amount) FROM charge_lines")).scalar_one()
    assert got_total == want_total > 0
    assert result.jobs_priced == len(jobs)
    assert dict(result.unpriced) == {k: v for k, v in outcomes.items() if k != "priced"}

    again = pipeline.collect(sessions, FileSource(str(export), tz=UTC, cluster=None),
                             cluster=None, window=None, kind="file", stream=None,
                             pricer=make_pricer(sessions, card, text_, source="test",
                                                as_of=AS_OF))
    # every job whose lines are stored unchanged is skipped before parsing; the one with
    # an unknown state (no digest) and the jobs of groups with a quarantined line are
    # read again and found unchanged by the writer
    assert again.unchanged == len(jobs) and again.inserted == again.updated == 0
    assert again.quarantined == len(bad)
