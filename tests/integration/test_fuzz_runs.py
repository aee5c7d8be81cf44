"""No input crashes a run: exports shaped like the hand-written corpus of every Slurm
release, edited at random (tests/corpus_fuzz.py), through whole ``hpc-billing collect
--once --source file`` runs into the real PostgreSQL. Every run ends with a documented
outcome and exit code (ok 0, partial 3, failed 1), a failed one names a refusal or says
that nothing was stored, and nothing it read is lost: each job record is stored or each
bad record is in the quarantine."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from collector.store import runs as store_runs
from tests.corpus_fuzz import real_shaped_exports
from tests.helpers import run_cli

EXIT = {"ok": 0, "partial": 3, "failed": 1}


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(text=real_shaped_exports())
def test_no_real_shaped_export_crashes_a_run(db_url, sessions, tmp_path, text):
    path = tmp_path / "export.psv"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")   # bytes no UTF-8 has
    code = run_cli("collect", "--once", "--source", "file", "--input", str(path),
                   "--cluster", "fuzz", "--timezone", "Europe/Berlin", "--database-url", db_url)
    with sessions() as s:
        run = store_runs.list_runs(s, limit=1)[0]
    assert run.outcome in EXIT and code == EXIT[run.outcome], (code, run)
    if run.outcome == "failed":
        # A refusal of the file (SourceError, naming what is wrong), or every record it
        # read quarantined: never an exception of our own code.
        assert (run.error or "").startswith(("SourceError: file:export.psv: ",
                                             "nothing stored: all ")), run.error
    if run.outcome == "partial" or (run.outcome == "failed" and run.quarantined):
        with sessions() as s:
            assert len(store_runs.list_quarantine(s, run_id=run.id, limit=10_000)) == \
                run.quarantined
    if run.outcome == "ok":
        assert run.quarantined == 0
