"""Money check: the prototype's rows and charge lines against today's code, line by line.

    python -m bench.engine_proto.moneycheck FILE [--rates CARD.toml] [--tz UTC]

Reads FILE twice: with today's production path (FileSource -> ParsableParser ->
rollup_steps -> billing.price.price_job, with an empty digest lookup so raw digests are
set as a first import sets them) and with the prototype (ColumnarReader -> VectorPricer).
Compares every job record (all fields, cpu_used_s at the stored 3 decimals, the raw
digest) and every charge line (job, usage period, resource, basis, rule, card, rate,
quantity, amount) and every quarantined record (line number, raw text, reason, job id).
Prints the counts and the first differences; exit status 1 on any.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.engine_proto.pricing import VectorPricer, month_name  # noqa: E402
from bench.engine_proto.reader import ColumnarReader, frame_records  # noqa: E402
from billing.price import price_job  # noqa: E402
from billing.rates import load_rate_card  # noqa: E402
from billing.records import JobRecord  # noqa: E402
from billing.rollup import rollup_steps  # noqa: E402
from collector.slurm.filesource import FileSource  # noqa: E402

AS_OF = datetime(2030, 1, 1, tzinfo=timezone.utc)


class _Nothing:
    def stored(self, keys):  # noqa: ANN001
        return set()

    def skipped(self, cluster):  # noqa: ANN001
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--rates", default=str(ROOT / "collector" / "data" / "demo-rates.toml"))
    ap.add_argument("--tz", default="UTC")
    ap.add_argument("--accrue", action="store_true", help="price running jobs (accrue_running)")
    args = ap.parse_args(argv)
    text = Path(args.rates).read_text(encoding="utf-8")
    if args.accrue:
        text = text.replace('exempt_states', 'accrue_running = true\nexempt_states', 1)
    card = load_rate_card(text)
    tz = ZoneInfo(args.tz)

    t0 = time.perf_counter()
    prod_jobs: dict[tuple, JobRecord] = {}
    prod_q: set[tuple] = set()
    src = FileSource(args.file, tz=tz, cluster=None)
    for item in rollup_steps(src.fetch(None, unchanged=_Nothing()), source=src.name):
        if isinstance(item, JobRecord):
            prod_jobs[(item.cluster, item.job_id_raw, item.submit)] = item   # last wins
        else:
            prod_q.add((item.line_no, item.raw, item.reason, item.job_id))
    q3 = Decimal("0.001")
    prod_lines = {}
    for key, rec in prod_jobs.items():
        if rec.cpu_used_s is not None:          # priced as stored (numeric(18,3))
            rec = replace(rec, cpu_used_s=Decimal(rec.cpu_used_s).quantize(
                q3, rounding=ROUND_HALF_UP))
            prod_jobs[key] = rec
        for line in price_job(card, rec, as_of=AS_OF):
            prod_lines[(line.cluster, line.job_id_raw, line.submit, line.usage_period,
                        line.resource)] = (line.basis, line.rule, line.rate_card, line.rate,
                                           line.quantity, line.amount, line.unit,
                                           line.currency)
    t_prod = time.perf_counter() - t0

    t0 = time.perf_counter()
    pricer = VectorPricer(card, AS_OF)
    frames, lines = [], []
    with open(args.file, "rb") as fh:
        header = fh.readline().decode("utf-8", "replace").rstrip("\n")
        delim = "\x1f" if "\x1f" in header else "|"
        reader = ColumnarReader(header.split(delim), delimiter=delim, tz=tz,
                                source=src.name)
        vec = fb = 0
        proto_q: set[tuple] = set()
        for chunk in reader.chunks(fh):
            frames.append(chunk.jobs)
            proto_q.update((q.line_no, q.raw, q.reason, q.job_id) for q in chunk.quarantined)
            vec += chunk.vector_jobs
            fb += chunk.fallback_jobs
            lines.append(pricer.price(chunk.jobs))
    jobs = pl.concat(frames).unique(subset=["cluster", "job_id_raw", "submit"], keep="last",
                                    maintain_order=True)
    all_lines = pl.concat(lines)
    t_proto = time.perf_counter() - t0

    mine = {(r.cluster, r.job_id_raw, r.submit): r for r in frame_records(jobs)}
    job_diff = [k for k in prod_jobs.keys() | mine.keys()
                if prod_jobs.get(k) != mine.get(k)
                or (k in mine and k in prod_jobs and prod_jobs[k].raw_digest != mine[k].raw_digest)]
    proto_lines = {}
    for cl, raw, sub, month, pkey, q, a in all_lines.iter_rows():
        version, rule, resource, basis, rate = pkey.split("\x1f")
        proto_lines[(cl, raw, sub, month_name(month), resource)] = (
            basis, rule, version, Decimal(rate), Decimal(q).scaleb(-6),
            Decimal(a).scaleb(-6))
    line_diff = []
    for k in prod_lines.keys() | proto_lines.keys():
        p, m = prod_lines.get(k), proto_lines.get(k)
        if p is None or m is None or p[:4] != m[:4] or p[4] != m[4] or p[5] != m[5]:
            line_diff.append((k, p, m))
    total_p = sum(v[5] for v in prod_lines.values())
    total_m = sum(v[5] for v in proto_lines.values())
    print(f"jobs: today {len(prod_jobs):,}, prototype {len(mine):,} ({vec:,} vectorized, "
          f"{fb:,} by the Python path); differing records: {len(job_diff)}")
    print(f"charge lines: today {len(prod_lines):,}, prototype {len(proto_lines):,} "
          f"({pricer.python_jobs:,} jobs priced per record); differing lines: "
          f"{len(line_diff)}")
    print(f"total amount: today {total_p} {card.currency}, prototype {total_m} {card.currency}")
    q_diff = prod_q ^ proto_q
    print(f"quarantined: today {len(prod_q):,}, prototype {len(proto_q):,} (line, raw text, "
          f"reason, job id); differing: {len(q_diff)}")
    for item in sorted(q_diff, key=str)[:4]:
        print("QUARANTINE", "today" if item in prod_q else "proto", item)
    print(f"outcomes (prototype): {dict(sorted(pricer.outcomes.items()))}")
    print(f"time: today's path {t_prod:.1f} s, prototype {t_proto:.1f} s (not a benchmark)")
    for k in job_diff[:3]:
        print("JOB", k, "\n  today:", prod_jobs.get(k), "\n  proto:", mine.get(k))
    for k, p, m in line_diff[:5]:
        print("LINE", k, "\n  today:", p, "\n  proto:", m)
    return 1 if job_diff or line_diff or q_diff else 0


if __name__ == "__main__":
    sys.exit(main())
