"""Rate cards: check a card file (what each rule matches and charges), list stored versions."""

from __future__ import annotations

from billing.rates import describe_card
from collector.cards import LoadedCard, load_card
from collector.runtime import Runtime
from collector.store import rate_cards as store_rate_cards
from collector.store.rate_cards import RateCardInfo


def check_card(path: str) -> tuple[LoadedCard, list[str]]:
    """The validated card (SettingsError lists every problem) and its description."""
    card = load_card(path)
    return card, list(describe_card(card.card))


def list_cards(runtime: Runtime) -> list[RateCardInfo]:
    with runtime.database.sessions() as session:
        return store_rate_cards.list_rate_cards(session)
