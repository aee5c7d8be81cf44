"""collector.slurm.keyset.KeySet against a Python set, through merges."""

from hypothesis import given, settings
from hypothesis import strategies as st

from collector.slurm.keyset import KeySet

keys = st.integers(-(2**63), 2**63 - 1) | st.integers(-20, 20)
ops = st.lists(st.tuples(st.sampled_from(["add", "discard", "update", "in"]),
                         st.lists(keys, min_size=1, max_size=6)), max_size=80)


@settings(max_examples=300)
@given(ops)
def test_behaves_as_a_set(program):
    got, want = KeySet(min_merge=4), set()
    for op, values in program:
        if op == "add":
            got.add(values[0])
            want.add(values[0])
        elif op == "discard":
            got.discard(values[0])
            want.discard(values[0])
        elif op == "update":
            got.update(iter(values))
            want.update(values)
        for v in values:
            assert (v in got) == (v in want)
        assert got.contains_many(values) == [v in want for v in values]
    for v in want:
        assert v in got


def test_a_million_keys_take_a_few_bytes_each():
    s = KeySet()
    s.update(hash(("cluster", str(i))) for i in range(1_000_000))
    assert hash(("cluster", "999999")) in s and hash(("cluster", "x")) not in s
    assert sum(r.nbytes for r in s._runs) + len(s._recent) * 64 < 20 * 1_000_000
