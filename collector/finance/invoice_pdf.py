"""The PDF invoice: a billing.invoice.Invoice laid out with ReportLab, returned as bytes.

Design notes: docs/design/daemon.md.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import reportlab
from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas as pdfcanvas
from reportlab.platypus import (
    Image,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from billing.invoice import Invoice, amount_text

FONT, FONT_BOLD = "HPCB-Vera", "HPCB-Vera-Bold"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LOGO_MAX_W, LOGO_MAX_H = 50 * mm, 20 * mm
MARGIN = 18 * mm
_GREY = colors.Color(0.35, 0.35, 0.35)
_RULE = colors.Color(0.75, 0.75, 0.75)
_SHADE = colors.Color(0.94, 0.95, 0.97)


class InvoiceRenderError(ValueError):
    """An invoice that cannot be rendered as given (e.g. a logo that is not a PNG)."""


@lru_cache(maxsize=1)
def _fonts() -> frozenset[int]:
    """Register Vera (from ReportLab's own fonts directory) once; the code points the
    regular face has glyphs for."""
    fonts = Path(reportlab.__file__).parent / "fonts"
    regular = TTFont(FONT, str(fonts / "Vera.ttf"))
    pdfmetrics.registerFont(regular)
    pdfmetrics.registerFont(TTFont(FONT_BOLD, str(fonts / "VeraBd.ttf")))
    return frozenset(regular.face.charToGlyph)


def _text(value: object) -> str:
    """Text the font can print: characters without a glyph become "?"."""
    glyphs = _fonts()
    text = "" if value is None else str(value)
    return "".join(c if ord(c) in glyphs or c == "\n" else "?" for c in text)


def _para(value: object, style: ParagraphStyle) -> Paragraph:
    return Paragraph(escape(_text(value)).replace("\n", "<br/>"), style)


def _styles() -> dict[str, ParagraphStyle]:
    _fonts()
    base = ParagraphStyle("base", fontName=FONT, fontSize=9, leading=11.5)
    return {
        "base": base,
        "cell": ParagraphStyle("cell", parent=base, fontSize=8, leading=9.6),
        "small": ParagraphStyle("small", parent=base, fontSize=8, leading=10, textColor=_GREY),
        "site": ParagraphStyle("site", parent=base, fontName=FONT_BOLD, fontSize=14, leading=17),
        "title": ParagraphStyle("title", parent=base, fontName=FONT_BOLD, fontSize=18,
                                leading=22, alignment=TA_RIGHT),
        "h2": ParagraphStyle("h2", parent=base, fontName=FONT_BOLD, fontSize=11, leading=14,
                             spaceBefore=8, spaceAfter=4),
        "warn": ParagraphStyle("warn", parent=base, fontName=FONT_BOLD, textColor=colors.darkred,
                               alignment=TA_RIGHT),
    }


def _logo(png: bytes | None) -> Image | None:
    if png is None:
        return None
    if not png.startswith(PNG_SIGNATURE):
        raise InvoiceRenderError("the invoice logo must be a PNG file (it does not start with "
                                 "the PNG signature)")
    try:
        width, height = ImageReader(io.BytesIO(png)).getSize()
    except Exception as exc:  # noqa: BLE001 - ReportLab/Pillow raise many types for a bad image
        raise InvoiceRenderError(f"the invoice logo is not a readable PNG: {exc}") from None
    if width <= 0 or height <= 0:
        raise InvoiceRenderError("the invoice logo has no pixels")
    scale = min(LOGO_MAX_W / width, LOGO_MAX_H / height)
    return Image(io.BytesIO(png), width=width * scale, height=height * scale, hAlign="LEFT")


UNITS = {"core_hour": "core-h", "gib_hour": "GiB-h", "gpu_hour": "GPU-h", "node_hour": "node-h",
         "billing_unit_hour": "unit-h", "kwh": "kWh"}
_PAD = 12            # a table cell's left + right padding, in points


def _num(value: Decimal) -> str:
    """A quantity or rate: exact, at least 2 places, thousands separated."""
    return amount_text(value)


def _cell(value: str, width: float, style: ParagraphStyle, size: float = 8.5) -> Any:
    """Plain text when it fits the column at ``size`` points, else a Paragraph (in
    ``style``) that wraps it."""
    if all(pdfmetrics.stringWidth(part, FONT, size) <= width - _PAD
           for part in value.split("\n")):
        return value
    return _para(value, style)


def _table(rows: list[list[Any]], widths: Sequence[float], *, right_from: int,
           total_rows: int = 0, zebra: bool = False, size: float = 8.5) -> Table:
    table = Table(rows, colWidths=list(widths), repeatRows=1)
    style: list[tuple[Any, ...]] = [
        ("FONT", (0, 0), (-1, -1), FONT, size),
        ("FONT", (0, 0), (-1, 0), FONT_BOLD, size),
        ("LINEBELOW", (0, 0), (-1, 0), 0.8, colors.black),
        ("ALIGN", (right_from, 0), (-1, -1), "RIGHT"),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
    ]
    body_end = len(rows) - 1 - total_rows
    if zebra:
        for i in range(2, body_end + 1, 2):
            style.append(("BACKGROUND", (0, i), (-1, i), _SHADE))
    else:
        style.append(("LINEBELOW", (0, 1), (-1, body_end), 0.3, _RULE))
    if total_rows:
        style.append(("LINEABOVE", (0, body_end + 1), (-1, body_end + 1), 0.8, colors.black))
        style.append(("FONT", (0, -1), (-1, -1), FONT_BOLD, size))
    table.setStyle(TableStyle(style))
    return table


def _utc(value: Any) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M")


def _story(inv: Invoice, logo: Image | None, styles: dict[str, ParagraphStyle],
           width: float) -> list[Any]:
    money = amount_text
    cur = inv.currency
    site = inv.site
    left: list[Any] = [logo] if logo is not None else []
    left.append(_para(site.name, styles["site"]))
    left.extend(_para(line, styles["base"]) for line in site.address)
    right: list[Any] = [_para("INVOICE", styles["title"])]
    if inv.provisional:
        right.append(_para(f"PROVISIONAL: period {inv.period} is still open, and its "
                           f"charges may change", styles["warn"]))
    header = Table([[left, right]], colWidths=[width * 0.55, width * 0.45])
    header.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"),
                                ("LEFTPADDING", (0, 0), (-1, -1), 0)]))
    account_width = width * 0.35
    info = Table([
        ["Invoice number", _text(inv.number), "Account",
         _cell(_text(inv.account), account_width, styles["cell"])],
        ["Issued", inv.issued.isoformat(), "Period",
         (f"{inv.period} ({inv.period_first_day.isoformat()} to "
          f"{inv.period_last_day.isoformat()})")],
        ["Currency", cur, "Jobs, lines", f"{len(inv.jobs)} jobs, {inv.lines} charge lines"],
        ["Content digest", f"sha256 {inv.content_digest}", "", ""],
    ], colWidths=[width * 0.17, width * 0.33, width * 0.15, account_width])
    info.setStyle(TableStyle([
        ("FONT", (0, 0), (-1, -1), FONT, 8.5), ("FONT", (0, 0), (0, -1), FONT_BOLD, 8.5),
        ("FONT", (2, 0), (2, -1), FONT_BOLD, 8.5), ("FONT", (1, 3), (1, 3), FONT, 7.5),
        ("SPAN", (1, 3), (3, 3)), ("BOX", (0, 0), (-1, -1), 0.5, _RULE),
        ("BACKGROUND", (0, 0), (-1, -1), _SHADE), ("VALIGN", (0, 0), (-1, -1), "TOP")]))

    rows: list[list[Any]] = [["Resource", "Quantity", "Unit", f"Rate ({cur})",
                              f"Amount ({cur})"]]
    for r in inv.resources:
        rows.append([_cell(_text(r.label), width * 0.34, styles["cell"]), _num(r.quantity),
                     UNITS.get(r.unit, r.unit),
                     _num(r.rate) if r.rate is not None else "-" if r.corrects else "several",
                     money(r.amount)])
    totals = 1
    rows.append(["Subtotal", "", "", "", money(inv.subtotal)])
    if inv.tax is not None and site.tax_rate is not None:
        percent = format((site.tax_rate * 100).normalize(), "f")
        rows.append([f"{_text(site.tax_label)} {percent} %", "", "", "", money(inv.tax)])
        totals += 1
    rows.append([f"Total ({cur})", "", "", "", money(inv.total)])
    totals += 1
    resources = _table(rows, [width * f for f in (0.34, 0.2, 0.14, 0.14, 0.18)],
                       right_from=1, total_rows=totals)

    rows = [["User", "Jobs", f"Amount ({cur})"]]
    for u in inv.users:
        rows.append([_cell("(no user)" if u.user is None else _text(u.user), width * 0.5,
                           styles["cell"]), str(u.jobs), money(u.amount)])
    rows.append(["Subtotal", str(len(inv.jobs)), money(inv.subtotal)])
    users = _table(rows, [width * f for f in (0.5, 0.2, 0.3)], right_from=1, total_rows=1)

    story: list[Any] = [header, Spacer(1, 6 * mm), info, Spacer(1, 4 * mm),
                        _para("Charges by resource", styles["h2"]), resources,
                        _para("Charges by user", styles["h2"]), users]
    if site.footer:
        story += [Spacer(1, 6 * mm), _para(site.footer, styles["small"])]

    rows = [["Job", "User", "Partition", "Run (UTC)", "Quantities", f"Amount ({cur})"]]
    widths = [width * f for f in (0.12, 0.13, 0.12, 0.18, 0.29, 0.16)]
    cell = styles["cell"]
    clusters = len({j.cluster for j in inv.jobs}) > 1
    for j in inv.jobs:
        quantities = "\n".join(f"{_text(res)} {_num(q)} {UNITS.get(unit, unit)}"
                               for res, q, unit in j.resources)
        if j.corrections:
            quantities += "\ncorrection of " + ", ".join(j.corrections)
        job = f"{j.job_id}\n{j.cluster}" if clusters else j.job_id
        run = f"{_utc(j.start)}\n{_utc(j.end)}" if j.start or j.end else ""
        rows.append([_cell(_text(job), widths[0], cell, 8), _cell(_text(j.user or ""), widths[1],
                                                                cell, 8),
                     _cell(_text(j.partition or ""), widths[2], cell, 8), run,
                     _cell(quantities, widths[4], cell, 8), money(j.amount)])
    rows.append(["Total", "", "", "", f"{len(inv.jobs)} jobs", money(inv.subtotal)])
    appendix = _table(rows, widths, right_from=5, total_rows=1, zebra=True, size=8)
    story += [PageBreak(), _para(f"Appendix: jobs of account {inv.account} posted in "
                                 f"{inv.period}", styles["h2"]),
              appendix]
    return story


def _numbered_canvas(footer_left: str) -> type[pdfcanvas.Canvas]:
    class NumberedCanvas(pdfcanvas.Canvas):
        """Holds every page until the end, so each footer can say 'page N of M'."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._pages: list[dict[str, Any]] = []

        def showPage(self) -> None:
            self._pages.append(dict(self.__dict__))
            self._startPage()

        def save(self) -> None:
            total = len(self._pages)
            for state in self._pages:
                self.__dict__.update(state)
                self.setFont(FONT, 7.5)
                self.setFillColor(_GREY)
                self.drawString(MARGIN, 10 * mm, footer_left)
                self.drawRightString(A4[0] - MARGIN, 10 * mm,
                                     f"page {self._pageNumber} of {total}")
                super().showPage()
            super().save()
    return NumberedCanvas


def render_invoice_pdf(invoice: Invoice, *, logo_png: bytes | None = None) -> bytes:
    """The invoice as PDF bytes (A4). ``logo_png``: the site's logo, PNG bytes, scaled to
    fit 50 x 20 mm. InvoiceRenderError for a logo that is not a readable PNG."""
    styles = _styles()
    logo = _logo(logo_png)
    buffer = io.BytesIO()
    title = f"Invoice {invoice.number}"
    doc = SimpleDocTemplate(
        buffer, pagesize=A4, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=15 * mm,
        bottomMargin=18 * mm, title=title, author=invoice.site.name,
        subject=f"HPC charges of account {invoice.account}, period {invoice.period}",
        creator="hpc-billing", invariant=1)
    width = A4[0] - 2 * MARGIN
    footer = _text(f"{invoice.site.name} - invoice {invoice.number} - account "
                   f"{invoice.account}, period {invoice.period}")
    doc.build(_story(invoice, logo, styles, width), canvasmaker=_numbered_canvas(footer))
    return buffer.getvalue()
