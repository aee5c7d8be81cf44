"""API tokens: the tokens file, scopes, new_token, and the Authorization check."""

from __future__ import annotations

import hashlib

import pytest

from collector.settings import SettingsError
from collector.web.auth import (
    ALL,
    Scope,
    TokenFileError,
    authenticate,
    load_tokens,
    new_token,
    parse_scope,
    parse_tokens,
    token_digest,
)
from collector.web.problems import ApiError


def _line(token: str, scope: str) -> str:
    return f"sha256:{hashlib.sha256(token.encode()).hexdigest()} {scope}"


def test_new_token_makes_a_line_that_loads_and_matches(tmp_path):
    token, line = new_token("account:physics,chemistry")
    assert len(token) >= 43 and token not in line
    assert line == f"sha256:{token_digest(token)} account:chemistry,physics"
    path = tmp_path / "tokens"
    path.write_text(f"# made by hpc-billing token new\n\n{line}\n")
    table = load_tokens(path)
    assert len(table) == 1
    assert table.check(token) == Scope(all=False, accounts=frozenset({"physics", "chemistry"}))
    assert table.check(token + "x") is None
    assert table.check("") is None


def test_new_tokens_are_unique_and_urlsafe():
    tokens = {new_token("all")[0] for _ in range(50)}
    assert len(tokens) == 50
    assert all(set(t) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
               for t in tokens)


@pytest.mark.parametrize("scope", ["", "ALL", "account", "account:", "account:a,,b", "accounts:a",
                                   "account:a b", "user:alice", "account:#x"])
def test_new_token_refuses_a_bad_scope(scope):
    with pytest.raises(ValueError):
        new_token(scope)


def test_parse_scope():
    assert parse_scope("all") is ALL and ALL.restriction is None
    scope = parse_scope("account:physics, chemistry")
    assert scope.restriction == frozenset({"physics", "chemistry"})
    assert scope.allows("physics") and not scope.allows("biology") and not scope.allows(None)
    assert ALL.allows(None)
    assert str(scope) == "account:chemistry,physics"


def test_comments_blank_lines_case_and_inline_comments():
    a, b = _line("tok-a", "all"), _line("tok-b", "account:physics")
    prefix, digest_and_scope = b.split(":", 1)
    upper = f"{prefix}:{digest_and_scope[:64].upper()}{digest_and_scope[64:]}"
    table = parse_tokens(f"  # header\n\n{a}   # grafana\n\t\n{upper}\n")
    assert table.check("tok-a") == ALL
    assert table.check("tok-b") == parse_scope("account:physics")


def test_every_bad_line_is_listed_by_number_without_its_text():
    good = _line("fine", "all")
    digest = hashlib.sha256(b"x").hexdigest()
    text = "\n".join([
        good,                                   # 1 ok
        f"sha256:{digest}",                     # 2 one field
        f"md5:{digest} all",                    # 3 wrong prefix
        f"sha256:{digest[:-1]} all",            # 4 63 digits
        f"sha256:{digest} everything",          # 5 bad scope
        f"sha256:{digest} account:",            # 6 empty account
        f"{good}",                              # 7 duplicate of 1
        f"sha256:{digest} all extra",           # 8 three fields
        "the-token-itself",                     # 9 a bare token pasted by mistake
    ])
    with pytest.raises(TokenFileError) as info:
        parse_tokens(text, "tokens.txt")
    err = info.value
    assert isinstance(err, SettingsError)      # the CLI exits 2 and lists them
    numbers = [int(e.split("line ")[1].split(":")[0]) for e in err.errors]
    assert numbers == [2, 3, 4, 5, 6, 7, 8, 9]
    assert "line 1" in err.errors[5]           # the duplicate names the first line
    message = str(err)
    assert digest not in message and digest[:-1] not in message
    assert "the-token-itself" not in message and "everything" not in message


def test_a_missing_or_unreadable_file_is_a_settings_error(tmp_path):
    with pytest.raises(TokenFileError, match="cannot read it"):
        load_tokens(tmp_path / "missing")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TokenFileError, match="cannot read it"):
        load_tokens(binary)


def test_an_empty_file_loads_as_no_tokens(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# nobody yet\n")
    assert len(load_tokens(path)) == 0


def test_repr_never_shows_a_hash():
    table = parse_tokens(_line("secret-token", "all"))
    digest = token_digest("secret-token")
    assert digest not in repr(table)
    assert digest not in repr(table._entries)


def test_check_compares_every_entry():
    # The matching entry first or last: the same answer (and every entry is compared).
    lines = [_line(f"t{i}", f"account:a{i}") for i in range(20)]
    table = parse_tokens("\n".join(lines))
    assert table.check("t0") == parse_scope("account:a0")
    assert table.check("t19") == parse_scope("account:a19")
    assert table.check("t20") is None


@pytest.mark.parametrize("header,error", [
    (None, None),
    ("", None),
    ("Bearer", "invalid_request"),
    ("Bearer ", "invalid_request"),
    ("Basic dXNlcjpwdw==", "invalid_request"),
    ("Bearer not a token", "invalid_token"),
    ("Bearer wrong", "invalid_token"),
])
def test_authenticate_refuses_with_401_and_a_challenge(header, error):
    table = parse_tokens(_line("right", "all"))
    with pytest.raises(ApiError) as info:
        authenticate(table, header)
    err = info.value
    assert err.status == 401
    challenge = err.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="hpc-billing"')
    if error:
        assert f'error="{error}"' in challenge
    assert "right" not in err.detail


def test_authenticate_accepts_the_scheme_in_any_case():
    table = parse_tokens(_line("right", "account:x"))
    assert authenticate(table, "Bearer right") == parse_scope("account:x")
    assert authenticate(table, "bearer right") == parse_scope("account:x")


@pytest.mark.parametrize("table", [None, parse_tokens("")])
def test_without_tokens_the_api_answers_no_one(table):
    with pytest.raises(ApiError) as info:
        authenticate(table, "Bearer anything")
    assert info.value.status == 401
    assert "no tokens configured" in info.value.detail


def test_scope_checks_raise_403():
    scope = parse_scope("account:physics")
    scope.require_account("physics")
    with pytest.raises(ApiError) as info:
        scope.require_account("chemistry")
    assert info.value.status == 403
    with pytest.raises(ApiError) as info:
        scope.require_all("the run log")
    assert info.value.status == 403
    ALL.require_all("the run log")
