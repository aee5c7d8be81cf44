"""What the finance use cases share: the error for input that selects nothing, the rate
cards of stored lines, totals as text, and what a written document is."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from billing.price import money_text
from billing.rates import RateCard
from collector.explaining import stored_cards


class FinanceInputError(ValueError):
    """The input selects nothing to bill: an unknown account, a period without charges,
    a job that is not stored. The message says which."""


class FinanceDataError(RuntimeError):
    """Stored data a document needs is missing or unreadable (e.g. the rate card that
    priced the lines)."""


def reference_card(session: Any, versions: Iterable[str], what: str) -> RateCard:
    """The newest loaded card among ``versions``: where a document's periods begin (its
    zone) and how its tax is rounded (its scale)."""
    wanted = set(versions)
    cards = stored_cards(session, wanted)
    if not cards:
        raise FinanceDataError(f"{what}: none of the rate cards that priced these lines "
                               f"({', '.join(sorted(v[:12] for v in wanted))}) is stored in "
                               f"a form this version can read")
    return cards[-1]


def add_total(totals: dict[str, Decimal], currency: str, amount: Decimal) -> None:
    totals[currency] = totals.get(currency, Decimal(0)) + amount


def totals_text(totals: dict[str, Decimal]) -> dict[str, str]:
    return {currency: money_text(total) for currency, total in sorted(totals.items())}


@dataclass(frozen=True, slots=True)
class Written:
    """One document written: where, how many bytes, its SHA-256."""

    output: str
    bytes: int
    sha256: str

    def as_details(self) -> dict[str, Any]:
        return {"output": self.output, "bytes": self.bytes, "sha256": self.sha256}
