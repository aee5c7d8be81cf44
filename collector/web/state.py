"""What the web app's views share: one ``WebState`` per app, in ``app.extensions``.

``create_app`` builds it once; a view reads it with ``web_state()`` (Flask's
``current_app``), so the blueprints are plain module-level objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import current_app

from collector.health import Health
from collector.settings import Settings
from collector.store.db import Sessions
from collector.web.auth import TokenTable

EXTENSION = "hpc_billing"


@dataclass(frozen=True, slots=True)
class WebState:
    settings: Settings
    engine: Any
    sessions: Sessions | Callable[[], Any]
    health: Health
    tokens: TokenTable | None
    registry: Any                        # a prometheus CollectorRegistry, or None
    openapi: bytes
    head: str                            # the schema revision this code needs
    checker: Any                         # probes.DatabaseChecker
    db_timeout_s: float                  # /readyz's database wait
    statement_timeout_s: float           # each API read
    redact: Callable[[str], str]


def web_state() -> WebState:
    """The state of the app serving the current request."""
    state: WebState = current_app.extensions[EXTENSION]
    return state
