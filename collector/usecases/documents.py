"""What the finance use cases share: the error for input that selects nothing, the rate
cards of stored lines, and the peek that refuses an empty selection before any file is
made."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from itertools import chain
from typing import Any, TypeVar

from billing.price import money_text
from billing.rates import RateCard, RateCardError, load_rate_card
from collector.store import finance_reads

T = TypeVar("T")


class FinanceInputError(ValueError):
    """The input selects nothing to bill: an unknown account, a period without charges,
    a job that is not stored. The message says which."""


class FinanceDataError(RuntimeError):
    """Stored data a document needs is missing or unreadable (e.g. the rate card that
    priced the lines)."""


def non_empty(items: Iterable[T], message: str) -> Iterator[T]:
    """``items``, or FinanceInputError(message) when there are none (checked before the
    caller writes anything)."""
    iterator = iter(items)
    first = next(iterator, None)
    if first is None:
        raise FinanceInputError(message)
    return chain([first], iterator)


def stored_cards(session: Any, versions: Iterable[str]) -> list[RateCard]:
    """The stored rate cards of these versions that still load, oldest loaded first."""
    out = []
    for _version, text in finance_reads.card_texts(session, versions):
        try:
            out.append(load_rate_card(text))
        except RateCardError:
            continue
    return out


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
