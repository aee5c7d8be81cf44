"""Property-based fuzzing (hypothesis) of everything that reads outside input: the sacct
text parser (with and without the skip path), whole exports shaped like the hand-written
corpus of every Slurm release (tests/corpus/sacct) through the file source, the
sacct/slurmrestd JSON parser and the rate-card loader. No exception escapes; every input
becomes a record or a quarantined item with its raw text and a reason (or, for a file,
a SourceError before any record when its header cannot be used); a rate card loads whole
or not at all, and its errors name the key. tests/integration/test_fuzz_runs.py runs
such files through whole collection runs."""

from __future__ import annotations

import copy
import json
import tomllib
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.rates import RateCard, RateCardError, load_rate_card
from billing.records import JobRecord, QuarantinedRecord, StepUsage
from billing.rollup import rollup_steps
from collector.slurm.filesource import FileSource
from collector.slurm.jsonparse import parse_sacct_json
from collector.slurm.parse import ParsableParser
from collector.slurm.source import SourceError
from tests.corpus_fuzz import real_shaped_exports

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
WIDE = (FIXTURES / "sacct-wide-header.psv").read_text(encoding="utf-8").split("\n")
HEADER, BODY = WIDE[0].split("|"), [line for line in WIDE[1:] if line]
JSON_DOC = json.loads((FIXTURES / "sacct-all.json").read_text(encoding="utf-8"))
DEMO_CARD = (ROOT / "collector" / "data" / "demo-rates.toml").read_text(encoding="utf-8")
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Text that looks like sacct fields: delimiters, newlines, sentinels, numbers, units, times.
NASTY = st.sampled_from(["", "|", "||", "\n", "\r", "\t", "\x1f", "\x00", "Unknown", "None",
                         "INVALID", "-1", "0", "99999999999999999999999", "1.5", "nan",
                         "inf", "1-00:00:00", "25:61:61", "2026-02-30T25:00:00",
                         "2026-11-01T01:30:00", "1K", "3.5G", "12Q", "cpu=", "gres/gpu:=",
                         "billing=4,cpu=2,mem=1024M,node=1,gres/gpu:a100=x", "CANCELLED by ",
                         "5.batch", "5.", ".batch", "6_[1-", "14+", "é", "\ud800", "😀"])
FIELD = st.one_of(NASTY, st.text(max_size=30), st.integers().map(str))


class NothingStored:
    def stored(self, keys):
        return set()

    def skipped(self, cluster):  # pragma: no cover - nothing is stored, nothing skipped
        raise AssertionError("skipped a job although nothing is stored")


def check_items(items, lines) -> None:
    """Every item is a record or quarantined; a quarantined one holds its input verbatim."""
    text = "\n".join(line.removesuffix("\n") for line in lines)
    for item in items:
        assert type(item) in (JobRecord, StepUsage, QuarantinedRecord), item
        if type(item) is QuarantinedRecord:
            assert item.reason and isinstance(item.reason, str)
            assert item.raw and item.raw in text, item


def parse(lines, **kwargs):
    parser = ParsableParser(HEADER, delimiter="|", source="fuzz", default_cluster="fuzz")
    return list(parser.parse_lines(lines, **kwargs))


@SETTINGS
@given(st.lists(st.text(max_size=400), max_size=30))
def test_arbitrary_lines_never_raise(lines):
    items = parse(lines)
    check_items(items, lines)
    assert parse(lines, unchanged=NothingStored()) == items
    list(rollup_steps(items))                           # the roll-up takes whatever comes


@SETTINGS
@given(st.data())
def test_mutated_real_records_are_records_or_quarantined_with_the_field_named(data):
    lines = list(BODY)
    for _ in range(data.draw(st.integers(1, 4))):
        n = data.draw(st.integers(0, len(lines) - 1))
        cells = lines[n].split("|")
        k = data.draw(st.integers(0, len(cells) - 1))
        cells[k] = data.draw(FIELD)
        lines[n] = "|".join(cells)
    if data.draw(st.booleans()):                        # and sometimes cut the last line
        lines[-1] = lines[-1][:data.draw(st.integers(0, len(lines[-1])))]
    items = parse(lines)
    check_items(items, lines)
    assert parse(lines, unchanged=NothingStored()) == items
    for item in items:
        if type(item) is QuarantinedRecord and item.reason.startswith("cannot parse "):
            named = item.reason.removeprefix("cannot parse ").split("=")[0].split(":")[0]
            assert named in HEADER + ["CPUTime", "Elapsed", "Timelimit"], item.reason
    records = sum(type(i) in (JobRecord, StepUsage) for i in items)
    quarantined = sum(type(i) is QuarantinedRecord for i in items)
    assert records + quarantined >= 1


@SETTINGS
@given(real_shaped_exports(), st.booleans())
def test_real_shaped_exports_are_records_quarantined_or_refused(tmp_path_factory, text, skip):
    path = tmp_path_factory.mktemp("fuzz") / "export.psv"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")   # bytes no UTF-8 has
    source = FileSource(path, tz=ZoneInfo("Europe/Berlin"), cluster="fuzz")
    items: list = []
    try:
        items.extend(source.fetch(None, unchanged=NothingStored() if skip else None))
    except SourceError as exc:
        assert not items and str(exc).startswith("file:export.psv: ")
        return
    for item in items:
        assert type(item) in (JobRecord, StepUsage, QuarantinedRecord), item
        if type(item) is QuarantinedRecord:
            assert item.reason and item.raw
        if type(item) is JobRecord:
            assert item.cpus >= 0 and item.mem_bytes >= 0 and item.submit.tzinfo is not None
            assert all(count > 0 for _, count in item.gpus)
    list(rollup_steps(items))
    assert source.stats.lines >= 1


def _mutate(value, data):
    """The JSON value with one node somewhere replaced by an arbitrary JSON value."""
    if isinstance(value, dict) and value and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(value)))
        value[key] = _mutate(value[key], data)
        return value
    if isinstance(value, list) and value and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(value) - 1))
        value[i] = _mutate(value[i], data)
        return value
    return data.draw(st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
        max_leaves=6))


@SETTINGS
@given(st.data())
def test_mutated_json_jobs_are_records_or_quarantined(data):
    doc = copy.deepcopy(JSON_DOC)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(doc["jobs"]) - 1))
        doc["jobs"][i] = _mutate(doc["jobs"][i], data)
    items = list(parse_sacct_json(doc, source="fuzz", default_cluster="fuzz"))
    for item in items:
        assert type(item) in (JobRecord, StepUsage, QuarantinedRecord), item
        if type(item) is QuarantinedRecord:
            assert item.reason.startswith("job #") and item.raw
    jobs = sum(type(i) is JobRecord for i in items)
    quarantined = sum(type(i) is QuarantinedRecord for i in items)
    assert jobs + quarantined >= len(doc["jobs"])      # every job entry is accounted for
    list(rollup_steps(items))


@SETTINGS
@given(st.text(max_size=600))
def test_arbitrary_text_is_a_card_or_a_rate_card_error(text):
    try:
        card = load_rate_card(text)
    except RateCardError as exc:
        assert exc.errors and all(isinstance(e, str) and e for e in exc.errors)
    else:
        assert isinstance(card, RateCard)


def _paths(value, prefix=()):
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, prefix + (key,))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _paths(child, prefix + (i,))
    yield prefix


def _q(text: str) -> str:
    """A TOML basic string (control characters and DEL escaped)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml(value) -> str:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _q(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_q(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return _q(str(value))


def _dump(doc: dict) -> str:
    """A minimal TOML writer for the card's shapes (tables, arrays of tables)."""
    out, tables = [], []
    for key, value in doc.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                out.append(f"[[{key}]]")
                out.extend(f"{_q(k)} = {_toml(v)}" for k, v in item.items())
        else:
            out.insert(0, f"{_q(key)} = {_toml(value)}")
    for key, value in tables:
        out.append(f"[{key}]")
        out.extend(f"{_q(k)} = {_toml(v)}" for k, v in value.items())
    return "\n".join(out) + "\n"


BAD_VALUES = st.one_of(st.text(max_size=10), st.integers(-10**30, 10**30), st.booleans(),
                       st.floats(allow_nan=False), st.lists(st.integers(), max_size=2),
                       st.just("-1"), st.just("1e400"), st.just("NaN"), st.just(""))


@SETTINGS
@given(st.data())
def test_a_bad_value_in_the_demo_card_is_refused_naming_its_key_or_loads_whole(data):
    doc = tomllib.loads(DEMO_CARD)
    leaves = [p for p in _paths(doc) if p and not isinstance(_get(doc, p), (dict, list))]
    path = data.draw(st.sampled_from(leaves))
    value = data.draw(BAD_VALUES)
    _set(doc, path, value)
    try:
        card = load_rate_card(_dump(doc))
    except RateCardError as exc:
        named = [str(part) for part in path if isinstance(part, str)]
        assert any(named[-1] in e for e in exc.errors), (path, value, exc.errors)
    else:
        assert isinstance(card, RateCard)                 # a value it accepts: a whole card


def _get(doc, path):
    for part in path:
        doc = doc[part]
    return doc


def _set(doc, path, value):
    for part in path[:-1]:
        doc = doc[part]
    doc[path[-1]] = value
