"""API bearer tokens: the tokens file, scopes, and the check of ``Authorization``.

Design notes: docs/design/web.md.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from collector.settings import SettingsError
from collector.web.problems import FORBIDDEN, UNAUTHORIZED, ApiError

HASH_PREFIX = "sha256:"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
# RFC 6750 §2.1 b64token; what token_urlsafe makes is a subset.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# A Slurm account name as it can appear in a scope: no whitespace, comma, '#' or
# control characters.
_ACCOUNT = re.compile(r"[^\s,#\x00-\x1f\x7f]+")
REALM = "hpc-billing"
SCOPE_HELP = "use 'all' or 'account:<name>[,<name>...]'"


class TokenFileError(SettingsError):
    """The tokens file cannot be used; one message per bad line (no line text: a line
    holds a hash)."""


@dataclass(frozen=True, slots=True)
class Scope:
    """What a token may read: everything (``all``), or the data of some accounts."""

    all: bool
    accounts: frozenset[str] = frozenset()

    @property
    def restriction(self) -> frozenset[str] | None:
        """The accounts the token is limited to, or None when it may read everything."""
        return None if self.all else self.accounts

    def allows(self, account: str | None) -> bool:
        return self.all or (account is not None and account in self.accounts)

    def require_all(self, what: str) -> None:
        """403 unless the token may read everything (run log, quarantine, nodes)."""
        if not self.all:
            raise forbidden(f"{what} needs a token with scope 'all'; this token is limited "
                            "to accounts")

    def require_account(self, account: str, name: str = "account") -> None:
        if not self.allows(account):
            raise forbidden(f"this token may not read the data of the {name} asked for")

    def __str__(self) -> str:
        return "all" if self.all else "account:" + ",".join(sorted(self.accounts))


ALL = Scope(all=True)


def parse_scope(text: str) -> Scope:
    """``all`` or ``account:<name>[,<name>...]``; ValueError otherwise."""
    value = text.strip()
    if value == "all":
        return ALL
    kind, sep, rest = value.partition(":")
    if kind != "account" or not sep:
        raise ValueError(f"unknown scope; {SCOPE_HELP}")
    names = [name.strip() for name in rest.split(",")]
    if not names or any(not name for name in names):
        raise ValueError(f"empty account name in scope; {SCOPE_HELP}")
    bad = [name for name in names if _ACCOUNT.fullmatch(name) is None]
    if bad:
        raise ValueError("account names may not contain whitespace, ',', '#' or control "
                         "characters")
    return Scope(all=False, accounts=frozenset(names))


def token_digest(token: str) -> str:
    """The lowercase hex SHA-256 of the token's UTF-8 bytes (what the file stores)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenEntry:
    digest: str          # lowercase hex
    scope: Scope
    line_no: int

    def __repr__(self) -> str:  # never show the hash, even in a debugger or a traceback
        return f"TokenEntry(line {self.line_no}, scope={self.scope})"


class TokenTable:
    """The tokens of one file, checked in constant time per entry."""

    def __init__(self, entries: Collection[TokenEntry], source: str | None = None) -> None:
        self._entries = tuple(entries)
        self.source = source

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"TokenTable({len(self._entries)} token(s) from {self.source!r})"

    def check(self, token: str) -> Scope | None:
        """The scope of ``token``, or None when it is not in the table."""
        digest = token_digest(token)
        found: Scope | None = None
        for entry in self._entries:
            # Every entry is compared, whatever matched before (no early exit).
            if hmac.compare_digest(entry.digest, digest):
                found = entry.scope
        return found


def parse_tokens(text: str, source: str = "<tokens>") -> TokenTable:
    """Parse the tokens file's text; TokenFileError lists every bad line."""
    entries: list[TokenEntry] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = re.split(r"(?:^|\s)#", raw, maxsplit=1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            errors.append(f"{source}: line {line_no}: expected 'sha256:<64 hex digits> "
                          f"<scope>' (two fields), got {len(fields)} field(s)")
            continue
        hashed, scope_text = fields
        if not hashed.startswith(HASH_PREFIX) or _HEX64.fullmatch(hashed[len(HASH_PREFIX):]) is None:
            errors.append(f"{source}: line {line_no}: the first field must be "
                          "'sha256:' and 64 hex digits (the hash, never the token itself)")
            continue
        try:
            scope = parse_scope(scope_text)
        except ValueError as exc:
            errors.append(f"{source}: line {line_no}: {exc}")
            continue
        digest = hashed[len(HASH_PREFIX):].lower()
        if digest in seen:
            errors.append(f"{source}: line {line_no}: the same token as line {seen[digest]} "
                          "(one line per token)")
            continue
        seen[digest] = line_no
        entries.append(TokenEntry(digest=digest, scope=scope, line_no=line_no))
    if errors:
        raise TokenFileError(errors)
    return TokenTable(entries, source)


def load_tokens(path: str | Path) -> TokenTable:
    """Read and parse the tokens file at ``path`` (once, at app creation)."""
    source = f"HPC_BILLING_API_TOKENS_FILE {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise TokenFileError([f"{source}: cannot read it ({reason})"]) from None
    return parse_tokens(text, source)


def new_token(scope: str) -> tuple[str, str]:
    """A new token and the tokens-file line holding its hash and ``scope``.

    ValueError when ``scope`` is not a valid scope. Show the token once to whoever will
    use it; only the line is kept.
    """
    parsed = parse_scope(scope)
    token = secrets.token_urlsafe(32)
    return token, f"{HASH_PREFIX}{token_digest(token)} {parsed}"


# --------------------------------------------------------------------- request checks

def _challenge(error: str | None = None) -> dict[str, str]:
    value = f'Bearer realm="{REALM}"'
    if error:
        value += f', error="{error}"'
    return {"WWW-Authenticate": value}


def unauthorized(detail: str, error: str | None = None) -> ApiError:
    return ApiError(401, detail, type_=UNAUTHORIZED, headers=_challenge(error))


def forbidden(detail: str) -> ApiError:
    return ApiError(403, detail, type_=FORBIDDEN,
                    headers=_challenge("insufficient_scope"))


def authenticate(table: TokenTable | None, authorization: str | None) -> Scope:
    """The scope of the request's ``Authorization: Bearer <token>``, else a 401 ApiError.

    ``table`` None or empty: the API answers no one (it has no tokens configured).
    """
    if table is None or len(table) == 0:
        raise unauthorized("the API has no tokens configured: set HPC_BILLING_API_TOKENS_FILE "
                           "('hpc-billing token new --scope ...' makes a token and its line)")
    if not authorization:
        raise unauthorized("this endpoint needs 'Authorization: Bearer <token>'")
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        raise unauthorized("the Authorization header must be 'Bearer <token>'", "invalid_request")
    if _B64TOKEN.fullmatch(credentials) is None:
        raise unauthorized("the token is not valid", "invalid_token")
    scope = table.check(credentials)
    if scope is None:
        raise unauthorized("the token is not valid", "invalid_token")
    return scope
