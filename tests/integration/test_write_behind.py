"""The writing thread of a poll (pipeline._WriteBehind), against the real PostgreSQL.

A window's database work runs in a thread of its own while the collector's thread reads,
parses, prices and encodes. These tests drive it through many small batches and through
a failure inside the writing thread, from real input files (bench.gen_sacct's generator).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import text

from bench.gen_sacct import generate
from billing.price import price_job
from billing.rates import load_rate_card
from billing.records import JobRecord
from billing.rollup import rollup_steps
from collector import pipeline
from collector.pricer import make_pricer
from collector.usecases.demo import demo_rates_path
from collector.slurm.filesource import FileSource
from collector.store import charges as store_charges
from collector.store import jobs as store_jobs
from collector.store import runs as store_runs

UTC = timezone.utc
AS_OF = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture()
def export(tmp_path) -> Path:
    path = tmp_path / "sacct.psv"
    with open(path, "w") as fh:
        generate(3000, fh, seed=11)
    return path


def _collect(sessions, path: Path, batch_rows: int):
    text_ = demo_rates_path().read_text(encoding="utf-8")
    card = load_rate_card(text_)
    pricer = make_pricer(sessions, card, text_, source="test", as_of=AS_OF)
    return card, pipeline.collect(sessions, FileSource(str(path), tz=UTC, cluster=None),
                                  cluster=None, window=None, kind="file", stream=None,
                                  batch_rows=batch_rows, pricer=pricer)


def test_many_small_batches_store_every_job_once_with_its_own_lines(sessions, export):
    card, result = _collect(sessions, export, batch_rows=7)
    expected = [j for j in rollup_steps(FileSource(str(export), tz=UTC, cluster=None).fetch())
                if isinstance(j, JobRecord)]
    keys = {(j.cluster, j.job_id_raw, j.submit) for j in expected}
    assert result.outcome == "ok"
    assert result.inserted == len(keys) == result.records_read
    with sessions() as s:
        assert store_jobs.count_jobs(s) == len(keys)
        # Every job's stored lines are exactly what pricing it alone gives: lines priced
        # ahead in the reading thread went to their own job across 7-row batches.
        for job in expected[::25]:
            stored = store_charges.job_charges(s, (job.cluster, job.job_id_raw, job.submit))
            wanted = price_job(card, store_jobs._as_stored(job), as_of=AS_OF)
            assert sorted((l.usage_period, l.resource, l.quantity, l.amount) for l in stored) \
                == sorted((l.usage_period, l.resource, l.quantity, l.amount) for l in wanted)
        total = s.execute(text("SELECT count(*) FROM charge_lines")).scalar_one()
    assert total == result.charge_lines > 0

    again = _collect(sessions, export, batch_rows=7)[1]
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, len(keys))


def test_a_value_postgresql_refuses_fails_the_poll_and_stores_nothing(sessions, export):
    lines = export.read_text().splitlines()
    header = lines[0].split("|")
    uid = header.index("UID")
    # A job line whose UID does not fit bigint: it parses and encodes, and PostgreSQL
    # refuses its batch after earlier batches were merged in the same transaction.
    bad = next(i for i in range(len(lines) - 1, 0, -1)
               if "." not in lines[i].split("|")[0] and lines[i].split("|")[uid])
    fields = lines[bad].split("|")
    fields[uid] = str(2**63)
    lines[bad] = "|".join(fields)
    export.write_text("\n".join(lines) + "\n")

    with pytest.raises(pipeline.CollectError) as err:
        _collect(sessions, export, batch_rows=50)
    assert "out of range" in err.value.result.error
    with sessions() as s:
        assert store_jobs.count_jobs(s) == 0
        assert s.execute(text("SELECT count(*) FROM charge_lines")).scalar_one() == 0
        run = store_runs.list_runs(s, limit=1)[0]
    assert run.outcome == "failed" and "out of range" in run.error
