"""API tokens: make one (``hpc-billing token new``)."""

from __future__ import annotations

from collector.settings import SettingsError
from collector.web.auth import new_token as _new_token


def new_token(scope: str) -> tuple[str, str]:
    """A new token and the hashed line for the tokens file; a bad scope is a
    configuration error."""
    try:
        return _new_token(scope)
    except ValueError as exc:
        raise SettingsError([f"--scope: {exc}"]) from None
