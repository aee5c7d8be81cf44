"""collector.store.charges against a real PostgreSQL (see tests/conftest.py): no mocks."""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from billing.records import ChargeLine, JobRecord, resource_unit
from collector.store import db as store_db
from collector.store.budgets import list_budgets, set_budget
from collector.store.charges import (
    ChargeCounts,
    frozen_lines,
    job_charges,
    job_keys_in_range,
    replace_charges,
)
from collector.store.errors import (
    ChargeStoreError,
    ChargeValueError,
    ClosedPeriodError,
    InvalidPeriodError,
)
from collector.store.job_writer import JobWriter
from collector.store.jobs import list_jobs
from collector.store.periods import close_period, closed_periods, list_periods
from collector.store.rate_cards import ensure_rate_card, list_rate_cards
from collector.store.reports import ResourceTotal, billed_lines, charge_report
from collector.store.models import Base

UTC = timezone.utc
T0 = datetime(2026, 10, 30, 8, 0, tzinfo=UTC)
CARD = "card-v1-3f2a"
Q6 = Decimal("0.000001")


def job(job_id_raw: int, **overrides: object) -> JobRecord:
    fields: dict[str, object] = dict(
        cluster="alpha", job_id=str(job_id_raw), job_id_raw=job_id_raw,
        submit=T0 + timedelta(minutes=job_id_raw), state="COMPLETED",
        state_raw="COMPLETED", user="alice", account="physics", partition="gpu",
        qos="normal", start=T0 + timedelta(minutes=job_id_raw, seconds=30),
        end=T0 + timedelta(days=3), elapsed_s=3600, nodes=1, cpus=8,
        mem_bytes=2**34, final=True)
    fields.update(overrides)
    return JobRecord(**fields)  # type: ignore[arg-type]


def store_jobs(session: Session, jobs: list[JobRecord]) -> None:
    writer = JobWriter(session, run_id=1)
    for j in jobs:
        writer.add(j)
    writer.flush()


def line(j: JobRecord, resource: str = "cpu", quantity: str = "8.5", rate: str = "0.05",
         amount: str | None = None, *, usage: str = "2026-11", posted: str | None = None,
         card: str = CARD, currency: str = "EUR", kind: str = "charge",
         basis: str = "allocated", rule: str = "default") -> ChargeLine:
    q, r = Decimal(quantity), Decimal(rate)
    a = Decimal(amount) if amount is not None else (q * r).quantize(Decimal("0.01"))
    return ChargeLine(cluster=j.cluster, job_id_raw=j.job_id_raw, submit=j.submit,
                      usage_period=usage, posted_period=posted or usage, resource=resource,
                      quantity=q, unit=resource_unit(resource), rate=r, amount=a,
                      currency=currency, rule=rule, rate_card=card, basis=basis, kind=kind)


def key(j: JobRecord) -> tuple[str, int, datetime]:
    return (j.cluster, j.job_id_raw, j.submit)


@pytest.fixture
def card_id(session: Session) -> int:
    return ensure_rate_card(session, version=CARD, currency="EUR", text="[rates]\ncpu = 0.05\n",
                            source="/etc/hpc-billing/rates.toml")


def replace(session: Session, jobs: list[JobRecord], lines: list[ChargeLine],
            run_id: int = 1) -> ChargeCounts:
    cards = {r.version: r.id for r in list_rate_cards(session)}
    return replace_charges(session, [key(j) for j in jobs], lines, run_id=run_id,
                           rate_card_ids=cards)


def versions(session: Session) -> dict[str, tuple[str, int | None]]:
    """Each stored line (by its physical place: lines are never updated, only deleted and
    inserted, 0011) -> (xmin, the line's run: its job's last_run_id)."""
    rows = session.execute(text(
        "SELECT l.tableoid::text || ':' || l.ctid::text, l.xmin::text, j.last_run_id"
        " FROM charge_rows l LEFT JOIN job_rows j ON j.cluster_id = l.cluster_id"
        " AND j.job_id_raw = l.job_id_raw AND j.submit_time = l.submit_time"))
    return {r[0]: (r[1], r[2]) for r in rows}


def sort_lines(lines: list[ChargeLine]) -> list[ChargeLine]:
    return sorted(lines, key=lambda x: (x.cluster, x.job_id_raw, x.submit, x.usage_period,
                                        x.posted_period, x.resource, x.kind))


# --------------------------------------------------------------------------- migrations

def test_migration_0002_up_down_and_matches_models(fresh_database_url: str):
    charge_tables = {"rate_cards", "charge_lines", "billing_periods", "budgets"}
    engine = store_db.make_engine(fresh_database_url)
    try:
        store_db.migrate(engine, "0001")
        with engine.connect() as conn:
            assert store_db.schema_revision(conn) == "0001"
            assert not charge_tables & set(inspect(conn).get_table_names())
        with Session(engine) as session:
            # A row as revision 0001 stored it (the writer always targets the head schema).
            j = job(1)
            # (two statements: psycopg 3 binds parameters server-side, one statement each)
            session.execute(text("INSERT INTO clusters (name) VALUES (:c)"), {"c": j.cluster})
            session.execute(text(
                "INSERT INTO jobs (cluster, job_id_raw, submit_time, job_id, state, state_raw,"
                " elapsed_s, nodes, cpus, mem_bytes, final, content_hash)"
                " VALUES (:c, :raw, :submit, :id, :state, :state, 3600, 1, 8, :mem, true, 'x')"),
                {"c": j.cluster, "raw": j.job_id_raw, "submit": j.submit, "id": j.job_id,
                 "state": j.state, "mem": j.mem_bytes})
            session.commit()

        store_db.migrate(engine, "0002")
        with engine.connect() as conn:
            assert store_db.schema_revision(conn) == "0002"
            assert charge_tables <= set(inspect(conn).get_table_names())
        store_db.migrate(engine)   # later revisions on top
        with engine.connect() as conn:
            assert store_db.schema_revision(conn) == store_db.head_revision()
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True})
            assert compare_metadata(context, Base.metadata) == []
            # Since 0011 (issue 19) the lines live in charge_rows, without a foreign key or
            # trigger; charge_lines is a view over it.
            assert inspect(conn).get_foreign_keys("charge_rows") == []
            assert "charge_lines" in inspect(conn).get_view_names()
            assert conn.execute(text("SELECT count(*) FROM pg_trigger t JOIN pg_class c"
                                     " ON c.oid = t.tgrelid WHERE c.relname IN"
                                     " ('charge_rows', 'job_rows')")).scalar() == 0
        with Session(engine) as session:
            ensure_rate_card(session, version=CARD, currency="EUR", text="", source="x")
            assert replace(session, [job(1)], [line(job(1))]) == ChargeCounts(0, 1, 0)
            session.commit()

        store_db.downgrade(engine, "0001")
        with engine.connect() as conn:
            assert store_db.schema_revision(conn) == "0001"
            assert not charge_tables & set(inspect(conn).get_table_names())
            assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 1
        store_db.migrate(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True})
            assert compare_metadata(context, Base.metadata) == []
        store_db.downgrade(engine, "base")
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()


def test_check_constraints_guard_the_table(session, card_id):
    # Since 0011 kind and basis live in the prices dimension, periods are dates.
    store_jobs(session, [job(1)])
    for column, value in (("kind", "'refund'"), ("basis", "'peak'")):
        with pytest.raises(Exception, match="ck_prices"), session.begin_nested():
            session.execute(text(
                "INSERT INTO prices (rate_card_id, rule, resource, unit, basis, kind, rate,"
                " currency) VALUES (:card, 'r', 'cpu', 'core_hour', 'allocated', 'charge', 1,"
                " 'EUR')").bindparams(card=card_id))
            session.execute(text(f"UPDATE prices SET {column} = {value}"))
    with pytest.raises(Exception, match="out of range"), session.begin_nested():
        session.execute(text("SELECT to_date('2026-13', 'YYYY-MM')::date"))


# --------------------------------------------------------------------------- rate cards

def test_rate_cards_are_immutable_versions(session):
    first = ensure_rate_card(session, version="v1", currency="EUR", text="a", source="/a")
    assert ensure_rate_card(session, version="v1", currency="EUR", text="a",
                            source="/moved") == first
    with pytest.raises(ChargeValueError, match="different text"):
        ensure_rate_card(session, version="v1", currency="EUR", text="b", source="/a")
    with pytest.raises(ChargeValueError, match="different currency"):
        ensure_rate_card(session, version="v1", currency="USD", text="a", source="/a")
    session.commit()
    second = ensure_rate_card(session, version="v2", currency="USD", text="b", source="/b")
    j = job(1)
    store_jobs(session, [j])
    replace(session, [j], [line(j, card="v2", currency="USD"),
                           line(j, "mem", card="v2", currency="USD")])
    cards = list_rate_cards(session)
    assert [(c.id, c.version, c.lines) for c in cards] == [(second, "v2", 2), (first, "v1", 0)]
    assert cards[1].source == "/a" and cards[1].text == "a" and cards[0].currency == "USD"
    assert cards[0].loaded_at.utcoffset() == timedelta(0)


# ------------------------------------------------------------------------ replace_charges

def test_replace_round_trip_is_exact(session, card_id):
    jobs = [job(1), job(2, cluster="beta"), job(3)]
    store_jobs(session, jobs)
    lines = [
        line(jobs[0], "cpu", "12.345678", "0.012345678", "0.15"),
        line(jobs[0], "gpu:a100", "2", "1.25", usage="2026-10", posted="2026-10"),
        line(jobs[0], "gpu:a100", "3", "1.25", usage="2026-11"),
        line(jobs[0], "mem", "0.000001", "0.000000001", "0", basis="max"),
        line(jobs[1], "energy", "99999999999.999999", "0.3", "29999999999.999999",
             basis="used", rule="tab\there\\ and ünï", currency="EUR"),
        line(jobs[2], "billing", "-1.5", "0.2", "-0.3", kind="correction",
             usage="2026-10", posted="2026-11"),
        line(jobs[2], "node", "0", "7", "0"),
    ]
    # The same instant in another zone is the same job.
    shifted = [(c, i, s.astimezone(timezone(timedelta(hours=-5)))) for c, i, s in map(key, jobs)]
    counts = replace_charges(session, shifted, lines, run_id=42,
                             rate_card_ids={CARD: card_id})
    assert counts == ChargeCounts(deleted=0, inserted=7, unchanged_jobs=0)
    back = [x for j in jobs for x in job_charges(session, key(j))]
    assert sort_lines(back) == sort_lines(lines)
    for got in back:
        assert got.submit.utcoffset() == timedelta(0)
        assert isinstance(got.amount, Decimal) and isinstance(got.quantity, Decimal)
        assert got.rate_card == CARD
    # (since 0011 a line shows its job's run, not the run_id given here)
    assert len(versions(session)) == 7
    assert job_charges(session, ("alpha", 999, T0)) == []


def test_quantity_is_rounded_like_the_column_and_stays_unchanged(session, card_id):
    j = job(1)
    store_jobs(session, [j])
    fine = line(j, "cpu", "1.23456749", "0.05", "0.06")
    up = line(j, "mem", "2.0000005", "0.05", "0.10")
    assert replace(session, [j], [fine, up]) == ChargeCounts(0, 2, 0)
    got = {x.resource: x.quantity for x in job_charges(session, key(j))}
    assert got == {"cpu": Decimal("1.234567"), "mem": Decimal("2.000001")}  # half up
    assert replace(session, [j], [fine, up]) == ChargeCounts(0, 0, 1)


def test_money_is_never_rounded_and_bad_lines_are_refused(session, card_id):
    j, other = job(1), job(2)
    store_jobs(session, [j, other])
    bad = {
        "amount": dataclasses.replace(line(j), amount=Decimal("0.0000001")),
        "rate": dataclasses.replace(line(j), rate=Decimal("0.0000000001")),
        "float": dataclasses.replace(line(j), amount=0.1),  # type: ignore[arg-type]
        "nan": dataclasses.replace(line(j), quantity=Decimal("NaN")),
        "huge": dataclasses.replace(line(j), amount=Decimal("1e14")),
        "unit": dataclasses.replace(line(j), unit="gpu_hour"),
        "resource": dataclasses.replace(line(j), resource="disk"),
        "kind": line(j, kind="refund"),
        "basis": line(j, basis="peak"),
        "usage": line(j, usage="2026-13", posted="2026-11"),
        "posted": line(j, posted="2026-1"),
        "card": line(j, card="unknown"),
        "currency": line(j, currency="USD"),  # the card is in EUR
        "key": line(other),
    }
    for what, value in bad.items():
        with pytest.raises(ChargeStoreError):
            replace_charges(session, [key(j)], [value], run_id=1,
                            rate_card_ids={CARD: card_id})
        assert versions(session) == {}, what
    with pytest.raises(ChargeValueError, match="maps"):
        replace_charges(session, [key(j)], [line(j)], run_id=1,
                        rate_card_ids={CARD: card_id + 1})
    # Trailing zeros beyond the scale are not rounding; a mapping may omit cards.
    ok = dataclasses.replace(line(j), amount=Decimal("0.4250000000"))
    assert replace_charges(session, [key(j)], [ok], run_id=1,
                           rate_card_ids={}) == ChargeCounts(0, 1, 0)
    assert replace_charges(session, [], [], run_id=1, rate_card_ids={}) == ChargeCounts()


def test_re_replacing_unchanged_lines_writes_nothing(session, card_id):
    jobs = [job(i) for i in range(1, 6)]
    store_jobs(session, jobs)
    lines = [line(j, r, str(j.job_id_raw), "0.1") for j in jobs for r in ("cpu", "mem", "gpu")]
    lines.append(line(jobs[0], "cpu", "1", "0.1"))  # a duplicate line is a line too
    assert replace(session, jobs, lines, run_id=1) == ChargeCounts(0, 16, 0)
    session.commit()
    before = versions(session)

    shuffled = lines[:]
    random.Random(7).shuffle(shuffled)
    # Equal values at another Decimal scale are equal lines.
    shuffled = [dataclasses.replace(x, amount=x.amount.quantize(Q6)) for x in shuffled]
    assert replace(session, jobs, shuffled, run_id=2) == ChargeCounts(0, 0, 5)
    session.commit()
    assert versions(session) == before  # same lines, same xmin

    # One changed line rewrites that job's open lines only; a dropped duplicate counts.
    changed = [dataclasses.replace(x, rule="special") if x.job_id_raw == 3 and
               x.resource == "mem" else x for x in lines[:-1]]
    assert replace(session, jobs, changed, run_id=3) == ChargeCounts(7, 6, 3)
    session.commit()
    after = versions(session)
    kept = {i: v for i, v in after.items() if i in before}
    assert kept == {i: v for i, v in before.items() if i in after}
    assert len(kept) == 9 and len(after) - len(kept) == 6
    assert sort_lines([x for j in jobs for x in job_charges(session, key(j))]) == (
        sort_lines(changed))

    # A job given with no lines loses its open lines; a job not given is untouched.
    assert replace(session, [jobs[4]], [], run_id=4) == ChargeCounts(3, 0, 0)
    assert job_charges(session, key(jobs[4])) == [] and len(job_charges(session, key(jobs[3]))) == 3
    assert replace(session, [jobs[4]], [], run_id=5) == ChargeCounts(0, 0, 1)


# ------------------------------------------------------------------------ closed periods

def test_close_period_is_idempotent_and_validates(session):
    first = close_period(session, "2026-10", by="finance", note="October invoiced")
    session.commit()
    session.execute(text("SELECT pg_sleep(0.01)"))
    again = close_period(session, "2026-10", by="someone else", note=None)
    session.commit()
    assert again == first and first.closed and first.closed_by == "finance"
    assert first.closed_at is not None and first.closed_at.utcoffset() == timedelta(0)
    assert closed_periods(session) == frozenset({"2026-10"})
    for bad in ("2026-13", "2026-00", "2026-1", "26-11", "2026-11-01", "2026/11", " 2026-11",
                "２０２６-11", "", None, 202611):
        with pytest.raises(InvalidPeriodError, match="YYYY-MM"):
            close_period(session, bad, by="x")  # type: ignore[arg-type]
    with pytest.raises(ChargeStoreError):
        close_period(session, "2026-11", by="")


def test_closed_period_lines_are_never_changed(session, card_id):
    a, b = job(1), job(2)
    store_jobs(session, [a, b])
    october = [line(a, "cpu", "10", "0.1", usage="2026-10"),
               line(b, "gpu", "1", "2", usage="2026-10")]
    november = [line(a, "cpu", "5", "0.1"), line(b, "gpu", "3", "2")]
    assert replace(session, [a, b], october + november) == ChargeCounts(0, 4, 0)
    close_period(session, "2026-10", by="finance")
    session.commit()
    before = versions(session)
    frozen_ids = set(session.execute(text(
        "SELECT tableoid::text || ':' || ctid::text FROM charge_rows"
        " WHERE posted_month = '2026-10-01'")).scalars())

    # Repricing posts corrections in the open period; October stays as it was.
    correction = line(a, "cpu", "0", "0.1", "0.5", usage="2026-10", posted="2026-11",
                      kind="correction")
    assert replace(session, [a, b], [november[0], correction, november[1]]) == (
        ChargeCounts(1, 2, 1))
    # No new lines at all: only open lines go.
    assert replace(session, [a, b], []) == ChargeCounts(3, 0, 0)
    session.commit()
    after = versions(session)
    assert {i: before[i] for i in frozen_ids} == {i: after[i] for i in frozen_ids}
    assert set(after) == frozen_ids

    # A line aimed at a closed period is refused, and nothing changes.
    with pytest.raises(ClosedPeriodError, match="2026-10") as err:
        replace(session, [a], [line(a, "cpu", "11", "0.1", usage="2026-10")])
    assert err.value.periods == ("2026-10",)
    assert versions(session) == after


def test_close_period_waits_for_a_replacing_transaction(engine, session, card_id):
    a = job(1)
    store_jobs(session, [a])
    session.commit()
    replace(session, [a], [line(a)])  # transaction left open, holding SHARE
    with Session(engine) as other:
        other.execute(text("SET LOCAL lock_timeout = '100ms'"))
        with pytest.raises(OperationalError, match="lock timeout"):
            close_period(other, "2026-11", by="finance")
        other.rollback()
    session.commit()
    assert closed_periods(session, lock=True) == frozenset()  # a planner locks first
    with Session(engine) as other:
        other.execute(text("SET LOCAL lock_timeout = '100ms'"))
        with pytest.raises(OperationalError, match="lock timeout"):
            close_period(other, "2026-11", by="finance")
        other.rollback()
    session.commit()
    with Session(engine) as other:
        close_period(other, "2026-11", by="finance")
        other.commit()
    assert closed_periods(session) == frozenset({"2026-11"})


def test_frozen_lines_returns_only_closed_period_lines(session, card_id):
    a, b, c = job(1), job(2), job(3)
    store_jobs(session, [a, b, c])
    lines = [line(a, "cpu", "1", "1", usage="2026-09"), line(a, "mem", "2", "1", usage="2026-10"),
             line(a, "cpu", "3", "1"), line(b, "cpu", "4", "1", usage="2026-10"),
             line(c, "cpu", "5", "1")]
    replace(session, [a, b, c], lines)
    assert frozen_lines(session, [key(a), key(b), key(c)]) == {}
    close_period(session, "2026-09", by="f")
    close_period(session, "2026-10", by="f")
    zone = timezone(timedelta(hours=9))
    got = frozen_lines(session, [(a.cluster, a.job_id_raw, a.submit.astimezone(zone)),
                                 key(b), key(c), key(a), ("alpha", 99, T0)])
    assert got == {key(a): lines[:2], key(b): [lines[3]]}
    assert all(x.rate_card == CARD for xs in got.values() for x in xs)
    assert frozen_lines(session, []) == {}


def test_list_periods(session, card_id):
    a = job(1)
    store_jobs(session, [a])
    replace(session, [a], [line(a, usage=p) for p in ("2026-08", "2026-10", "2026-11")])
    close_period(session, "2026-07", by="f")
    close_period(session, "2026-08", by="f", note="done")
    periods = list_periods(session)
    assert [(p.period, p.closed) for p in periods] == [
        ("2026-07", True), ("2026-08", True), ("2026-10", False), ("2026-11", False)]
    assert periods[1].note == "done" and periods[2].closed_at is None


# ------------------------------------------------------------------------------- reports

def _report_fixture(session: Session) -> list[ChargeLine]:
    jobs = [
        job(1, account="physics", user="alice", partition="gpu", qos="normal"),
        job(2, account="physics", user="bob", partition="cpu", qos="high"),
        job(3, account="chem", user="carol", partition="cpu", qos="normal"),
        job(4, account=None, user="dave", partition="cpu", qos=None),
        job(5, cluster="beta", account="physics", user="alice", partition="gpu"),
    ]
    store_jobs(session, jobs)
    rng = random.Random(11)
    lines = []
    for j in jobs:
        for resource in ("cpu", "mem", "gpu:a100"):
            q = Decimal(rng.randint(1, 10**7)) / 1000
            r = Decimal(rng.randint(1, 10**6)) / 10**6
            lines.append(line(j, resource, str(q), str(r), str((q * r).quantize(Q6))))
        # Usage in October, posted in November: billed in November.
        lines.append(line(j, "cpu", "1.5", "0.1", "-0.15", usage="2026-10", posted="2026-11",
                          kind="correction"))
        lines.append(line(j, "node", "2", "1", "2", usage="2026-10"))  # October only
    replace(session, jobs, lines)
    return lines


def _hand_sums(lines: list[ChargeLine], jobs: dict[tuple, JobRecord], period: str,
               names: list[str], cluster: str | None = None) -> dict:
    attr = {"account": "account", "user": "user", "partition": "partition", "qos": "qos",
            "cluster": "cluster"}
    out: dict = defaultdict(lambda: {"jobs": set(), "amount": Decimal(0),
                                     "resources": defaultdict(lambda: [Decimal(0), "", Decimal(0)])})
    for x in lines:
        if x.posted_period != period or (cluster and x.cluster != cluster):
            continue
        j = jobs[x.job_key]
        group = tuple(x.resource if n == "resource" else getattr(j, attr[n]) for n in names)
        entry = out[(group, x.currency)]
        entry["jobs"].add(x.job_key)
        entry["amount"] += x.amount
        res = entry["resources"][x.resource]
        res[0] += x.quantity
        res[1] = x.unit
        res[2] += x.amount
    return out


def test_report_equals_hand_summed_lines(session, card_id):
    lines = _report_fixture(session)
    jobs = {key(j): j for j in list_jobs(session)}
    for names in ([], ["account"], ["account", "user"], ["resource"], ["cluster", "qos"],
                  ["partition", "account", "resource"], ["qos", "user", "cluster"]):
        for cluster in (None, "alpha"):
            rows = charge_report(session, period="2026-11", group_by=names, cluster=cluster)
            expected = _hand_sums(lines, jobs, "2026-11", names, cluster)
            assert len(rows) == len(expected), names
            for row in rows:
                assert list(row.group) == names
                want = expected[(tuple(row.group.values()), row.currency)]
                assert row.jobs == len(want["jobs"])
                assert row.amount == want["amount"]
                assert row.resources == {r: ResourceTotal(*v)
                                         for r, v in want["resources"].items()}
            keys = [tuple(row.group.values()) for row in rows]
            assert keys == sorted(keys, key=lambda k: tuple((v is None, v or "") for v in k))
    october = charge_report(session, period="2026-10", group_by=["account"], cluster=None)
    assert [(r["account"], r.amount, r.jobs) for r in october] == [
        ("chem", Decimal(2), 1), ("physics", Decimal(6), 3), (None, Decimal(2), 1)]
    assert october[0].resources == {"node": ResourceTotal(Decimal(2), "node_hour", Decimal(2))}
    assert charge_report(session, period="2026-12", group_by=["account"]) == []


def test_statement_total_equals_report_total(session, card_id):
    _report_fixture(session)
    report = charge_report(session, period="2026-11", group_by=["account"], cluster=None)
    assert len(report) == 3
    for row in report:
        stmt = [b.line for b in billed_lines(session, period="2026-11",
                                             account=row["account"])]
        assert sum((s.amount for s in stmt), Decimal(0)) == row.amount
        assert len({(s.cluster, s.job_id_raw, s.submit) for s in stmt}) == row.jobs
        order = [(s.submit, s.job_id_raw, s.cluster, s.resource) for s in stmt]
        assert order == sorted(order)
    physics = list(billed_lines(session, period="2026-11", account="physics",
                                cluster="beta"))
    assert len(physics) == 4 and {b.line.cluster for b in physics} == {"beta"}
    first = physics[0]
    assert first.job_id == "5" and first.user == "alice" and first.partition == "gpu"
    assert (first.account, first.qos) == ("physics", "normal")
    assert first.end is not None and first.line.rate_card == physics[-1].line.rate_card
    assert first.start is not None and first.start.utcoffset() == timedelta(0)
    assert {b.line.kind for b in physics} == {"charge", "correction"}
    assert {b.line.usage_period for b in physics if b.line.kind == "correction"} == {
        "2026-10"}


def test_group_by_is_validated_against_the_whitelist(session, card_id):
    _report_fixture(session)
    for bad in (["account; drop table jobs"], ["account", "account; drop table jobs"],
                "account", ["Account"], ["state"], ["account", "account"], [None], None):
        with pytest.raises(ChargeStoreError):
            charge_report(session, period="2026-11", group_by=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidPeriodError):
        charge_report(session, period="2026-11'; drop table jobs; --", group_by=[])
    assert session.execute(text("SELECT count(*) FROM jobs")).scalar() == 5


def test_two_currencies_are_never_added(session, card_id):
    usd = "card-usd"
    ensure_rate_card(session, version=usd, currency="USD", text="", source="/usd.toml")
    a, b = job(1), job(2)
    store_jobs(session, [a, b])
    replace(session, [a, b], [line(a, "cpu", "1", "1", "1.00"), line(a, "mem", "1", "1", "2"),
                              line(b, "cpu", "1", "3", "3", card=usd, currency="USD")])
    rows = charge_report(session, period="2026-11", group_by=["account"])
    assert [(r["account"], r.currency, r.amount, r.jobs) for r in rows] == [
        ("physics", "EUR", Decimal(3), 1), ("physics", "USD", Decimal(3), 1)]
    total = charge_report(session, period="2026-11", group_by=[])
    assert [(r.group, r.currency, r.amount) for r in total] == [
        ({}, "EUR", Decimal(3)), ({}, "USD", Decimal(3))]
    assert rows[1].resources == {"cpu": ResourceTotal(Decimal(1), "core_hour", Decimal(3))}


# ------------------------------------------------------------------------------- budgets

def test_budgets_used_fraction(session, card_id):
    a, b, c = job(1), job(2), job(3, account="chem")
    store_jobs(session, [a, b, c])
    replace(session, [a, b, c], [
        line(a, "cpu", "1", "1", "30"), line(b, "cpu", "1", "1", "12.5"),
        line(b, "mem", "1", "1", "7.5", usage="2026-10", posted="2026-11", kind="correction"),
        line(a, "cpu", "1", "1", "99", usage="2026-10"),          # other period
        line(c, "cpu", "1", "1", "5"),                             # other account
    ])
    ensure_rate_card(session, version="usd", currency="USD", text="", source="/u")
    replace(session, [c], [line(c, "cpu", "1", "1", "5"),
                           line(c, "gpu", "1", "1", "1000", card="usd", currency="USD")])
    set_budget(session, "physics", "2026-11", Decimal("10"), "EUR")
    set_budget(session, "physics", "2026-11", Decimal("200"), "EUR")  # overwrites
    set_budget(session, "chem", "2026-11", Decimal("20.5"), "EUR")
    set_budget(session, "bio", "2026-11", Decimal("0"), "EUR")
    set_budget(session, "physics", "2026-10", Decimal("50"), "EUR")
    budgets = list_budgets(session, "2026-11")
    assert [(x.account, x.amount, x.used, x.used_fraction) for x in budgets] == [
        ("bio", Decimal(0), Decimal(0), None),
        ("chem", Decimal("20.5"), Decimal(5), Decimal(5) / Decimal("20.5")),
        ("physics", Decimal(200), Decimal(50), Decimal("0.25")),
    ]
    everything = list_budgets(session)
    assert [(x.period, x.account, x.used) for x in everything] == [
        ("2026-10", "physics", Decimal(99)), ("2026-11", "bio", Decimal(0)),
        ("2026-11", "chem", Decimal(5)), ("2026-11", "physics", Decimal(50))]
    assert everything[0].used_fraction == Decimal("1.98")
    for bad in (Decimal("-1"), Decimal("0.0000001"), 1.5, Decimal("Infinity")):
        with pytest.raises(ChargeValueError):
            set_budget(session, "physics", "2026-11", bad, "EUR")  # type: ignore[arg-type]
    with pytest.raises(InvalidPeriodError):
        set_budget(session, "physics", "2026-13", Decimal(1), "EUR")
    with pytest.raises(InvalidPeriodError):
        list_budgets(session, "nope")


# ------------------------------------------------------------------------- jobs and range

def test_lines_of_a_job_that_is_not_stored_are_refused(session, card_id):
    # No foreign key since 0011 (engine.md §4): the writer itself refuses lines whose job
    # is not stored, before anything is committed.
    a, b = job(1), job(2)
    store_jobs(session, [a])
    with pytest.raises(ChargeValueError, match="not stored"):
        with session.begin_nested():
            replace(session, [a, b], [line(a), line(b)])
    assert session.execute(text("SELECT count(*) FROM charge_rows")).scalar() == 0
    assert replace(session, [a], [line(a)]) == ChargeCounts(0, 1, 0)


def test_job_keys_in_range(session):
    since, until = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    h = timedelta(hours=1)
    jobs = {
        "ended_before": job(1, start=since - 3 * h, end=since - h),
        "ended_at_since": job(2, start=since - 3 * h, end=since),
        "spans_start": job(3, start=since - h, end=since + h),
        "inside": job(4, start=since + h, end=since + 2 * h),
        "zero_length_inside": job(5, start=since + h, end=since + h),
        "running": job(6, start=since - h, end=None, final=False),
        "starts_at_until": job(7, start=until, end=until + h),
        "spans_all": job(8, start=since - h, end=until + h),
        "pending_in": job(9, submit=since + h, start=None, end=None, final=False),
        "pending_before": job(10, submit=since - h, start=None, end=None, final=False),
        "cancelled_at_until": job(11, submit=until, start=None, end=until),
        "other_cluster": job(12, cluster="beta", start=since + h, end=since + 2 * h),
    }
    store_jobs(session, list(jobs.values()))
    names = {key(j): n for n, j in jobs.items()}
    got = [names[k] for k in job_keys_in_range(session, since, until)]
    assert sorted(got) == sorted(["spans_start", "inside", "zero_length_inside", "running",
                                  "spans_all", "pending_in", "other_cluster"])
    keys = list(job_keys_in_range(session, since, until))
    assert keys == sorted(keys)
    assert "other_cluster" not in [names[k] for k in job_keys_in_range(
        session, since, until, cluster="alpha")]
    with pytest.raises(ValueError):
        list(job_keys_in_range(session, until, since))
    with pytest.raises(ValueError):
        list(job_keys_in_range(session, datetime(2026, 11, 1), until))


def test_quantize_helper_matches_postgres_rounding(session):
    # The tests above assume PostgreSQL rounds numeric half away from zero.
    values = ["1.0000005", "-1.0000005", "2.0000015"]
    got = session.execute(text("SELECT unnest(CAST(:v AS numeric(24,6)[]))"),
                          {"v": values}).scalars().all()
    assert got == [Decimal(v).quantize(Q6, rounding=ROUND_HALF_UP) for v in values]
