"""Rate cards: the TOML format, its validation, effective dating and rule selection.

Design notes: docs/design/billing.md.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, tzinfo
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from billing.reconcile import parse_billing_weights
from billing.records import JobRecord

MATCH_KEYS = ("cluster", "partition", "account", "qos", "user")
# rates.<key> -> the charge-line resource it prices
RATE_KEYS: dict[str, str] = {
    "cpu_hour": "cpu",
    "mem_gib_hour": "mem",
    "gpu_hour": "gpu",
    "node_hour": "node",
    "billing_unit_hour": "billing",
    "energy_kwh": "energy",
}
BASES = ("allocated", "used", "max")
DEFAULT_BASIS: dict[str, str] = {
    "cpu": "allocated", "mem": "allocated", "gpu": "allocated",
    "node": "allocated", "billing": "allocated", "energy": "used",
}
_ALLOCATED_ONLY = {"gpu": "GPU", "node": "node", "billing": "billing"}
_TOP_KEYS = ("currency", "scale", "period", "timezone", "exempt_states", "accrue_running",
             "rules", "slurm", "gl")
_RULE_KEYS = ("name", "match", "from", "until", "priority", "rates", "basis")
_CURRENCY = re.compile(r"[A-Z]{3}")
MAX_SCALE = 6
MAX_RATE = Decimal(10) ** 12
MAX_RATE_DIGITS = 24
# Distinct (cluster, partition, account, qos, user) combinations select_rule remembers.
_FITTING_MEMO = 65_536


class RateCardError(ValueError):
    """A rate card that cannot be used; ``errors`` lists every problem found."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("invalid rate card:\n" + "\n".join(f"  - {e}" for e in self.errors))


class GlMappingError(RateCardError):
    """A GL mapping file that cannot be used; ``errors`` lists every problem found."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(errors)
        self.args = ("invalid GL mapping:\n" + "\n".join(f"  - {e}" for e in self.errors),)


@dataclass(frozen=True)
class Rates:
    """A rule's rates (currency per unit); None = the resource is not charged."""

    cpu_hour: Decimal | None = None
    mem_gib_hour: Decimal | None = None
    gpu_hour: Decimal | None = None
    gpu_hour_by_type: dict[str, Decimal] = field(default_factory=dict, hash=False)
    node_hour: Decimal | None = None
    billing_unit_hour: Decimal | None = None
    energy_kwh: Decimal | None = None

    def for_resource(self, resource: str) -> Decimal | None:
        """The rate of a charge-line resource: ``cpu`` ... ``energy`` or ``gpu:<type>``."""
        if resource.startswith("gpu:"):     # a type without its own rate: gpu_hour
            return self.gpu_hour_by_type.get(resource[4:], self.gpu_hour)
        for key, name in RATE_KEYS.items():
            if name == resource:
                rate: Decimal | None = getattr(self, key)
                return rate
        raise KeyError(resource)


@dataclass(frozen=True)
class Rule:
    """One ``[[rules]]`` entry. ``index`` is its position in the card (0-based)."""

    name: str
    index: int
    match: dict[str, frozenset[str]] = field(hash=False)
    valid_from: date
    valid_until: date | None
    priority: int
    rates: Rates
    basis: dict[str, str] = field(hash=False)   # every resource, defaults filled in
    # billing.price's memo of the lines this rule asks for, per GPU mix: derived from the
    # rule alone (so never stale), and not part of its value.
    memo: dict[Any, Any] = field(default_factory=dict, init=False, repr=False,
                                 compare=False, hash=False)

    @property
    def specificity(self) -> int:
        """Number of match keys: more keys = more specific."""
        return len(self.match)

    def matches(self, job: JobRecord) -> bool:
        """Every match key holds for the job (an absent job field never matches)."""
        return all(getattr(job, key) in values for key, values in self.match.items())

    def in_effect(self, day: date) -> bool:
        """``day`` (a local date in the card's timezone) is in [valid_from, valid_until)."""
        return self.valid_from <= day and (self.valid_until is None or day < self.valid_until)


@dataclass(frozen=True)
class GlCodes:
    """General-ledger codes (the card's ``[gl]`` table or a mapping file).

    Debits go to an account's receivable or cost centre: ``receivable_by_account[account]``,
    else ``receivable``. Credits go to revenue per resource: ``revenue_by_resource`` for
    the resource (``gpu:<type>`` falls back to ``gpu``), else ``revenue``. None: no code.
    """

    receivable: str | None = None
    revenue: str | None = None
    receivable_by_account: dict[str, str] = field(default_factory=dict, hash=False)
    revenue_by_resource: dict[str, str] = field(default_factory=dict, hash=False)

    def receivable_for(self, account: str | None) -> str | None:
        """The code debited for a Slurm account's charges (None: the account has none)."""
        if account is not None and account in self.receivable_by_account:
            return self.receivable_by_account[account]
        return self.receivable

    def revenue_for(self, resource: str) -> str | None:
        """The code credited with a resource's revenue (None: the resource has none)."""
        found = self.revenue_by_resource.get(resource)
        if found is None and resource.startswith("gpu:"):
            found = self.revenue_by_resource.get("gpu")
        return found if found is not None else self.revenue


@dataclass(frozen=True)
class RateCard:
    """A validated rate card (see the module docstring). ``version`` is its content hash."""

    currency: str
    scale: int
    period: str
    timezone: str
    exempt_states: frozenset[str]
    accrue_running: bool
    rules: tuple[Rule, ...]
    version: str
    slurm_billing_weights: dict[str, str] = field(default_factory=dict, hash=False)
    gl: GlCodes | None = None        # the optional [gl] table: general-ledger codes
    # select_rule's memo: the rules whose match holds for a combination of the match
    # fields, best first. Derived from the card alone; not part of its value.
    _fitting: dict[tuple[str | None, ...], tuple[Rule, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False)

    @cached_property
    def tz(self) -> tzinfo:
        """The card's timezone as a tzinfo."""
        return _zone(self.timezone)

    @cached_property
    def _by_preference(self) -> tuple[Rule, ...]:
        """The rules, the one that wins a tie first: most match keys, then highest
        priority, then the earlier in the card."""
        return tuple(sorted(self.rules, key=lambda r: (-r.specificity, -r.priority, r.index)))

    def fitting_rules(self, job: JobRecord) -> tuple[Rule, ...]:
        """The rules whose ``match`` holds for ``job`` (whatever their dates), the
        winner of a tie first. Remembered per combination of the match fields (at most
        _FITTING_MEMO of them; the memo starts over when full)."""
        key = (job.cluster, job.partition, job.account, job.qos, job.user)
        fitting = self._fitting.get(key)
        if fitting is None:
            if len(self._fitting) >= _FITTING_MEMO:
                self._fitting.clear()
            fitting = self._fitting[key] = tuple(
                rule for rule in self._by_preference if rule.matches(job))
        return fitting

    def select_rule(self, job: JobRecord, at: datetime) -> Rule | None:
        """The rule that prices ``job`` at the instant ``at`` (aware), or None.

        Fitting rules: match holds and [from, until) (local midnights) contains ``at``.
        Winner: most match keys, then highest priority. Loading guarantees there is no
        further tie; if one remained, the earlier rule in the card would win.
        """
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError(f"select_rule: naive datetime {at!r}")
        day = at.astimezone(self.tz).date()
        for rule in self.fitting_rules(job):     # best first: the first in effect wins
            if rule.valid_from <= day and (rule.valid_until is None or day < rule.valid_until):
                return rule
        return None

    def rule_named(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)


def _zone(name: str) -> tzinfo:
    if name == "UTC":
        return UTC
    return ZoneInfo(name)


# ------------------------------------------------------------------------------ loading

def _show(value: Any) -> str:
    """A value as the user would recognise it in their TOML."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, (date, time)):
        return value.isoformat()
    return str(value)


def _decimal(value: Any, where: str, errors: list[str]) -> Decimal | None:
    """A money value: a decimal string (or an integer), finite, not negative."""
    if isinstance(value, Decimal):          # a TOML float (tomllib parse_float=Decimal)
        errors.append(f"{where}: {value} is a TOML float; write money as a string to keep "
                      f"it exact, e.g. \"{value}\"")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        errors.append(f"{where}: not a decimal: {_show(value)}")
        return None
    try:
        number = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        errors.append(f"{where}: not a decimal: {_show(value)}")
        return None
    if not number.is_finite():
        errors.append(f"{where}: not a decimal: {_show(value)}")
        return None
    if number < 0:
        errors.append(f"{where}: must not be negative: {_show(value)}")
        return None
    # Bounds that keep every rate x quantity exact in billing.price's 60-digit arithmetic.
    if len(number.as_tuple().digits) > MAX_RATE_DIGITS or number >= MAX_RATE:
        errors.append(f"{where}: out of range: {_show(value)} (at most {MAX_RATE_DIGITS} "
                      f"significant digits, below {MAX_RATE:,})")
        return None
    return number


def _date(value: Any, where: str, errors: list[str]) -> date | None:
    if isinstance(value, (datetime, time)):
        errors.append(f"{where}: write a date without a time, e.g. 2026-01-01 (a rule "
                      f"starts and ends at midnight in the card's timezone), got "
                      f"{_show(value)}")
        return None
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        errors.append(f"{where}: write the date as a TOML date without quotes, e.g. "
                      f"2026-01-01, got {_show(value)}")
        return None
    errors.append(f"{where}: not a date: {_show(value)}")
    return None


def _unknown_keys(table: dict[str, Any], allowed: tuple[str, ...] | dict[str, Any], where: str,
                  errors: list[str]) -> None:
    for key in table:
        if key not in allowed:
            known = ", ".join(allowed)
            errors.append(f"{where}{key}: unknown key (known: {known})")


def _match(value: Any, where: str, errors: list[str]) -> dict[str, frozenset[str]] | None:
    if not isinstance(value, dict):
        errors.append(f"{where}: must be a table, e.g. {{ account = \"chemistry\" }}, "
                      f"got {_show(value)}")
        return None
    before = len(errors)
    out: dict[str, frozenset[str]] = {}
    for key, item in value.items():
        if key not in MATCH_KEYS:
            errors.append(f"{where}.{key}: unknown match key (known: {', '.join(MATCH_KEYS)})")
            continue
        items = item if isinstance(item, list) else [item]
        if not items:
            errors.append(f"{where}.{key}: an empty list matches no job")
            continue
        bad = [v for v in items if not isinstance(v, str) or not v.strip()]
        if bad:
            errors.append(f"{where}.{key}: must be a non-empty string or a list of them, "
                          f"got {_show(bad[0])}")
            continue
        out[key] = frozenset(items)
    return out if len(errors) == before else None


def _rates(value: Any, where: str, errors: list[str]) -> Rates | None:
    if not isinstance(value, dict):
        errors.append(f"{where}: must be a table of rates, got {_show(value)}")
        return None
    before = len(errors)
    allowed = (*RATE_KEYS, "gpu_hour_by_type")
    _unknown_keys(value, allowed, f"{where}.", errors)
    found: dict[str, Any] = {}
    for key in RATE_KEYS:
        if key in value:
            found[key] = _decimal(value[key], f"{where}.{key}", errors)
    by_type: dict[str, Decimal] = {}
    if "gpu_hour_by_type" in value:
        table = value["gpu_hour_by_type"]
        if not isinstance(table, dict):
            errors.append(f"{where}.gpu_hour_by_type: must be a table of GPU type = rate, "
                          f"got {_show(table)}")
        else:
            for gpu_type, rate in table.items():
                if gpu_type == "untyped":
                    errors.append(f"{where}.gpu_hour_by_type.untyped: untyped GPUs are "
                                  f"priced by gpu_hour")
                    continue
                number = _decimal(rate, f"{where}.gpu_hour_by_type.{gpu_type}", errors)
                if number is not None:
                    by_type[gpu_type] = number
    if len(errors) != before:
        return None
    return Rates(gpu_hour_by_type=by_type, **found)


def _basis(value: Any, where: str, errors: list[str]) -> dict[str, str] | None:
    if not isinstance(value, dict):
        errors.append(f"{where}: must be a table of resource = basis, got {_show(value)}")
        return None
    before = len(errors)
    out = dict(DEFAULT_BASIS)
    for resource, basis in value.items():
        at = f"{where}.{resource}"
        if resource not in DEFAULT_BASIS:
            errors.append(f"{at}: unknown resource (known: {', '.join(DEFAULT_BASIS)})")
        elif basis not in BASES:
            errors.append(f"{at}: unknown basis {_show(basis)} (known: {', '.join(BASES)})")
        elif resource in _ALLOCATED_ONLY and basis != "allocated":
            errors.append(f"{at}: {_show(basis)} is not possible: Slurm records no "
                          f"{_ALLOCATED_ONLY[resource]} usage; only \"allocated\"")
        elif resource == "energy" and basis != "used":
            errors.append(f"{at}: energy is always a measurement; only \"used\"")
        else:
            out[resource] = basis
    return out if len(errors) == before else None


def _rule(index: int, value: Any, errors: list[str], names: dict[str, int]) -> Rule | None:
    if not isinstance(value, dict):
        errors.append(f"rules[{index}]: must be a table ([[rules]]), got {_show(value)}")
        return None
    before = len(errors)
    name = value.get("name")
    label = f"rules[{index}]"
    if "name" not in value:
        errors.append(f"{label}: name: missing (every rule needs a name: charges record it)")
    elif not isinstance(name, str) or not name.strip():
        errors.append(f"{label}: name: must be a non-empty string, got {_show(name)}")
    elif name in names:
        errors.append(f"{label}: name: {_show(name)} is already the name of "
                      f"rules[{names[name]}]; rule names must be unique")
    else:
        names[name] = index
        label = f"rule {_show(name)}"
    _unknown_keys(value, _RULE_KEYS, f"{label}: ", errors)

    match = _match(value.get("match", {}), f"{label}: match", errors)
    valid_from = valid_until = None
    if "from" not in value:
        errors.append(f"{label}: from: missing (the first day the rule applies, e.g. "
                      f"from = 2026-01-01)")
    else:
        valid_from = _date(value["from"], f"{label}: from", errors)
    if "until" in value:
        valid_until = _date(value["until"], f"{label}: until", errors)
        if valid_from is not None and valid_until is not None and valid_until <= valid_from:
            errors.append(f"{label}: until: {valid_until.isoformat()} is not after from "
                          f"{valid_from.isoformat()} (until is exclusive)")
    priority = value.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        errors.append(f"{label}: priority: must be an integer, got {_show(priority)}")
    rates = None
    if "rates" not in value:
        errors.append(f"{label}: rates: missing (write an empty [rules.rates] table for a "
                      f"rule that charges nothing)")
    else:
        rates = _rates(value["rates"], f"{label}: rates", errors)
    basis = _basis(value.get("basis", {}), f"{label}: basis", errors)
    if len(errors) != before:
        return None
    assert match is not None and valid_from is not None and rates is not None
    assert basis is not None and isinstance(name, str)
    return Rule(name=name, index=index, match=match, valid_from=valid_from,
                valid_until=valid_until, priority=priority, rates=rates, basis=basis)


def _overlap(a: Rule, b: Rule) -> tuple[date, date | None] | None:
    """The common part of two rules' [from, until), or None."""
    start = max(a.valid_from, b.valid_from)
    ends = [d for d in (a.valid_until, b.valid_until) if d is not None]
    end = min(ends) if ends else None
    if end is not None and end <= start:
        return None
    return start, end


def _common_job(a: Rule, b: Rule) -> dict[str, str] | None:
    """A job both rules' matches fit (as key -> value), or None when they are disjoint."""
    example: dict[str, str] = {}
    for key in MATCH_KEYS:
        if key in a.match and key in b.match:
            both = a.match[key] & b.match[key]
            if not both:
                return None
            example[key] = min(both)
        elif key in a.match:
            example[key] = min(a.match[key])
        elif key in b.match:
            example[key] = min(b.match[key])
    return example


def _conflicts(rules: list[Rule]) -> list[str]:
    out: list[str] = []
    for i, a in enumerate(rules):
        for b in rules[i + 1:]:
            if a.specificity != b.specificity or a.priority != b.priority:
                continue
            span = _overlap(a, b)
            if span is None:
                continue
            job = _common_job(a, b)
            if job is None:
                continue
            who = ", ".join(f"{k}={v}" for k, v in job.items()) or "every job"
            until = span[1].isoformat() if span[1] else "open end"
            out.append(f"rule {_show(a.name)} and rule {_show(b.name)} conflict: both have "
                       f"{a.specificity} match key(s) and priority {a.priority}, and both "
                       f"fit a job with {who} from {span[0].isoformat()} to {until}; make "
                       f"one more specific or give one a higher priority")
    return out


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, (date, time)):           # datetime is a date
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


_GL_KEYS = ("receivable", "revenue", "receivable_by_account", "revenue_by_resource")
_GL_CODE = re.compile(r"[^\x00-\x1f\x7f]{1,64}")
_RESOURCES = tuple(RATE_KEYS.values())


def _gl_code(value: Any, where: str, errors: list[str]) -> str | None:
    if not isinstance(value, str) or not value.strip():
        errors.append(f"{where}: a GL code must be a non-empty string, e.g. \"4000\", got "
                      f"{_show(value)}")
        return None
    if _GL_CODE.fullmatch(value) is None or value != value.strip():
        errors.append(f"{where}: a GL code is at most 64 characters, without control "
                      f"characters or surrounding spaces, got {_show(value)}")
        return None
    return value


def _gl(value: Any, where: str, errors: list[str]) -> GlCodes | None:
    """The ``[gl]`` table (of a card or a mapping file), every problem listed."""
    if not isinstance(value, dict):
        errors.append(f"{where}: must be a table ([gl]), got {_show(value)}")
        return None
    before = len(errors)
    _unknown_keys(value, _GL_KEYS, f"{where}.", errors)
    found: dict[str, str | None] = {}
    for key in ("receivable", "revenue"):
        if key in value:
            found[key] = _gl_code(value[key], f"{where}.{key}", errors)
    by_account: dict[str, str] = {}
    table = value.get("receivable_by_account", {})
    if not isinstance(table, dict):
        errors.append(f"{where}.receivable_by_account: must be a table of Slurm account = "
                      f"\"GL code\", got {_show(table)}")
    else:
        for account, code in table.items():
            checked = _gl_code(code, f"{where}.receivable_by_account.{account}", errors)
            if checked is not None:
                by_account[account] = checked
    by_resource: dict[str, str] = {}
    table = value.get("revenue_by_resource", {})
    if not isinstance(table, dict):
        errors.append(f"{where}.revenue_by_resource: must be a table of resource = "
                      f"\"GL code\", got {_show(table)}")
    else:
        for resource, code in table.items():
            at = f"{where}.revenue_by_resource.{resource}"
            base, colon, gpu_type = resource.partition(":")
            if not (resource in _RESOURCES or (base == "gpu" and colon and gpu_type)):
                errors.append(f"{at}: unknown resource (known: {', '.join(_RESOURCES)}, "
                              f"gpu:<type>; write \"gpu:h100\" = ... with quotes)")
                continue
            checked = _gl_code(code, at, errors)
            if checked is not None:
                by_resource[resource] = checked
    if len(errors) != before:
        return None
    if not (found or by_account or by_resource):
        errors.append(f"{where}: empty; give receivable and revenue codes (or per account "
                      f"and per resource tables), or leave the table out")
        return None
    return GlCodes(receivable=found.get("receivable"), revenue=found.get("revenue"),
                   receivable_by_account=by_account, revenue_by_resource=by_resource)


def load_gl_mapping(text: str) -> GlCodes:
    """A GL mapping file: a TOML document holding one ``[gl]`` table, exactly as in a
    rate card. RateCardError lists every problem found."""
    try:
        document = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise GlMappingError([f"TOML syntax: {exc}"]) from None
    errors: list[str] = []
    _unknown_keys(document, ("gl",), "", errors)
    codes = None
    if "gl" not in document:
        errors.append("gl: missing (a GL mapping file holds one [gl] table)")
    else:
        codes = _gl(document["gl"], "gl", errors)
    if errors or codes is None:
        raise GlMappingError(errors)
    return codes


def card_version(document: dict[str, Any]) -> str:
    """sha256 hex of the canonical JSON of a parsed TOML document (see the module doc)."""
    text = json.dumps(_canonical(document), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_rate_card(text: str) -> RateCard:
    """Parse and validate a rate card; RateCardError lists every problem found."""
    try:
        # parse_float=Decimal keeps a float as written, so the error can quote it.
        document = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise RateCardError([f"TOML syntax: {exc}"]) from None
    errors: list[str] = []
    _unknown_keys(document, _TOP_KEYS, "", errors)

    currency = document.get("currency")
    if "currency" not in document:
        errors.append("currency: missing (three upper-case letters, e.g. \"EUR\")")
    elif not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        errors.append(f"currency: must be three upper-case letters (ISO 4217), e.g. \"EUR\", "
                      f"got {_show(currency)}")

    scale = document.get("scale")
    if "scale" not in document:
        errors.append(f"scale: missing (decimal places of charge lines, 0..{MAX_SCALE})")
    elif isinstance(scale, bool) or not isinstance(scale, int) or not 0 <= scale <= MAX_SCALE:
        errors.append(f"scale: must be an integer from 0 to {MAX_SCALE}, got {_show(scale)}")

    period = document.get("period")
    if "period" not in document:
        errors.append("period: missing (only \"month\" is supported)")
    elif period != "month":
        errors.append(f"period: only \"month\" is supported, got {_show(period)}")

    zone = document.get("timezone")
    if "timezone" not in document:
        errors.append("timezone: missing (an IANA zone such as \"UTC\" or \"Europe/Berlin\")")
    elif not isinstance(zone, str) or not zone:
        errors.append(f"timezone: must be an IANA zone name, got {_show(zone)}")
    else:
        try:
            _zone(zone)
        except (ZoneInfoNotFoundError, ValueError):
            errors.append(f"timezone: unknown timezone {_show(zone)} (an IANA zone such as "
                          f"\"UTC\" or \"Europe/Berlin\")")

    exempt_raw = document.get("exempt_states", [])
    exempt: frozenset[str] = frozenset()
    if not isinstance(exempt_raw, list) or not all(isinstance(s, str) and s.strip()
                                                   for s in exempt_raw):
        errors.append(f"exempt_states: must be a list of Slurm job states, e.g. "
                      f"[\"NODE_FAIL\"], got {_show(exempt_raw)}")
    else:
        exempt = frozenset(s.strip().upper() for s in exempt_raw)

    accrue = document.get("accrue_running", False)
    if not isinstance(accrue, bool):
        errors.append(f"accrue_running: must be true or false, got {_show(accrue)}")

    weights: dict[str, str] = {}
    slurm = document.get("slurm", {})
    if not isinstance(slurm, dict):
        errors.append(f"slurm: must be a table, got {_show(slurm)}")
    else:
        _unknown_keys(slurm, ("billing_weights",), "slurm.", errors)
        table = slurm.get("billing_weights", {})
        if not isinstance(table, dict):
            errors.append(f"slurm.billing_weights: must be a table of partition = "
                          f"\"TRESBillingWeights\", got {_show(table)}")
        else:
            for partition, spec in table.items():
                where = f"slurm.billing_weights.{partition}"
                if not isinstance(spec, str):
                    errors.append(f"{where}: must be a string like \"CPU=1.0,Mem=0.25G\", "
                                  f"got {_show(spec)}")
                    continue
                try:
                    parse_billing_weights(spec)
                except ValueError as exc:
                    errors.append(f"{where}: {exc}")
                    continue
                weights[partition] = spec

    gl = _gl(document["gl"], "gl", errors) if "gl" in document else None

    rules: list[Rule] = []
    raw_rules = document.get("rules")
    if raw_rules is None:
        errors.append("rules: missing (at least one [[rules]] table)")
    elif not isinstance(raw_rules, list):
        errors.append(f"rules: must be an array of tables ([[rules]]), got {_show(raw_rules)}")
    elif not raw_rules:
        errors.append("rules: empty (at least one [[rules]] table)")
    else:
        names: dict[str, int] = {}
        for index, raw in enumerate(raw_rules):
            rule = _rule(index, raw, errors, names)
            if rule is not None:
                rules.append(rule)
        errors.extend(_conflicts(rules))

    if errors:
        raise RateCardError(errors)
    assert isinstance(currency, str) and isinstance(scale, int) and isinstance(zone, str)
    return RateCard(currency=currency, scale=scale, period="month", timezone=zone,
                    exempt_states=exempt, accrue_running=accrue, rules=tuple(rules),
                    version=card_version(document), slurm_billing_weights=weights, gl=gl)


# ----------------------------------------------------------------------------- describing

_UNITS = {"cpu": "core-hour", "mem": "GiB-hour", "gpu": "GPU-hour", "node": "node-hour",
          "billing": "billing-unit-hour", "energy": "kWh"}


def describe_rule(rule: Rule, currency: str) -> list[str]:
    """Human lines for one rule: what it matches, its dates, priority and rates."""
    parts = []
    for key in MATCH_KEYS:
        if key in rule.match:
            values = sorted(rule.match[key])
            shown = ", ".join(_show(v) for v in values)
            parts.append(f"{key} = {shown}" if len(values) == 1 else f"{key} in [{shown}]")
    what = "; ".join(parts) or "every job"
    until = (f"until {rule.valid_until.isoformat()} (exclusive)" if rule.valid_until
             else "no end date")
    lines = [(f"rule {_show(rule.name)} (rules[{rule.index}]): matches {what} "
              f"[{rule.specificity} key(s)]; from {rule.valid_from.isoformat()}, {until}; "
              f"priority {rule.priority}")]
    unpriced = []
    for key, resource in RATE_KEYS.items():
        rate = getattr(rule.rates, key)
        basis = rule.basis[resource]
        if resource == "gpu":
            for gpu_type, typed in sorted(rule.rates.gpu_hour_by_type.items()):
                lines.append(f"  gpu:{gpu_type:<10} {typed} {currency} per GPU-hour "
                             f"({basis})")
        if rate is None:
            unpriced.append("gpu (untyped and other types)"
                            if resource == "gpu" and rule.rates.gpu_hour_by_type else resource)
            continue
        note = basis
        if resource == "gpu":
            note += (", untyped GPUs and types without their own rate"
                     if rule.rates.gpu_hour_by_type else ", all GPUs")
            note += ", each type on its own gpu:<type> line"
        lines.append(f"  {resource:<14} {rate} {currency} per {_UNITS[resource]} ({note})")
    if unpriced:
        lines.append(f"  not charged:   {', '.join(unpriced)}")
    return lines


def describe_card(card: RateCard) -> list[str]:
    """Human lines for ``hpc-billing rates check``: the card, then each rule."""
    lines = [f"rate card {card.version}",
             (f"currency {card.currency}, amounts rounded half-even to {card.scale} decimal "
              f"place(s), billed by {card.period} in {card.timezone}"),
             "exempt states (no charge): " + (", ".join(sorted(card.exempt_states))
                                              or "none"),
             "running jobs: " + ("priced up to the as-of time, replaced when they end"
                                 if card.accrue_running else "not charged until they end"),
             f"{len(card.rules)} rule(s); the most match keys wins, then the higher priority"]
    for rule in card.rules:
        lines.extend(describe_rule(rule, card.currency))
    for partition, spec in sorted(card.slurm_billing_weights.items()):
        lines.append(f"slurm billing weights, partition {_show(partition)}: {spec}")
    if card.gl is not None:
        lines.extend(describe_gl(card.gl))
    return lines


def describe_gl(codes: GlCodes) -> list[str]:
    """Human lines for a ``[gl]`` table: which code each side of the journal uses."""
    receivable = codes.receivable or "(none: every account needs one)"
    revenue = codes.revenue or "(none: every resource needs one)"
    lines = [f"GL: debit receivable {receivable}, credit revenue {revenue}"]
    for account, code in sorted(codes.receivable_by_account.items()):
        lines.append(f"  account {_show(account)}: receivable {code}")
    for resource, code in sorted(codes.revenue_by_resource.items()):
        lines.append(f"  resource {resource}: revenue {code}")
    return lines
