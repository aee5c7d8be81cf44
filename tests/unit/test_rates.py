"""billing.rates: loading, validation (every error listed), versions and rule selection."""

from __future__ import annotations

import textwrap
from datetime import date, datetime, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from billing.rates import RateCard, RateCardError, describe_card, load_rate_card
from billing.records import JobRecord

UTC = timezone.utc

HEADER = """\
currency = "EUR"
scale = 2
period = "month"
timezone = "UTC"
"""

ISSUE_CARD = """\
currency = "EUR"
scale = 2              # decimal places of every charge line
period = "month"       # billing period
timezone = "UTC"       # where period boundaries fall
exempt_states = ["NODE_FAIL", "BOOT_FAIL"]   # optional: jobs in these states are not charged
accrue_running = false # optional: price running jobs to date (as_of), replaced when they end

[[rules]]
name = "base"
from = 2026-01-01              # inclusive; `until` (exclusive) is optional
[rules.rates]                  # per hour; a resource with no rate is not charged
cpu_hour = "0.031"
mem_gib_hour = "0.0047"
gpu_hour = "0.90"              # untyped GPUs, and typed ones with no entry below
node_hour = "0"
billing_unit_hour = "0"        # Slurm's billing TRES
energy_kwh = "0.30"            # optional
[rules.rates.gpu_hour_by_type]
a100 = "2.35"
[rules.basis]                  # optional, per resource: "allocated" (default), "used", "max"
cpu = "allocated"

[[rules]]
name = "chemistry"
match = { account = "chemistry" }     # keys: cluster, partition, account, qos, user; a value or a list
from = 2026-01-01
priority = 0                          # optional tie-breaker, higher wins
[rules.rates]
cpu_hour = "0.025"

[slurm.billing_weights]               # optional: TRESBillingWeights per partition, for reconcile
batch = "CPU=1.0,Mem=0.25G,GRES/gpu=2.0"
"""


def card(rules: str, header: str = HEADER) -> RateCard:
    return load_rate_card(header + textwrap.dedent(rules))


def errors_of(text: str) -> list[str]:
    with pytest.raises(RateCardError) as info:
        load_rate_card(text)
    assert isinstance(info.value, ValueError)
    return info.value.errors


def job(**kw) -> JobRecord:
    base = dict(cluster="lab", job_id="1", job_id_raw=1,
                submit=datetime(2026, 11, 22, tzinfo=UTC), state="COMPLETED",
                state_raw="COMPLETED", partition="batch", account="physics", user="root",
                qos="normal")
    base.update(kw)
    return JobRecord(**base)


AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


# ------------------------------------------------------------------------ the issue's card

def test_the_issue_card_loads():
    c = load_rate_card(ISSUE_CARD)
    assert (c.currency, c.scale, c.period, c.timezone) == ("EUR", 2, "month", "UTC")
    assert c.exempt_states == frozenset({"NODE_FAIL", "BOOT_FAIL"})
    assert c.accrue_running is False
    assert c.slurm_billing_weights == {"batch": "CPU=1.0,Mem=0.25G,GRES/gpu=2.0"}
    base, chem = c.rules
    assert (base.name, base.index, base.match, base.priority) == ("base", 0, {}, 0)
    assert base.valid_from == date(2026, 1, 1) and base.valid_until is None
    assert base.rates.cpu_hour == Decimal("0.031")
    assert base.rates.gpu_hour == Decimal("0.90")
    assert base.rates.gpu_hour_by_type == {"a100": Decimal("2.35")}
    assert base.rates.node_hour == Decimal("0")
    assert base.rates.energy_kwh == Decimal("0.30")
    assert base.basis == {"cpu": "allocated", "mem": "allocated", "gpu": "allocated",
                          "node": "allocated", "billing": "allocated", "energy": "used"}
    assert chem.match == {"account": frozenset({"chemistry"})}
    assert chem.rates.cpu_hour == Decimal("0.025")
    assert chem.rates.mem_gib_hour is None          # no inheritance from "base"
    assert len(c.version) == 64 and int(c.version, 16) >= 0


def test_version_ignores_comments_whitespace_and_key_order():
    c1 = load_rate_card(ISSUE_CARD)
    stripped = "\n".join(line.split("#")[0].rstrip() for line in ISSUE_CARD.splitlines())
    reordered = stripped.replace('currency = "EUR"\nscale = 2',
                                 'scale    =    2\n\n\ncurrency = "EUR"')
    assert reordered != ISSUE_CARD
    assert load_rate_card(reordered).version == c1.version
    changed = ISSUE_CARD.replace('cpu_hour = "0.025"', 'cpu_hour = "0.026"')
    assert load_rate_card(changed).version != c1.version


def test_describe_card_lists_every_rule():
    lines = describe_card(load_rate_card(ISSUE_CARD))
    text = "\n".join(lines)
    assert lines[0] == f"rate card {load_rate_card(ISSUE_CARD).version}"
    assert 'rule "base" (rules[0]): matches every job [0 key(s)]; from 2026-01-01, ' \
           'no end date; priority 0' in text
    assert 'rule "chemistry" (rules[1]): matches account = "chemistry"' in text
    assert "cpu            0.031 EUR per core-hour (allocated)" in text
    assert "gpu:a100" in text and "2.35 EUR per GPU-hour" in text
    assert "not charged:   mem, gpu, node, billing, energy" in text
    assert "exempt states (no charge): BOOT_FAIL, NODE_FAIL" in text
    assert "running jobs: not charged until they end" in text
    assert 'partition "batch": CPU=1.0,Mem=0.25G,GRES/gpu=2.0' in text


# ------------------------------------------------------------------------------ selection

SPECIFIC = """
[[rules]]
name = "base"
from = 2026-01-01
[rules.rates]
cpu_hour = "1"

[[rules]]
name = "chemistry"
match = { account = "chemistry" }
from = 2026-01-01
[rules.rates]
cpu_hour = "2"

[[rules]]
name = "chem-bob-carol"
match = { account = "chemistry", user = ["bob", "carol"] }
from = 2026-01-01
[rules.rates]
cpu_hour = "3"
"""


@pytest.mark.parametrize(("fields", "expected"), [
    ({"account": "physics", "user": "bob"}, "base"),
    ({"account": "chemistry", "user": "alice"}, "chemistry"),
    ({"account": "chemistry", "user": "bob"}, "chem-bob-carol"),      # 2 keys beat 1
    ({"account": "chemistry", "user": "carol"}, "chem-bob-carol"),    # list match
    ({"account": "chemistry", "user": None}, "chemistry"),            # no user: no match
    ({"account": None, "user": "bob"}, "base"),
])
def test_most_specific_rule_wins(fields, expected):
    rule = card(SPECIFIC).select_rule(job(**fields), AT)
    assert rule is not None and rule.name == expected


def test_date_ranges_are_local_midnights():
    c = card("""
        [[rules]]
        name = "old"
        from = 2026-01-01
        until = 2026-11-15
        [rules.rates]
        cpu_hour = "1"

        [[rules]]
        name = "new"
        from = 2026-11-15
        [rules.rates]
        cpu_hour = "2"
        """, header=HEADER.replace('"UTC"', '"Europe/Berlin"'))
    j = job()
    # Berlin is UTC+1 in November: 2026-11-15 00:00 local is 2026-11-14T23:00Z.
    assert c.select_rule(j, datetime(2026, 11, 14, 22, 59, 59, tzinfo=UTC)).name == "old"
    assert c.select_rule(j, datetime(2026, 11, 14, 23, 0, tzinfo=UTC)).name == "new"
    assert c.select_rule(j, datetime(2025, 12, 31, 22, 59, tzinfo=UTC)) is None
    assert c.select_rule(j, datetime(2025, 12, 31, 23, 0, tzinfo=UTC)).name == "old"
    with pytest.raises(ValueError, match="naive"):
        c.select_rule(j, datetime(2026, 11, 1))


def test_priority_resolves_what_would_conflict():
    c = card("""
        [[rules]]
        name = "chemistry"
        match = { account = "chemistry" }
        from = 2026-01-01
        [rules.rates]
        cpu_hour = "1"

        [[rules]]
        name = "bob"
        match = { user = "bob" }
        from = 2026-01-01
        priority = 5
        [rules.rates]
        cpu_hour = "2"
        """)
    assert c.select_rule(job(account="chemistry", user="bob"), AT).name == "bob"
    assert c.select_rule(job(account="chemistry", user="alice"), AT).name == "chemistry"
    assert c.select_rule(job(account="physics", user="bob"), AT).name == "bob"
    assert c.select_rule(job(account="physics", user="alice"), AT) is None


@pytest.mark.parametrize("key", ["cluster", "partition", "account", "qos", "user"])
def test_every_match_key(key):
    c = card(f"""
        [[rules]]
        name = "k"
        match = {{ {key} = "x" }}
        from = 2026-01-01
        [rules.rates]
        cpu_hour = "1"
        """)
    assert c.select_rule(job(**{key: "x"}), AT).name == "k"
    assert c.select_rule(job(**{key: "y"}), AT) is None


# ------------------------------------------------------------------------------ conflicts

def two_rules(a: str, b: str, extra_a: str = "", extra_b: str = "") -> str:
    return HEADER + textwrap.dedent(f"""
        [[rules]]
        name = "a"
        {a}
        {extra_a}
        [rules.rates]
        cpu_hour = "1"

        [[rules]]
        name = "b"
        {b}
        {extra_b}
        [rules.rates]
        cpu_hour = "2"
        """)


@pytest.mark.parametrize(("a", "b"), [
    ('from = 2026-01-01', 'from = 2026-06-01'),                                # both catch-all
    ('match = { account = "x" }\nfrom = 2026-01-01',
     'match = { user = "u" }\nfrom = 2026-01-01'),                             # key in one only
    ('match = { account = ["x", "y"] }\nfrom = 2026-01-01',
     'match = { account = "y" }\nfrom = 2026-01-01'),                          # lists intersect
    ('from = 2026-01-01\nuntil = 2026-06-02', 'from = 2026-06-01'),            # one day overlap
])
def test_conflicts_are_errors_naming_both(a, b):
    errors = errors_of(two_rules(a, b))
    assert len(errors) == 1
    assert 'rule "a" and rule "b" conflict' in errors[0]
    assert "priority" in errors[0]


def test_conflict_message_gives_an_example_job():
    errors = errors_of(two_rules('match = { account = "x" }\nfrom = 2026-01-01',
                                 'match = { user = "u" }\nfrom = 2026-01-01'))
    assert "fit a job with account=x, user=u from 2026-01-01 to open end" in errors[0]


@pytest.mark.parametrize(("a", "b", "winners"), [
    # adjacent: a until June, b from June on
    ('from = 2026-01-01\nuntil = 2026-06-01', 'from = 2026-06-01',
     {("x", datetime(2026, 5, 31, 23, tzinfo=UTC)): "a", ("x", datetime(2026, 6, 1, tzinfo=UTC)): "b"}),
    # disjoint matches
    ('match = { account = "x" }\nfrom = 2026-01-01',
     'match = { account = "y" }\nfrom = 2026-01-01',
     {("x", AT): "a", ("y", AT): "b", ("z", AT): None}),
    # 1 key vs 0: the more specific rule wins where it fits
    ('match = { account = "x" }\nfrom = 2026-01-01', 'from = 2026-01-01',
     {("x", AT): "a", ("z", AT): "b"}),
    # priorities differ: the higher wins
    ('from = 2026-01-01\npriority = 1', 'from = 2026-01-01', {("x", AT): "a"}),
])
def test_no_conflict(a, b, winners):
    card = load_rate_card(two_rules(a, b))
    assert [rule.name for rule in card.rules] == ["a", "b"]
    for (account, at), name in winners.items():
        rule = card.select_rule(job(account=account), at)
        assert (rule.name if rule is not None else None) == name, (account, at)


# ------------------------------------------------------------------------------ validation

def test_every_problem_is_listed_at_once():
    text = textwrap.dedent("""\
        currency = "eur"
        scale = 7
        period = "week"
        timezone = "Mars/Olympus"
        colour = "blue"
        accrue_running = "yes"

        [[rules]]
        name = "chemistry"
        match = { account = "chemistry", group = "x" }
        until = 2026-01-01
        [rules.rates]
        cpu_hour = "abc"
        mem_gib_hour = 0.0047
        gpu_hour = "-1"
        disk_hour = "1"
        [rules.basis]
        cpu = "peak"
        gpu = "used"
        energy = "allocated"

        [[rules]]
        name = "chemistry"
        from = 2026-02-01
        until = 2026-01-01
        [rules.rates]

        [[rules]]
        from = "2026-01-01"
        [rules.rates]
        """)
    errors = errors_of(text)
    expected = [
        'colour: unknown key',
        'currency: must be three upper-case letters (ISO 4217), e.g. "EUR", got "eur"',
        'scale: must be an integer from 0 to 6, got 7',
        'period: only "month" is supported, got "week"',
        'timezone: unknown timezone "Mars/Olympus"',
        'accrue_running: must be true or false, got "yes"',
        'rule "chemistry": match.group: unknown match key',
        'rule "chemistry": from: missing',
        'rule "chemistry": rates.cpu_hour: not a decimal: "abc"',
        'rule "chemistry": rates.mem_gib_hour: 0.0047 is a TOML float; write money as a '
        'string to keep it exact, e.g. "0.0047"',
        'rule "chemistry": rates.gpu_hour: must not be negative: "-1"',
        'rule "chemistry": rates.disk_hour: unknown key',
        'rule "chemistry": basis.cpu: unknown basis "peak"',
        'rule "chemistry": basis.gpu: "used" is not possible: Slurm records no GPU usage',
        'rule "chemistry": basis.energy: energy is always a measurement',
        'rules[1]: name: "chemistry" is already the name of rules[0]',
        'rules[1]: until: 2026-01-01 is not after from 2026-02-01',
        'rules[2]: name: missing',
        'rules[2]: from: write the date as a TOML date without quotes',
    ]
    for fragment in expected:
        assert any(fragment in e for e in errors), (fragment, errors)
    assert len(errors) == len(expected), errors


@pytest.mark.parametrize(("rules", "fragment"), [
    ('[[rules]]\nname = "r"\nfrom = 2026-01-01\n', 'rule "r": rates: missing'),
    ('[[rules]]\nname = "r"\nfrom = 2026-01-01T00:00:00\n[rules.rates]\n',
     'rule "r": from: write a date without a time'),
    ('[[rules]]\nname = "r"\nfrom = 2026-01-01\npriority = 1.5\n[rules.rates]\n',
     'rule "r": priority: must be an integer'),
    ('[[rules]]\nname = "r"\nfrom = 2026-01-01\nmatch = { user = [] }\n[rules.rates]\n',
     'rule "r": match.user: an empty list matches no job'),
    ('[[rules]]\nname = "r"\nfrom = 2026-01-01\nmatch = { user = 3 }\n[rules.rates]\n',
     'rule "r": match.user: must be a non-empty string'),
    ('[[rules]]\nname = "r"\nfrom = 2026-01-01\n[rules.rates]\ncpu_hour = true\n',
     'rule "r": rates.cpu_hour: not a decimal: true'),
    ('[[rules]]\nname = "r"\nfrom = 2026-01-01\n[rules.rates]\ncpu_hour = "NaN"\n',
     'rule "r": rates.cpu_hour: not a decimal: "NaN"'),
    ('[[rules]]\nname = "r"\nfrom = 2026-01-01\n[rules.rates]\n'
     '[rules.rates.gpu_hour_by_type]\na100 = 2.5\n',
     'rule "r": rates.gpu_hour_by_type.a100: 2.5 is a TOML float'),
    ('[[rules]]\nname = "r"\nfrom = 2026-01-01\n[rules.rates]\n'
     '[rules.rates.gpu_hour_by_type]\nuntyped = "1"\n',
     'rule "r": rates.gpu_hour_by_type.untyped: untyped GPUs are priced by gpu_hour'),
    ('[[rules]]\nname = "r"\nfrom = 2026-01-01\n[rules.rates]\n[rules.basis]\nnode = "max"\n',
     'rule "r": basis.node: "max" is not possible: Slurm records no node usage'),
    ('[[rules]]\nname = "r"\nfrom = 2026-01-01\n[rules.rates]\n[rules.basis]\n'
     'billing = "used"\n', 'rule "r": basis.billing: "used" is not possible'),
    ('[[rules]]\nname = "r"\nfrom = 2026-01-01\ncolour = 1\n[rules.rates]\n',
     'rule "r": colour: unknown key'),
    ('[[rules]]\nname = "r"\nfrom = 2026-01-01\n[rules.rates]\ncpu_hour = "1e12"\n',
     'rule "r": rates.cpu_hour: out of range: "1e12"'),
    ('[[rules]]\nname = "r"\nfrom = 2026-01-01\n[rules.rates]\n'
     'cpu_hour = "0.1234567890123456789012345"\n',
     'rule "r": rates.cpu_hour: out of range'),
    ('', 'rules: missing'),
    ('rules = []\n', 'rules: empty'),
    ('[[rules]]\nname = "r"\nfrom = 2026-01-01\n[rules.rates]\n'
     '[slurm.billing_weights]\nbatch = "CPU"\n', 'slurm.billing_weights.batch:'),
    ('[[rules]]\nname = "r"\nfrom = 2026-01-01\n[rules.rates]\n[slurm]\nweights = 1\n',
     'slurm.weights: unknown key'),
])
def test_single_problems(rules, fragment):
    errors = errors_of(HEADER + rules)
    assert len(errors) == 1 and fragment in errors[0], errors


@pytest.mark.parametrize("missing", ["currency", "scale", "period", "timezone"])
def test_required_top_level_keys(missing):
    header = "\n".join(line for line in HEADER.splitlines() if not line.startswith(missing))
    errors = errors_of(header + '\n[[rules]]\nname = "r"\nfrom = 2026-01-01\n[rules.rates]\n')
    assert errors == [e for e in errors if e.startswith(f"{missing}: missing")] and errors


def test_toml_syntax_error_names_the_line():
    errors = errors_of(HEADER + '[[rules]]\nname = "r\n')
    assert len(errors) == 1
    assert errors[0].startswith("TOML syntax:") and "line 6" in errors[0]


def test_integers_are_exact_money_and_exempt_states_are_normalised():
    c = load_rate_card(HEADER + 'exempt_states = [" node_fail "]\n[[rules]]\nname = "r"\n'
                       'from = 2026-01-01\n[rules.rates]\ncpu_hour = 2\n')
    assert c.rules[0].rates.cpu_hour == Decimal(2)
    assert c.exempt_states == frozenset({"NODE_FAIL"})


def test_timezone_is_a_tzinfo():
    c = load_rate_card(HEADER.replace('"UTC"', '"Europe/Berlin"')
                       + '[[rules]]\nname = "r"\nfrom = 2026-01-01\n[rules.rates]\n')
    assert c.tz == ZoneInfo("Europe/Berlin")
    assert card('[[rules]]\nname = "r"\nfrom = 2026-01-01\n[rules.rates]\n').tz == UTC


def test_error_message_lists_problems():
    with pytest.raises(RateCardError) as info:
        load_rate_card(HEADER.replace("scale = 2", "scale = -1"))
    assert str(info.value).startswith("invalid rate card:\n  - ")
    assert len(info.value.errors) == 2        # scale, rules missing
