"""Hypothesis strategies shared by the fuzz tests: sacct exports shaped like the
hand-written corpus (tests/corpus/sacct), edited the ways real and broken exports are."""

from __future__ import annotations

from pathlib import Path

from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]

# Text that looks like sacct fields: delimiters, newlines, sentinels, numbers, units, times.
NASTY = st.sampled_from(["", "|", "||", "\n", "\r", "\t", "\x1f", "\x00", "Unknown", "None",
                         "INVALID", "-1", "0", "99999999999999999999999", "1.5", "nan",
                         "inf", "1-00:00:00", "25:61:61", "2026-02-30T25:00:00",
                         "2026-11-01T01:30:00", "1K", "3.5G", "12Q", "cpu=", "gres/gpu:=",
                         "billing=4,cpu=2,mem=1024M,node=1,gres/gpu:a100=x", "CANCELLED by ",
                         "5.batch", "5.", ".batch", "6_[1-", "14+", "é", "\ud800", "😀",
                         "4000Mn", "2Gc", "gpu:tesla:2", "gpu:2(IDX:0-1)", "node[01-", "PARKED",
                         "gres/gpu:h100=2,gres/gpu=2,gres/shard=4", "n", "c", "[", "]"])
FIELD = st.one_of(NASTY, st.text(max_size=30), st.integers().map(str))

CORPUS = sorted((ROOT / "tests" / "corpus" / "sacct").glob("*.psv"))
DELIMITERS = st.sampled_from(["|", "\x1f", ";", "\t", "||", "#|#"])


def corpus_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """A corpus file as (header, rows), whatever its delimiter, BOM and -p trailer."""
    lines = [line for line in path.read_text(encoding="utf-8-sig").split("\n") if line.strip()]
    delim = "\x1f" if "\x1f" in lines[0] else "|"
    header = lines[0].split(delim)
    rows = [line.split(delim) for line in lines[1:]]
    if header[-1] == "":                                   # --parsable's trailing delimiter
        header, rows = header[:-1], [row[:-1] for row in rows]
    return header, rows


@st.composite
def real_shaped_exports(draw) -> str:
    """A corpus export after random edits a site's export (or a broken one) could have:
    columns dropped, reordered or renamed in case, values replaced by hostile text,
    records repeated or cut, blank lines and a BOM before the header, another delimiter,
    -p's trailing delimiter, a newline inside a record."""
    header, rows = corpus_table(draw(st.sampled_from(CORPUS)))
    order = draw(st.permutations(list(range(len(header)))))
    keep = [i for i in order if draw(st.integers(0, 9)) > 0]          # drop ~10 % of columns
    header = [header[i].lower() if draw(st.booleans()) else header[i] for i in keep]
    rows = [[row[i] for i in keep] for row in rows]
    for _ in range(draw(st.integers(0, 4))):
        if rows and header:
            row = draw(st.integers(0, len(rows) - 1))
            rows[row][draw(st.integers(0, len(header) - 1))] = draw(FIELD)
    if rows and draw(st.booleans()):
        rows.insert(draw(st.integers(0, len(rows))), list(draw(st.sampled_from(rows))))
    delim = draw(DELIMITERS)
    trailer = delim if draw(st.booleans()) else ""
    lines = [delim.join(header) + trailer] + [delim.join(row) + trailer for row in rows]
    if len(lines) > 1 and draw(st.booleans()):
        n = draw(st.integers(1, len(lines) - 1))
        cut = draw(st.integers(0, len(lines[n])))
        lines[n] = lines[n][:cut] + "\n" + lines[n][cut:]             # a newline inside
    if draw(st.booleans()):
        lines = lines[: draw(st.integers(1, len(lines)))]             # cut short
    prefix = draw(st.sampled_from(["", "\n", "\n  \n", "\ufeff", "\ufeff\n"]))
    return prefix + "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))


