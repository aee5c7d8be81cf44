"""Frozen records that cross package lines.

This module owns the shapes every other part of hpc-billing agrees on: what a parsed
Slurm job looks like (``JobRecord``), the usage of one job step (``StepUsage``), a record
that could not be parsed (``QuarantinedRecord``) and a collection window (``Window``).
Everything here is pure data: stdlib only, no I/O, no clock.

Conventions: units are in the names (``_s`` seconds, ``_bytes``, ``_j`` joules), every
datetime is timezone-aware UTC, and counts are ints. Money never appears here as float.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

# Job states Slurm documents (sacct(1) "JOB STATE CODES", job_state_codes.html and the
# data_parser JOB_STATE flag arrays, 14.11 to 26.05): base states, and the flags sacct
# prints as a state. A state outside this set is one a newer Slurm added: its record is
# kept with the raw text and treated as NOT final, so it is read again (never billed as
# finished on a guess).
KNOWN_STATES: frozenset[str] = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "CONFIGURING", "COMPLETING", "DEADLINE",
    "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PENDING", "PREEMPTED", "RUNNING",
    "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "RESV_DEL_HOLD", "REVOKED",
    "SIGNALING", "SPECIAL_EXIT", "STAGE_OUT", "STOPPED", "SUSPENDED", "TIMEOUT",
    "LAUNCH_FAILED", "UPDATE_DB", "RECONFIG_FAIL", "POWER_UP_NODE", "EXPEDITING",
})

# Known states a record can still leave (slurm.conf(5) / sacct(1) JOB STATE CODES).
NON_FINAL_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "SUSPENDED", "RESIZING",
                              "REQUEUE_FED", "REQUEUE_HOLD", "SPECIAL_EXIT", "STOPPED",
                              "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT"})

UNTYPED_GPU = "untyped"


# States a job's OLD record is left in when the job is requeued. slurmdbd writes the next
# run as a new record (same JobIDRaw, later Submit) and never updates the old one again:
# once it has an End, it is final and its run is billable (RECIPE §6, job 16).
REQUEUE_STATES = frozenset({"REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SPECIAL_EXIT"})


def is_final_state(state: str) -> bool:
    """True when a normalised State will not change any more (an unknown one may)."""
    return state in KNOWN_STATES and state not in NON_FINAL_STATES


def is_final_record(state: str, end: datetime | None) -> bool:
    """True when this accounting record will not change any more.

    As is_final_state, except that a requeued job's old record (REQUEUED ... with an End)
    is final: Slurm records the next run as a separate record.
    """
    if state in REQUEUE_STATES:
        return end is not None
    return is_final_state(state)


@dataclass(frozen=True, slots=True)
class Window:
    """A half-open collection window [since, until), both aware UTC datetimes."""

    since: datetime
    until: datetime

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value.tzinfo is None or value.utcoffset() is None:
                raise ValueError(f"Window.{name} must be timezone-aware, got {value!r}")
        if self.until <= self.since:
            raise ValueError(f"empty window: until {self.until} is not after since {self.since}")


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One Slurm job allocation as accounting knows it, with its steps rolled up.

    Identity is (cluster, job_id_raw, submit): JobID is not unique (requeues keep the id
    with a later Submit; ids restart after a slurmctld state reset).
    Allocation comes from the job line's AllocTRES (never multiplied by NNodes).
    Usage fields are None until steps are rolled up (billing.rollup), and stay None when
    Slurm recorded no usage for the job.
    """

    cluster: str
    job_id: str                      # as Slurm prints it: "42", "6_3", "6_[1-5]", "14+1"
    job_id_raw: int                  # JobIDRaw: the allocation's own id
    submit: datetime                 # aware UTC
    state: str                       # normalised: "CANCELLED by 0" -> "CANCELLED"
    state_raw: str                   # exactly as printed
    array_job_id: int | None = None
    array_task_id: int | None = None
    het_job_id: int | None = None
    het_job_offset: int | None = None
    name: str | None = None
    user: str | None = None
    uid: int | None = None
    group: str | None = None
    account: str | None = None
    partition: str | None = None
    qos: str | None = None
    wckey: str | None = None
    reservation: str | None = None
    exit_code: str | None = None     # "3:0" (exit status:signal)
    derived_exit_code: str | None = None
    eligible: datetime | None = None
    start: datetime | None = None
    end: datetime | None = None
    elapsed_s: int = 0
    timelimit_min: int | None = None  # None = UNLIMITED / unknown
    nodes: int = 0
    cpus: int = 0
    mem_bytes: int = 0
    billing: int | None = None       # Slurm's own billing TRES (integer, truncated)
    gpus: tuple[tuple[str, int], ...] = ()   # sorted ((type, count), ...); "untyped" = remainder
    node_list: str | None = None
    cpu_time_alloc_s: int | None = None      # CPUTimeRAW: elapsed x allocated CPUs
    cpu_used_s: Decimal | None = None        # TotalCPU (user+system of all steps)
    max_rss_bytes: int | None = None         # max MaxRSS over the steps
    mem_used_byte_s: int | None = None       # sum over steps of TRESUsageInTot mem x step elapsed
    energy_j: int | None = None              # ConsumedEnergyRaw
    db_index: int | None = None              # DBIndex: slurmdbd's row id (not a key)
    final: bool = False
    # blake2b-128 hex of the raw lines this record was parsed from (job line and steps,
    # with the parser's settings), when they were all parsed: lets a later read of the
    # same lines skip the job before parsing. Not part of the record's value.
    raw_digest: str | None = field(default=None, compare=False)

    @property
    def gpu_count(self) -> int:
        return sum(count for _, count in self.gpus)

    @property
    def gpus_by_type(self) -> dict[str, int]:
        return dict(self.gpus)


@dataclass(frozen=True, slots=True)
class StepUsage:
    """What one job step (``.batch``, ``.extern``, ``.0`` ...) used.

    Slurm records usage (TRESUsageInTot, MaxRSS) only on step lines. ``job_db_index`` is
    the DBIndex printed on the step line, which equals the DBIndex of its job record and
    so tells a requeued job's two records apart.
    """

    cluster: str | None
    job_id_raw: int
    step: str                        # "batch", "extern", "0", ...
    job_db_index: int | None = None
    state: str | None = None
    elapsed_s: int = 0
    cpu_used_s: Decimal | None = None        # TotalCPU of the step
    max_rss_bytes: int | None = None         # MaxRSS
    mem_total_bytes: int | None = None       # TRESUsageInTot mem= (sum over the step's tasks)
    energy_j: int | None = None
    line_no: int | None = None


@dataclass(frozen=True, slots=True)
class QuarantinedRecord:
    """Input that could not become a record: kept verbatim with the reason."""

    raw: str
    reason: str
    source: str                      # "sacct", "file:<name>", "slurmrestd", ...
    line_no: int | None = None
    job_id: str | None = None        # best effort, for people searching the quarantine


def utc(dt: datetime) -> datetime:
    """Return dt as an aware UTC datetime; refuses naive datetimes."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt!r}: times must be timezone-aware")
    return dt.astimezone(UTC)


# Resource names of charge lines ("gpu:<type>" for typed GPUs) and their units.
RESOURCE_UNITS: dict[str, str] = {
    "cpu": "core_hour",
    "mem": "gib_hour",
    "gpu": "gpu_hour",          # untyped GPUs; a typed one is always "gpu:<type>"
    "node": "node_hour",
    "billing": "billing_unit_hour",
    "energy": "kwh",
}


def resource_unit(resource: str) -> str:
    """The unit of a charge line's resource (``gpu:a100`` -> ``gpu_hour``)."""
    return RESOURCE_UNITS["gpu" if resource.startswith("gpu:") else resource]


@dataclass(frozen=True, slots=True)
class ChargeLine:
    """One priced quantity: (job, usage period, resource) -> quantity x rate = amount.

    ``usage_period`` is the billing period the usage fell in (a job spanning a period
    boundary has lines in both); ``posted_period`` is the period the line is billed in:
    the same, except for a correction, which is posted in the first open period because
    a closed period is never rewritten. ``amount`` is ``rate * quantity`` rounded half-even
    to the card's scale (a correction's amount is the difference of two such amounts).
    Money and quantities are Decimal, never float.
    """

    cluster: str
    job_id_raw: int
    submit: datetime
    usage_period: str                # "2026-11"
    posted_period: str
    resource: str                    # cpu, mem, gpu, gpu:<type>, node, billing, energy
    quantity: Decimal                # in ``unit``
    unit: str                        # core_hour, gib_hour, gpu_hour, node_hour, billing_unit_hour, kwh
    rate: Decimal                    # currency per unit
    amount: Decimal
    currency: str
    rule: str                        # name of the rate-card rule that priced it
    rate_card: str                   # the card version (content hash)
    basis: str = "allocated"         # allocated | used | max
    kind: str = "charge"             # charge | correction

    @property
    def job_key(self) -> tuple[str, int, datetime]:
        return (self.cluster, self.job_id_raw, self.submit)


@dataclass(frozen=True, slots=True)
class BilledLine:
    """A charge line as finance bills it: the line and the job attributes it is billed by
    (what the finance builders in billing.ledger, .focus, .invoice and .explain read).
    ``job_id`` is as Slurm prints it (``6_3``); times are aware UTC or None."""

    line: ChargeLine
    job_id: str
    account: str | None = None
    user: str | None = None
    partition: str | None = None
    qos: str | None = None
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the audit trail's hash chain (billing.audit); ``hash`` is the
    HMAC-SHA256 of its canonical form, ``prev`` the previous entry's hash."""

    seq: int
    at: datetime
    actor: str
    action: str
    subject: str
    details: dict[str, object] = field(hash=False)
    prev: str
    hash: str


@dataclass(frozen=True, slots=True)
class FetchStats:
    """Counters a source reports after a fetch (lines read, bytes, seconds in Slurm)."""

    lines: int = 0
    bytes: int = 0
    slurm_seconds: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)
