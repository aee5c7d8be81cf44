"""billing.focus: FOCUS 1.x rows of a period. Lines and totals in tests/finance_lines.py;
column rules from the FOCUS specification (ChargeCategory, ChargeClass, Date/Time Format,
Unit Format, Key-Value Format)."""

from __future__ import annotations

import json
from datetime import UTC
from decimal import Decimal as D
from zoneinfo import ZoneInfo

import pytest

from billing.focus import FOCUS_COLUMNS, FocusSite, focus_rows
from tests.finance_lines import november

SITE = FocusSite(provider="Example HPC Centre", billing_account_id="EHC-1",
                 billing_account_name="Example HPC Centre research computing")


def test_billed_cost_sums_to_the_period_total():
    rows = focus_rows(november(), "2026-11", UTC, SITE)
    assert len(rows) == 7
    assert all(tuple(r) == FOCUS_COLUMNS for r in rows)
    assert sum(D(r["BilledCost"]) for r in rows) == D("8.60")
    for cost in ("EffectiveCost", "ListCost", "ContractedCost"):
        assert [r[cost] for r in rows] == [r["BilledCost"] for r in rows]
    by_account: dict[str, D] = {}
    for r in rows:
        by_account[r["SubAccountId"]] = by_account.get(r["SubAccountId"], D(0)) + D(r["BilledCost"])
    assert by_account == {"physics": D("6.94"), "chemistry": D("1.66")}


def test_one_row_by_hand():
    row = focus_rows(november(), "2026-11", UTC, SITE)[1]     # job 1, gpu:h100
    assert row == {
        "BilledCost": "6.20", "BillingAccountId": "EHC-1",
        "BillingAccountName": "Example HPC Centre research computing",
        "BillingCurrency": "EUR",
        "BillingPeriodEnd": "2026-12-01T00:00:00Z", "BillingPeriodStart": "2026-11-01T00:00:00Z",
        "ChargeCategory": "Usage", "ChargeClass": "",
        "ChargeDescription": "gpu:h100 of job 1 on lab: 2 GPU-Hours at 3.1 EUR",
        "ChargeFrequency": "Usage-Based",
        "ChargePeriodEnd": "2026-11-02T13:00:00Z", "ChargePeriodStart": "2026-11-02T08:00:00Z",
        "ConsumedQuantity": "2", "ConsumedUnit": "GPU-Hours",
        "ContractedCost": "6.20", "ContractedUnitPrice": "3.1", "EffectiveCost": "6.20",
        "InvoiceIssuerName": "Example HPC Centre", "ListCost": "6.20", "ListUnitPrice": "3.1",
        "PricingCategory": "Standard", "PricingQuantity": "2", "PricingUnit": "GPU-Hours",
        "ProviderName": "Example HPC Centre", "PublisherName": "Example HPC Centre",
        "ResourceId": "lab/1/2026-11-02T08:00:00Z", "ResourceName": "job 1 (lab)",
        "ResourceType": "Slurm Job", "ServiceCategory": "Compute",
        "ServiceName": "HPC batch computing (Slurm)", "SkuId": "gpu:h100",
        "SkuPriceId": "cccccccccccc/base/gpu:h100",
        "SubAccountId": "physics", "SubAccountName": "physics",
        "Tags": '{"basis":"allocated","cluster":"lab","kind":"charge","partition":"gpu",'
                '"qos":"normal","rate_card":"' + "c" * 64 + '","rule":"base",'
                '"usage_period":"2026-11","user":"alice"}',
    }
    assert json.loads(row["Tags"])["user"] == "alice"


def test_a_correction_of_an_invoiced_period_and_local_period_bounds():
    # Periods begin at local midnight in the card's zone: November in Berlin (CET, +01:00)
    # is [2026-10-31T23:00Z, 2026-11-30T23:00Z). Job 4 ran 2026-10-31 22:00Z to 11-01
    # 02:00Z; its correction is of usage period 2026-10, which in Berlin ends 23:00Z.
    berlin = ZoneInfo("Europe/Berlin")
    row = focus_rows(november(), "2026-11", berlin, SITE)[-1]
    assert (row["BillingPeriodStart"], row["BillingPeriodEnd"]) == (
        "2026-10-31T23:00:00Z", "2026-11-30T23:00:00Z")
    assert (row["ChargePeriodStart"], row["ChargePeriodEnd"]) == (
        "2026-10-31T22:00:00Z", "2026-10-31T23:00:00Z")
    assert (row["ChargeCategory"], row["ChargeClass"]) == ("Usage", "Correction")
    assert row["BilledCost"] == "-0.04" and row["ConsumedQuantity"] == "-1"
    assert row["ChargeDescription"].endswith("(correction of 2026-10)")


def test_units_follow_the_unit_format():
    units = {r["SkuId"]: r["ConsumedUnit"] for r in focus_rows(november(), "2026-11", UTC, SITE)}
    assert units == {"cpu": "Core-Hours", "gpu:h100": "GPU-Hours", "mem": "GiB-Hours",
                     "gpu": "GPU-Hours"}


def test_empty_or_foreign_lines_are_refused():
    with pytest.raises(ValueError, match="nothing to export"):
        focus_rows([], "2026-11", UTC, SITE)
    with pytest.raises(ValueError, match="posted in 2026-11"):
        focus_rows(november(), "2026-10", UTC, SITE)
