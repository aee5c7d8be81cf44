"""billing.invoice (the invoice as a value) and collector.finance.invoice_pdf (its PDF).

The PDF is checked as a reader sees it: poppler's pdftotext reads its text back and
pdftoppm renders its pages to PNG (Debian poppler-utils; tests/run.sh installs it).
Numbers worked by hand in tests/finance_lines.py:
  chemistry 2026-11: cpu 20 - 1 = 19.000000 core-h, 0.80 - 0.04 = 0.76; gpu 1.000000, 0.90;
  subtotal 1.66; VAT 19 % = 0.3154 -> 0.32; total 1.98.
  physics 2026-11: cpu 14.000000 0.70, mem 8.000000 0.04, gpu:h100 2.000000 6.20 = 6.94.
"""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import subprocess
from datetime import UTC, date
from decimal import Decimal as D
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from billing.invoice import InvoiceSite, amount_text, build_invoices, invoice_number
from collector.finance.invoice_pdf import InvoiceRenderError, render_invoice_pdf
from tests.finance_lines import billed, november

SITE = InvoiceSite(name="Example HPC Centre",
                   address=("Computing Building, Room 101", "12345 Example City"),
                   tax_rate=D("0.19"), tax_label="VAT", footer="Payable within 30 days.")
ISSUED = date(2026, 12, 5)


def invoice(account: str, site: InvoiceSite = SITE, closed: bool = True, lines=None):
    chosen = [b for b in (lines if lines is not None else november()) if b.account == account]
    (inv,) = build_invoices(chosen, account=account, period="2026-11", site=site,
                            issued=ISSUED, period_closed=closed, scale=2, tz=UTC)
    return inv


def test_the_invoice_value_by_hand():
    inv = invoice("chemistry")
    # The correction of 2026-10 is a row of its own: every row checks as quantity x rate.
    assert [(r.resource, r.label, r.quantity, r.rate, r.amount) for r in inv.resources] == [
        ("cpu", "CPU core-hours", D("20.000000"), D("0.04"), D("0.80")),
        ("cpu", "CPU core-hours, correction of 2026-10", D("-1.000000"), D("0.04"),
         D("-0.04")),
        ("gpu", "GPU-hours, untyped", D("1.000000"), D("0.9"), D("0.90"))]
    assert [r.corrects for r in inv.resources] == [None, "2026-10", None]
    assert [(u.user, u.jobs, u.amount) for u in inv.users] == [("carol", 2, D("1.66"))]
    assert (inv.subtotal, inv.tax, inv.total) == (D("1.66"), D("0.32"), D("1.98"))
    assert [(j.job_id, j.amount, j.corrections) for j in inv.jobs] == [
        ("4", D("-0.04"), ("2026-10",)), ("3", D("0.80") + D("0.90"), ())]
    assert (inv.period_first_day, inv.period_last_day) == (date(2026, 11, 1), date(2026, 11, 30))
    assert (inv.lines, inv.provisional) == (3, False)
    physics = invoice("physics", InvoiceSite(name="Example HPC Centre"))
    assert [(r.label, r.amount) for r in physics.resources] == [
        ("CPU core-hours", D("0.70")), ("Memory GiB-hours", D("0.04")),
        ("GPU-hours, h100", D("6.20"))]
    assert (physics.subtotal, physics.tax, physics.total) == (D("6.94"), None, D("6.94"))


def test_the_invoice_number_is_stable_and_distinct():
    digest = hashlib.sha256(b"Example HPC Centre\x1fchemistry\x1f2026-11\x1fEUR").digest()
    expected = "HPC-202611-" + base64.b32encode(digest[:5]).decode()
    assert invoice("chemistry").number == expected == invoice_number(SITE, "chemistry",
                                                                     "2026-11", "EUR")
    assert invoice("chemistry", closed=False).number == expected          # re-issued
    assert invoice("physics").number != expected
    assert invoice_number(SITE, "chemistry", "2026-12", "EUR") != expected


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no charges posted for account 'biology' in 2026-11"):
        build_invoices([], account="biology", period="2026-11", site=SITE, issued=ISSUED,
                       period_closed=True, scale=2, tz=UTC)
    with pytest.raises(ValueError, match="line of account 'physics' given for 'chemistry'"):
        build_invoices(november(), account="chemistry", period="2026-11", site=SITE,
                       issued=ISSUED, period_closed=True, scale=2, tz=UTC)


def test_amount_text():
    assert [amount_text(D(x)) for x in ("1234567.5", "-0.04", "0", "12.345")] == [
        "1,234,567.50", "-0.04", "0.00", "12.345"]


# --------------------------------------------------------------------------- the PDF

needs_poppler = pytest.mark.skipif(
    not (shutil.which("pdftotext") and shutil.which("pdftoppm")),
    reason="poppler-utils (pdftotext, pdftoppm) missing; tests/run.sh installs it")


def _logo() -> bytes:
    from PIL import Image, ImageDraw  # Pillow comes with ReportLab

    image = Image.new("RGB", (300, 100), "white")
    ImageDraw.Draw(image).rectangle([0, 0, 99, 99], fill=(20, 80, 160))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _text(pdf: bytes, tmp_path: Path) -> str:
    path = tmp_path / "invoice.pdf"
    path.write_bytes(pdf)
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True,
                          capture_output=True, text=True, timeout=60).stdout


@needs_poppler
def test_the_pdf_reads_back_with_its_numbers(tmp_path):
    inv = invoice("chemistry")
    pdf = render_invoice_pdf(inv, logo_png=_logo())
    assert pdf.startswith(b"%PDF-")
    text = _text(pdf, tmp_path)
    lines = [" ".join(x.split()) for x in text.splitlines() if x.strip()]
    for expected in ("Example HPC Centre", "Computing Building, Room 101", "INVOICE",
                     f"Invoice number {inv.number} Account chemistry",
                     "Issued 2026-12-05 Period 2026-11 (2026-11-01 to 2026-11-30)",
                     "CPU core-hours 20.00 core-h 0.04 0.80",
                     "CPU core-hours, correction of 2026-10 -1.00 core-h 0.04 -0.04",
                     "GPU-hours, untyped 1.00 GPU-h 0.90 0.90",
                     "Subtotal 1.66", "VAT 19 % 0.32", "Total (EUR) 1.98",
                     "carol 2 1.66", "Payable within 30 days.",
                     "Appendix: jobs of account chemistry posted in 2026-11",
                     "Total 2 jobs 1.66"):
        assert expected in lines, (expected, lines)
    assert "PROVISIONAL" not in text
    assert f"sha256 {inv.content_digest}" in text
    assert "page 1 of 2" in text and "page 2 of 2" in text
    # The appendix: job 4 is a correction of October.
    assert any(x.startswith("4 carol batch 2026-10-31 22:00 cpu -1.00 core-h -0.04")
               for x in lines), lines
    assert "correction of 2026-10" in text


@needs_poppler
def test_the_first_page_renders_to_a_picture(tmp_path):
    pdf_path = tmp_path / "invoice.pdf"
    pdf_path.write_bytes(render_invoice_pdf(invoice("physics", closed=False), logo_png=_logo()))
    subprocess.run(["pdftoppm", "-r", "60", "-png", str(pdf_path), str(tmp_path / "page")],
                   check=True, timeout=60)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) == 2
    from PIL import Image

    with Image.open(pages[0]) as page:
        assert page.size == (497, 702)      # A4 (595.3 x 841.9 pt) at 60 dpi, rounded up
        histogram = page.convert("L").histogram()         # pixels per grey level
        dark = sum(histogram[:128])
        # the logo's blue square (about 16 x 16 mm at 60 dpi) and the text are there
        assert dark > 2000
        # top-left corner: the logo (blue) is drawn where the layout puts it
        red, _, blue = page.convert("RGB").getpixel((55, 60))
        assert blue > 120 and red < 80
    text = _text(pdf_path.read_bytes(), tmp_path)
    assert "PROVISIONAL: period 2026-11 is still open" in " ".join(text.split())


def test_rendering_is_deterministic_and_checks_the_logo():
    inv = invoice("chemistry")
    assert render_invoice_pdf(inv) == render_invoice_pdf(inv)
    with pytest.raises(InvoiceRenderError, match="must be a PNG"):
        render_invoice_pdf(inv, logo_png=b"GIF89a....")
    with pytest.raises(InvoiceRenderError, match="not a readable PNG"):
        render_invoice_pdf(inv, logo_png=b"\x89PNG\r\n\x1a\n" + b"\0" * 20)


@needs_poppler
def test_text_outside_the_font_is_a_question_mark(tmp_path):
    lines = [billed(9, "chemistry", "李雷", "cpu", "1.000000", "0.05", "0.05",
                    start="2026-11-06T00:00:00", end="2026-11-06T01:00:00")]
    inv = invoice("chemistry", lines=lines)
    text = " ".join(_text(render_invoice_pdf(inv), tmp_path).split())
    assert "?? 1 0.05" in text
    assert inv.users[0].user == "李雷"                     # the value keeps the name


def test_a_period_in_another_zone():
    berlin = ZoneInfo("Europe/Berlin")
    (inv,) = build_invoices([b for b in november() if b.account == "physics"],
                            account="physics", period="2026-11", site=SITE, issued=ISSUED,
                            period_closed=True, scale=2, tz=berlin)
    assert (inv.period_first_day, inv.period_last_day) == (date(2026, 11, 1), date(2026, 11, 30))
