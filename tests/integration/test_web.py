"""The web app over a real database: probes, the API, auth, errors, and the OpenAPI contract.

The database is filled the way an operator fills it (``hpc-billing collect --once`` with
the file source and the demo card), the app is the real ``create_app`` driven by Flask's
test client, and every answer that the contract describes is validated against
docs/api/openapi.yaml with openapi-core.
"""

from __future__ import annotations

import base64
import json
from decimal import Decimal as D
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from openapi_core import Config, OpenAPI
from openapi_core.contrib.werkzeug import (
    WerkzeugOpenAPIRequest,
    WerkzeugOpenAPIResponse,
)
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_spec
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import text

from collector import render
from collector.health import Health
from collector.settings import Settings
from collector.store import budgets as store_budgets
from collector.store import charges as store_charges
from collector.store import jobs as store_jobs
from collector.store import reports as store_reports
from collector.store import rollups as store_rollups
from collector.store.db import make_engine, session_factory
from collector.web.app import create_app
from collector.web.auth import new_token, token_digest
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
SPEC_PATH = ROOT / "docs" / "api" / "openapi.yaml"
FIXTURE = ROOT / "tests" / "fixtures" / "sacct-wide-header.psv"
CARD = ROOT / "collector" / "data" / "demo-rates.toml"
PERIOD = "2026-11"
UTC = timezone.utc


def _json_loads(value: bytes, **parameters: str):
    return json.loads(value)


def _text_loads(value: bytes, **parameters: str) -> str:
    return value.decode(parameters.get("charset", "utf-8"))


@pytest.fixture(scope="module")
def openapi() -> OpenAPI:
    # problem+json is JSON and the YAML document is text; openapi-core needs telling.
    config = Config(extra_media_type_deserializers={
        "application/problem+json": _json_loads, "application/yaml": _text_loads})
    return OpenAPI.from_file_path(str(SPEC_PATH), config=config)


def _schema_validator(openapi_doc: dict, name: str) -> OAS30Validator:
    # A component schema on its own, with the document's components for its $refs.
    schema = {**openapi_doc["components"]["schemas"][name],
              "components": openapi_doc["components"]}
    return OAS30Validator(schema)


@pytest.fixture(scope="module")
def spec_doc() -> dict:
    return yaml.safe_load(SPEC_PATH.read_text())


# ---------------------------------------------------------------------------- fixtures

@dataclass
class Tokens:
    all: str
    physics: str
    chemistry_and_biology: str
    path: Path


@pytest.fixture
def tokens(tmp_path) -> Tokens:
    t_all, l_all = new_token("all")
    t_phys, l_phys = new_token("account:physics")
    t_chem, l_chem = new_token("account:chemistry,biology")
    path = tmp_path / "api-tokens"
    path.write_text(f"# API tokens\n{l_all}  # finance\n\n{l_phys}\n{l_chem}\n")
    return Tokens(t_all, t_phys, t_chem, path)


@pytest.fixture
def populated(db_url) -> str:
    assert run_cli("collect", "--once", "--source", "file", "--input", str(FIXTURE),
                   "--rates", str(CARD), "--database-url", db_url) == 0
    for account, amount in (("physics", "100"), ("chemistry", "0")):
        assert run_cli("budget", "set", account, PERIOD, amount, "--currency", "EUR",
                       "--database-url", db_url) == 0
    return db_url


def _settings(db_url: str | None, tokens_path: Path | None = None, **env: str) -> Settings:
    values = {"HPC_BILLING_CLUSTER": "lab"}
    if db_url:
        values["DATABASE_URL"] = db_url
    if tokens_path is not None:
        values["HPC_BILLING_API_TOKENS_FILE"] = str(tokens_path)
    values.update(env)
    return Settings.load({k: v for k, v in values.items() if v is not None})


def _alive_health(**kwargs) -> Health:
    health = Health(**kwargs)
    health.bind_scheduler(lambda: True)
    return health


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("hpcb_test_requests", "A stand-in metric.", registry=registry).inc()
    return registry


def _app(db_url, engine, tokens_path=None, *, health=None, registry=None, **env):
    registry = registry if registry is not None else _registry()
    return create_app(_settings(db_url, tokens_path, **env), engine=engine,
                      sessions=session_factory(engine), health=health or _alive_health(),
                      registry=registry)


@pytest.fixture
def client(populated, engine, tokens):
    return _app(populated, engine, tokens.path).test_client()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _validated(openapi: OpenAPI, response):
    openapi.validate_response(WerkzeugOpenAPIRequest(response.request),
                              WerkzeugOpenAPIResponse(response))
    return response


def _problem(response, status: int, spec_doc: dict) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json(force=True)
    _schema_validator(spec_doc, "Problem").validate(body)
    assert body["status"] == status
    return body


# ---------------------------------------------------------------------------- contract

def test_the_contract_is_valid_and_served(db_url, engine, spec_doc):
    validate_spec(spec_doc)
    response = _app(db_url, engine).test_client().get("/openapi.yaml")
    assert response.status_code == 200 and response.mimetype == "application/yaml"
    assert response.data == SPEC_PATH.read_bytes()


def _openapi_path(rule: str) -> str:
    """A Flask rule in OpenAPI's path form: /jobs/<cluster>/<int:job_id_raw> ->
    /jobs/{cluster}/{job_id_raw}."""
    return re.sub(r"<(?:[a-z]+:)?([A-Za-z_]+)>", r"{\1}", rule)


def test_every_route_is_documented_and_every_documented_path_served(db_url, engine, spec_doc):
    app = _app(db_url, engine)
    served = {(_openapi_path(rule.rule), method.lower())
              for rule in app.url_map.iter_rules() if rule.endpoint != "static"
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, item in spec_doc["paths"].items()
                  for method in item if method in ("get", "post", "put", "patch", "delete")}
    assert served == documented
    assert ("/api/v1/jobs/{cluster}/{job_id_raw}", "get") in served   # the form is compared


def test_the_job_schema_lists_exactly_the_fields_of_job_to_dict(spec_doc):
    documented = set(spec_doc["components"]["schemas"]["Job"]["properties"])
    assert documented == set(render.JOB_COLUMNS) | set(render.JOB_EXTRA_COLUMNS)
    assert set(spec_doc["components"]["schemas"]["Job"]["required"]) == documented


def test_every_endpoint_answers_as_the_contract_says(client, tokens, openapi, populated,
                                                     engine):
    a = _auth(tokens.all)
    cases = [
        ("/healthz", {}), ("/readyz", {}), ("/metrics", {}), ("/openapi.yaml", {}),
        (f"/api/v1/report?period={PERIOD}", a),
        (f"/api/v1/report?period={PERIOD}&group_by=account,user,partition,qos,cluster,resource", a),
        ("/api/v1/report?from=2026-01&to=2026-12&group_by=resource&cluster=lab", a),
        ("/api/v1/report?period=2026-01", a),
        ("/api/v1/jobs?since=2026-11-01T00:00:00Z&until=2026-12-01T00:00:00%2B01:00&limit=1000", a),
        ("/api/v1/jobs?since=2026-11-01T00:00:00Z&until=2026-12-01T00:00:00Z&limit=3", a),
        ("/api/v1/jobs", a),
        ("/api/v1/jobs/lab/16", a),
        ("/api/v1/jobs/lab/21", a),
        ("/api/v1/rate-cards", a), ("/api/v1/rate-cards?include=text", a),
        ("/api/v1/runs", a), ("/api/v1/runs?cluster=lab&limit=1", a),
        ("/api/v1/quarantine", a), ("/api/v1/quarantine?run_id=1&limit=5", a),
        ("/api/v1/budgets", a), (f"/api/v1/budgets?period={PERIOD}", a),
        ("/api/v1/nodes/utilisation?since=2026-11-01&until=2026-12-01", a),
        ("/api/v1/jobs/lab/999999", a),
        ("/api/v1/jobs/lab/16/explain", a), ("/api/v1/jobs/lab/21/explain", a),
        ("/api/v1/jobs/lab/999999/explain", a),
        ("/api/v1/jobs", {}),
        ("/api/v1/runs", _auth(tokens.physics)),
        ("/api/v1/report?period=2026-13", a),
    ]
    statuses = {}
    for path, headers in cases:
        response = client.get(path, headers=headers)
        assert response.status_code < 500, (path, response.get_data(as_text=True))
        _validated(openapi, response)
        statuses.setdefault(path, []).append(response.status_code)
        assert response.headers.get("X-Request-ID")
    assert statuses["/api/v1/jobs/lab/999999"] == [404]
    assert statuses["/api/v1/jobs/lab/999999/explain"] == [404]
    assert statuses["/api/v1/jobs/lab/16/explain"] == [200]
    assert statuses["/api/v1/jobs"] == [200, 401]
    assert statuses["/api/v1/runs"] == [200, 403]
    assert statuses["/api/v1/report?period=2026-13"] == [400]
    assert statuses["/healthz"] == statuses["/readyz"] == statuses["/metrics"] == [200]


def test_explain_in_the_api_is_the_commands_and_keeps_to_the_scope(client, tokens, openapi,
                                                                  populated, capsys):
    """Every stored record: the API's explanation is `hpc-billing explain`'s JSON, its
    lines are the statement's lines of that job, and an account's token sees its own jobs
    only."""
    jobs = client.get("/api/v1/jobs?limit=1000", headers=_auth(tokens.all)).get_json()["items"]
    assert len(jobs) > 10
    statement: dict[tuple[str, str], list[tuple]] = {}
    for account in {j["account"] for j in jobs if j["account"]}:
        capsys.readouterr()
        code = run_cli("statement", "--period", PERIOD, "--account", account, "--format",
                       "json", "--database-url", populated)
        if code == 1:
            continue          # an account without charges in the period
        for x in json.loads(capsys.readouterr().out)["lines"]:
            statement.setdefault((str(x["job_id_raw"]), x["submit"]), []).append(
                (x["resource"], x["quantity"], x["amount"]))
    checked = 0
    for raw in sorted({j["job_id_raw"] for j in jobs}):
        response = _validated(openapi, client.get(f"/api/v1/jobs/lab/{raw}/explain",
                                                  headers=_auth(tokens.all)))
        assert response.status_code == 200
        records = response.get_json()["records"]
        capsys.readouterr()
        assert run_cli("explain", "--job", str(raw), "--cluster", "lab", "--format", "json",
                       "--database-url", populated) == 0
        cli_records = json.loads(capsys.readouterr().out)["records"]
        assert records == [r for r in cli_records if r["job"]["job_id_raw"] == raw]
        for doc in records:
            lines = [(x["resource"], x["quantity"], x["amount"]) for x in doc["lines"]
                     if x["posted_period"] == PERIOD]
            stmt = statement.get((str(raw), doc["job"]["submit"]), [])
            assert [(r, D(q), D(a)) for r, q, a in lines] == [
                (r, D(q), D(a)) for r, q, a in stmt], raw
            checked += bool(lines)
        physics = client.get(f"/api/v1/jobs/lab/{raw}/explain",
                             headers=_auth(tokens.physics))
        mine = [r for r in records if r["job"]["account"] == "physics"]
        if mine:
            assert physics.status_code == 200
            assert physics.get_json()["records"] == mine
        else:
            assert physics.status_code == 403
    assert checked > 10


def test_node_utilisation_follows_the_contract(client, tokens, openapi, engine):
    nodes = pytest.importorskip("collector.store.nodes")

    @dataclass(frozen=True)
    class Node:
        name: str
        partitions: tuple[str, ...] = ("batch",)
        state: str = "MIXED"
        state_raw: str = "MIXED"
        cpus_total: int = 8
        cpus_alloc: int = 4
        mem_total_bytes: int = 16 * 2**30
        mem_alloc_bytes: int = 2 * 2**30
        gpus_total: tuple = (("a100", 2),)
        gpus_alloc: tuple = (("a100", 1),)

    start = datetime(2026, 11, 20, tzinfo=UTC)
    with session_factory(engine)() as session:
        for i in range(4):
            nodes.store_snapshot(session, "lab", start + timedelta(minutes=5 * i),
                                 [Node("n1"), Node("n2", cpus_alloc=0, gpus_alloc=())])
        session.commit()
    response = client.get("/api/v1/nodes/utilisation?cluster=lab&since=2026-11-20&until=2026-11-21",
                          headers=_auth(tokens.all))
    _validated(openapi, response)
    body = response.get_json()
    assert body["cluster"] == "lab" and body["since"] == "2026-11-20"
    assert [item["day"] for item in body["items"]] == ["2026-11-20"]
    item = body["items"][0]
    assert item["partition"] == "batch" and "E" not in item["cpu_hours_available"]
    assert client.get("/api/v1/nodes/utilisation", headers=_auth(tokens.physics)).status_code == 403


# ------------------------------------------------------------------------------ report

@pytest.mark.parametrize("group_by", ["account", "account,user", "user,resource",
                                      "partition,qos,cluster", "resource"])
def test_report_equals_the_cli_report(client, tokens, populated, capsys, group_by):
    capsys.readouterr()
    assert run_cli("report", "--period", PERIOD, "--group-by", group_by, "--format", "json",
                   "--database-url", populated) == 0
    cli_rows = json.loads(capsys.readouterr().out)
    assert cli_rows, "the fixture has charges"
    response = client.get(f"/api/v1/report?period={PERIOD}&group_by={group_by}",
                          headers=_auth(tokens.all))
    assert response.status_code == 200
    body = response.get_json()
    assert body["rows"] == cli_rows
    assert body["periods"] == [PERIOD] and body["group_by"] == group_by.split(",")
    # A range holding the period sums to the same (nothing is posted in the others).
    ranged = client.get(f"/api/v1/report?from=2026-06&to=2027-05&group_by={group_by}",
                        headers=_auth(tokens.all)).get_json()
    assert len(ranged["periods"]) == 12 and ranged["rows"] == cli_rows


@pytest.mark.parametrize("group_by", [["account"], ["user", "resource"], ["cluster", "qos"]])
def test_report_range_of_one_period_is_charge_report(session, populated, group_by):
    assert store_reports.report_range(session, periods=[PERIOD], group_by=group_by) == \
        store_reports.charge_report(session, period=PERIOD, group_by=group_by)
    assert store_reports.report_range(session, periods=[PERIOD], group_by=group_by, cluster="lab") == \
        store_reports.charge_report(session, period=PERIOD, group_by=group_by, cluster="lab")


def test_report_range_counts_a_job_once_across_periods(session, populated):
    # Move one job's lines into two periods: its amounts add up, it counts as one job.
    session.execute(text(
        "UPDATE charge_rows l SET posted_month = '2026-12-01' FROM prices p"
        " WHERE p.id = l.price_id AND l.job_id_raw = 2 AND p.resource = 'gpu'"))
    store_rollups.rebuild(session)   # an edit behind the writers' back (0011: no triggers)
    single = {r.group["account"]: r for r in store_reports.charge_report(
        session, period=PERIOD, group_by=["account"])}
    december = {r.group["account"]: r for r in store_reports.charge_report(
        session, period="2026-12", group_by=["account"])}
    both = {r.group["account"]: r for r in store_reports.report_range(
        session, periods=[PERIOD, "2026-12"], group_by=["account"])}
    physics = both["physics"]
    assert physics.amount == single["physics"].amount + december["physics"].amount
    assert physics.jobs == single["physics"].jobs
    assert december["physics"].jobs == 1


def test_account_tokens_see_only_their_accounts_in_the_report(client, tokens, populated, capsys):
    capsys.readouterr()
    assert run_cli("report", "--period", PERIOD, "--group-by", "account,user", "--format", "json",
                   "--database-url", populated) == 0
    cli_rows = json.loads(capsys.readouterr().out)
    physics_rows = [r for r in cli_rows if r["account"] == "physics"]

    by_account = client.get(f"/api/v1/report?period={PERIOD}&group_by=account,user",
                            headers=_auth(tokens.physics)).get_json()["rows"]
    assert by_account == physics_rows
    # Without account in group_by the lines are still only physics' (bob has jobs in both).
    by_user = client.get(f"/api/v1/report?period={PERIOD}&group_by=user",
                         headers=_auth(tokens.physics)).get_json()["rows"]
    assert [(r["user"], r["amount"], r["jobs"]) for r in by_user] == [
        (r["user"], r["amount"], r["jobs"]) for r in physics_rows]
    everyone = client.get(f"/api/v1/report?period={PERIOD}&group_by=user",
                          headers=_auth(tokens.all)).get_json()["rows"]
    bob_all = next(r for r in everyone if r["user"] == "bob")
    bob_physics = next(r for r in by_user if r["user"] == "bob")
    assert bob_all["jobs"] == 2 and bob_physics["jobs"] == 1
    chem = client.get(f"/api/v1/report?period={PERIOD}&group_by=account",
                      headers=_auth(tokens.chemistry_and_biology)).get_json()["rows"]
    assert [r["account"] for r in chem] == ["chemistry"]


# -------------------------------------------------------------------------------- jobs

def test_jobs_page_through_everything_in_order(client, tokens, session, populated):
    expected = [render.job_to_dict(j) for j in store_jobs.list_jobs(session)]
    assert len(expected) == 22
    seen, cursor, pages = [], None, 0
    while True:
        path = "/api/v1/jobs?since=2026-11-01T00:00:00Z&until=2026-12-01T00:00:00Z&limit=5"
        if cursor:
            path += f"&cursor={cursor}"
        body = client.get(path, headers=_auth(tokens.all)).get_json()
        seen.extend(body["items"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == expected
    assert pages == 5


def test_jobs_filters_and_account_scope(client, tokens):
    base = "/api/v1/jobs?since=2026-11-01T00:00:00Z&until=2026-12-01T00:00:00Z"

    def items(query, token=tokens.all):
        response = client.get(base + query, headers=_auth(token))
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()["items"]

    assert {j["account"] for j in items("&account=chemistry")} == {"chemistry"}
    assert {j["user"] for j in items("&user=bob")} == {"bob"}
    assert items("&cluster=elsewhere") == []
    assert {j["account"] for j in items("", tokens.physics)} == {"physics"}
    assert len(items("", tokens.physics)) == 20
    assert {j["job_id_raw"] for j in items("&user=bob", tokens.physics)} == {13}
    assert items("&account=physics", tokens.physics)
    # A window that ends before the jobs were submitted.
    assert client.get("/api/v1/jobs?since=2026-10-01T00:00:00Z&until=2026-11-01T00:00:00Z",
                      headers=_auth(tokens.all)).get_json()["items"] == []


def test_cursors_are_opaque_and_checked(client, tokens, spec_doc):
    base = "/api/v1/jobs?since=2026-11-01T00:00:00Z&until=2026-12-01T00:00:00Z&limit=2"
    cursor = client.get(base, headers=_auth(tokens.all)).get_json()["next_cursor"]
    assert cursor
    ok = client.get(f"{base}&cursor={cursor}", headers=_auth(tokens.all))
    assert ok.status_code == 200
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    forged_doc = json.loads(raw)
    forged_doc["k"][2] = "not an int"
    forged = base64.urlsafe_b64encode(json.dumps(forged_doc).encode()).decode().rstrip("=")
    tampered = [cursor[:-3], cursor[:5] + ("A" if cursor[5] != "A" else "B") + cursor[6:],
                "!!!", "e30", forged, "x" * 2000,
                base64.urlsafe_b64encode(b"\xff\xfe").decode()]
    for bad in tampered:
        response = client.get(f"{base}&cursor={bad}", headers=_auth(tokens.all))
        body = _problem(response, 400, spec_doc)
        assert [p["name"] for p in body["invalid_params"]] == ["cursor"], bad
    # The cursor of one listing is refused for another.
    response = client.get(f"{base}&user=root&cursor={cursor}", headers=_auth(tokens.all))
    assert "other filters" in _problem(response, 400, spec_doc)["invalid_params"][0]["reason"]


def test_a_requeued_job_shows_both_records_with_their_charges(client, tokens, session):
    body = client.get("/api/v1/jobs/lab/16", headers=_auth(tokens.all)).get_json()
    records = body["records"]
    assert [r["state"] for r in records] == ["REQUEUED", "COMPLETED"]
    assert records[0]["submit"] < records[1]["submit"]
    for record in records:
        submit = datetime.fromisoformat(record["submit"])
        stored = store_charges.job_charges(session, ("lab", 16, submit))
        assert stored, "both runs are billable"
        assert [c["amount"] for c in record["charges"]] == [render.money(l.amount) for l in stored]
        assert all(isinstance(c["quantity"], str) and isinstance(c["rate"], str)
                   for c in record["charges"])


def test_job_detail_scope_and_not_found(client, tokens, spec_doc):
    assert client.get("/api/v1/jobs/lab/11", headers=_auth(tokens.chemistry_and_biology)).status_code == 200
    _problem(client.get("/api/v1/jobs/lab/11", headers=_auth(tokens.physics)), 403, spec_doc)
    _problem(client.get("/api/v1/jobs/other/11", headers=_auth(tokens.physics)), 404, spec_doc)
    _problem(client.get("/api/v1/jobs/lab/424242", headers=_auth(tokens.all)), 404, spec_doc)


# ------------------------------------------------------------------- the other lists

def test_rate_cards_runs_quarantine_budgets(client, tokens, session):
    a = _auth(tokens.all)
    cards = client.get("/api/v1/rate-cards", headers=a).get_json()["items"]
    assert len(cards) == 1 and "text" not in cards[0] and cards[0]["lines"] > 0
    with_text = client.get("/api/v1/rate-cards?include=text", headers=_auth(tokens.physics))
    assert 'currency = "EUR"' in with_text.get_json()["items"][0]["text"]
    runs = client.get("/api/v1/runs", headers=a).get_json()["items"]
    assert [(r["kind"], r["outcome"], r["jobs_inserted"]) for r in runs] == [("file", "ok", 22)]
    assert client.get("/api/v1/quarantine", headers=a).get_json() == {"items": []}
    budgets = client.get("/api/v1/budgets", headers=a).get_json()["items"]
    assert [(b["account"], b["amount"]) for b in budgets] == [("chemistry", "0.00"),
                                                             ("physics", "100.00")]
    physics = budgets[1]
    stored = next(b for b in store_budgets.list_budgets(session) if b.account == "physics")
    assert physics["used"] == render.money(stored.used)
    assert budgets[0]["used_fraction"] is None
    assert client.get("/api/v1/budgets", headers=_auth(tokens.physics)).get_json()["items"] == [physics]
    assert client.get("/api/v1/budgets?period=2026-01", headers=a).get_json()["items"] == []


# -------------------------------------------------------------------------------- auth

def test_auth_failures(client, tokens, spec_doc, populated, engine):
    for headers in ({}, _auth("wrong"), {"Authorization": "Basic dXNlcjpwYXNz"},
                    {"Authorization": f"Bearer {tokens.all}x"},
                    {"Authorization": f"Bearer {token_digest(tokens.all)}"}):
        response = client.get(f"/api/v1/report?period={PERIOD}", headers=headers)
        _problem(response, 401, spec_doc)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    physics = _auth(tokens.physics)
    for path in ("/api/v1/runs", "/api/v1/quarantine", "/api/v1/nodes/utilisation",
                 "/api/v1/jobs?account=chemistry", "/api/v1/jobs/lab/12"):
        _problem(client.get(path, headers=physics), 403, spec_doc)
    # Probes, metrics and the contract need no token.
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.yaml"):
        assert client.get(path).status_code == 200, path


def test_without_a_tokens_file_every_api_request_is_401(populated, engine, spec_doc, tokens):
    client = _app(populated, engine, None).test_client()
    body = _problem(client.get(f"/api/v1/report?period={PERIOD}", headers=_auth(tokens.all)),
                    401, spec_doc)
    assert "no tokens configured" in body["detail"]
    assert client.get("/healthz").status_code == 200


def test_a_bad_tokens_file_stops_the_app_with_every_line(populated, engine, tmp_path):
    path = tmp_path / "tokens"
    _, good = new_token("all")
    path.write_text(f"{good}\nsha256:abc all\n{good.split()[0]} nonsense\n")
    with pytest.raises(Exception) as info:
        _app(populated, engine, path)
    message = str(info.value)
    assert "line 2" in message and "line 3" in message
    assert good.split()[0] not in message


def test_tokens_never_appear_in_responses_or_logs(client, tokens, caplog):
    secrets_ = [tokens.all, tokens.physics, tokens.chemistry_and_biology,
                token_digest(tokens.all), token_digest(tokens.physics)]
    caplog.set_level(logging.DEBUG)
    seen = []
    for token in (tokens.all, tokens.physics, tokens.all + "x", tokens.physics[:-1]):
        for path in (f"/api/v1/report?period={PERIOD}", "/api/v1/jobs?limit=0",
                     "/api/v1/runs", "/api/v1/jobs/lab/12", "/api/v1/nope", "/readyz"):
            response = client.get(path, headers=_auth(token))
            seen.append(response.get_data(as_text=True))
            seen.extend(f"{k}: {v}" for k, v in response.headers.items())
    haystack = "\n".join(seen) + "\n" + caplog.text
    for secret in secrets_:
        assert secret not in haystack


# -------------------------------------------------------------------------- bad input

BAD_INPUT = [
    # (path, the parameters the problem must name)
    ("/api/v1/report", ["period"]),
    ("/api/v1/report?period=2026-13", ["period"]),
    ("/api/v1/report?period=2026-1", ["period"]),
    ("/api/v1/report?period=26-11", ["period"]),
    ("/api/v1/report?period=2026-11-01", ["period"]),
    ("/api/v1/report?period=", ["period"]),
    ("/api/v1/report?period=2026-11&period=2026-10", ["period"]),
    ("/api/v1/report?period=2026-11&from=2026-10", ["period"]),
    ("/api/v1/report?from=2026-10", ["to"]),
    ("/api/v1/report?to=2026-10", ["from"]),
    ("/api/v1/report?from=2026-12&to=2026-10", ["to"]),
    ("/api/v1/report?from=2024-01&to=2026-01", ["to"]),
    ("/api/v1/report?from=2026-00&to=2026-02", ["from"]),
    ("/api/v1/report?period=2026-11&group_by=account,nope", ["group_by"]),
    ("/api/v1/report?period=2026-11&group_by=", ["group_by"]),
    ("/api/v1/report?period=2026-11&group_by=account,,user", ["group_by"]),
    ("/api/v1/report?period=2026-11&group_by=user,user", ["group_by"]),
    ("/api/v1/report?period=2026-11&group_by=ACCOUNT", ["group_by"]),
    ("/api/v1/report?period=2026-11&group_by=account;drop table jobs", ["group_by"]),
    ("/api/v1/report?period=2026-11&cluster=", ["cluster"]),
    ("/api/v1/report?period=2026-11&cluster=la%00b", ["cluster"]),
    ("/api/v1/report?period=2026-11&cluster=" + "x" * 300, ["cluster"]),
    ("/api/v1/report?period=2026-11&acount=physics", ["acount"]),
    ("/api/v1/jobs?limit=0", ["limit"]),
    ("/api/v1/jobs?limit=5000", ["limit"]),
    ("/api/v1/jobs?limit=-1", ["limit"]),
    ("/api/v1/jobs?limit=ten", ["limit"]),
    ("/api/v1/jobs?limit=1.5", ["limit"]),
    ("/api/v1/jobs?limit=%EF%BC%95", ["limit"]),                     # a fullwidth 5
    ("/api/v1/jobs?limit=99999999999999999999999", ["limit"]),
    ("/api/v1/jobs?since=yesterday", ["since"]),
    ("/api/v1/jobs?since=2026-11-01T00:00:00", ["since"]),           # no zone
    ("/api/v1/jobs?since=2026-11-01", ["since"]),                    # a date has no zone
    ("/api/v1/jobs?until=2026-02-30T00:00:00Z", ["until"]),
    ("/api/v1/jobs?until=0001-01-01T00:00:00%2B01:00", ["until"]),   # overflows UTC
    ("/api/v1/jobs?until=0001-01-02T00:00:00Z", ["until"]),          # since default overflows
    ("/api/v1/jobs?since=2026-11-02T00:00:00Z&until=2026-11-01T00:00:00Z", ["until"]),
    ("/api/v1/jobs?since=2024-01-01T00:00:00Z&until=2026-01-01T00:00:00Z", ["until"]),
    ("/api/v1/jobs?since=2020-01-01T00:00:00Z", ["until"]),          # until = now: too wide
    ("/api/v1/jobs?user=%01", ["user"]),
    ("/api/v1/jobs?account=", ["account"]),
    ("/api/v1/jobs?cursor=", ["cursor"]),
    ("/api/v1/jobs?cursor=abc", ["cursor"]),
    ("/api/v1/jobs?page=2&limit=0", ["page", "limit"]),
    ("/api/v1/jobs/lab/99999999999999999999999", ["job_id_raw"]),
    ("/api/v1/jobs/lab/12?verbose=1", ["verbose"]),
    ("/api/v1/rate-cards?include=toml", ["include"]),
    ("/api/v1/runs?limit=0", ["limit"]),
    ("/api/v1/runs?limit=1001", ["limit"]),
    ("/api/v1/runs?cluster=%7f", ["cluster"]),
    ("/api/v1/quarantine?run_id=abc", ["run_id"]),
    ("/api/v1/quarantine?run_id=0", ["run_id"]),
    ("/api/v1/quarantine?run_id=1.0", ["run_id"]),
    ("/api/v1/quarantine?run_id=9223372036854775808", ["run_id"]),
    ("/api/v1/quarantine?limit=5000", ["limit"]),
    ("/api/v1/budgets?period=november", ["period"]),
    ("/api/v1/budgets?period=2026-11&account=physics", ["account"]),
    ("/api/v1/nodes/utilisation?since=2026-11-01T00:00:00Z", ["since"]),
    ("/api/v1/nodes/utilisation?since=2026-13-01", ["since"]),
    ("/api/v1/nodes/utilisation?since=20261101", ["since"]),
    ("/api/v1/nodes/utilisation?since=2026-11-02&until=2026-11-01", ["until"]),
    ("/api/v1/nodes/utilisation?since=2026-11-01&until=2026-11-01", ["until"]),
    ("/api/v1/nodes/utilisation?since=2024-01-01&until=2026-01-01", ["until"]),
    ("/api/v1/nodes/utilisation?until=0001-01-05", ["until"]),
    ("/api/v1/nodes/utilisation?cluster=", ["cluster"]),
]


@pytest.mark.parametrize("path,names", BAD_INPUT, ids=[p for p, _ in BAD_INPUT])
def test_bad_input_is_a_400_naming_every_bad_parameter(client, tokens, spec_doc, openapi, path,
                                                       names):
    response = client.get(path, headers=_auth(tokens.all))
    body = _problem(response, 400, spec_doc)
    assert body["type"] == "urn:hpc-billing:problem:invalid-parameters"
    assert sorted({p["name"] for p in body["invalid_params"]}) == sorted(names)
    assert all(p["reason"] for p in body["invalid_params"])
    if "/jobs/lab/" not in path:   # path parameters beyond int64 are outside the contract
        _validated(openapi, response)


def test_http_errors_are_problems(client, tokens, spec_doc):
    body = _problem(client.get("/nowhere"), 404, spec_doc)
    assert body["type"] == "about:blank"
    _problem(client.get("/api/v1/jobs/lab/notanumber", headers=_auth(tokens.all)), 404, spec_doc)
    response = client.post("/api/v1/jobs", headers=_auth(tokens.all))
    _problem(response, 405, spec_doc)
    assert "GET" in response.headers["Allow"]
    _problem(client.delete("/healthz"), 405, spec_doc)


def test_an_unexpected_error_is_a_500_that_leaks_nothing(populated, engine, tokens, spec_doc,
                                                        caplog):
    secret_url = "postgresql+psycopg2://collector:s3cr3t-pw@db.example:5432/billing"
    app = _app(populated, engine, tokens.path, DATABASE_URL=secret_url)

    @app.get("/api/v1/boom")
    def boom():  # a bug inside a view, with a secret in the exception text
        raise RuntimeError(f"cannot use {secret_url} with token {tokens.all}")

    caplog.set_level(logging.DEBUG)
    response = app.test_client().get("/api/v1/boom", headers=_auth(tokens.all))
    body = _problem(response, 500, spec_doc)
    assert body["type"] == "urn:hpc-billing:problem:internal"
    text_out = response.get_data(as_text=True)
    for leak in ("s3cr3t", "RuntimeError", "cannot use", tokens.all, "db.example"):
        assert leak not in text_out
    request_id = body["request_id"]
    assert response.headers["X-Request-ID"] == request_id
    records = [r for r in caplog.records if request_id in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.ERROR
    assert "RuntimeError" in records[0].getMessage() and "s3cr3t" not in caplog.text


# ------------------------------------------------------------------------------ probes

def test_healthz_follows_the_scheduler_and_needs_no_database(openapi):
    dead_engine = make_engine("postgresql+psycopg2://nobody@127.0.0.1:1/none")
    try:
        health = Health()
        app = create_app(_settings(None), engine=dead_engine,
                         sessions=session_factory(dead_engine), health=health,
                         registry=CollectorRegistry())
        client = app.test_client()
        response = _validated(openapi, client.get("/healthz"))
        assert response.status_code == 503 and response.get_json()["scheduler"] is False
        alive = [True]
        health.bind_scheduler(lambda: alive[0])
        response = _validated(openapi, client.get("/healthz"))
        assert response.status_code == 200
        assert response.get_json()["status"] == "ok" and response.get_json()["scheduler"] is True
        alive[0] = False
        assert client.get("/healthz").status_code == 503

        def broken() -> bool:
            raise RuntimeError("no")

        health.bind_scheduler(broken)
        assert client.get("/healthz").status_code == 503
        health.set_leader(True)
        health.bind_scheduler(lambda: True)
        assert client.get("/healthz").get_json()["leader"] is True
    finally:
        dead_engine.dispose()


def test_readyz_fails_fast_when_the_database_is_unreachable(openapi, tokens, spec_doc):
    dead_engine = make_engine("postgresql+psycopg2://nobody@127.0.0.1:1/none")
    try:
        app = create_app(_settings("postgresql+psycopg2://nobody@127.0.0.1:1/none", tokens.path),
                         engine=dead_engine, sessions=session_factory(dead_engine),
                         health=_alive_health(), registry=CollectorRegistry())
        client = app.test_client()
        started = time.monotonic()
        response = client.get("/readyz")
        assert time.monotonic() - started < 3
        _validated(openapi, response)
        body = response.get_json()
        assert response.status_code == 503
        assert body["status"] == "fail" and body["failing"] == ["database"]
        assert body["checks"]["schema"]["status"] == "skipped"
        assert "127.0.0.1" not in response.get_data(as_text=True)
        # The API answers 503 (not 500) while the database is away.
        response = client.get(f"/api/v1/report?period={PERIOD}", headers=_auth(tokens.all))
        assert _problem(response, 503, spec_doc)["type"] == "urn:hpc-billing:problem:unavailable"
        assert client.get("/healthz").status_code == 200
    finally:
        dead_engine.dispose()


def test_readyz_is_bounded_when_the_database_hangs(openapi):
    # A listening socket that never answers the PostgreSQL handshake: connect succeeds,
    # the startup packet is never answered.
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    hung = make_engine(f"postgresql+psycopg2://nobody@127.0.0.1:{port}/none")
    try:
        app = create_app(_settings(None), engine=hung, sessions=session_factory(hung),
                         health=_alive_health(), registry=CollectorRegistry())
        client = app.test_client()
        for _ in range(3):
            started = time.monotonic()
            response = client.get("/readyz")
            assert time.monotonic() - started < 3
            assert response.status_code == 503
            assert response.get_json()["failing"] == ["database"]
            assert "no answer" in response.get_json()["checks"]["database"]["reason"]
    finally:
        server.close()
        hung.dispose()


def _add_poll(engine, *, age: str, outcome: str = "ok", cluster: str = "lab") -> None:
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO clusters (name) VALUES (:c) ON CONFLICT DO NOTHING"),
                     {"c": cluster})
        conn.execute(text(
            "INSERT INTO collector_runs (cluster, source, kind, started_at, finished_at, outcome)"
            " VALUES (:c, 'sacct', 'poll', now() - CAST(:age AS interval) - interval '1 second',"
            " now() - CAST(:age AS interval), :outcome)"), {"c": cluster, "age": age,
                                                             "outcome": outcome})


def test_readyz_freshness(populated, engine, openapi):
    def ready(health, **env):
        response = _app(populated, engine, health=health, **env).test_client().get("/readyz")
        _validated(openapi, response)
        return response.status_code, response.get_json()

    # Just started, no poll yet: the grace period holds readiness.
    status, body = ready(_alive_health())
    assert status == 200 and body["checks"]["freshness"]["clusters"]["lab"]["last_success"] is None
    assert "grace" in body["checks"]["freshness"]["clusters"]["lab"]["reason"]
    assert body["checks"]["schema"]["revision"] == body["checks"]["schema"]["head"]

    # Started two hours ago and still no successful poll (a file import is not a poll).
    clock = [time.time() - 7200]
    old = Health(clock=lambda: clock[0])
    old.bind_scheduler(lambda: True)
    clock[0] = time.time()
    status, body = ready(old)
    assert status == 503 and body["failing"] == ["freshness"]
    assert "no successful poll" in body["checks"]["freshness"]["clusters"]["lab"]["reason"]

    # A failed poll does not count; an old ok poll is stale, even during the grace period.
    _add_poll(engine, age="1 minute", outcome="failed")
    _add_poll(engine, age="2 hours")
    for health in (old, _alive_health()):
        status, body = ready(health)
        assert status == 503 and body["failing"] == ["freshness"]
        lab = body["checks"]["freshness"]["clusters"]["lab"]
        assert lab["status"] == "fail" and lab["age_s"] >= 7200

    # Another cluster's fresh poll does not make this one fresh; this cluster's does.
    _add_poll(engine, age="5 seconds", cluster="other")
    assert ready(old)[0] == 503
    _add_poll(engine, age="5 seconds")
    status, body = ready(old)
    assert status == 200 and body["failing"] == []
    assert 0 <= body["checks"]["freshness"]["clusters"]["lab"]["age_s"] < 60

    # A shorter bound makes the same poll stale.
    status, body = ready(old, HPC_BILLING_STALE_AFTER="2s")
    assert status == 503 and body["failing"] == ["freshness"]

    # Without a configured cluster, freshness is skipped and says so.
    status, body = ready(old, HPC_BILLING_CLUSTER=None)
    assert status == 200 and body["checks"]["freshness"]["status"] == "skipped"
    assert "no cluster configured" in body["checks"]["freshness"]["reason"]


def test_readyz_partial_polls_keep_it_fresh_and_are_reported(populated, engine, openapi):
    def ready():
        response = _app(populated, engine, health=_alive_health()).test_client().get("/readyz")
        _validated(openapi, response)
        return response.status_code, response.get_json()

    # No poll yet: the polls check says so, without warning.
    status, body = ready()
    assert status == 200 and body["checks"]["polls"]["status"] == "ok"
    assert body["checks"]["polls"]["clusters"]["lab"]["outcome"] is None

    # A partial poll stored its window's data: fresh, and ready, but the check warns.
    _add_poll(engine, age="10 seconds", outcome="partial")
    status, body = ready()
    assert status == 200 and body["failing"] == []
    assert body["checks"]["freshness"]["clusters"]["lab"]["status"] == "ok"
    assert "last partial poll" in body["checks"]["freshness"]["clusters"]["lab"]["reason"]
    polls = body["checks"]["polls"]
    assert polls["status"] == "warn" and polls["clusters"]["lab"]["outcome"] == "partial"
    assert "quarantined" in polls["clusters"]["lab"]["reason"]

    # A newer failed poll: still fresh from the partial one, the check names the failure.
    _add_poll(engine, age="1 second", outcome="failed")
    status, body = ready()
    assert status == 200 and body["checks"]["polls"]["clusters"]["lab"]["outcome"] == "failed"
    assert body["checks"]["polls"]["status"] == "warn"

    # Then an ok poll: nothing to report.
    _add_poll(engine, age="0 seconds")
    status, body = ready()
    assert status == 200 and body["checks"]["polls"]["status"] == "ok"
    assert body["checks"]["polls"]["clusters"]["lab"]["outcome"] == "ok"


def test_readyz_reports_a_schema_behind_head(fresh_database_url, openapi):
    engine = make_engine(fresh_database_url)
    try:
        app = create_app(_settings(fresh_database_url), engine=engine,
                         sessions=session_factory(engine), health=_alive_health(),
                         registry=CollectorRegistry())
        response = _validated(openapi, app.test_client().get("/readyz"))
        body = response.get_json()
        assert response.status_code == 503 and body["failing"] == ["schema"]
        assert body["checks"]["schema"]["revision"] is None
        assert "migrate" in body["checks"]["schema"]["reason"]
        assert body["checks"]["freshness"]["status"] == "skipped"
    finally:
        engine.dispose()


def test_readyz_reports_leadership(populated, engine):
    health = _alive_health()
    health.set_leader(True)
    app = _app(populated, engine, health=health)
    assert app.test_client().get("/readyz").get_json()["leader"] is True


# ----------------------------------------------------------------------------- metrics

def test_metrics_serve_the_given_registry(populated, engine, openapi):
    registry = CollectorRegistry()
    Counter("hpcb_test_things", "Things.", registry=registry).inc(3)
    response = _app(populated, engine, registry=registry).test_client().get("/metrics")
    _validated(openapi, response)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "hpcb_test_things_total 3.0" in response.get_data(as_text=True)


def test_metrics_default_to_the_collector_registry(populated, engine):
    pytest.importorskip("collector.web.metrics")
    app = create_app(_settings(populated), engine=engine, sessions=session_factory(engine),
                     health=_alive_health())
    response = app.test_client().get("/metrics")
    assert response.status_code == 200 and "hpcb_" in response.get_data(as_text=True)
