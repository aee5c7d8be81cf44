"""DBIndex is unsigned 64-bit: numeric(20,0) end to end through PostgreSQL (migration 0008).

Slurm 24.11+ prints DBIndex values above 2^63 (12864120071854004224); a bigint column made
the COPY of such a job fail the whole poll. Here the extremes 0, 2^63-1, 2^63 and 2^64-1
go in through a real sacct export (the file source and the CLI), come back through the
store, ``jobs --format json`` and the API (validated against docs/api/openapi.yaml), and
still tell a requeued job's two records apart. Out-of-range values are refused by the
store's encoder and by the table's check constraint; the migration keeps existing values
and its downgrade refuses to truncate.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from openapi_schema_validator import OAS30Validator
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from billing.records import JobRecord
from collector.health import Health
from collector.settings import Settings
from collector.store import db as store_db
from collector.store import job_writer as store_job_writer
from collector.store import jobs as store_jobs
from collector.store.db import session_factory
from collector.web.app import create_app
from collector.web.auth import new_token
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
WIDE = ROOT / "tests" / "fixtures" / "sacct-wide-header.psv"
SPEC = yaml.safe_load((ROOT / "docs" / "api" / "openapi.yaml").read_text())
EXTREMES = {1: 0, 2: 2**63 - 1, 3: 2**63, 4: 2**64 - 1}      # JobIDRaw -> DBIndex
# The requeued job 16: both records above bigint, told apart only by DBIndex.
REQUEUED = {"12:45:43": 12864120071854004224, "12:48:17": 11607615775938865152}


def export_with_db_indexes(tmp_path: Path) -> Path:
    """sacct-wide-header.psv with the DBIndex of jobs 1-4 (and their steps) set to the
    extremes, and the two records of the requeued job 16 to real 24.11/26.05 values."""
    lines = WIDE.read_text(encoding="utf-8").split("\n")
    header = lines[0].split("|")
    col = {name: i for i, name in enumerate(header)}
    out = [lines[0]]
    old_index_of_16: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            out.append(line)
            continue
        f = line.split("|")
        raw = f[col["JobIDRaw"]].partition(".")[0]
        if int(raw) in EXTREMES:
            f[col["DBIndex"]] = str(EXTREMES[int(raw)])
        elif raw == "16":
            if "." not in f[col["JobIDRaw"]]:
                submit = datetime.fromisoformat(f[col["Submit"]]).strftime("%H:%M:%S")
                old_index_of_16[f[col["DBIndex"]]] = str(REQUEUED[submit])
            f[col["DBIndex"]] = old_index_of_16[f[col["DBIndex"]]]
        out.append("|".join(f))
    path = tmp_path / "sacct-u64.psv"
    path.write_text("\n".join(out), encoding="utf-8")
    return path


def stored(sessions) -> list[JobRecord]:
    with sessions() as s:
        return list(store_jobs.list_jobs(s))


def test_u64_db_indexes_round_trip_through_postgresql(db_url, sessions, engine, tmp_path,
                                                       capsys):
    path = export_with_db_indexes(tmp_path)
    assert run_cli("collect", "--once", "--source", "file", "--input", str(path),
                   "--database-url", db_url) == 0
    jobs = stored(sessions)
    by_raw = {j.job_id_raw: j for j in jobs if j.job_id_raw in EXTREMES}
    assert {raw: j.db_index for raw, j in by_raw.items()} == EXTREMES
    with engine.connect() as conn:
        column = conn.execute(text(
            "SELECT data_type, numeric_precision, numeric_scale FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name = 'jobs'"
            " AND column_name = 'db_index'")).one()
        assert tuple(column) == ("numeric", 20, 0)
        assert conn.execute(text("SELECT db_index FROM jobs WHERE job_id_raw = 4")).scalar() \
            == 2**64 - 1

    # The requeued job: the steps found their record by DBIndex (peak memory differs).
    sixteen = {j.submit.strftime("%H:%M:%S"): j for j in jobs if j.job_id_raw == 16}
    assert {k: j.db_index for k, j in sixteen.items()} == REQUEUED
    assert (sixteen["12:45:43"].max_rss_bytes, sixteen["12:48:17"].max_rss_bytes) == (
        3338240, 3293184)

    # A second import of the same file changes nothing (the content hash is stable).
    assert run_cli("collect", "--once", "--source", "file", "--input", str(path),
                   "--database-url", db_url) == 0
    assert stored(sessions) == jobs

    # jobs --format json prints the exact integers.
    capsys.readouterr()
    assert run_cli("jobs", "--format", "json", "--database-url", db_url) == 0
    printed = {row["job_id_raw"]: row["db_index"] for row in json.loads(capsys.readouterr().out)
               if row["job_id_raw"] in EXTREMES}
    assert printed == EXTREMES

    # The API: the same integers, valid against the contract's Job schema.
    token, line = new_token("all")
    tokens = tmp_path / "tokens"
    tokens.write_text(line + "\n")
    settings = Settings.load({"DATABASE_URL": db_url, "HPC_BILLING_CLUSTER": "lab",
                              "HPC_BILLING_API_TOKENS_FILE": str(tokens)})
    health = Health()
    health.bind_scheduler(lambda: True)
    app = create_app(settings, engine=engine, sessions=session_factory(engine), health=health)
    validator = OAS30Validator({**SPEC["components"]["schemas"]["JobDetail"],
                                "components": SPEC["components"]})
    for raw, value in EXTREMES.items():
        response = app.test_client().get(f"/api/v1/jobs/lab/{raw}",
                                         headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.get_data(as_text=True)
        body = json.loads(response.get_data())
        validator.validate(body)
        (job,) = body["records"]
        assert job["db_index"] == value


@pytest.mark.parametrize("value", [-1, 2**64, 10**20])
def test_a_db_index_outside_u64_is_refused_by_the_encoder(value):
    record = JobRecord(cluster="lab", job_id="1", job_id_raw=1,
                       submit=datetime(2026, 12, 1, tzinfo=UTC), state="COMPLETED",
                       state_raw="COMPLETED", db_index=value, final=True)
    with pytest.raises(ValueError, match=f"db_index {value} is not an unsigned 64-bit"):
        store_jobs.stage_row(record)


@pytest.mark.parametrize("value", ["-1", "18446744073709551616"])
def test_the_table_refuses_a_db_index_outside_u64(db_url, sessions, value):
    record = JobRecord(cluster="lab", job_id="1", job_id_raw=1,
                       submit=datetime(2026, 12, 1, tzinfo=UTC), state="COMPLETED",
                       state_raw="COMPLETED", db_index=0, final=True)
    with sessions() as s:
        writer = store_job_writer.JobWriter(s, run_id=1)
        writer.add(record)
        writer.flush()
        s.commit()
    with sessions() as s, pytest.raises(IntegrityError, match="ck_job_rows_db_index_u64"):
        s.execute(text(f"UPDATE job_rows SET db_index = {value}"))


def test_migration_0008_keeps_values_and_its_downgrade_refuses_to_truncate(fresh_database_url):
    engine = store_db.make_engine(fresh_database_url)
    try:
        store_db.migrate(engine, "0007")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO clusters (name) VALUES ('lab')"))
            conn.execute(text(
                "INSERT INTO jobs (cluster, job_id_raw, submit_time, job_id, state, state_raw,"
                " elapsed_s, nodes, cpus, mem_bytes, gpus, gpu_count, final, content_hash,"
                " db_index) VALUES ('lab', 1, '2026-12-01T00:00:00Z', '1', 'COMPLETED',"
                " 'COMPLETED', 0, 0, 0, 0, '{}', 0, true, 'x', 9223372036854775807)"))
        store_db.migrate(engine)
        with engine.begin() as conn:
            assert conn.execute(text("SELECT db_index FROM jobs")).scalar() == 2**63 - 1
            conn.execute(text("UPDATE job_rows SET db_index = 9223372036854775808"))
        with pytest.raises(DBAPIError, match="downgrade refused"):
            store_db.downgrade(engine, "0007")
        with engine.begin() as conn:
            assert conn.execute(text("SELECT db_index FROM jobs")).scalar() == 2**63
            conn.execute(text("UPDATE job_rows SET db_index = 5"))
        store_db.downgrade(engine, "0007")
        with engine.connect() as conn:
            assert conn.execute(text(
                "SELECT data_type FROM information_schema.columns WHERE table_schema = 'public'"
                " AND table_name = 'jobs'"
                " AND column_name = 'db_index'")).scalar() == "bigint"
            assert conn.execute(text("SELECT db_index FROM jobs")).scalar() == 5
    finally:
        engine.dispose()
