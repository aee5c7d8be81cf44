"""COPY text format: escaping values and streaming lines, for the bulk writers.

COPY ... FROM STDIN (FORMAT text) reads tab-separated lines in which a backslash, tab,
newline and carriage return inside a value are escaped and NULL is ``\\N`` (PostgreSQL
docs, COPY, "File Formats"). Text columns cannot hold NUL at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import psycopg

from collector.store.errors import ChargeValueError


def escape(value: str) -> str:
    """Escape one text value for COPY text format; NUL becomes U+FFFD."""
    if ("\\" in value or "\t" in value or "\n" in value or "\r" in value
            or "\x00" in value):
        value = (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
                 .replace("\r", "\\r").replace("\x00", "\ufffd"))
    return value


def copy_lines(cur: psycopg.Cursor[Any], statement: str, lines: Iterable[str],
               chunk_chars: int = 1 << 20) -> int:
    """Run ``COPY ... FROM STDIN (FORMAT text)`` on a psycopg 3 cursor, streaming
    ``lines`` in chunks of about ``chunk_chars`` (few, large writes: each one needs the
    GIL back); returns the rows COPY reports."""
    with cur.copy(statement) as copy:
        parts: list[str] = []
        have = 0
        for line in lines:
            parts.append(line)
            have += len(line)
            if have >= chunk_chars:
                copy.write("".join(parts))
                parts, have = [], 0
        if parts:
            copy.write("".join(parts))
    return cur.rowcount


# Column scales of charge_lines (models.Charge) and budgets: (integer digits, decimals).
AMOUNT = (14, 6)        # numeric(20, 6)
RATE = (11, 9)          # numeric(20, 9)
QUANTITY = (18, 6)      # numeric(24, 6)


def decimal_text(value: object, what: str, scale: tuple[int, int], exact: bool) -> str:
    """``value`` as plain decimal text for COPY, or ``ChargeValueError``.

    With ``exact``, the value must have at most the column's decimals (money is never
    rounded here; trailing zeros are fine); without, the column rounds (quantities).
    Works on the formatted text: one ``format`` per value, no Decimal arithmetic.
    """
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int) and not isinstance(value, bool):
        number = Decimal(value)
    else:
        # float would carry binary noise into money; bool is an int subclass.
        raise ChargeValueError(f"{what} must be a Decimal, got {value!r}")
    if not number.is_finite():
        raise ChargeValueError(f"{what} must be finite, got {number}")
    digits, places = scale
    out = format(number, "f")
    dot = out.find(".")
    if dot < 0:
        dot = len(out)
    elif exact and len(out) - dot - 1 > places:
        if out[dot + 1 + places:].strip("0"):
            raise ChargeValueError(
                f"{what} {number} has more than {places} decimals; round it before "
                "storing (the store never rounds money)")
        out = out[:dot + 1 + places]
    if dot - (out[0] == "-") > digits:
        raise ChargeValueError(f"{what} {number} does not fit numeric("
                               f"{digits + places}, {places})")
    return out


def copy_text(value: str) -> str:
    """COPY text-format escaping; NUL (which text cannot hold) becomes U+FFFD."""
    if not isinstance(value, str):
        raise ChargeValueError(f"expected text, got {value!r}")
    return escape(value)


