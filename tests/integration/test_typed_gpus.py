"""Typed GPU lines end to end (issue 20, item 1): collect, report, statement and the API.

tests/fixtures/sacct-typed-gpus.psv is a `sacct --parsable2 --noconvert` export in the
shape Slurm documents for typed GRES: AllocTRES lists `gres/gpu:TYPE=n` next to the
untyped total `gres/gpu=N` (sacct(1), TRES). The card prices GPUs only with the generic
`gpu_hour` (no `gpu_hour_by_type`), the case in which typed GPUs used to be merged into
one untyped `gpu` line.

Worked by hand (gpu_hour 2.00, cpu_hour 0.05; quantities = count x ElapsedRaw / 3600):
  job 101 physics/alice: 4 h100 x 7200 s = 8 GPU-h -> 16.00; 16 cpus x 2 h = 32 -> 1.60
  job 102 physics/bob:   2 a100 x 10800 s = 6 GPU-h -> 12.00; 8 cpus x 3 h = 24 -> 1.20
  job 103 physics/alice: 1 a100 + 1 h100 x 3600 s = 1 + 1 GPU-h -> 2.00 + 2.00; 4 cpus -> 0.20
  job 104 chemistry/bob: 1 untyped x 1800 s = 0.5 GPU-h -> 1.00; 2 cpus x 0.5 h = 1 -> 0.05
  physics: gpu:a100 7 GPU-h 14.00, gpu:h100 9 GPU-h 18.00, cpu 60 core-h 3.00 = 35.00
  chemistry: gpu 0.5 GPU-h 1.00, cpu 1 core-h 0.05 = 1.05
One GPU type per job line and no fractions of a cent here, so the totals are exactly
those the merged `gpu` line gave (physics gpu 16 GPU-h 32.00).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from collector.health import Health
from collector.settings import Settings
from collector.store.db import session_factory
from collector.web.app import create_app
from collector.web.auth import new_token
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
EXPORT = ROOT / "tests" / "fixtures" / "sacct-typed-gpus.psv"
CARD = """currency = "EUR"
scale = 2
period = "month"
timezone = "UTC"

[[rules]]
name = "base"
from = 2026-01-01
[rules.rates]
cpu_hour = "0.05"
gpu_hour = "2.00"
"""


@pytest.fixture
def collected(db_url, tmp_path) -> str:
    card = tmp_path / "rates.toml"
    card.write_text(CARD)
    assert run_cli("collect", "--once", "--source", "file", "--input", str(EXPORT),
                   "--rates", str(card), "--database-url", db_url) == 0
    return db_url


def _report(db_url: str, capsys, group_by: str) -> list[dict]:
    capsys.readouterr()
    assert run_cli("report", "--period", "2026-11", "--group-by", group_by, "--format", "json",
                   "--database-url", db_url) == 0
    return json.loads(capsys.readouterr().out)


def test_report_resources_keep_the_gpu_type_with_full_quantities(collected, capsys):
    rows = {r["account"]: r for r in _report(collected, capsys, "account")}
    assert rows["physics"]["resources"] == {
        "cpu": {"quantity": "60.000000", "unit": "core_hour", "amount": "3.00"},
        "gpu:a100": {"quantity": "7.000000", "unit": "gpu_hour", "amount": "14.00"},
        "gpu:h100": {"quantity": "9.000000", "unit": "gpu_hour", "amount": "18.00"}}
    assert rows["physics"]["amount"] == "35.00" and rows["physics"]["jobs"] == 3
    assert rows["chemistry"]["resources"] == {
        "cpu": {"quantity": "1.000000", "unit": "core_hour", "amount": "0.05"},
        "gpu": {"quantity": "0.500000", "unit": "gpu_hour", "amount": "1.00"}}
    assert rows["chemistry"]["amount"] == "1.05"

    by_resource = {r["resource"]: r for r in _report(collected, capsys, "resource")}
    assert {name: (r["amount"], r["jobs"]) for name, r in by_resource.items()} == {
        "cpu": ("3.05", 4), "gpu": ("1.00", 1), "gpu:a100": ("14.00", 2),
        "gpu:h100": ("18.00", 2)}

    # The table form names the typed lines too.
    capsys.readouterr()
    assert run_cli("report", "--period", "2026-11", "--group-by", "account", "--format", "csv",
                   "--database-url", collected) == 0
    table = {r["account"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert table["physics"]["resources"] == "cpu=3.00 gpu:a100=14.00 gpu:h100=18.00"


def test_statement_lines_keep_the_gpu_type(collected, tmp_path):
    out = tmp_path / "physics.csv"
    assert run_cli("statement", "--period", "2026-11", "--account", "physics", "--output", str(out),
                   "--database-url", collected) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    gpu = [(r["job_id"], r["resource"], r["quantity"], r["rate"], r["amount"])
           for r in rows if r["resource"].startswith("gpu")]
    assert gpu == [("101", "gpu:h100", "8.000000", "2", "16.00"),
                   ("102", "gpu:a100", "6.000000", "2", "12.00"),
                   ("103", "gpu:a100", "1.000000", "2", "2.00"),
                   ("103", "gpu:h100", "1.000000", "2", "2.00")]
    assert (rows[-1]["job_id"], rows[-1]["amount"]) == ("TOTAL", "35.00")


def test_the_api_shows_typed_gpu_lines(collected, engine, tmp_path):
    token, line = new_token("all")
    tokens = tmp_path / "tokens"
    tokens.write_text(line + "\n")
    settings = Settings.load({"HPC_BILLING_CLUSTER": "lab", "DATABASE_URL": collected,
                              "HPC_BILLING_API_TOKENS_FILE": str(tokens)})
    health = Health()
    health.bind_scheduler(lambda: True)
    client = create_app(settings, engine=engine, sessions=session_factory(engine),
                        health=health).test_client()
    auth = {"Authorization": f"Bearer {token}"}

    report = client.get("/api/v1/report?period=2026-11&group_by=account", headers=auth)
    assert report.status_code == 200, report.get_data(as_text=True)
    physics = next(r for r in report.get_json()["rows"] if r["account"] == "physics")
    assert {k: (v["quantity"], v["amount"]) for k, v in physics["resources"].items()} == {
        "cpu": ("60.000000", "3.00"), "gpu:a100": ("7.000000", "14.00"),
        "gpu:h100": ("9.000000", "18.00")}

    job = client.get("/api/v1/jobs/lab/103", headers=auth)
    assert job.status_code == 200, job.get_data(as_text=True)
    (record,) = job.get_json()["records"]
    assert record["gpus"] == {"a100": 1, "h100": 1}
    assert [(c["resource"], c["quantity"], c["amount"]) for c in record["charges"]] == [
        ("cpu", "4.000000", "0.20"), ("gpu:a100", "1.000000", "2.00"),
        ("gpu:h100", "1.000000", "2.00")]
