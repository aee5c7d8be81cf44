"""Skipping unchanged jobs against the real database: a re-import of the same lines parses
nothing it already stored, a changed line is picked up, and turning the skip off parses
and compares everything again."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text

from bench.gen_sacct import generate
from collector import pipeline
from collector.slurm.filesource import FileSource
from collector.store import jobs as store_jobs


@pytest.fixture()
def export(tmp_path):
    path = tmp_path / "export.psv"
    with open(path, "w") as fh:
        generate(6000, fh, seed=11)
    return path


def _collect(sessions, path, **kwargs):
    source = FileSource(path, tz=ZoneInfo("UTC"), cluster=None)
    return pipeline.collect(sessions, source, cluster=None, window=None, kind="file",
                            stream=None, batch_rows=500, **kwargs)


def _scalar(sessions, sql):
    with sessions() as s:
        return s.execute(text(sql)).scalar()


def test_reimport_skips_every_stored_job_and_picks_up_a_changed_line(sessions, export):
    first = _collect(sessions, export)
    n = first.inserted
    assert n > 1000 and first.updated == first.unchanged == 0
    assert _scalar(sessions, "SELECT count(*) FROM jobs WHERE raw_digest IS NULL") == 0

    # A row edited behind the collector's back: a skipped job is never parsed again, so
    # the edit survives a re-import (this is what proves the skip happens before parsing).
    with sessions() as s:
        s.execute(text("UPDATE job_rows SET name = 'edited'"
                       " WHERE job_id_raw = "
                       "(SELECT max(job_id_raw) FROM job_rows)"))
        s.commit()
    again = _collect(sessions, export)
    assert (again.records_read, again.inserted, again.updated, again.unchanged) == (n, 0, 0, n)
    assert _scalar(sessions, f"SELECT count(*) FROM jobs WHERE last_run_id = {again.run_id}") == 0
    assert _scalar(sessions, "SELECT count(*) FROM jobs WHERE name = 'edited'") == 1

    # One step line changes (its MaxRSS): that job alone is parsed, updated and re-digested.
    lines = export.read_text().split("\n")
    header = lines[0].split("|")
    col_raw, col_rss = header.index("JobIDRaw"), header.index("MaxRSS")
    k = next(i for i, line in enumerate(lines[1:], 1)
             if ".batch" in line.split("|")[col_raw] and line.split("|")[col_rss])
    cells = lines[k].split("|")
    job_raw = int(cells[col_raw].split(".")[0])
    cells[col_rss] = "999999999999"
    lines[k] = "|".join(cells)
    export.write_text("\n".join(lines))
    old_digest = _scalar(sessions, f"SELECT raw_digest FROM jobs WHERE job_id_raw = {job_raw}")
    third = _collect(sessions, export)
    assert (third.inserted, third.updated, third.unchanged) == (0, 1, n - 1)
    assert _scalar(sessions, f"SELECT raw_digest FROM jobs WHERE job_id_raw = {job_raw}") != old_digest
    assert _scalar(sessions, f"SELECT max_rss_bytes FROM jobs WHERE job_id_raw = {job_raw}") == 999999999999

    # Without the skip every job is parsed and compared: the edited row is put right.
    full = _collect(sessions, export, skip_unchanged=False)
    assert (full.inserted, full.updated, full.unchanged) == (0, 1, n - 1)
    assert _scalar(sessions, "SELECT count(*) FROM jobs WHERE name = 'edited'") == 0


def test_a_skipped_reimport_stores_what_a_full_parse_stores(sessions, export, tmp_path):
    _collect(sessions, export)
    _collect(sessions, export)
    with sessions() as s:
        skipped = list(store_jobs.list_jobs(s))
    with sessions() as s:
        s.execute(text("TRUNCATE job_rows, charge_rows, rollup_resource, rollup_jobs"))
        s.commit()
    _collect(sessions, export, skip_unchanged=False)
    with sessions() as s:
        parsed = list(store_jobs.list_jobs(s))
    assert skipped == parsed and len(parsed) > 1000
