"""Import accounting from a file: a ``sacct --parsable2`` export or a ``sacct --json`` dump.

This module owns reading such a file: detecting its format, checking its header before
any record is read, and streaming it through the same parsers the live sources use
(``ParsableParser`` for text, ``parse_sacct_json`` for JSON). It is not windowed: a file
import returns everything in the file and never moves a watermark.

Formats:
  * JSON when the first non-blank character is ``{`` (``sacct --json`` or a saved
    slurmrestd ``/slurmdb/v0.0.38/jobs`` answer). The whole document is loaded (see
    jsonparse for the memory cost).
  * Otherwise ``--parsable2`` text WITH its header line (so exported without
    ``--noheader``). The delimiter is ``|``, or ``\\x1f`` if the header contains it. Columns
    are picked by header name in any order; unknown ones are ignored and listed in
    ``stats.extra["ignored_columns"]``. Naive times are read in the ``tz`` given (sacct
    prints the exporting machine's local time); epoch times (``SLURM_TIME_FORMAT=%s``)
    need none. The text is streamed line by line, never read whole.

A file is refused with SourceError (nothing is yielded) when it is empty, when its first
line is not a header, when a required column is missing, or when it has no Cluster column
and no cluster was given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import tzinfo

from billing.records import FetchStats, QuarantinedRecord, Window
from collector.slurm.fields import REQUIRED_FIELDS
from collector.slurm.jsonparse import (
    check_jobs_document,
    document_info,
    parse_sacct_json,
)
from collector.slurm.parse import SACCT_DELIMITER, ParsableParser, UnchangedLookup
from collector.slurm.source import Item, SourceError

_KNOWN_HEADER_HINT = frozenset(name.lower() for name in REQUIRED_FIELDS)


def _looks_like_header(cells: list[str]) -> bool:
    """sacct header cells are field names: letters/digits only, never values like ``2``,
    ``2026-11-22T12:45:42`` or ``billing=1,cpu=1``."""
    if not any(cell.strip().lower() in _KNOWN_HEADER_HINT for cell in cells):
        return False
    return all(cell.strip().isalnum() and not cell.strip()[:1].isdigit()
               for cell in cells if cell.strip())


class FileSource:
    """Source over one exported file (see the module docstring for the formats)."""

    windowed = False
    skips_unchanged = True   # fetch(..., unchanged=) is supported (parsable text only)

    def __init__(self, path: str | os.PathLike, *, tz: tzinfo, cluster: str | None) -> None:
        self.path = os.fspath(path)
        self.tz = tz
        self.cluster = cluster or None
        self.name = f"file:{os.path.basename(self.path)}"
        self._stats = FetchStats()

    @property
    def stats(self) -> FetchStats:
        return self._stats

    def fetch(self, window: Window | None = None, *,
              unchanged: UnchangedLookup | None = None) -> Iterator[Item]:
        """Yield every record of the file; ``window`` is ignored (windowed is False).
        ``unchanged``: skip jobs stored from exactly the same lines (parsable text only;
        see ParsableParser.parse_lines)."""
        try:
            handle = open(self.path, encoding="utf-8", errors="replace", newline="\n")
        except OSError as exc:
            raise SourceError(f"{self.name}: cannot open {self.path!r}: {exc.strerror}") from exc
        with handle:
            head = handle.read(4096)
            if not head.strip():
                raise SourceError(f"{self.name}: the file is empty")
            handle.seek(0)
            if head.lstrip()[:1] == "{":
                yield from self._json(handle)
            else:
                yield from self._text(handle, unchanged)

    # ------------------------------------------------------------------------- JSON

    def _json(self, handle) -> Iterator[Item]:
        try:
            doc = json.load(handle)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{self.name}: not valid JSON: {exc}") from exc
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if errors:
            raise SourceError(f"{self.name}: the JSON document reports errors: {errors!r}")
        try:
            check_jobs_document(doc)
        except ValueError as exc:
            raise SourceError(f"{self.name}: {exc}") from None
        info = document_info(doc)
        quarantined = 0
        try:
            for item in parse_sacct_json(doc, source=self.name, default_cluster=self.cluster):
                if type(item) is QuarantinedRecord:
                    quarantined += 1
                yield item
        finally:
            self._stats = FetchStats(lines=0, bytes=os.fstat(handle.fileno()).st_size,
                                     extra={"format": "json", "jobs": len(doc["jobs"]),
                                            "quarantined": quarantined,
                                            "data_version": info.version_name,
                                            "slurm_release": info.slurm_release})

    # ------------------------------------------------------------------------- text

    def _text(self, handle, unchanged: UnchangedLookup | None = None) -> Iterator[Item]:
        header_line = handle.readline()
        header = header_line.rstrip("\r\n")
        delimiter = SACCT_DELIMITER if SACCT_DELIMITER in header else "|"
        cells = header.split(delimiter)
        if not _looks_like_header(cells):
            raise SourceError(
                f"{self.name}: the first line is not a sacct header "
                f"({header[:80]!r}); this looks like a --noheader export. Export again "
                f"without --noheader/-n so the columns can be matched by name")
        columns = [cell.strip() for cell in cells]
        try:
            parser = ParsableParser(columns, delimiter=delimiter, source=self.name,
                                    tz=self.tz, default_cluster=self.cluster)
        except SourceError as exc:
            raise SourceError(f"{self.name}: {exc}") from exc
        if not parser.has_cluster_column and not self.cluster:
            raise SourceError(f"{self.name}: the file has no Cluster column; pass --cluster")

        counters = {"lines": 1, "chars": len(header_line)}
        self._stats = FetchStats(lines=1, bytes=len(header_line),
                                 extra={"format": "parsable", "delimiter": delimiter,
                                        "ignored_columns": list(parser.ignored_columns)})

        def lines() -> Iterator[str]:
            # newline="\n": only "\n" ends a line, so a "\r" inside a field stays data;
            # a CRLF export loses its "\r" here.
            for line in handle:
                counters["lines"] += 1
                counters["chars"] += len(line)
                if line.endswith("\n"):
                    line = line[:-1]
                    if line.endswith("\r"):
                        line = line[:-1]
                yield line

        quarantined = 0
        try:
            for item in parser.parse_lines(lines(), first_line_no=2, unchanged=unchanged):
                if type(item) is QuarantinedRecord:
                    quarantined += 1
                yield item
        finally:
            self._stats = FetchStats(
                lines=counters["lines"], bytes=counters["chars"],
                extra={"format": "parsable", "delimiter": delimiter,
                       "ignored_columns": list(parser.ignored_columns),
                       "quarantined": quarantined})

