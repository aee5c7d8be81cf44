"""Errors as RFC 9457 (RFC 7807) problem details: ``application/problem+json``.

Design notes: docs/design/web.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

from flask import Response, json

PROBLEM_MIMETYPE = "application/problem+json"

_URN = "urn:hpc-billing:problem:"
INVALID_PARAMETERS = _URN + "invalid-parameters"
UNAUTHORIZED = _URN + "unauthorized"
FORBIDDEN = _URN + "forbidden"
NOT_FOUND = _URN + "not-found"
UNAVAILABLE = _URN + "unavailable"
INTERNAL = _URN + "internal"
BLANK = "about:blank"


def status_title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class ApiError(Exception):
    """An error a view answers with: status, problem type, human detail, and for 400 the
    parameters that were wrong. Never put secrets, SQL or exception text in ``detail``."""

    def __init__(self, status: int, detail: str, *, type_: str = BLANK,
                 title: str | None = None,
                 invalid_params: Iterable[tuple[str, str]] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type_
        self.title = title or status_title(status)
        self.invalid_params = [] if invalid_params is None else list(invalid_params)
        self.headers = dict(headers or {})


def invalid(params: Iterable[tuple[str, str]], detail: str | None = None) -> ApiError:
    """A 400 naming each bad parameter with its reason."""
    params = list(params)
    if detail is None:
        names = ", ".join(dict.fromkeys(name for name, _ in params))
        detail = f"invalid parameter(s): {names}" if names else "invalid request"
    return ApiError(400, detail, type_=INVALID_PARAMETERS, title="Invalid parameters",
                    invalid_params=params)


def problem_response(status: int, detail: str, *, type_: str = BLANK, title: str | None = None,
                     invalid_params: Iterable[tuple[str, str]] | None = None,
                     headers: Mapping[str, str] | None = None,
                     extra: Mapping[str, Any] | None = None) -> Response:
    body: dict[str, Any] = {"type": type_, "title": title or status_title(status),
                            "status": status, "detail": detail}
    params = list(invalid_params or ())
    if params:
        body["invalid_params"] = [{"name": name, "reason": reason} for name, reason in params]
    if extra:
        body.update(extra)
    response = Response(json.dumps(body) + "\n", status=status, mimetype=PROBLEM_MIMETYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def error_response(err: ApiError) -> Response:
    return problem_response(err.status, err.detail, type_=err.type, title=err.title,
                            invalid_params=err.invalid_params, headers=err.headers)
