"""API tokens: make one (``hpc-billing token new``), recorded in the audit trail when it
is on (the scope and a prefix of the token's hash, never the token)."""

from __future__ import annotations

from billing.audit import TOKEN_CREATED
from collector.runtime import Runtime
from collector.settings import SettingsError
from collector.web.auth import new_token as _new_token


def new_token(runtime: Runtime, scope: str) -> tuple[str, str]:
    """A new token and the hashed line for the tokens file; a bad scope is a
    configuration error. With the audit trail on, a ``token.create`` entry (scope, hash
    prefix) is committed before the token is shown."""
    try:
        token, line = _new_token(scope)
    except ValueError as exc:
        raise SettingsError([f"--scope: {exc}"]) from None
    trail = runtime.audit
    if trail.on:
        digest, _, parsed = line.partition(" ")
        with runtime.database.sessions() as session:
            trail.record(session, TOKEN_CREATED, parsed, {
                "scope": parsed, "hash_prefix": digest[:19]})
            session.commit()
    else:
        trail.record_off(TOKEN_CREATED, scope)
    return token, line
