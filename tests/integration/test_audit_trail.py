"""The audit trail on the real database (issue 20, item 6): the append-only table of
migration 0010, closing a period with its digest, and `verify` catching what it must: an
UPDATE of a closed period's line made directly in the database with triggers disabled,
an edited, removed or forged entry, a period reopened behind the trail's back, and (with
an anchor) a trail cut back at its newest end.

The lines come from `collect` of tests/fixtures/sacct-typed-gpus.psv (test_typed_gpus:
9 lines posted in 2026-11, physics 35.00, chemistry 1.05).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pytest

from billing.audit import EXPORT, PERIOD_CLOSE, AuditError, verify_chain
from collector import audit_trail
from collector.runtime import Runtime
from collector.settings import Settings
from collector.store import audit as store_audit
from collector.store import periods as store_periods
from collector.store.audit import AuditStoreError
from collector.usecases import audit as uc
from collector.usecases import periods as uc_periods
from tests.conftest import _libpq_dsn
from tests.helpers import run_cli
from tests.integration.test_typed_gpus import CARD
from tests.integration.test_typed_gpus import EXPORT as SACCT_EXPORT

PERIOD = "2026-11"
KEY = b"0123456789abcdef0123456789abcdef-test-key"


@pytest.fixture
def collected(db_url, tmp_path) -> str:
    card = tmp_path / "rates.toml"
    card.write_text(CARD)
    assert run_cli("collect", "--once", "--source", "file", "--input", str(SACCT_EXPORT),
                   "--rates", str(card), "--database-url", db_url) == 0
    return db_url


def make_runtime(db_url: str, key_file: Path | None) -> Runtime:
    env = {"DATABASE_URL": db_url}
    if key_file is not None:
        env["HPC_BILLING_AUDIT_KEY_FILE"] = str(key_file)
    return Runtime(Settings.load(env))


def key_file(directory: Path, key: bytes = KEY) -> Path:
    path = directory / f"audit-{len(list(directory.glob('audit-*')))}.key"
    path.write_bytes(key + b"\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def rt(db_url, tmp_path) -> Iterator[Runtime]:
    with make_runtime(db_url, key_file(tmp_path)) as runtime:
        yield runtime


@pytest.fixture
def trail(rt) -> audit_trail.AuditTrail:
    return rt.audit


def _sql(db_url: str, *statements: str) -> None:
    """Statements as the database's superuser, outside the collector (autocommit)."""
    conn = psycopg2.connect(**_libpq_dsn(db_url))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def _record(sessions, trail, n: int, action: str = EXPORT) -> None:
    for i in range(n):
        with sessions() as s:
            trail.record(s, action, f"thing {i}", {"i": i})
            s.commit()


# ------------------------------------------------------------------------ the table

def test_entries_chain_in_the_table_and_read_back_equal(sessions, trail):
    with sessions() as s:
        first = trail.record(s, EXPORT, "gl 2026-11", {"sha256": "ab" * 32, "lines": 9,
                                                       "nested": {"x": [1, "y", None, True]}})
        second = trail.record(s, EXPORT, "focus 2026-11", {"amount": "36.05", "name": "Zoë"})
        s.commit()
    assert (first.seq, second.seq, second.prev) == (1, 2, first.hash)
    with sessions() as s:
        stored = list(store_audit.entries(s))
        assert store_audit.head(s) == second and store_audit.count(s) == 2
    assert stored == [first, second]
    assert verify_chain(KEY, stored) is None


def test_the_table_refuses_update_and_delete(sessions, trail, db_url):
    _record(sessions, trail, 2)
    for statement in ("UPDATE audit_log SET actor = 'mallory' WHERE seq = 1",
                      "DELETE FROM audit_log WHERE seq = 2"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="append-only"):
            _sql(db_url, statement)
    with sessions() as s:
        assert store_audit.count(s) == 2


def test_refused_values_write_nothing(sessions, trail):
    with sessions() as s:
        with pytest.raises(AuditStoreError, match="NUL"):
            trail.record(s, EXPORT, "x", {"path": "a\x00b"})
        s.rollback()
        with pytest.raises(AuditError, match="unknown audit action"):
            trail.record(s, "export.everything", "x", {})
        with pytest.raises(AuditError, match="as a string"):
            trail.record(s, EXPORT, "x", {"amount": 1.5})
        s.rollback()
        assert store_audit.count(s) == 0


def test_concurrent_appenders_make_one_chain_without_gaps(db_url, sessions, trail):
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            _record(sessions, trail, n)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(15,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with sessions() as s:
        stored = list(store_audit.entries(s))
    assert [e.seq for e in stored] == list(range(1, 46))
    assert verify_chain(KEY, stored) is None


# ------------------------------------------------------------------ closing periods

def test_close_records_the_periods_digest_and_verify_passes(collected, sessions, trail, rt):
    closed = uc_periods.close_period(rt, PERIOD, note="November run")
    assert not closed.already_closed and closed.lines == 9 and closed.entry is not None
    assert closed.entry.details == {"digest": closed.digest, "lines": 9,
                                    "note": "November run"}
    again = uc_periods.close_period(rt, PERIOD)
    assert again.already_closed and again.entry is None
    report = uc.verify(rt)
    assert report.ok and report.entries == 1 and report.periods_checked == (PERIOD,)
    assert report.head == closed.entry and report.unsealed == ()


def test_close_reopen_and_verify_need_the_key(collected, sessions):
    with make_runtime(collected, None) as keyless:
        for call in (lambda: uc_periods.close_period(keyless, PERIOD),
                     lambda: uc_periods.reopen_period(keyless, PERIOD, reason="why"),
                     lambda: uc.verify(keyless)):
            with pytest.raises(audit_trail.AuditKeyError, match="HPC_BILLING_AUDIT_KEY_FILE"):
                call()
    with sessions() as s:
        assert store_periods.closed_periods(s) == frozenset()


def test_verify_fails_after_an_update_to_a_closed_periods_line_with_triggers_off(
        collected, sessions, trail, rt):
    uc_periods.close_period(rt, PERIOD)
    # Directly in the database, past every trigger (the rollup triggers included).
    _sql(collected, "SET session_replication_role = replica",
         "UPDATE charge_rows l SET amount_micro = amount_micro + 10000 FROM prices p"
         " WHERE p.id = l.price_id AND p.resource = 'gpu:h100' AND l.job_id_raw = 101")
    report = uc.verify(rt)
    assert not report.ok
    assert report.problem.where == f"period {PERIOD}"
    assert "changed since it was closed (entry 1: 9 lines" in report.problem.reason


def test_verify_fails_after_a_deleted_line_or_a_moved_one(collected, sessions, trail, rt):
    uc_periods.close_period(rt, PERIOD)
    _sql(collected, "SET session_replication_role = replica",
         "UPDATE charge_rows l SET posted_month = '2026-12-01' FROM prices p"
         " WHERE p.id = l.price_id AND l.job_id_raw = 104 AND p.resource = 'cpu'")
    report = uc.verify(rt)
    assert report.problem.where == f"period {PERIOD}"
    assert "now 8 lines" in report.problem.reason


def test_verify_names_a_period_reopened_behind_the_trails_back(collected, sessions, trail, rt):
    uc_periods.close_period(rt, PERIOD)
    _sql(collected, f"DELETE FROM billing_periods WHERE period = '{PERIOD}'")
    report = uc.verify(rt)
    assert report.problem.where == f"period {PERIOD}"
    assert "no period.reopen entry" in report.problem.reason


def test_a_period_closed_outside_the_trail_is_reported_unsealed(collected, sessions, rt):
    with sessions() as s:
        store_periods.close_period(s, "2026-10", by="before-the-trail")
        s.commit()
    uc_periods.close_period(rt, PERIOD)
    report = uc.verify(rt)
    assert report.ok and report.unsealed == ("2026-10",)


# -------------------------------------------------------------------- the trail itself

def test_verify_names_an_edited_entry(sessions, trail, db_url, rt):
    _record(sessions, trail, 4)
    _sql(db_url, "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update",
         "UPDATE audit_log SET details = '{\"i\": 7}' WHERE seq = 3",
         "ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update")
    report = uc.verify(rt)
    assert report.problem.where == "entry 3"
    assert "does not match its content" in report.problem.reason


def test_verify_names_the_entry_after_a_removed_one(sessions, trail, db_url, rt):
    _record(sessions, trail, 4)
    _sql(db_url, "SET session_replication_role = replica", "DELETE FROM audit_log WHERE seq = 2")
    report = uc.verify(rt)
    assert report.problem.where == "entry 3" and "removed" in report.problem.reason


def test_verify_with_another_key_fails_at_the_first_entry(sessions, trail, db_url, tmp_path):
    _record(sessions, trail, 2)
    other = key_file(tmp_path, b"another key that is long enough to use!!")
    with make_runtime(db_url, other) as rt_other:
        report = uc.verify(rt_other)
    assert report.problem.where == "entry 1"


def test_a_cut_back_tail_verifies_alone_and_fails_against_its_anchor(sessions, trail, db_url, rt):
    _record(sessions, trail, 5)
    full = uc.verify(rt)
    assert full.ok and full.entries == 5
    anchor = uc.Anchor.parse(uc.anchor_text(full.head), "anchor")
    assert anchor == uc.Anchor(5, full.head.hash)
    assert uc.verify(rt, anchor=anchor).ok

    _sql(db_url, "SET session_replication_role = replica", "DELETE FROM audit_log WHERE seq >= 4")
    cut = uc.verify(rt)
    # The documented limit: a shorter chain is still a valid chain. The head tells.
    assert cut.ok and cut.entries == 3 and cut.head.seq == 3
    found = uc.verify(rt, anchor=anchor)
    assert found.problem.where == "entry 5" and "ends at entry 3" in found.problem.reason
    # Seq alone is enough to see the cut; a hash also catches a re-written tail.
    assert uc.verify(rt, anchor=uc.Anchor(5)).problem.where == "entry 5"
    assert uc.verify(rt, anchor=uc.Anchor(2, "0" * 64)).problem.where == "entry 2"


def test_anchor_text_is_checked():
    assert uc.Anchor.parse("0  # the audit trail is empty\n", "f") == uc.Anchor(0)
    for bad in ("", "x", "3 abc", "-1", "1 2 3"):
        with pytest.raises(AuditError, match="expected"):
            uc.Anchor.parse(bad, "f")


# ------------------------------------------------------------------------- the key

def test_the_key_file(tmp_path):
    path = tmp_path / "audit.key"
    with pytest.raises(audit_trail.AuditKeyError, match="cannot read the audit key"):
        audit_trail.load_audit_key(path)
    path.write_bytes(b"short\n")
    with pytest.raises(audit_trail.AuditKeyError, match="has 5 bytes, it needs at least 32"):
        audit_trail.load_audit_key(path)
    path.write_bytes(b"k" * 32 + b"\n")
    path.chmod(0o644)
    assert audit_trail.load_audit_key(path) == b"k" * 32
    assert "every user can read" in audit_trail.key_file_warnings(path)[0]
    path.chmod(0o640)
    assert audit_trail.key_file_warnings(path) == []
    assert not audit_trail.load_trail(None).on


def test_entry_to_dict_keeps_the_hashed_time(sessions, trail):
    with sessions() as s:
        entry = audit_trail.append(s, KEY, actor="a", action=PERIOD_CLOSE, subject="2026-01",
                          details={"digest": "d", "lines": 0},
                          at=datetime(2026, 12, 1, 9, 0, 0, 123456, tzinfo=UTC))
        s.commit()
    assert uc.entry_to_dict(entry)["at"] == "2026-12-01T09:00:00.123456Z"
    with sessions() as s:
        assert store_audit.entry(s, 1) == entry
