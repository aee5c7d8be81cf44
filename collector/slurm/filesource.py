"""Import accounting from a file: a ``sacct --parsable2`` export or a ``sacct --json`` dump.

Design notes: docs/design/slurm.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from datetime import tzinfo
from typing import TextIO

from billing.records import FetchStats, QuarantinedRecord, Window
from collector.slurm.columnar import Chunk, ColumnarReader, chunks_from_items
from collector.slurm.fields import REQUIRED_FIELDS
from collector.slurm.jsonparse import (
    check_jobs_document,
    document_info,
    parse_sacct_json,
)
from collector.slurm.parse import ParsableParser
from collector.slurm.source import Item, SourceError, UnchangedLookup

_BLOCK_CHARS = 1 << 20      # characters read at a time (lines are split per block)

log = logging.getLogger(__name__)

_KNOWN_HEADER_HINT = frozenset(name.lower() for name in REQUIRED_FIELDS)
# A sacct field name: a letter, then letters and digits (``JobIDRaw``, ``TRESUsageInTot``).
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_BOM = "\ufeff"


def split_header(header: str) -> tuple[list[str], str, bool] | None:
    """A sacct header line -> (column names, delimiter, trailing delimiter), or None
    when the line is not one.

    A header is field names separated by one delimiter, any string of characters that
    are not letters or digits (sacct's ``--delimiter`` takes any); ``--parsable`` ends
    it with one more. At least one name must be an identity column, so a data line (``2``,
    ``2026-11-22T12:45:42``, ``billing=1,cpu=1``) is never taken for a header.
    """
    names = _NAME.findall(header)
    if not names or not any(name.lower() in _KNOWN_HEADER_HINT for name in names):
        return None
    gaps = _NAME.split(header)          # len(names) + 1 pieces: before, between, after
    if gaps[0].strip(" "):
        return None
    between = gaps[1:-1]
    if not between:
        return (names, "|", False) if not gaps[-1].strip(" ") else None
    delimiter = between[0]
    if not delimiter or any(gap != delimiter for gap in between):
        return None
    trailing = gaps[-1]
    if trailing not in ("", delimiter):
        return None
    return names, delimiter, trailing == delimiter


class FileSource:
    """Source over one exported file (see the module docstring for the formats)."""

    windowed = False
    skips_unchanged = True   # fetch(..., unchanged=) is supported (parsable text only)

    def __init__(self, path: str | os.PathLike[str], *, tz: tzinfo, cluster: str | None) -> None:
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
        """Yield every record of the file, one at a time (the per-record path: the
        oracle of the tests; the pipeline reads ``fetch_chunks``); ``window`` is ignored
        (windowed is False). ``unchanged``: skip jobs stored from exactly the same lines
        (parsable text only; see ParsableParser.parse_lines)."""
        with self._open() as handle:
            if self._is_json(handle):
                yield from self._json(handle)
            else:
                parser, lines, first_line_no, finish = self._text_lines(handle)
                quarantined = 0
                try:
                    for item in parser.parse_lines(lines, first_line_no=first_line_no,
                                                   unchanged=unchanged):
                        if type(item) is QuarantinedRecord:
                            quarantined += 1
                        yield item
                finally:
                    finish(quarantined)

    def fetch_chunks(self, window: Window | None = None, *,
                     unchanged: UnchangedLookup | None = None) -> Iterator[Chunk]:
        """The file as chunks of rolled-up jobs (the engine's path): parsable text by
        the ColumnarReader, a JSON dump by its reader through the records->frame
        builder. ``stats`` as for ``fetch``."""
        with self._open() as handle:
            if self._is_json(handle):
                yield from chunks_from_items(self._json(handle), source=self.name)
                return
            parser, lines, first_line_no, finish = self._text_lines(handle)
            quarantined = 0
            try:
                for chunk in ColumnarReader(parser).chunks(
                        lines, first_line_no=first_line_no, unchanged=unchanged):
                    quarantined += len(chunk.quarantined)
                    yield chunk
            finally:
                finish(quarantined)

    def _is_json(self, handle: TextIO) -> bool:
        head = handle.read(4096)
        if not head.strip():
            raise SourceError(f"{self.name}: the file is empty")
        handle.seek(0)
        return head.lstrip()[:1] == "{"

    def _open(self) -> TextIO:
        try:
            # utf-8-sig: a byte-order mark (Windows tools write one) is not data.
            handle = open(self.path, encoding="utf-8-sig", errors="replace",  # noqa: SIM115
                          newline="\n")
        except OSError as exc:
            raise SourceError(f"{self.name}: cannot open {self.path!r}: {exc.strerror}") from exc
        return handle

    # ------------------------------------------------------------------------- JSON

    def _json(self, handle: TextIO) -> Iterator[Item]:
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

    def _text_lines(self, handle: TextIO) -> tuple[ParsableParser, Iterator[str], int,
                                                   Callable[[int], None]]:
        """The header read: (parser, the data lines without their newline, the first
        one's number, ``finish(quarantined)`` that sets the final stats)."""
        skipped = 0              # blank lines before the header
        chars = 0
        header_line = handle.readline()
        while header_line and not header_line.lstrip(_BOM).strip():
            skipped += 1
            chars += len(header_line)
            header_line = handle.readline()
        chars += len(header_line)
        header = header_line.rstrip("\r\n").lstrip(_BOM)
        found = split_header(header)
        if found is None:
            raise SourceError(
                f"{self.name}: the first line is not a sacct header (line {skipped + 1}: "
                f"{header[:80]!r}); this looks like a --noheader export. Export again "
                f"without --noheader/-n so the columns can be matched by name")
        columns, delimiter, trailing = found
        if trailing:
            columns = [*columns, ""]    # --parsable: every line ends with the delimiter
        try:
            parser = ParsableParser(columns, delimiter=delimiter, source=self.name,
                                    tz=self.tz, default_cluster=self.cluster)
        except SourceError as exc:
            raise SourceError(f"{self.name}: {exc}") from exc
        if not parser.has_cluster_column and not self.cluster:
            raise SourceError(f"{self.name}: the file has no Cluster column; pass --cluster")
        if parser.ignored_columns:
            log.info("%s: %d column(s) not used by hpc-billing, ignored: %s", self.name,
                     len(parser.ignored_columns), ", ".join(parser.ignored_columns))

        first_line_no = skipped + 2
        counters = {"lines": first_line_no - 1, "chars": chars}

        def extra(**more: object) -> dict[str, object]:
            return {"format": "parsable", "delimiter": delimiter,
                    "ignored_columns": list(parser.ignored_columns),
                    "unknown_states": dict(parser.unknown_states),
                    "fallbacks": parser.fallbacks,
                    "duplicates_skipped": parser.duplicates_skipped, **more}

        self._stats = FetchStats(lines=counters["lines"], bytes=chars, extra=extra())

        def lines() -> Iterator[str]:
            # newline="\n": only "\n" ends a line, so a "\r" inside a field stays data;
            # a CRLF export loses its "\r" here (a last line without "\n" is kept as it
            # is). Read in blocks: a Python step per line cost ~1 s per 1M lines.
            tail = ""
            while block := handle.read(_BLOCK_CHARS):
                counters["chars"] += len(block)
                parts = (tail + block).split("\n")
                tail = parts.pop()
                counters["lines"] += len(parts)
                yield from [p[:-1] if p.endswith("\r") else p for p in parts]
            if tail:
                counters["lines"] += 1
                yield tail

        def finish(quarantined: int) -> None:
            self._stats = FetchStats(lines=counters["lines"], bytes=counters["chars"],
                                     extra=extra(quarantined=quarantined))

        return parser, lines(), first_line_no, finish
