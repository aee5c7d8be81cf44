"""Reconcile: recompute Slurm's ``billing=`` of a period's jobs from TRESBillingWeights.

The weights come from ``scontrol show partition`` (``auto``, ``scontrol``) or, when
scontrol does not answer, from the rate card's ``[slurm.billing_weights]`` table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC
from zoneinfo import ZoneInfo

from billing.reconcile import Mismatch, check_jobs, parse_billing_weights
from billing.rollup import period_bounds
from collector.runtime import Runtime
from collector.settings import SettingsError
from collector.slurm.partitions import read_billing_weights
from collector.slurm.source import SlurmCommandError
from collector.store import jobs as store_jobs

log = logging.getLogger("hpc_billing")


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    period: str
    origin: str                       # "scontrol" or "rate card"
    checked: int
    skipped: int
    mismatches: tuple[Mismatch, ...]


def reconcile(runtime: Runtime, period: str, weights_from: str) -> ReconcileResult:
    """Compare Slurm's stored billing= with the one recomputed from TRESBillingWeights."""
    settings = runtime.settings
    weights_text: dict[str, str] = {}
    origin = ""
    if weights_from in ("auto", "scontrol"):
        try:
            weights_text = read_billing_weights(settings.scontrol,
                                                timeout_s=min(settings.sacct_timeout_s, 60),
                                                cluster=settings.cluster)
            origin = "scontrol"
        except SlurmCommandError as exc:
            if weights_from == "scontrol":
                raise
            log.info("scontrol not usable (%s); using the rate card's [slurm.billing_weights]",
                     exc.message)
    card = None
    if not origin:
        if settings.rates is None:
            raise SettingsError(["reconcile needs TRESBillingWeights: scontrol did not answer "
                                 "and there is no rate card (HPC_BILLING_RATES) with a "
                                 "[slurm.billing_weights] table"])
        card = runtime.card
        assert card is not None
        weights_text = dict(card.card.slurm_billing_weights)
        origin = "rate card"
    weights = {name: parse_billing_weights(text) for name, text in weights_text.items()}
    tz = ZoneInfo(card.card.timezone) if card else UTC
    since, until = period_bounds(period, tz)
    with runtime.database.sessions() as session:
        report = check_jobs(store_jobs.list_jobs(session, cluster=settings.cluster, since=since,
                                                 until=until),
                            weights, unweighted=parse_billing_weights(""))
    checked, skipped, mismatches = report.checked, report.skipped, report.mismatches
    if report.no_weights:
        # slurm.conf(5): a partition without TRESBillingWeights bills its allocated CPUs.
        log.info("reconcile %s: no TRESBillingWeights for partition(s) %s: checked as "
                 "CPU=1 (Slurm's default)", period, ", ".join(p or "(none)" for p in
                                                             report.no_weights))
    log.info("reconcile %s (weights from %s): %d jobs checked, %d mismatches, %d skipped "
             "(no billing or allocation recorded)", period, origin, checked, len(mismatches), skipped)
    return ReconcileResult(period=period, origin=origin, checked=checked, skipped=skipped,
                           mismatches=mismatches)
