"""Pausing Python's cyclic garbage collector while a large, acyclic result is built.

A report of 12,000 groups builds ~150,000 container objects (rows, dicts, tuples) that
all survive until the response is sent. Each 700 new containers start a young-generation
collection, and every few hundred thousand a full one that walks the whole heap (the
daemon's SQLAlchemy, Flask, polars...): at 10M jobs that was 100-150 ms of a 350 ms
account x user report (docs/design/engine.md §18). Nothing such a build makes is cyclic,
so reference counting frees all of it; pausing the cyclic collector for its few hundred
milliseconds changes no result, only when cycles made elsewhere meanwhile are found.

The pause is process-wide (``gc.disable``), so it counts its holders: concurrent web
threads nest, and the collector is enabled again when the last one leaves, and only if it
was enabled when the first one came.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _Pause:
    """Who holds the pause, and whether the collector ran before the first one came."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holders = 0
        self.was_enabled = False

    def enter(self) -> None:
        with self.lock:
            if self.holders == 0:
                self.was_enabled = gc.isenabled()
                gc.disable()
            self.holders += 1

    def leave(self) -> None:
        with self.lock:
            self.holders -= 1
            if self.holders == 0 and self.was_enabled:
                gc.enable()


_PAUSE = _Pause()


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Disable the cyclic collector for the block (reference counting goes on)."""
    _PAUSE.enter()
    try:
        yield
    finally:
        _PAUSE.leave()
