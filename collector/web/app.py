"""The Flask app factory: probes, metrics, the OpenAPI document and the read API.

This module owns how the web app is put together (``create_app``) and how it answers
when something goes wrong:

- ``/healthz`` and ``/readyz`` (``collector.web.probes``), ``/metrics`` (Prometheus text,
  from ``collector.web.metrics.build_registry`` unless a registry is given),
  ``/openapi.yaml`` (the API contract, shipped in this package as ``openapi.yaml``, a
  copy of docs/api/openapi.yaml that a test keeps identical) and ``/api/v1/*``
  (``collector.web.api``, bearer tokens from ``collector.web.auth``). Only ``/api/v1``
  needs a token.
- Every error is ``application/problem+json`` (``collector.web.problems``): werkzeug's
  HTTP errors (404, 405 with ``Allow`` ...), the API's 400/401/403/404/503, and any
  unexpected exception, which becomes a 500 whose body says only that it failed and
  gives a request id. The exception is logged once with that id (traceback included,
  the database URL redacted); a database that cannot be reached is a 503 instead.
- Every response carries ``X-Request-ID``.

The app is served by waitress (``hpc-billing run``) or gunicorn (``wsgi.py``), never by
Flask's development server. It never imports the scheduler, the pipeline or Slurm code
(DESIGN.md §2): the health state is its only window on the scheduler.
"""

from __future__ import annotations

import importlib.resources
import logging
import secrets
import traceback
from collections.abc import Callable
from datetime import tzinfo
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from collector.health import Health
from collector.settings import Settings
from collector.store.db import database_unavailable, head_revision, redact_url
from collector.web import api, probes
from collector.web.auth import TokenTable, load_tokens
from collector.web.problems import (
    INTERNAL,
    UNAVAILABLE,
    ApiError,
    error_response,
    problem_response,
    status_title,
)

log = logging.getLogger("hpc_billing.web")

OPENAPI_RESOURCE = "openapi.yaml"
OPENAPI_MIMETYPE = "application/yaml"


def openapi_document() -> bytes:
    """The API contract as shipped inside this package."""
    return importlib.resources.files(__package__).joinpath(OPENAPI_RESOURCE).read_bytes()


def _build_registry(settings: Settings, sessions: Callable[[], Any], health: Health,
                    period_timezone: tzinfo | None) -> Any:
    """The Prometheus registry of ``collector.web.metrics``, or None when that module is
    not part of this build (then ``/metrics`` answers 503)."""
    try:
        from collector.web import metrics
    except ImportError as exc:
        if exc.name != "collector.web.metrics":
            raise
        log.warning("collector.web.metrics is not available: /metrics answers 503")
        return None
    return metrics.build_registry(sessions=sessions, health=health, settings=settings,
                                  period_timezone=period_timezone)


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


def create_app(settings: Settings, *, engine: Any, sessions: Callable[[], Any], health: Health,
               registry: Any = None, period_timezone: tzinfo | None = None) -> Flask:
    """The web app. Reads the tokens file (``TokenFileError``, a SettingsError, lists
    every bad line) and the OpenAPI document once, here.

    ``engine``/``sessions``: the database (sessions are opened per request and closed
    at its end, in READ ONLY transactions). ``health``: the scheduler's health state.
    ``registry``: a prometheus_client CollectorRegistry for ``/metrics``; None builds the
    collector's own with ``collector.web.metrics.build_registry``.
    """
    tokens: TokenTable | None = (load_tokens(settings.api_tokens_file)
                                 if settings.api_tokens_file else None)
    if tokens is not None and len(tokens) == 0:
        log.warning("%s holds no token: the API answers no one", settings.api_tokens_file)
    if registry is None:
        registry = _build_registry(settings, sessions, health, period_timezone)
    openapi = openapi_document()
    redact = _redactor(settings, engine)

    app = Flask("collector.web")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # The API takes no request bodies.
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    app.extensions["hpc_billing"] = {"settings": settings, "engine": engine,
                                     "sessions": sessions, "health": health,
                                     "tokens": tokens, "registry": registry}

    app.register_blueprint(probes.make_blueprint(settings=settings, sessions=sessions,
                                                 health=health, head=head_revision(),
                                                 redact=redact))
    app.register_blueprint(api.make_blueprint(sessions=sessions, tokens=tokens))

    @app.get("/metrics")
    def metrics() -> Response:
        if registry is None:
            return problem_response(503, "metrics are not available in this build",
                                    type_=UNAVAILABLE)
        return Response(generate_latest(registry), status=200,
                        headers={"Content-Type": CONTENT_TYPE_LATEST,
                                 "Cache-Control": "no-store"})

    @app.get("/openapi.yaml")
    def openapi_yaml() -> Response:
        return Response(openapi, status=200, mimetype=OPENAPI_MIMETYPE)

    @app.before_request
    def _request_id() -> None:
        g.request_id = secrets.token_hex(8)

    @app.after_request
    def _headers(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id:
            response.headers["X-Request-ID"] = request_id
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError) -> Response:
        return error_response(err)

    def _http_error(err: Any) -> Response:
        # werkzeug's HTTP errors (404, 405 ...), registered by status code below: the web
        # package imports flask, not werkzeug (DESIGN.md §2).
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

    for code in range(400, 600):
        try:
            app.register_error_handler(code, _http_error)
        except (KeyError, ValueError):
            continue  # not a status werkzeug has an exception for

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        request_id = g.get("request_id") or secrets.token_hex(8)
        if database_unavailable(exc):
            log.warning("request %s %s (request id %s): database unavailable: %s",
                        request.method, request.path, request_id,
                        redact(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
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

    return app
