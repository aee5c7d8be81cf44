"""A set of 64-bit hashes in about 8 bytes a key (a Python set of them takes ~60).

The readers remember every job key and skipped digest met in one input (``ParsableParser
.emitted_keys``, ``.skipped_digests``) and the pipeline every job key it counted: 250,000
keys in a 1M-line poll, 10M in a year's backfill. Recent additions live in a Python set;
every ``min_merge`` of them (65,536) become a sorted numpy run, and runs of similar size
are merged like a binary counter, so an input of n keys costs O(n log n) in all, holds
about log2(n / 65,536) runs, and a lookup is a set probe plus a binary search per run.
(Merging everything into one array whenever the recent set grew by an eighth cost
O(n^2 / 8) and, with the Python ints waiting, ~60 bytes a key at 10M keys.)
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

_MIN_MERGE = 1 << 16


class KeySet:
    """``in``, ``add``, ``update``, ``discard`` and ``contains_many`` of Python ``int``
    hashes (signed 64-bit, as ``hash()`` returns)."""

    def __init__(self, *, min_merge: int = _MIN_MERGE) -> None:
        self._min_merge = min_merge
        self._runs: list[np.ndarray[tuple[int], np.dtype[np.int64]]] = []  # sorted, largest first
        self._recent: set[int] = set()
        self._gone: set[int] = set()        # discarded keys that are in a run

    def __contains__(self, key: object) -> bool:
        if key in self._recent:
            return True
        return isinstance(key, int) and key not in self._gone and self._in_runs(key)

    def _in_runs(self, key: int) -> bool:
        for run in self._runs:
            i = int(run.searchsorted(key))
            if i < len(run) and int(run[i]) == key:
                return True
        return False

    def contains_many(self, keys: list[int]) -> list[bool]:
        """``[k in self for k in keys]``, each run searched once for all of them."""
        if not keys:
            return []
        recent = self._recent
        if not self._runs:
            return [k in recent for k in keys]
        arr = np.array(keys, dtype=np.int64)
        hit = np.zeros(len(keys), dtype=bool)
        for run in self._runs:
            pos = np.minimum(run.searchsorted(arr), len(run) - 1)
            hit |= run[pos] == arr
        gone = self._gone
        return [k in recent or (h and k not in gone)
                for h, k in zip(hit.tolist(), keys, strict=True)]

    def add(self, key: int) -> None:
        self._gone.discard(key)
        self._recent.add(key)
        if len(self._recent) >= self._min_merge:
            self._flush()

    def update(self, keys: Iterable[int]) -> None:
        if self._gone:
            keys = list(keys)
            self._gone.difference_update(keys)
        self._recent.update(keys)
        if len(self._recent) >= self._min_merge:
            self._flush()

    def discard(self, key: int) -> None:
        self._recent.discard(key)
        if key not in self._gone and self._in_runs(key):
            self._gone.add(key)

    def _flush(self) -> None:
        run = np.fromiter(self._recent, dtype=np.int64, count=len(self._recent))
        run.sort()
        self._recent = set()
        runs = self._runs
        while runs and len(runs[-1]) <= 2 * len(run):
            run = _merge(runs.pop(), run)
        runs.append(run)
        if self._gone and len(runs) == 1:
            # tombstones are dropped when everything has been merged into one run
            gone = np.fromiter(self._gone, dtype=np.int64, count=len(self._gone))
            runs[0] = runs[0][~np.isin(runs[0], gone)]
            self._gone.clear()


def _merge(a: np.ndarray[tuple[int], np.dtype[np.int64]],
           b: np.ndarray[tuple[int], np.dtype[np.int64]]
           ) -> np.ndarray[tuple[int], np.dtype[np.int64]]:
    """Two sorted runs as one, each key once (a key may sit in two runs: added again
    after a discard). A stable sort of int64 is a radix sort; np.unique hashes (10 x)."""
    out = np.concatenate([a, b])
    out.sort(kind="stable")
    if len(out) > 1:
        keep = np.empty(len(out), dtype=bool)
        keep[0] = True
        np.not_equal(out[1:], out[:-1], out=keep[1:])
        out = out[keep]
    return out
