"""Errors the charge, period and budget stores raise for values they refuse."""

from __future__ import annotations

from collections.abc import Iterable


class ChargeStoreError(ValueError):
    """A value the charge store refuses (base class of the errors below)."""


class InvalidPeriodError(ChargeStoreError):
    """A billing period that is not 'YYYY-MM' (month 01-12)."""


class ClosedPeriodError(ChargeStoreError):
    """A write would change a closed billing period."""

    def __init__(self, periods: Iterable[str], what: str) -> None:
        self.periods = tuple(sorted(set(periods)))
        super().__init__(f"{what}: billing period(s) {', '.join(self.periods)} are closed "
                         "and are never changed (post a correction in an open period)")


class ChargeValueError(ChargeStoreError):
    """A charge line or budget that cannot be stored as given."""

