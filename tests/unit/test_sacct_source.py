"""SacctSource end to end over the fake sacct executable (tests/fakes/fake_sacct.py)."""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from billing.records import JobRecord, QuarantinedRecord, StepUsage, Window
from collector.slurm.parse import ParsableParser
from collector.slurm.sacct import SACCT_FIELDS, SacctSource, sacct_argv
from collector.slurm.source import SlurmCommandError, SlurmTimeout, SourceError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FAKE = Path(__file__).resolve().parent.parent / "fakes" / "fake_sacct.py"
UTC = timezone.utc
FORMAT = ("--format=JobID,JobIDRaw,Cluster,Partition,Account,User,UID,Group,QOS,WCKey,"
          "Reservation,State,ExitCode,DerivedExitCode,Submit,Eligible,Start,End,ElapsedRaw,"
          "TimelimitRaw,NNodes,NCPUS,AllocTRES,TRESUsageInTot,CPUTimeRAW,TotalCPU,MaxRSS,"
          "ConsumedEnergyRaw,NodeList,DBIndex,JobName")
ALL_DAY = Window(datetime(2026, 11, 22, tzinfo=UTC), datetime(2026, 11, 23, tzinfo=UTC))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def sacct(tmp_path: Path) -> str:
    wrapper = tmp_path / "sacct"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.fixture
def argv_log(tmp_path: Path, monkeypatch) -> Path:
    log = tmp_path / "argv.json"
    monkeypatch.setenv("FAKE_SACCT_ARGV_LOG", str(log))
    return log


def direct_parse() -> list:
    lines = (FIXTURES / "sacct-wide-header.psv").read_text(encoding="utf-8").split("\n")
    parser = ParsableParser(lines[0].split("|"), delimiter="|", source="sacct")
    return list(parser.parse_lines(lines[1:], first_line_no=2))


def without_line_no(items: list) -> list:
    return [dataclasses.replace(i, line_no=None) if isinstance(i, StepUsage) else i
            for i in items]


def test_sacct_argv_is_exact():
    window = Window(at("2026-11-22T12:47:00"), at("2026-11-22T12:47:30"))
    assert sacct_argv("/usr/bin/sacct", window, "lab") == [
        "/usr/bin/sacct", "--allusers", "--duplicates", "--noconvert", "--parsable2",
        "--noheader", "--delimiter=\x1f", FORMAT,
        "-S", "2026-11-22T12:47:00", "-E", "2026-11-22T12:47:30", "--clusters=lab"]
    assert FORMAT == "--format=" + ",".join(SACCT_FIELDS)


def test_sacct_argv_converts_to_utc_and_never_narrows():
    berlin = timezone(timedelta(hours=1))
    window = Window(datetime(2026, 11, 22, 13, 47, 0, 900000, tzinfo=berlin),
                    datetime(2026, 11, 22, 13, 47, 30, 1, tzinfo=berlin))
    argv = sacct_argv("sacct", window, None)
    assert argv[-4:] == ["-S", "2026-11-22T12:47:00", "-E", "2026-11-22T12:47:31"]
    assert not any(a.startswith("--clusters") for a in argv)
    assert not any(a.startswith(("--state", "-s")) for a in argv)


def test_fetch_gives_the_same_records_as_parsing_the_export(sacct, argv_log):
    source = SacctSource(sacct_path=sacct, timeout_s=30, cluster="lab")
    assert (source.name, source.windowed) == ("sacct", True)
    items = list(source.fetch(ALL_DAY))
    expected = direct_parse()
    # The fake turned the default-unit export into --noconvert, \x1f and epoch output:
    # the parsed records must not change (only step line numbers: no header line).
    assert without_line_no(items) == without_line_no(expected)
    assert [i for i in items if isinstance(i, QuarantinedRecord)] == []

    logged = json.loads(argv_log.read_text())
    assert logged["argv"] == sacct_argv(sacct, ALL_DAY, "lab")[1:]
    assert not any(a.startswith("--state") or a == "-s" for a in logged["argv"])
    assert logged["env"] == {"TZ": "UTC", "SLURM_TIME_FORMAT": "%s"}

    stats = source.stats
    assert stats.lines == 46                             # 22 job lines + 24 step lines
    assert stats.bytes > 5000 and stats.slurm_seconds > 0
    assert stats.extra["quarantined"] == 0


def test_window_filtering(sacct):
    # sacct-window-semantics.txt, "-D -S 2026-11-22T12:47:00 -E 2026-11-22T12:47:30":
    # 10 (TIMEOUT), 14+0, 14+1 and the REQUEUED record of 16.
    window = Window(at("2026-11-22T12:47:00"), at("2026-11-22T12:47:30"))
    items = list(SacctSource(sacct_path=sacct, timeout_s=30, cluster=None).fetch(window))
    assert [(i.job_id, i.state_raw) for i in items if isinstance(i, JobRecord)] == [
        ("10", "TIMEOUT"), ("14+0", "CANCELLED by 0"), ("14+1", "CANCELLED by 0"),
        ("16", "REQUEUED")]
    assert [(i.job_id_raw, i.step, i.job_db_index) for i in items if isinstance(i, StepUsage)] \
        == [(10, "batch", 14), (16, "batch", 20)]
    # A window before everything: only job 1 ended by 12:45:35.
    early = Window(at("2026-11-22T12:00:00"), at("2026-11-22T12:45:35"))
    items = list(SacctSource(sacct_path=sacct, timeout_s=30, cluster=None).fetch(early))
    assert [i.job_id for i in items if isinstance(i, JobRecord)] == ["1"]
    # A window after the requeue: the completed 16 and the still-running 21.
    late = Window(at("2026-11-22T12:50:00"), at("2026-11-22T13:00:00"))
    items = list(SacctSource(sacct_path=sacct, timeout_s=30, cluster=None).fetch(late))
    assert [(i.job_id, i.state) for i in items if isinstance(i, JobRecord)] == [
        ("16", "COMPLETED"), ("21", "RUNNING")]


def test_cluster_filter(sacct, argv_log):
    items = list(SacctSource(sacct_path=sacct, timeout_s=30, cluster="other").fetch(ALL_DAY))
    assert items == []
    assert "--clusters=other" in json.loads(argv_log.read_text())["argv"]


def test_failure_raises_command_error(sacct, monkeypatch):
    monkeypatch.setenv("FAKE_SACCT_MODE", "fail")
    with pytest.raises(SlurmCommandError) as caught:
        list(SacctSource(sacct_path=sacct, timeout_s=30, cluster=None).fetch(ALL_DAY))
    assert caught.value.returncode == 1 and "Connection refused" in caught.value.stderr


def test_hang_raises_timeout(sacct, monkeypatch):
    monkeypatch.setenv("FAKE_SACCT_MODE", "hang")
    source = SacctSource(sacct_path=sacct, timeout_s=1, cluster=None)
    with pytest.raises(SlurmTimeout):
        list(source.fetch(ALL_DAY))


def test_garbage_is_quarantined_and_good_records_survive(sacct, monkeypatch):
    monkeypatch.setenv("FAKE_SACCT_MODE", "garbage")
    items = list(SacctSource(sacct_path=sacct, timeout_s=30, cluster=None).fetch(ALL_DAY))
    bad = [i for i in items if isinstance(i, QuarantinedRecord)]
    assert [q.raw for q in bad] == ["this is not sacct output", "x\x1fy\x1fz",
                                    "\ufffd\ufffd invalid utf-8 \ufffd\x1fx"]
    assert all(q.source == "sacct" for q in bad)
    good = [i for i in items if not isinstance(i, QuarantinedRecord)]
    assert without_line_no(good) == without_line_no(direct_parse())


def test_truncated_output_fails_the_fetch_after_every_complete_record(sacct, monkeypatch):
    """sacct exits 0 but its last line has no newline: every complete record before it
    arrives, then the fetch fails (naming the cut line), so the poll stores nothing and
    its watermark stays (tests/integration/test_collect.py)."""
    monkeypatch.setenv("FAKE_SACCT_MODE", "truncate")
    items = []
    with pytest.raises(SlurmCommandError, match="truncated") as caught:
        for item in SacctSource(sacct_path=sacct, timeout_s=30, cluster=None).fetch(ALL_DAY):
            items.append(item)
    assert caught.value.returncode == 0
    assert "the cut line begins '21.batch" in str(caught.value)
    assert without_line_no(items) == without_line_no(direct_parse()[:-1])


def test_empty_output(sacct, monkeypatch):
    monkeypatch.setenv("FAKE_SACCT_MODE", "empty")
    source = SacctSource(sacct_path=sacct, timeout_s=30, cluster=None)
    assert list(source.fetch(ALL_DAY)) == []
    assert source.stats.lines == 0


def test_missing_binary_and_no_window(tmp_path):
    source = SacctSource(sacct_path=str(tmp_path / "no-such-sacct"), timeout_s=5, cluster=None)
    with pytest.raises(SlurmCommandError, match="command not found"):
        list(source.fetch(ALL_DAY))
    with pytest.raises(SourceError, match="needs a window"):
        source.fetch(None)


def test_early_years_keep_four_digits_in_argv_and_in_rendered_times():
    # glibc's strftime("%Y") prints year 138 as "138"; both formats must stay ISO 8601.
    from collector.render import iso

    window = Window(datetime(138, 10, 9, 23, 29, 5, tzinfo=UTC),
                    datetime(999, 1, 1, tzinfo=UTC))
    assert sacct_argv("sacct", window, None)[-4:] == [
        "-S", "0138-10-09T23:29:05", "-E", "0999-01-01T00:00:00"]
    assert iso(datetime(138, 10, 9, 23, 29, 5, 600000, tzinfo=UTC)) == "0138-10-09T23:29:05Z"
    assert iso(datetime(2026, 11, 23, 6, 0, tzinfo=timezone(timedelta(hours=1)))) == \
        "2026-11-23T05:00:00Z"
