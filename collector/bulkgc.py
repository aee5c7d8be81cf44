"""Fewer cyclic-GC passes while much acyclic data is made: a poll's window streaming, or
a large report being built (the same settings; they are process-wide).

A window allocates millions of short-lived, acyclic objects (fields, records, lines);
with the default thresholds the collector spent about 15% of a 1,000,000-line import in
the cyclic GC, mostly re-traversing long-lived objects in full collections. A report of
12,000 groups builds ~150,000 container objects that live until its response is sent:
at 10M jobs the collections they set off were 100-150 ms of a 350 ms account x user
report (docs/design/engine.md §18).

For the duration, the objects alive before it are frozen (never traversed) and young
collections run every BULK_GC_THRESHOLD allocations; both are undone when the last
user (a poll, a web thread) leaves. Reference counting still frees everything as usual.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Allocations between young-generation collections while in use (default 700).
BULK_GC_THRESHOLD = 100_000

_GC_LOCK = threading.Lock()
_GC_USERS = [0]              # users now (polls, reports): the settings are process-wide
_GC_SAVED: list[int] = []    # the thresholds to restore after the last one


@contextmanager
def bulk_gc() -> Iterator[None]:
    """The bulk settings for the block: the heap frozen, young collections rarer."""
    with _GC_LOCK:
        _GC_USERS[0] += 1
        if _GC_USERS[0] == 1:
            _GC_SAVED[:] = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(max(_GC_SAVED[0], BULK_GC_THRESHOLD), *_GC_SAVED[1:])
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_USERS[0] -= 1
            if _GC_USERS[0] == 0:
                gc.set_threshold(*_GC_SAVED)
                gc.unfreeze()
