"""FinOps FOCUS 1.x rows of a billing period (the FinOps Open Cost and Usage Specification).

Design notes: docs/design/billing.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import Decimal

from billing.price import money_text
from billing.records import BilledLine
from billing.rollup import period_bounds

FOCUS_VERSION = "1.0"
FOCUS_COLUMNS = (
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency",
    "BillingPeriodEnd", "BillingPeriodStart", "ChargeCategory", "ChargeClass",
    "ChargeDescription", "ChargeFrequency", "ChargePeriodEnd", "ChargePeriodStart",
    "ConsumedQuantity", "ConsumedUnit", "ContractedCost", "ContractedUnitPrice",
    "EffectiveCost", "InvoiceIssuerName", "ListCost", "ListUnitPrice", "PricingCategory",
    "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "ResourceId",
    "ResourceName", "ResourceType", "ServiceCategory", "ServiceName", "SkuId", "SkuPriceId",
    "SubAccountId", "SubAccountName", "Tags",
)
FOCUS_UNITS = {"core_hour": "Core-Hours", "gib_hour": "GiB-Hours", "gpu_hour": "GPU-Hours",
               "node_hour": "Node-Hours", "billing_unit_hour": "Unit-Hours", "kwh": "kWh"}


@dataclass(frozen=True, slots=True)
class FocusSite:
    """Who issues the charges: the site's names for the provider columns."""

    provider: str                  # ProviderName, PublisherName, InvoiceIssuerName
    billing_account_id: str        # the site's own id of the account that is invoiced
    billing_account_name: str
    service_name: str = "HPC batch computing (Slurm)"


def focus_time(value: datetime) -> str:
    """An instant as FOCUS writes it: UTC, whole seconds, ``Z``."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: times must be timezone-aware")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _decimal_text(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def focus_rows(lines: Iterable[BilledLine], period: str, tz: tzinfo,
               site: FocusSite) -> list[dict[str, str]]:
    """One FOCUS row (keyed by ``FOCUS_COLUMNS``, every value text; null is "") per line
    posted in ``period``; ``tz`` is the card's zone (where periods begin). ValueError for
    a line posted in another period, and for a period without lines."""
    billing_start, billing_end = period_bounds(period, tz)
    usage_bounds: dict[str, tuple[datetime, datetime]] = {}
    rows: list[dict[str, str]] = []
    for billed in lines:
        line = billed.line
        if line.posted_period != period:
            raise ValueError(f"focus_rows: a line posted in {line.posted_period} given for "
                             f"the FOCUS rows of {period}")
        bounds = usage_bounds.get(line.usage_period)
        if bounds is None:
            bounds = usage_bounds[line.usage_period] = period_bounds(line.usage_period, tz)
        charge_start, charge_end = bounds
        if billed.start is not None and billed.end is not None:
            start, end = max(billed.start, bounds[0]), min(billed.end, bounds[1])
            if start < end:
                charge_start, charge_end = start, end
        correction = line.kind == "correction" and line.usage_period != line.posted_period
        unit = FOCUS_UNITS[line.unit]
        amount = money_text(line.amount)
        rate = _decimal_text(line.rate)
        quantity = _decimal_text(line.quantity)
        account = billed.account or ""
        description = (f"{line.resource} of job {billed.job_id} on {line.cluster}: "
                       f"{quantity} {unit} at {rate} {line.currency}")
        if line.kind == "correction":
            description += f" (correction of {line.usage_period})"
        tags = {"cluster": line.cluster, "partition": billed.partition, "qos": billed.qos,
                "user": billed.user, "rule": line.rule, "rate_card": line.rate_card,
                "basis": line.basis, "usage_period": line.usage_period, "kind": line.kind}
        rows.append({
            "BilledCost": amount,
            "BillingAccountId": site.billing_account_id,
            "BillingAccountName": site.billing_account_name,
            "BillingCurrency": line.currency,
            "BillingPeriodEnd": focus_time(billing_end),
            "BillingPeriodStart": focus_time(billing_start),
            "ChargeCategory": "Usage",
            "ChargeClass": "Correction" if correction else "",
            "ChargeDescription": description,
            "ChargeFrequency": "Usage-Based",
            "ChargePeriodEnd": focus_time(charge_end),
            "ChargePeriodStart": focus_time(charge_start),
            "ConsumedQuantity": quantity,
            "ConsumedUnit": unit,
            "ContractedCost": amount,
            "ContractedUnitPrice": rate,
            "EffectiveCost": amount,
            "InvoiceIssuerName": site.provider,
            "ListCost": amount,
            "ListUnitPrice": rate,
            "PricingCategory": "Standard",
            "PricingQuantity": quantity,
            "PricingUnit": unit,
            "ProviderName": site.provider,
            "PublisherName": site.provider,
            "ResourceId": f"{line.cluster}/{line.job_id_raw}/{focus_time(line.submit)}",
            "ResourceName": f"job {billed.job_id} ({line.cluster})",
            "ResourceType": "Slurm Job",
            "ServiceCategory": "Compute",
            "ServiceName": site.service_name,
            "SkuId": line.resource,
            "SkuPriceId": f"{line.rate_card[:12]}/{line.rule}/{line.resource}",
            "SubAccountId": account,
            "SubAccountName": account,
            "Tags": json.dumps(tags, sort_keys=True, separators=(",", ":"),
                               ensure_ascii=False),
        })
    if not rows:
        raise ValueError(f"no charge lines posted in {period}: nothing to export")
    return rows
