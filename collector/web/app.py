"""The Flask app factory (``create_app``), ``/metrics``, ``/openapi.yaml`` and error answers.

The app serves ``/healthz`` and ``/readyz`` (``probes``), ``/metrics`` (``metrics``),
``/openapi.yaml`` (the API contract: docs/api/openapi.yaml, the one copy, packaged by the
build) and ``/api/v1/*`` (``api``; only it needs a token). Every error is
``application/problem+json`` and every response carries ``X-Request-ID``; an unexpected
exception is logged once (redacted) and answered 500, a database that cannot be reached
503. It never imports the scheduler, the pipeline or Slurm code (DESIGN.md §2).
"""

from __future__ import annotations

import importlib.resources
import logging
import secrets
import traceback
from collections.abc import Callable
from datetime import tzinfo
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from collector.health import Health
from collector.settings import Settings
from collector.store.db import Sessions, database_unavailable, head_revision, redact_url
from collector.web import api, metrics, probes
from collector.web.auth import TokenTable, load_tokens
from collector.web.problems import (
    INTERNAL,
    UNAVAILABLE,
    ApiError,
    error_response,
    problem_response,
    status_title,
)
from collector.web.state import EXTENSION, WebState, web_state

log = logging.getLogger("hpc_billing.web")

OPENAPI_RESOURCE = "openapi.yaml"
OPENAPI_MIMETYPE = "application/yaml"
# In a source checkout (an editable install) the document is read where it is kept.
OPENAPI_SOURCE = Path(__file__).resolve().parents[2] / "docs" / "api" / "openapi.yaml"


def openapi_document() -> bytes:
    """The API contract: the copy a wheel ships inside this package (setup.py's build step
    copies docs/api/openapi.yaml there), else docs/api/openapi.yaml of the checkout."""
    packaged = importlib.resources.files(__package__).joinpath(OPENAPI_RESOURCE)
    if packaged.is_file():
        return packaged.read_bytes()
    return OPENAPI_SOURCE.read_bytes()


bp = Blueprint("service", __name__)


@bp.get("/metrics")
def metrics_text() -> Response:
    return Response(generate_latest(web_state().registry), status=200,
                    headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


@bp.get("/openapi.yaml")
def openapi_yaml() -> Response:
    return Response(web_state().openapi, status=200, mimetype=OPENAPI_MIMETYPE)


def _redactor(settings: Settings, engine: Any) -> Callable[[str], str]:
    secrets_to_hide: list[tuple[str, str]] = []
    urls = [settings.database_url]
    url = getattr(engine, "url", None)
    if url is not None:
        urls.append(url.render_as_string(hide_password=False))
    for value in urls:
        if value:
            secrets_to_hide.append((value, redact_url(value)))
    password = getattr(url, "password", None)

    def redact(text: str) -> str:
        for raw, shown in secrets_to_hide:
            text = text.replace(raw, shown)
        if password:
            text = text.replace(str(password), "***")
        return text

    return redact


def create_app(settings: Settings, *, engine: Any, sessions: Sessions | Callable[[], Any],
               health: Health, registry: Any = None,
               period_timezone: tzinfo | None = None) -> Flask:
    """The web app. Reads the tokens file (``TokenFileError``, a SettingsError, lists
    every bad line) and the OpenAPI document once, here.

    ``engine``/``sessions``: the database (sessions are opened per request and closed at
    its end, in READ ONLY transactions). ``health``: the scheduler's health state.
    ``registry``: a prometheus_client CollectorRegistry for ``/metrics``; None builds the
    collector's own (``metrics.build_registry``), whose current billing period begins in
    ``period_timezone`` (the configured card's zone; None: see ``metrics``).
    """
    tokens: TokenTable | None = (load_tokens(settings.api_tokens_file)
                                 if settings.api_tokens_file else None)
    if tokens is not None and len(tokens) == 0:
        log.warning("%s holds no token: the API answers no one", settings.api_tokens_file)
    if registry is None:
        registry = metrics.build_registry(sessions=sessions, health=health, settings=settings,
                                          period_timezone=period_timezone)
    redact = _redactor(settings, engine)
    head = head_revision()
    app = Flask("collector.web")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # The API takes no request bodies.
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    app.extensions[EXTENSION] = WebState(
        settings=settings, engine=engine, sessions=sessions, health=health, tokens=tokens,
        registry=registry, openapi=openapi_document(), head=head,
        checker=probes.make_checker(settings, sessions, head=head, redact=redact),
        db_timeout_s=probes.DB_TIMEOUT_S, statement_timeout_s=api.STATEMENT_TIMEOUT_S,
        redact=redact)
    app.register_blueprint(probes.bp)
    app.register_blueprint(bp)
    app.register_blueprint(api.bp)
    app.before_request(_request_id)
    app.after_request(_headers)
    app.register_error_handler(ApiError, error_response)
    for code in range(400, 600):
        try:
            app.register_error_handler(code, _http_error)
        except (KeyError, ValueError):
            continue  # not a status werkzeug has an exception for
    app.register_error_handler(Exception, _unexpected)
    return app


def _request_id() -> None:
    g.request_id = secrets.token_hex(8)


def _headers(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id:
        response.headers["X-Request-ID"] = request_id
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def _http_error(err: Any) -> Response:
    """werkzeug's HTTP errors (404, 405 ...), registered by status code: the web package
    imports flask, not werkzeug (DESIGN.md §2)."""
    status = int(getattr(err, "code", None) or 500)
    headers = {}
    valid_methods = getattr(err, "valid_methods", None)
    if status == 405 and valid_methods:
        headers["Allow"] = ", ".join(sorted(valid_methods))
    detail = {
        404: f"no endpoint {request.path!r} (see /openapi.yaml)",
        405: f"{request.method} is not allowed here; the API is read-only",
    }.get(status, getattr(err, "description", None) or "")
    return problem_response(status, detail or status_title(status),
                            title=getattr(err, "name", None) or status_title(status),
                            headers=headers)


def _unexpected(exc: Exception) -> Response:
    request_id = g.get("request_id") or secrets.token_hex(8)
    redact = web_state().redact
    if database_unavailable(exc):
        first = str(exc).splitlines()[0] if str(exc) else ""
        log.warning("request %s %s (request id %s): database unavailable: %s",
                    request.method, request.path, request_id,
                    redact(f"{type(exc).__name__}: {first}"))
        return problem_response(
            503, f"the database is not available; try again later (request id {request_id})",
            type_=UNAVAILABLE, headers={"Retry-After": "5"}, extra={"request_id": request_id})
    # One log record with the traceback, the database URL and password redacted.
    text = "".join(traceback.format_exception(exc))
    log.error("request %s %s failed (request id %s):\n%s", request.method, request.path,
              request_id, redact(text).rstrip())
    return problem_response(
        500, f"internal error; the server log has the details under request id {request_id}",
        type_=INTERNAL, extra={"request_id": request_id})
