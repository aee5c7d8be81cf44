"""The vector pricer's rule lookup (``VectorPricer._rule_index``) against
``RateCard.select_rule`` per job: it memoises a rule per (match keys, span of days between
the card's ``from``/``until`` dates), so jobs on either side of, and on, every such date
must get the rule ``select_rule`` gives them, in any order and across batches."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import cast

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.rates import load_rate_card
from billing.records import JobRecord
from collector.pricing.frame import VectorPricer, _Match

CARD = load_rate_card('''
currency = "EUR"
scale = 2
period = "month"
timezone = "Europe/Berlin"

[[rules]]
name = "base"
from = 2026-01-01
until = 2026-03-01
[rules.rates]
cpu_hour = "0.03"

[[rules]]
name = "base-march"
from = 2026-03-01
[rules.rates]
cpu_hour = "0.04"

[[rules]]
name = "x-winter"
match = { account = "x" }
from = 2026-02-15
until = 2026-03-02
[rules.rates]
cpu_hour = "0.02"

[[rules]]
name = "gpu-one-day"
match = { partition = "gpu", account = "x" }
from = 2026-03-01
until = 2026-03-02
[rules.rates]
cpu_hour = "0.5"

[[rules]]
name = "y-from-april"
match = { account = "y", qos = "high" }
from = 2026-04-01
[rules.rates]
cpu_hour = "0.01"
''')

BOUNDS = [date(2026, 1, 1), date(2026, 2, 15), date(2026, 3, 1), date(2026, 3, 2),
          date(2026, 4, 1)]
# every bound, the days either side of it, and days far from any
DAYS = sorted({b + timedelta(days=d) for b in BOUNDS for d in (-1, 0, 1)}
              | {date(2025, 6, 1), date(2026, 1, 20), date(2026, 9, 9)})

job = st.tuples(st.sampled_from(["a", "b"]), st.sampled_from([None, "gpu", "cpu"]),
                st.sampled_from([None, "x", "y"]), st.sampled_from([None, "high"]),
                st.sampled_from(["u1", "u2"]), st.sampled_from(DAYS))
SCHEMA = {"cluster": pl.String(), "partition": pl.String(), "account": pl.String(),
          "qos": pl.String(), "user": pl.String(), "day0": pl.Date()}


def _expected(row: tuple[str, str | None, str | None, str | None, str, date]) -> int:
    cl, part, acct, qos, user, day = row
    at = datetime(day.year, day.month, day.day, 12, tzinfo=CARD.tz)
    rule = CARD.select_rule(cast(JobRecord, _Match(cl, part, acct, qos, user)), at)
    return -1 if rule is None else CARD.rules.index(rule)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(job, min_size=1, max_size=40), min_size=1, max_size=4))
def test_every_job_gets_select_rules_rule(batches):
    pricer = VectorPricer(CARD, datetime(2030, 1, 1, tzinfo=CARD.tz))
    for rows in batches:        # one pricer: later batches hit the memo of earlier ones
        frame = pl.DataFrame(rows, schema=SCHEMA, orient="row")
        got = pricer._rule_index(frame)
        assert got.columns == [*SCHEMA, "rule_idx"]
        assert got.drop("rule_idx").equals(frame)       # same rows, same order
        assert got["rule_idx"].to_list() == [_expected(r) for r in rows]


def test_the_bounds_are_the_cards_dates():
    pricer = VectorPricer(CARD, datetime(2030, 1, 1, tzinfo=CARD.tz))
    assert pricer._bounds.to_list() == BOUNDS
    # a rule that changes on a day is looked up once per side of it: two jobs on the days
    # either side of 2026-03-01 differ, two on days inside one span share a memo entry
    frame = pl.DataFrame([("a", "gpu", "x", None, "u1", date(2026, 2, 28)),
                          ("a", "gpu", "x", None, "u1", date(2026, 3, 1)),
                          ("a", "gpu", "x", None, "u1", date(2026, 3, 2)),
                          ("a", "gpu", "x", None, "u1", date(2026, 3, 20))],
                         schema=SCHEMA, orient="row")
    names = [CARD.rules[i].name for i in pricer._rule_index(frame)["rule_idx"]]
    assert names == ["x-winter", "gpu-one-day", "base-march", "base-march"]
    assert len(pricer._rules) == 3
