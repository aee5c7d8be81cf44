"""COPY text format: escaping values and streaming lines, for the bulk writers.

COPY ... FROM STDIN (FORMAT text) reads tab-separated lines in which a backslash, tab,
newline and carriage return inside a value are escaped and NULL is ``\\N`` (PostgreSQL
docs, COPY, "File Formats"). Text columns cannot hold NUL at all.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from decimal import Decimal

from collector.store.errors import ChargeValueError


def escape(value: str) -> str:
    """Escape one text value for COPY text format; NUL becomes U+FFFD."""
    if ("\\" in value or "\t" in value or "\n" in value or "\r" in value
            or "\x00" in value):
        value = (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
                 .replace("\r", "\\r").replace("\x00", "\ufffd"))
    return value


class LinesReader(io.TextIOBase):
    """A read()-able view over an iterable of lines, so COPY streams a batch in chunks
    without first joining it into one large string."""

    CHUNK = 1 << 16
    # For the bulk writers: psycopg2 calls read() once per chunk, and each call needs
    # the GIL back, so fewer, larger reads keep a COPY from waiting on another thread.
    BULK_CHUNK = 1 << 20

    def __init__(self, lines: Iterable[str]) -> None:
        super().__init__()
        self._lines = iter(lines)
        self._rest = ""

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> str:
        want = self.CHUNK if size is None or size < 0 else max(size, 1)
        parts = [self._rest] if self._rest else []
        have = len(self._rest)
        for line in self._lines:
            parts.append(line)
            have += len(line)
            if have >= want:
                break
        data = "".join(parts)
        if size is None or size < 0:
            # read() with no size must return everything that is left.
            rest = "".join(self._lines)
            self._rest = ""
            return data + rest
        self._rest = data[want:]
        return data[:want]


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


