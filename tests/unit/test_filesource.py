"""FileSource on the real exports in tests/fixtures (and variants written to tmp_path)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from billing.records import JobRecord, QuarantinedRecord, StepUsage
from collector.slurm.filesource import FileSource, split_header
from collector.slurm.jsonparse import parse_sacct_json
from collector.slurm.source import SourceError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
WIDE = FIXTURES / "sacct-wide-header.psv"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def fetch(path: Path, *, tz=UTC, cluster: str | None = None) -> tuple[list, FileSource]:
    source = FileSource(path, tz=tz, cluster=cluster)
    return list(source.fetch(None)), source


@pytest.fixture(scope="module")
def wide_items():
    return fetch(WIDE)[0]


def rewrite(tmp_path: Path, name: str, transform) -> Path:
    """Write the wide export through transform(header, rows) -> (header, rows)."""
    lines = WIDE.read_text(encoding="utf-8").rstrip("\n").split("\n")
    header = lines[0].split("|")
    rows = [line.split("|") for line in lines[1:]]
    header, rows = transform(header, rows)
    path = tmp_path / name
    path.write_text("\n".join("|".join(r) for r in [header, *rows]) + "\n", encoding="utf-8")
    return path


def test_header_export(wide_items):
    items, source = fetch(WIDE)
    assert (source.name, source.windowed) == ("file:sacct-wide-header.psv", False)
    assert [i for i in items if isinstance(i, QuarantinedRecord)] == []
    assert len([i for i in items if isinstance(i, JobRecord)]) == 22
    assert len([i for i in items if isinstance(i, StepUsage)]) == 24
    assert source.stats.lines == 47                      # header + 46 records
    ignored = source.stats.extra["ignored_columns"]
    assert {"GID", "SubmitLine", "WorkDir", "Flags", "Reason", "ReqTRES"} <= set(ignored)
    assert not {"AllocTRES", "JobName", "ReqMem", "NCPUS"} & set(ignored)
    rec = next(i for i in items if isinstance(i, JobRecord) and i.job_id == "6_3")
    assert (rec.job_id_raw, rec.cluster, rec.submit) == (19, "lab", at("2026-11-22T12:45:42"))


def test_noheader_export_is_refused():
    with pytest.raises(SourceError, match="first line is not a sacct header.*--noheader"):
        fetch(FIXTURES / "sacct-wide-noheader.psv")


def test_shuffled_columns_give_identical_records(tmp_path, wide_items):
    def shuffle(header, rows):
        order = list(range(len(header)))
        order = order[5:] + order[:5]
        order.reverse()
        return [header[i] for i in order], [[r[i] for i in order] for r in rows]
    items, _ = fetch(rewrite(tmp_path, "shuffled.psv", shuffle))
    assert items == wide_items


def test_unknown_column_is_ignored(tmp_path, wide_items):
    def add(header, rows):
        return ["Comment2", *header], [["anything", *r] for r in rows]
    items, source = fetch(rewrite(tmp_path, "extra.psv", add))
    assert items == wide_items
    assert "Comment2" in source.stats.extra["ignored_columns"]


def test_noconvert_and_default_units_give_identical_records(tmp_path, wide_items):
    # Values typed from sacct-noconvert.psv for jobs 2, 3 and 11 and their batch steps.
    noconvert = {
        "2": {"AllocTRES": "billing=4,cpu=2,gres/gpu=1,mem=1024M,node=1"},
        "2.batch": {"AllocTRES": "cpu=2,gres/gpu=1,mem=1024M,node=1",
                    "TRESUsageInTot": "cpu=00:00:06,energy=0,fs/disk=59396,mem=324423680,"
                                      "pages=3,vmem=331415552",
                    "MaxRSS": "324423680", "AveRSS": "324423680"},
        "3": {"AllocTRES": "billing=8,cpu=4,gres/gpu=2,mem=2048M,node=1"},
        "3.batch": {"TRESUsageInTot": "cpu=00:00:00,energy=0,fs/disk=11083,mem=3334144,"
                                      "pages=0,vmem=5644288",
                    "MaxRSS": "3334144", "AveRSS": "3334144"},
        "11": {"AllocTRES": "billing=3,cpu=1,gres/gpu=1,mem=300M,node=1"},
        "11.batch": {"TRESUsageInTot": "cpu=00:00:06,energy=0,fs/disk=59396,mem=324288512,"
                                       "pages=0,vmem=331415552",
                     "MaxRSS": "324288512", "AveRSS": "324288512"},
    }

    def convert(header, rows):
        for row in rows:
            for name, value in noconvert.get(row[0], {}).items():
                row[header.index(name)] = value
        return header, rows
    items, _ = fetch(rewrite(tmp_path, "noconvert.psv", convert))
    assert items == wide_items
    two = next(i for i in items if isinstance(i, JobRecord) and i.job_id == "2")
    assert two.mem_bytes == 1073741824


def test_unit_separator_epoch_export(tmp_path, wide_items):
    # A header'd export made with --delimiter=$'\x1f' and SLURM_TIME_FORMAT=%s.
    epochs = {"2026-11-22T12:45:42": "1795351542", "2026-11-22T12:45:43": "1795351543",
              "2026-11-22T12:45:54": "1795351554"}
    lines = WIDE.read_text(encoding="utf-8").split("\n")
    converted = []
    for line in lines:
        fields = line.split("|")
        if fields[0] == "2" or line is lines[0]:
            converted.append("\x1f".join(epochs.get(f, f) for f in fields))
    path = tmp_path / "unit.psv"
    path.write_text("\n".join(converted) + "\n", encoding="utf-8")
    items, source = fetch(path, tz=ZoneInfo("Asia/Kolkata"))      # epoch ignores tz
    assert source.stats.extra["delimiter"] == "\x1f"
    assert items == [i for i in wide_items if isinstance(i, JobRecord) and i.job_id == "2"]


def test_local_times_are_read_in_the_given_zone(tmp_path):
    # tz-and-time-format.txt: TZ=America/New_York prints job 2 as 07:45:42.
    path = tmp_path / "ny.psv"
    path.write_text("JobID|JobIDRaw|Cluster|State|Submit|Start|End\n"
                    "2|2|lab|COMPLETED|2026-11-22T07:45:42|2026-11-22T07:45:43|"
                    "2026-11-22T07:45:54\n", encoding="utf-8")
    (rec,), _ = fetch(path, tz=ZoneInfo("America/New_York"))
    assert (rec.submit, rec.start, rec.end) == (
        at("2026-11-22T12:45:42"), at("2026-11-22T12:45:43"), at("2026-11-22T12:45:54"))


def test_crlf_export(tmp_path, wide_items):
    path = tmp_path / "crlf.psv"
    path.write_bytes(WIDE.read_bytes().replace(b"\n", b"\r\n"))
    assert fetch(path)[0] == wide_items


def test_json_export():
    path = FIXTURES / "sacct-all.json"
    items, source = fetch(path)
    assert source.name == "file:sacct-all.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert items == list(parse_sacct_json(doc, source="file:sacct-all.json", default_cluster=None))
    assert len([i for i in items if isinstance(i, JobRecord)]) == 22
    assert source.stats.extra["format"] == "json"


def test_json_with_errors_or_not_jobs_is_refused(tmp_path):
    bad = tmp_path / "errors.json"
    bad.write_text(json.dumps({"errors": [{"error": "Unable to parse time format"}], "jobs": []}))
    with pytest.raises(SourceError, match="reports errors"):
        fetch(bad)
    other = tmp_path / "other.json"
    other.write_text('  {"meta": {}}')
    with pytest.raises(SourceError, match="no 'jobs' list"):
        fetch(other)
    broken = tmp_path / "broken.json"
    broken.write_text('{"jobs": [')
    with pytest.raises(SourceError, match="not valid JSON"):
        fetch(broken)


def test_missing_required_columns_are_named():
    # The real --noconvert sample has only JobID|ReqMem|AllocTRES|TRESUsageInTot|MaxRSS|AveRSS.
    with pytest.raises(SourceError,
                       match=r"missing required column\(s\): Submit, State$"):
        fetch(FIXTURES / "sacct-noconvert.psv")


def test_no_cluster_column_needs_a_cluster_setting(tmp_path, wide_items):
    def drop(header, rows):
        k = header.index("Cluster")
        return header[:k] + header[k + 1:], [r[:k] + r[k + 1:] for r in rows]
    path = rewrite(tmp_path, "nocluster.psv", drop)
    with pytest.raises(SourceError, match="the file has no Cluster column; pass --cluster"):
        fetch(path)
    items, _ = fetch(path, cluster="lab")
    assert items == wide_items


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.psv"
    empty.write_text("")
    with pytest.raises(SourceError, match="empty"):
        fetch(empty)
    blank = tmp_path / "blank.psv"
    blank.write_text("\n\n  \n")
    with pytest.raises(SourceError, match="empty"):
        fetch(blank)
    with pytest.raises(SourceError, match="cannot open"):
        fetch(tmp_path / "nope.psv")


def test_header_only_file_gives_nothing(tmp_path):
    path = tmp_path / "header-only.psv"
    path.write_text(WIDE.read_text(encoding="utf-8").split("\n")[0] + "\n")
    assert fetch(path)[0] == []


@pytest.mark.parametrize("header, expected", [
    ("JobID|JobIDRaw|State", (["JobID", "JobIDRaw", "State"], "|", False)),
    ("JobID|JobIDRaw|State|", (["JobID", "JobIDRaw", "State"], "|", True)),        # -p
    ("JobID\x1fSubmit\x1fState", (["JobID", "Submit", "State"], "\x1f", False)),
    ("JobID;;Submit;;State", (["JobID", "Submit", "State"], ";;", False)),
    ("JobID\tSubmit", (["JobID", "Submit"], "\t", False)),
    ("JobIDRaw", (["JobIDRaw"], "|", False)),
    ("JobID    JobName  Partition", None),          # sacct's fixed-width output
    ("2|2|cpu_gpu1|lab", None),                      # a record (--noheader)
    ("JobID|Submit;State", None),                    # two different separators
    ("Account|User|Partition", None),                # no identity column at all
    ("", None),
])
def test_split_header(header, expected):
    assert split_header(header) == expected


def test_leading_blank_lines_bom_and_parsable_trailer(tmp_path, wide_items):
    lines = WIDE.read_text(encoding="utf-8").rstrip("\n").split("\n")
    path = tmp_path / "p.psv"
    path.write_text("\ufeff\n  \n\n" + "\n".join(line + "|" for line in lines) + "\n",
                    encoding="utf-8")
    items, source = fetch(path)
    assert items == [
        # Same records; only the step lines' numbers moved down by the three blank lines.
        StepUsage(**{**{f: getattr(i, f) for f in i.__slots__}, "line_no": i.line_no + 3})
        if isinstance(i, StepUsage) else i for i in wide_items]
    assert source.stats.extra["ignored_columns"] == list(fetch(WIDE)[1].stats.extra[
        "ignored_columns"])


def test_a_header_after_blank_lines_is_refused_when_it_is_a_record(tmp_path):
    path = tmp_path / "noheader.psv"
    path.write_text("\n\n" + (FIXTURES / "sacct-wide-noheader.psv").read_text())
    with pytest.raises(SourceError, match=r"first line is not a sacct header \(line 3:"):
        fetch(path)
