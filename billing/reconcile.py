"""Reconcile against Slurm's own ``billing`` TRES: recompute it from TRESBillingWeights.

Design notes: docs/design/billing.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Context, Decimal, InvalidOperation, localcontext

from billing.records import JobRecord

# Memory weight suffixes (1024-based), as a multiple of the base unit MB (Slurm's memory
# TRES is counted in MB).
_MEM_UNIT_IN_MB: dict[str, Decimal] = {
    "K": Decimal(1) / Decimal(1024),
    "M": Decimal(1),
    "G": Decimal(1024),
    "T": Decimal(1024) ** 2,
    "P": Decimal(1024) ** 3,
}
_MIB = 1024 * 1024
# Exact enough for any weight x count, whatever decimal context the caller has set.
_CONTEXT = Context(prec=50)


@dataclass(frozen=True)
class Weights:
    """Parsed TRESBillingWeights. ``mem_per_mib`` is the memory weight per MB (MiB)."""

    cpu: Decimal = Decimal(0)
    mem_per_mib: Decimal = Decimal(0)
    node: Decimal = Decimal(0)
    gpu: Decimal = Decimal(0)
    gpu_by_type: dict[str, Decimal] = field(default_factory=dict, hash=False)
    ignored: tuple[str, ...] = ()     # TRES names not modelled (see the module docstring)
    text: str = ""


@dataclass(frozen=True)
class Mismatch:
    """A job whose stored ``billing`` differs from the one recomputed from the weights."""

    cluster: str
    job_id: str
    job_id_raw: int
    submit: datetime
    partition: str | None
    stored: int                       # Slurm's billing TRES as accounting has it
    expected: int                     # recomputed and truncated like Slurm
    exact: Decimal                    # the recomputed weighted sum before truncation

    def describe(self) -> str:
        return (f"job {self.job_id} ({self.cluster}, partition {self.partition}): "
                f"stored billing={self.stored}, weights give {self.exact} -> {self.expected}")


@dataclass(frozen=True)
class ReconcileReport:
    """What ``check_jobs`` found: counts and the mismatching jobs."""

    checked: int
    skipped: int                      # no billing stored, or no weights for the partition
    mismatches: tuple[Mismatch, ...]
    no_weights: tuple[str, ...] = ()  # partitions seen without weights, sorted


def parse_billing_weights(text: str) -> Weights:
    """Parse a TRESBillingWeights string, e.g. ``"CPU=1.0,Mem=0.25G,GRES/gpu=2.0"``.

    Raises ValueError (listing every bad item) for an item without ``=``, a weight that is
    not a non-negative decimal, a unit suffix on anything but Mem, or a TRES given twice.
    Unknown TRES names are not errors: they are kept in ``Weights.ignored``.

    An empty (or blank) string is a partition without TRESBillingWeights, which Slurm
    bills by its allocated CPUs (slurm.conf(5)): it gives ``CPU=1``.
    """
    if not text.strip():
        return Weights(cpu=Decimal(1), text=text)
    problems: list[str] = []
    cpu = mem = node = gpu = Decimal(0)
    by_type: dict[str, Decimal] = {}
    ignored: list[str] = []
    seen: set[str] = set()
    for raw_item in text.split(","):
        item = raw_item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            problems.append(f"{item!r}: expected TRES=weight")
            continue
        key = name.lower()
        if key in seen:
            problems.append(f"{name}: given twice")
            continue
        seen.add(key)
        multiplier = Decimal(1)
        if value[-1:].upper() in _MEM_UNIT_IN_MB and key == "mem":
            multiplier = _MEM_UNIT_IN_MB[value[-1].upper()]
            value = value[:-1]
        try:
            weight = Decimal(value)
            if not weight.is_finite() or weight < 0:
                raise InvalidOperation
        except InvalidOperation:
            hint = " (a unit suffix is only understood on Mem)" if value[-1:].isalpha() else ""
            problems.append(f"{name}: not a non-negative number: {value!r}{hint}")
            continue
        if key == "cpu":
            cpu = weight
        elif key == "mem":
            with localcontext(_CONTEXT):
                mem = weight / multiplier
        elif key == "node":
            node = weight
        elif key == "gres/gpu":
            gpu = weight
        elif key.startswith("gres/gpu:") and key != "gres/gpu:":
            # GRES type names keep their case in Slurm's TRES names; keep them as written.
            by_type[name.split(":", 1)[1]] = weight
        else:
            ignored.append(name)
    if problems:
        raise ValueError("TRESBillingWeights: " + "; ".join(problems))
    return Weights(cpu=cpu, mem_per_mib=mem, node=node, gpu=gpu, gpu_by_type=by_type,
                   ignored=tuple(ignored), text=text)


def slurm_billing(job: JobRecord, weights: Weights) -> Decimal:
    """The weighted sum of the job's allocation, untruncated (MAX_TRES not modelled).

    CPU x cpus + Mem x allocated MB + Node x nodes + GRES/gpu x all GPUs
    + GRES/gpu:<type> x GPUs of that type.
    """
    with localcontext(_CONTEXT):
        total = (weights.cpu * job.cpus
                 + weights.mem_per_mib * Decimal(job.mem_bytes) / _MIB
                 + weights.node * job.nodes
                 + weights.gpu * job.gpu_count)
        for gpu_type, count in job.gpus:
            total += weights.gpu_by_type.get(gpu_type, Decimal(0)) * count
        # Without trailing zeros (6.25, not 6.250000000000), never in exponent form.
        if total == total.to_integral_value():
            return total.quantize(Decimal(1))
        return total.normalize()


def expected_billing_units(job: JobRecord, weights: Weights) -> int:
    """``slurm_billing`` truncated to an integer, as Slurm stores the billing TRES."""
    return int(slurm_billing(job, weights))


def check_job(job: JobRecord, weights: Weights) -> Mismatch | None:
    """A Mismatch when the job's stored billing differs from the recomputed one; None when
    they agree or when the job has no stored billing (cancelled while pending, het
    components: nothing to compare)."""
    if job.billing is None:
        return None
    exact = slurm_billing(job, weights)
    expected = int(exact)
    if expected == job.billing:
        return None
    return Mismatch(cluster=job.cluster, job_id=job.job_id, job_id_raw=job.job_id_raw,
                    submit=job.submit, partition=job.partition, stored=job.billing,
                    expected=expected, exact=exact)


def check_jobs(jobs: Iterable[JobRecord],
               weights_by_partition: Mapping[str, Weights | str], *,
               unweighted: Weights | None = None) -> ReconcileReport:
    """Check every job against its partition's weights (strings are parsed once).

    Skipped and counted: jobs without a stored billing (cancelled while pending, het
    components) or without an allocation (no CPUs recorded: nothing to recompute from).
    A partition missing from ``weights_by_partition`` is listed in ``no_weights``; its
    jobs are checked with ``unweighted`` when given (``parse_billing_weights("")``, CPU=1,
    is Slurm's rule for a partition without TRESBillingWeights) and skipped otherwise.
    """
    parsed: dict[str, Weights] = {
        name: (w if isinstance(w, Weights) else parse_billing_weights(w))
        for name, w in weights_by_partition.items()}
    checked = skipped = 0
    mismatches: list[Mismatch] = []
    missing: set[str] = set()
    for job in jobs:
        if job.billing is None or job.cpus == 0:
            skipped += 1
            continue
        weights = parsed.get(job.partition) if job.partition is not None else None
        if weights is None:
            missing.add(job.partition or "")
            weights = unweighted
        if weights is None:
            skipped += 1
            continue
        checked += 1
        found = check_job(job, weights)
        if found is not None:
            mismatches.append(found)
    return ReconcileReport(checked=checked, skipped=skipped, mismatches=tuple(mismatches),
                           no_weights=tuple(sorted(missing)))
