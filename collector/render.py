"""How stored records look to people and programs: JSON objects, CSV rows, text tables.

Shared by the CLI and the web API so that ``hpc-billing jobs --format json`` and the API
print the same fields with the same names. Pure formatting: no I/O except writing to the
stream it is given.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import fields, is_dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import IO, Any, Protocol

from billing.records import UNTYPED_GPU, BilledLine, JobRecord

JOB_COLUMNS: tuple[str, ...] = (
    "cluster", "job_id", "job_id_raw", "submit", "start", "end", "state", "user", "account",
    "partition", "qos", "elapsed_s", "cpus", "mem_bytes", "nodes", "billing", "gpus",
    "cpu_used_s", "max_rss_bytes", "final",
)
JOB_EXTRA_COLUMNS: tuple[str, ...] = (
    "state_raw", "name", "array_job_id", "array_task_id", "het_job_id", "het_job_offset",
    "uid", "group", "wckey", "reservation", "exit_code", "derived_exit_code", "eligible",
    "timelimit_min", "node_list", "cpu_time_alloc_s", "mem_used_byte_s", "energy_j", "db_index",
)

TABLE_JOB_COLUMNS: tuple[str, ...] = (
    "cluster", "job_id", "job_id_raw", "submit", "state", "user", "account", "partition",
    "elapsed_s", "cpus", "mem_bytes", "gpus", "cpu_used_s", "max_rss_bytes", "final",
)


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, seconds precision."""
    if dt is None:
        return None
    # isoformat, not strftime: glibc's %Y prints year 138 as "138", which is not ISO 8601
    # (schemathesis found it through /api/v1/jobs?until=0138-...).
    return dt.astimezone(timezone.utc).replace(microsecond=0, tzinfo=None).isoformat() + "Z"


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Decimal):
        # Decimals (money, quantities, rates) are strings: exact, and never a float.
        return str(value)
    return value


def job_to_dict(job: JobRecord, *, extra: bool = True) -> dict[str, Any]:
    """The public JSON shape of a job (see docs/api/openapi.yaml, schema Job)."""
    out: dict[str, Any] = {
        "cluster": job.cluster,
        "job_id": job.job_id,
        "job_id_raw": job.job_id_raw,
        "submit": iso(job.submit),
        "start": iso(job.start),
        "end": iso(job.end),
        "state": job.state,
        "user": job.user,
        "account": job.account,
        "partition": job.partition,
        "qos": job.qos,
        "elapsed_s": job.elapsed_s,
        "cpus": job.cpus,
        "mem_bytes": job.mem_bytes,
        "nodes": job.nodes,
        "billing": job.billing,
        "gpus": dict(job.gpus),
        "cpu_used_s": None if job.cpu_used_s is None else float(job.cpu_used_s),
        "max_rss_bytes": job.max_rss_bytes,
        "final": job.final,
    }
    if extra:
        for name in JOB_EXTRA_COLUMNS:
            out[name] = _plain(getattr(job, name))
    return out


def gpus_text(gpus: dict[str, int]) -> str:
    """``a100:2,untyped:1`` style, untyped last; empty when no GPUs."""
    items = sorted(gpus.items(), key=lambda kv: (kv[0] == UNTYPED_GPU, kv[0]))
    return ",".join(f"{k}:{v}" for k, v in items)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return gpus_text(value)
    return str(value)


def write_json_array(stream: IO[str], rows: Iterable[dict[str, Any]]) -> int:
    """Stream a JSON array, one object per line, without holding the rows in memory."""
    count = 0
    stream.write("[")
    for row in rows:
        stream.write(",\n" if count else "\n")
        stream.write(json.dumps(row, sort_keys=False, default=str))
        count += 1
    stream.write("\n]\n" if count else "]\n")
    return count


def write_csv(stream: IO[str], columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> int:
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
        count += 1
    return count


def write_table(stream: IO[str], columns: Sequence[str], rows: Iterable[dict[str, Any]],
                *, empty_message: str = "(no rows)") -> int:
    """An aligned text table. Holds the rows (a table is for people, so it is bounded)."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    if not cells:
        stream.write(empty_message + "\n")
        return 0
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    stream.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    for r in cells:
        stream.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")
    return len(cells)


def money(value: Decimal) -> str:
    """An amount as text: trailing zeros past the second decimal dropped, nothing rounded.

    Stored amounts are already rounded to the card's scale (numeric keeps 6 places), so
    ``1.190000`` prints ``1.19`` and a scale-3 ``1.125000`` prints ``1.125``.
    """
    # str() of a numeric(38, 6) amount is plain notation ("1.190000"): trimming its zeros
    # is a third of the time of normalize() + format() (a 12,000-row report prints
    # ~40,000 amounts), and unlike normalize() it never rounds to 28 digits. Exponent
    # notation (1E+3, 1E-7) is written out by format(); tests/unit/test_render.py checks
    # both routes against the first build's normalize() + format().
    text = str(value)
    if "E" in text:
        text = format(value, "f")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.rstrip('0').ljust(2, '0')}"


def report_row_to_dict(row: Any, group_by: Sequence[str]) -> dict[str, Any]:
    """A report row in the public JSON shape: the group keys, ``jobs``, ``amount`` (string),
    ``currency`` and ``resources`` {name: {quantity (string), unit, amount (string)}}."""
    out: dict[str, Any] = {key: row.group.get(key) for key in group_by}
    out["jobs"] = row.jobs
    out["amount"] = money(row.amount)
    out["currency"] = row.currency
    out["resources"] = {name: {"quantity": str(total.quantity), "unit": total.unit,
                               "amount": money(total.amount)}
                        for name, total in sorted(row.resources.items())}
    return out


def flatten_report_row(row: dict[str, Any], group_by: Sequence[str]) -> dict[str, Any]:
    """The JSON shape flattened for a table or CSV: resources as ``cpu=12.40 gpu:a100=3.10``."""
    flat = {key: row[key] for key in group_by}
    flat.update(jobs=row["jobs"], amount=row["amount"], currency=row["currency"])
    flat["resources"] = " ".join(f"{name}={r['amount']}" for name, r in row["resources"].items())
    return flat


def report_table_rows(rows: Sequence[dict[str, Any]], group_by: Sequence[str]
                      ) -> list[dict[str, Any]]:
    """A report's rows (``report_row_to_dict``) flattened for a table, and a TOTAL row per
    currency: the sum of the amounts (exact), and of the jobs unless the grouping is by
    resource (a job is then in several rows)."""
    flat = [flatten_report_row(row, group_by) for row in rows]
    totals: dict[str, dict[str, Any]] = {}
    for row in rows:
        total = totals.setdefault(row["currency"], {"jobs": 0, "amount": Decimal(0),
                                                    "resources": {}})
        total["jobs"] += row["jobs"]
        total["amount"] += Decimal(row["amount"])
        for name, resource in row["resources"].items():
            total["resources"][name] = (total["resources"].get(name, Decimal(0))
                                        + Decimal(resource["amount"]))
    for currency, total in sorted(totals.items()):
        out: dict[str, Any] = dict.fromkeys(group_by, "")
        out[group_by[0]] = "TOTAL"
        out.update(jobs="" if "resource" in group_by else total["jobs"],
                   amount=money(total["amount"]), currency=currency,
                   resources=" ".join(f"{name}={money(amount)}" for name, amount
                                      in sorted(total["resources"].items())))
        flat.append(out)
    return flat


def dataclass_to_dict(obj: Any) -> dict[str, Any]:
    """Any frozen dataclass (run log, quarantine rows) as JSON-ready values."""
    assert is_dataclass(obj)
    return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}


def iter_dicts(items: Iterable[Any]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield dataclass_to_dict(item)


STATEMENT_COLUMNS = ("job_id", "job_id_raw", "submit", "user", "partition", "start", "end",
                     "usage_period", "resource", "quantity", "unit", "rate", "amount",
                     "currency", "kind")


class TextSink(Protocol):
    """Where a document's text goes: a file, standard output, a hashing writer."""

    def write(self, text: str, /) -> int: ...


def statement_row(billed: BilledLine) -> dict[str, Any]:
    """One statement line (``STATEMENT_COLUMNS``), JSON-ready: numbers as exact text."""
    line = billed.line
    return {"job_id": billed.job_id, "job_id_raw": line.job_id_raw, "submit": iso(line.submit),
            "user": billed.user, "partition": billed.partition, "start": iso(billed.start),
            "end": iso(billed.end), "usage_period": line.usage_period,
            "resource": line.resource, "quantity": str(line.quantity), "unit": line.unit,
            "rate": format(line.rate.normalize(), "f"), "amount": money(line.amount),
            "currency": line.currency, "kind": line.kind}


class StatementWriter:
    """A statement as CSV: the header, one row per line (``statement_row``), and a TOTAL
    row per currency."""

    def __init__(self, stream: TextSink, period: str) -> None:
        self._writer = csv.writer(stream, lineterminator="\n")
        self._period = period
        self._writer.writerow(STATEMENT_COLUMNS)

    def line(self, billed: BilledLine) -> None:
        row = statement_row(billed)
        self._writer.writerow(["" if row[c] is None else str(row[c]) for c in STATEMENT_COLUMNS])

    def totals(self, totals: dict[str, Decimal]) -> None:
        for currency, total in sorted(totals.items()):
            self._writer.writerow(["TOTAL", "", "", "", "", "", "", self._period, "", "", "",
                                   "", money(total), currency, ""])


class StatementJsonWriter:
    """A statement as one JSON object, streamed: account, period, ``lines`` (each a
    ``statement_row``) and ``totals`` per currency."""

    def __init__(self, stream: TextSink, account: str, period: str) -> None:
        self._stream = stream
        self._count = 0
        stream.write(f'{{"account": {json.dumps(account)}, "period": {json.dumps(period)}, '
                     f'"lines": [')

    def line(self, billed: BilledLine) -> None:
        self._stream.write(",\n" if self._count else "\n")
        self._stream.write(json.dumps(statement_row(billed)))
        self._count += 1

    def totals(self, totals: dict[str, Decimal]) -> None:
        text = {currency: money(total) for currency, total in sorted(totals.items())}
        self._stream.write(f'\n], "totals": {json.dumps(text)}}}\n')


RUN_TABLE_COLUMNS = ("id", "kind", "source", "cluster", "window_since", "window_until",
                     "outcome", "records_read", "jobs_inserted", "jobs_updated",
                     "jobs_unchanged", "quarantined", "jobs_priced", "charge_lines_written",
                     "duration_s", "error")


def run_rows(runs: Iterable[Any]) -> list[dict[str, Any]]:
    """Runs of the log (``runs.RunInfo``) as rows, durations to the millisecond."""
    rows = list(iter_dicts(runs))
    for row in rows:
        if isinstance(row.get("duration_s"), float):
            row["duration_s"] = round(row["duration_s"], 3)
    return rows


def budget_to_dict(budget: Any) -> dict[str, Any]:
    """A budget (``budgets.BudgetInfo``) with money as text and the used fraction to six
    places, like the API (format "f" never prints an exponent such as 0E+6)."""
    row = dataclass_to_dict(budget)
    row["amount"], row["used"] = money(budget.amount), money(budget.used)
    if budget.used_fraction is not None:
        row["used_fraction"] = format(budget.used_fraction.quantize(Decimal("0.000001")), "f")
    return row
