"""Differential tests: the production import against the per-record oracle (issue 19).

Each case imports one sacct export with the PRODUCTION path (``poll_once`` with the file
source and a rate card: what ``hpc-billing collect --once --source file`` runs) into a
fresh PostgreSQL database, reads back what it stored through the stable relations
(``jobs``, ``charge_lines``, ``quarantine``, ``collector_runs``), and compares it with what
the per-record path of ``tests/oracle`` says the store must hold:

- the same job rows, every column (raw digest included);
- the same charge lines, every column, money compared as Decimal to the last stored
  digit (and the totals per currency, to the cent);
- the same quarantined records (source, line, job id, reason, raw text);
- the same run outcome; a file that cannot be read fails in both, storing nothing.

Then the same file is imported again: nothing may change (the unchanged-row skip), and
the second run quarantines the same records again.

Inputs: every captured shape (tests/fixtures, tests/corpus/sacct, tests/corpus/json, the
shared Slurm samples), hypothesis-drawn exports with hostile values (tests/strategies_sacct),
and ``bench.gen_sacct`` exports (plain, and month-crossing in Europe/Berlin with 2 % of
hazards), large enough to span several of the engine's chunks.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, note, settings

from billing.rates import load_rate_card
from tests.helpers import audit_key_env, run_cli
from tests.oracle import CHARGE_COLUMNS, JOB_COLUMNS, OracleResult, ingest
from tests.oracle.production import (
    ScratchDatabases,
    Stored,
    production_import,
    read_stored,
    verify_rollups,
)
from tests.strategies_sacct import (
    BERLIN_CARD,
    DEMO_CARD,
    WHOLE_LINE_HAZARDS,
    Export,
    hazard_copy,
    hostile_exports,
)

ROOT = Path(__file__).resolve().parents[1]
# The pricing's as-of (running jobs accrue up to it with the Berlin card): after every
# generated time, fixed so both paths price alike.
NOW = datetime(2027, 3, 1, tzinfo=UTC)
SHARED_SAMPLES = Path("/work/shared/slurm/samples")

CONFIGS = {
    "utc-demo": ("UTC", DEMO_CARD, None),
    "berlin-card": ("Europe/Berlin", BERLIN_CARD, "fallback"),
}


def _captured() -> list[Path]:
    """Every captured or hand-made export shape, each content once."""
    found: dict[str, Path] = {}
    dirs = [ROOT / "tests" / "fixtures", ROOT / "tests" / "corpus" / "sacct",
            ROOT / "tests" / "corpus" / "json", SHARED_SAMPLES]
    for base in dirs:
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if (not path.is_file() or path.suffix in (".md", ".gz", ".py")
                    or path.name == "expected.json"):
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found.setdefault(digest, path)
    return sorted(found.values())


CAPTURED = _captured()


@pytest.fixture(scope="module")
def scratch(pg_admin_url: str):
    dbs = ScratchDatabases(pg_admin_url, tag="hpcb_eng_bench_diff")
    try:
        yield dbs
    finally:
        dbs.close()


# ------------------------------------------------------------------------- comparing

def _first_differences(name: str, columns: tuple[str, ...], want: list[tuple[Any, ...]],
                       got: list[tuple[Any, ...]], limit: int = 3) -> str:
    want_set, got_set = set(map(_hashable, want)), set(map(_hashable, got))
    missing = [row for row in want if _hashable(row) not in got_set][:limit]
    extra = [row for row in got if _hashable(row) not in want_set][:limit]
    out = [f"{name}: oracle {len(want)}, production {len(got)}"]
    for row in missing:
        out.append(f"  only in the oracle:     {dict(zip(columns, row, strict=False))}")
    for row in extra:
        out.append(f"  only in production: {dict(zip(columns, row, strict=False))}")
    return "\n".join(out)


def _hashable(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(tuple(sorted(v.items())) if isinstance(v, dict) else v for v in row)


def _totals(lines: list[tuple[Any, ...]]) -> dict[str, Decimal]:
    amount, currency = CHARGE_COLUMNS.index("amount"), CHARGE_COLUMNS.index("currency")
    out: dict[str, Decimal] = defaultdict(Decimal)
    for line in lines:
        out[line[currency]] += line[amount]
    return dict(out)


QUARANTINE_COLUMNS = ("source", "line_no", "job_id", "reason", "raw")


def assert_same(expected: OracleResult, got: Stored, outcome: str, run: int = 1) -> None:
    """The run ``run`` of ``got`` stored exactly what the oracle says (jobs and lines are
    the store's state after it)."""
    if expected.error is not None:
        assert outcome == "failed", f"the oracle fails ({expected.error}), production: {outcome}"
        assert not got.jobs and not got.lines and not got.quarantine_of(run)
        error = got.runs[run - 1][2] or ""
        if expected.error.startswith("file:"):
            assert expected.error in error, (expected.error, error)
        return
    assert outcome == expected.outcome, (outcome, expected.outcome, got.runs[run - 1])
    problems = []
    want_jobs = expected.job_rows()
    if got.jobs != want_jobs:
        problems.append(_first_differences("jobs", JOB_COLUMNS, want_jobs, got.jobs))
    if got.lines != expected.lines:
        problems.append(_first_differences("charge lines", CHARGE_COLUMNS, expected.lines,
                                           got.lines))
    if _totals(got.lines) != _totals(expected.lines):
        problems.append(f"totals: oracle {_totals(expected.lines)}, "
                        f"production {_totals(got.lines)}")
    if got.quarantine_of(run) != expected.quarantine:
        problems.append(_first_differences("quarantine", QUARANTINE_COLUMNS,
                                           expected.quarantine, got.quarantine_of(run)))
    assert not problems, "\n".join(problems)


def assert_rollups(url: str) -> None:
    """The rollups the writes maintained equal the aggregate of the stored lines."""
    check = verify_rollups(url)
    assert check.ok, check


def open_reimport_bugs(expected: OracleResult) -> list[str]:
    """The known, open re-import disagreements this input can trigger (each pinned by an
    xfail(strict) test below and filed in /work/coord/REQUESTS.md); empty: none."""
    bugs: list[str] = []
    # 10:45 (a repeated job key) and 10:50 (an unattached step): fixed on eng-read.
    return bugs


def check_file(scratch: ScratchDatabases, path: Path, *, timezone: str, card: Path,
               cluster: str | None, again: bool = True,
               skip_open_bugs: bool = False) -> OracleResult:
    """Import ``path`` with production (twice: the second finds it unchanged) and compare
    each time with the oracle. ``skip_open_bugs``: no re-import comparison for an input
    that triggers a known open re-import bug (the drawn inputs; the named tests pin them)."""
    expected = ingest(path, tz=ZoneInfo(timezone), cluster=cluster,
                      card=load_rate_card(card.read_text(encoding="utf-8")), as_of=NOW)
    if skip_open_bugs and open_reimport_bugs(expected):
        again = False
    with scratch.database() as url:
        outcome = production_import(url, path, now=NOW, timezone=timezone, cluster=cluster,
                                    rates=card)
        assert_same(expected, read_stored(url), outcome)
        assert_rollups(url)
        if again:
            outcome = production_import(url, path, now=NOW, timezone=timezone,
                                        cluster=cluster, rates=card)
            assert_same(expected, read_stored(url), outcome, run=2)
            assert_rollups(url)
    return expected


# ------------------------------------------------------------------------- the cases

@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("path", CAPTURED, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_captured_shapes(scratch, path: Path, config: str) -> None:
    timezone, card, cluster = CONFIGS[config]
    check_file(scratch, path, timezone=timezone, card=card, cluster=cluster)


def test_captured_shapes_are_there() -> None:
    # The parametrisation above must not silently shrink (a moved corpus would pass it).
    names = {p.name for p in CAPTURED}
    assert len(CAPTURED) >= 30
    assert {"sacct-typed-gpus.psv", "slurm-26.05-local-times-berlin.psv",
            "sacct-all.json"} <= names


# CI: a fixed, derandomized set. A deeper hunt: HPCB_DIFF_EXAMPLES=1000 HPCB_DIFF_RANDOM=1.
@settings(max_examples=int(os.environ.get("HPCB_DIFF_EXAMPLES", "60")),
          derandomize=not os.environ.get("HPCB_DIFF_RANDOM"), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(export=hostile_exports())
def test_hostile_generated_exports(scratch, tmp_path_factory, export: Export) -> None:
    note(repr(export))
    path = tmp_path_factory.mktemp("hostile") / "hostile.psv"
    path.write_text(export.text, encoding="utf-8", errors="surrogatepass", newline="")
    check_file(scratch, path, timezone=export.timezone, card=export.card,
               cluster=export.cluster, skip_open_bugs=True)


def _generated(tmp_path: Path, lines: int, seed: int, start: datetime | None = None) -> str:
    import io

    from bench.gen_sacct import generate

    buf = io.StringIO()
    generate(lines, buf, seed=seed, start=start)
    return buf.getvalue()


@pytest.mark.slow
def test_gen_sacct_export_spanning_chunks(scratch, tmp_path: Path) -> None:
    """30,000 lines (several of the engine's 2 MiB chunks), demo card, UTC."""
    path = tmp_path / "gen.psv"
    path.write_text(_generated(tmp_path, 30_000, seed=7), encoding="utf-8")
    expected = check_file(scratch, path, timezone="UTC", card=DEMO_CARD, cluster=None)
    assert len(expected.jobs) > 7_000 and expected.lines


@pytest.mark.slow
def test_gen_sacct_month_crossing_berlin_with_hazards(scratch, tmp_path: Path) -> None:
    """20,000 lines from 2026-06-24 read as Europe/Berlin local times (crossing into July
    and the card's rule change on 07-10), 2 % of the lines broken and some steps moved
    below the next job line."""
    text = hazard_copy(_generated(tmp_path, 20_000, seed=11,
                                  start=datetime(2026, 6, 24, tzinfo=UTC)), 0.02, seed=5)
    path = tmp_path / "gen-berlin-hazards.psv"
    path.write_text(text, encoding="utf-8")
    expected = check_file(scratch, path, timezone="Europe/Berlin", card=BERLIN_CARD,
                          cluster=None)
    assert expected.quarantine and expected.lines
    periods = {line[CHARGE_COLUMNS.index("usage_period")] for line in expected.lines}
    assert {"2026-06", "2026-07"} <= periods


# ------------------------------------------------------------- found by these tests

def _repeated_job_export() -> str:
    """A job printed twice: first with a step that is quarantined (so the first copy has
    no raw digest and is never skipped), then again, whole, with another Reservation."""
    import io

    from bench.gen_sacct import generate

    buf = io.StringIO()
    generate(12, buf, seed=3)
    header, *rows = buf.getvalue().rstrip("\n").split("\n")
    cols = {name: i for i, name in enumerate(header.split("|"))}
    head = next(i for i, row in enumerate(rows)
                if "." not in row.split("|", 1)[0] and i + 1 < len(rows)
                and rows[i + 1].split("|", 1)[0].endswith(".batch"))
    group = [rows[head]]
    for row in rows[head + 1:]:
        if "." not in row.split("|", 1)[0]:
            break
        group.append(row)
    first = [row.split("|") for row in group]
    first[1][cols["ElapsedRaw"]] = "+12"            # the batch step: quarantined
    later = [row.split("|") for row in group]
    later[0][cols["Reservation"]] = "late"
    return "\n".join([header, *("|".join(f) for f in first + later)]) + "\n"


def test_reimport_keeps_the_last_of_a_repeated_job(scratch, tmp_path: Path) -> None:
    path = tmp_path / "repeated.psv"
    path.write_text(_repeated_job_export(), encoding="utf-8")
    expected = check_file(scratch, path, timezone="UTC", card=DEMO_CARD, cluster=None)
    reservations = {row["reservation"] for row in expected.jobs.values()}
    assert "late" in reservations and len(expected.quarantine) == 1


def _unattached_steps_export() -> str:
    """A job line whose Cluster is not its steps' cluster: the steps cannot attach."""
    import io

    from bench.gen_sacct import generate

    buf = io.StringIO()
    generate(4, buf, seed=3)
    header, *rows = buf.getvalue().rstrip("\n").split("\n")
    cols = {name: i for i, name in enumerate(header.split("|"))}
    job = rows[0].split("|")
    job[cols["Cluster"]] = "other"
    return "\n".join([header, "|".join(job), *rows[1:]]) + "\n"


def test_reimport_quarantines_unattached_steps_again(scratch, tmp_path: Path) -> None:
    path = tmp_path / "unattached.psv"
    path.write_text(_unattached_steps_export(), encoding="utf-8")
    expected = check_file(scratch, path, timezone="UTC", card=DEMO_CARD, cluster=None)
    assert [q[3] for q in expected.quarantine] == ["step line without its job line"] * 3


@pytest.mark.slow
def test_gen_sacct_with_hazards_twice_over(scratch, tmp_path: Path) -> None:
    """12,000 lines with 3 % hazards, then the same lines again: every job twice, the
    second copies chunks after the first (duplicates across the engine's chunks and its
    writer batches: the last record of a key wins, the re-import changes nothing)."""
    text = hazard_copy(_generated(tmp_path, 12_000, seed=23), 0.03, seed=9)
    header, _, body = text.partition("\n")
    path = tmp_path / "gen-twice.psv"
    path.write_text(header + "\n" + body + body, encoding="utf-8")
    expected = check_file(scratch, path, timezone="UTC", card=DEMO_CARD, cluster=None)
    assert expected.records > len(expected.jobs) > 2_000


def _changed_copy(text: str, seed: int) -> str:
    """``text`` with about a third of its jobs changed the ways a later poll sees them:
    running jobs ended (State, End), jobs moved to another account (another rule of the
    Berlin card prices them), longer elapsed times."""
    import random

    rng = random.Random(seed)
    header, *rows = text.rstrip("\n").split("\n")
    cols = {name: i for i, name in enumerate(header.split("|"))}
    out = [header]
    for row in rows:
        f = row.split("|")
        if "." not in f[0] and rng.random() < 0.35:
            if f[cols["State"]] == "RUNNING":
                start = datetime.fromisoformat(f[cols["Start"]])
                f[cols["State"]] = "COMPLETED"
                f[cols["End"]] = (start + timedelta(seconds=int(f[cols["ElapsedRaw"]]))
                                  ).strftime("%Y-%m-%dT%H:%M:%S")
            elif f[cols["Account"]] == "physics":
                f[cols["Account"]] = "chemistry"
            elif f[cols["ElapsedRaw"]].isdigit() and f[cols["End"]] not in ("Unknown", ""):
                f[cols["ElapsedRaw"]] = str(int(f[cols["ElapsedRaw"]]) + 3600)
        out.append("|".join(f))
    return "\n".join(out) + "\n"


@pytest.mark.slow
def test_changed_jobs_after_a_closed_period(scratch, tmp_path: Path) -> None:
    """Import 6,000 lines from 2026-06-24 (Europe/Berlin, the Berlin card: running jobs
    accrue, a rule change on 07-10), close 2026-06, import a copy in which a third of the
    jobs changed: jobs and lines must be what the per-record path plans (June untouched,
    corrections posted in July), money to the cent."""
    first = tmp_path / "first.psv"
    text = _generated(tmp_path, 6_000, seed=31, start=datetime(2026, 6, 24, tzinfo=UTC))
    first.write_text(text, encoding="utf-8")
    second = tmp_path / "second.psv"
    second.write_text(_changed_copy(text, seed=4), encoding="utf-8")
    card_text = BERLIN_CARD.read_text(encoding="utf-8")
    tz = ZoneInfo("Europe/Berlin")
    before = ingest(first, tz=tz, cluster=None, card=load_rate_card(card_text), as_of=NOW)
    expected = ingest(second, tz=tz, cluster=None, card=load_rate_card(card_text), as_of=NOW,
                      before=before, closed=frozenset({"2026-06"}))
    kinds = {line[CHARGE_COLUMNS.index("kind")] for line in expected.lines}
    assert "correction" in kinds and expected.error is None
    with scratch.database() as url:
        outcome = production_import(url, first, now=NOW, timezone="Europe/Berlin",
                                    rates=BERLIN_CARD)
        assert_same(before, read_stored(url), outcome)
        env = audit_key_env(tmp_path)
        assert run_cli("period", "close", "2026-06", "--database-url", url, env=env) == 0
        outcome = production_import(url, second, now=NOW, timezone="Europe/Berlin",
                                    rates=BERLIN_CARD)
        assert_same(expected, read_stored(url), outcome, run=2)
        assert_rollups(url)


# --------------------------------------------------------------- the sacct source

def test_sacct_poll_through_a_fake_sacct(scratch, tmp_path: Path) -> None:
    """A windowed poll of the sacct source (epoch times, ``\\x1f``, no header, the
    collector's own argv) against the oracle reading the very output sacct gave: the fake
    sacct (tests/fakes, the process boundary) replays 3,000 generated lines with 3 % of
    the hazards it can still read (values, not line structure)."""
    import subprocess

    from collector.slurm.sacct import SACCT_ENV, SACCT_FIELDS, sacct_argv
    from billing.records import Window
    from tests.helpers import executable_wrapper
    from tests.oracle.path import SACCT_FIELDS as ORACLE_FIELDS
    from tests.oracle.production import production_poll

    assert ORACLE_FIELDS == SACCT_FIELDS
    data = tmp_path / "accounting.psv"
    data.write_text(hazard_copy(_generated(tmp_path, 3_000, seed=41), 0.03, seed=6,
                                kinds=WHOLE_LINE_HAZARDS, move_steps=False), encoding="utf-8")
    sacct = executable_wrapper(tmp_path / "bin", "sacct", ROOT / "tests" / "fakes" / "fake_sacct.py")
    now = datetime(2026, 8, 1, tzinfo=UTC)
    lookback_s = 92 * 86_400
    env = {"FAKE_SACCT_DATA": str(data)}
    window = Window(now - timedelta(seconds=lookback_s), now)
    out = subprocess.run(sacct_argv(str(sacct), window, "bench"), capture_output=True, check=True,
                         env={**os.environ, "TZ": "UTC", **SACCT_ENV, **env}).stdout
    assert out.count(b"\n") > 2_000, out[:500]
    expected = ingest(None, tz=UTC, cluster="bench",
                      card=load_rate_card(DEMO_CARD.read_text(encoding="utf-8")), as_of=now,
                      sacct_stdout=out)
    assert expected.lines and expected.quarantine
    with scratch.database() as url:
        outcome = production_poll(url, sacct=sacct, cluster="bench", now=now,
                                  lookback_s=lookback_s, rates=DEMO_CARD, env=env)
        assert_same(expected, read_stored(url), outcome)
        assert_rollups(url)


def _split_last_step_export() -> str:
    """A job whose last step line is broken after its JobID field (``X.1|`` then the rest
    on the next line), followed by one more job line."""
    import io

    from bench.gen_sacct import generate

    buf = io.StringIO()
    generate(40, buf, seed=5)
    header, *rows = buf.getvalue().rstrip("\n").split("\n")
    groups: list[list[str]] = []
    for row in rows:
        if "." in row.split("|", 1)[0] and groups:
            groups[-1].append(row)
        else:
            groups.append([row])
    group, after = next((g, n) for g, n in zip(groups, groups[1:], strict=False) if len(g) >= 3)
    last = group[-1]
    cut = last.index("|") + 1
    return "\n".join([header, *group[:-1], last[:cut], last[cut:], after[0]]) + "\n"


def test_reimport_words_a_broken_line_as_the_first_import(scratch, tmp_path: Path) -> None:
    path = tmp_path / "split.psv"
    path.write_text(_split_last_step_export(), encoding="utf-8")
    expected = check_file(scratch, path, timezone="UTC", card=DEMO_CARD, cluster=None)
    assert any("cannot continue on the next line" in q[3] for q in expected.quarantine)
