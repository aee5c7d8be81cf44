"""SlurmrestdSource against a tiny local HTTP server (TCP on 127.0.0.1, and a Unix socket).

The server is the process boundary: it serves the REAL captured slurmrestd answer
(tests/fixtures/slurmrestd-dbv0.0.38-jobs.json, from the lab's Slurm 22.05.8) or scripted
error answers, and records every request, so the tests see exactly what the source sends:
auth headers, the percent-encoded window, the chunks. The real slurmrestd is exercised by
tests/slurm.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from billing.records import JobRecord, QuarantinedRecord, StepUsage, Window
from collector.slurm.jsonparse import parse_sacct_json
from collector.slurm.restsource import (
    EMPTY_RESULT,
    SlurmrestdAPIError,
    SlurmrestdConnectionError,
    SlurmrestdError,
    SlurmrestdHTTPError,
    SlurmrestdSource,
    SlurmrestdTimeout,
    forget_api_versions,
    in_window,
    read_token_file,
    server_time,
)
from collector.slurm.source import SourceError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CAPTURE = json.loads((FIXTURES / "slurmrestd-dbv0.0.38-jobs.json").read_text(encoding="utf-8"))
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3OTUzNjQwMjMsImlhdCI6MTc5NTM2MDQyMywic3VuIjoicm9vdCJ9.c2VjcmV0LXNpZ25hdHVyZQ"
# 2026-11-22T12:46:40Z .. 12:48:20Z: jobs 10, 14, 15 and the first record of 16 qualify.
SINCE, UNTIL = 1795351600, 1795351700


def epoch_window(since: float, until: float) -> Window:
    return Window(datetime.fromtimestamp(since, UTC), datetime.fromtimestamp(until, UTC))


Reply = tuple[int, bytes] | Callable[[dict], tuple[int, bytes]]
NOT_FOUND = (404, json.dumps({"errors": [{"error": "Unable to find requested URL",
                                           "error_number": 9005}]}).encode())


def openapi_listing(versions) -> bytes:
    """What ``GET /openapi/v3`` lists: the slurmdb jobs paths of ``versions`` (and, as a
    real slurmrestd does, other paths that are not jobs)."""
    paths = {"/openapi/v3": {}, "/slurm/v0.0.42/jobs/": {}}
    for version in versions:
        paths[f"/slurmdb/{version}/jobs/"] = {"get": {"operationId": f"slurmdb_{version}_get_jobs"}}
        paths[f"/slurmdb/{version}/job/{{job_id}}"] = {}
    return json.dumps({"openapi": "3.0.3", "info": {"title": "Slurm REST API"},
                       "paths": paths}).encode()


class Recorder:
    """A slurmrestd that serves the jobs path of ``versions`` only (404 for the others)
    and lists them under /openapi/v3 (or answers ``openapi`` there instead). The jobs path
    answers ``replies`` in order, then ``default``; everything asked is recorded."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.replies: list[Reply] = []
        self.default: Reply = (200, json.dumps(CAPTURE).encode())
        self.versions: list[str] = ["v0.0.38"]           # the 22.05 capture's
        self.openapi: Reply | None = None                # None: list self.versions

    @property
    def job_requests(self) -> list[dict]:
        return [r for r in self.requests if "/jobs" in r["path"]]

    def answer(self, request: dict) -> tuple[int, bytes]:
        path = urlsplit(request["path"]).path
        if path.endswith("/openapi/v3"):
            reply = self.openapi if self.openapi is not None else (
                200, openapi_listing(self.versions))
            return reply(request) if callable(reply) else reply
        version = path.split("/slurmdb/")[-1].split("/")[0]
        if "/slurmdb/" not in path or version not in self.versions:
            return NOT_FOUND
        reply = self.replies.pop(0) if self.replies else self.default
        return reply(request) if callable(reply) else reply


def make_handler(recorder: Recorder):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            request = {"path": self.path, "headers": dict(self.headers.items())}
            recorder.requests.append(request)
            status, body = recorder.answer(request)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass                            # the client gave up (the timeout test)

        def log_message(self, *args) -> None:  # quiet
            pass

        def address_string(self) -> str:       # Unix sockets have no client address
            return "local"

    return Handler


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False


def serve(server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    return thread


@pytest.fixture(autouse=True)
def fresh_choices() -> Iterator[None]:
    """Each test starts with no remembered API version (they are per URL, and a port may
    come back in a later test)."""
    forget_api_versions()
    yield
    forget_api_versions()


@pytest.fixture
def http_server() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(recorder))
    server.daemon_threads = True
    server.block_on_close = False
    thread = serve(server)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def unix_server(tmp_path) -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()
    path = str(tmp_path / "slurmrestd.sock")
    server = UnixHTTPServer(path, make_handler(recorder))
    thread = serve(server)
    try:
        yield f"unix:{path}", recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def token_file(tmp_path) -> Path:
    path = tmp_path / "token"
    path.write_text(f"SLURM_JWT={TOKEN}\n")
    path.chmod(0o600)
    return path


def source(url: str, **kwargs) -> SlurmrestdSource:
    options = {"user": "root", "token": None, "token_file": None, "timeout_s": 5, "cluster": "lab"}
    options.update(kwargs)
    return SlurmrestdSource(url=url, **options)


def query(request: dict) -> dict[str, list[str]]:
    return parse_qs(urlsplit(request["path"]).query)


def expected_jobs() -> set[tuple[int, int]]:
    """(job_id, submission) of the captured jobs inside [SINCE, UNTIL) by sacct's rule,
    computed straight from the capture."""
    return {(j["job_id"], j["time"]["submission"]) for j in CAPTURE["jobs"]
            if in_window(j, SINCE, UNTIL)}


def keys(items) -> set[tuple[int, int]]:
    return {(i.job_id_raw, int(i.submit.timestamp())) for i in items if isinstance(i, JobRecord)}


# ------------------------------------------------------------------ requests

def test_sends_auth_headers_and_an_encoded_window(http_server, token_file):
    url, recorder = http_server
    src = source(url, token_file=str(token_file))
    assert (src.name, src.windowed) == ("slurmrestd", True)
    list(src.fetch(epoch_window(SINCE, UNTIL - 0.5)))
    listing, request = recorder.requests
    assert listing["path"] == "/openapi/v3"
    for sent in (listing, request):
        assert sent["headers"]["X-SLURM-USER-NAME"] == "root"
        assert sent["headers"]["X-SLURM-USER-TOKEN"] == TOKEN
    assert request["headers"]["X-SLURM-USER-TOKEN"] == TOKEN
    path = request["path"]
    assert path.startswith("/slurmdb/v0.0.38/jobs?")
    # Colons percent-encoded (raw colons get 400 from 22.05); until rounded up to a second.
    assert "start_time=2026-11-22T12%3A46%3A40&end_time=2026-11-22T12%3A48%3A20" in path
    assert ":" not in urlsplit(path).query
    assert query(request)["cluster"] == ["lab"]


def test_no_headers_when_none_configured(unix_server):
    url, recorder = unix_server
    list(source(url, user=None).fetch(epoch_window(SINCE, UNTIL)))
    assert len(recorder.requests) == 2
    for request in recorder.requests:
        assert not {"X-SLURM-USER-NAME", "X-SLURM-USER-TOKEN"} & set(request["headers"])


def test_token_file_is_read_again_at_every_fetch(http_server, token_file):
    url, recorder = http_server
    src = source(url, token="ignored-when-a-file-is-given", token_file=str(token_file))
    list(src.fetch(epoch_window(SINCE, UNTIL)))
    token_file.write_text("rotated.token.value\n")                  # the bare token form
    list(src.fetch(epoch_window(SINCE, UNTIL)))
    token_file.write_text("# from scontrol token\nexport SLURM_JWT='third.token.x'\n")
    list(src.fetch(epoch_window(SINCE, UNTIL)))
    assert [r["headers"]["X-SLURM-USER-TOKEN"] for r in recorder.job_requests] == [
        TOKEN, "rotated.token.value", "third.token.x"]


def test_token_given_directly(http_server):
    url, recorder = http_server
    list(source(url, token=TOKEN).fetch(epoch_window(SINCE, UNTIL)))
    assert recorder.job_requests[0]["headers"]["X-SLURM-USER-TOKEN"] == TOKEN


@pytest.mark.parametrize("content, message", [
    ("", "is empty"), ("\n# only a comment\n", "is empty"),
    ("OTHER=value\n", "does not hold a token"), ("two words\n", "does not hold a token"),
])
def test_bad_token_files(tmp_path, content, message):
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(SlurmrestdError, match=message):
        read_token_file(str(path))
    with pytest.raises(SlurmrestdError, match="cannot read the token file"):
        read_token_file(str(tmp_path / "missing"))


def test_path_prefix_of_a_proxy_is_kept(http_server):
    url, recorder = http_server
    list(source(url + "/slurm/").fetch(epoch_window(SINCE, UNTIL)))
    assert [r["path"].split("?")[0] for r in recorder.requests] == [
        "/slurm/openapi/v3", "/slurm/slurmdb/v0.0.38/jobs"]


@pytest.mark.parametrize("url", ["ftp://host", "unix:relative.sock", "http://", "http://u:p@host:1"])
def test_bad_urls_are_refused(url):
    with pytest.raises(ValueError):
        source(url)


# ------------------------------------------------------------------ answers

def test_the_real_answer_filtered_to_sacct_window_semantics(http_server):
    """The fake server ignores the window and returns all 23 captured jobs; the source
    keeps exactly the ones sacct -S/-E would list, parsed like sacct --json."""
    url, _ = http_server
    src = source(url)
    items = list(src.fetch(epoch_window(SINCE, UNTIL)))
    assert keys(items) == expected_jobs() == {
        (10, 1795351543), (14, 1795351543), (15, 1795351543), (16, 1795351543)}
    direct_jobs = [i for i in parse_sacct_json(CAPTURE, source="slurmrestd", default_cluster="lab")
                   if isinstance(i, JobRecord)
                   and (i.job_id_raw, int(i.submit.timestamp())) in expected_jobs()]
    assert [i for i in items if isinstance(i, JobRecord)] == direct_jobs
    steps = [i for i in items if isinstance(i, StepUsage)]
    # 14 and 15 (cancelled while pending) have no steps; 10 and the old 16 one batch step.
    assert sorted((s.job_id_raw, s.step) for s in steps) == [(10, "batch"), (16, "batch")]
    stats = src.stats
    assert stats.extra["jobs_returned"] == 23 and stats.extra["jobs"] == 4
    assert stats.extra["requests"] == 2 and stats.bytes == (
        len(json.dumps(CAPTURE).encode()) + len(openapi_listing(["v0.0.38"])))
    assert (stats.extra["api_version"], stats.extra["negotiated_by"], stats.extra["offered"],
            stats.extra["data_parser"], stats.extra["slurm_release"]) == (
        "v0.0.38", "openapi", ["v0.0.38"], "openapi/dbv0.0.38", "22.05.8")
    # The next fetch uses the remembered version: one request.
    list(src.fetch(epoch_window(SINCE, UNTIL)))
    assert src.stats.extra["requests"] == 1 and src.api_version == "v0.0.38"


def test_chunks_bound_each_request_and_yield_each_job_once(unix_server):
    url, recorder = unix_server
    src = source(url, user=None, max_window_s=30)
    # A window over the whole capture, 12:45:00 .. 12:52:00, in 30-second requests.
    items = list(src.fetch(epoch_window(1795351500, 1795351920)))
    windows = [(unquote(query(r)["start_time"][0]), unquote(query(r)["end_time"][0]))
               for r in recorder.job_requests]
    assert len(windows) == 14
    assert windows[0] == ("2026-11-22T12:45:00", "2026-11-22T12:45:30")
    assert windows[-1] == ("2026-11-22T12:51:30", "2026-11-22T12:52:00")
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))    # consecutive
    records = [i for i in items if isinstance(i, JobRecord)]
    assert len(records) == len({(r.job_id_raw, r.submit) for r in records}) == 23
    assert keys(items) == {(j["job_id"], j["time"]["submission"]) for j in CAPTURE["jobs"]}
    assert not [i for i in items if isinstance(i, QuarantinedRecord)]


def test_nothing_found_is_an_empty_answer(http_server):
    url, recorder = http_server
    recorder.default = (200, json.dumps({"meta": {}, "errors": [
        {"description": "Nothing found", "error_number": EMPTY_RESULT,
         "error": "Nothing found with query", "source": "slurmdb_jobs_get"}],
        "jobs": []}).encode())
    assert list(source(url).fetch(epoch_window(SINCE, UNTIL))) == []


def test_unauthorized_is_an_http_error_without_the_token(http_server):
    url, recorder = http_server
    # A server that echoes the token back must not get it into our message.
    recorder.default = lambda request: (401, json.dumps({"errors": [{
        "error": "Authentication failure for " + request["headers"]["X-SLURM-USER-TOKEN"],
        "error_number": 1007}]}).encode())
    with pytest.raises(SlurmrestdHTTPError) as caught:
        list(source(url, token=TOKEN).fetch(epoch_window(SINCE, UNTIL)))
    assert caught.value.status == 401
    text = str(caught.value)
    assert "HTTP 401" in text and "token was refused" in text and "Authentication failure" in text
    assert TOKEN not in text and TOKEN not in repr(caught.value.args)
    assert caught.value.__cause__ is None


def test_errors_array_in_a_200_answer_is_raised(http_server):
    url, recorder = http_server
    recorder.default = (200, json.dumps({"errors": [
        {"error_number": 1007, "error": "Protocol authentication error",
         "source": "slurmdb_jobs_get"}], "jobs": []}).encode())
    with pytest.raises(SlurmrestdAPIError, match="Protocol authentication error") as caught:
        list(source(url, token=TOKEN).fetch(epoch_window(SINCE, UNTIL)))
    assert caught.value.errors[0]["error_number"] == 1007
    assert isinstance(caught.value, SourceError) and TOKEN not in str(caught.value)


@pytest.mark.parametrize("status, body, kind, message", [
    (500, b"Unable to parse time format", SlurmrestdHTTPError, "HTTP 500.*Unable to parse"),
    (400, b"", SlurmrestdHTTPError, r"HTTP 400.*\(empty body\)"),
    (200, b"<html>not json</html>", SlurmrestdError, "not a JSON object"),
    (200, b'{"meta": {}}', SlurmrestdError, "no 'jobs' list"),
])
def test_bad_answers(http_server, status, body, kind, message):
    url, recorder = http_server
    recorder.default = (status, body)
    with pytest.raises(kind, match=message):
        list(source(url, token=TOKEN).fetch(epoch_window(SINCE, UNTIL)))


def test_a_failure_in_a_later_chunk_raises_after_the_earlier_items(http_server):
    url, recorder = http_server
    recorder.replies = [(200, json.dumps(CAPTURE).encode()), (503, b"slurmdbd is down")]
    src = source(url, max_window_s=60)
    seen = []
    with pytest.raises(SlurmrestdHTTPError, match="HTTP 503"):
        for item in src.fetch(epoch_window(SINCE, SINCE + 120)):
            seen.append(item)  # noqa: PERF402 - keeps what came before the failure
    assert keys(seen)                               # the first chunk's jobs came through
    assert src.stats.extra["requests"] == 3                  # the listing and two chunks


def test_connection_refused(tmp_path):
    with socket.socket() as sock:                  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SlurmrestdConnectionError, match="connection refused"):
        list(source(f"http://127.0.0.1:{port}", token=TOKEN).fetch(epoch_window(SINCE, UNTIL)))
    with pytest.raises(SlurmrestdConnectionError, match="no such socket"):
        list(source(f"unix:{tmp_path}/missing.sock").fetch(epoch_window(SINCE, UNTIL)))


def test_timeout(http_server):
    url, recorder = http_server

    def slow(request):
        time.sleep(1.5)
        return 200, json.dumps(CAPTURE).encode()

    recorder.default = slow
    started = time.monotonic()
    with pytest.raises(SlurmrestdTimeout, match="no answer within 0.3s"):
        list(source(url, token=TOKEN, timeout_s=0.3).fetch(epoch_window(SINCE, UNTIL)))
    assert time.monotonic() - started < 1.4


def test_no_window_is_refused():
    with pytest.raises(SourceError, match="needs a window"):
        list(source("http://127.0.0.1:1").fetch(None))


# ------------------------------------------------------------------ time zones

def test_times_are_written_in_slurmrestd_zone():
    from zoneinfo import ZoneInfo

    berlin = ZoneInfo("Europe/Berlin")
    moment = datetime(2026, 11, 22, 12, 46, 40, tzinfo=UTC)
    assert server_time(moment, UTC, lower=True) == "2026-11-22T12%3A46%3A40"
    assert server_time(moment, berlin, lower=True) == "2026-11-22T13%3A46%3A40"


def test_a_dst_fold_widens_the_window():
    """01:30 on 2026-11-01 happens twice in New York (EDT, then EST). slurmrestd may read
    it as either; the lower bound moves an hour earlier, the upper an hour later."""
    from zoneinfo import ZoneInfo

    new_york = ZoneInfo("America/New_York")
    first = datetime(2026, 11, 1, 5, 30, tzinfo=UTC)              # 01:30 EDT
    assert unquote(server_time(first, new_york, lower=True)) == "2026-11-01T00:30:00"
    assert unquote(server_time(first, new_york, lower=False)) == "2026-11-01T01:30:00"
    second = datetime(2026, 11, 1, 6, 30, tzinfo=UTC)             # 01:30 EST
    assert unquote(server_time(second, new_york, lower=False)) == "2026-11-01T02:30:00"
    plain = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    assert unquote(server_time(plain, new_york, lower=True)) == "2026-11-01T07:00:00"


def test_server_timezone_reaches_the_query(http_server):
    url, recorder = http_server
    list(source(url, server_timezone="Europe/Berlin").fetch(epoch_window(SINCE, UNTIL)))
    assert unquote(query(recorder.job_requests[0])["start_time"][0]) == "2026-11-22T13:46:40"


def test_environment_is_not_read():
    # The source takes every setting as an argument (DESIGN §7.1): no variable changes it.
    before = dict(os.environ)
    source("http://127.0.0.1:1")
    assert dict(os.environ) == before


# ------------------------------------------------------------------ JSON agrees with sacct

def test_json_records_equal_the_text_export_but_for_what_22_05_json_lacks():
    """The same cluster captured both ways (sacct-all.json and sacct-wide-header.psv): after
    roll-up every final job is equal field by field, except the fields Slurm 22.05's JSON
    does not carry (uid, db_index), carries wrong (exit codes: always 0:0) or carries
    without the uid (``CANCELLED`` for ``CANCELLED by 0``). TotalCPU (truncated to ms) and
    the job line's ConsumedEnergyRaw (0 for a job without an allocation) agree because
    jsonparse computes them as sacct prints them."""
    import dataclasses

    from billing.rollup import rollup_steps
    from collector.slurm.parse import ParsableParser

    lines = (FIXTURES / "sacct-wide-header.psv").read_text(encoding="utf-8").split("\n")
    parser = ParsableParser(lines[0].split("|"), delimiter="|", source="test")
    text = {(r.job_id_raw, r.submit): r for r in rollup_steps(parser.parse_lines(lines[1:]))
            if isinstance(r, JobRecord)}
    doc = json.loads((FIXTURES / "sacct-all.json").read_text(encoding="utf-8"))
    from_json = {(r.job_id_raw, r.submit): r
                 for r in rollup_steps(parse_sacct_json(doc, source="t", default_cluster=None))
                 if isinstance(r, JobRecord)}
    assert set(text) == set(from_json)
    lacking = {"uid", "db_index", "exit_code", "derived_exit_code", "state_raw"}
    differences = set()
    for key, ours in text.items():
        theirs = from_json[key]
        if not ours.final:
            continue                          # the running job 21: captured at two moments
        assert ours.state_raw.startswith(theirs.state_raw)
        for f in dataclasses.fields(JobRecord):
            if getattr(ours, f.name) != getattr(theirs, f.name):
                differences.add(f.name)
    assert differences <= lacking, differences - lacking
    # The two values jsonparse computes as sacct prints them:
    assert from_json[(8, text_key(text, 8))].cpu_used_s == text[(8, text_key(text, 8))].cpu_used_s
    assert from_json[(14, text_key(text, 14))].energy_j == 0 == text[(14, text_key(text, 14))].energy_j


def text_key(records, job_id_raw):
    (submit,) = [submit for raw, submit in records if raw == job_id_raw]
    return submit


# ------------------------------------------------------------------ the API version

CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "json"
CORPUS_VERSIONS = [f"v0.0.{n}" for n in range(36, 46)]
# Every corpus job is eligible in [T, T + 500] (T = 1796000000); this window holds them all.
CORPUS_SINCE, CORPUS_UNTIL = 1796000000 - 3600, 1796000000 + 3600


def slurmrestd_doc(version: str) -> dict:
    """The corpus document of ``version`` as slurmrestd answers it (its meta names the
    openapi plugin instead of the sacct command)."""
    doc = json.loads((CORPUS / version / "sacct.json").read_text(encoding="utf-8"))
    if int(version.rsplit(".", 1)[1]) >= 39:
        doc["meta"]["plugin"].update({"type": "openapi/slurmdbd",
                                      "name": "Slurm OpenAPI slurmdbd"})
        doc["meta"].pop("command", None)
    return doc


def serve_versions(recorder: Recorder, versions, *, doc_version: str | None = None) -> dict:
    recorder.versions = list(versions)
    doc = slurmrestd_doc(doc_version or recorder.versions[-1])
    recorder.default = (200, json.dumps(doc).encode())
    return doc


@pytest.mark.parametrize("version", CORPUS_VERSIONS)
def test_each_version_served_alone_is_found_and_read_like_sacct_json(http_server, version):
    """The fake slurmrestd serves one data version (and lists it); the source finds it,
    and stores exactly what the same document gives as a file import."""
    url, recorder = http_server
    doc = serve_versions(recorder, [version])
    src = source(url, cluster="corpus", max_window_s=7200)
    items = list(src.fetch(epoch_window(CORPUS_SINCE, CORPUS_UNTIL)))
    assert [r["path"].split("?")[0] for r in recorder.requests] == [
        "/openapi/v3", f"/slurmdb/{version}/jobs"]
    assert not [i for i in items if isinstance(i, QuarantinedRecord)]
    direct = list(parse_sacct_json(doc, source="slurmrestd", default_cluster="corpus"))
    assert items == direct and len([i for i in items if isinstance(i, JobRecord)]) == 16
    assert (src.api_version, src.stats.extra["data_parser"]) == (
        version, doc["meta"]["plugin"].get("data_parser") or doc["meta"]["plugin"]["type"])


@pytest.mark.parametrize("served, chosen", [
    (["v0.0.40", "v0.0.41", "v0.0.42"], "v0.0.42"),            # Slurm 24.11
    (["v0.0.42", "v0.0.43", "v0.0.44", "v0.0.45"], "v0.0.45"),  # Slurm 26.05
    (["v0.0.38", "v0.0.39"], "v0.0.39"),
])
def test_the_newest_listed_version_is_chosen(http_server, served, chosen):
    url, recorder = http_server
    serve_versions(recorder, served)
    src = source(url, cluster="corpus")
    list(src.fetch(epoch_window(CORPUS_SINCE, CORPUS_SINCE + 60)))
    assert [r["path"].split("?")[0] for r in recorder.job_requests] == [
        f"/slurmdb/{chosen}/jobs"]
    assert (src.stats.extra["api_version"], src.stats.extra["negotiated_by"],
            src.stats.extra["offered"]) == (chosen, "openapi", served)


def test_without_a_listing_the_versions_are_tried_newest_first(http_server):
    url, recorder = http_server
    serve_versions(recorder, ["v0.0.40", "v0.0.41"])
    recorder.openapi = (404, b'{"errors": []}')
    src = source(url, cluster="corpus", max_window_s=7200)
    items = list(src.fetch(epoch_window(CORPUS_SINCE, CORPUS_UNTIL)))
    assert [r["path"].split("?")[0].rsplit("/", 2)[1] for r in recorder.job_requests] == [
        "v0.0.45", "v0.0.44", "v0.0.43", "v0.0.42", "v0.0.41"]
    assert (src.api_version, src.stats.extra["negotiated_by"]) == ("v0.0.41", "probe")
    assert len([i for i in items if isinstance(i, JobRecord)]) == 16
    # Remembered: the next poll asks v0.0.41 straight away.
    recorder.requests.clear()
    list(src.fetch(epoch_window(CORPUS_SINCE, CORPUS_UNTIL)))
    assert [r["path"].split("?")[0] for r in recorder.requests] == ["/slurmdb/v0.0.41/jobs"]


@pytest.mark.parametrize("listing", [
    (200, b"<html>not json</html>"), (200, b'{"openapi": "3.0.3"}'), (500, b"oops")])
def test_an_unusable_listing_falls_back_to_trying(http_server, listing):
    url, recorder = http_server
    serve_versions(recorder, ["v0.0.45"])
    recorder.openapi = listing
    src = source(url, cluster="corpus")
    list(src.fetch(epoch_window(CORPUS_SINCE, CORPUS_UNTIL)))
    assert (src.api_version, src.stats.extra["negotiated_by"]) == ("v0.0.45", "probe")


def test_an_upgraded_slurmrestd_is_negotiated_again(http_server, caplog):
    """22.05 (dbv0.0.38) is replaced by 24.11 under a running collector: the remembered
    version answers 404, the source lists again and moves to v0.0.42, and says so."""
    url, recorder = http_server
    src = source(url, cluster="corpus", max_window_s=7200)
    serve_versions(recorder, ["v0.0.38"])
    list(src.fetch(epoch_window(CORPUS_SINCE, CORPUS_UNTIL)))
    assert src.api_version == "v0.0.38"
    serve_versions(recorder, ["v0.0.40", "v0.0.41", "v0.0.42"])
    recorder.requests.clear()
    with caplog.at_level("INFO", logger="collector.slurm.restsource"):
        items = list(src.fetch(epoch_window(CORPUS_SINCE, CORPUS_UNTIL)))
    assert [r["path"].split("?")[0] for r in recorder.requests] == [
        "/slurmdb/v0.0.38/jobs", "/openapi/v3", "/slurmdb/v0.0.42/jobs"]
    assert (src.api_version, src.stats.extra["renegotiations"]) == ("v0.0.42", 1)
    assert len([i for i in items if isinstance(i, JobRecord)]) == 16
    messages = [r.getMessage() for r in caplog.records]
    assert any("v0.0.38/jobs answered 404" in m for m in messages), messages
    assert any("using /slurmdb/v0.0.42/jobs" in m for m in messages), messages


def test_a_version_newer_than_known_is_read_by_shape_with_a_warning(http_server, caplog):
    url, recorder = http_server
    doc = serve_versions(recorder, ["v0.0.46"], doc_version="v0.0.45")
    doc["meta"]["plugin"]["data_parser"] = "data_parser/v0.0.46"
    recorder.default = (200, json.dumps(doc).encode())
    src = source(url, cluster="corpus")
    with caplog.at_level("WARNING", logger="collector.slurm.restsource"):
        items = list(src.fetch(epoch_window(CORPUS_SINCE, CORPUS_UNTIL)))
    assert src.api_version == "v0.0.46"
    assert len([i for i in items if isinstance(i, JobRecord)]) == 16
    assert any("does not know" in r.getMessage() for r in caplog.records)


def test_known_versions_win_over_unknown_newer_ones(http_server):
    url, recorder = http_server
    serve_versions(recorder, ["v0.0.44", "v0.0.46"], doc_version="v0.0.44")
    src = source(url, cluster="corpus")
    list(src.fetch(epoch_window(CORPUS_SINCE, CORPUS_UNTIL)))
    assert src.api_version == "v0.0.44"


def test_no_jobs_path_anywhere_is_a_clear_error(http_server):
    url, recorder = http_server
    recorder.versions = []
    recorder.openapi = (404, b"")
    with pytest.raises(SlurmrestdHTTPError, match=r"no accounting jobs path answers.*"
                       r"v0\.0\.45, .*v0\.0\.36\}/jobs all gave HTTP 404") as caught:
        list(source(url).fetch(epoch_window(SINCE, UNTIL)))
    assert caught.value.status == 404
    assert len(recorder.job_requests) == 10


def test_a_listing_without_slurmdb_is_a_clear_error(http_server):
    url, recorder = http_server
    recorder.openapi = (200, json.dumps({"paths": {"/slurm/v0.0.42/jobs/": {}}}).encode())
    with pytest.raises(SlurmrestdError, match="lists no /slurmdb/v0.0.NN/jobs path"):
        list(source(url).fetch(epoch_window(SINCE, UNTIL)))
    assert recorder.job_requests == []


def test_a_refused_listing_is_an_auth_error(http_server):
    url, recorder = http_server
    recorder.openapi = (401, json.dumps({"errors": [{"error": "Authentication failure",
                                                     "error_number": 1007}]}).encode())
    with pytest.raises(SlurmrestdHTTPError, match="GET /openapi/v3: HTTP 401.*token was "
                                                  "refused") as caught:
        list(source(url, token=TOKEN).fetch(epoch_window(SINCE, UNTIL)))
    assert caught.value.status == 401 and TOKEN not in str(caught.value)


def test_a_listed_version_that_answers_404_is_not_remembered(http_server):
    url, recorder = http_server
    recorder.openapi = (200, openapi_listing(["v0.0.41"]))
    recorder.versions = []
    src = source(url)
    with pytest.raises(SlurmrestdHTTPError, match=r"\{v0\.0\.41\}/jobs \(listed by "
                                                  r"/openapi/v3\) all gave HTTP 404"):
        list(src.fetch(epoch_window(SINCE, UNTIL)))
    assert src.api_version is None


def test_a_slurmctld_answer_is_refused_by_name(http_server):
    url, recorder = http_server
    recorder.default = (200, json.dumps({"jobs": [
        {"job_id": 1, "job_state": ["RUNNING"], "eligible_time": 1795351650}]}).encode())
    with pytest.raises(SlurmrestdError, match="slurmctld job list"):
        list(source(url).fetch(epoch_window(SINCE, UNTIL)))


def test_quarantined_jobs_are_counted_and_named(http_server):
    url, recorder = http_server
    doc = serve_versions(recorder, ["v0.0.42"])
    doc["jobs"][0]["tres"]["allocated"][0]["count"] = "four"
    recorder.default = (200, json.dumps(doc).encode())
    src = source(url, cluster="corpus")
    items = list(src.fetch(epoch_window(CORPUS_SINCE, CORPUS_UNTIL)))
    (bad,) = [i for i in items if isinstance(i, QuarantinedRecord)]
    assert bad.reason.startswith("job #1 (job_id 101) of the JSON document: "
                                 "tres.allocated[0].count: ")
    assert bad.source == "slurmrestd" and src.stats.extra["quarantined"] == 1
    assert len([i for i in items if isinstance(i, JobRecord)]) == 15


@pytest.mark.parametrize("change, field", [
    (lambda job: job["time"].update(eligible="soon"), "time.eligible"),
    (lambda job: job["time"].update(end={"number": "x"}), "time.end"),
    (lambda job: job.pop("time"), "time.submission"),
])
def test_a_job_whose_times_do_not_read_is_quarantined_not_dropped(http_server, change, field):
    """The window filter cannot place such a job; it must reach the parser (and the
    quarantine), once, instead of silently falling out of every chunk."""
    url, recorder = http_server
    doc = serve_versions(recorder, ["v0.0.44"])
    change(doc["jobs"][1])
    recorder.default = (200, json.dumps(doc).encode())
    src = source(url, cluster="corpus", max_window_s=1800)
    items = list(src.fetch(epoch_window(CORPUS_SINCE, CORPUS_UNTIL)))
    (bad,) = [i for i in items if isinstance(i, QuarantinedRecord)]
    assert bad.reason.startswith(f"job #1 (job_id 102) of the JSON document: {field}: ")
    assert len([i for i in items if isinstance(i, JobRecord)]) == 15


def test_held_jobs_are_in_no_window_whatever_the_form():
    for eligible in (0, None, {"set": False, "infinite": False, "number": 0}):
        job = {"time": {"eligible": eligible, "end": 0}}
        assert not in_window(job, 0, 2**40)
    assert in_window({"time": {"eligible": {"set": True, "number": 5}, "end": 0}}, 0, 10)


# ------------------------------------------------------------------ the lab's real slurmrestd

REAL = CORPUS / "real"


@pytest.mark.parametrize("release, newest, served", [
    ("22.05", "v0.0.38", ["v0.0.36", "v0.0.37", "v0.0.38"]),
    ("24.11", "v0.0.42", ["v0.0.40", "v0.0.41", "v0.0.42"]),
    ("26.05", "v0.0.45", ["v0.0.42", "v0.0.43", "v0.0.44", "v0.0.45"]),
])
def test_the_real_listings_and_answers_of_each_release(http_server, release, newest, served):
    """The fake answers with what the lab's slurmrestd answered: its /openapi/v3 paths
    (with the real escaping and trailing slashes) and its jobs answer of each version."""
    url, recorder = http_server
    recorder.versions = served
    recorder.openapi = (200, (REAL / release / "openapi-v3-paths.json").read_bytes())
    answers = {v: gzip.decompress((REAL / release / f"slurmrestd-{v}-jobs.json.gz")
                                  .read_bytes()) for v in served}
    recorder.default = lambda request: (200, answers[request["path"].split("/")[2]])
    docs = {v: json.loads(body) for v, body in answers.items()}
    submits = [j["time"]["submission"] for j in docs[newest]["jobs"]]
    window = epoch_window(min(submits) - 60, max(submits) + 3600)
    src = source(url, cluster=None, user="root", token=TOKEN, max_window_s=7200)
    items = list(src.fetch(window))
    assert (src.api_version, src.stats.extra["negotiated_by"], src.stats.extra["offered"]) == (
        newest, "openapi", served)
    assert src.stats.extra["slurm_release"].startswith(release)
    assert not [i for i in items if isinstance(i, QuarantinedRecord)]
    direct = [i for i in parse_sacct_json(docs[newest], source="slurmrestd", default_cluster=None)
              if isinstance(i, JobRecord)]
    assert [i for i in items if isinstance(i, JobRecord)] == direct and len(direct) >= 12


def test_the_choice_outlives_the_source(http_server):
    """The daemon builds a source per poll: the next one on the same URL asks the jobs path
    straight away, without the megabytes of /openapi/v3."""
    url, recorder = http_server
    serve_versions(recorder, ["v0.0.40", "v0.0.41", "v0.0.42"])
    list(source(url, cluster="corpus").fetch(epoch_window(CORPUS_SINCE, CORPUS_SINCE + 60)))
    recorder.requests.clear()
    second = source(url, cluster="corpus")
    assert (second.api_version, second.stats.extra.get("api_version")) == ("v0.0.42", None)
    list(second.fetch(epoch_window(CORPUS_SINCE, CORPUS_SINCE + 60)))
    assert [r["path"].split("?")[0] for r in recorder.requests] == ["/slurmdb/v0.0.42/jobs"]
    assert second.stats.extra["negotiated_by"] == "openapi, remembered"
    # Another URL chooses for itself.
    assert source(url + "/proxy").api_version is None
