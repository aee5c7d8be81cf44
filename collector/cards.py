"""Rate cards as the process holds them: ``LoadedCard`` (the card, its TOML text, its path).

A card file is read and validated once (``load_card``), by the runtime; every part that
prices or registers the card version gets this value. Every problem in the file becomes
a ``SettingsError`` (exit code 2), each naming its rule and key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

from billing.rates import RateCard, RateCardError, load_rate_card
from collector.settings import SettingsError


@dataclass(frozen=True, slots=True)
class LoadedCard:
    """A validated rate card with the text it was parsed from and where it came from."""

    card: RateCard
    text: str
    path: str

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def tz(self) -> ZoneInfo:
        """The zone the card's periods and rule dates begin in."""
        return ZoneInfo(self.card.timezone)


def load_card(path: str, *, what: str = "HPC_BILLING_RATES / --rates") -> LoadedCard:
    """Read and validate the card at ``path``; SettingsError lists every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError([f"{what}: cannot read {path}: {exc.strerror}"]) from None
    try:
        return LoadedCard(card=load_rate_card(text), text=text, path=str(path))
    except RateCardError as exc:
        raise SettingsError([f"{path}: {error}" for error in exc.errors]) from None
