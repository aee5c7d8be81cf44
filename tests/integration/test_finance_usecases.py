"""The finance use cases on the real database (issue 20): statement (CSV, JSON, PDF),
GL journal and FOCUS exports, explain, and the export entries they leave in the trail.

Data: `collect` of tests/fixtures/sacct-typed-gpus.psv priced by the card of
test_typed_gpus (physics 35.00, chemistry 1.05 in 2026-11; 9 lines), then 2026-11
closed and the jobs priced again with a card whose cpu rate went up, so 2026-12 holds
corrections of 2026-11 (each cpu line 0.05 -> 0.06 per core-hour: physics +0.60,
chemistry +0.01) that every document must carry.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import subprocess
from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path

import pytest

from billing.audit import EXPORT
from billing.focus import FocusSite
from billing.invoice import InvoiceSite
from billing.ledger import GlCodeError
from billing.rates import GlCodes
from collector.store import audit as store_audit
from collector.usecases import audit as uc_audit
from collector.usecases import explain as uc_explain
from collector.usecases import exports as uc_exports
from collector.usecases import statement as uc_statement
from collector.usecases.documents import FinanceInputError
from tests.helpers import run_cli
from tests.integration.test_typed_gpus import CARD
from tests.integration.test_typed_gpus import EXPORT as SACCT_EXPORT

KEY = b"k" * 40
CARD_2 = CARD.replace('cpu_hour = "0.05"', 'cpu_hour = "0.06"')
SITE = InvoiceSite(name="Example HPC Centre", address=("1 Compute Road", "Cluster City"),
                   number_prefix="EHC", tax_rate=D("0.19"), tax_label="VAT",
                   footer="Payable within 30 days.")
FOCUS_SITE = FocusSite("Example HPC Centre", "EHC-1", "Example HPC Centre")


@pytest.fixture
def corrected(db_url, tmp_path) -> str:
    card = tmp_path / "rates.toml"
    card.write_text(CARD)
    assert run_cli("collect", "--once", "--source", "file", "--input", str(SACCT_EXPORT),
                   "--rates", str(card), "--database-url", db_url) == 0
    assert run_cli("period", "close", "2026-11", "--database-url", db_url) == 0
    card.write_text(CARD_2)
    assert run_cli("reprice", "--since", "2026-11-01", "--until", "2026-12-01",
                   "--rates", str(card), "--database-url", db_url) == 0
    return db_url


@pytest.fixture
def trail() -> uc_audit.AuditTrail:
    return uc_audit.AuditTrail(KEY, "finance")


def _report(db_url: str, period: str, capsys) -> dict[str | None, D]:
    capsys.readouterr()
    assert run_cli("report", "--period", period, "--group-by", "account", "--format", "json",
                   "--database-url", db_url) == 0
    return {r["account"]: D(r["amount"]) for r in json.loads(capsys.readouterr().out)}


def _exports(sessions) -> list:
    with sessions() as s:
        return list(store_audit.entries(s, action=EXPORT))


def test_the_fixture_holds_charges_and_corrections(corrected, capsys):
    assert _report(corrected, "2026-11", capsys) == {"chemistry": D("1.05"),
                                                     "physics": D("35.00")}
    assert _report(corrected, "2026-12", capsys) == {"chemistry": D("0.01"),
                                                     "physics": D("0.60")}


@pytest.mark.parametrize("period", ["2026-11", "2026-12"])
def test_csv_and_json_statements_add_up_to_the_report(corrected, sessions, trail, tmp_path,
                                                      capsys, period):
    report = _report(corrected, period, capsys)
    for account, amount in report.items():
        out = tmp_path / f"{account}.csv"
        result = uc_statement.write_statement(sessions, trail, period=period,
                                              account=account, fmt="csv", output=str(out))
        rows = list(csv.DictReader(io.StringIO(out.read_text())))
        assert rows[-1]["job_id"] == "TOTAL" and D(rows[-1]["amount"]) == amount
        assert sum(D(r["amount"]) for r in rows[:-1]) == amount == result.totals["EUR"]
        assert result.lines == len(rows) - 1
        kinds = {r["kind"] for r in rows[:-1]}
        assert kinds == ({"charge"} if period == "2026-11" else {"correction"})

        out_json = tmp_path / f"{account}.json"
        result = uc_statement.write_statement(sessions, trail, period=period,
                                              account=account, fmt="json",
                                              output=str(out_json))
        doc = json.loads(out_json.read_text())
        assert (doc["account"], doc["period"]) == (account, period)
        assert doc["totals"] == {"EUR": f"{amount:.2f}"}
        assert [(x["job_id"], x["resource"], x["amount"]) for x in doc["lines"]] == [
            (r["job_id"], r["resource"], r["amount"]) for r in rows[:-1]]
    # Each statement written left an export entry naming it and its SHA-256.
    entries = _exports(sessions)
    assert len(entries) == 2 * len(report)
    last = entries[-1].details
    assert last["document"] == "statement" and last["format"] == "json"
    assert last["documents"][0]["sha256"] == hashlib.sha256(out_json.read_bytes()).hexdigest()


def test_bad_input_is_refused_and_makes_no_file(corrected, sessions, trail, tmp_path):
    outputs = tmp_path / "out"
    outputs.mkdir()
    out = outputs / "s.csv"
    with pytest.raises(FinanceInputError, match="unknown account 'nobody'"):
        uc_statement.write_statement(sessions, trail, period="2026-11", account="nobody",
                                     fmt="csv", output=str(out))
    with pytest.raises(FinanceInputError,
                       match="account 'physics' has no charges posted in 2026-10"):
        uc_statement.write_statement(sessions, trail, period="2026-10", account="physics",
                                     fmt="pdf", output=str(out))
    with pytest.raises(FinanceInputError, match="no charges posted in 2026-10"):
        uc_exports.export_gl(sessions, trail, period="2026-10", output=str(out),
                             codes=GlCodes(receivable="1", revenue="2"))
    with pytest.raises(FinanceInputError, match="no charges posted in 2026-10"):
        uc_exports.export_focus(sessions, trail, period="2026-10", output=str(out),
                                site=FOCUS_SITE)
    with pytest.raises(FinanceInputError, match="no job '999'"):
        uc_explain.explain(sessions, job_id="999")
    assert list(outputs.iterdir()) == [] and _exports(sessions) == []


@pytest.mark.parametrize("period", ["2026-11", "2026-12"])
def test_the_gl_journal_balances_to_the_periods_total(corrected, sessions, trail, tmp_path,
                                                      capsys, period):
    total = sum(_report(corrected, period, capsys).values())
    out = tmp_path / "gl.csv"
    codes = GlCodes(receivable="1200", revenue="4000",
                    receivable_by_account={"physics": "CC-4711"},
                    revenue_by_resource={"gpu": "4020", "gpu:h100": "4021"})
    result = uc_exports.export_gl(sessions, trail, period=period, output=str(out),
                                  codes=codes, codes_from="test")
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    debit = sum(D(r["debit"]) for r in rows)
    credit = sum(D(r["credit"]) for r in rows)
    assert debit == credit == total == result.totals["EUR"]
    assert {r["journal"] for r in rows} == {f"HPC-{period}-EUR"}
    assert {(r["account"], r["gl_code"]) for r in rows if r["account"]} == {
        ("physics", "CC-4711"), ("chemistry", "1200")}
    credits = {r["resource"]: r["gl_code"] for r in rows if r["resource"]}
    if period == "2026-11":
        assert credits == {"cpu": "4000", "gpu": "4020", "gpu:a100": "4020",
                           "gpu:h100": "4021"}
    else:
        assert credits == {"cpu": "4000"}
    (entry,) = _exports(sessions)
    assert entry.subject == f"gl {period}" and entry.details["codes_from"] == "test"


def test_gl_codes_missing_are_named(corrected, sessions, trail, tmp_path):
    out = tmp_path / "gl.csv"
    with pytest.raises(uc_exports.NoGlCodesError, match="--gl-mapping"):
        uc_exports.export_gl(sessions, trail, period="2026-11", output=str(out))
    with pytest.raises(GlCodeError, match="no revenue code for resource.*gpu:a100"):
        uc_exports.export_gl(sessions, trail, period="2026-11", output=str(out),
                             codes=GlCodes(receivable="1200",
                                           revenue_by_resource={"cpu": "4010"}))
    assert not out.exists()


def test_gl_codes_come_from_the_stored_card(db_url, sessions, trail, tmp_path):
    card = tmp_path / "rates.toml"
    card.write_text(CARD + '\n[gl]\nreceivable = "1200"\nrevenue = "4000"\n')
    assert run_cli("collect", "--once", "--source", "file", "--input", str(SACCT_EXPORT),
                   "--rates", str(card), "--database-url", db_url) == 0
    result = uc_exports.export_gl(sessions, trail, period="2026-11",
                                  output=str(tmp_path / "gl.csv"))
    assert result.codes_from.startswith("rate card ") and result.totals == {"EUR": D("36.05")}


@pytest.mark.parametrize("period", ["2026-11", "2026-12"])
def test_focus_billed_cost_sums_to_the_periods_total(corrected, sessions, trail, tmp_path,
                                                     capsys, period, monkeypatch):
    total = sum(_report(corrected, period, capsys).values())
    monkeypatch.setattr(uc_exports, "FOCUS_CHUNK", 2)   # several chunks, one file
    out = tmp_path / "focus.csv"
    result = uc_exports.export_focus(sessions, trail, period=period, output=str(out),
                                     site=FOCUS_SITE)
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert sum(D(r["BilledCost"]) for r in rows) == total == result.totals["EUR"]
    assert len(rows) == result.lines == (9 if period == "2026-11" else 4)
    assert {r["BillingPeriodStart"] for r in rows} == {f"{period}-01T00:00:00Z"}
    if period == "2026-12":
        assert {r["ChargeClass"] for r in rows} == {"Correction"}


def test_explain_agrees_with_the_statement_for_every_job(corrected, sessions, trail,
                                                         tmp_path, capsys):
    statement: dict[tuple[str, str], list[tuple]] = {}
    for period in ("2026-11", "2026-12"):
        for account in _report(corrected, period, capsys):
            out = tmp_path / f"{account}-{period}.csv"
            uc_statement.write_statement(sessions, trail, period=period, account=account,
                                         fmt="csv", output=str(out))
            for r in list(csv.DictReader(io.StringIO(out.read_text())))[:-1]:
                statement.setdefault((r["job_id"], period), []).append(
                    (r["usage_period"], r["resource"], D(r["quantity"]), D(r["amount"]),
                     r["kind"]))
    jobs = {job for job, _ in statement}
    assert jobs == {"101", "102", "103", "104"}
    for job in sorted(jobs):
        (doc,) = uc_explain.explain(sessions, job_id=job, cluster="lab")
        for period in ("2026-11", "2026-12"):
            mine = [(x["usage_period"], x["resource"], D(x["quantity"]), D(x["amount"]),
                     x["kind"])
                    for x in doc["lines"] if x["posted_period"] == period]
            assert mine == statement.get((job, period), []), (job, period)
        assert D(doc["total"]) == sum(a for p in ("2026-11", "2026-12")
                                      for _, _, _, a, _ in statement.get((job, p), []))
        # Two card versions priced this job, and both are named and found.
        assert {x["rate_card"] for x in doc["lines"]} and all(
            x["card_available"] and x["rule"] == "base" for x in doc["lines"])
        corrections = [x for x in doc["lines"] if x["kind"] == "correction"]
        assert corrections and all("corrects" in x for x in corrections)
    text = uc_explain.explain_lines(uc_explain.explain(sessions, job_id="101"))
    assert text[0].startswith("job 101 (cluster lab") and any("corrects 2026-11" in x
                                                              for x in text)


def _pdf_text(path: Path) -> list[str]:
    out = subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return [" ".join(x.split()) for x in out.splitlines()]


@pytest.mark.skipif(not (shutil.which("pdftotext") and shutil.which("pdftoppm")),
                    reason="poppler-utils missing")
def test_the_pdf_invoice_reads_back_with_the_reports_total(corrected, sessions, trail,
                                                           tmp_path, capsys):
    from PIL import Image

    report = _report(corrected, "2026-11", capsys)
    out = tmp_path / "physics.pdf"
    result = uc_statement.write_statement(
        sessions, trail, period="2026-11", account="physics", fmt="pdf", output=str(out),
        site=SITE, now=datetime(2026, 12, 5, 10, 0, tzinfo=UTC))
    assert result.totals == {"EUR": report["physics"]} and not result.provisional
    lines = _pdf_text(out)
    assert any("Account physics" in x for x in lines)
    assert any("Period 2026-11" in x for x in lines)
    assert any(result.invoices[0] in x for x in lines)
    assert "GPU-hours, a100 7.00 GPU-h 2.00 14.00" in lines
    assert "GPU-hours, h100 9.00 GPU-h 2.00 18.00" in lines
    assert f"Subtotal {report['physics']:.2f}" in lines                  # 35.00
    assert "VAT 19 % 6.65" in lines                                        # 35.00 x 0.19
    assert "Total (EUR) 41.65" in lines
    subprocess.run(["pdftoppm", "-png", "-r", "60", str(out), str(tmp_path / "page")],
                   check=True, capture_output=True, timeout=60)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert pages
    with Image.open(pages[0]) as img:
        histogram = img.convert("L").histogram()
        dark = sum(histogram[:128])
    assert dark > 1000            # the page has text on it, not a blank render

    # The open period's invoice of the corrections is provisional.
    result = uc_statement.write_statement(sessions, trail, period="2026-12",
                                          account="physics", fmt="pdf",
                                          output=str(tmp_path / "dec.pdf"), site=SITE)
    assert result.provisional
    lines = _pdf_text(tmp_path / "dec.pdf")
    assert any("PROVISIONAL" in x for x in lines)
    assert any("Subtotal 0.60" in x for x in lines)
