"""Partitions as slurmctld knows them: ``scontrol show partition -o``, parsed.

This module owns reading each partition's TRESBillingWeights (for reconciling our
recomputed billing with the ``billing=`` Slurm stored) through the one Slurm command
runner. ``scontrol -o`` prints one partition per line as space-separated ``Key=Value``
pairs (scontrol(1), "show partition"); a value never contains a space but may contain
``=`` and ``,`` (``TRESBillingWeights=CPU=1.0,Mem=0.25G``), so each pair is split on its
first ``=`` only.
"""

from __future__ import annotations

from collections.abc import Iterable

from collector.slurm.command import slurm_command


def parse_partitions(lines: Iterable[str]) -> dict[str, dict[str, str]]:
    """``scontrol show partition -o`` lines -> {partition: {key: value}}."""
    out: dict[str, dict[str, str]] = {}
    for line in lines:
        fields: dict[str, str] = {}
        for token in line.split():
            key, sep, value = token.partition("=")
            if sep:
                fields[key] = value
        name = fields.get("PartitionName")
        if name:
            out[name] = fields
    return out


def billing_weights(partitions: dict[str, dict[str, str]]) -> dict[str, str]:
    """{partition: TRESBillingWeights} for partitions that set it (unset = billing is CPUs)."""
    return {name: fields["TRESBillingWeights"] for name, fields in partitions.items()
            if fields.get("TRESBillingWeights") not in (None, "", "(null)")}


def read_billing_weights(scontrol_path: str, *, timeout_s: float,
                         cluster: str | None = None) -> dict[str, str]:
    """Ask slurmctld for every partition's TRESBillingWeights."""
    argv = [scontrol_path, "--oneliner", "show", "partition"]
    if cluster:
        argv[1:1] = [f"--clusters={cluster}"]
    return billing_weights(parse_partitions(slurm_command(argv, timeout_s=timeout_s)))
