"""Vectorized pricing prototype: a frame of rolled-up jobs x a rate card -> a frame of
charge lines, with today's billing.price rules and rounding, in integer arithmetic.

Not imported by production code. See docs/design/engine.md, "Pricing".

- Rule choice: today's ``RateCard.select_rule`` on the distinct (cluster, partition,
  account, qos, user, local day) pairs of the batch, joined back.
- Lines a rule asks for: today's spec expansion on the distinct (rule, GPU mix, has
  billing, has energy), joined back.
- Quantities: exact integer ratios (Int128), rounded half-even to millionths once per
  whole job; amounts: rate (as integer / 10^k) x quantity, rounded half-even to the
  card's scale, stored in millionths.
- Jobs spanning a period boundary (about 1 % of jobs) and values past the integer
  guards are priced per record by today's ``billing.price.price_job`` (the oracle), so
  the split by largest remainder is literally today's code.
"""

from __future__ import annotations

from collections import namedtuple
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import polars as pl

from bench.engine_proto.reader import frame_records, gpus_tuple
from billing import price as bprice
from billing.rates import RateCard, Rule
from billing.records import UNTYPED_GPU, resource_unit
from billing.rollup import period_bounds

UTC = timezone.utc
MICRO = 10 ** 6
I128 = pl.Int128

# One charge line, as the store gets it.
LINE_SCHEMA: dict[str, pl.DataType] = {
    "cluster": pl.String, "job_id_raw": pl.Int64, "submit": pl.Datetime("us", "UTC"),
    "usage_month": pl.Int32,          # months since 2000-01 (0 = 2000-01)
    "price_key": pl.String,           # card version \x1f rule \x1f resource \x1f basis \x1f rate
    "quantity_micro": pl.Int64, "amount_micro": pl.Int64,
}

_Match = namedtuple("_Match", "cluster partition account qos user")


def month_index(period: str) -> int:
    return (int(period[:4]) - 2000) * 12 + int(period[5:7]) - 1


def month_name(idx: int) -> str:
    return f"{2000 + idx // 12:04d}-{idx % 12 + 1:02d}"


def price_key(card: RateCard, rule: str, resource: str, basis: str, rate: Decimal) -> str:
    return "\x1f".join((card.version, rule, resource, basis, str(rate)))


def _half_even(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """num / den rounded half-even (num >= 0, den > 0), Int128."""
    q = num // den
    r = num % den
    twice = r * pl.lit(2, I128)
    up = (twice > den) | ((twice == den) & ((q % pl.lit(2, I128)) == pl.lit(1, I128)))
    return q + up.cast(I128)


def _lit(v: int) -> pl.Expr:
    return pl.lit(v, I128)


class VectorPricer:
    """Prices job frames with one card (``as_of`` for accruing running jobs)."""

    def __init__(self, card: RateCard, as_of: datetime) -> None:
        self.card = card
        self.as_of = as_of
        self.tzname = getattr(card.tz, "key", None) or "UTC"
        self._rules: dict[tuple, int] = {}          # (match tuple, local day) -> rule idx
        self._specs: dict[tuple, list[tuple]] = {}  # (rule idx, gpus, billing?, energy?) -> specs
        self.outcomes: dict[str, int] = {}
        self.python_jobs = 0

    # ------------------------------------------------------------------ per batch
    def price(self, jobs: pl.DataFrame) -> pl.DataFrame:
        card = self.card
        c = pl.col
        as_of_us = int(self.as_of.timestamp()) * 1_000_000
        gpu_n = c("gpus").str.extract_all(r"=([0-9]+)").list.eval(
            pl.element().str.slice(1).cast(pl.Int64)).list.sum()
        df = jobs.with_columns(
            c("start").dt.epoch("s").alias("t_start"),
            c("end").dt.epoch("s").alias("t_end0"),
            gpu_n.fill_null(0).alias("gpu_total"),
        )
        has_alloc = ((c("cpus") != 0) | (c("mem_bytes") != 0) | (c("nodes") != 0)
                     | (c("gpu_total") != 0) | (c("billing").fill_null(0) != 0))
        exempt = c("state").is_in(sorted(card.exempt_states))
        not_started = c("start").is_null() | ~has_alloc
        running = ~c("final") & pl.lit(not card.accrue_running)
        as_of_s = as_of_us // 1_000_000
        # end and elapsed as billing.price._price computes them
        final_end = pl.when(c("t_end0").is_not_null()).then(c("t_end0")).otherwise(
            c("t_start") + pl.max_horizontal(c("elapsed_s"), pl.lit(0)))
        accr_end_is_job = c("t_end0").is_not_null() & (c("t_end0") <= as_of_s)
        end = pl.when(c("final")).then(final_end).when(accr_end_is_job).then(c("t_end0")) \
            .otherwise(pl.lit(as_of_s))
        elapsed = pl.when(c("final")).then(c("elapsed_s")).when(accr_end_is_job) \
            .then(c("elapsed_s")).otherwise(pl.lit(as_of_s) - c("t_start"))
        df = df.with_columns(
            pl.when(exempt).then(pl.lit(bprice.EXEMPT))
            .when(not_started).then(pl.lit(bprice.NOT_STARTED))
            .when(running).then(pl.lit(bprice.RUNNING))
            .when(elapsed <= 0).then(pl.lit(bprice.ZERO_ELAPSED)).alias("outcome"),
            elapsed.alias("p_elapsed"), pl.max_horizontal(end, c("t_start")).alias("p_end"),
        )
        pre = df.filter(c("outcome").is_not_null())
        for name, n in pre.group_by("outcome").len().iter_rows():
            self.outcomes[name] = self.outcomes.get(name, 0) + n
        df = df.filter(c("outcome").is_null())
        if not df.height:
            return pl.DataFrame(schema=LINE_SCHEMA)
        # periods: month index of start and of end - 1 s in the card's zone
        tz = self.tzname

        def midx(epoch_s: pl.Expr) -> pl.Expr:
            local = (epoch_s * 1_000_000).cast(pl.Datetime("us")).dt.replace_time_zone("UTC") \
                .dt.convert_time_zone(tz)
            return ((local.dt.year() - 2000) * 12 + local.dt.month() - 1).cast(pl.Int32)

        df = df.with_columns(
            midx(c("t_start")).alias("m0"),
            pl.when(c("p_end") > c("t_start")).then(midx(c("p_end") - 1))
            .otherwise(midx(c("t_start"))).alias("m1"),
            (c("t_start") * 1_000_000).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
            .dt.convert_time_zone(tz).dt.date().alias("day0"),
        )
        # Integer guards: inputs whose products could leave Int128 (absurd sizes), and
        # jobs spanning periods, are priced per record by billing.price.
        small = ((c("mem_bytes") < 2 ** 50) & (c("p_elapsed") < 2 ** 40)
                 & (c("energy_j").fill_null(0) < 2 ** 60)
                 & (c("cpu_used_ms").fill_null(0) < 2 ** 60)
                 & (c("mem_used_byte_s").fill_null(0).cast(I128) < _lit(2 ** 90))
                 & (c("cpus") < 2 ** 31) & (c("nodes") < 2 ** 31)
                 & (c("billing").fill_null(0) < 2 ** 40))
        one = (c("m1") == c("m0")) & small
        multi = df.filter(~one)
        single = df.filter(one)
        out = [self._single(single)]
        if multi.height:
            out.append(self._python(multi))
        return pl.concat(out, how="vertical")

    # ------------------------------------------------------------------ rules and specs
    def _rule_index(self, single: pl.DataFrame) -> pl.DataFrame:
        keys = single.select("cluster", "partition", "account", "qos", "user", "day0").unique()
        rows = []
        card = self.card
        rules = card.rules
        for cl, part, acct, qos, user, day in keys.iter_rows():
            k = (cl, part, acct, qos, user, day)
            idx = self._rules.get(k)
            if idx is None:
                if len(self._rules) >= 20_000:    # bounded memory, like RateCard's memo
                    self._rules.clear()
                fake = _Match(cl, part, acct, qos, user)
                # any instant of that local day: select_rule looks at the local date
                at = datetime(day.year, day.month, day.day, 12, tzinfo=card.tz)
                rule = card.select_rule(fake, at)  # type: ignore[arg-type]
                idx = -1 if rule is None else rules.index(rule)
                self._rules[k] = idx
            rows.append((*k, idx))
        rdf = pl.DataFrame(rows, schema={"cluster": pl.String, "partition": pl.String,
                                         "account": pl.String, "qos": pl.String,
                                         "user": pl.String, "day0": pl.Date,
                                         "rule_idx": pl.Int32}, orient="row")
        return single.join(rdf, on=["cluster", "partition", "account", "qos", "user", "day0"],
                           how="left", nulls_equal=True)

    def _spec_rows(self, rule_idx: int, gpus: str, has_billing: bool,
                   has_energy: bool) -> list[tuple]:
        key = (rule_idx, gpus, has_billing, has_energy)
        hit = self._specs.get(key)
        if hit is not None:
            return hit
        rule: Rule = self.card.rules[rule_idx]
        rates, basis = rule.rates, rule.basis
        mix = gpus_tuple(gpus)
        out: list[tuple] = []
        # (resource, basis, gpu count of the line, rate) in billing.price._compute_specs order
        if rates.cpu_hour is not None:
            out.append(("cpu", basis["cpu"], 0, rates.cpu_hour))
        if rates.mem_gib_hour is not None:
            out.append(("mem", basis["mem"], 0, rates.mem_gib_hour))
        types = [t for t, n in mix if n]
        typed = sorted(t for t in types if t != UNTYPED_GPU and t in rates.gpu_hour_by_type)
        default = [t for t in types if t not in typed]
        counts = dict(mix)
        if rates.gpu_hour is not None and default:
            out.append(("gpu", "allocated", sum(counts[t] for t in default), rates.gpu_hour))
        for t in typed:
            out.append((f"gpu:{t}", "allocated", counts[t], rates.gpu_hour_by_type[t]))
        if rates.node_hour is not None:
            out.append(("node", "allocated", 0, rates.node_hour))
        if rates.billing_unit_hour is not None and has_billing:
            out.append(("billing", "allocated", 0, rates.billing_unit_hour))
        if rates.energy_kwh is not None and has_energy:
            out.append(("energy", "used", 0, rates.energy_kwh))
        self._specs[key] = out
        return out

    # ------------------------------------------------------------------ one period
    def _single(self, single: pl.DataFrame) -> pl.DataFrame:
        c = pl.col
        card = self.card
        df = self._rule_index(single)
        norule = df.filter(c("rule_idx") == -1).height
        if norule:
            self.outcomes[bprice.NO_RULE] = self.outcomes.get(bprice.NO_RULE, 0) + norule
        df = df.filter(c("rule_idx") != -1).with_columns(
            c("billing").is_not_null().alias("has_billing"),
            c("energy_j").is_not_null().alias("has_energy"))
        combos = df.select("rule_idx", "gpus", "has_billing", "has_energy").unique()
        srows = []
        scale = card.scale
        for ri, gpus, hb, he in combos.iter_rows():
            for n, (res, basis, gn, rate) in enumerate(self._spec_rows(ri, gpus, hb, he)):
                sign, digits, exp = rate.as_tuple()
                r_int = int("".join(map(str, digits)) or "0")
                k = -exp if exp < 0 else 0
                if exp > 0:
                    r_int *= 10 ** exp
                srows.append((ri, gpus, hb, he, n, res, basis, gn, r_int, k,
                              price_key(card, card.rules[ri].name, res, basis, rate)))
        sdf = pl.DataFrame(srows, schema={
            "rule_idx": pl.Int32, "gpus": pl.String, "has_billing": pl.Boolean,
            "has_energy": pl.Boolean, "spec_no": pl.Int32, "resource": pl.String,
            "basis": pl.String, "gpu_n": pl.Int64, "rate_int": I128, "rate_exp": pl.Int32,
            "price_key": pl.String}, orient="row")
        x = df.join(sdf, on=["rule_idx", "gpus", "has_billing", "has_energy"], how="inner")
        e = c("p_elapsed").cast(I128)
        hour = _lit(3600)
        gib_hour = _lit((1 << 30) * 3600)
        # exact ratio (num, den) per resource and basis (billing.price._raw_quantity)
        cpu_a = (c("cpus").cast(I128) * e, hour)
        cpu_u = (c("cpu_used_ms").cast(I128), _lit(3_600_000))
        mem_a = (c("mem_bytes").cast(I128) * e, gib_hour)
        mem_u = (c("mem_used_byte_s").cast(I128), gib_hour)
        res, basis = c("resource"), c("basis")

        def pick(alloc, used, used_null):
            a_num, a_den = alloc
            u_num, u_den = used
            use_used = pl.when(basis == "used").then(True).when(basis == "max").then(
                pl.when(used_null).then(False).otherwise(u_num * a_den > a_num * u_den)
            ).otherwise(False)
            num = pl.when(use_used).then(pl.when(used_null).then(_lit(0)).otherwise(u_num)) \
                .otherwise(a_num)
            den = pl.when(use_used).then(pl.when(used_null).then(_lit(1)).otherwise(u_den)) \
                .otherwise(a_den)
            return num, den

        cpu_num, cpu_den = pick(cpu_a, cpu_u, c("cpu_used_ms").is_null())
        mem_num, mem_den = pick(mem_a, mem_u, c("mem_used_byte_s").is_null())
        num = (pl.when(res == "cpu").then(cpu_num).when(res == "mem").then(mem_num)
               .when(res.str.starts_with("gpu")).then(c("gpu_n").cast(I128) * e)
               .when(res == "node").then(c("nodes").cast(I128) * e)
               .when(res == "billing").then(c("billing").fill_null(0).cast(I128) * e)
               .when(res == "energy").then(c("energy_j").fill_null(0).cast(I128)))
        den = (pl.when(res == "cpu").then(cpu_den).when(res == "mem").then(mem_den)
               .when(res == "energy").then(_lit(3_600_000)).otherwise(hour))
        x = x.with_columns(_half_even(num * _lit(MICRO), den).alias("q"))
        x = x.filter(c("q") != 0)
        # amount = rate_int / 10^k x q / 10^6, rounded half-even to `scale`, kept in 10^-6
        scale = card.scale
        amount_scaled = _half_even(c("rate_int") * c("q") * _lit(10 ** scale),
                                   _lit(10).pow(c("rate_exp") + 6).cast(I128))
        x = x.with_columns((amount_scaled * _lit(10 ** (6 - scale))).alias("a"))
        # A quantity or amount past bigint millionths, or a rate so long that the
        # product could leave Int128: that job goes to the per-record path.
        too_big = x.filter((c("q") >= _lit(2 ** 62)) | (c("a") >= _lit(2 ** 62))
                           | (c("rate_int") * _lit(10 ** scale) > _lit(10 ** 20)))
        extra = None
        if too_big.height:
            bad = too_big.select("cluster", "job_id_raw", "submit").unique()
            x = x.join(bad, on=["cluster", "job_id_raw", "submit"], how="anti")
            again = df.join(bad, on=["cluster", "job_id_raw", "submit"], how="semi")
            df = df.join(bad, on=["cluster", "job_id_raw", "submit"], how="anti")
            extra = self._python(again)
        lines = x.select(
            "cluster", "job_id_raw", "submit", c("m0").alias("usage_month"), "price_key",
            c("q").cast(pl.Int64).alias("quantity_micro"),
            c("a").cast(pl.Int64).alias("amount_micro"))
        priced = x.select("cluster", "job_id_raw", "submit").unique().height
        self.outcomes[bprice.PRICED] = self.outcomes.get(bprice.PRICED, 0) + priced
        nocharge = df.height - priced
        if nocharge:
            self.outcomes[bprice.NO_CHARGE] = self.outcomes.get(bprice.NO_CHARGE, 0) + nocharge
        lines = lines.cast(LINE_SCHEMA)
        return lines if extra is None else pl.concat([lines, extra], how="vertical")

    # ------------------------------------------------------------------ per record
    def _python(self, multi: pl.DataFrame) -> pl.DataFrame:
        """Jobs spanning periods: today's billing.price on the record (the oracle)."""
        rows = []
        card = self.card
        self.python_jobs += multi.height
        cols = [c for c in multi.columns if c in _JOB_COLS]
        for rec in frame_records(multi.select(cols)):
            result = bprice._price(card, rec, self.as_of)
            self.outcomes[result.outcome] = self.outcomes.get(result.outcome, 0) + 1
            for line in result.lines:
                q = int(line.quantity.scaleb(6))
                a = int(line.amount.scaleb(6))
                rows.append((rec.cluster, rec.job_id_raw, rec.submit,
                             month_index(line.usage_period),
                             price_key(card, line.rule, line.resource, line.basis, line.rate),
                             q, a))
        return pl.DataFrame(rows, schema=LINE_SCHEMA, orient="row")


from bench.engine_proto.reader import JOB_SCHEMA  # noqa: E402

_JOB_COLS = frozenset(JOB_SCHEMA)
_ = (resource_unit, period_bounds, timedelta)
