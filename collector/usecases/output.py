"""Where a document goes: standard output, or a file that appears whole or not at all.

``open_output`` yields a writer that also hashes what passes through it (the SHA-256 an
``export`` audit entry records). A file is written under a temporary name beside the
target and renamed over it when the block ends without an exception; on an exception
the temporary file is removed, so a failed or refused export never leaves an empty or
partial file behind.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

STDOUT = "-"


class HashingWriter:
    """A write-only stream that forwards to ``stream`` and hashes the bytes written
    (text is hashed as UTF-8, as the file holds it)."""

    def __init__(self, stream: IO[Any], *, binary: bool) -> None:
        self._stream = stream
        self._binary = binary
        self._sha = hashlib.sha256()
        self.bytes = 0

    def write(self, data: Any) -> int:
        raw = data if self._binary else data.encode("utf-8")
        self._sha.update(raw)
        self.bytes += len(raw)
        self._stream.write(data)
        return len(data)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


@contextmanager
def open_output(target: str | Path, *, binary: bool = False) -> Iterator[HashingWriter]:
    """A HashingWriter on standard output (``-``) or on a new file at ``target``."""
    if str(target) == STDOUT:
        stream: IO[Any] = sys.stdout.buffer if binary else sys.stdout
        yield HashingWriter(stream, binary=binary)
        stream.flush()
        return
    path = Path(target)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=directory)
    try:
        if binary:
            with os.fdopen(fd, "wb") as raw:
                yield HashingWriter(raw, binary=True)
        else:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as text:
                yield HashingWriter(text, binary=False)
        # mkstemp makes the file 0600; a document gets the usual mode (umask applies).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
