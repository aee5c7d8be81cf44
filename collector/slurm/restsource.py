"""The slurmrestd source: accounting from ``GET /slurmdb/v0.0.NN/jobs``, NN = 36..45.

Design notes: docs/design/slurm.md.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import re
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from billing.records import FetchStats, QuarantinedRecord, Window
from collector.slurm.jsonparse import (
    KNOWN_VERSIONS,
    check_jobs_document,
    document_info,
    parse_sacct_json,
)
from collector.slurm.source import Item, SourceError, UnchangedLookup

log = logging.getLogger(__name__)
OPENAPI_PATH = "/openapi/v3"
# Newest first: the order in which versions are tried when there is no listing.
VERSIONS = tuple(f"v0.0.{n}" for n in sorted(KNOWN_VERSIONS, reverse=True))
_JOBS_PATH_RE = re.compile(r"^/slurmdb/(v0\.0\.(\d+))/jobs/?$")
# The version chosen per slurmrestd URL, for the life of the process: the daemon builds a
# new source for every poll, and a listing is megabytes. (version, how, versions listed)
_CHOSEN: dict[str, tuple[str, str, tuple[str, ...]]] = {}


def forget_api_versions() -> None:
    """Forget every remembered choice (the next fetch of each source chooses again)."""
    _CHOSEN.clear()
# slurm_errno.h: ESLURM_REST_EMPTY_RESULT, "Nothing found with query".
EMPTY_RESULT = 9003
_BODY_EXCERPT = 500
_USER_AGENT = "hpc-billing"


class SlurmrestdError(SourceError):
    """slurmrestd could not deliver a window. Messages never contain the token."""


class SlurmrestdConnectionError(SlurmrestdError):
    """No connection: refused, no such socket, name not resolved, TLS failure."""


class SlurmrestdTimeout(SlurmrestdError):
    """No (complete) answer within the timeout."""


class SlurmrestdHTTPError(SlurmrestdError):
    """An HTTP status other than 200 (401: the user or token was refused)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class SlurmrestdAPIError(SlurmrestdError):
    """HTTP 200 whose ``errors`` array reports a failure (other than "nothing found")."""

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.errors = errors


class _UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix stream socket (slurmrestd ``unix:/path`` listeners)."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def read_token_file(path: str) -> str:
    """The JWT in ``path``: a ``SLURM_JWT=...`` line (what ``scontrol token`` prints,
    optionally after ``export``) or the bare token. Comments and blank lines are skipped."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise SlurmrestdError(f"slurmrestd: cannot read the token file {path!r}: "
                              f"{exc.strerror}") from None
    bare: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].strip()
        if line.startswith("SLURM_JWT="):
            return _clean_token(line[len("SLURM_JWT="):], path)
        if bare is None:
            bare = line
    if bare is None:
        raise SlurmrestdError(f"slurmrestd: the token file {path!r} is empty")
    return _clean_token(bare, path)


def _clean_token(value: str, path: str) -> str:
    token = value.strip().strip("'\"")
    if not token or any(c.isspace() for c in token) or "=" in token.rstrip("="):
        raise SlurmrestdError(f"slurmrestd: the token file {path!r} does not hold a token "
                              f"(expected SLURM_JWT=<token> or the token alone)")
    return token


def _whole_seconds(dt: datetime, *, round_up: bool) -> datetime:
    dt = dt.astimezone(UTC)
    if round_up and dt.microsecond:
        return dt.replace(microsecond=0) + timedelta(seconds=1)
    return dt.replace(microsecond=0)


def _fold(dt: datetime, tz: tzinfo) -> timedelta:
    """How far apart the two instants of ``dt``'s local wall time in ``tz`` are (zero
    unless the wall time falls in a DST fold, where it names two instants)."""
    wall = dt.astimezone(tz).replace(tzinfo=None)
    first = wall.replace(tzinfo=tz, fold=0).utcoffset() or timedelta(0)
    second = wall.replace(tzinfo=tz, fold=1).utcoffset() or timedelta(0)
    return abs(first - second)


def server_time(dt: datetime, tz: tzinfo, *, lower: bool) -> str:
    """``dt`` as the percent-encoded ISO wall time slurmrestd reads in its zone ``tz``.

    In a DST fold the wall time is ambiguous; a lower bound is moved earlier and an upper
    bound later by the fold, so whichever instant slurmrestd picks, the window only grows.
    """
    fold = _fold(dt, tz)
    if fold:
        dt = dt - fold if lower else dt + fold
    text = dt.astimezone(tz).strftime("%Y-%m-%dT%H:%M:%S")
    return urllib.parse.quote(text, safe="")


def _epoch(value: Any) -> int | None:
    """A job time in any form Slurm prints (epoch int, or ``{set, infinite, number}``);
    0 when unset, None when it is not a time at all."""
    if value is None:
        return 0
    if isinstance(value, dict):
        if value.get("set") is False or value.get("infinite") is True:
            return 0
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def in_window(job: Any, since: int, until: int) -> bool:
    """sacct's rule without --state: Eligible < until and (End >= since or not ended).
    Jobs never eligible (held: Eligible unknown) are in no window. A job whose times do
    not read (not an object, no ``time`` object, a time that is no number) passes, so
    that the parser quarantines it instead of it vanishing here."""
    if not isinstance(job, dict):
        return True
    times = job.get("time")
    if not isinstance(times, dict):
        return True
    eligible = _epoch(times.get("eligible"))
    end = _epoch(times.get("end"))
    if eligible is None or end is None:
        return True
    return 0 < eligible < until and (end == 0 or end >= since)


class SlurmrestdSource:
    """Source: one window of accounting from slurmrestd's ``/slurmdb/v0.0.NN/jobs``.

    ``url``: ``http://host:port``, ``https://host:port`` (optionally with a path prefix,
    for a proxy) or ``unix:/path/to/socket``. ``user`` / ``token`` / ``token_file``: the
    ``X-SLURM-USER-NAME`` and ``X-SLURM-USER-TOKEN`` headers (JWT, rest_auth/jwt); the
    file, when given, wins and is re-read at every fetch. Headers are sent only when
    configured: a Unix socket with rest_auth/local needs (and accepts) none.
    ``timeout_s`` bounds each request; ``cluster`` is sent as the ``cluster`` parameter
    and used for jobs without one; ``max_window_s`` is the longest span one request
    covers; ``server_timezone`` is the zone slurmrestd reads times in (its TZ).
    """

    name = "slurmrestd"
    windowed = True
    skips_unchanged = False   # JSON: every job is parsed (``unchanged`` is ignored)

    def __init__(self, *, url: str, user: str | None, token: str | None,
                 token_file: str | None, timeout_s: float, cluster: str | None,
                 max_window_s: float = 3600, server_timezone: str | tzinfo = "UTC") -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        if max_window_s < 1:
            raise ValueError(f"max_window_s must be at least 1 second, got {max_window_s!r}")
        self.url = url.strip().rstrip("/")
        self.user = user or None
        self.token = token or None
        self.token_file = token_file or None
        self.timeout_s = float(timeout_s)
        self.cluster = cluster or None
        self.max_window_s = math.ceil(max_window_s)
        self.server_tz = (ZoneInfo(server_timezone) if isinstance(server_timezone, str)
                          else server_timezone)
        self._connect, self._prefix, self._display = self._parse_url(self.url)
        self._stats = FetchStats()
        self._version: str | None = None          # the API version in use, once chosen
        self._negotiated_by: str | None = None    # "openapi" or "probe"
        self._offered: list[str] = []             # versions /openapi/v3 listed
        self._renegotiations = 0
        remembered = _CHOSEN.get(self._display)
        if remembered is not None:
            self._version, how, offered = remembered
            self._negotiated_by, self._offered = f"{how}, remembered", list(offered)

    # ------------------------------------------------------------------ configuration

    def _parse_url(self, url: str) -> tuple[Callable[[], http.client.HTTPConnection], str, str]:
        if url.startswith("unix:"):
            path = url[len("unix:"):]
            if not path.startswith("/"):
                raise ValueError(f"slurmrestd URL {url!r}: a unix: URL needs an absolute "
                                 f"socket path (unix:/run/slurmrestd/slurmrestd.sock)")
            return (lambda: _UnixHTTPConnection(path, self.timeout_s)), "", url
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"slurmrestd URL {url!r}: expected http(s)://host:port or "
                             f"unix:/path/to/socket")
        if parts.username or parts.password:
            raise ValueError("slurmrestd URL: put credentials in the token (file), not the URL")
        host, port = parts.hostname, parts.port
        connect: Callable[[], http.client.HTTPConnection]
        if parts.scheme == "https":
            context = ssl.create_default_context()

            def connect() -> http.client.HTTPConnection:
                return http.client.HTTPSConnection(host, port, timeout=self.timeout_s,
                                                   context=context)
        else:
            def connect() -> http.client.HTTPConnection:
                return http.client.HTTPConnection(host, port, timeout=self.timeout_s)
        return connect, parts.path.rstrip("/"), f"{parts.scheme}://{parts.netloc}{parts.path}"

    def _current_token(self) -> str | None:
        if self.token_file:
            return read_token_file(self.token_file)
        return self.token

    # ------------------------------------------------------------------ Source

    @property
    def stats(self) -> FetchStats:
        return self._stats

    def fetch(self, window: Window | None, *,
              unchanged: UnchangedLookup | None = None) -> Iterator[Item]:
        if window is None:
            raise SourceError("the slurmrestd source needs a window (it never reads everything)")
        return self._fetch(window)

    def chunks(self, window: Window) -> list[tuple[int, int]]:
        """The window in whole epoch seconds (since floored, until rounded up, as sacct's
        -S/-E), cut into spans of at most ``max_window_s``."""
        since = int(_whole_seconds(window.since, round_up=False).timestamp())
        until = int(_whole_seconds(window.until, round_up=True).timestamp())
        out = []
        cursor = since
        while cursor < until:
            nxt = min(cursor + self.max_window_s, until)
            out.append((cursor, nxt))
            cursor = nxt
        return out

    def _fetch(self, window: Window) -> Iterator[Item]:
        token = self._current_token()          # once per fetch: picks up a rotated token
        chunks = self.chunks(window)
        counters: dict[str, Any] = {"requests": 0, "bytes": 0, "wait": 0.0, "returned": 0,
                                    "kept": 0, "quarantined": 0}
        documents: dict[str, str | None] = {"data_parser": None, "slurm": None}

        def publish() -> None:
            self._stats = FetchStats(
                lines=0, bytes=counters["bytes"], slurm_seconds=counters["wait"],
                extra={"url": self._display, "requests": counters["requests"],
                       "chunks": len(chunks), "jobs_returned": counters["returned"],
                       "jobs": counters["kept"], "quarantined": counters["quarantined"],
                       "api_version": self._version, "negotiated_by": self._negotiated_by,
                       "offered": list(self._offered), "renegotiations": self._renegotiations,
                       "data_parser": documents["data_parser"],
                       "slurm_release": documents["slurm"]})

        publish()
        try:
            for index, (start, end) in enumerate(chunks):
                jobs, meta = self._get_jobs(start, end, token, counters)
                info = document_info({"meta": meta})
                documents["data_parser"] = info.plugin or documents["data_parser"]
                documents["slurm"] = info.slurm_release or documents["slurm"]
                counters["returned"] += len(jobs)
                # Exactly sacct's rule for this chunk, and each job once: the chunks a
                # job is in are consecutive, so it is yielded by the first of them.
                previous = chunks[index - 1] if index else None
                kept = [job for job in jobs
                        if in_window(job, start, end)
                        and (previous is None or not isinstance(job, dict)
                             or not in_window(job, *previous))]
                counters["kept"] += len(kept)
                del jobs
                try:
                    for item in parse_sacct_json({"meta": meta, "jobs": kept},
                                                 source=self.name,
                                                 default_cluster=self.cluster):
                        if type(item) is QuarantinedRecord:
                            counters["quarantined"] += 1
                        yield item
                except ValueError as exc:      # not an accounting jobs document
                    raise SlurmrestdError(f"slurmrestd {self._display}: GET "
                                          f"{self._jobs_path(self._version)}: {exc}") from None
                publish()
        finally:
            publish()

    # ------------------------------------------------------------------ versions

    @property
    def api_version(self) -> str | None:
        """The data version in use (``v0.0.44``), None until the first request."""
        return self._version

    @staticmethod
    def _jobs_path(version: str | None) -> str:
        return f"/slurmdb/{version or 'v0.0.NN'}/jobs"

    def _choose(self, version: str, how: str) -> None:
        if version != self._version:
            log.info("slurmrestd %s: using %s (%s; listed: %s)", self._display,
                     self._jobs_path(version), how, ", ".join(self._offered) or "no listing")
        self._version, self._negotiated_by = version, how
        _CHOSEN[self._display] = (version, how, tuple(self._offered))

    def _candidates(self, token: str | None, counters: dict[str, Any]) -> list[str]:
        """The versions to try, best first: the newest the server lists under
        ``/openapi/v3`` (one), or every known one, newest first, when it lists none."""
        self._offered = self._listed_versions(token, counters)
        if not self._offered:
            self._negotiated_by = "probe"
            return list(VERSIONS)
        known = [v for v in self._offered if v in VERSIONS]
        if not known:
            log.warning("slurmrestd %s: it serves only %s, which this collector does not "
                        "know; reading %s by shape", self._display, ", ".join(self._offered),
                        self._offered[-1])
        self._negotiated_by = "openapi"
        return [(known or self._offered)[-1]]

    def _listed_versions(self, token: str | None, counters: dict[str, Any]) -> list[str]:
        """The ``/slurmdb/v0.0.NN/jobs`` versions ``/openapi/v3`` lists, oldest first; []
        when there is no usable listing. Auth and connection failures are raised."""
        status, reason, body = self._request(OPENAPI_PATH, token, counters)
        if status in (401, 403):
            self._raise_http(OPENAPI_PATH, status, reason, body, token)
        if status != 200:
            log.info("slurmrestd %s: GET %s answered HTTP %s; trying the jobs paths",
                     self._display, OPENAPI_PATH, status)
            return []
        try:
            spec = json.loads(body)
        except ValueError:
            return []
        paths = spec.get("paths") if isinstance(spec, dict) else None
        if not isinstance(paths, dict):
            return []
        found: dict[int, str] = {}
        for path in paths:
            match = _JOBS_PATH_RE.match(str(path))
            if match:
                found[int(match.group(2))] = match.group(1)
        if not found:
            raise SlurmrestdError(
                f"slurmrestd {self._display}: {OPENAPI_PATH} lists no /slurmdb/v0.0.NN/jobs "
                f"path: is slurmrestd running with the slurmdbd plugin (-s slurmdbd or the "
                f"default plugins) and connected to slurmdbd?")
        return [found[n] for n in sorted(found)]

    # ------------------------------------------------------------------ HTTP

    def _query(self, start: int, end: int) -> str:
        since = datetime.fromtimestamp(start, UTC)
        until = datetime.fromtimestamp(end, UTC)
        params = [f"start_time={server_time(since, self.server_tz, lower=True)}",
                  f"end_time={server_time(until, self.server_tz, lower=False)}"]
        if self.cluster:
            params.append("cluster=" + urllib.parse.quote(self.cluster, safe=""))
        return "&".join(params)

    def _get_jobs(self, start: int, end: int, token: str | None,
                  counters: dict[str, Any]) -> tuple[list[Any], Any]:
        """The jobs list and ``meta`` of one window, from the remembered version or, when
        there is none or it is gone (404), from a newly chosen one."""
        query = self._query(start, end)
        if self._version is not None:
            path = self._jobs_path(self._version)
            status, reason, body = self._request(f"{path}?{query}", token, counters)
            if status != 404:
                return self._jobs_answer(path, status, reason, body, token)
            log.warning("slurmrestd %s: GET %s answered 404 (upgraded?); choosing the API "
                        "version again", self._display, path)
            self._version = None
            _CHOSEN.pop(self._display, None)
            self._renegotiations += 1
        tried = []
        for version in self._candidates(token, counters):
            path = self._jobs_path(version)
            status, reason, body = self._request(f"{path}?{query}", token, counters)
            if status == 404:
                tried.append(version)
                continue
            answer = self._jobs_answer(path, status, reason, body, token)
            self._choose(version, self._negotiated_by or "probe")
            return answer
        listed = f" (listed by {OPENAPI_PATH})" if self._offered else ""
        raise SlurmrestdHTTPError(
            f"slurmrestd {self._display}: no accounting jobs path answers: GET "
            f"/slurmdb/{{{', '.join(tried)}}}/jobs{listed} all gave HTTP 404; this collector "
            f"reads {VERSIONS[-1]}..{VERSIONS[0]}", 404)

    def _request(self, target: str, token: str | None,
                 counters: dict[str, Any]) -> tuple[int, str, bytes]:
        headers = {"Accept": "application/json", "User-Agent": _USER_AGENT}
        if self.user:
            headers["X-SLURM-USER-NAME"] = self.user
        if token:
            headers["X-SLURM-USER-TOKEN"] = token
        where = f"slurmrestd {self._display}: GET {target.partition('?')[0]}"

        def scrub(text: str) -> str:
            return text.replace(token, "***") if token else text

        conn = self._connect()
        started = time.perf_counter()
        try:
            conn.request("GET", f"{self._prefix}{target}", headers=headers)
            response = conn.getresponse()
            body = response.read()
            status, reason = response.status, response.reason
        except TimeoutError:
            raise SlurmrestdTimeout(f"{where}: no answer within {self.timeout_s:g}s") from None
        except ConnectionRefusedError:
            raise SlurmrestdConnectionError(
                f"{where}: connection refused (is slurmrestd running and listening there?)") from None
        except FileNotFoundError:
            raise SlurmrestdConnectionError(f"{where}: no such socket") from None
        except ssl.SSLError as exc:
            raise SlurmrestdConnectionError(scrub(f"{where}: TLS error: {exc}")) from None
        except (OSError, http.client.HTTPException) as exc:
            detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise SlurmrestdConnectionError(scrub(f"{where}: {detail}")) from None
        finally:
            counters["wait"] += time.perf_counter() - started
            counters["requests"] += 1
            conn.close()
        counters["bytes"] += len(body)
        return status, reason, body

    def _raise_http(self, path: str, status: int, reason: str, body: bytes,
                    token: str | None) -> None:
        where = f"slurmrestd {self._display}: GET {path}"
        doc: Any = None
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if isinstance(errors, list) and errors:
            detail = _describe_errors(errors)
        else:
            detail = body[:_BODY_EXCERPT].decode("utf-8", "replace").strip() or "(empty body)"
        hint = (" (the user name or token was refused: check the token's user, "
                "lifespan and the token file)" if status in (401, 403) else "")
        message = f"{where}: HTTP {status} {reason}{hint}: {detail}"
        raise SlurmrestdHTTPError(message.replace(token, "***") if token else message, status)

    def _jobs_answer(self, path: str, status: int, reason: str, body: bytes,
                     token: str | None) -> tuple[list[Any], Any]:
        where = f"slurmrestd {self._display}: GET {path}"

        def scrub(text: str) -> str:
            return text.replace(token, "***") if token else text

        if status != 200:
            self._raise_http(path, status, reason, body, token)
        doc: Any = None
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise SlurmrestdError(scrub(f"{where}: the answer is not a JSON object: "
                                        f"{body[:_BODY_EXCERPT].decode('utf-8', 'replace')!r}"))
        errors = doc.get("errors")
        failures = [e for e in (errors or []) if not _is_empty_result(e)]
        if failures:
            raise SlurmrestdAPIError(scrub(f"{where}: slurmrestd reports "
                                           f"{_describe_errors(failures)}"), failures)
        meta = doc.get("meta")
        if not document_info({"meta": meta}).plugin:
            # No usable meta: the path names the version (the reader needs it only for
            # dbv0.0.36/37's start times).
            meta = {"plugin": {"type": f"openapi/db{path.split('/')[2]}"}}
        jobs = doc.get("jobs")
        if jobs is None and errors:
            return [], meta                    # "Nothing found": no jobs list needed
        if not isinstance(jobs, list):
            raise SlurmrestdError(f"{where}: the answer has no 'jobs' list")
        try:
            check_jobs_document(doc)           # before the window filter drops anything
        except ValueError as exc:
            raise SlurmrestdError(f"{where}: {exc}") from None
        return jobs, meta


def _is_empty_result(error: Any) -> bool:
    return isinstance(error, dict) and error.get("error_number") == EMPTY_RESULT


def _describe_errors(errors: list[Any]) -> str:
    parts = []
    for error in errors[:5]:
        if isinstance(error, dict):
            text = error.get("error") or error.get("description") or "error"
            number = error.get("error_number")
            source = error.get("source")
            parts.append(f"{text}" + (f" (error {number}" + (f" in {source}" if source else "")
                                      + ")" if number is not None else ""))
        else:
            parts.append(str(error))
    more = f" and {len(errors) - 5} more" if len(errors) > 5 else ""
    return "; ".join(parts) + more
