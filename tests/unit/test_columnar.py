"""The engine's reader and pricer against today's per-record path (the oracle), on every
captured export and on generated ones with hostile lines: the same records as stored, the
same quarantine (raw, reason, line, job id), the same counters, the same charge lines.
"""

from __future__ import annotations

import io
import random
import shutil
from collections import Counter
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bench.gen_sacct import generate
from billing.price import price_job_outcome
from billing.rates import RateCard, load_rate_card
from billing.records import JobRecord, QuarantinedRecord
from billing.rollup import rollup_steps
from collector.pricing.frame import VectorPricer
from collector.slurm.columnar import ColumnarReader, frame_records
from collector.slurm.filesource import FileSource, split_header
from collector.slurm.parse import ParsableParser
from collector.store.jobs import _as_stored

ROOT = Path(__file__).resolve().parents[2]
CORPUS = sorted((ROOT / "tests" / "corpus" / "sacct").glob("*.psv"))
SAMPLES = Path("/work/shared/slurm/samples")
DEMO = (ROOT / "collector" / "data" / "demo-rates.toml").read_text()
CHECK = (ROOT / "tests" / "fixtures" / "engine-check-card.toml").read_text()
AS_OF = datetime(2030, 1, 1, tzinfo=UTC)


class _Lookup:
    """The store's UnchangedLookup, over a set of digests (no database here)."""

    def __init__(self, stored: set[str]) -> None:
        self.stored_digests = stored
        self.count = 0

    def stored(self, keys: list[tuple[str, int, str]]) -> set[str]:
        return {d for _c, _r, d in keys if d in self.stored_digests}

    def skipped(self, cluster: str) -> None:
        self.count += 1


def _split(text: str) -> tuple[list[str], str, list[str], int]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line.removesuffix("\r") for line in lines]
    i = 0
    while not lines[i].lstrip("\ufeff").strip():
        i += 1
    found = split_header(lines[i].lstrip("\ufeff"))
    assert found is not None
    columns, delimiter, trailing = found
    if trailing:
        columns = [*columns, ""]
    return columns, delimiter, lines[i + 1:], i + 2


def _oracle(columns, delimiter, body, first, tz, cluster, lookup=None):
    parser = ParsableParser(columns, delimiter=delimiter, source="f", tz=tz,
                            default_cluster=cluster)
    jobs, bad = [], []
    for item in rollup_steps(parser.parse_lines(body, first_line_no=first, unchanged=lookup),
                             source="f"):
        (jobs if isinstance(item, JobRecord) else bad).append(item)
    return parser, [_as_stored(j) for j in jobs], bad


def _engine(columns, delimiter, body, first, tz, cluster, chunk_lines, lookup=None):
    parser = ParsableParser(columns, delimiter=delimiter, source="f", tz=tz,
                            default_cluster=cluster)
    reader = ColumnarReader(parser, chunk_lines=chunk_lines)
    jobs: list[tuple[JobRecord, bool]] = []
    bad: list[QuarantinedRecord] = []
    for chunk in reader.chunks(body, first_line_no=first, unchanged=lookup):
        jobs.extend(zip(frame_records(chunk.jobs), chunk.jobs["reemitted"].to_list(),
                        strict=True))
        bad.extend(chunk.quarantined)
    return parser, reader, jobs, bad


def _last(jobs):
    return {(j.cluster, j.job_id_raw, j.submit): j for j in jobs}


def _q(items):
    return Counter((q.raw, q.reason, q.line_no, q.job_id) for q in items)


def _same(text: str, tz: tzinfo = UTC, cluster: str | None = None,
          chunk_lines: int = 8192) -> ColumnarReader:
    columns, delimiter, body, first = _split(text)
    p1, ref, ref_bad = _oracle(columns, delimiter, body, first, tz, cluster)
    p2, reader, got, bad = _engine(columns, delimiter, body, first, tz, cluster, chunk_lines)
    # every record read once (a re-emitted job comes again, and the last one counts)
    assert sum(1 for _j, again in got if not again) == len(ref)
    assert _last(j for j, _a in got) == _last(ref)
    assert _q(bad) == _q(ref_bad)
    assert p2.unknown_states == p1.unknown_states
    assert p2.fallbacks == p1.fallbacks
    return reader


# ------------------------------------------------------------------ hostile exports

def _hostile(text: str, *, seed: int, rate: float) -> str:
    """Damage a generated export the ways real files are damaged (engine.md §7)."""
    rng = random.Random(seed)
    lines = text.split("\n")
    head = lines[0].split("|")
    at = {name: i for i, name in enumerate(head)}
    out = [lines[0]]
    i = 1
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line or rng.random() >= rate:
            out.append(line)
            continue
        f = line.split("|")
        step = "." in f[at["JobIDRaw"]]
        kind = rng.randrange(14)
        if kind == 0:
            f[at["JobName"]] += "|x"                     # a delimiter in the free text
        elif kind == 1:
            f[at["TotalCPU"]] = "12:34.5678"             # 4 decimals
        elif kind == 2:
            f[at["MaxRSS"]] = "1.5G"
        elif kind == 3 and not step:
            f[at["UID"]] = rng.choice(["1_000", "+12", " 7"])
        elif kind == 4:
            f[at["State"]] = rng.choice(["", "PARKED", "cd", "CANCELLED+"])
        elif kind == 5 and not step:
            f[at["AllocTRES"]] = rng.choice(["cpu=x", "cpu=2,node=1,mem=1.5G", "",
                                             "cpu=4294967296,node=1"])
        elif kind == 6 and not step:
            f[at["Start"]] = "2026-02-30T10:00:00"       # impossible
        elif kind == 7:
            f[at["ElapsedRaw"]] = "\u0663"                # a non-ASCII digit
        elif kind == 8:
            out.append("")                                # a blank line
        elif kind == 9:
            f = f[:rng.randrange(3, len(f) - 2)]          # truncated
        elif kind == 10 and step and i < len(lines):
            out.append(lines[i])                          # step below the next job line
            i += 1
        elif kind == 11:
            f[at["DBIndex"]] = "18446744073709551615"     # u64 max
        elif kind == 12 and not step:
            f[at["Submit"]] = "1781000000"                # epoch in a local-time export
        elif kind == 13:
            f[at["JobName"]] += "\nsecond line"           # a newline in the free text
        out.append("|".join(f))
    return "\n".join(out)


@pytest.fixture(scope="module")
def export() -> str:
    buf = io.StringIO()
    generate(6000, buf, seed=7)
    return buf.getvalue()


def test_every_captured_export_reads_alike(tmp_path):
    files = list(CORPUS) + sorted((ROOT / "tests" / "fixtures").glob("sacct-*.psv"))
    if SAMPLES.is_dir():
        files += sorted(SAMPLES.glob("*.psv"))
    read = 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        columns_line = next((x for x in text.split("\n") if x.strip()), "")
        if split_header(columns_line.lstrip("\ufeff")) is None:
            continue                    # a --noheader capture: the file source refuses it
        try:
            cluster = None if "Cluster" in columns_line else "c1"
            tz = ZoneInfo("Europe/Berlin") if "berlin" in path.name else UTC
            for chunk_lines in (3, 8192):
                _same(text, tz=tz, cluster=cluster, chunk_lines=chunk_lines)
        except Exception as exc:
            if "missing required column" in str(exc):
                continue
            raise AssertionError(f"{path.name}: {exc}") from exc
        read += 1
    assert read >= len(CORPUS)


@pytest.mark.parametrize("chunk_lines", [40, 700, 8192])
def test_a_generated_export_takes_the_vector_path_and_reads_alike(export, chunk_lines):
    reader = _same(export, chunk_lines=chunk_lines)
    assert reader.vectorizable
    assert reader.fallback_jobs == 0 and reader.vector_jobs > 1000


@pytest.mark.parametrize(("seed", "chunk_lines"), [(3, 8192), (5, 300), (9, 57)])
def test_hostile_lines_read_alike(export, seed, chunk_lines):
    reader = _same(_hostile(export, seed=seed, rate=0.05), chunk_lines=chunk_lines)
    assert reader.fallback_jobs > 0 and reader.vector_jobs > reader.fallback_jobs


def test_local_times_in_a_zone_with_dst_read_alike():
    buf = io.StringIO()
    # a week around the end of summer time in Berlin (an hour that happens twice)
    generate(4000, buf, seed=13, start=datetime(2026, 10, 23, tzinfo=UTC))
    reader = _same(buf.getvalue(), tz=ZoneInfo("Europe/Berlin"), chunk_lines=500)
    assert reader.vector_jobs > 500


def test_a_step_far_below_its_job_is_attached_across_chunks(export):
    lines = export.split("\n")
    step = next(i for i, line in enumerate(lines) if ".batch|" in line)
    moved = lines.pop(step)
    lines.insert(step + 400, moved)                 # ten chunks of 40 lines further down
    reader = _same("\n".join(lines), chunk_lines=40)
    assert reader.reemitted == 1


@pytest.mark.parametrize(("groups_later", "attached"), [(4000, True), (4200, False)])
def test_a_late_step_finds_its_job_only_within_the_kept_groups(groups_later, attached):
    """The reader keeps the last HISTORY_GROUPS (4,096) groups, as chunk frames read
    back only when a late step asks: a step 4,000 groups below its job is attached (the
    job re-emitted), one 4,200 groups below is what the per-record path makes of it."""
    buf = io.StringIO()
    generate(20_000, buf, seed=21)
    lines = buf.getvalue().split("\n")
    step = next(i for i, line in enumerate(lines) if ".batch|" in line)
    moved = lines.pop(step)
    jobs_below = [i for i, line in enumerate(lines)
                  if i >= step and line and "." not in line.split("|", 2)[1]]
    assert len(jobs_below) > groups_later + 1
    lines.insert(jobs_below[groups_later + 1], moved)
    reader = _same("\n".join(lines), chunk_lines=700)
    assert reader.reemitted == (1 if attached else 0)


@pytest.mark.parametrize("chunk_lines", [40, 2000])
def test_two_late_steps_of_one_job_both_join_it(export, chunk_lines):
    """Two steps of one job, each far below it in a different group (in one chunk, or
    in two): the job is re-emitted with both, as the per-record path rolls it up."""
    lines = export.split("\n")
    heads = [i for i, line in enumerate(lines[1:], start=1)
             if line and "." not in line.split("|", 2)[1]]
    job = next(i for i, nxt in zip(heads, heads[1:], strict=False) if nxt - i >= 3)
    first, second = lines[job + 1], lines[job + 2]
    assert first.split("|", 1)[0].startswith(lines[job].split("|", 1)[0] + ".")
    del lines[job + 1:job + 3]
    below = [i for i, line in enumerate(lines) if i > job and line
             and "." not in line.split("|", 2)[1]]
    lines.insert(below[80], second)
    lines.insert(below[30], first)
    reader = _same("\n".join(lines), chunk_lines=chunk_lines)
    # in one chunk with its job, a step is read with the groups down to it
    assert reader.reemitted == (2 if chunk_lines == 40 else 0)


def test_the_skip_stage_drops_what_the_per_record_path_skips(export):
    columns, delimiter, body, first = _split(_hostile(export, seed=4, rate=0.03))
    _p, first_jobs, _bad = _oracle(columns, delimiter, body, first, UTC, None, _Lookup(set()))
    digests = [j.raw_digest for j in first_jobs if j.raw_digest]
    _p, _r, got, _b = _engine(columns, delimiter, body, first, UTC, None, 8192, _Lookup(set()))
    # the same digests, bit for bit (today's RAW_DIGEST)
    assert {(j.job_id_raw, j.raw_digest) for j, _a in got} == \
        {(j.job_id_raw, j.raw_digest) for j in first_jobs}
    rng = random.Random(2)
    stored = {d for d in digests if rng.random() < 0.6}
    body2 = body + body[:900]                       # and some jobs twice
    l1, l2 = _Lookup(stored), _Lookup(stored)
    p1, ref, ref_bad = _oracle(columns, delimiter, body2, first, UTC, None, l1)
    p2, _r, got, bad = _engine(columns, delimiter, body2, first, UTC, None, 8192, l2)
    assert l1.count == l2.count > 500
    assert p1.duplicates_skipped == p2.duplicates_skipped > 0
    assert Counter(j for j, _a in got) == Counter(ref)
    assert _q(bad) == _q(ref_bad)


# ------------------------------------------------------------------ pricing

def _money(text: str, card: RateCard, tz: tzinfo, as_of: datetime) -> tuple[int, Decimal]:
    columns, delimiter, body, first = _split(text)
    _p, ref, _bad = _oracle(columns, delimiter, body, first, tz, None)
    want: dict[tuple, tuple[str, Counter]] = {}
    for job in ref:
        outcome, lines = price_job_outcome(card, job, as_of=as_of)
        want[(job.cluster, job.job_id_raw, job.submit)] = (outcome, Counter(lines))
    _p, _r, got_jobs, _b = _engine(columns, delimiter, body, first, tz, None, 900)
    parser = ParsableParser(columns, delimiter=delimiter, source="f", tz=tz)
    pricer = VectorPricer(card, as_of)
    got: dict[tuple, tuple[str, Counter]] = {}
    for chunk in ColumnarReader(parser, chunk_lines=900).chunks(body, first_line_no=first):
        jobs = chunk.jobs.unique(subset=["cluster", "job_id_raw", "submit"], keep="last",
                                 maintain_order=True)
        priced = pricer.price(jobs)
        for cluster, raw, submit, outcome in priced.outcomes.iter_rows():
            got[(cluster, raw, submit.replace(tzinfo=UTC))] = (outcome, Counter())
        for line in pricer.charge_lines(priced.lines):
            got[line.job_key][1][line] += 1
    assert got == want
    total = sum((line.amount * n for _o, lines in want.values() for line, n in lines.items()),
                Decimal(0))
    return sum(sum(c.values()) for _o, c in want.values()), total


def test_the_vector_pricer_prices_like_price_job(export):
    lines, total = _money(_hostile(export, seed=3, rate=0.03), load_rate_card(DEMO), UTC,
                          AS_OF)
    assert lines > 2000 and total > 0


def test_months_zones_rule_changes_and_accrual_price_like_price_job():
    buf = io.StringIO()
    generate(8000, buf, seed=11, start=datetime(2026, 6, 28, tzinfo=UTC))
    card = load_rate_card(CHECK)
    # running jobs accrue to an instant with a fraction of a second (it is truncated)
    for as_of in (AS_OF, datetime(2026, 7, 1, 3, 0, 0, 700_000, tzinfo=UTC)):
        lines, total = _money(buf.getvalue(), card, ZoneInfo("Europe/Berlin"), as_of)
        assert lines > 1000 and total > 0


def test_a_file_source_reads_json_through_the_records_frame_builder(tmp_path):
    src = ROOT / "tests" / "fixtures" / "sacct-all.json"
    path = tmp_path / "dump.json"
    shutil.copy(src, path)
    ref = [j for j in rollup_steps(FileSource(path, tz=UTC, cluster="c1").fetch(None))
           if isinstance(j, JobRecord)]
    chunks = list(FileSource(path, tz=UTC, cluster="c1").fetch_chunks(None))
    got = [j for c in chunks for j in frame_records(c.jobs)]
    assert ref and got == [_as_stored(j) for j in ref]
