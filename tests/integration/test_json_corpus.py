"""Every JSON corpus document (tests/corpus/json, data versions v0.0.36..v0.0.45) imported
as an operator would (``hpc-billing collect --once --source file``) into the real
PostgreSQL: every job stored once, with the CPUs, GPUs by type, memory, times and state
written by hand in expected.json. A bad job in such a document is quarantined, by name,
and the rest is stored."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from collector.store import jobs as store_jobs
from collector.store import runs as store_runs
from tests.helpers import run_cli

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "json"
_spec = importlib.util.spec_from_file_location("corpus_json_expectations",
                                               CORPUS / "expectations.py")
assert _spec is not None and _spec.loader is not None
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)


def stored(sessions):
    with sessions() as s:
        return list(store_jobs.list_jobs(s))


@pytest.mark.parametrize("version", corpus.VERSIONS)
def test_every_job_of_every_version_is_stored_right(db_url, sessions, version):
    path = CORPUS / version / "sacct.json"
    assert run_cli("collect", "--once", "--source", "file", "--input", str(path),
                   "--database-url", db_url) == 0
    corpus.assert_matches_expected(version, stored(sessions))
    with sessions() as s:
        (run,) = store_runs.list_runs(s, limit=5)
    assert (run.outcome, run.jobs_inserted, run.quarantined) == ("ok", 16, 0)


def test_a_bad_job_is_quarantined_by_name_and_the_rest_stored(db_url, sessions, tmp_path):
    doc = corpus.document("v0.0.44")
    doc["jobs"][1]["time"]["submission"] = {"set": True, "infinite": False, "number": "x"}
    path = tmp_path / "one-bad-job.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    run_cli("collect", "--once", "--source", "file", "--input", str(path),
            "--database-url", db_url)
    jobs = stored(sessions)
    assert len(jobs) == 15 and 102 not in {j.job_id_raw for j in jobs}
    with sessions() as s:
        (run,) = store_runs.list_runs(s, limit=5)
        (item,) = store_runs.list_quarantine(s)
    assert run.quarantined == 1 and run.jobs_inserted == 15
    assert item.reason.startswith("job #2 (job_id 102) of the JSON document: "
                                  "time.submission: ")
    assert json.loads(item.raw)["job_id"] == 102
