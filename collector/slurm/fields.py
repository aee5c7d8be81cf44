"""Value parsers for what Slurm prints: sentinels, sizes, durations, states, JobIDs,
TRES strings and times. Shared by the text reader (``parse.py``), the JSON reader
(``jsonparse.py``) and the pyslurm source. Pure functions, cached where values repeat.

Slurm facts (sacct(1), checked on tests/fixtures): sizes are 1024-based; under
``--noconvert`` AllocTRES ``mem`` is MB while MaxRSS / TRESUsageInTot ``mem`` are bytes;
times are epoch seconds under ``SLURM_TIME_FORMAT=%s``, else local time without a zone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from billing.records import KNOWN_STATES, UNTYPED_GPU, is_final_state

# Columns without which a record has no identity: Submit, State, and JobID or JobIDRaw
# (either one: the reader derives what it can of the other, see parse.py).
REQUIRED_FIELDS: tuple[str, ...] = ("JobID", "JobIDRaw", "Submit", "State")
IDENTITY_ALTERNATIVES: tuple[tuple[str, ...], ...] = (("JobID", "JobIDRaw"), ("Submit",),
                                                       ("State",))

# Free-text columns: the only ones a stray delimiter can come from. Constraints is one:
# `--constraint "intel|amd"` is legal Slurm syntax. Reason is not: it holds Slurm's own
# fixed words (None, Resources, BeginTime ...).
FREE_TEXT_FIELDS: frozenset[str] = frozenset(
    {"JobName", "SubmitLine", "WorkDir", "Comment", "AdminComment", "SystemComment",
     "Constraints"})


# Values sacct prints for "no value" (sacct(1); RECIPE §6 "Sentinel values").
SENTINELS = frozenset({"", "Unknown", "None", "None assigned", "UNLIMITED", "(null)",
                       "Partition_Limit", "INVALID"})

_KIB = 1024
_UNIT = {"K": _KIB, "M": _KIB ** 2, "G": _KIB ** 3, "T": _KIB ** 4, "P": _KIB ** 5,
         "E": _KIB ** 6}
MB = _UNIT["M"]


# slurmdbd's DBIndex is an unsigned 64-bit number (what jobs.db_index holds).
DB_INDEX_MAX = 2 ** 64 - 1
# The largest CPU, node or GPU count of one job the store keeps (jobs.cpus, .nodes and
# .gpu_count are integer columns).
COUNT_MAX = 2 ** 31 - 1


def count(text: str) -> int:
    """A count Slurm prints (CPUs, nodes, GPUs, billing units): a non-negative integer in
    ASCII digits. Anything else (``-1``, ``2.5``, ``٣``) raises ValueError."""
    if not (text.isdigit() and text.isascii()):
        raise ValueError(f"not a count: {text!r}")
    return int(text)


def opt_count(text: str) -> int | None:
    """``count``, with the sentinels (empty, ``Unknown`` ...) as None."""
    return None if text in SENTINELS else count(text)


def db_index(text: str) -> int | None:
    """DBIndex: an unsigned 64-bit integer, or None for a sentinel."""
    value = opt_count(text)
    if value is not None and value > DB_INDEX_MAX:
        raise ValueError(f"DBIndex {text!r} is above 2^64 - 1")
    return value


def size_bytes(text: str, bare_unit: int) -> int:
    """``"316820K"`` -> 324423680. Suffixes K/M/G/T/P are 1024-based (Slurm's unit
    conversion); a bare number is multiplied by ``bare_unit`` (1 for MaxRSS and
    TRESUsage mem, which --noconvert prints in bytes; MB for AllocTRES/ReqMem mem, the
    TRES mem unit). Fractions (``--units=G`` prints ``0.30G``) are lossy: rounded half-even
    to whole bytes."""
    last = text[-1:]
    if last.isdigit():
        number, mult = text, bare_unit
    else:
        unit = _UNIT.get(last.upper())
        if unit is None:
            raise ValueError(f"unknown size unit {last!r}")
        number, mult = text[:-1], unit
    if number.isdigit():
        return int(number) * mult
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise ValueError(f"not a size: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"not a size: {text!r}")
    return int((value * mult).to_integral_value(rounding=ROUND_HALF_EVEN))


@functools.lru_cache(maxsize=8192)
def duration_s(text: str) -> Decimal:
    """Parse a Slurm duration to seconds.

    Formats (sacct(1), samples/duration-formats.psv): ``[D-]HH:MM:SS`` (Elapsed, CPUTime,
    Timelimit, and TotalCPU from one hour up, where milliseconds are dropped),
    ``MM:SS.mmm`` (TotalCPU/UserCPU/SystemCPU below one hour), ``MM:SS``, ``SS[.mmm]``.
    """
    if not text.isascii():
        raise ValueError(f"not a duration: {text!r}")
    days = 0
    rest = text
    if "-" in rest:
        day_text, _, rest = rest.partition("-")
        if not day_text.isdigit():
            raise ValueError(f"not a duration: {text!r}")
        days = int(day_text)
    parts = rest.split(":")
    if len(parts) == 3:
        hours, minutes, seconds = parts
    elif len(parts) == 2:
        hours, (minutes, seconds) = "0", parts
    elif len(parts) == 1 and not days:
        hours, minutes, seconds = "0", "0", parts[0]
    else:
        raise ValueError(f"not a duration: {text!r}")
    if not (hours.isdigit() and minutes.isdigit()
            and seconds.replace(".", "", 1).isdigit()):
        raise ValueError(f"not a duration: {text!r}")
    whole = ((days * 24 + int(hours)) * 60 + int(minutes)) * 60
    return Decimal(seconds) + whole if "." in seconds else Decimal(whole + int(seconds))


def timelimit_min(text: str, *, raw: bool) -> int | None:
    """TimelimitRaw (minutes, ``raw=True``) or Timelimit (``[D-]HH:MM:SS``/``MM:SS``) to
    minutes; ``UNLIMITED``/``Partition_Limit``/empty -> None."""
    if text in SENTINELS:
        return None
    if raw or text.isdigit():
        return int(text)
    return int(duration_s(text)) // 60


@functools.lru_cache(maxsize=256)
def normalise_state(raw: str) -> tuple[str, bool]:
    """``"CANCELLED by 0"`` -> ("CANCELLED", True). sacct(1) appends ``by <uid>`` to
    CANCELLED and, in fixed-width output, ``+`` to a truncated state."""
    state = raw.strip().partition(" ")[0].rstrip("+").upper()
    if not state:
        raise ValueError("empty state")
    return state, is_final_state(state)


# The short forms (sacct --state accepts them; some exports print them).
STATE_CODES: dict[str, str] = {
    "BF": "BOOT_FAIL", "CA": "CANCELLED", "CD": "COMPLETED", "CF": "CONFIGURING",
    "CG": "COMPLETING", "DL": "DEADLINE", "F": "FAILED", "NF": "NODE_FAIL",
    "OOM": "OUT_OF_MEMORY", "PD": "PENDING", "PR": "PREEMPTED", "R": "RUNNING",
    "RD": "RESV_DEL_HOLD", "RF": "REQUEUE_FED", "RH": "REQUEUE_HOLD", "RQ": "REQUEUED",
    "RS": "RESIZING", "RV": "REVOKED", "SI": "SIGNALING", "SE": "SPECIAL_EXIT",
    "SO": "STAGE_OUT", "ST": "STOPPED", "S": "SUSPENDED", "TO": "TIMEOUT",
}


@functools.lru_cache(maxsize=256)
def read_state(raw: str) -> tuple[str, bool]:
    """A State as sacct prints it -> (normalised state, known).

    ``"CANCELLED by 0"`` -> ("CANCELLED", True); ``"cancelled+"`` (truncated fixed-width
    output) -> ("CANCELLED", True); a short code (``CD``, ``TO``) -> its long name. A
    state Slurm does not document -> (its first word, upper-cased, False): the caller
    keeps the raw text and treats the record as not final. An empty state raises.
    """
    state = raw.strip().partition(" ")[0].rstrip("+").upper()
    if not state:
        raise ValueError("empty state")
    state = STATE_CODES.get(state, state)
    return state, state in KNOWN_STATES


def split_job_id(job_id: str) -> tuple[int | None, int | None, int | None, int | None]:
    """JobID as printed -> (array_job_id, array_task_id, het_job_id, het_job_offset).

    ``6_3`` is task 3 of array 6; ``6_[1-5]`` / ``6_[1,3]`` is the not-yet-split pending
    part of array 6 (no task id); ``14+1`` is component 1 of het job 14.
    """
    # Every number goes through ``count``: Python's int() would also take "1_000", " 7"
    # or "+7", and "6_3_4" would read as task 34 of array 6.
    if job_id.isdigit() and job_id.isascii():
        return None, None, None, None
    if "_" in job_id:
        array_text, _, task_text = job_id.partition("_")
        if task_text.startswith("["):
            if not task_text.endswith("]"):
                raise ValueError(f"bad array task list in JobID {job_id!r}")
            return count(array_text), None, None, None
        return count(array_text), count(task_text), None, None
    if "+" in job_id:
        het_text, _, offset_text = job_id.partition("+")
        return None, None, count(het_text), count(offset_text)
    raise ValueError(f"unrecognised JobID {job_id!r}")


def gpu_breakdown(total: int | None, typed: dict[str, int]) -> tuple[tuple[str, int], ...]:
    """GPU counts by type from Slurm's untyped total and typed entries.

    AllocTRES lists ``gres/gpu=N`` (all GPUs) next to ``gres/gpu:TYPE=n`` (the typed part),
    so the two must never be added: typed entries count as themselves and only the
    remainder ``N - sum(n)`` is UNTYPED_GPU. With typed entries only, there is no remainder.
    """
    result = {gpu_type: count for gpu_type, count in typed.items() if count > 0}
    if total is not None:
        remainder = total - sum(typed.values())
        if remainder > 0:
            result[UNTYPED_GPU] = result.get(UNTYPED_GPU, 0) + remainder
    return tuple(sorted(result.items()))


# GRES names that are GPUs: ``gpu`` only. ``gpumem``, ``gpuutil``, ``shard``, ``mps``
# and the rest are other generic resources (never counted as GPUs).
_GPU_GRES = "gpu"


@functools.lru_cache(maxsize=1024)
def parse_gres(text: str) -> tuple[tuple[str, int], ...]:
    """GPUs by type from a GRES string (sacct's AllocGRES/ReqGRES, Slurm <= 18.08).

    Forms: ``gpu`` (one), ``gpu:2``, ``gpu:tesla:2``, ``gpu:2(IDX:0-1)``,
    ``gpu:tesla:2(IDX:0,1)``, several comma-separated entries (``mic:1,gpu:k80:4``), and
    the prefixes ``gres:``/``gres/`` of newer spellings. The ``(...)`` detail is dropped.
    Entries of the same GPU are added; typed and untyped entries are combined like
    AllocTRES (``gpu_breakdown``): an untyped count next to typed ones is their total.
    Names other than ``gpu`` are ignored. Empty or a sentinel -> ().
    """
    if text in SENTINELS:
        return ()
    untyped: int | None = None
    typed: dict[str, int] = {}
    depth = 0
    entry: list[str] = []
    entries: list[str] = []
    for ch in text:                      # split on commas outside parentheses
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            entries.append("".join(entry))
            entry = []
            continue
        if depth == 0 and ch != ")":
            entry.append(ch)
    entries.append("".join(entry))
    for raw_entry in entries:
        item = raw_entry.strip()
        if not item:
            continue
        for prefix in ("gres:", "gres/"):
            item = item.removeprefix(prefix)
        parts = item.split(":")
        if parts[0] != _GPU_GRES:
            continue
        count_text = parts[-1] if len(parts) > 1 else "1"
        if len(parts) > 1 and not (count_text.isdigit() and count_text.isascii()):
            # ``gpu:tesla`` (a type without a count) means one of that type.
            if len(parts) == 2 and count_text and ":" not in count_text:
                parts.append("1")
                count_text = "1"
            else:
                raise ValueError(f"GRES entry {raw_entry!r} has no count")
        count = int(count_text)
        gpu_type = ":".join(parts[1:-1])
        if gpu_type:
            typed[gpu_type] = typed.get(gpu_type, 0) + count
        else:
            untyped = (untyped or 0) + count
    return gpu_breakdown(untyped, typed)


def scale_gpus(gpus: tuple[tuple[str, int], ...], factor: int) -> tuple[tuple[str, int], ...]:
    """Every count of ``gpus`` multiplied by ``factor`` (a per-node request x nodes)."""
    if factor == 1:
        return gpus
    return tuple((gpu_type, count * factor) for gpu_type, count in gpus if count * factor)


def req_mem_bytes(text: str, *, cpus: int, nodes: int) -> int | None:
    """ReqMem as sacct prints it -> the job's requested memory in bytes, or None.

    Slurm <= 21.02 appends ``n`` (per node) or ``c`` (per CPU) to the number
    (``4000Mn``, ``2Gc``, ``1.50Gn``, ``0n``): the job's total is that x NNodes or
    x AllocCPUS. From 21.08 the number stands alone and is the job's requested memory.
    A bare number is MB (Slurm's memory unit); suffixes are 1024-based.
    """
    if text in SENTINELS:
        return None
    per = text[-1:]
    factor = 1
    if per in ("n", "c"):
        text = text[:-1]
        factor = nodes if per == "n" else cpus
        if not text:
            raise ValueError("ReqMem has no number")
    return size_bytes(text, MB) * max(factor, 0)


def hostlist_count(text: str) -> int:
    """The number of hosts in a Slurm hostlist expression: ``vm`` -> 1,
    ``node[01-04,07],gpu1`` -> 6, ``rack[1-2]-node[1-3]`` -> 6. Sentinels -> 0."""
    if text in SENTINELS:
        return 0
    total = 0
    depth = 0
    current: list[str] = []
    hosts: list[str] = []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced hostlist {text!r}")
        elif ch == "," and depth == 0:
            hosts.append("".join(current))
            current = []
            continue
        current.append(ch)
    if depth:
        raise ValueError(f"unbalanced hostlist {text!r}")
    hosts.append("".join(current))
    for host in hosts:
        if not host:
            continue
        count = 1
        rest = host
        while "[" in rest:
            _, _, after = rest.partition("[")
            inside, _, rest = after.partition("]")
            ranges = 0
            for part in inside.split(","):
                lo, dash, hi = part.partition("-")
                if not (lo.isdigit() and lo.isascii()) or (dash and not (hi.isdigit() and hi.isascii())):
                    raise ValueError(f"bad hostlist range {part!r} in {text!r}")
                span = int(hi) - int(lo) + 1 if dash else 1
                if span < 1:
                    raise ValueError(f"bad hostlist range {part!r} in {text!r}")
                ranges += span
            count *= ranges
        total += count
    return total


@functools.lru_cache(maxsize=4096)
def parse_alloc_tres(text: str) -> tuple[int, int, int, int | None, tuple[tuple[str, int], ...]]:
    """AllocTRES ``billing=4,cpu=2,gres/gpu=1,mem=1024M,node=1`` ->
    (cpus, nodes, mem_bytes, billing, gpus).

    AllocTRES is the whole job's allocation (never multiply by NNodes). A bare mem number
    is MB (Slurm's TRES mem unit). An empty string (a job cancelled while pending has no
    allocation) is a zero allocation with no billing. A typed GPU counts once
    (``gres/gpu:a100=1`` next to ``gres/gpu=1`` is one a100). Other keys (``energy``,
    ``fs/disk``, ``pages``, ``vmem``, ``gres/gpumem``, ``gres/gpuutil``, ``gres/shard``,
    ``gres/mps``, ``license/...``, ``bb/...``) are never GPUs and are not read.
    """
    cpus = nodes = mem = 0
    billing: int | None = None
    gpu_total: int | None = None
    typed: dict[str, int] = {}
    if not text:
        return 0, 0, 0, None, ()
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"entry {item!r} has no '='")
        if key == "cpu":
            cpus = count(value)
        elif key == "node":
            nodes = count(value)
        elif key == "mem":
            mem = size_bytes(value, MB)
        elif key == "billing":
            # Slurm prints billing truncated to an integer; accept a fraction the same way.
            billing = count(value) if value.isdigit() else int(Decimal(value))
            if billing < 0:
                raise ValueError(f"negative billing {value!r}")
        elif key == "gres/gpu":
            gpu_total = count(value)
        elif key.startswith("gres/gpu:"):
            gpu_type = key[9:]
            typed[gpu_type] = typed.get(gpu_type, 0) + count(value)
    return cpus, nodes, mem, billing, gpu_breakdown(gpu_total, typed)


def tres_value(text: str, key: str) -> str | None:
    """The value of ``key`` in a TRES string (``cpu=00:00:06,energy=0,mem=316820K``), or
    None. Matches whole keys only (``mem`` does not match ``vmem``)."""
    probe = key + "="
    pos = text.find(probe)
    while pos > 0 and text[pos - 1] != ",":
        pos = text.find(probe, pos + 1)
    if pos < 0:
        return None
    start = pos + len(probe)
    end = text.find(",", start)
    return text[start:] if end < 0 else text[start:end]


def _parse_time(text: str, tz: tzinfo) -> datetime | None:
    if text.isdigit() and text.isascii():
        seconds = int(text)
        # sacct prints "Unknown"/"None" for unset times; treat a literal 0 the same way.
        return datetime.fromtimestamp(seconds, UTC) if seconds else None
    if text in SENTINELS:
        return None
    # YYYY-MM-DDTHH:MM:SS (or a space instead of T). zoneinfo with fold=0 picks the
    # first of two ambiguous wall times at a DST fall-back and the pre-transition offset
    # for a non-existent one: local times are ambiguous, which is why sacct runs with %s.
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return dt.astimezone(UTC)


def time_parser(tz: tzinfo) -> Callable[[str], datetime | None]:
    """A cached ``text -> aware UTC datetime | None`` for times printed in ``tz``."""
    @functools.lru_cache(maxsize=1 << 16)
    def parse(text: str) -> datetime | None:
        return _parse_time(text, tz)
    return parse


@functools.lru_cache(maxsize=8192)
def _cpu_seconds(text: str) -> Decimal | None:
    return None if text in SENTINELS else duration_s(text)
