"""The run's met job keys (collector.pipeline._SeenKeys) against a Python set."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from collector.pipeline import _SeenKeys

batches = st.lists(st.lists(st.integers(0, 40), max_size=30), max_size=8)


@given(batches)
def test_met_before_is_what_a_set_says(chunks):
    seen = _SeenKeys()
    oracle: set[int] = set()
    for chunk in chunks:
        met = seen.add(np.array(chunk, dtype=np.uint64))
        expected = []
        for key in chunk:
            expected.append(key in oracle)
            oracle.add(key)
        assert met.tolist() == expected


def test_large_hashes_and_empty_batches():
    seen = _SeenKeys()
    big = np.array([2**64 - 1, 2**63, 0], dtype=np.uint64)
    assert seen.add(big).tolist() == [False, False, False]
    assert seen.add(np.array([], dtype=np.uint64)).tolist() == []
    assert seen.add(big[::-1].copy()).tolist() == [True, True, True]
