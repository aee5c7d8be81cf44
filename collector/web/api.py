"""The read-only JSON API under ``/api/v1`` (contract: docs/api/openapi.yaml).

Design notes: docs/design/web.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from flask import Blueprint, Response, g, request
from flask import json as flask_json

from billing.records import ChargeLine, JobRecord
from collector import render
from collector.bulkgc import bulk_gc
from collector.explaining import explain_records
from collector.store import budgets as store_budgets
from collector.store import charges as store_charges
from collector.store import db as store_db
from collector.store import jobs as store_jobs
from collector.store import nodes as store_nodes
from collector.store import rate_cards as store_rate_cards
from collector.store import reports as store_reports
from collector.store import runs as store_runs
from collector.web.auth import Scope, authenticate
from collector.web.problems import NOT_FOUND, ApiError, invalid
from collector.web.state import web_state

UTC = timezone.utc

# The store's whitelist of report groupings (account, user, partition, qos, cluster, resource).
REPORT_KEYS = tuple(store_reports.GROUP_BY)
MAX_REPORT_PERIODS = 24
MAX_RANGE_DAYS = 366
DEFAULT_JOBS_DAYS = 30
DEFAULT_UTILISATION_DAYS = 30
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_TEXT = 256
MAX_BIGINT = 2**63 - 1
STATEMENT_TIMEOUT_S = 30.0
FRACTION_QUANTUM = Decimal("0.000001")

_PERIOD_RE = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")
_DAY_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_INT_RE = re.compile(r"[0-9]{1,19}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CURSOR_MAX = 1024


# ------------------------------------------------------------------------- parameters

class Query:
    """The query string of one request, checked against the parameters an endpoint
    takes. Parsers record problems instead of raising, so one 400 lists them all."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.args = request.args
        self.errors: list[tuple[str, str]] = []
        takes = ", ".join(allowed) if allowed else "no parameters"
        for name in self.args:
            if name not in allowed:
                self.errors.append((name, f"unknown parameter; this endpoint takes {takes}"))
            elif len(self.args.getlist(name)) > 1:
                self.errors.append((name, "given more than once"))

    def fail(self, name: str, reason: str) -> None:
        self.errors.append((name, reason))

    def has(self, name: str) -> bool:
        return name in self.args

    def raw(self, name: str) -> str | None:
        return self.args.get(name)

    def text(self, name: str) -> str | None:
        value = self.args.get(name)
        if value is None:
            return None
        if not value:
            self.fail(name, "must not be empty")
        elif len(value) > MAX_TEXT:
            self.fail(name, f"at most {MAX_TEXT} characters")
        elif _CONTROL.search(value):
            self.fail(name, "must not contain control characters")
        else:
            return value
        return None

    def integer(self, name: str, *, low: int, high: int, default: int | None = None) -> int | None:
        value = self.args.get(name)
        if value is None:
            return default
        if _INT_RE.fullmatch(value) is None or not low <= int(value) <= high:
            self.fail(name, f"must be an integer from {low} to {high}")
            return None
        return int(value)

    def period(self, name: str) -> str | None:
        value = self.args.get(name)
        if value is None:
            return None
        if _PERIOD_RE.fullmatch(value) is None:
            self.fail(name, "must be a billing period YYYY-MM (month 01-12)")
            return None
        return value

    def instant(self, name: str) -> datetime | None:
        value = self.args.get(name)
        if value is None:
            return None
        try:
            parsed = datetime.fromisoformat(value)
            if parsed.tzinfo is None or parsed.utcoffset() is None:
                self.fail(name, "must include a time zone: Z or +HH:MM "
                                "(e.g. 2026-11-01T00:00:00Z)")
                return None
            return parsed.astimezone(UTC)
        except (ValueError, OverflowError):
            self.fail(name, "must be an ISO 8601 date-time with a zone, e.g. 2026-11-01T00:00:00Z")
            return None

    def day(self, name: str) -> date | None:
        value = self.args.get(name)
        if value is None:
            return None
        try:
            if _DAY_RE.fullmatch(value) is None:
                raise ValueError(value)
            return date.fromisoformat(value)
        except ValueError:
            self.fail(name, "must be a date YYYY-MM-DD")
            return None

    def check(self) -> None:
        if self.errors:
            raise invalid(self.errors)


def _month_index(period: str) -> int:
    year, month = period.split("-")
    return int(year) * 12 + int(month) - 1


def _period_of(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


# --------------------------------------------------------------------------- cursors

def _fingerprint(filters: dict[str, Any]) -> str:
    text = json.dumps(filters, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_cursor(position: store_jobs.JobPosition, filters: dict[str, Any]) -> str:
    doc = {"v": 1, "k": [position.cluster, position.submit.isoformat(), position.job_id_raw],
           "f": _fingerprint(filters)}
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str, filters: dict[str, Any]) -> store_jobs.JobPosition:
    """The position in ``text``; ValueError (with a reason for the client) otherwise."""
    bad = ValueError("not a cursor of this API (tampered or truncated): use next_cursor as given")
    if len(text) > _CURSOR_MAX:
        raise bad
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        doc = json.loads(raw.decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("v") != 1:
            raise bad
        cluster, submit_text, job_id_raw = doc["k"]
        fingerprint = doc["f"]
        submit = datetime.fromisoformat(submit_text)
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise bad from None
    if (not isinstance(cluster, str) or not isinstance(fingerprint, str)
            or isinstance(job_id_raw, bool) or not isinstance(job_id_raw, int)
            or not 0 <= job_id_raw <= MAX_BIGINT or submit.tzinfo is None
            or _CONTROL.search(cluster)):
        raise bad
    if fingerprint != _fingerprint(filters):
        raise ValueError("the cursor belongs to a listing with other filters; repeat the "
                         "same parameters with it, or start again without a cursor")
    return store_jobs.JobPosition(cluster=cluster, submit=submit.astimezone(UTC), job_id_raw=job_id_raw)


# ------------------------------------------------------------------------ rendering

def _plain_decimal(value: Decimal) -> str:
    return format(value.normalize(), "f")


def charge_line_to_dict(line: ChargeLine) -> dict[str, Any]:
    """A charge line as the API shows it: amount like the report (``money``), rate and
    quantity as exact decimal strings."""
    out = render.dataclass_to_dict(line)
    out["quantity"] = str(line.quantity)
    out["rate"] = _plain_decimal(line.rate)
    out["amount"] = render.money(line.amount)
    return out


def _utilisation_to_dict(day: Any) -> dict[str, Any]:
    """A ``collector.store.nodes.UtilisationDay``: the day as YYYY-MM-DD, Decimals as plain
    decimal strings (never exponent notation)."""
    out = render.dataclass_to_dict(day)
    for name in out:
        value = getattr(day, name)
        if isinstance(value, Decimal):
            out[name] = format(value, "f")
        elif isinstance(value, date) and not isinstance(value, datetime):
            out[name] = value.isoformat()
    return out


def _fraction(value: Decimal | None) -> str | None:
    return None if value is None else format(value.quantize(FRACTION_QUANTUM), "f")


def _ok(body: dict[str, Any]) -> Response:
    return Response(flask_json.dumps(body) + "\n", status=200, mimetype="application/json")


# ----------------------------------------------------------------- report parameters

def _report_periods(q: Query) -> list[str]:
    """``period``, or ``from`` and ``to`` (at most MAX_REPORT_PERIODS months)."""
    period, first, last = q.period("period"), q.period("from"), q.period("to")
    periods: list[str] = []
    if q.has("period") and (q.has("from") or q.has("to")):
        q.fail("period", "give either period, or from and to, not both")
    elif q.has("period"):
        periods = [period] if period else []
    elif q.has("from") or q.has("to"):
        for name in ("from", "to"):
            if not q.has(name):
                q.fail(name, "required with " + ("to" if name == "from" else "from"))
        if first and last:
            span = _month_index(last) - _month_index(first) + 1
            if span < 1:
                q.fail("to", "must not be before from")
            elif span > MAX_REPORT_PERIODS:
                q.fail("to", f"at most {MAX_REPORT_PERIODS} periods per report, "
                             f"this range has {span}")
            else:
                start = _month_index(first)
                periods = [_period_of(start + i) for i in range(span)]
    else:
        q.fail("period", "required: period=YYYY-MM, or from=YYYY-MM&to=YYYY-MM")
    return periods


def _report_group_by(q: Query) -> list[str]:
    group_by = ["account"]
    if q.has("group_by"):
        group_by = [name.strip() for name in (q.raw("group_by") or "").split(",")]
        unknown = [name for name in group_by if name not in REPORT_KEYS]
        if not any(group_by) or "" in group_by:
            q.fail("group_by", f"a comma list of {', '.join(REPORT_KEYS)} without "
                               "empty entries")
        elif unknown:
            q.fail("group_by", f"unknown key(s) {', '.join(sorted(set(unknown)))[:200]}; "
                               f"use {', '.join(REPORT_KEYS)}")
        elif len(set(group_by)) != len(group_by):
            q.fail("group_by", "a key is given twice")
    return group_by


# ------------------------------------------------------------------------- blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.before_request
def _authenticate() -> None:
    g.scope = authenticate(web_state().tokens, request.headers.get("Authorization"))


@bp.after_request
def _no_store(response: Response) -> Response:
    # Authorised, per-token data: never cached by a proxy or a browser.
    response.headers["Cache-Control"] = "no-store"
    return response


def scope() -> Scope:
    """The scope of the request's token (``_authenticate`` checked it)."""
    found: Scope = g.scope
    return found


@contextmanager
def read() -> Iterator[Any]:
    """A session in a READ ONLY transaction with the API's statement timeout."""
    state = web_state()
    with state.sessions() as session:
        store_db.begin_read(session, statement_timeout_s=state.statement_timeout_s)
        yield session


# ------------------------------------------------------------------- /report
@bp.get("/report")
def report() -> Response:
    q = Query(("period", "from", "to", "group_by", "cluster"))
    periods = _report_periods(q)
    group_by = _report_group_by(q)
    cluster = q.text("cluster")
    q.check()
    # A 12,000-group report builds ~150,000 acyclic objects: the bulk GC settings
    # meanwhile (collector/bulkgc.py; a third of its time at 10M jobs).
    with bulk_gc():
        with read() as session:
            rows = store_reports.report_range(session, periods=periods, group_by=group_by,
                                              cluster=cluster, accounts=scope().restriction)
        return _ok({"periods": periods, "group_by": group_by, "cluster": cluster,
                    "rows": [render.report_row_to_dict(row, group_by) for row in rows]})


# --------------------------------------------------------------------- /jobs
@bp.get("/jobs")
def jobs() -> Response:
    q = Query(("cluster", "account", "user", "since", "until", "limit", "cursor"))
    cluster, account, user = q.text("cluster"), q.text("account"), q.text("user")
    since, until = q.instant("since"), q.instant("until")
    limit = q.integer("limit", low=1, high=MAX_LIMIT, default=DEFAULT_LIMIT)
    cursor_text = q.text("cursor")
    if not any(name in ("since", "until") for name, _ in q.errors):
        # Every listing covers a bounded range: until defaults to now, since to 30
        # days before until.
        try:
            until = until or datetime.now(UTC).replace(microsecond=0)
            since = since or until - timedelta(days=DEFAULT_JOBS_DAYS)
        except OverflowError:
            q.fail("until", "out of range")
        else:
            if until <= since:
                q.fail("until", "must be after since")
            elif until - since > timedelta(days=MAX_RANGE_DAYS):
                q.fail("until", f"since to until may span at most {MAX_RANGE_DAYS} days "
                                "(until defaults to now)")
    filters = {"cluster": cluster, "account": account, "user": user,
               "since": q.raw("since"), "until": q.raw("until")}
    after = None
    if cursor_text is not None:
        try:
            after = decode_cursor(cursor_text, filters)
        except ValueError as exc:
            q.fail("cursor", str(exc))
    q.check()
    assert limit is not None and since is not None and until is not None
    if account is not None:
        scope().require_account(account)
    with read() as session:
        page = store_jobs.job_page(session, limit=limit + 1, after=after, cluster=cluster,
                              account=account, accounts=scope().restriction, user=user,
                              since=since, until=until)
    more = len(page) > limit
    page = page[:limit]
    next_cursor = None
    if more:
        last = page[-1]
        next_cursor = encode_cursor(store_jobs.JobPosition(last.cluster, last.submit,
                                                      last.job_id_raw), filters)
    return _ok({"items": [render.job_to_dict(job) for job in page],
                "next_cursor": next_cursor, "since": render.iso(since),
                "until": render.iso(until)})


def _check_job_path(cluster: str, job_id_raw: int) -> None:
    """The path of one job's routes: a cluster name and a JobIDRaw that fit (400 if not)."""
    q = Query(())
    if not cluster or len(cluster) > MAX_TEXT or _CONTROL.search(cluster):
        q.fail("cluster", "must be a cluster name without control characters")
    if job_id_raw > MAX_BIGINT:
        q.fail("job_id_raw", f"must be at most {MAX_BIGINT}")
    q.check()


def _visible_records(session: store_db.Session, cluster: str, job_id_raw: int) -> list[JobRecord]:
    """The job's stored records the token may see (404 when none is stored, 403 when the
    token may see none of them)."""
    records: list[JobRecord] = store_jobs.jobs_by_raw_id(session, cluster, job_id_raw)
    if not records:
        raise ApiError(404, f"no job {job_id_raw} of cluster {cluster!r} is stored",
                       type_=NOT_FOUND)
    visible = [r for r in records if scope().allows(r.account)]
    if not visible:
        scope().require_account(records[0].account or "", name="job")
    return visible


@bp.get("/jobs/<cluster>/<int:job_id_raw>")
def job(cluster: str, job_id_raw: int) -> Response:
    _check_job_path(cluster, job_id_raw)
    with read() as session:
        visible = _visible_records(session, cluster, job_id_raw)
        out = []
        for rec in visible:
            lines = store_charges.job_charges(session, (rec.cluster, rec.job_id_raw,
                                                        rec.submit))
            item = render.job_to_dict(rec)
            item["charges"] = [charge_line_to_dict(line) for line in lines]
            out.append(item)
    return _ok({"records": out})


@bp.get("/jobs/<cluster>/<int:job_id_raw>/explain")
def job_explain(cluster: str, job_id_raw: int) -> Response:
    """Why each record of the job cost what it did (``hpc-billing explain``'s JSON)."""
    _check_job_path(cluster, job_id_raw)
    with read() as session:
        docs = explain_records(session, _visible_records(session, cluster, job_id_raw))
    return _ok({"records": docs})


# ---------------------------------------------------------------- /rate-cards
@bp.get("/rate-cards")
def rate_cards() -> Response:
    q = Query(("include",))
    include = q.raw("include")
    if include is not None and include != "text":
        q.fail("include", "the only value is 'text' (the TOML of each card)")
    q.check()
    with read() as session:
        cards = store_rate_cards.list_rate_cards(session)
    items = []
    for card in cards:
        item = render.dataclass_to_dict(card)
        if include != "text":
            item.pop("text")
        items.append(item)
    return _ok({"items": items})


# ---------------------------------------------------------------------- /runs
@bp.get("/runs")
def runs() -> Response:
    scope().require_all("the run log")
    q = Query(("cluster", "limit"))
    cluster = q.text("cluster")
    limit = q.integer("limit", low=1, high=MAX_LIMIT, default=DEFAULT_LIMIT)
    q.check()
    assert limit is not None
    with read() as session:
        items = store_runs.list_runs(session, cluster=cluster, limit=limit)
    return _ok({"items": [render.dataclass_to_dict(run) for run in items]})


# ---------------------------------------------------------------- /quarantine
@bp.get("/quarantine")
def quarantine() -> Response:
    scope().require_all("the quarantine")
    q = Query(("run_id", "limit"))
    run_id = q.integer("run_id", low=1, high=MAX_BIGINT)
    limit = q.integer("limit", low=1, high=MAX_LIMIT, default=DEFAULT_LIMIT)
    q.check()
    assert limit is not None
    with read() as session:
        items = store_runs.list_quarantine(session, run_id=run_id, limit=limit)
    return _ok({"items": [render.dataclass_to_dict(entry) for entry in items]})


# ------------------------------------------------------------------- /budgets
@bp.get("/budgets")
def budgets() -> Response:
    q = Query(("period",))
    period = q.period("period")
    q.check()
    with read() as session:
        found = store_budgets.list_budgets(session, period=period)
    items = []
    for budget in found:
        if not scope().allows(budget.account):
            continue
        item = render.dataclass_to_dict(budget)
        item["amount"], item["used"] = render.money(budget.amount), render.money(budget.used)
        item["used_fraction"] = _fraction(budget.used_fraction)
        items.append(item)
    return _ok({"items": items})


# -------------------------------------------------------- /nodes/utilisation
@bp.get("/nodes/utilisation")
def utilisation() -> Response:
    scope().require_all("node utilisation")
    q = Query(("cluster", "since", "until"))
    cluster = q.text("cluster")
    since, until = q.day("since"), q.day("until")
    if not any(name in ("since", "until") for name, _ in q.errors):
        try:
            until = until or datetime.now(UTC).date() + timedelta(days=1)
            since = since or until - timedelta(days=DEFAULT_UTILISATION_DAYS)
        except OverflowError:
            q.fail("until", "out of range")
        else:
            if until <= since:
                q.fail("until", "must be after since (until is exclusive)")
            elif (until - since).days > MAX_RANGE_DAYS:
                q.fail("until", f"since to until may span at most {MAX_RANGE_DAYS} days")
    q.check()
    assert since is not None and until is not None        # q.check() raised otherwise
    with read() as session:
        days = store_nodes.node_utilisation_daily(session, cluster=cluster, since=since,
                                                  until=until)
    return _ok({"cluster": cluster, "since": since.isoformat(), "until": until.isoformat(),
                "items": [_utilisation_to_dict(day) for day in days]})
