"""``render.money``: trailing zeros past the second decimal dropped, nothing rounded; its
fast route (trimming ``str()``) gives exactly what the general one (normalize + format)
gives, on every Decimal, stored amounts (six places) or not."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.render import money


def money_oracle(value: Decimal) -> str:
    """The first build's money(): normalize, then fixed-point text, padded to 2 places."""
    whole, _, frac = format(value.normalize(), "f").partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


@pytest.mark.parametrize(("value", "text"), [
    ("1.190000", "1.19"), ("1.125000", "1.125"), ("10.000000", "10.00"),
    ("10.500000", "10.50"), ("0.000000", "0.00"), ("-0.000000", "-0.00"),
    ("-3.100000", "-3.10"), ("1234567.000001", "1234567.000001"), ("100", "100.00"),
    ("1E+3", "1000.00"), ("1.2E+3", "1200.00"), ("1E-7", "0.0000001"),
    ("1.5E-7", "0.00000015"), ("0E-6", "0.00"), ("12345678901234567890.123456",
                                                 "12345678901234567890.123456"),
])
def test_money_examples(value: str, text: str) -> None:
    assert money(Decimal(value)) == text == money_oracle(Decimal(value))


def test_money_keeps_every_digit_of_numeric_38_6() -> None:
    widest = Decimal("12345678901234567890123456789012.123456")    # 38 digits
    assert money(widest) == "12345678901234567890123456789012.123456"


@given(st.integers(min_value=-10**30, max_value=10**30))
def test_money_of_stored_amounts_is_the_oracle(micro: int) -> None:
    value = Decimal(micro).scaleb(-6)             # numeric(38, 6), as PostgreSQL returns it
    assert money(value) == money_oracle(value)


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_money_of_any_decimal_is_the_oracle(value: Decimal) -> None:
    # normalize() rounds to the context's 28 digits; str() does not: beyond 28 digits
    # only the fast route keeps every digit (as the docstring promises).
    if len(value.as_tuple().digits) <= 28:
        assert money(value) == money_oracle(value)
    else:
        assert Decimal(money(value)) == value
