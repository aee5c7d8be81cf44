"""Nodes as slurmctld knows them: ``scontrol show node``, parsed into ``NodeInfo``.

Design notes: docs/design/slurm.md.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from billing.records import UNTYPED_GPU
from collector.slurm.command import slurm_command

log = logging.getLogger(__name__)

_MIB = 1024 * 1024

# A key starts a token: at the start of the line or after whitespace.
_PAIR_RE = re.compile(r"(?:^|(?<=\s))([A-Za-z_][A-Za-z0-9_]*)=(\S*)")
# The free-text pairs printed at the end of a node's line (22.05: Reason, Comment, Extra;
# later versions add InstanceId/InstanceType and ReservationName after them).
_TAIL_KEYS = ("Reason", "Comment", "Extra", "InstanceId", "InstanceType", "ReservationName")
_TAIL_RE = re.compile(r"(?:^|\s)(?:" + "|".join(_TAIL_KEYS) + r")=")
# "[user@2026-11-20T09:14:02]" after the reason text (slurm_make_time_str's ISO form).
_REASON_STAMP_RE = re.compile(r"\s\[[^\[\]\s]*@\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\]")
_NULL = {"", "(null)", "N/A", "none", "None"}
# "(S:0-1)" / "(IDX:0,2-3)" after a GRES count; the type itself may be "(null)".
_TRAILING_PARENS_RE = re.compile(r"\([^()]*\)$")

GpuCounts = tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node as ``scontrol show node`` printed it (units in the names).

    ``gpus_total`` / ``gpus_alloc`` are (type, count) pairs sorted by type, untyped GPUs
    under ``"untyped"``; types with a zero count are kept when Slurm printed them.
    """

    name: str
    partitions: tuple[str, ...]
    state: str                     # base state, upper case: IDLE, MIXED, ALLOCATED, DOWN ...
    state_raw: str                 # as printed: IDLE+DRAIN, DOWN+NOT_RESPONDING ...
    cpus_total: int
    cpus_alloc: int
    mem_total_bytes: int
    mem_alloc_bytes: int
    gpus_total: GpuCounts = ()
    gpus_alloc: GpuCounts = ()
    reason: str | None = None      # Reason= text without its [user@time] stamp

    @property
    def flags(self) -> tuple[str, ...]:
        """The state flags (``DRAIN``, ``NOT_RESPONDING``, ``POWERED_DOWN`` ...)."""
        return tuple(part.upper() for part in self.state_raw.split("+")[1:] if part)


class NodeParseError(ValueError):
    """A ``NodeName=`` line that could not be read; ``line`` is the raw text."""

    def __init__(self, line: str, reason: str) -> None:
        self.line = line
        self.reason = reason
        super().__init__(f"{reason}: {line[:200]!r}")


# ------------------------------------------------------------------------------ parsing

def _split_outside_parens(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def _as_counts(counts: dict[str, int]) -> GpuCounts:
    return tuple(sorted(counts.items()))


def _gres_gpus(text: str, what: str) -> dict[str, int]:
    """``gpu:a100:2(S:0),gpu:4,mps:100`` -> {"a100": 2, "untyped": 4} (gpu entries only)."""
    counts: dict[str, int] = {}
    if text in _NULL:
        return counts
    for item in _split_outside_parens(text):
        parts = _TRAILING_PARENS_RE.sub("", item).split(":")
        if parts[0] != "gpu":
            continue
        if len(parts) < 2 or not parts[-1].isdigit():
            raise ValueError(f"{what}: cannot read a GPU count from {item!r}")
        gtype = parts[1] if len(parts) >= 3 else UNTYPED_GPU
        if gtype in _NULL:
            gtype = UNTYPED_GPU
        counts[gtype] = counts.get(gtype, 0) + int(parts[-1])
    return counts


def _tres_gpus(text: str, what: str) -> dict[str, int]:
    """``cpu=2,mem=1G,gres/gpu=3,gres/gpu:a100=2`` -> {"a100": 2, "untyped": 1}."""
    typed: dict[str, int] = {}
    total = 0
    if text in _NULL:
        return typed
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not (key == "gres/gpu" or key.startswith("gres/gpu:")):
            continue
        if not value.isdigit():
            raise ValueError(f"{what}: cannot read a GPU count from {item!r}")
        if key == "gres/gpu":
            total += int(value)
        else:
            gtype = key.split(":", 1)[1]
            typed[gtype] = typed.get(gtype, 0) + int(value)
    remainder = total - sum(typed.values())
    if remainder > 0:
        typed[UNTYPED_GPU] = remainder
    return typed


def _int(fields: dict[str, str], key: str, *, default: int | None = None) -> int:
    value = fields.get(key)
    if value is None or value in _NULL:
        if default is None:
            raise ValueError(f"no {key}=")
        return default
    if not value.isdigit():
        raise ValueError(f"{key}={value!r} is not a non-negative integer")
    return int(value)


def _reason(tail: str) -> str | None:
    if not tail.startswith("Reason="):
        return None
    text = tail[len("Reason="):]
    stamp = _REASON_STAMP_RE.search(text)
    if stamp is not None:
        text = text[:stamp.start()]
    else:
        following = _TAIL_RE.search(text)
        if following is not None:
            text = text[:following.start()]
    text = " ".join(text.split())
    return text or None


def parse_node_line(line: str) -> NodeInfo:
    """One ``scontrol --oneliner show node`` line -> NodeInfo; NodeParseError if unreadable."""
    text = line.strip()
    tail_at = _TAIL_RE.search(text)
    head = text if tail_at is None else text[:tail_at.start()]
    tail = "" if tail_at is None else text[tail_at.start():].lstrip()
    fields: dict[str, str] = {}
    for match in _PAIR_RE.finditer(head):
        fields.setdefault(match.group(1), match.group(2))
    try:
        name = fields.get("NodeName", "")
        if not name:
            raise ValueError("no NodeName=")
        state_raw = fields.get("State", "")
        if not state_raw:
            raise ValueError("no State=")
        state = state_raw.split("+", 1)[0].rstrip("*~#!%$@^-").upper()
        cpus_total = _int(fields, "CPUEfctv") if "CPUEfctv" in fields else _int(fields, "CPUTot")
        gpus_total = _gres_gpus(fields.get("Gres", ""), "Gres")
        if not gpus_total:
            gpus_total = _tres_gpus(fields.get("CfgTRES", ""), "CfgTRES")
        if "GresUsed" in fields:
            gpus_alloc = _gres_gpus(fields["GresUsed"], "GresUsed")
        else:
            gpus_alloc = _tres_gpus(fields.get("AllocTRES", ""), "AllocTRES")
        partitions = fields.get("Partitions", "")
        return NodeInfo(
            name=name,
            partitions=tuple(p for p in partitions.split(",") if p) if partitions not in _NULL else (),
            state=state,
            state_raw=state_raw,
            cpus_total=cpus_total,
            cpus_alloc=_int(fields, "CPUAlloc", default=0),
            mem_total_bytes=_int(fields, "RealMemory") * _MIB,
            mem_alloc_bytes=_int(fields, "AllocMem", default=0) * _MIB,
            gpus_total=_as_counts(gpus_total),
            gpus_alloc=_as_counts(gpus_alloc),
            reason=_reason(tail),
        )
    except ValueError as exc:
        raise NodeParseError(line, str(exc)) from None


def parse_nodes(lines: Iterable[str], *,
                errors: list[NodeParseError] | None = None) -> list[NodeInfo]:
    """``scontrol --oneliner show node`` lines -> one NodeInfo per ``NodeName=`` line.

    Lines that are not node lines are ignored. A node line that cannot be read is
    appended to ``errors`` when given, else logged as a warning; either way it is skipped.
    """
    nodes: list[NodeInfo] = []
    for line in lines:
        if not line.lstrip().startswith("NodeName="):
            continue
        try:
            nodes.append(parse_node_line(line))
        except NodeParseError as exc:
            if errors is not None:
                errors.append(exc)
            else:
                log.warning("scontrol show node: skipped a line: %s", exc)
    return nodes


# ------------------------------------------------------------------------------ command

def node_argv(scontrol_path: str, cluster: str | None = None) -> list[str]:
    """The scontrol call: every node (``--all``: also those in hidden partitions, which a
    non-root caller would not see), with GRES use (``--details``), one line per node."""
    argv = [scontrol_path, "--all", "--details", "--oneliner", "show", "node"]
    if cluster:
        argv[1:1] = [f"--clusters={cluster}"]
    return argv


def read_nodes(scontrol_path: str, *, timeout_s: float, cluster: str | None = None,
               errors: list[NodeParseError] | None = None) -> list[NodeInfo]:
    """Ask slurmctld for every node. Raises SlurmCommandError / SlurmTimeout."""
    return parse_nodes(slurm_command(node_argv(scontrol_path, cluster), timeout_s=timeout_s),
                       errors=errors)
