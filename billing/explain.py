"""Why a job cost what it cost: its charge lines, each with where its numbers come from.

Design notes: docs/design/billing.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Context, Decimal
from typing import Any

from billing.price import job_quantities, money_text
from billing.rates import MATCH_KEYS, RateCard
from billing.records import UNTYPED_GPU, ChargeLine, JobRecord, is_final_record
from billing.rollup import split_by_period

_EXACT = Context(prec=60)      # rate x quantity shown unrounded (both are bounded)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _num(value: Decimal | int | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, int):
        return str(value)
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def _line_order(line: ChargeLine) -> tuple[Any, ...]:
    # A statement's order within one job (collector.store.reports billed_lines): resource,
    # usage period, kind; here within each posted period.
    return (line.posted_period, line.resource, line.usage_period, line.kind)


def _gpu_count(job: JobRecord, resource: str) -> int:
    gpu_type = resource[4:] if resource.startswith("gpu:") else UNTYPED_GPU
    return job.gpus_by_type.get(gpu_type, 0)


def quantity_formula(job: JobRecord, resource: str, basis: str, elapsed_s: int) -> str:
    """The arithmetic of a whole-job quantity, in words (billing.price's table)."""
    def allocated() -> str:
        if resource == "cpu":
            return f"{job.cpus} CPUs x {elapsed_s} s / 3600"
        if resource == "mem":
            return f"{job.mem_bytes} B / 2^30 x {elapsed_s} s / 3600"
        if resource == "node":
            return f"{job.nodes} nodes x {elapsed_s} s / 3600"
        if resource == "billing":
            return f"{job.billing or 0} billing units x {elapsed_s} s / 3600"
        return f"{_gpu_count(job, resource)} GPUs x {elapsed_s} s / 3600"

    def used() -> str:
        if resource == "cpu":
            return ("TotalCPU not recorded: 0" if job.cpu_used_s is None
                    else f"TotalCPU {_num(job.cpu_used_s)} s / 3600")
        if resource == "mem":
            return ("memory use not recorded: 0" if job.mem_used_byte_s is None
                    else f"steps' memory x seconds {job.mem_used_byte_s} B.s / 2^30 / 3600")
        return f"ConsumedEnergy {job.energy_j or 0} J / 3,600,000"

    if resource == "energy":
        return used()
    if basis == "used":
        return used()
    if basis == "max":
        if (resource == "cpu" and job.cpu_used_s is None) or (
                resource == "mem" and job.mem_used_byte_s is None):
            return f"the larger of allocated and used; no usage recorded: {allocated()}"
        return f"the larger of allocated ({allocated()}) and used ({used()})"
    return allocated()


def _rule_info(card: RateCard | None, name: str) -> dict[str, Any]:
    if card is None:
        return {"rule": name, "card_available": False}
    try:
        rule = card.rule_named(name)
    except KeyError:
        return {"rule": name, "card_available": True, "rule_found": False}
    match = {key: sorted(rule.match[key]) for key in MATCH_KEYS if key in rule.match}
    return {"rule": name, "card_available": True, "rule_found": True,
            "rule_matches": match or "every job", "rule_from": rule.valid_from.isoformat(),
            "rule_until": rule.valid_until.isoformat() if rule.valid_until else None,
            "rule_priority": rule.priority}


def explain_job(job: JobRecord, lines: Iterable[ChargeLine],
                cards: Mapping[str, RateCard]) -> dict[str, Any]:
    """The explanation document of one job (see the module docstring).

    ``lines``: every stored line of the job (all periods, charges and corrections);
    ``cards``: rate-card versions by version string (a line whose card is missing is
    still listed, with ``card_available: false``). ValueError for a line of another job.
    """
    mine = sorted(lines, key=_line_order)
    for line in mine:
        if line.job_key != (job.cluster, job.job_id_raw, job.submit):
            raise ValueError(f"explain_job: line of job {line.job_key} given for "
                             f"{(job.cluster, job.job_id_raw, job.submit)}")
    some_card = next((cards[x.rate_card] for x in mine if x.rate_card in cards), None)
    final = is_final_record(job.state, job.end)

    periods: list[dict[str, Any]] = []
    seconds: dict[str, int] = {}
    if some_card is not None and job.start is not None and job.end is not None \
            and job.end >= job.start:
        parts = split_by_period(job.start, job.end, some_card.tz)
        run = sum(s for _, s in parts)
        for period, part in parts:
            seconds[period] = part
            periods.append({"period": period, "seconds": part, "of_seconds": run})
    split = len(periods) > 1

    out_lines: list[dict[str, Any]] = []
    for i, line in enumerate(mine):
        card = cards.get(line.rate_card)
        item: dict[str, Any] = {
            "posted_period": line.posted_period, "usage_period": line.usage_period,
            "kind": line.kind, "resource": line.resource, "quantity": _num(line.quantity),
            "unit": line.unit, "basis": line.basis, "rate": _num(line.rate),
            "amount": money_text(line.amount), "currency": line.currency,
            "rate_card": line.rate_card, **_rule_info(card, line.rule)}
        if line.kind == "charge":
            item["how"] = quantity_formula(job, line.resource, line.basis, job.elapsed_s)
            if not final:
                item["how"] += " (accrued to the time it was priced)"
            rule = None
            if card is not None:
                try:
                    rule = card.rule_named(line.rule)
                except KeyError:
                    rule = None
            if split and rule is not None and final:
                whole = job_quantities(job, rule).get(line.resource)
                if whole is not None:
                    item["whole_job_quantity"] = _num(whole[0])
                    item["share"] = (f"{seconds.get(line.usage_period, 0)} of "
                                     f"{periods[0]['of_seconds']} s of the run fell in "
                                     f"{line.usage_period}")
        else:
            before = [x for x in mine[:i] if x.usage_period == line.usage_period
                      and x.resource == line.resource]
            billed_q = sum((x.quantity for x in before), Decimal(0))
            billed_a = sum((x.amount for x in before), Decimal(0))
            item["corrects"] = {
                "usage_period": line.usage_period,
                "billed_before": {"quantity": _num(billed_q), "amount": money_text(billed_a)},
                "after": {"quantity": _num(billed_q + line.quantity),
                          "amount": money_text(billed_a + line.amount)}}
        item["check"] = (f"{item['quantity']} x {item['rate']} = "
                         f"{_num(_EXACT.multiply(line.quantity, line.rate))} -> {item['amount']}"
                         if line.kind == "charge" else
                         "difference of the amounts, each rounded once")
        out_lines.append(item)

    totals: dict[str, Decimal] = {}
    for line in mine:
        totals[line.currency] = totals.get(line.currency, Decimal(0)) + line.amount
    doc: dict[str, Any] = {
        "job": {
            "cluster": job.cluster, "job_id": job.job_id, "job_id_raw": job.job_id_raw,
            "submit": _iso(job.submit), "account": job.account, "user": job.user,
            "partition": job.partition, "qos": job.qos, "state": job.state,
            "start": _iso(job.start), "end": _iso(job.end), "elapsed_s": job.elapsed_s,
            "allocated": {"cpus": job.cpus, "mem_bytes": job.mem_bytes, "nodes": job.nodes,
                          "gpus": dict(job.gpus), "billing": job.billing},
            "used": {"cpu_used_s": _num(job.cpu_used_s), "mem_used_byte_s": job.mem_used_byte_s,
                     "energy_j": job.energy_j}},
        "periods": periods,
        "lines": out_lines,
        "totals": {c: money_text(t) for c, t in sorted(totals.items())},
    }
    if len(totals) == 1:
        ((currency, total),) = totals.items()
        doc["total"], doc["currency"] = money_text(total), currency
    else:
        doc["total"], doc["currency"] = None, None
    return doc


def explain_text(doc: Mapping[str, Any]) -> list[str]:
    """``explain_job``'s document for a terminal, one string per line."""
    job = doc["job"]
    out = [(f"job {job['job_id']} (cluster {job['cluster']}, JobIDRaw {job['job_id_raw']}, "
            f"submitted {job['submit']}), account {job['account']}, user {job['user']}, "
            f"{job['state']}"),
           f"  ran {job['start']} .. {job['end']}, {job['elapsed_s']} s"]
    periods: Sequence[Mapping[str, Any]] = doc["periods"]
    if len(periods) > 1:
        out.append("  split by period: " + ", ".join(
            f"{p['period']} {p['seconds']} s" for p in periods))
    if not doc["lines"]:
        out.append("  no charge lines")
    for item in doc["lines"]:
        head = (f"  [{item['posted_period']}] {item['kind']} {item['resource']}: "
                f"{item['quantity']} {item['unit']} x {item['rate']} = {item['amount']} "
                f"{item['currency']} ({item['basis']})")
        out.append(head)
        rule = f"rule {item['rule']} of card {item['rate_card'][:12]}"
        if item.get("rule_found"):
            rule += f", matches {item['rule_matches']}, from {item['rule_from']}"
        elif not item.get("card_available"):
            rule += " (card not available)"
        out.append(f"      {rule}")
        if "how" in item:
            out.append(f"      quantity: {item['how']}")
        if "share" in item:
            out.append(f"      whole job {item['whole_job_quantity']}; {item['share']}")
        if "corrects" in item:
            c = item["corrects"]
            out.append(f"      corrects {c['usage_period']}: billed before "
                       f"{c['billed_before']['quantity']} / {c['billed_before']['amount']}, "
                       f"now {c['after']['quantity']} / {c['after']['amount']}")
    if doc["total"] is not None:
        out.append(f"  total {doc['total']} {doc['currency']}")
    else:
        out.append("  totals " + ", ".join(f"{t} {c}" for c, t in doc["totals"].items()))
    return out
