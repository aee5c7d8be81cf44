"""billing.ledger: the GL journal of a period, and the [gl] codes of billing.rates.
Amounts worked by hand in tests/finance_lines.py."""

from __future__ import annotations

from datetime import date
from decimal import Decimal as D

import pytest

from billing.ledger import JOURNAL_COLUMNS, GlCodeError, build_journal, journal_rows
from billing.rates import (
    GlCodes,
    GlMappingError,
    RateCardError,
    describe_card,
    load_gl_mapping,
    load_rate_card,
)
from tests.finance_lines import billed, november

CODES = GlCodes(receivable="1200", revenue="4000",
                receivable_by_account={"physics": "CC-PHY"},
                revenue_by_resource={"cpu": "4010", "gpu": "4020", "gpu:h100": "4021"})


def test_the_journal_balances_to_the_period_total():
    journal = build_journal(november(), "2026-11", CODES)
    assert [(x.line_no, x.gl_code, x.debit, x.credit, x.account, x.resource)
            for x in journal.lines] == [
        (1, "1200", D("1.66"), D(0), "chemistry", None),     # 0.80 + 0.90 - 0.04
        (2, "CC-PHY", D("6.94"), D(0), "physics", None),     # 0.50 + 6.20 + 0.20 + 0.04
        (3, "4010", D(0), D("1.46"), None, "cpu"),           # 0.50 + 0.20 + 0.80 - 0.04
        (4, "4000", D(0), D("0.04"), None, "mem"),           # no mem code: the default
        (5, "4020", D(0), D("0.90"), None, "gpu"),
        (6, "4021", D(0), D("6.20"), None, "gpu:h100"),
    ]
    assert journal.totals == {"EUR": D("8.60")}
    assert journal.balance("EUR") == (D("8.60"), D("8.60"))
    assert {x.journal for x in journal.lines} == {"HPC-2026-11-EUR"}
    assert {x.posting_date for x in journal.lines} == {date(2026, 11, 30)}


def test_journal_rows_are_the_documented_csv():
    rows = journal_rows(build_journal(november(), "2026-11", CODES, prefix="GL"))
    assert all(tuple(r) == JOURNAL_COLUMNS for r in rows)
    assert rows[0] == {"journal": "GL-2026-11-EUR", "line": "1", "posting_date": "2026-11-30",
                       "period": "2026-11", "gl_code": "1200", "debit": "1.66",
                       "credit": "0.00", "currency": "EUR", "account": "chemistry",
                       "resource": "", "description": "HPC charges 2026-11, account chemistry"}
    assert rows[-1]["credit"] == "6.20" and rows[-1]["debit"] == "0.00"
    assert rows[-1]["description"] == "HPC revenue 2026-11, gpu:h100"


def test_negative_nets_go_to_the_other_side_and_still_balance():
    # December: physics only has a correction of -0.50; chemistry is charged 0.30.
    # Accounts: physics -0.50 -> credit 0.50, chemistry debit 0.30.
    # Resource cpu: -0.50 + 0.30 = -0.20 -> debit 0.20. Debits 0.50 = credits 0.50.
    lines = [
        billed(5, "physics", "alice", "cpu", "-10.000000", "0.05", "-0.50",
               start="2026-11-20T00:00:00", end="2026-11-20T10:00:00", usage="2026-11",
               posted="2026-12", kind="correction"),
        billed(6, "chemistry", "carol", "cpu", "6.000000", "0.05", "0.30",
               start="2026-12-02T00:00:00", end="2026-12-02T06:00:00", usage="2026-12",
               posted="2026-12"),
    ]
    journal = build_journal(lines, "2026-12", CODES)
    assert [(x.gl_code, x.debit, x.credit) for x in journal.lines] == [
        ("1200", D("0.30"), D(0)), ("CC-PHY", D(0), D("0.50")), ("4010", D("0.20"), D(0))]
    assert journal.balance("EUR") == (D("0.50"), D("0.50"))
    assert journal.totals == {"EUR": D("-0.20")}


def test_missing_codes_are_named_all_at_once():
    with pytest.raises(GlCodeError) as err:
        build_journal(november() + [billed(7, None, "dave", "cpu", "1", "0.05", "0.05",
                                           start="2026-11-05T00:00:00",
                                           end="2026-11-05T01:00:00")],
                      "2026-11", GlCodes(revenue_by_resource={"cpu": "4010"}))
    assert err.value.accounts == ["chemistry", "physics", None]
    assert err.value.resources == ["mem", "gpu", "gpu:h100"]
    assert "(no account)" in str(err.value) and "gl.revenue_by_resource" in str(err.value)


def test_an_empty_period_or_a_foreign_line_is_an_error():
    with pytest.raises(ValueError, match="no charge lines posted in 2026-11"):
        build_journal([], "2026-11", CODES)
    with pytest.raises(ValueError, match="posted in 2026-11 given for the journal of 2026-12"):
        build_journal(november(), "2026-12", CODES)


def test_zero_nets_are_left_out():
    lines = [billed(8, "physics", "alice", "cpu", "1.000000", "0", "0.00",
                    start="2026-11-05T00:00:00", end="2026-11-05T01:00:00"),
             *november()]
    journal = build_journal(lines, "2026-11", CODES)
    assert journal.balance("EUR") == (D("8.60"), D("8.60"))
    assert len(journal.lines) == 6


# ------------------------------------------------------------------------- [gl] codes

CARD = """currency = "EUR"
scale = 2
period = "month"
timezone = "UTC"
[[rules]]
name = "base"
from = 2026-01-01
[rules.rates]
cpu_hour = "0.05"
"""


def test_the_card_gl_table_and_its_fallbacks():
    card = load_rate_card(CARD + """
[gl]
receivable = "1200"
revenue = "4000"
[gl.receivable_by_account]
physics = "CC-PHY"
[gl.revenue_by_resource]
gpu = "4020"
"gpu:h100" = "4021"
""")
    assert card.gl is not None
    assert card.gl.receivable_for("physics") == "CC-PHY"
    assert card.gl.receivable_for("chemistry") == "1200"
    assert card.gl.receivable_for(None) == "1200"
    assert card.gl.revenue_for("gpu:h100") == "4021"
    assert card.gl.revenue_for("gpu:a100") == "4020"        # a type without its own: gpu's
    assert card.gl.revenue_for("cpu") == "4000"
    assert load_rate_card(CARD).gl is None
    assert describe_card(card)[-4:] == [
        "GL: debit receivable 1200, credit revenue 4000",
        "  account \"physics\": receivable CC-PHY",
        "  resource gpu: revenue 4020", "  resource gpu:h100: revenue 4021"]
    # GL codes are part of the card's content, so of its version.
    assert card.version != load_rate_card(CARD).version


def test_bad_gl_tables_are_refused_with_every_problem_named():
    with pytest.raises(RateCardError) as err:
        load_rate_card(CARD + """
[gl]
receivable = 1200
ledger = "x"
[gl.receivable_by_account]
physics = ""
[gl.revenue_by_resource]
disk = "4090"
"gpu:" = "4020"
cpu = "4010\\t"
""")
    assert err.value.errors == [
        ("gl.ledger: unknown key (known: receivable, revenue, receivable_by_account, "
         "revenue_by_resource)"),
        'gl.receivable: a GL code must be a non-empty string, e.g. "4000", got 1200',
        ('gl.receivable_by_account.physics: a GL code must be a non-empty string, e.g. '
         '"4000", got ""'),
        ("gl.revenue_by_resource.disk: unknown resource (known: cpu, mem, gpu, node, "
         'billing, energy, gpu:<type>; write "gpu:h100" = ... with quotes)'),
        ("gl.revenue_by_resource.gpu:: unknown resource (known: cpu, mem, gpu, node, "
         'billing, energy, gpu:<type>; write "gpu:h100" = ... with quotes)'),
        ("gl.revenue_by_resource.cpu: a GL code is at most 64 characters, without control "
         'characters or surrounding spaces, got "4010\\t"'),
    ]


def test_a_gl_mapping_file():
    codes = load_gl_mapping('[gl]\nreceivable = "1200"\nrevenue = "4000"\n')
    assert (codes.receivable, codes.revenue) == ("1200", "4000")
    with pytest.raises(GlMappingError) as err:
        load_gl_mapping('receivable = "1200"\n')
    assert str(err.value).startswith("invalid GL mapping:")
    assert err.value.errors == [
        "receivable: unknown key (known: gl)",
        "gl: missing (a GL mapping file holds one [gl] table)"]
    with pytest.raises(GlMappingError, match="gl: empty"):
        load_gl_mapping("[gl]\n")
    with pytest.raises(GlMappingError, match="TOML syntax"):
        load_gl_mapping("[gl\n")
