"""Binary COPY from polars frames, without per-row Python (docs/design/engine.md §10).

PostgreSQL's binary COPY format (docs: COPY, "Binary Format") is a header, then per row a
big-endian int16 field count and, per field, a big-endian int32 length (-1 for NULL)
followed by that many bytes of the type's binary "send" form, then a trailer (int16 -1).

Built with numpy alone (no pyarrow: importing it cost the collector ~30 MiB of RSS). One
polars select gives every column's values as numpy takes them; each row is then a numpy
structured record of a big-endian dtype: the field count, and per column its length word
and value bytes (numbers big-endian in place; text and bytea padded to their column's
longest value, or of one length, e.g. digests). The records are written a block of rows
at a time (a block stays in the CPU cache while the columns are written into it). When a
row can differ in length (NULLs, padded text) one boolean mask over the record bytes drops
NULLs' values and padding. Text or bytea too uneven to pad is placed afterwards, every
byte at its computed offset, the records' bytes around it. The only Python loops are over
columns and blocks of rows. tests/unit/test_bulk_encoder.py checks the output byte for
byte against the Arrow encoder this replaced (tests/oracle/bulk_arrow.py).

Types (``Kind``): ``int8``, ``int4``, ``int2``, ``bool``, ``ts`` (timestamptz from a
polars Datetime in any unit and zone: the instant is what is sent), ``date`` (polars
Date), ``numeric`` (a non-negative integer from Int64/Int128/UInt64:
``numeric(p, 0)`` columns such as ``mem_used_byte_s`` and ``db_index``), ``text`` (UTF-8;
NUL is refused by PostgreSQL, callers replace it first) and ``bytea``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
import psycopg

Kind = Literal["int8", "int4", "int2", "bool", "ts", "date", "numeric", "text", "bytea"]
Column = tuple[str, Kind]

# PostgreSQL's epoch is 2000-01-01 UTC: microseconds and days from the Unix epoch.
PG_EPOCH_US = 946_684_800 * 1_000_000
PG_EPOCH_DAYS = 10_957
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_TRAILER = b"\xff\xff"
_FIXED: dict[str, str] = {"int8": ">i8", "int4": ">i4", "int2": ">i2", "bool": "u1",
                          "ts": ">i8", "date": ">i4"}
_LIMITS: dict[str, tuple[int, int]] = {"int8": (-(2**63), 2**63 - 1),
                                       "int4": (-(2**31), 2**31 - 1),
                                       "int2": (-(2**15), 2**15 - 1)}
# Integer dtypes whose every value fits the kind (no min/max check needed).
_FITS: dict[str, tuple[pl.DataType, ...]] = {
    "int8": (pl.Int8(), pl.Int16(), pl.Int32(), pl.Int64(), pl.UInt8(), pl.UInt16(), pl.UInt32()),
    "int4": (pl.Int8(), pl.Int16(), pl.Int32(), pl.UInt8(), pl.UInt16()),
    "int2": (pl.Int8(), pl.Int16(), pl.UInt8())}
_UINT64_MAX = 2**64 - 1
# Integer dtypes numpy holds as they are (the record's field converts them exactly).
_NUMPY_INTS = (pl.Int8(), pl.Int16(), pl.Int32(), pl.Int64(), pl.UInt8(), pl.UInt16(),
               pl.UInt32(), pl.UInt64())
# A text/bytea column is padded to its longest value in the records while that takes at
# most this many times (its bytes + one a row); beyond, its bytes are placed after.
_PAD_FACTOR = 2
# The records are built this many bytes of rows at a time (they stay in the CPU's cache
# while each column is written into them).
_BLOCK_BYTES = 1 << 18
# numeric: 10 base-10000 digits, weight 9 (values below 10^40: every Int128).
_NUMERIC_DIGITS = 10
_TEN16 = 10**16
NUMERIC_MAX = 2**127 - 1


class BulkValueError(ValueError):
    """A value does not fit the column's binary form (it would fail or wrap in COPY)."""


@dataclass
class _Cells:
    """One column's cells, as ``encode_rows`` lays them into the row records.

    ``words``: the length words, one for every row (an int) or per row (-1 at NULLs).
    ``field``: the record's value field (a numpy field spec), None when no row has value
    bytes there (all NULL or empty, or ``spill``).
    ``values``: what fills the field, one row per row (n values; numeric: n rows of its
    base-10000 digits, the field's last words; text and bytea of one length: n rows of
    bytes) or, ``padded``, the values' bytes concatenated (placed byte by byte).
    ``size``: per row, how many of the field's bytes the row sends (None: all).
    ``spill``: text or bytea too uneven in length to pad: its bytes, concatenated, placed
    in the rows after the records are compacted (``size`` their lengths).
    """

    words: np.ndarray[Any, Any] | int
    field: tuple[Any, ...] | None = None
    values: np.ndarray[Any, Any] | None = None
    size: np.ndarray[Any, Any] | None = None
    padded: bool = False
    spill: np.ndarray[Any, Any] | None = None


def _check(df: pl.DataFrame, columns: Sequence[Column]) -> dict[str, Any]:
    """Refuse what would fail or wrap, in column order; returns the numeric maxima."""
    schema = df.schema
    aggs = []
    for k, (name, kind) in enumerate(columns):
        if kind == "numeric":
            v = pl.col(name).cast(pl.Int128).fill_null(0)
            aggs += [v.min().alias(f"lo{k}"), v.max().alias(f"hi{k}")]
        elif kind in _LIMITS and schema[name] not in _FITS[kind]:
            aggs += [pl.col(name).min().alias(f"lo{k}"), pl.col(name).max().alias(f"hi{k}")]
    got = df.select(aggs).row(0, named=True) if aggs else {}
    for k, (name, kind) in enumerate(columns):
        dtype = schema[name]
        if kind == "ts" and (not isinstance(dtype, pl.Datetime) or dtype.time_zone is None):
            raise BulkValueError(f"column {name!r}: timestamptz needs an aware Datetime,"
                                 f" got {dtype}")
        low = got.get(f"lo{k}")
        if low is None:
            continue
        if kind == "numeric":
            if low < 0:
                raise BulkValueError(f"column {name!r}: numeric values must not be negative")
            continue
        lo, hi = _LIMITS[kind]
        low, high = int(low), int(got[f"hi{k}"])
        if low < lo or high > hi:
            raise BulkValueError(f"column {name!r}: values {low}..{high} do not fit {kind}")
    return got


def _exprs(df: pl.DataFrame, columns: Sequence[Column], got: dict[str, Any]) -> list[pl.Expr]:
    """One select's worth of expressions: each column's values as numpy will take them."""
    schema = df.schema
    exprs: list[pl.Expr] = []
    for k, (name, kind) in enumerate(columns):
        col, dtype, nulls = pl.col(name), schema[name], df[name].null_count()
        if kind in ("text", "bytea"):
            if dtype != pl.Binary:
                col = (col if dtype == pl.String else col.cast(pl.String)).cast(pl.Binary)
            exprs += [col.alias(f"v{k}"),
                      col.bin.size().cast(pl.Int32).fill_null(-1).alias(f"w{k}")]
            continue
        if nulls == df.height:
            continue
        if nulls:
            exprs.append(col.is_not_null().alias(f"ok{k}"))
        if kind == "numeric":
            # Below 2^64 the value itself (5 digits); else 16 decimal digits at a time.
            v = col.cast(pl.Int128).fill_null(0)
            if got[f"hi{k}"] > _UINT64_MAX:
                exprs += [(v % _TEN16).cast(pl.Int64).alias(f"v{k}"),
                          (v // _TEN16 % _TEN16).cast(pl.Int64).alias(f"m{k}"),
                          (v // _TEN16 // _TEN16).cast(pl.Int64).alias(f"h{k}")]
            else:
                exprs.append(v.cast(pl.UInt64).alias(f"v{k}"))
            continue
        if kind == "ts":
            col = col.dt.epoch("us")
        elif kind == "date":
            col = col.cast(pl.Int32)
        elif kind == "bool":
            col = col.fill_null(False).cast(pl.UInt8)
        elif dtype not in _NUMPY_INTS:
            col = col.fill_null(0).cast(pl.Int64)
        exprs.append(col.fill_null(0).alias(f"v{k}") if nulls else col.alias(f"v{k}"))
    return exprs


def _var_cells(words: np.ndarray[Any, Any], values: list[bytes | None], n: int) -> _Cells:
    data = b"".join(filter(None, values))
    if not data:
        return _Cells(words=words)
    size = np.maximum(words, 0)
    flat = np.frombuffer(data, dtype=np.uint8)
    longest = int(size.max())
    valid = words >= 0
    if int(size[valid].min()) == longest:
        # All one length (digests, names of one format): a fixed-width field.
        if len(flat) == n * longest:
            return _Cells(words=words, field=("u1", (longest,)), values=flat.reshape(n, -1))
        rows = np.zeros((n, longest), dtype=np.uint8)
        rows[valid] = flat.reshape(-1, longest)
        return _Cells(words=words, field=("u1", (longest,)), values=rows, size=size)
    if longest * n <= _PAD_FACTOR * (len(data) + n):
        return _Cells(words=words, field=("u1", (longest,)), values=flat, size=size,
                      padded=True)
    return _Cells(words=words, size=size, spill=flat)


def _cells(frame: pl.DataFrame, k: int, kind: Kind, n: int) -> _Cells:
    """Column ``k``'s cells from the select (``_exprs``)."""
    if kind in ("text", "bytea"):
        return _var_cells(frame[f"w{k}"].to_numpy(), frame[f"v{k}"].to_list(), n)
    if f"v{k}" not in frame.columns:
        return _Cells(words=-1)  # every row NULL
    field: tuple[Any, ...]
    if kind == "numeric":
        # The base-10000 digits, most significant first (ndigits, weight, sign and dscale
        # are the template's): v's 5 low ones, or 4 from each 16-decimal-digit part.
        field = (">i2", (4 + _NUMERIC_DIGITS,))
        values = np.zeros((n, _NUMERIC_DIGITS), dtype=np.int16)
        parts = [(frame[f"v{k}"].to_numpy(), _NUMERIC_DIGITS, 5)]
        if f"h{k}" in frame.columns:
            parts = [(frame[f"v{k}"].to_numpy(), _NUMERIC_DIGITS, 4),
                     (frame[f"m{k}"].to_numpy(), _NUMERIC_DIGITS - 4, 4),
                     (frame[f"h{k}"].to_numpy(), _NUMERIC_DIGITS - 8, 2)]
        for whole, end, count in parts:
            part = whole
            for i in range(end - 1, end - 1 - count, -1):
                part, values[:, i] = np.divmod(part, 10_000)
    else:
        field = (_FIXED[kind],)
        values = frame[f"v{k}"].to_numpy()
        if kind == "ts":
            values = values - PG_EPOCH_US
        elif kind == "date":
            values = values - PG_EPOCH_DAYS
    width = np.dtype(field if len(field) == 2 else field[0]).itemsize
    if f"ok{k}" not in frame.columns:
        return _Cells(words=width, field=field, values=values)
    valid = frame[f"ok{k}"].to_numpy()
    return _Cells(words=np.where(valid, np.int32(width), np.int32(-1)), field=field,
                  values=values, size=np.where(valid, width, 0))


def encode_rows(df: pl.DataFrame, columns: Sequence[Column]) -> memoryview:
    """The frame's rows (``columns``, in that order) in binary COPY form: rows only, no
    header or trailer. Raises ``BulkValueError`` for a value that does not fit."""
    got = _check(df, columns)
    n = df.height
    if not n:
        return memoryview(b"")
    exprs = _exprs(df, columns, got)
    frame = df.select(exprs) if exprs else pl.DataFrame()
    cells = [_cells(frame, k, kind, n) for k, (_, kind) in enumerate(columns)]
    # One numpy record per row: the field count, then per column its length word and its
    # value bytes (big-endian numbers in place; text and bytea padded to the longest).
    fields: list[tuple[Any, ...]] = [("n", ">i2")]
    for k, c in enumerate(cells):
        fields.append((f"l{k}", ">i4"))
        if c.field is not None:
            fields.append((f"v{k}", *c.field))
    dtype = np.dtype(fields)
    width = dtype.itemsize
    # What every row has alike (the field count, constant length words, a numeric's
    # header words) is copied in at once; then per column what differs.
    template = np.zeros(1, dtype=dtype)
    template["n"] = len(columns)
    writes: list[tuple[str, np.ndarray[Any, Any], bool]] = []  # (field, n rows, digits)
    padded: list[tuple[int, np.ndarray[Any, Any], np.ndarray[Any, Any],
                       np.ndarray[Any, Any]]] = []  # (at, sizes, offsets, bytes)
    masks: list[tuple[int, int, np.ndarray[Any, Any], bool]] = []  # (at, width, size, padded)
    spills: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]] = []
    sent = np.full(n, width, dtype=np.int64)  # per row, the record bytes sent
    for k, (c, (_, kind)) in enumerate(zip(cells, columns, strict=True)):
        if isinstance(c.words, int):
            template[f"l{k}"] = c.words
        else:
            writes.append((f"l{k}", c.words, False))
        if c.spill is not None:
            assert c.size is not None
            spills.append((sent - width + dtype.fields[f"l{k}"][1] + 4,  # type: ignore[index]
                           c.size, c.spill))
        if c.field is None:
            continue
        value, at = dtype.fields[f"v{k}"][:2]  # type: ignore[index]
        assert c.values is not None
        if kind == "numeric":
            template[f"v{k}"][0, :2] = (_NUMERIC_DIGITS, _NUMERIC_DIGITS - 1)
            writes.append((f"v{k}", c.values, True))
        elif c.padded:
            assert c.size is not None
            padded.append((at, c.size, np.cumsum(c.size) - c.size, c.values))
        else:
            writes.append((f"v{k}", c.values, False))
        if c.size is not None:
            masks.append((at, value.itemsize, c.size, c.padded))
            sent += c.size - value.itemsize
    if not masks and not spills:
        # Every row the same length: the records are the rows.
        rec = np.empty(n, dtype=dtype)
        step = max(1, _BLOCK_BYTES // width)
        for b0 in range(0, n, step):
            _block(rec[b0:b0 + step], b0, template, writes, padded)
        return rec.view(np.uint8).data
    return _compact(n, dtype, template, writes, padded, masks, spills, sent).data


def _block(rec: np.ndarray[Any, Any], b0: int, template: np.ndarray[Any, Any],
           writes: list[tuple[str, np.ndarray[Any, Any], bool]],
           padded: list[tuple[int, np.ndarray[Any, Any], np.ndarray[Any, Any],
                              np.ndarray[Any, Any]]]) -> None:
    """Rows b0.. of the records into ``rec`` (a block of rows small enough to stay in the
    CPU's cache while every column is written into it)."""
    m = len(rec)
    width = rec.dtype.itemsize
    raw = rec.view(np.uint8)
    raw.reshape(m, width)[:] = template.view(np.uint8)
    for name, values, digits in writes:
        if digits:  # a numeric's digits: its last words (the header is the template's)
            rec[name][:, -values.shape[1]:] = values[b0:b0 + m]
        else:
            rec[name] = values[b0:b0 + m]
    for at, size, first, data in padded:
        part = size[b0:b0 + m]
        start = int(first[b0])
        stop = int(first[b0 + m - 1] + part[-1])
        base = np.arange(m, dtype=np.int64) * width + at - (first[b0:b0 + m] - start)
        raw[np.repeat(base, part) + np.arange(stop - start)] = data[start:stop]


def _compact(n: int, dtype: np.dtype[Any], template: np.ndarray[Any, Any],
             writes: list[tuple[str, np.ndarray[Any, Any], bool]],
             padded: list[tuple[int, np.ndarray[Any, Any], np.ndarray[Any, Any],
                                np.ndarray[Any, Any]]],
             masks: list[tuple[int, int, np.ndarray[Any, Any], bool]],
             spills: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any],
                                np.ndarray[Any, Any]]],
             sent: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The rows: the records' bytes without NULLs' values and padding, and the spilled
    text, block by block (one block's records and mask reused: only the result is as
    large as the frame)."""
    width = dtype.itemsize
    step = max(1, _BLOCK_BYTES // width)
    rec = np.empty(min(n, step), dtype=dtype)
    raw = rec.view(np.uint8)
    keep = np.empty((len(rec), width), dtype=bool)
    lengths = sent + sum(size for _, size, _ in spills) if spills else sent
    ends = np.cumsum(lengths)
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    firsts = [np.cumsum(size) - size for _, size, _ in spills]
    for b0 in range(0, n, step):
        m = min(step, n - b0)
        _block(rec[:m], b0, template, writes, padded)
        keep[:m] = True
        for at, size_width, size, pad in masks:
            part = size[b0:b0 + m, None]
            if pad:
                keep[:m, at:at + size_width] = np.arange(size_width, dtype=np.int32) < part
            else:
                keep[:m, at:at + size_width] = part > 0
        start = int(ends[b0 - 1]) if b0 else 0
        rows = raw[:m * width][keep[:m].reshape(-1)]
        if not spills:
            out[start:int(ends[b0 + m - 1])] = rows
            continue
        # Text or bytea too uneven to pad: each of its bytes goes to its place (the row's
        # start + the value's offset in the row + its offset in the value); the records'
        # bytes fill the rest, in order.
        block = out[start:int(ends[b0 + m - 1])]
        is_record = np.ones(len(block), dtype=bool)
        row_at = ends[b0:b0 + m] - lengths[b0:b0 + m] - start
        for (offset, size, data), first in zip(spills, firsts, strict=True):
            part = size[b0:b0 + m]
            lo = int(first[b0])
            hi = int(first[b0 + m - 1] + part[-1])
            where = (np.repeat(row_at + offset[b0:b0 + m] - (first[b0:b0 + m] - lo), part)
                     + np.arange(hi - lo))
            block[where] = data[lo:hi]
            is_record[where] = False
            row_at = row_at + part
        block[is_record] = rows
    return out


def copy_frame(cur: psycopg.Cursor[Any], statement: str, df: pl.DataFrame,
               columns: Sequence[Column]) -> int:
    """Run ``statement`` (a ``COPY table (cols) FROM STDIN (FORMAT BINARY)``; a constant
    of the caller) with ``df``'s rows; returns the rows written."""
    if not df.height:
        return 0
    data = encode_rows(df, columns)
    with cur.copy(statement) as copy:
        copy.write(COPY_HEADER)
        copy.write(data)
        copy.write(COPY_TRAILER)
    return df.height


def copy_statement(table: str, names: Sequence[str]) -> str:
    """``COPY table (names) FROM STDIN (FORMAT BINARY)``: for module constants (built at
    import from constant names; never from run-time values)."""
    return f"COPY {table} ({', '.join(names)}) FROM STDIN (FORMAT BINARY)"
