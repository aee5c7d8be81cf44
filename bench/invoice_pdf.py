"""``python -m bench.invoice_pdf [--jobs 500] [--out F]``: time the PDF invoice renderer.

Builds an invoice of ``--jobs`` synthetic jobs (20 users, CPU, memory and typed GPU
lines) with billing.invoice, renders it with collector.finance.invoice_pdf, and prints
the build and render times (best and median of ``--repeat``), the pages and the size.

``--compare LIB`` instead renders the same content with ``reportlab``, ``fpdf2`` or
``weasyprint`` directly (install that library in a scratch venv first): the measurement
that chose ReportLab (docs/finance.md).
"""

from __future__ import annotations

import argparse
import html
import io
import re
import statistics
import sys
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from billing.invoice import InvoiceSite, amount_text, build_invoices
from billing.records import BilledLine, ChargeLine

SITE = InvoiceSite(name="Example HPC Centre",
                   address=("Computing Building, Room 101", "1 Science Park", "12345 Example City"),
                   tax_rate=Decimal("0.19"), footer="Payable within 30 days.")
_RATES = {"cpu": ("core_hour", Decimal("0.031")), "mem": ("gib_hour", Decimal("0.0047")),
          "gpu:a100": ("gpu_hour", Decimal("2.35")), "gpu:h100": ("gpu_hour", Decimal("3.10"))}


def synthetic_lines(jobs: int) -> list[BilledLine]:
    """``jobs`` jobs of account physics in 2026-11, deterministic."""
    out = []
    base = datetime(2026, 11, 1, tzinfo=UTC)
    for i in range(jobs):
        start = base + timedelta(minutes=83 * i)
        hours = Decimal(1 + i % 7)
        end = start + timedelta(hours=int(hours))
        gpu = "gpu:h100" if i % 2 else "gpu:a100"
        for resource, quantity in (("cpu", hours * 16), ("mem", hours * 64), (gpu, hours * 4)):
            unit, rate = _RATES[resource]
            amount = (quantity * rate).quantize(Decimal("0.01"))
            line = ChargeLine("lab", 100000 + i, start - timedelta(minutes=5), "2026-11",
                              "2026-11", resource, quantity, unit, rate, amount, "EUR", "base",
                              "0" * 64)
            out.append(BilledLine(line, str(100000 + i), "physics", f"user{i % 20:02d}",
                                  "gpu", "normal", start, end))
    return out


def _times(fn, repeat: int) -> tuple[float, float, object]:
    result = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), result


def _pages(pdf: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page[^s]", pdf))


def _rows(lines: list[BilledLine]):
    (inv,) = build_invoices(lines, account="physics", period="2026-11", site=SITE,
                            issued=date(2026, 12, 5), period_closed=True, scale=2,
                            tz=ZoneInfo("UTC"))
    res = [(r.label, amount_text(r.quantity), amount_text(r.rate or 0), amount_text(r.amount))
           for r in inv.resources]
    users = [(u.user or "", str(u.jobs), amount_text(u.amount)) for u in inv.users]
    jobs = [(j.job_id, j.user or "", j.partition or "", f"{j.start:%Y-%m-%d %H:%M}",
             f"{j.end:%Y-%m-%d %H:%M}",
             "; ".join(f"{r} {amount_text(q)}" for r, q, _ in j.resources), amount_text(j.amount))
            for j in inv.jobs]
    return inv, res, users, jobs


def compare(lib: str, lines: list[BilledLine]) -> bytes:
    """The same content rendered with one library's own table API."""
    _, res, users, jobs = _rows(lines)
    head_r, head_u = ("Resource", "Quantity", "Rate", "Amount"), ("User", "Jobs", "Amount")
    head_j = ("Job", "User", "Partition", "Start", "End", "Resources", "Amount")
    if lib == "reportlab":
        from reportlab.lib import colors
        from reportlab.lib.pagesizes import A4
        from reportlab.lib.styles import getSampleStyleSheet
        from reportlab.platypus import (
            PageBreak,
            Paragraph,
            SimpleDocTemplate,
            Table,
            TableStyle,
        )
        buf = io.BytesIO()
        ss = getSampleStyleSheet()
        st = TableStyle([("FONT", (0, 0), (-1, -1), "Helvetica", 8),
                         ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.black)])
        story = [Paragraph(SITE.name, ss["Heading2"]), Table([head_r, *res], style=st),
                 Table([head_u, *users], style=st), PageBreak(),
                 Table([head_j, *jobs], style=st, repeatRows=1)]
        SimpleDocTemplate(buf, pagesize=A4, invariant=1).build(story)
        return buf.getvalue()
    if lib == "fpdf2":
        from fpdf import FPDF
        pdf = FPDF(format="A4")
        pdf.add_page()
        pdf.set_font("Helvetica", size=8)
        pdf.cell(0, 8, SITE.name, new_x="LMARGIN", new_y="NEXT")
        for rows in ([head_r, *res], [head_u, *users], [head_j, *jobs]):
            if rows[0] is head_j:
                pdf.add_page()
            with pdf.table(first_row_as_headings=True, line_height=4.5) as table:
                for r in rows:
                    row = table.row()
                    for c in r:
                        row.cell(c)
        return bytes(pdf.output())
    if lib == "weasyprint":
        from weasyprint import HTML

        def tbl(rows):
            cells = ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                     for r in rows]
            return f"<table>{''.join(cells)}</table>"
        doc = (f"<html><head><style>@page {{ size: A4 }} body {{ font-size: 8pt }}</style>"
               f"</head><body><h2>{SITE.name}</h2>{tbl([head_r, *res])}"
               f"{tbl([head_u, *users])}<div style='page-break-before: always'>"
               f"{tbl([head_j, *jobs])}</div></body></html>")
        return HTML(string=doc).write_pdf()
    raise SystemExit(f"unknown library {lib!r}: reportlab, fpdf2 or weasyprint")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.invoice_pdf")
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", help="write the PDF here")
    parser.add_argument("--compare", metavar="LIB", help="reportlab, fpdf2 or weasyprint")
    args = parser.parse_args(argv)
    lines = synthetic_lines(args.jobs)
    if args.compare:
        best, median, pdf = _times(lambda: compare(args.compare, lines), args.repeat)
        label = f"{args.compare} (its own table API)"
    else:
        from collector.finance.invoice_pdf import render_invoice_pdf

        b_best, b_median, invoices = _times(
            lambda: build_invoices(lines, account="physics", period="2026-11", site=SITE,
                                   issued=date(2026, 12, 5), period_closed=True, scale=2,
                                   tz=ZoneInfo("UTC")), args.repeat)
        print(f"build_invoices: {len(lines)} lines, {args.jobs} jobs: best {b_best * 1000:.1f} "
              f"ms, median {b_median * 1000:.1f} ms")
        (invoice,) = invoices  # type: ignore[misc]
        best, median, pdf = _times(lambda: render_invoice_pdf(invoice), args.repeat)
        label = "render_invoice_pdf"
    assert isinstance(pdf, bytes)
    pages = _pages(pdf) or "? (compressed page tree)"
    print(f"{label}: {args.jobs} jobs: best {best * 1000:.0f} ms, median {median * 1000:.0f} ms, "
          f"{pages} pages, {len(pdf):,} bytes")
    if args.out:
        with open(args.out, "wb") as f:
            f.write(pdf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
