"""Rate-card versions: storing a card once (by content hash) and listing the stored ones."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from collector.store.errors import ChargeValueError
from collector.store.models import Charge, RateCard, table_of

_CARDS = table_of(RateCard)
_CHARGES = table_of(Charge)


@dataclass(frozen=True, slots=True)
class RateCardInfo:
    """One stored rate-card version and how many charge lines reference it."""

    id: int
    version: str
    currency: str
    loaded_at: datetime
    source: str
    text: str
    lines: int


def ensure_rate_card(session: Session, *, version: str, currency: str, text: str,
                     source: str) -> int:
    """The id of rate-card ``version``, inserting it when new.

    A card is immutable: when ``version`` is stored already its row is kept as it is
    (first ``source`` and ``loaded_at`` win), but a different currency or text under the
    same version (a content hash) is refused with ``ChargeValueError``.
    """
    for what, value in (("version", version), ("currency", currency), ("source", source)):
        if not isinstance(value, str) or not value:
            raise ChargeValueError(f"rate card {what} must be a non-empty string, "
                                   f"got {value!r}")
    if not isinstance(text, str):
        raise ChargeValueError(f"rate card text must be a string, got {text!r}")
    inserted = session.execute(
        pg_insert(_CARDS)
        .values(version=version, currency=currency, text=text, source=source)
        .on_conflict_do_nothing(index_elements=[_CARDS.c.version])
        .returning(_CARDS.c.id)
    ).scalar_one_or_none()
    if inserted is not None:
        return int(inserted)
    # Another transaction may have inserted it: ON CONFLICT waited for it, and this new
    # statement (READ COMMITTED) sees its row.
    row = session.execute(
        select(_CARDS.c.id, _CARDS.c.currency, _CARDS.c.text)
        .where(_CARDS.c.version == version)
    ).one()
    if row.currency != currency or row.text != text:
        raise ChargeValueError(
            f"rate card version {version!r} is stored with a different "
            f"{'currency' if row.currency != currency else 'text'}; a version is the "
            "content hash of the card and never changes")
    return int(row.id)


def card_stored(session: Session, version: str) -> bool:
    """Whether rate-card ``version`` is stored already."""
    return session.execute(select(_CARDS.c.id).where(_CARDS.c.version == version)
                           ).first() is not None


def card_texts(session: Session, versions: Iterable[str]) -> list[tuple[str, str]]:
    """(version, TOML text) of these stored versions, oldest loaded first (versions not
    stored are left out)."""
    wanted = sorted(set(versions))
    if not wanted:
        return []
    rows = session.execute(select(_CARDS.c.version, _CARDS.c.text)
                           .where(_CARDS.c.version.in_(wanted))
                           .order_by(_CARDS.c.loaded_at, _CARDS.c.id))
    return [(version, body) for version, body in rows]


def list_rate_cards(session: Session) -> list[RateCardInfo]:
    """Every stored rate card, newest first, with its number of charge lines.

    The line counts scan ``charge_lines`` once (an admin listing, not a hot path).
    """
    counts = (select(_CHARGES.c.rate_card_id, func.count().label("n"))
              .group_by(_CHARGES.c.rate_card_id).subquery())
    stmt = (
        select(_CARDS, func.coalesce(counts.c.n, 0).label("lines"))
        .select_from(_CARDS.outerjoin(counts, counts.c.rate_card_id == _CARDS.c.id))
        .order_by(_CARDS.c.loaded_at.desc(), _CARDS.c.id.desc())
    )
    return [
        RateCardInfo(id=r.id, version=r.version, currency=r.currency,
                     loaded_at=r.loaded_at.astimezone(UTC), source=r.source, text=r.text,
                     lines=int(r.lines))
        for r in session.execute(stmt)
    ]


def card_ids(session: Session, versions: set[str],
              given: Mapping[str, int]) -> dict[str, tuple[int, str]]:
    """version -> (id, currency) for ``versions``. The caller's mapping is checked
    against the table (a wrong id would attribute lines to the wrong card); versions
    missing from it are looked up."""
    if not versions:
        return {}
    rows = session.execute(
        select(_CARDS.c.version, _CARDS.c.id, _CARDS.c.currency)
        .where(_CARDS.c.version.in_(sorted(versions)))
    ).all()
    stored = {version: (int(card_id), currency) for version, card_id, currency in rows}
    unknown = versions - stored.keys()
    if unknown:
        raise ChargeValueError(
            f"rate card version(s) {', '.join(sorted(unknown))} are not stored; "
            "call ensure_rate_card first")
    for version in versions:
        if version in given and int(given[version]) != stored[version][0]:
            raise ChargeValueError(
                f"rate_card_ids maps {version!r} to id {given[version]}, but its id is "
                f"{stored[version][0]}")
    return stored

