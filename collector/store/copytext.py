"""COPY text format helpers shared by the bulk writers (jobs, charge lines).

PostgreSQL's COPY ... FROM STDIN (FORMAT text) reads tab-separated lines in which a
backslash, tab, newline and carriage return inside a value must be escaped and NULL is
``\\N`` (PostgreSQL docs, COPY, "File Formats"). Text columns cannot hold NUL at all.
"""

from __future__ import annotations

import io
from collections.abc import Iterable


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
