"""collector.store.bulk's numpy encoder gives, byte for byte, what the Arrow encoder it
replaced gave (tests/oracle/bulk_arrow.py), on random frames of every kind: NULLs, empty
strings, non-ASCII text, empty frames, all-NULL columns, numerics up to NUMERIC_MAX, the
values each kind refuses; with the text placement, the padding and the row blocks each
forced both ways. The database round trip is tests/integration/test_bulk.py.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from unittest import mock

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.store import bulk
from collector.store.bulk import NUMERIC_MAX, BulkValueError, encode_rows
from tests.oracle import bulk_arrow

INT_DTYPES = {"int8": [pl.Int64, pl.Int32, pl.UInt64, pl.UInt32, pl.Int128],
              "int4": [pl.Int32, pl.Int64, pl.Int16, pl.UInt32],
              "int2": [pl.Int16, pl.Int64, pl.Int8, pl.UInt16]}
RANGES = {"int8": 63, "int4": 31, "int2": 15}
TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12)
LONG_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), min_size=30,
                    max_size=120)


def _nullable(values: st.SearchStrategy, n: int, null_share: float) -> st.SearchStrategy:
    cell = st.one_of(st.none(), values) if 0 < null_share < 1 else (
        st.none() if null_share >= 1 else values)
    return st.lists(cell, min_size=n, max_size=n)


@st.composite
def column(draw, kind: str, n: int, bad: bool) -> pl.Series:
    null_share = draw(st.sampled_from([0.0, 0.5, 1.0]))
    if kind in INT_DTYPES:
        dtype = draw(st.sampled_from(INT_DTYPES[kind]))
        info_lo = 0 if dtype in (pl.UInt16, pl.UInt32, pl.UInt64) else -(2 ** 127)
        bits = RANGES[kind] + (1 if bad else 0)
        lo = max(info_lo, -(2 ** bits))
        hi = 2 ** bits - 1
        hi = min(hi, {pl.Int8: 127, pl.Int16: 2**15 - 1, pl.Int32: 2**31 - 1, pl.Int64: 2**63 - 1,
                      pl.UInt16: 2**16 - 1, pl.UInt32: 2**32 - 1, pl.UInt64: 2**64 - 1,
                      pl.Int128: 2**127 - 1}[dtype])
        lo = max(lo, {pl.Int8: -128, pl.Int16: -(2**15), pl.Int32: -(2**31),
                      pl.Int64: -(2**63), pl.Int128: -(2**127)}.get(dtype, 0))
        edge = st.sampled_from([lo, hi, 0, -1 if lo < 0 else 1])
        values = draw(_nullable(st.one_of(edge, st.integers(lo, hi)), n, null_share))
        return pl.Series(values, dtype=dtype)
    if kind == "bool":
        return pl.Series(draw(_nullable(st.booleans(), n, null_share)), dtype=pl.Boolean)
    if kind == "ts":
        unit = draw(st.sampled_from(["us", "ms", "ns"]))
        values = draw(_nullable(st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1),
                                             timezones=st.just(UTC)), n, null_share))
        s = pl.Series(values, dtype=pl.Datetime(unit, "UTC"))
        if bad:
            return s.dt.replace_time_zone(None)
        zone = draw(st.sampled_from(["UTC", "Europe/Berlin", "America/St_Johns"]))
        return s.dt.convert_time_zone(zone)
    if kind == "date":
        return pl.Series(draw(_nullable(st.dates(date(1, 1, 1), date(9999, 12, 31)), n,
                                        null_share)), dtype=pl.Date)
    if kind == "numeric":
        dtype = draw(st.sampled_from([pl.Int128, pl.UInt64, pl.Int64]))
        hi = {pl.Int128: NUMERIC_MAX, pl.UInt64: 2**64 - 1, pl.Int64: 2**63 - 1}[dtype]
        lo = -5 if bad and dtype != pl.UInt64 else 0
        edge = st.sampled_from([0, 1, 9999, 10_000, 10**16, 2**63 - 1, 2**64 - 1, 10**20,
                                NUMERIC_MAX])
        values = draw(_nullable(st.one_of(edge.filter(lambda v: v <= hi), st.integers(lo, hi)),
                                n, null_share))
        return pl.Series(values, dtype=dtype)
    if kind == "text":
        texts = st.one_of(TEXT, st.just(""), st.just("ünïcödé ✓"), LONG_TEXT)
        values = draw(_nullable(texts, n, null_share))
        return pl.Series(values, dtype=pl.String)
    assert kind == "bytea"
    blobs = st.one_of(st.binary(max_size=12), st.just(b""), st.binary(min_size=16, max_size=16),
                      st.binary(min_size=40, max_size=100))
    width = draw(st.sampled_from([None, 16]))  # digests: every value one length
    values = draw(_nullable(st.binary(min_size=16, max_size=16) if width else blobs, n,
                            null_share))
    return pl.Series(values, dtype=pl.Binary)


KINDS = ["int8", "int4", "int2", "bool", "ts", "date", "numeric", "text", "bytea"]


@st.composite
def frames(draw):
    n = draw(st.sampled_from([0, 1, 2, 3, 7, 20, 41]))
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=9))
    bad_at = draw(st.one_of(st.none(), st.integers(0, len(kinds) - 1)))
    data, columns = {}, []
    for i, kind in enumerate(kinds):
        bad = bad_at == i and kind in (*RANGES, "ts", "numeric")
        name = f"c{i}_{kind}"
        data[name] = draw(column(kind, n, bad)).alias(name)
        columns.append((name, kind))
    return pl.DataFrame(data), columns


def _outcome(encode, df, columns):
    try:
        return "bytes", bytes(encode(df, columns))
    except BulkValueError as exc:
        return "refused", str(exc)


# Each of the numpy encoder's paths forced: text/bytea placed after the records (pad
# factor 0) or always padded; records built a few rows at a time.
PATHS = {"default": {"_PAD_FACTOR": bulk._PAD_FACTOR}, "spill": {"_PAD_FACTOR": 0}, "pad": {"_PAD_FACTOR": 10**9},
         "small blocks": {"_BLOCK_BYTES": 64}}


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=frames())
def test_numpy_encoder_equals_the_arrow_encoder(path, case):
    df, columns = case
    with mock.patch.multiple(bulk, **PATHS[path]):
        got = _outcome(encode_rows, df, columns)
    assert got == _outcome(bulk_arrow.encode_rows, df, columns)


def test_the_ingest_frames_kinds_in_one_frame_with_every_case():
    """One frame with every kind next to each other, all three text placements in one
    row set (one length, padded, placed after) and an all-NULL and an all-empty column."""
    n = 6
    df = pl.DataFrame({
        "a": pl.Series([1, None, 3, None, 5, 6], dtype=pl.Int64),
        "t1": ["x" * 40, "", None, "ü", "ab", "c"],           # uneven: placed after
        "t2": ["abc", "def", None, "ghi", "jkl", "mno"],     # one length
        "t3": ["a", "bb", "", None, "ccc", "d"],             # padded
        "n": pl.Series([NUMERIC_MAX, None, 0, 2**64, 2**64 - 1, 10**32], dtype=pl.Int128),
        "e": pl.Series([""] * n),
        "z": pl.Series([None] * n, dtype=pl.Int32),
        "b": pl.Series([b"\x00", None, b"", b"\xff" * 3, b"q", b"rs"]),
    })
    columns = [("a", "int8"), ("t1", "text"), ("t2", "text"), ("t3", "text"),
               ("n", "numeric"), ("e", "text"), ("z", "int4"), ("b", "bytea")]
    assert bytes(encode_rows(df, columns)) == bytes(bulk_arrow.encode_rows(df, columns))


def test_nothing_in_the_program_imports_pyarrow():
    import subprocess
    import sys
    code = ("import collector.pipeline, collector.store.ingest, collector.polling,"
            " collector.runtime, sys; print('pyarrow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
