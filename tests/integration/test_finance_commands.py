"""Issue 20's "done when", through the real commands on the real database: statements
(CSV, JSON, the PDF invoice read back), the GL journal and FOCUS export of a period,
`explain` for every job, the audit trail (`audit verify`, `audit list`, `period close`
and `reopen`), and bad input refused with a clear message, a non-zero exit and no file.

Data: `collect` of tests/fixtures/sacct-typed-gpus.psv priced by the card of
test_typed_gpus (physics 35.00, chemistry 1.05 in 2026-11; 9 lines), 2026-11 closed,
then `reprice` with the cpu rate 0.05 -> 0.06 per core-hour, which posts corrections of
2026-11 in 2026-12 (physics 60 core-hours +0.60, chemistry 1 core-hour +0.01): every
document must carry them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import subprocess
from decimal import Decimal as D
from pathlib import Path

import psycopg2
import pytest

from collector.usecases import exports as uc_exports
from tests.conftest import _libpq_dsn
from tests.helpers import audit_key_env, run_cli
from tests.integration.test_typed_gpus import CARD
from tests.integration.test_typed_gpus import EXPORT as SACCT_EXPORT

CARD_2 = CARD.replace('cpu_hour = "0.05"', 'cpu_hour = "0.06"')
SITE = {"HPC_BILLING_SITE_NAME": "Example HPC Centre",
        "HPC_BILLING_SITE_ADDRESS": "Example University|1 Compute Road|12345 Cluster City",
        "HPC_BILLING_INVOICE_PREFIX": "EHC", "HPC_BILLING_TAX_RATE": "19%",
        "HPC_BILLING_TAX_LABEL": "VAT",
        "HPC_BILLING_INVOICE_FOOTER": "Payable within 30 days to IBAN DE00 0000 0000 0000.",
        "HPC_BILLING_FOCUS_BILLING_ACCOUNT_ID": "EHC-1"}
GL_MAPPING = """[gl]
receivable = "1200"
revenue = "4000"
[gl.receivable_by_account]
physics = "CC-4711"
[gl.revenue_by_resource]
gpu = "4020"
"gpu:h100" = "4021"
"""
PERIODS = ("2026-11", "2026-12")


class Site:
    """A collected, closed and repriced database, and how to run commands on it."""

    def __init__(self, db_url: str, env: dict[str, str], tmp: Path) -> None:
        self.db_url, self.env, self.tmp = db_url, env, tmp

    def cli(self, *argv: str, env: dict[str, str] | None = None) -> int:
        return run_cli(*argv, "--database-url", self.db_url, env={**self.env, **(env or {})})

    def sql(self, *statements: str) -> list[tuple]:
        """As the database's superuser, outside hpc-billing; the last statement's rows."""
        conn = psycopg2.connect(**_libpq_dsn(self.db_url))
        rows: list[tuple] = []
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
                    rows = cur.fetchall() if cur.description else []
        finally:
            conn.close()
        return rows


def _logo(path: Path) -> Path:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (600, 240), (20, 70, 140))
    draw = ImageDraw.Draw(img)
    draw.rectangle((30, 30, 570, 210), outline=(255, 255, 255), width=8)
    draw.ellipse((60, 60, 180, 180), fill=(250, 180, 30))
    draw.text((220, 100), "EXAMPLE HPC", fill=(255, 255, 255))
    img.save(path, "PNG")
    return path


@pytest.fixture
def site(db_url, tmp_path) -> Site:
    env = {**audit_key_env(tmp_path), **SITE,
           "HPC_BILLING_SITE_LOGO": str(_logo(tmp_path / "logo.png"))}
    s = Site(db_url, env, tmp_path)
    card = tmp_path / "rates.toml"
    card.write_text(CARD)
    assert s.cli("collect", "--once", "--source", "file", "--input", str(SACCT_EXPORT),
                 "--rates", str(card)) == 0
    assert s.cli("period", "close", "2026-11", "--note", "November billed") == 0
    card.write_text(CARD_2)
    assert s.cli("reprice", "--since", "2026-11-01", "--until", "2026-12-01",
                 "--rates", str(card)) == 0
    return s


def _report(site: Site, period: str, capsys) -> dict[str | None, D]:
    capsys.readouterr()
    assert site.cli("report", "--period", period, "--group-by", "account", "--format",
                    "json") == 0
    return {r["account"]: D(r["amount"]) for r in json.loads(capsys.readouterr().out)}


def _audit(site: Site, capsys, *args: str) -> list[dict]:
    capsys.readouterr()
    assert site.cli("audit", "list", "--format", "json", "--limit", "1000", *args) == 0
    return json.loads(capsys.readouterr().out)


def test_the_fixture_has_charges_then_corrections(site, capsys):
    assert _report(site, "2026-11", capsys) == {"chemistry": D("1.05"), "physics": D("35.00")}
    assert _report(site, "2026-12", capsys) == {"chemistry": D("0.01"), "physics": D("0.60")}


# ------------------------------------------------------------------------- statements

@pytest.mark.parametrize("period", PERIODS)
def test_csv_and_json_statements_add_up_to_the_report(site, capsys, period):
    for account, amount in _report(site, period, capsys).items():
        out = site.tmp / f"{account}.csv"
        assert site.cli("statement", "--period", period, "--account", account,
                        "--output", str(out)) == 0
        rows = list(csv.DictReader(io.StringIO(out.read_text())))
        assert rows[-1]["job_id"] == "TOTAL" and D(rows[-1]["amount"]) == amount
        assert sum(D(r["amount"]) for r in rows[:-1]) == amount
        assert {r["kind"] for r in rows[:-1]} == (
            {"charge"} if period == "2026-11" else {"correction"})

        out_json = site.tmp / f"{account}.json"
        assert site.cli("statement", "--period", period, "--account", account,
                        "--format", "json", "--output", str(out_json)) == 0
        doc = json.loads(out_json.read_text())
        assert (doc["account"], doc["period"]) == (account, period)
        assert doc["totals"] == {"EUR": f"{amount:.2f}"}
        assert [(x["job_id"], x["resource"], x["quantity"], x["amount"])
                for x in doc["lines"]] == [
            (r["job_id"], r["resource"], r["quantity"], r["amount"]) for r in rows[:-1]]
    # Each statement is an export in the trail, with the SHA-256 of what was written.
    last = _audit(site, capsys, "--action", "export")[0]
    assert last["details"]["format"] == "json" and last["details"]["period"] == period
    assert last["details"]["documents"][0]["sha256"] == hashlib.sha256(
        out_json.read_bytes()).hexdigest()


def _pdf_text(path: Path) -> list[str]:
    out = subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return [" ".join(x.split()) for x in out.splitlines()]


@pytest.mark.skipif(not (shutil.which("pdftotext") and shutil.which("pdftoppm")),
                    reason="poppler-utils missing (tests/run.sh installs it)")
def test_the_pdf_invoice_read_back_shows_the_reports_total(site, capsys):
    from PIL import Image

    report = _report(site, "2026-11", capsys)
    out = site.tmp / "physics-2026-11.pdf"
    assert site.cli("statement", "--period", "2026-11", "--account", "physics",
                    "--format", "pdf", "--output", str(out)) == 0
    assert out.read_bytes().startswith(b"%PDF-")
    lines = _pdf_text(out)
    assert any("Account physics" in x for x in lines)
    assert any("Period 2026-11 (2026-11-01 to 2026-11-30)" in x for x in lines)
    (number,) = {w for x in lines for w in x.split() if w.startswith("EHC-202611-")}
    assert "GPU-hours, a100 7.00 GPU-h 2.00 14.00" in lines
    assert "GPU-hours, h100 9.00 GPU-h 2.00 18.00" in lines
    assert "CPU core-hours 60.00 core-h 0.05 3.00" in lines
    assert f"Subtotal {report['physics']:.2f}" in lines              # 35.00 = the report
    assert "VAT 19 % 6.65" in lines                                    # 35.00 x 0.19
    assert "Total (EUR) 41.65" in lines
    assert any("1 Compute Road" in x for x in lines)
    assert not any("PROVISIONAL" in x for x in lines)                  # 2026-11 is closed
    # Rendered to pictures: every page has ink on it.
    subprocess.run(["pdftoppm", "-png", "-r", "50", str(out), str(site.tmp / "page")],
                   check=True, capture_output=True, timeout=60)
    pages = sorted(site.tmp.glob("page-*.png"))
    assert len(pages) >= 2                                  # the summary and the appendix
    for page in pages:
        with Image.open(page) as img:
            assert sum(img.convert("L").histogram()[:128]) > 500, page

    # Issued again: the same number (stable), and the trail holds both issues.
    again = site.tmp / "again.pdf"
    assert site.cli("statement", "--period", "2026-11", "--account", "physics",
                    "--format", "pdf", "--output", str(again)) == 0
    assert any(number in x for x in _pdf_text(again))
    issues = [e for e in _audit(site, capsys, "--action", "export")
              if e["details"]["format"] == "pdf"]
    assert [e["details"]["invoices"][0]["number"] for e in issues] == [number, number]
    assert issues[0]["details"]["invoices"][0]["total"] == "41.65"

    # December (open, corrections only) is provisional, and its total is the report's.
    dec = site.tmp / "physics-2026-12.pdf"
    assert site.cli("statement", "--period", "2026-12", "--account", "physics",
                    "--format", "pdf", "--output", str(dec)) == 0
    lines = _pdf_text(dec)
    assert any("PROVISIONAL" in x for x in lines)
    assert "Subtotal 0.60" in lines
    # A correction of a rate is its own row, with no rate that would not check.
    assert "CPU core-hours, correction of 2026-11 0.00 core-h - 0.60" in lines


# ---------------------------------------------------------------------------- exports

@pytest.mark.parametrize("period", PERIODS)
def test_the_gl_journal_balances_to_the_periods_total(site, capsys, period):
    total = sum(_report(site, period, capsys).values())
    mapping = site.tmp / "gl.toml"
    mapping.write_text(GL_MAPPING)
    out = site.tmp / "gl.csv"
    assert site.cli("export", "gl", "--period", period, "--gl-mapping", str(mapping),
                    "--output", str(out)) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == ["journal", "line", "posting_date", "period", "gl_code", "debit",
                             "credit", "currency", "account", "resource", "description"]
    assert sum(D(r["debit"]) for r in rows) == sum(D(r["credit"]) for r in rows) == total
    assert {r["journal"] for r in rows} == {f"EHC-{period}-EUR"}
    assert {(r["account"], r["gl_code"]) for r in rows if r["account"]} == {
        ("physics", "CC-4711"), ("chemistry", "1200")}
    credits = {r["resource"]: r["gl_code"] for r in rows if r["resource"]}
    assert credits == ({"cpu": "4000", "gpu": "4020", "gpu:a100": "4020", "gpu:h100": "4021"}
                       if period == "2026-11" else {"cpu": "4000"})
    (entry,) = _audit(site, capsys, "--action", "export", "--subject", f"gl {period}")
    assert entry["details"]["totals"] == {"EUR": f"{total:.2f}"}
    assert entry["details"]["lines"] == (9 if period == "2026-11" else 4)
    assert entry["details"]["codes_from"] == f"mapping file {mapping}"


def test_gl_codes_from_the_card_and_missing_ones(site, capsys):
    out = site.tmp / "gl.csv"
    # No mapping, no [gl] in any card: exit 2 with what to do, and no file.
    assert site.cli("export", "gl", "--period", "2026-11", "--output", str(out)) == 2
    assert "--gl-mapping" in capsys.readouterr().err and not out.exists()
    # A mapping that misses codes: every missing one is named.
    partial = site.tmp / "partial.toml"
    partial.write_text('[gl]\nreceivable = "1200"\n[gl.revenue_by_resource]\ncpu = "4010"\n')
    assert site.cli("export", "gl", "--period", "2026-11", "--gl-mapping", str(partial),
                    "--output", str(out)) == 2
    err = capsys.readouterr().err
    assert "gpu:a100" in err and "gpu:h100" in err and not out.exists()
    # The card's own [gl] table.
    card = site.tmp / "rates-gl.toml"
    card.write_text(CARD_2 + '\n[gl]\nreceivable = "1300"\nrevenue = "4100"\n')
    assert site.cli("export", "gl", "--period", "2026-12", "--rates", str(card),
                    "--output", str(out)) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert {r["gl_code"] for r in rows} == {"1300", "4100"}


@pytest.mark.parametrize("period", PERIODS)
def test_focus_billed_cost_sums_to_the_periods_total(site, capsys, period, monkeypatch):
    total = sum(_report(site, period, capsys).values())
    monkeypatch.setattr(uc_exports, "FOCUS_CHUNK", 2)          # several chunks, one file
    out = site.tmp / "focus.csv"
    assert site.cli("export", "focus", "--period", period, "--output", str(out)) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert sum(D(r["BilledCost"]) for r in rows) == total
    assert len(rows) == (9 if period == "2026-11" else 4)
    assert {r["BillingPeriodStart"] for r in rows} == {f"{period}-01T00:00:00Z"}
    assert {r["ProviderName"] for r in rows} == {"Example HPC Centre"}
    assert {r["BillingAccountId"] for r in rows} == {"EHC-1"}
    assert {r["ChargeClass"] for r in rows} == ({""} if period == "2026-11"
                                                else {"Correction"})
    assert {r["SkuId"] for r in rows} >= ({"gpu:a100", "gpu:h100", "gpu"}
                                          if period == "2026-11" else {"cpu"})


# ---------------------------------------------------------------------------- explain

def test_explain_agrees_with_the_statement_for_every_job(site, capsys):
    statement: dict[tuple[str, str], list[tuple]] = {}
    for period in PERIODS:
        for account in _report(site, period, capsys):
            out = site.tmp / f"{account}-{period}.csv"
            assert site.cli("statement", "--period", period, "--account", account,
                            "--output", str(out)) == 0
            for r in list(csv.DictReader(io.StringIO(out.read_text())))[:-1]:
                statement.setdefault((r["job_id"], period), []).append(
                    (r["usage_period"], r["resource"], D(r["quantity"]), D(r["amount"]),
                     r["kind"]))
    jobs = sorted({job for job, _ in statement})
    assert jobs == ["101", "102", "103", "104"]
    for job in jobs:
        capsys.readouterr()
        assert site.cli("explain", "--job", job, "--format", "json") == 0
        (doc,) = json.loads(capsys.readouterr().out)["records"]
        for period in PERIODS:
            mine = [(x["usage_period"], x["resource"], D(x["quantity"]), D(x["amount"]),
                     x["kind"]) for x in doc["lines"] if x["posted_period"] == period]
            assert mine == statement.get((job, period), []), (job, period)
        assert D(doc["total"]) == sum(line[3] for p in PERIODS
                                      for line in statement.get((job, p), []))
        assert all(x["card_available"] and x["rule"] == "base" for x in doc["lines"])
        assert any("corrects" in x for x in doc["lines"] if x["kind"] == "correction")
    capsys.readouterr()
    assert site.cli("explain", "--job", "101", "--cluster", "lab") == 0
    text = capsys.readouterr().out
    assert text.startswith("job 101 (cluster lab") and "corrects 2026-11" in text


# ------------------------------------------------------------------------ bad input

def test_bad_input_gets_a_message_a_non_zero_exit_and_no_file(site, capsys):
    outputs = site.tmp / "out"
    outputs.mkdir()
    out = str(outputs / "doc")
    cases = [
        (("statement", "--period", "2026-11", "--account", "nobody", "--output", out), 1,
         "unknown account 'nobody'"),
        (("statement", "--period", "2026-10", "--account", "physics", "--format", "pdf",
          "--output", out), 1, "account 'physics' has no charges posted in 2026-10"),
        (("statement", "--period", "2026-10", "--account", "physics", "--output", out), 1,
         "no charges posted in 2026-10"),
        (("export", "gl", "--period", "2026-10", "--output", out), 1,
         "no charges posted in 2026-10"),
        (("export", "focus", "--period", "2026-10", "--output", out), 1,
         "no charges posted in 2026-10"),
        (("explain", "--job", "999"), 1, "no job '999'"),
        (("period", "reopen", "2026-12", "--reason", "test"), 1, "2026-12 is not closed"),
    ]
    for argv, code, message in cases:
        capsys.readouterr()
        assert site.cli(*argv) == code, argv
        assert message in capsys.readouterr().err, argv
    # The site's name is needed for an invoice and FOCUS (a configuration error).
    for argv in (("statement", "--period", "2026-11", "--account", "physics", "--format",
                  "pdf", "--output", out), ("export", "focus", "--period", "2026-11",
                                            "--output", out)):
        assert site.cli(*argv, env={"HPC_BILLING_SITE_NAME": ""}) == 2
        assert "HPC_BILLING_SITE_NAME" in capsys.readouterr().err
    assert list(outputs.iterdir()) == []
    assert _audit(site, capsys, "--action", "export") == []


# -------------------------------------------------------------------------- the trail

def test_audit_verify_passes_untouched_and_fails_after_an_update_to_a_closed_line(
        site, capsys):
    capsys.readouterr()
    assert site.cli("audit", "verify") == 0
    out = capsys.readouterr().out
    assert "audit trail verifies" in out and "1 closed period(s) match" in out
    # An UPDATE made directly in the database, with every trigger switched off.
    site.sql("SET session_replication_role = replica",
             "UPDATE charge_rows l SET amount_micro = amount_micro - 1000000 FROM prices p"
             " WHERE p.id = l.price_id AND l.posted_month = '2026-11-01'"
             " AND p.resource = 'gpu:h100' AND l.job_id_raw = 101")
    assert site.cli("audit", "verify") == 1
    out = capsys.readouterr().out
    assert "does NOT verify: period 2026-11: its charge lines changed since it was closed" in out


def test_audit_verify_fails_after_an_edit_of_the_trail(site, capsys):
    site.sql("ALTER TABLE audit_log DISABLE TRIGGER USER",
             "UPDATE audit_log SET details = jsonb_set(details, '{lines}', '8') "
             "WHERE action = 'period.close'",
             "ALTER TABLE audit_log ENABLE TRIGGER USER")
    (seq,) = site.sql("SELECT seq FROM audit_log WHERE action = 'period.close'")[0]
    capsys.readouterr()
    assert site.cli("audit", "verify") == 1
    assert f"does NOT verify: entry {seq}: its hash does not match" in capsys.readouterr().out


def test_the_trail_records_every_kind_of_action(site, capsys):
    assert site.cli("budget", "set", "physics", "2026-12", "100") == 0
    capsys.readouterr()
    assert site.cli("token", "new", "--scope", "account:physics") == 0
    token = capsys.readouterr().out.splitlines()[1].strip()
    assert len(token) > 30
    assert site.cli("export", "focus", "--period", "2026-11", "--output",
                    str(site.tmp / "f.csv")) == 0
    assert site.cli("period", "reopen", "2026-11", "--reason", "late job records") == 0
    entries = list(reversed(_audit(site, capsys)))
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    actions = [e["action"] for e in entries]
    assert actions == ["card.load", "period.close", "card.load", "correction", "reprice",
                       "budget.set", "token.create", "export", "period.reopen"]
    by = {e["action"]: e for e in entries}
    assert by["period.close"]["details"]["lines"] == 9
    assert by["period.close"]["details"]["note"] == "November billed"
    assert by["correction"]["details"]["lines"] == 4
    assert by["correction"]["details"]["usage_periods"] == ["2026-11"]
    assert by["correction"]["details"]["posted_periods"] == ["2026-12"]
    assert by["correction"]["details"]["amounts"] == {"EUR": "0.61"}
    assert by["reprice"]["details"]["new_corrections"] == 4
    assert by["budget.set"]["details"] == {"account": "physics", "period": "2026-12",
                                           "amount": "100", "currency": "EUR"}
    assert by["token.create"]["subject"] == "account:physics"
    assert by["token.create"]["details"]["hash_prefix"].startswith("sha256:")
    assert by["period.reopen"]["details"]["reason"] == "late job records"
    # The token itself is nowhere in the trail (only a prefix of its hash).
    assert not any(token in json.dumps(e) for e in entries)
    # Reopened: no digest is claimed for 2026-11 any more; the trail still verifies.
    assert site.cli("audit", "verify") == 0
    assert "0 closed period(s) match" in capsys.readouterr().out
    # Priced again with the same card, the same corrections are planned: they are
    # stored already, so no correction entry (the reprice says 0 new).
    card = site.tmp / "rates.toml"
    assert site.cli("period", "close", "2026-11") == 0
    assert site.cli("reprice", "--since", "2026-11-01", "--until", "2026-12-01",
                    "--rates", str(card)) == 0
    newest = _audit(site, capsys)[:2]
    assert [e["action"] for e in newest] == ["reprice", "period.close"]
    assert newest[0]["details"]["new_corrections"] == 0
    # And a changed rate posts new ones again: recorded.
    card.write_text(CARD_2.replace('cpu_hour = "0.06"', 'cpu_hour = "0.07"'))
    assert site.cli("reprice", "--since", "2026-11-01", "--until", "2026-12-01",
                    "--rates", str(card)) == 0
    newest = _audit(site, capsys)[:3]
    assert [e["action"] for e in newest] == ["reprice", "correction", "card.load"]
    assert newest[1]["details"]["amounts"] == {"EUR": "1.22"}   # 61 core-h x 0.02
    assert site.cli("audit", "verify") == 0


def test_a_cut_back_trail_is_caught_by_the_anchor(site, capsys):
    anchor = site.tmp / "anchor"
    assert site.cli("audit", "verify", "--anchor", str(anchor)) == 0
    seq, digest = anchor.read_text().split()
    assert int(seq) == 5       # card.load, period.close, card.load, correction, reprice
    assert site.cli("budget", "set", "physics", "2026-12", "5") == 0
    assert site.cli("audit", "verify", "--anchor", str(anchor)) == 0
    assert anchor.read_text().split()[0] == str(int(seq) + 1)
    # The newest entries removed: the chain alone still verifies (the documented limit),
    # the anchor does not.
    site.sql("SET session_replication_role = replica",
             f"DELETE FROM audit_log WHERE seq >= {int(seq)}")
    capsys.readouterr()
    assert site.cli("audit", "verify") == 0
    assert f"head entry {int(seq) - 1}" in capsys.readouterr().out
    assert site.cli("audit", "verify", "--anchor", str(anchor)) == 1
    assert f"entry {int(seq) + 1}: missing" in capsys.readouterr().out
    assert site.cli("audit", "verify", "--expect-seq", seq, "--expect-hash", digest) == 1


def test_a_missing_or_short_key_stops_a_command_at_start(site, capsys, tmp_path):
    short = tmp_path / "short.key"
    short.write_bytes(b"too short\n")
    for key, message in ((str(tmp_path / "nope.key"), "cannot read the audit key"),
                         (str(short), "has 9 bytes, it needs at least 32")):
        for argv in (("period", "close", "2026-12"), ("audit", "verify"),
                     ("budget", "set", "physics", "2026-12", "1"),
                     ("collect", "--once", "--source", "file", "--input", str(SACCT_EXPORT))):
            capsys.readouterr()
            assert site.cli(*argv, env={"HPC_BILLING_AUDIT_KEY_FILE": key}) == 2, argv
            assert message in capsys.readouterr().err
    # Nothing happened: 2026-12 still open, no budget, no new run.
    assert site.sql("SELECT count(*) FROM billing_periods WHERE period = '2026-12'") == [(0,)]
    assert site.sql("SELECT count(*) FROM budgets") == [(0,)]
    assert site.sql("SELECT count(*) FROM collector_runs") == [(2,)]
    # Unset: closing and verifying refuse; other commands run with a warning.
    no_key = {"HPC_BILLING_AUDIT_KEY_FILE": ""}
    for argv in (("period", "close", "2026-12"), ("audit", "verify")):
        capsys.readouterr()
        assert site.cli(*argv, env=no_key) == 2
        assert "needs the audit trail: set HPC_BILLING_AUDIT_KEY_FILE" in capsys.readouterr().err
    assert site.cli("budget", "set", "physics", "2026-12", "1", env=no_key) == 0
    assert "the audit trail is off" in capsys.readouterr().err
