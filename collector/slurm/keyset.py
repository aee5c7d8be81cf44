"""A set of 64-bit hashes in about 8 bytes a key (a Python set of them takes ~60).

The readers remember every job key and skipped digest met in one input (``ParsableParser
.emitted_keys``, ``.skipped_digests``): 250,000 keys in a 1M-line poll, 10M in a year's
backfill. Recent additions live in a Python set; once it passes an eighth of the keys
already merged (at least 65,536), it is merged into one sorted numpy array, so merging
costs O(n log n) over a whole input and a lookup is a set probe plus a binary search.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

_MIN_MERGE = 1 << 16


class KeySet:
    """``in``, ``add``, ``update`` and ``discard`` of Python ``int`` hashes (signed
    64-bit, as ``hash()`` returns)."""

    def __init__(self, *, min_merge: int = _MIN_MERGE) -> None:
        self._min_merge = min_merge
        self._merged = np.empty(0, dtype=np.int64)
        self._recent: set[int] = set()
        self._gone: set[int] = set()        # discarded keys that are in _merged

    def __contains__(self, key: object) -> bool:
        if key in self._recent:
            return True
        return isinstance(key, int) and key not in self._gone and self._in_merged(key)

    def _in_merged(self, key: int) -> bool:
        if not len(self._merged):
            return False
        i = int(self._merged.searchsorted(key))
        return i < len(self._merged) and int(self._merged[i]) == key

    def contains_many(self, keys: list[int]) -> list[bool]:
        """``[k in self for k in keys]``, the merged part searched at once."""
        if not keys:
            return []
        found = [k in self._recent for k in keys]
        merged = self._merged
        if len(merged):
            arr = np.array(keys, dtype=np.int64)
            pos = np.minimum(merged.searchsorted(arr), len(merged) - 1)
            hit = (merged[pos] == arr).tolist()
            gone = self._gone
            found = [f or (h and k not in gone)
                     for f, h, k in zip(found, hit, keys, strict=True)]
        return found

    def add(self, key: int) -> None:
        self._gone.discard(key)
        self._recent.add(key)
        if len(self._recent) >= self._threshold():
            self._merge()

    def update(self, keys: Iterable[int]) -> None:
        if self._gone:
            keys = list(keys)
            self._gone.difference_update(keys)
        self._recent.update(keys)
        if len(self._recent) >= self._threshold():
            self._merge()

    def discard(self, key: int) -> None:
        self._recent.discard(key)
        if key not in self._gone and self._in_merged(key):
            self._gone.add(key)

    def _threshold(self) -> int:
        return max(self._min_merge, len(self._merged) >> 3)

    def _merge(self) -> None:
        fresh = np.fromiter(self._recent, dtype=np.int64, count=len(self._recent))
        merged = self._merged
        if self._gone:
            merged = merged[~np.isin(merged, np.fromiter(self._gone, dtype=np.int64,
                                                           count=len(self._gone)))]
            self._gone.clear()
        merged = np.unique(np.concatenate([merged, fresh]))
        self._merged = merged
        self._recent = set()
