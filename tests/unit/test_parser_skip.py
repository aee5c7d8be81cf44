"""ParsableParser's skip path: jobs whose raw lines were stored already are skipped before
they are converted; everything else parses exactly as without it."""

from __future__ import annotations

import io
from datetime import timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from bench.gen_sacct import generate
from billing.records import JobRecord, QuarantinedRecord, StepUsage
from collector.slurm.parse import SKIP_BATCH_GROUPS, ParsableParser

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
WIDE = (FIXTURES / "sacct-wide-header.psv").read_text(encoding="utf-8").split("\n")
HEADER, BODY = WIDE[0].split("|"), WIDE[1:]


class Stored:
    """The store's answer, as a set of digests (the interface the parser calls)."""

    def __init__(self, digests=()) -> None:
        self.digests = set(digests)
        self.asked: list[list[tuple[str, int, str]]] = []
        self.skipped_clusters: list[str] = []

    def stored(self, keys):
        self.asked.append(list(keys))
        return {d for _, _, d in keys if d in self.digests}

    def skipped(self, cluster):
        self.skipped_clusters.append(cluster)


def parse(lines, lookup=None, tz=timezone.utc, header=HEADER):
    parser = ParsableParser(header, delimiter="|", source="sacct", tz=tz)
    return list(parser.parse_lines(lines, first_line_no=2, unchanged=lookup))


def jobs(items):
    return [i for i in items if type(i) is JobRecord]


def test_nothing_stored_parses_exactly_as_without_the_lookup_and_digests_each_job():
    plain = parse(BODY)
    lookup = Stored()
    items = parse(BODY, lookup)
    assert items == plain
    assert len(lookup.asked) == 1 and not lookup.skipped_clusters
    digested = [j for j in jobs(items) if j.raw_digest]
    assert len(digested) == len(jobs(items)) and len(digested) >= 20
    assert all(len(j.raw_digest) == 32 for j in digested)
    assert len({j.raw_digest for j in digested}) == len(digested)
    # The asked keys are exactly the digested jobs.
    assert sorted(d for _, _, d in lookup.asked[0]) == sorted(j.raw_digest for j in digested)


def test_stored_jobs_are_skipped_and_only_changed_ones_come_out():
    first = jobs(parse(BODY, Stored()))
    victim = first[3]
    lookup = Stored(j.raw_digest for j in first if j is not victim)
    again = parse(BODY, lookup)
    assert jobs(again) == [victim]
    assert not [i for i in again if type(i) is StepUsage and i.job_id_raw != victim.job_id_raw]
    assert len(lookup.skipped_clusters) == len(first) - 1


def test_a_changed_step_line_changes_only_its_jobs_digest():
    first = {(j.job_id_raw, j.submit): j.raw_digest for j in jobs(parse(BODY, Stored()))}
    n = next(i for i, line in enumerate(BODY) if line.startswith("3.batch|"))
    changed = list(BODY)
    changed[n] = changed[n].replace("|COMPLETED|", "|FAILED|", 1)
    assert changed[n] != BODY[n]
    second = {(j.job_id_raw, j.submit): j.raw_digest for j in jobs(parse(changed, Stored()))}
    differ = [key for key in first if first[key] != second[key]]
    assert [raw for raw, _ in differ] == [3]


def test_the_digest_covers_the_parser_settings():
    utc = {j.job_id_raw: j.raw_digest for j in jobs(parse(BODY, Stored()))}
    berlin = {j.job_id_raw: j.raw_digest
              for j in jobs(parse(BODY, Stored(), tz=ZoneInfo("Europe/Berlin")))}
    assert utc.keys() == berlin.keys()
    assert all(utc[k] != berlin[k] for k in utc)


def test_quarantined_lines_keep_their_job_from_being_skipped_or_digested():
    n = next(i for i, line in enumerate(BODY) if line.startswith("2.batch|"))
    broken = list(BODY)
    cells = broken[n].split("|")
    cells[HEADER.index("ElapsedRaw")] = "soon"
    broken[n] = "|".join(cells)
    items = parse(broken, Stored())
    assert any(type(i) is QuarantinedRecord and "ElapsedRaw" in i.reason for i in items)
    two = [j for j in jobs(items) if j.job_id_raw == 2]
    assert two and two[0].raw_digest is None
    # Everything stored: job 2 still comes out (with its quarantined line), the rest not.
    every = Stored(j.raw_digest for j in jobs(parse(BODY, Stored())))
    every.digests |= {j.raw_digest for j in jobs(items) if j.raw_digest}
    again = parse(broken, every)
    assert [j.job_id_raw for j in jobs(again)] == [2]
    assert any(type(i) is QuarantinedRecord for i in again)


def test_steps_apart_from_their_job_line_keep_the_job_parsed():
    out = io.StringIO()
    generate(40, out, seed=3)
    lines = out.getvalue().split("\n")
    header, body = lines[0].split("|"), [line for line in lines[1:] if line]
    col = header.index("JobIDRaw")
    # Move the first job's step lines after the next job's group.
    first = body[0].split("|")[col]
    steps = [line for line in body[1:] if line.split("|")[col].startswith(first + ".")]
    assert steps, "the generator gives the first job steps"
    rest = [line for line in body if line not in steps]
    nxt = next(i for i, line in enumerate(rest[1:], 1) if "." not in line.split("|")[col])
    end = next((i for i, line in enumerate(rest[nxt + 1:], nxt + 1)
                if "." not in line.split("|")[col]), len(rest))
    moved = rest[:end] + steps + rest[end:]
    full = jobs(parse(moved, header=header))
    every = Stored(j.raw_digest for j in jobs(parse(moved, Stored(), header=header)) if j.raw_digest)
    again = parse(moved, every, header=header)
    # The first job is parsed again with its moved steps rolled up by the pipeline: its
    # step lines come out with it instead of as orphans.
    assert int(first) in [j.job_id_raw for j in jobs(again)]
    assert len(jobs(again)) < len(full)


def test_one_lookup_per_batch_of_jobs():
    out = io.StringIO()
    generate(12_000, out, seed=5)
    lines = out.getvalue().split("\n")
    header, body = lines[0].split("|"), lines[1:]
    lookup = Stored()
    items = parse(body, lookup, header=header)
    n_jobs = len(jobs(items))
    assert n_jobs > SKIP_BATCH_GROUPS * 2
    assert [len(a) for a in lookup.asked[:-1]] == [SKIP_BATCH_GROUPS] * (len(lookup.asked) - 1)
    assert sum(len(a) for a in lookup.asked) == sum(1 for j in jobs(items) if j.raw_digest)
    everything = Stored(j.raw_digest for j in jobs(items) if j.raw_digest)
    again = parse(body, everything, header=header)
    assert len(jobs(again)) == n_jobs - len(everything.skipped_clusters)
    assert len(everything.skipped_clusters) == len(everything.digests)


def _without(column: str):
    k = HEADER.index(column)
    return (HEADER[:k] + HEADER[k + 1:],
            ["|".join(line.split("|")[:k] + line.split("|")[k + 1:]) if line else line
             for line in BODY])


def test_no_cluster_column_takes_the_default_cluster_in_the_skip_path():
    # Issue 18 class 1: the skip path read the Cluster column by position and crashed with
    # IndexError when there was none.
    header, body = _without("Cluster")
    parser = ParsableParser(header, delimiter="|", source="sacct", default_cluster="lab")
    first = list(parser.parse_lines(body, unchanged=Stored()))
    assert jobs(first) == jobs(parse(BODY))
    stored = Stored(j.raw_digest for j in jobs(first))
    again = ParsableParser(header, delimiter="|", source="sacct", default_cluster="lab")
    assert jobs(list(again.parse_lines(body, unchanged=stored))) == []
    assert set(stored.skipped_clusters) == {"lab"}
    assert all(cluster == "lab" for keys in stored.asked for cluster, _, _ in keys)


def test_no_jobidraw_column_in_the_skip_path():
    header, body = _without("JobIDRaw")
    parser = ParsableParser(header, delimiter="|", source="sacct")
    items = list(parser.parse_lines(body, unchanged=Stored()))
    # Array tasks (6_1 ...) and het components (14+0, 14+1) and their steps cannot be
    # derived without JobIDRaw: quarantined; plain jobs parse as with the column.
    bad = [i for i in items if type(i) is QuarantinedRecord]
    assert {q.job_id.partition(".")[0] for q in bad} == {"6_1", "6_2", "6_3", "6_4", "6_5",
                                                          "14+0", "14+1"}
    assert all("no JobIDRaw column" in q.reason for q in bad)
    plain = {j.job_id: j for j in jobs(items)}
    assert plain["2"] == {j.job_id: j for j in jobs(parse(BODY))}["2"]


def test_the_same_job_skipped_twice_is_counted_as_a_duplicate():
    once = jobs(parse(BODY, Stored()))
    stored = Stored(j.raw_digest for j in once)
    parser = ParsableParser(HEADER, delimiter="|", source="sacct")
    twice = BODY + BODY
    assert jobs(list(parser.parse_lines(twice, unchanged=stored))) == []
    assert parser.duplicates_skipped == len(once)
