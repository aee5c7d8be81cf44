"""Job identity and clocks: a job ID reused after a Slurm state reset, and a collector host
that is not on UTC, across a DST change. Each ends with the exactly-once check against a
clean ingest of the same input by a UTC process (tests/faults/kit.py).

The inputs are the captured real export (tests/fixtures/sacct-wide-header.psv, ISO times
in UTC) rewritten at the process boundary: its times shifted so that its five minutes of
jobs straddle a DST change, or one job's records repeated under the same JobIDRaw with a
new Submit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.daemonkit import DEMO_CARD, ROOT
from tests.faults.kit import FIXTURE, assert_exactly_once, snapshot, source_keys, watermark

pytestmark = pytest.mark.slow

UTC = timezone.utc
TIME_COLUMNS = ("Submit", "Eligible", "Start", "End")
FIRST = datetime(2026, 11, 22, 12, 45, 30, tzinfo=UTC)   # the fixture's first Submit
# 2026-11-01 06:00Z: New York falls back (01:59:59 EDT -> 01:00:00 EST).
# 2026-03-29 01:00Z: Berlin springs forward (01:59:59 CET -> 03:00:00 CEST).
US_FALL_BACK = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
EU_SPRING_FORWARD = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def _rewrite(src: Path, dst: Path, *, shift: timedelta = timedelta(0),
             zone: ZoneInfo | None = None, extra: list[str] | None = None) -> Path:
    """Copy an ISO-UTC export, every time moved by ``shift`` and, with ``zone``, printed as
    that zone's wall clock (what sacct prints with TZ set and no SLURM_TIME_FORMAT)."""
    lines = src.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("|")
    cols = [header.index(c) for c in TIME_COLUMNS]
    out = [lines[0]]
    for line in lines[1:] + (extra or []):
        fields = line.split("|")
        for c in cols:
            value = fields[c]
            if value and value[0].isdigit():
                moment = datetime.fromisoformat(value).replace(tzinfo=UTC) + shift
                if zone is not None:
                    moment = moment.astimezone(zone)
                fields[c] = moment.strftime("%Y-%m-%dT%H:%M:%S")
        out.append("|".join(fields))
    dst.write_text("\n".join(out) + "\n", encoding="utf-8")
    return dst


def _collect(url: str, sacct: Path, data: Path, *args: str, tz: str = "UTC",
             command: str = "collect") -> None:
    """The real console command in its own process, with the host zone ``tz``."""
    argv = [sys.executable, "-m", "collector.cli", command]
    if command == "collect":
        argv.append("--once")
    if "--source" not in args:
        argv += ["--source", "sacct", "--sacct", str(sacct), "--cluster", "lab"]
    argv += ["--rates", str(DEMO_CARD), *args]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DATABASE_URL": url, "TZ": tz,
                               "FAKE_SACCT_DATA": str(data)})
    assert done.returncode == 0, done.stdout + done.stderr


def test_job_id_reused_after_a_state_reset_is_two_jobs_and_two_bills(db_url, fake_sacct,
                                                                    yardstick, tmp_path):
    """slurmctld's state was reset: JobIDRaw 2 comes back as a new job, six hours later.
    The first poll stored the old job 2; a later read of both must add the new one as a job
    of its own with its own bill, and leave the old one and its bill alone."""
    lines = FIXTURE.read_text(encoding="utf-8").splitlines()
    job2 = [ln for ln in lines[1:] if ln.split("|")[1].split(".")[0] == "2"]
    assert len(job2) >= 2                                   # the job and its step(s)
    shifted = _rewrite(FIXTURE, tmp_path / "job2-again.psv", shift=timedelta(hours=6))
    again = [ln for ln in shifted.read_text().splitlines()[1:]
             if ln.split("|")[1].split(".")[0] == "2"]
    db_index = lines[0].split("|").index("DBIndex")
    both = _rewrite(FIXTURE, tmp_path / "both.psv", extra=[
        # A new DBIndex: slurmdbd stores the new job as a row of its own; its step lines
        # carry the same DBIndex (a step with another one would belong to no job: it used
        # to be quarantined silently, and now makes the run partial).
        "|".join(f if i != db_index else "1000" for i, f in enumerate(ln.split("|")))
        for ln in again])

    _collect(db_url, fake_sacct, FIXTURE, "--lookback", "3650d")
    first = snapshot(db_url)
    old = [k for k in first.jobs if k[1] == 2]
    assert len(old) == 1
    # The later read covers both records (a backfill over the day, as after a reset).
    _collect(db_url, fake_sacct, both, "--since", "2026-11-22", "--until", "2026-11-23",
             command="backfill")

    keys = source_keys(both, "lab")
    assert sum(1 for k in keys if k[1] == 2) == 2
    got = assert_exactly_once(db_url, yardstick(both, "lab"), keys)
    stored = sorted(k for k in got.jobs if k[1] == 2)
    assert len(stored) == 2 and stored[0] == old[0]
    assert stored[1][2] - stored[0][2] == timedelta(hours=6)
    assert got.jobs[stored[0]] == first.jobs[old[0]]       # the old job was not touched

    def bill(key):
        lines = [dict(line) for line in got.charges
                 if dict(line)["job_id_raw"] == 2
                 and dict(line)["submit_time"] == key[2]]
        return sorted((d["resource"], d["quantity"], d["amount"]) for d in lines)

    assert bill(stored[0]) and bill(stored[0]) == bill(stored[1])


@pytest.mark.parametrize("host_tz", ["America/New_York", "Europe/Berlin"])
def test_a_non_utc_host_across_dst_stores_the_utc_rows(db_url, fake_sacct, yardstick, tmp_path,
                                                       host_tz):
    """The collector's host runs in a local zone and the jobs straddle New York's fall-back
    hour (their local wall clock runs backwards). The sacct source asks sacct for UTC epoch
    seconds whatever the host's zone, so the stored rows equal a UTC host's."""
    data = _rewrite(FIXTURE, tmp_path / "dst.psv",
                    shift=US_FALL_BACK - timedelta(minutes=2, seconds=30) - FIRST)
    text = data.read_text()
    assert "2026-11-01T05:57:30" in text and "2026-11-01T06:0" in text   # straddles 06:00Z
    _collect(db_url, fake_sacct, data, "--lookback", "3650d", tz=host_tz)
    assert watermark(db_url) is not None
    assert_exactly_once(db_url, yardstick(data, "lab"), source_keys(data, "lab"))


def test_a_local_time_export_across_spring_forward_stores_the_utc_rows(db_url, fake_sacct,
                                                                      yardstick, tmp_path):
    """A site exported with sacct in Europe/Berlin (no zone in the times) across the spring
    change, where the wall clock jumps from 02:00 to 03:00: the file source reads the
    times in --timezone and stores the same rows as the UTC sacct source. (Across the fall
    change one local hour happens twice and a zone-less export is ambiguous: README
    Limitations.)"""
    shift = EU_SPRING_FORWARD - timedelta(minutes=2, seconds=30) - FIRST
    utc_data = _rewrite(FIXTURE, tmp_path / "utc.psv", shift=shift)
    berlin = ZoneInfo("Europe/Berlin")
    local = _rewrite(FIXTURE, tmp_path / "berlin.psv", shift=shift, zone=berlin)
    text = local.read_text()
    assert "2026-03-29T01:57:30" in text and "2026-03-29T03:0" in text   # the jump
    _collect(db_url, fake_sacct, local, "--source", "file", "--input", str(local),
             "--timezone", "Europe/Berlin", "--cluster", "lab", tz="America/New_York")
    assert_exactly_once(db_url, yardstick(utc_data, "lab"), source_keys(utc_data, "lab"))
