"""The Arrow binary COPY encoder that collector/store/bulk.py had before it was rewritten
with numpy alone (pyarrow cost the collector ~30 MiB of RSS at import): the oracle the
numpy encoder is compared with, byte for byte (tests/unit/test_bulk_encoder.py).

Copied unchanged but for the imports; the PostgreSQL constants are restated so that a
change in the production module cannot change the oracle with it. pyarrow is a dev
dependency only: nothing under collector/ or billing/ imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from collector.store.bulk import BulkValueError, Column, Kind

# The wire format restated here on purpose, not imported from collector.store.bulk: an
# oracle that shared the encoder's epochs, widths and limits could not catch them wrong.
PG_EPOCH_US = 946_684_800 * 1_000_000
PG_EPOCH_DAYS = 10_957
_NULL_CELL = b"\xff\xff\xff\xff"
_FIXED: dict[str, str] = {"int8": ">i8", "int4": ">i4", "int2": ">i2", "bool": "u1",
                          "ts": ">i8", "date": ">i4"}
_LIMITS: dict[str, tuple[int, int]] = {"int8": (-(2**63), 2**63 - 1),
                                       "int4": (-(2**31), 2**31 - 1),
                                       "int2": (-(2**15), 2**15 - 1)}
_NUMERIC_DIGITS = 10


def _as_binary(fixed: np.ndarray[Any, Any], width: int, n: int) -> pa.Array:
    arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n,
                                               [None, pa.py_buffer(fixed.tobytes())])
    return arr.cast(pa.binary())


def _with_nulls(cells: pa.Array, valid: np.ndarray[Any, Any] | None) -> pa.Array:
    if valid is None or bool(valid.all()):
        return cells
    return pc.if_else(pa.array(valid), cells, pa.scalar(_NULL_CELL, pa.binary()))


def _fixed_cells(values: np.ndarray[Any, Any], fmt: str,
                 valid: np.ndarray[Any, Any] | None) -> pa.Array:
    width = np.dtype(fmt).itemsize
    rec = np.empty(len(values), dtype=[("l", ">i4"), ("v", fmt)])
    rec["l"] = width
    rec["v"] = values
    return _with_nulls(_as_binary(rec, 4 + width, len(values)), valid)


def _var_cells(col: pa.Array) -> pa.Array:
    col = col.cast(pa.binary())
    lens = pc.binary_length(col).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
    prefix = np.empty(len(col), dtype=[("l", ">i4")])
    prefix["l"] = lens
    pre = _as_binary(prefix, 4, len(col))
    return pc.binary_join_element_wise(pre, col.fill_null(b""), pa.scalar(b"", pa.binary()))


def _numeric_cells(s: pl.Series) -> pa.Array:
    n = len(s)
    valid = s.is_not_null().to_numpy()
    v = s.cast(pl.Int128).fill_null(0)
    if n and v.min() < 0:  # type: ignore[operator]
        raise BulkValueError(f"column {s.name!r}: numeric values must not be negative")
    fields: list[tuple[str, str]] = [("l", ">i4"), ("nd", ">i2"), ("w", ">i2"),
                                     ("sign", ">i2"), ("dscale", ">i2")]
    fields += [(f"d{i}", ">i2") for i in range(_NUMERIC_DIGITS)]
    rec = np.empty(n, dtype=fields)
    rec["l"] = 8 + 2 * _NUMERIC_DIGITS
    rec["nd"] = _NUMERIC_DIGITS
    rec["w"] = _NUMERIC_DIGITS - 1
    rec["sign"] = 0
    rec["dscale"] = 0
    digits = pl.DataFrame({"v": v}).select(
        [((pl.col("v") // pl.lit(10000 ** (_NUMERIC_DIGITS - 1 - i), pl.Int128))
          % pl.lit(10000, pl.Int128)).cast(pl.Int16).alias(f"d{i}")
         for i in range(_NUMERIC_DIGITS)])
    for i in range(_NUMERIC_DIGITS):
        rec[f"d{i}"] = digits[f"d{i}"].to_numpy()
    return _with_nulls(_as_binary(rec, 4 + 8 + 2 * _NUMERIC_DIGITS, n), valid)


def _column_cells(s: pl.Series, kind: Kind) -> pa.Array:
    if kind in ("text", "bytea"):
        return _var_cells(s.to_arrow())
    if kind == "numeric":
        return _numeric_cells(s)
    valid = s.is_not_null().to_numpy() if s.null_count() else None
    if kind == "ts":
        if not isinstance(s.dtype, pl.Datetime) or s.dtype.time_zone is None:
            raise BulkValueError(f"column {s.name!r}: timestamptz needs an aware Datetime,"
                                 f" got {s.dtype}")
        vals = s.dt.epoch("us").fill_null(0).to_numpy() - PG_EPOCH_US
    elif kind == "date":
        vals = s.cast(pl.Int32).fill_null(0).to_numpy() - PG_EPOCH_DAYS
    elif kind == "bool":
        vals = s.fill_null(False).cast(pl.UInt8).to_numpy()
    else:
        lo, hi = _LIMITS[kind]
        if s.len() > s.null_count():
            low, high = int(s.min()), int(s.max())  # type: ignore[arg-type]
            if low < lo or high > hi:
                raise BulkValueError(f"column {s.name!r}: values {low}..{high} do not fit"
                                     f" {kind}")
        vals = s.fill_null(0).cast(pl.Int64).to_numpy()
    return _fixed_cells(vals, _FIXED[kind], valid)


def encode_rows(df: pl.DataFrame, columns: Sequence[Column]) -> memoryview:
    """The frame's rows (``columns``, in that order) in binary COPY form: rows only, no
    header or trailer. Raises ``BulkValueError`` for a value that does not fit."""
    n = df.height
    count = np.empty(n, dtype=[("n", ">i2")])
    count["n"] = len(columns)
    cells = [_as_binary(count, 2, n)]
    cells += [_column_cells(df[name], kind) for name, kind in columns]
    rows = pc.binary_join_element_wise(*cells, pa.scalar(b"", pa.binary()))
    if isinstance(rows, pa.ChunkedArray):
        rows = rows.combine_chunks()
    rows = rows.cast(pa.large_binary())
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int64)[rows.offset:rows.offset + n + 1]
    return memoryview(rows.buffers()[2])[int(offsets[0]):int(offsets[-1])]
