"""Pricing end to end through the CLI: collect prices, report, statement, close, reprice,
reconcile, budgets. Real PostgreSQL; amounts worked out by hand from the sacct lines.

The card is collector/data/demo-rates.toml (per hour: base cpu 36, mem 3.6 per GiB, gpu 360;
chemistry cpu 30, same mem and gpu). Quantities are rounded half-even to 6 places, each
line's amount half-even to 2 places.
"""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal as D
from pathlib import Path

import pytest

from tests.helpers import audit_key_env, executable_wrapper, run_cli
from collector.store import charges as store_charges
from collector.store import db as store_db
from collector.store import runs as store_runs

ROOT = Path(__file__).resolve().parents[2]
WIDE = ROOT / "tests" / "fixtures" / "sacct-wide-header.psv"
DEMO_CARD = ROOT / "collector" / "data" / "demo-rates.toml"
FAKE_SCONTROL = ROOT / "tests" / "fakes" / "fake_scontrol.py"


@pytest.fixture()
def sessions(db_url):
    engine = store_db.make_engine(db_url)
    yield store_db.session_factory(engine)
    engine.dispose()


def collect(db_url: str, path: Path = WIDE, card: Path = DEMO_CARD) -> int:
    return run_cli("collect", "--once", "--source", "file", "--input", str(path),
                   "--rates", str(card), "--database-url", db_url)


def report(db_url, capsys, period="2026-11", group_by="account,user") -> dict:
    capsys.readouterr()
    assert run_cli("report", "--period", period, "--group-by", group_by, "--format", "json",
                   "--database-url", db_url) == 0
    rows = json.loads(capsys.readouterr().out)
    keys = group_by.split(",")
    return {tuple(r[k] for k in keys): r for r in rows}


# Hand-worked amounts (sacct lines in tests/fixtures/sacct-wide-header.psv):
# job 11, alice/chemistry: 1 cpu, mem 300M, 1 gpu, ElapsedRaw 11.
#   cpu 1 x 11 s = 0.0030555.. h -> 0.003056 x 30  = 0.09168 -> 0.09
#   gpu 1 x 11 s               -> 0.003056 x 360 = 1.10016 -> 1.10
#   mem 300/1024 GiB x 11 s = 0.000895182 GiB-h -> 0.000895 x 3.6 = 0.003222 -> 0.00
#   total 1.19
# job 12, bob/chemistry: 2 cpus, 500M, ElapsedRaw 6.
#   cpu 2 x 6 s = 0.003333 h x 30 = 0.09999 -> 0.10; mem 0.000814 x 3.6 -> 0.00; total 0.10
# job 13, bob/physics: 1 cpu, 500M, ElapsedRaw 4.
#   cpu 0.001111 x 36 = 0.039996 -> 0.04; mem 0.000543 x 3.6 -> 0.00; total 0.04
ALICE_CHEM, BOB_CHEM, BOB_PHYS = "1.19", "0.10", "0.04"


def test_collect_prices_every_stored_job_in_the_same_run(db_url, sessions, capsys):
    assert collect(db_url) == 0
    run = None
    with sessions() as s:
        run = store_runs.list_runs(s, limit=1)[0]
    # 22 records; 18 have lines (1 zero-elapsed, 2 het never started, 1 running, no accrual).
    assert (run.jobs_priced, run.outcome) == (22, "ok")
    assert run.charge_lines_written > 0 and run.rate_card_id is not None
    rows = report(db_url, capsys)
    assert rows[("chemistry", "alice")]["amount"] == ALICE_CHEM
    assert rows[("chemistry", "alice")]["resources"] == {
        "cpu": {"quantity": "0.003056", "unit": "core_hour", "amount": "0.09"},
        "gpu": {"quantity": "0.003056", "unit": "gpu_hour", "amount": "1.10"},
        "mem": {"quantity": "0.000895", "unit": "gib_hour", "amount": "0.00"}}
    assert rows[("chemistry", "bob")]["amount"] == BOB_CHEM
    assert rows[("physics", "bob")]["amount"] == BOB_PHYS
    assert all(r["currency"] == "EUR" for r in rows.values())

    # Re-collect: nothing changed, nothing priced or written again.
    assert collect(db_url) == 0
    with sessions() as s:
        again = store_runs.list_runs(s, limit=1)[0]
    assert (again.jobs_unchanged, again.jobs_priced, again.charge_lines_written) == (22, 0, 0)
    assert report(db_url, capsys) == rows


def test_statement_total_equals_the_report(db_url, capsys, tmp_path):
    assert collect(db_url) == 0
    by_account = report(db_url, capsys, group_by="account")
    out = tmp_path / "physics.csv"
    assert run_cli("statement", "--period", "2026-11", "--account", "physics", "--output", str(out),
                   "--database-url", db_url) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    total = rows[-1]
    assert total["job_id"] == "TOTAL" and total["currency"] == "EUR"
    assert total["amount"] == by_account[("physics",)]["amount"]
    assert sum(D(r["amount"]) for r in rows[:-1]) == D(total["amount"])
    # Both records of the requeued job 16 are billed, each for its own run.
    job16 = {(r["submit"], r["resource"]): r["amount"] for r in rows if r["job_id"] == "16"}
    assert {submit for submit, _ in job16} == {"2026-11-22T12:45:43Z", "2026-11-22T12:48:17Z"}
    # job 16's second run: 1 cpu x 20 s = 0.005556 h x 36 = 0.200016 -> 0.20
    assert job16[("2026-11-22T12:48:17Z", "cpu")] == "0.20"
    # its first (REQUEUED) run: 4 s = 0.001111 h x 36 = 0.039996 -> 0.04
    assert job16[("2026-11-22T12:45:43Z", "cpu")] == "0.04"


def test_closed_period_gets_corrections_in_the_next_open_one(db_url, sessions, capsys, tmp_path):
    assert collect(db_url) == 0
    before = report(db_url, capsys)
    assert run_cli("period", "close", "2026-11", "--database-url", db_url,
                   env=audit_key_env(tmp_path)) == 0

    # A late change from Slurm: job 13 ran 8 s, not 4 (its End moved).
    lines = WIDE.read_text().splitlines()
    header = lines[0].split("|")
    i_job, i_elapsed, i_end = header.index("JobID"), header.index("ElapsedRaw"), header.index("End")
    changed = []
    for line in lines:
        f = line.split("|")
        if f[i_job] == "13":
            f[i_elapsed], f[i_end] = "8", "2026-11-22T12:46:09"
        changed.append("|".join(f))
    late = tmp_path / "late.psv"
    late.write_text("\n".join(changed) + "\n")
    assert collect(db_url, late) == 0

    # November is frozen; the difference is posted in December as a correction:
    # 8 s = 0.002222 h x 36 = 0.079992 -> 0.08, minus the 0.04 already billed = 0.04.
    assert report(db_url, capsys) == before
    dec = report(db_url, capsys, period="2026-12")
    assert list(dec) == [("physics", "bob")]
    assert dec[("physics", "bob")]["amount"] == "0.04"
    with sessions() as s:
        lines13 = [line for line in store_charges.job_charges(
            s, next(k for k in _job_keys(s) if k[1] == 13))]
    corrections = [x for x in lines13 if x.kind == "correction"]
    assert {(x.usage_period, x.posted_period, x.resource) for x in corrections} >= {
        ("2026-11", "2026-12", "cpu")}


def _job_keys(session):
    from collector.store import jobs as store_jobs
    return [(j.cluster, j.job_id_raw, j.submit) for j in store_jobs.list_jobs(session)]


def test_reprice_and_reprice_back_restores_amounts(db_url, capsys, tmp_path):
    assert collect(db_url) == 0
    original = report(db_url, capsys)
    doubled = tmp_path / "doubled.toml"
    doubled.write_text(DEMO_CARD.read_text().replace('cpu_hour = "36"', 'cpu_hour = "72"'))
    assert run_cli("reprice", "--since", "2026-11-01", "--until", "2026-12-01", "--rates", str(doubled),
                   "--database-url", db_url) == 0
    changed = report(db_url, capsys)
    # job 13: 0.001111 h x 72 = 0.079992 -> 0.08 (was 0.04); chemistry keeps its own rule.
    assert changed[("physics", "bob")]["amount"] == "0.08"
    assert changed[("chemistry", "alice")]["amount"] == ALICE_CHEM
    assert run_cli("reprice", "--since", "2026-11-01", "--until", "2026-12-01", "--rates", str(DEMO_CARD),
                   "--database-url", db_url) == 0
    assert report(db_url, capsys) == original


def test_rates_check(capsys, tmp_path):
    assert run_cli("rates", "check", str(ROOT / "deploy" / "rates.example.toml")) == 0
    out = capsys.readouterr().out
    assert "valid rate card" in out and "chemistry" in out and "base" in out
    bad = tmp_path / "bad.toml"
    bad.write_text(DEMO_CARD.read_text().replace('cpu_hour = "30"', "cpu_hour = 0.03")
                   .replace('mem_gib_hour = "3.6"\ngpu_hour = "360"\n\n[slurm', 'mem_gib_hour = "x"\n\n[slurm'))
    assert run_cli("rates", "check", str(bad)) == 2
    err = capsys.readouterr().err
    assert 'rule "chemistry"' in err and "cpu_hour" in err and "mem_gib_hour" in err


def _fake_scontrol(tmp_path: Path) -> Path:
    return executable_wrapper(tmp_path / "bin", "scontrol", FAKE_SCONTROL)


def test_reconcile_matches_slurm_billing_and_reports_mismatches(db_url, capsys, tmp_path):
    assert collect(db_url) == 0
    scontrol = _fake_scontrol(tmp_path)
    assert run_cli("reconcile", "--period", "2026-11", "--scontrol", str(scontrol),
                   "--database-url", db_url) == 0
    # scontrol unreachable: the card's weights are used; a wrong GPU weight shows up.
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(DEMO_CARD.read_text().replace("GRES/gpu=2.0", "GRES/gpu=3.0"))
    capsys.readouterr()
    code = run_cli("reconcile", "--period", "2026-11", "--scontrol", str(scontrol), "--rates", str(wrong),
                   "--format", "json", "--database-url", db_url, env={"FAKE_SCONTROL_MODE": "fail"})
    assert code == 1
    mismatched = json.loads(capsys.readouterr().out)
    # Jobs with GPUs: 2, 3, 5, 11 and the running 21 (e.g. job 2: 2 + 0.25 + 3 = 5.25 -> 5 vs 4).
    assert len(mismatched) == 5


def test_budgets_show_what_is_used(db_url, capsys):
    assert collect(db_url) == 0
    by_account = report(db_url, capsys, group_by="account")
    assert run_cli("budget", "set", "physics", "2026-11", "10", "--rates", str(DEMO_CARD),
                   "--database-url", db_url) == 0
    capsys.readouterr()
    assert run_cli("budget", "list", "--format", "json", "--database-url", db_url) == 0
    (budget,) = json.loads(capsys.readouterr().out)
    used = by_account[("physics",)]["amount"]
    assert (budget["account"], budget["amount"], budget["used"], budget["currency"]) == \
        ("physics", "10.00", used, "EUR")
    assert D(budget["used_fraction"]) == D(used) / 10
