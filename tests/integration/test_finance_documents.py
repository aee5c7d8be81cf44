"""The finance builders on lines stored in the real database (issue 20's "done when"):
the GL journal balances to the report's total, FOCUS BilledCost sums to it, the PDF
invoice read back (its text layer, and its first page rendered to a picture and read by
OCR) shows the report's total, explain agrees with the statement for every
job, and a period digest recorded at close catches an UPDATE of a closed period's line.

The lines come from `collect` of tests/fixtures/sacct-typed-gpus.psv priced by the card
of test_typed_gpus (worked by hand there: physics 35.00, chemistry 1.05 in 2026-11).
They are read back with the store's existing reads (jobs, job_charges), as the commands
that will wire these builders will read them.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from datetime import UTC, date, datetime
from decimal import Decimal as D

import pytest
from sqlalchemy import text

from billing.audit import (
    PERIOD_CLOSE,
    chain_entry,
    closed_period_digests,
    period_digest,
    verify_chain,
    verify_periods,
)
from billing.explain import explain_job
from billing.focus import FocusSite, focus_rows
from billing.invoice import InvoiceSite, build_invoices
from billing.ledger import build_journal
from billing.rates import GlCodes, load_rate_card
from billing.records import BilledLine
from collector.finance.invoice_pdf import render_invoice_pdf
from collector.store import charges as store_charges
from collector.store import jobs as store_jobs
from tests.helpers import run_cli
from tests.integration.test_typed_gpus import CARD, EXPORT

PERIOD = "2026-11"


@pytest.fixture
def collected(db_url, tmp_path) -> str:
    card = tmp_path / "rates.toml"
    card.write_text(CARD)
    assert run_cli("collect", "--once", "--source", "file", "--input", str(EXPORT),
                   "--rates", str(card), "--database-url", db_url) == 0
    return db_url


def _billed(sessions, period: str = PERIOD) -> list[BilledLine]:
    out = []
    with sessions() as s:
        for job in store_jobs.list_jobs(s):
            for line in store_charges.job_charges(s, (job.cluster, job.job_id_raw, job.submit)):
                if line.posted_period == period:
                    out.append(BilledLine(line, job.job_id, job.account, job.user,
                                          job.partition, job.qos, job.start, job.end))
    return out


def _report(db_url: str, capsys) -> dict[str, D]:
    capsys.readouterr()
    assert run_cli("report", "--period", PERIOD, "--group-by", "account", "--format", "json",
                   "--database-url", db_url) == 0
    return {r["account"]: D(r["amount"]) for r in json.loads(capsys.readouterr().out)}


def test_journal_and_focus_add_up_to_the_report(collected, sessions, capsys):
    report = _report(collected, capsys)
    assert report == {"chemistry": D("1.05"), "physics": D("35.00")}
    lines = _billed(sessions)
    journal = build_journal(lines, PERIOD, GlCodes(receivable="1200", revenue="4000"))
    assert journal.balance("EUR") == (D("36.05"), D("36.05")) == (sum(report.values()),) * 2
    assert {x.resource: x.credit for x in journal.lines if x.resource} == {
        "cpu": D("3.05"), "gpu": D("1.00"), "gpu:a100": D("14.00"), "gpu:h100": D("18.00")}
    rows = focus_rows(lines, PERIOD, UTC, FocusSite("Example HPC", "EHC-1", "Example HPC"))
    assert sum(D(r["BilledCost"]) for r in rows) == D("36.05")
    assert {r["SkuId"] for r in rows} == {"cpu", "gpu", "gpu:a100", "gpu:h100"}


def _physics_invoice_pdf(sessions, tmp_path):
    """The physics invoice of PERIOD from the stored lines, as a PDF file."""
    physics = [b for b in _billed(sessions) if b.account == "physics"]
    (inv,) = build_invoices(physics, account="physics", period=PERIOD,
                            site=InvoiceSite(name="Example HPC Centre"), issued=date(2026, 12, 5),
                            period_closed=False, scale=2, tz=UTC)
    path = tmp_path / "invoice.pdf"
    path.write_bytes(render_invoice_pdf(inv))
    return path


@pytest.mark.skipif(not shutil.which("pdftotext"), reason="poppler-utils missing")
def test_the_pdf_invoice_shows_the_reports_total(collected, sessions, capsys, tmp_path):
    report = _report(collected, capsys)
    path = _physics_invoice_pdf(sessions, tmp_path)
    pdf_text = subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True,
                              capture_output=True, text=True, timeout=60).stdout
    lines = [" ".join(x.split()) for x in pdf_text.splitlines()]
    assert f"Total (EUR) {report['physics']:.2f}" in lines          # 35.00, no tax set
    assert "GPU-hours, a100 7.00 GPU-h 2.00 14.00" in lines
    assert "GPU-hours, h100 9.00 GPU-h 2.00 18.00" in lines
    assert any("Account physics" in x for x in lines)
    assert any("Period 2026-11" in x for x in lines)


@pytest.mark.skipif(not (shutil.which("pdftoppm") and shutil.which("tesseract")),
                    reason="poppler-utils or tesseract-ocr missing; tests/run.sh installs them")
def test_the_pdf_invoice_as_a_picture_reads_back_with_the_reports_total(
        collected, sessions, capsys, tmp_path):
    """The first page rendered to a PNG (pdftoppm, 200 dpi) and read back by OCR
    (tesseract): what a person sees, not the PDF's text layer."""
    report = _report(collected, capsys)
    path = _physics_invoice_pdf(sessions, tmp_path)
    subprocess.run(["pdftoppm", "-r", "200", "-f", "1", "-l", "1", "-png", str(path),
                    str(tmp_path / "page")], check=True, timeout=60)
    (png,) = sorted(tmp_path.glob("page-*.png"))
    seen = subprocess.run(["tesseract", str(png), "-", "--psm", "6"], check=True,
                          capture_output=True, text=True, timeout=120).stdout
    lines = [" ".join(x.split()) for x in seen.splitlines()]
    assert f"Total (EUR) {report['physics']:.2f}" in lines, seen          # 35.00
    assert "GPU-hours, a100 7.00 GPU-h 2.00 14.00" in lines, seen
    assert "GPU-hours, h100 9.00 GPU-h 2.00 18.00" in lines, seen
    assert any(x.endswith("Account physics") for x in lines), seen
    assert any(x.startswith("Issued 2026-12-05 Period 2026-11") for x in lines), seen


def test_explain_agrees_with_the_statement_for_every_job(collected, sessions, tmp_path):
    card = load_rate_card(CARD)
    statement: dict[str, list[tuple]] = {}
    for account in ("physics", "chemistry"):
        out = tmp_path / f"{account}.csv"
        assert run_cli("statement", "--period", PERIOD, "--account", account, "--output",
                       str(out), "--database-url", collected) == 0
        for r in csv.DictReader(io.StringIO(out.read_text())):
            if r["job_id"] != "TOTAL":
                statement.setdefault(r["job_id"], []).append(
                    (r["usage_period"], r["resource"], D(r["quantity"]), D(r["amount"]),
                     r["kind"]))
    assert len(statement) == 4
    with sessions() as s:
        for job in store_jobs.list_jobs(s):
            lines = store_charges.job_charges(s, (job.cluster, job.job_id_raw, job.submit))
            doc = explain_job(job, lines, {card.version: card})
            mine = [(x["usage_period"], x["resource"], D(x["quantity"]), D(x["amount"]),
                     x["kind"]) for x in doc["lines"] if x["posted_period"] == PERIOD]
            assert mine == statement[job.job_id], job.job_id
            assert D(doc["total"]) == sum(a for _, _, _, a, _ in statement[job.job_id])
            assert all(x["rule"] == "base" and x["card_available"] for x in doc["lines"])


def test_a_closed_periods_digest_catches_an_update_of_its_lines(collected, sessions, engine):
    key = b"k" * 32
    digest, count = period_digest(b.line for b in _billed(sessions))
    trail = [chain_entry(key, None, at=datetime(2026, 12, 1, 9, 0, tzinfo=UTC),
                         actor="finance", action=PERIOD_CLOSE, subject=PERIOD,
                         details={"digest": digest, "lines": count})]
    assert count == 9
    assert verify_chain(key, trail) is None
    recorded = closed_period_digests(trail)
    current = {PERIOD: [b.line for b in _billed(sessions)]}
    assert verify_periods(recorded, current) is None
    # An edit made directly in the database, as a trigger-less UPDATE would be:
    with engine.begin() as conn:
        conn.execute(text("UPDATE charge_rows l SET amount_micro = amount_micro + 1000000"
                          " FROM prices p WHERE p.id = l.price_id"
                          " AND p.resource = 'gpu:h100' AND l.job_id_raw = 101"))
    found = verify_periods(recorded, {PERIOD: [b.line for b in _billed(sessions)]})
    assert found is not None and found.where == "period 2026-11"
