"""collector.store.bulk: binary COPY of polars frames, read back from a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import polars as pl
import pytest
from sqlalchemy.orm import Session

from collector.store.bulk import NUMERIC_MAX, BulkValueError, copy_frame, copy_statement, encode_rows
from collector.store.db import raw_connection

COLUMNS = [("i8", "int8"), ("i4", "int4"), ("i2", "int2"), ("b", "bool"), ("ts", "ts"),
           ("d", "date"), ("n", "numeric"), ("t", "text"), ("by", "bytea")]
CREATE = ("CREATE TEMP TABLE bulk_probe (i8 bigint, i4 integer, i2 smallint, b boolean,"
          " ts timestamptz, d date, n numeric(40, 0), t text, by bytea)")
COPY = copy_statement("bulk_probe", [name for name, _ in COLUMNS])
SELECT = "SELECT i8, i4, i2, b, ts, d, n, t, by FROM bulk_probe ORDER BY i4"

BERLIN = timezone(timedelta(hours=1))
TEXTS = ["plain", "tab\there", "new\nline\r\n", "back\\slash", "ünïcödé ✓", "", None,
         "a|b,\"c\"", "x" * 5000]


def _frame() -> pl.DataFrame:
    n = len(TEXTS)
    return pl.DataFrame({
        "i8": [2**63 - 1, -(2**63), 0, None, 1, -1, 42, 7, 9],
        "i4": list(range(n)),
        "i2": [2**15 - 1, -(2**15), None, 0, 1, 2, 3, 4, 5],
        "b": [True, False, None, True, False, True, False, True, False],
        "ts": pl.Series([datetime(2026, 10, 25, 0, 59, 59, 999_999, tzinfo=UTC),
                         datetime(1999, 12, 31, 23, 0, tzinfo=UTC), None,
                         datetime(2000, 1, 1, tzinfo=UTC), datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC),
                         datetime(1970, 1, 1, tzinfo=UTC), datetime(2026, 3, 29, 1, 30, tzinfo=UTC),
                         datetime(2026, 12, 5, 10, 0, 0, 1, tzinfo=UTC),
                         datetime(2100, 2, 28, tzinfo=UTC)],
                        dtype=pl.Datetime("us", "UTC")),
        "d": [date(2026, 11, 1), date(1999, 12, 31), None, date(2000, 1, 1), date(1970, 1, 1),
              date(2040, 2, 29), date(2026, 1, 1), date(2026, 12, 1), date(2001, 1, 1)],
        "n": pl.Series([0, 1, 10_000, None, 10**20 + 7, NUMERIC_MAX, 99_990_000, 12345678901234567890,
                        2**64 - 1], dtype=pl.Int128),
        "t": TEXTS,
        "by": [b"\x00\xff" * 8, b"", None, b"\\x", b"abc", b"\n\t", b"\x00", b"z" * 16, b"q"],
    })


def _copy(session: Session, df: pl.DataFrame) -> list[tuple[object, ...]]:
    conn = raw_connection(session, "test")
    with conn.cursor() as cur:
        cur.execute(CREATE)
        assert copy_frame(cur, COPY, df, COLUMNS) == df.height
        cur.execute(SELECT)
        return cur.fetchall()


def test_every_kind_round_trips_with_nulls_and_extremes(engine):
    df = _frame()
    with Session(engine) as session:
        rows = _copy(session, df)
        session.rollback()
    expected = list(zip(*(df[c].to_list() for c, _ in COLUMNS), strict=True))
    assert len(rows) == len(expected)
    for got, want in zip(rows, expected, strict=True):
        got = list(got)
        want = list(want)
        # numeric comes back as Decimal, bytea as bytes: compare as integers / bytes.
        got[6] = None if got[6] is None else int(got[6])
        got[8] = None if got[8] is None else bytes(got[8])
        assert got == want


def test_a_datetime_in_another_zone_is_sent_as_its_instant(engine):
    local = pl.Series([datetime(2026, 11, 3, 12, 0, tzinfo=BERLIN)], dtype=pl.Datetime("us", "UTC")
                      ).dt.convert_time_zone("Europe/Berlin")
    ms = local.cast(pl.Datetime("ms", "Europe/Berlin"))
    df = _frame().head(1).with_columns(local.alias("ts"))
    df_ms = _frame().head(1).with_columns(ms.alias("ts"))
    with Session(engine) as session:
        first = _copy(session, df)[0][4]
        session.rollback()
    with Session(engine) as session:
        second = _copy(session, df_ms)[0][4]
        session.rollback()
    assert first == second == datetime(2026, 11, 3, 11, 0, tzinfo=UTC)


def test_many_rows_in_one_copy(engine):
    n = 200_000
    df = pl.DataFrame({"i8": pl.int_range(n, eager=True), "i4": pl.int_range(n, eager=True)}).with_columns(
        pl.col("i8") * 3, pl.lit(None, pl.Int16).alias("i2"), (pl.col("i4") % 2 == 0).alias("b"),
        pl.lit(None, pl.Datetime("us", "UTC")).alias("ts"), pl.lit(None, pl.Date).alias("d"),
        (pl.col("i8").cast(pl.Int128) * 10**15).alias("n"), pl.col("i8").cast(pl.String).alias("t"),
        pl.lit(None, pl.Binary).alias("by"))
    with Session(engine) as session:
        conn = raw_connection(session, "test")
        with conn.cursor() as cur:
            cur.execute(CREATE)
            copy_frame(cur, COPY, df, COLUMNS)
            cur.execute("SELECT count(*), sum(i8), sum(n), sum(length(t)), count(*) FILTER (WHERE b)"
                        " FROM bulk_probe")
            count, total, numeric_total, text_len, trues = cur.fetchone()
        session.rollback()
    assert count == n
    assert total == 3 * n * (n - 1) // 2
    # (with_columns reads the input frame: n and t come from the unscaled i8)
    assert numeric_total == n * (n - 1) // 2 * 10**15
    assert text_len == sum(len(str(i)) for i in range(n))
    assert trues == n // 2


@pytest.mark.parametrize(("column", "value", "dtype"), [
    ("i4", 2**31, pl.Int64), ("i2", -(2**15) - 1, pl.Int64), ("n", -1, pl.Int128)])
def test_a_value_that_does_not_fit_is_refused_before_the_copy(column, value, dtype):
    df = _frame().head(1).with_columns(pl.Series(column, [value], dtype=dtype))
    with pytest.raises(BulkValueError, match=column):
        encode_rows(df, COLUMNS)


def test_a_naive_datetime_is_refused():
    df = _frame().head(1).with_columns(pl.Series("ts", [datetime(2026, 1, 1)]))  # noqa: DTZ001
    with pytest.raises(BulkValueError, match="aware"):
        encode_rows(df, COLUMNS)


def test_an_empty_frame_writes_nothing(engine):
    with Session(engine) as session:
        rows = _copy(session, _frame().head(0))
        session.rollback()
    assert rows == []
