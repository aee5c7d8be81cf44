"""Property-based tests (hypothesis) of the value parsers in collector/slurm/fields.py: each
value is generated in the form sacct(1) documents for it and must read back exactly; any
other text is refused with ValueError (or ArithmeticError), never another exception."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from collector.slurm.fields import (
    KNOWN_STATES,
    STATE_CODES,
    count,
    db_index,
    duration_s,
    hostlist_count,
    parse_alloc_tres,
    parse_gres,
    read_state,
    req_mem_bytes,
    size_bytes,
    split_job_id,
    time_parser,
)

SETTINGS = settings(max_examples=300, deadline=None)
UNITS = {"K": 1, "M": 2, "G": 3, "T": 4}
GPU_TYPES = st.sampled_from(["a100", "h100", "tesla", "k80", "v100", "a100_3g.20gb", "l40s"])
REFUSED = (ValueError, ArithmeticError)


# ------------------------------------------------------------------------ durations

@st.composite
def durations(draw) -> tuple[str, Decimal]:
    """A duration as sacct prints it and its value: ``[D-]HH:MM:SS`` (Elapsed, CPUTime,
    TotalCPU from an hour up) or ``MM:SS.mmm`` (TotalCPU below an hour)."""
    if draw(st.booleans()):
        minutes, seconds, ms = (draw(st.integers(0, 59)), draw(st.integers(0, 59)),
                                draw(st.integers(0, 999)))
        return f"{minutes:02d}:{seconds:02d}.{ms:03d}", Decimal(minutes * 60 + seconds) + \
            Decimal(ms) / 1000
    days, hours = draw(st.integers(0, 400)), draw(st.integers(0, 23))
    minutes, seconds = draw(st.integers(0, 59)), draw(st.integers(0, 59))
    text = f"{hours:02d}:{minutes:02d}:{seconds:02d}"
    if days:
        text = f"{days}-{text}"
    return text, Decimal(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


@SETTINGS
@given(durations())
def test_durations_read_back(case):
    text, value = case
    assert duration_s(text) == value


@SETTINGS
@given(st.text(max_size=20))
def test_any_duration_text_is_a_value_or_refused(text):
    try:
        assert duration_s(text) >= 0
    except REFUSED:
        pass


# ------------------------------------------------------------------------ sizes

@SETTINGS
@given(st.integers(0, 10 ** 12), st.sampled_from(sorted(UNITS)), st.booleans())
def test_sizes_are_1024_based(number, unit, bare):
    if bare:
        assert size_bytes(str(number), 1) == number                    # MaxRSS --noconvert
        assert size_bytes(str(number), 1024 ** 2) == number * 1024 ** 2  # AllocTRES mem
    else:
        assert size_bytes(f"{number}{unit}", 1) == number * 1024 ** UNITS[unit]


@SETTINGS
@given(st.integers(0, 10 ** 9), st.sampled_from(sorted(UNITS)), st.integers(1, 512),
       st.integers(1, 64))
def test_req_mem_per_node_per_cpu_and_whole(number, unit, cpus, nodes):
    size = number * 1024 ** UNITS[unit]
    assert req_mem_bytes(f"{number}{unit}n", cpus=cpus, nodes=nodes) == size * nodes
    assert req_mem_bytes(f"{number}{unit}c", cpus=cpus, nodes=nodes) == size * cpus
    assert req_mem_bytes(f"{number}{unit}", cpus=cpus, nodes=nodes) == size
    assert req_mem_bytes(f"{number}", cpus=cpus, nodes=nodes) == number * 1024 ** 2


@SETTINGS
@given(st.text(max_size=20))
def test_any_size_text_is_a_value_or_refused(text):
    for call in (lambda: size_bytes(text, 1), lambda: req_mem_bytes(text, cpus=2, nodes=3)):
        try:
            value = call()
            assert value is None or value >= 0
        except REFUSED:
            pass


# ------------------------------------------------------------------------ TRES and GRES

NOISE = st.sampled_from([
    ("energy", "1200"), ("fs/disk", "59396"), ("gres/gpumem", "40G"), ("gres/gpuutil", "87"),
    ("gres/shard", "4"), ("gres/mps", "100"), ("license/matlab", "1"), ("bb/datawarp", "1T"),
    ("pages", "3"), ("vmem", "323648K")])


@st.composite
def alloc_tres(draw):
    """An AllocTRES string with every key sacct may print, in any order, and its value."""
    cpus, nodes = draw(st.integers(0, 4096)), draw(st.integers(0, 64))
    mem_mb = draw(st.integers(0, 10 ** 7))
    billing = draw(st.none() | st.integers(0, 10 ** 6))
    typed = draw(st.dictionaries(GPU_TYPES, st.integers(1, 16), max_size=3))
    untyped_extra = draw(st.integers(0, 8))
    with_total = draw(st.booleans()) or not typed
    entries = [("cpu", str(cpus)), ("node", str(nodes)), ("mem", f"{mem_mb}M")]
    if billing is not None:
        entries.append(("billing", str(billing)))
    for gpu_type, n in typed.items():
        entries.append((f"gres/gpu:{gpu_type}", str(n)))
    total = sum(typed.values()) + untyped_extra
    if with_total and total:
        entries.append(("gres/gpu", str(total)))
    entries += draw(st.lists(NOISE, max_size=5, unique=True))
    entries = draw(st.permutations(entries))
    expected = dict(typed)
    if with_total and untyped_extra:
        expected["untyped"] = untyped_extra
    return (",".join(f"{k}={v}" for k, v in entries),
            (cpus, nodes, mem_mb * 1024 ** 2, billing, tuple(sorted(expected.items()))))


@SETTINGS
@given(alloc_tres())
def test_alloc_tres_reads_back_and_a_typed_gpu_counts_once(case):
    text, expected = case
    assert parse_alloc_tres(text) == expected


@st.composite
def gres(draw):
    """A GRES string of Slurm <= 18.08 (AllocGRES/ReqGRES) and its GPUs by type."""
    typed = draw(st.dictionaries(GPU_TYPES, st.integers(1, 16), max_size=3))
    untyped = draw(st.integers(0, 8))
    entries = []
    for gpu_type, n in typed.items():
        detail = draw(st.sampled_from(["", f"(IDX:0-{n - 1})", "(IDX:0,2)"]))
        entries.append(f"gpu:{gpu_type}:{n}{detail}")
    if untyped:
        entries.append(draw(st.sampled_from([f"gpu:{untyped}", f"gpu:{untyped}(IDX:0-1)"])))
    entries += draw(st.lists(st.sampled_from(["mic:1", "shard:4", "gpumem:40G", "mps:100"]),
                             max_size=2))
    entries = draw(st.permutations(entries))
    if typed and untyped:
        # An untyped count next to typed ones is their total (as in AllocTRES).
        expected = dict(typed)
        rest = untyped - sum(typed.values())
        if rest > 0:
            expected["untyped"] = rest
    else:
        expected = {**typed, **({"untyped": untyped} if untyped else {})}
    return ",".join(entries), tuple(sorted(expected.items()))


@SETTINGS
@given(gres())
def test_gres_reads_back(case):
    text, expected = case
    assert parse_gres(text) == expected


@SETTINGS
@given(st.text(max_size=40))
def test_any_tres_or_gres_text_is_a_value_or_refused(text):
    for call in (lambda: parse_alloc_tres(text), lambda: parse_gres(text)):
        try:
            call()
        except REFUSED:
            pass


# ------------------------------------------------------------------------ ids, hosts, states

@SETTINGS
@given(st.integers(1, 2 ** 32), st.integers(0, 10 ** 6), st.integers(0, 63))
def test_job_ids(job, task, offset):
    assert split_job_id(str(job)) == (None, None, None, None)
    assert split_job_id(f"{job}_{task}") == (job, task, None, None)
    assert split_job_id(f"{job}+{offset}") == (None, None, job, offset)
    assert split_job_id(f"{job}_[{task}-{task + 5}%2]") == (job, None, None, None)


@st.composite
def hostlists(draw):
    hosts, total = [], 0
    for _ in range(draw(st.integers(1, 4))):
        prefix = draw(st.sampled_from(["node", "gpu", "c", "rack1-n"]))
        if draw(st.booleans()):
            hosts.append(f"{prefix}{draw(st.integers(0, 99))}")
            total += 1
            continue
        parts, count = [], 0
        for _ in range(draw(st.integers(1, 3))):
            lo = draw(st.integers(0, 500))
            hi = lo + draw(st.integers(0, 20))
            parts.append(f"{lo:03d}-{hi:03d}" if hi > lo else f"{lo:03d}")
            count += hi - lo + 1
        hosts.append(f"{prefix}[{','.join(parts)}]")
        total += count
    return ",".join(hosts), total


@SETTINGS
@given(hostlists())
def test_hostlist_counts(case):
    text, total = case
    assert hostlist_count(text) == total


@SETTINGS
@given(st.sampled_from(sorted(KNOWN_STATES | set(STATE_CODES))), st.booleans(), st.booleans(),
       st.integers(0, 70000))
def test_known_states_in_every_printed_form(state, lower, truncated, uid):
    text = state.lower() if lower else state
    if truncated:
        text += "+"
    elif state in ("CANCELLED", "CA"):
        text += f" by {uid}"
    name, known = read_state(text)
    assert known and name == STATE_CODES.get(state, state)


@SETTINGS
@given(st.text(min_size=1, max_size=20).filter(lambda t: t.strip().partition(" ")[0].rstrip("+")))
def test_any_state_is_kept_and_unknown_ones_are_said_to_be(text):
    name, known = read_state(text)
    assert name and known == (name in KNOWN_STATES)


# ------------------------------------------------------------------------ times

ZONES = st.sampled_from(["UTC", "America/Chicago", "Europe/Berlin", "Asia/Kolkata",
                         "Australia/Lord_Howe"])


@SETTINGS
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1)), ZONES,
       st.sampled_from(["epoch", "T", " "]))
def test_times_read_back_in_utc(when, zone_name, form):
    instant = when.replace(microsecond=0, tzinfo=UTC)
    zone = ZoneInfo(zone_name)
    parse = time_parser(zone)
    if form == "epoch":
        assert parse(str(int(instant.timestamp()))) == instant
        return
    local = instant.astimezone(zone)
    text = local.strftime(f"%Y-%m-%d{form}%H:%M:%S")
    got = parse(text)
    assert got.tzinfo is UTC
    if local.fold == 0 and zone.utcoffset(local.replace(tzinfo=None)) == local.utcoffset():
        assert got == instant
    else:
        # The second of two equal wall times (DST fall-back) reads as the first: local
        # time without a zone is ambiguous there (why the collector asks for epochs).
        assert timedelta(0) < instant - got <= timedelta(hours=2)


@SETTINGS
@given(st.integers(0, 2 ** 64 - 1), st.text(max_size=12))
def test_counts_and_db_indexes(number, text):
    assert count(str(number)) == number and db_index(str(number)) == number
    assert db_index("") is None and db_index("Unknown") is None
    try:
        value = count(text)
    except ValueError:
        return
    assert value >= 0 and text.isascii() and text.isdigit()
