"""Hypothesis strategies for the differential tests: generated sacct exports, then broken.

``hostile_exports()`` draws a realistic export from ``bench.gen_sacct`` (a seed, a size and
a start next to an edge: the Europe/Berlin DST changes, a month end, a year end) and
edits it the ways broken exports are broken: a hostile value in any column, the hazard
kinds of the engine's money check (``|`` or a newline in JobName, odd durations and
sizes, impossible dates, ``1_000``/``+12``/`` 7`` numbers, empty State, bad AllocTRES, a
non-ASCII digit, blank and truncated lines), a record split over two lines, a step moved
below the next job line (or to the end), a job group repeated later (as is, or changed),
times inside the DST gap and overlap, and a cut-short file.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
DEMO_CARD = ROOT / "collector" / "data" / "demo-rates.toml"
BERLIN_CARD = ROOT / "tests" / "oracle" / "cards" / "berlin.toml"

# Printed (local) times next to the edges: the generator prints its clock as local time.
EDGES = (
    datetime(2026, 3, 29, 1, 58, tzinfo=UTC),      # Berlin: 02:00-03:00 does not exist
    datetime(2026, 10, 25, 1, 58, tzinfo=UTC),     # Berlin: 02:00-03:00 happens twice
    datetime(2026, 6, 30, 23, 57, tzinfo=UTC),     # a month end
    datetime(2026, 7, 9, 23, 58, tzinfo=UTC),      # the Berlin card's mid-month rule change
    datetime(2026, 12, 31, 23, 58, tzinfo=UTC),    # a year end
)

TIMES = ("2026-03-29T02:30:00", "2026-03-29T01:59:59", "2026-03-29T03:00:00",
         "2026-10-25T02:30:00", "2026-10-25T02:00:00", "2026-10-25T02:59:59",
         "2026-06-30T23:59:59", "2026-07-01T00:00:00", "2026-12-31T23:59:59",
         "2027-01-01T00:00:00", "2026-02-29T12:00:00", "2026-13-01T00:00:00",
         "2026-06-01T24:00:00", "2026-06-01 10:00:00", "2026-06-01T10:00", "1700000000",
         "Unknown", "None", "", "0001-01-01T00:00:00", "9999-12-31T23:59:59")
NUMBERS = ("0", "-1", "1_000", "+12", " 7", "7 ", "\u0663", "2147483647", "2147483648",
           "9223372036854775807", "9223372036854775808", "18446744073709551616", "1e3",
           "0x10", "", "UNLIMITED", "Partition_Limit", "INVALID", "NaN", "00012")
DURATIONS = ("12:34.5678", "1-02:03", "00:00:00", "59:59", "1-00:00:00", "25:61:61",
             "-1", "00:00.001", "100-00:00:00", "", "INVALID", "1:2:3:4", "00:01:00.5")
SIZES = ("1.5G", "0", "1K", "3.5G", "12Q", "4000Mn", "2Gc", "1T", "1P", "1E", "999999E",
         "", "-1K", "K", "10")
TRES = ("cpu=x,mem=1G", "", "cpu=", "billing=4,cpu=2,mem=1024M,node=1,gres/gpu:a100=x",
        "gres/gpu:h100=2,gres/gpu=2,gres/shard=4", "cpu=2,gres/gpu=1,gres/gpu:a100=2",
        "cpu=99999999999,mem=1G,node=1", "cpu=2,mem=1.5G,node=1", "cpu=2,,mem=1G",
        "cpu=2,mem=1G,node=1,energy=99", "=2", "cpu=2=3")
STATES = ("", "CANCELLED by ", "CANCELLED by 0", "PARKED", "completed", "RUNNING",
          "PENDING", "NODE_FAIL", "OUT_OF_MEMORY", "REQUEUED", "TIMEOUT+", "FAILED ")
TEXT = ("", "|", "||", "\t", "\r", "\x1f", "\x00", "é", "😀", "\\", "\\N", "a\\tb", "None",
        "Unknown", "x" * 300, "n[01-", "5.batch", "6_[1-", "14+", "\ufeff")
JOB_IDS = ("5.batch", "5.", ".batch", "6_[1-5]", "6_3_4", "14+1", "14+", "", "x", "6_3",
           "7.extern", "7.0", "7.4294967294")

# Which hostile values fit which column best (every column also gets TEXT).
BY_COLUMN = {
    "Submit": TIMES, "Eligible": TIMES, "Start": TIMES, "End": TIMES,
    "JobIDRaw": NUMBERS + JOB_IDS, "JobID": JOB_IDS, "UID": NUMBERS, "DBIndex": NUMBERS,
    "NNodes": NUMBERS, "NCPUS": NUMBERS, "ElapsedRaw": NUMBERS, "TimelimitRaw": NUMBERS,
    "CPUTimeRAW": NUMBERS, "ConsumedEnergyRaw": NUMBERS,
    "TotalCPU": DURATIONS, "MaxRSS": SIZES, "AllocTRES": TRES, "TRESUsageInTot": TRES,
    "State": STATES, "ExitCode": ("0:0", "1", ":", "x:y", "", "255:15"),
    "DerivedExitCode": ("0:0", "1", "", "0:9"),
}


# The hazard kinds that keep a line whole (its column count, one line) and its times
# readable: the fake sacct can still replay the file.
WHOLE_LINE_HAZARDS = (2, 3, 5, 6, 7, 8, 10)


def _hazard(line: str, cols: dict[str, int], rng: random.Random,
            kinds: tuple[int, ...] | None = None) -> list[str]:
    """One of the money check's hazard kinds (the prototype's hazards, docs/design/engine.md §7) on a line."""
    f = line.rstrip("\n").split("|")
    if len(f) != len(cols):
        return [line]
    kind = rng.randrange(12) if kinds is None else rng.choice(kinds)
    if kind == 0:
        f[cols["JobName"]] += "|x"
    elif kind == 1:
        f[cols["JobName"]] += "\nwrapped"
    elif kind == 2 and f[cols["TotalCPU"]]:
        f[cols["TotalCPU"]] = "12:34.5678"
    elif kind == 3:
        f[cols["MaxRSS"]] = "1.5G"
    elif kind == 4:
        f[cols["Submit"]] = "2026-13-01T00:00:00"
    elif kind == 5:
        f[cols["ElapsedRaw"]] = rng.choice(["1_000", "+12", " 7"])
    elif kind == 6:
        f[cols["State"]] = ""
    elif kind == 7:
        f[cols["AllocTRES"]] = "cpu=x,mem=1G"
    elif kind == 8:
        f[cols["DBIndex"]] = "\u0663"          # ARABIC-INDIC DIGIT THREE
    elif kind == 9:
        return ["|".join(f) + "\n", "\n"]
    elif kind == 10:
        f[cols["TotalCPU"]] = "1-02:03"
    else:
        return ["|".join(f[: len(f) // 2]) + "\n"]
    return ["|".join(f) + "\n"]


def hazard_copy(src: str, rate: float, seed: int, *, kinds: tuple[int, ...] | None = None,
                move_steps: bool = True) -> str:
    """A copy of export text ``src`` with ``rate`` of its lines given a hazard (of
    ``kinds``, default all) and about ``rate``/10 of its steps moved below the next job
    line (hazards.py's file edit; not with ``move_steps`` False)."""
    rng = random.Random(seed)
    header, *lines = src.splitlines(keepends=True)
    cols = {name: i for i, name in enumerate(header.rstrip("\n").split("|"))}
    out = [header]
    held: str | None = None
    for line in lines:
        is_step = "." in line.split("|", 1)[0]
        if held is not None and not is_step:
            out += [line, held]
            held = None
            continue
        if move_steps and is_step and rng.random() < rate / 10:
            held = line
            continue
        out += _hazard(line, cols, rng, kinds) if rng.random() < rate else [line]
    if held is not None:
        out.append(held)
    return "".join(out)


@dataclass(frozen=True)
class Export:
    """One drawn export and how to read and price it."""

    text: str
    timezone: str           # the file's times are local times in this zone
    card: Path
    cluster: str | None     # --cluster (used when a file has no Cluster column)
    notes: tuple[str, ...]  # the edits made (for the failure report)

    def __repr__(self) -> str:
        return (f"Export(timezone={self.timezone!r}, card={self.card.name!r}, "
                f"cluster={self.cluster!r}, notes={list(self.notes)!r},\n"
                f"text={self.text!r})")


def _groups(rows: list[str]) -> list[list[int]]:
    """Row indices grouped by job: a job line and the step lines after it."""
    groups: list[list[int]] = []
    for i, row in enumerate(rows):
        first = row.split("|", 1)[0]
        if "." in first and groups:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


@st.composite
def hostile_exports(draw: st.DrawFn, *, max_lines: int = 60) -> Export:
    from bench.gen_sacct import generate

    berlin = draw(st.booleans())
    timezone, card = ("Europe/Berlin", BERLIN_CARD) if berlin else ("UTC", DEMO_CARD)
    edge = draw(st.sampled_from(EDGES)) + timedelta(seconds=draw(st.integers(-900, 300)))
    buf = io.StringIO()
    generate(draw(st.integers(4, max_lines)), buf, seed=draw(st.integers(0, 2**20)),
             start=edge)
    header, *rows = buf.getvalue().rstrip("\n").split("\n")
    names = header.split("|")
    cols = {name: i for i, name in enumerate(names)}
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    notes: list[str] = []
    for _ in range(draw(st.integers(0, 6))):
        if not rows:
            break
        kind = draw(st.sampled_from(("value", "value", "value", "hazard", "split", "move",
                                     "repeat", "blank", "cut", "trailing")))
        at = draw(st.integers(0, len(rows) - 1))
        if kind == "value":
            column = draw(st.sampled_from(names))
            value = draw(st.sampled_from(BY_COLUMN.get(column, TEXT)) | st.sampled_from(TEXT))
            fields = rows[at].split("|")
            if len(fields) == len(names):
                fields[cols[column]] = value
                rows[at] = "|".join(fields)
                notes.append(f"row {at} {column}={value!r}")
        elif kind == "hazard":
            out = _hazard(rows[at] + "\n", cols, rng)
            rows[at:at + 1] = "".join(out).rstrip("\n").split("\n")
            notes.append(f"row {at} hazard {out!r}")
        elif kind == "split":
            cut = draw(st.integers(0, len(rows[at])))
            rows[at] = rows[at][:cut] + "\n" + rows[at][cut:]
            rows[at:at + 1] = rows[at].split("\n")
            notes.append(f"row {at} split at {cut}")
        elif kind == "move":
            groups = _groups(rows)
            steps = [i for g in groups for i in g[1:]]
            if steps:
                step = draw(st.sampled_from(steps))
                line = rows.pop(step)
                later = [g[0] for g in _groups(rows) if g[0] >= step]
                to = (later[0] + 1) if later and draw(st.booleans()) else len(rows)
                rows.insert(to, line)
                notes.append(f"step row {step} moved to {to}")
        elif kind == "repeat":
            group = draw(st.sampled_from(_groups(rows)))
            copy = [rows[i] for i in group]
            if draw(st.booleans()):
                fields = copy[0].split("|")
                if len(fields) == len(names):
                    column = draw(st.sampled_from(("State", "End", "ElapsedRaw", "Account",
                                                   "TotalCPU", "AllocTRES", "Partition")))
                    fields[cols[column]] = draw(st.sampled_from(
                        BY_COLUMN.get(column, ("physics", "chemistry", "gpu", "long"))))
                    copy[0] = "|".join(fields)
            to = draw(st.integers(group[-1] + 1, len(rows)))
            rows[to:to] = copy
            notes.append(f"job rows {group} repeated at {to}")
        elif kind == "blank":
            rows.insert(at, draw(st.sampled_from(("", "  ", "\r"))))
            notes.append(f"blank at {at}")
        elif kind == "cut":
            rows[at] = rows[at][: draw(st.integers(0, len(rows[at])))]
            del rows[at + 1:]
            notes.append(f"cut at row {at}")
        else:
            rows[at] = rows[at] + draw(st.sampled_from(("|", "|x", "\r", " ")))
            notes.append(f"row {at} trailing text")
    end = draw(st.sampled_from(("\n", "", "\r\n")))
    text = "\n".join([header, *rows]) + end
    cluster = draw(st.sampled_from((None, "fallback")))
    return Export(text=text, timezone=timezone, card=card, cluster=cluster, notes=tuple(notes))
