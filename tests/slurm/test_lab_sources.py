"""The slurmrestd source and a ``sacct --json`` file store the same rows as the sacct
source, for the same window of the real lab.

Each source's window goes through the real pipeline into its own fresh database; the stored
jobs are then compared field by field. Fields that legitimately differ are the ones Slurm
22.05's JSON (slurmrestd dbv0.0.38 and ``sacct --json`` alike) does not carry or carries
wrong; for each the test asserts exactly the known pattern and then takes the sacct value,
after which every stored row must hash identically (collector.store.jobs.content_hash):

* ``uid``, ``db_index``: not in the JSON (None);
* ``exit_code``, ``derived_exit_code``: the 22.05 plugin prints SUCCESS/0 for every job
  (``0:0``), whatever sacct says (``3:0`` for ``exit 3``, ``0:15`` for a cancelled job);
* ``state_raw``: ``CANCELLED`` where sacct prints ``CANCELLED by 0`` (the JSON names the
  cancelling user in ``kill_request_user`` instead of the uid).

Everything else (identity, times, allocation with typed GPUs, billing, names with ``|``,
the steps' CPU time and memory, energy) is equal; jsonparse computes TotalCPU and the job's
ConsumedEnergyRaw exactly as sacct prints them so that it is.
"""

from __future__ import annotations

import dataclasses
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from billing.records import JobRecord, Window
from collector import pipeline
from collector.slurm.restsource import SlurmrestdSource
from collector.slurm.sacct import SacctSource
from collector.store import db as store_db
from collector.store import jobs as store_jobs
from collector.store.jobs import content_hash
from tests.helpers import run_cli
from tests.slurm.labkit import lab_required

pytestmark = [pytest.mark.slurm]
UTC = timezone.utc
JSON_LACKS = ("uid", "db_index", "exit_code", "derived_exit_code", "state_raw")


@pytest.fixture
def rest(lab, tmp_path):
    """The lab's slurmrestd, with a token minted now (up.sh's lasts a day) in a file of the
    test's own, in scontrol's ``SLURM_JWT=...`` form."""
    if not lab.rest_url:
        message = "the lab runs without slurmrestd: start it with bash deploy/lab/up.sh --rest"
        if lab_required():
            pytest.fail(message)
        pytest.skip(message)
    user = lab.env["HPC_BILLING_LAB_REST_USER"]
    token_file = tmp_path / "rest-token"
    token_file.write_text(lab.run("scontrol", "token", f"username={user}", "lifespan=3600"))
    token_file.chmod(0o600)
    return {**lab.env, "HPC_BILLING_LAB_REST_TOKEN_FILE": str(token_file)}


@pytest.fixture(autouse=True)
def slurm_conf(lab, monkeypatch):
    """The sacct source runs sacct with our environment: point it at the lab."""
    monkeypatch.setenv("SLURM_CONF", lab.slurm_conf)


@pytest.fixture
def window(lab, job_mix) -> Window:
    """From just before the mix to now, once every job in it is final in sacct."""
    lab.wait_final(job_mix.all_ids())
    return Window(job_mix.started - timedelta(seconds=60),
                  datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def second_db(fresh_database_url):
    engine = store_db.make_engine(fresh_database_url)
    store_db.migrate(engine)
    engine.dispose()
    return fresh_database_url


def store(url: str, source, window: Window) -> pipeline.RunResult:
    engine = store_db.make_engine(url)
    try:
        return pipeline.collect(store_db.session_factory(engine), source, cluster="lab",
                                window=window, kind="poll", stream=None)
    finally:
        engine.dispose()


def stored(url: str) -> dict[tuple[int, datetime], JobRecord]:
    engine = store_db.make_engine(url)
    try:
        with store_db.session_factory(engine)() as session:
            return {(r.job_id_raw, r.submit): r for r in store_jobs.list_jobs(session, cluster="lab")}
    finally:
        engine.dispose()


def assert_same_rows(from_sacct: dict, from_json: dict, job_mix) -> None:
    # Jobs that were running at either fetch legitimately differ in elapsed: compare the
    # final ones (the whole mix is final), and the same set of identities overall.
    assert set(from_json) == set(from_sacct)
    mix = {(r.job_id_raw, r.submit) for r in from_sacct.values()
           if r.job_id_raw in job_mix.all_ids() or r.array_job_id == job_mix.ids["array"]}
    assert len(mix) == len(job_mix.lines)
    compared = 0
    for key, ours in from_sacct.items():
        theirs = from_json[key]
        if not (ours.final and theirs.final):
            continue
        assert theirs.uid is None and theirs.db_index is None
        assert theirs.exit_code in ("0:0", ours.exit_code), (key, theirs.exit_code)
        assert theirs.derived_exit_code in ("0:0", ours.derived_exit_code)
        assert ours.state_raw.startswith(theirs.state_raw) and theirs.state == ours.state
        differing = [f.name for f in dataclasses.fields(JobRecord)
                     if f.name not in JSON_LACKS and getattr(ours, f.name) != getattr(theirs, f.name)]
        assert differing == [], (key, {name: (getattr(ours, name), getattr(theirs, name))
                                       for name in differing})
        aligned = dataclasses.replace(theirs, **{name: getattr(ours, name) for name in JSON_LACKS})
        assert content_hash(aligned) == content_hash(ours)
        compared += 1
    assert compared >= len(mix)


def test_slurmrestd_stores_the_same_rows_as_sacct(lab, rest, job_mix, window, db_url, second_db):
    sacct = SacctSource(sacct_path=lab.sacct_path, timeout_s=60, cluster="lab")
    rest_source = SlurmrestdSource(url=rest["HPC_BILLING_LAB_REST_URL"],
                                   user=rest["HPC_BILLING_LAB_REST_USER"], token=None,
                                   token_file=rest["HPC_BILLING_LAB_REST_TOKEN_FILE"],
                                   timeout_s=60, cluster="lab", max_window_s=20)
    first = store(db_url, sacct, window)
    second = store(second_db, rest_source, window)
    assert (first.outcome, second.outcome, second.quarantined) == ("ok", "ok", 0)
    assert second.records_read == first.records_read
    assert rest_source.stats.extra["requests"] == len(rest_source.chunks(window)) > 1
    assert_same_rows(stored(db_url), stored(second_db), job_mix)


def test_slurmrestd_over_its_unix_socket_gives_the_same_jobs(lab, rest, job_mix, window, db_url):
    tcp = SlurmrestdSource(url=rest["HPC_BILLING_LAB_REST_URL"],
                           user=rest["HPC_BILLING_LAB_REST_USER"], token=None,
                           token_file=rest["HPC_BILLING_LAB_REST_TOKEN_FILE"],
                           timeout_s=60, cluster="lab")
    # rest_auth/local: the socket's peer is the user; no token headers (slurmrestd 22.05
    # answers 401 to a local request that carries them).
    local = SlurmrestdSource(url=rest["HPC_BILLING_LAB_REST_SOCKET_URL"], user=None,
                             token=None, token_file=None, timeout_s=60, cluster="lab")
    over_tcp = [i for i in tcp.fetch(window) if isinstance(i, JobRecord) and i.final]
    over_socket = [i for i in local.fetch(window) if isinstance(i, JobRecord) and i.final]
    assert over_socket == over_tcp and len(over_tcp) >= len(job_mix.lines)


def test_collect_once_with_the_slurmrestd_source(lab, rest, job_mix, window, db_url, rate_card):
    """The CLI wiring: settings -> SlurmrestdSource, a poll window, priced."""
    assert run_cli("collect", "--once", "--source", "slurmrestd", "--cluster", "lab",
                   "--slurmrestd-url", rest["HPC_BILLING_LAB_REST_URL"],
                   "--slurmrestd-user", rest["HPC_BILLING_LAB_REST_USER"],
                   "--slurmrestd-token-file", rest["HPC_BILLING_LAB_REST_TOKEN_FILE"],
                   "--lookback", "2h", "--rates", str(rate_card), "--database-url", db_url) == 0
    jobs = stored(db_url)
    ids = {raw for raw, _ in jobs}
    assert set(job_mix.all_ids()) <= ids


def test_sacct_json_file_stores_the_same_rows_as_sacct(lab, job_mix, window, db_url, second_db,
                                                       tmp_path):
    export = tmp_path / "sacct.json"
    argv = [lab.sacct_path, "--json", "--allusers", "--duplicates",
            "-S", f"{window.since:%Y-%m-%dT%H:%M:%S}", "-E", f"{window.until:%Y-%m-%dT%H:%M:%S}",
            "--clusters=lab"]                  # (whole seconds, UTC: lab.child_env has TZ=UTC)
    with open(export, "wb") as out:
        subprocess.run(argv, env=lab.child_env, stdout=out, check=True, timeout=120)
    sacct = SacctSource(sacct_path=lab.sacct_path, timeout_s=60, cluster="lab")
    assert store(db_url, sacct, window).outcome == "ok"
    assert run_cli("collect", "--once", "--source", "file", "--input", str(export),
                   "--cluster", "lab", "--database-url", second_db) == 0
    assert_same_rows(stored(db_url), stored(second_db), job_mix)
