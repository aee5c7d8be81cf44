"""The vector pricer: a frame of rolled-up jobs x a rate card -> charge-line frames, with
``billing.price``'s rules and its one rounding, in integer arithmetic (issue 19; design:
docs/design/engine.md §7).

- Outcome (exempt, not started, running, zero elapsed) as expressions, in
  ``billing.price._price``'s order; "final" is ``is_final_record`` on the distinct
  (state, has End) of the batch.
- Rule: ``RateCard.select_rule`` on the distinct (cluster, partition, account, qos, user,
  span of local days of Start between the card's ``from``/``until`` dates) of the batch,
  memoised for the poll, joined back.
- Lines a rule asks for: ``billing.price._specs`` itself on the distinct (rule, GPU mix,
  has billing, has energy), joined back.
- Quantity: the exact integer ratio of ``billing.price._raw_quantity`` (``max``: by
  cross-multiplication), rounded half-even once to millionths (Int128); amount: rate
  (integer / 10^k) x quantity rounded half-even to the card's scale, kept in millionths.
- Per record, by ``billing.price`` itself: jobs whose Start and End fall in different
  billing periods (split by largest remainder, a rule per slice), values past the
  integer guards, and every job when the card's scale is above 6 places.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, cast

import polars as pl

from billing import price as bprice
from billing.rates import RateCard
from billing.records import ChargeLine, JobRecord, is_final_record, resource_unit
from collector.slurm.columnar import JOB_SCHEMA, frame_records, gpus_tuple

MICRO = 10 ** 6
I128 = pl.Int128()
KEY = ["cluster", "job_id_raw", "submit"]
_TS: pl.DataType = pl.Datetime("us", "UTC")

# One charge line (kind "charge", posted in its usage period): the contract with the
# writer (/work/coord/CONTRACT.md). ``price_key`` names a row of ``VectorPricer.prices``.
LINE_SCHEMA = pl.Schema({
    "cluster": pl.String(), "job_id_raw": pl.Int64(), "submit": _TS,
    "usage_month": pl.Int32(),          # months since 2000-01 (0 = 2000-01)
    "price_key": pl.String(),           # card version \x1f rule \x1f resource \x1f basis \x1f rate
    "quantity_micro": pl.Int64(), "amount_micro": pl.Int64(),
})
# Why each job has the lines it has (billing.price.OUTCOMES), one row per job priced.
OUTCOME_SCHEMA = pl.Schema({"cluster": pl.String(), "job_id_raw": pl.Int64(), "submit": _TS,
                            "outcome": pl.String()})


@dataclass(frozen=True)
class Price:
    """What a ``price_key`` stands for."""

    card: str
    rule: str
    resource: str
    unit: str
    basis: str
    rate: Decimal
    currency: str


@dataclass
class Priced:
    """A batch priced: its lines (LINE_SCHEMA) and every job's outcome (OUTCOME_SCHEMA)."""

    lines: pl.DataFrame
    outcomes: pl.DataFrame


@dataclass(frozen=True)
class _MixJob:
    """What ``billing.price._specs`` reads of a job: its GPU mix, billing, energy."""

    gpus: tuple[tuple[str, int], ...]
    billing: int | None
    energy_j: int | None


@dataclass(frozen=True)
class _Match:
    """What ``RateCard.select_rule`` reads of a job (billing.rates.MATCH_KEYS)."""

    cluster: str
    partition: str | None
    account: str | None
    qos: str | None
    user: str | None


@dataclass(frozen=True)
class _Exprs:
    """The pricer's column expressions, built once per pricer (they depend on the card and
    ``as_of`` only; building them took ~3 ms of Python a chunk)."""

    prepare: tuple[pl.Expr, ...]       # t_start, t_end0, gpu_total, no_end
    classify: tuple[pl.Expr, ...]      # outcome, p_elapsed, p_end
    months: tuple[pl.Expr, ...]        # m0, m1, day0
    one: pl.Expr                       # one period, inside the integer guards
    quantity: pl.Expr                  # q
    amount: pl.Expr                    # a
    too_big: pl.Expr
    line: tuple[pl.Expr, ...]          # LINE_SCHEMA's columns


def month_index(period: str) -> int:
    return (int(period[:4]) - 2000) * 12 + int(period[5:7]) - 1


def month_name(idx: int) -> str:
    return f"{2000 + idx // 12:04d}-{idx % 12 + 1:02d}"


def _half_even(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """num / den rounded half-even (num >= 0, den > 0), Int128."""
    q = num // den
    r = num % den
    twice = r * pl.lit(2, I128)
    up = (twice > den) | ((twice == den) & ((q % pl.lit(2, I128)) == pl.lit(1, I128)))
    return q + up.cast(I128)


def _lit(v: int) -> pl.Expr:
    return pl.lit(v, I128)


def _rate_parts(rate: Decimal) -> tuple[int, int]:
    """rate = r_int x 10^-k, (r_int, k) with k >= 0."""
    _sign, digits, exp = rate.as_tuple()
    r_int = int("".join(map(str, digits)) or "0")
    if not isinstance(exp, int):
        raise ValueError(f"rate {rate} is not finite")
    if exp > 0:
        return r_int * 10 ** exp, 0
    return r_int, -exp


class VectorPricer:
    """Prices job frames (``JOB_SCHEMA``) with one card; ``as_of`` accrues running jobs."""

    def __init__(self, card: RateCard, as_of: datetime) -> None:
        self.card = card
        self.as_of = as_of
        self.tzname = getattr(card.tz, "key", None) or ("UTC" if card.tz is UTC else None)
        self.vector = self.tzname is not None and 0 <= card.scale <= 6
        self.prices: dict[str, Price] = {}
        self.outcomes: Counter[str] = Counter()
        self.python_jobs = 0
        self._rules: dict[tuple[Any, ...], int] = {}
        # The days on which some rule starts or ends: between two of them every rule is
        # in effect or not, so ``select_rule``'s answer for a job depends on the day only
        # through which of these spans holds it (its index: how many lie on or before it).
        self._bounds = pl.Series("bounds", sorted(
            {r.valid_from for r in card.rules}
            | {r.valid_until for r in card.rules if r.valid_until is not None}),
            dtype=pl.Date())
        self._specs: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
        self._x = self._expressions() if self.vector else None

    def price_key(self, rule: str, resource: str, basis: str, rate: Decimal) -> str:
        key = "\x1f".join((self.card.version, rule, resource, basis, str(rate)))
        if key not in self.prices:
            self.prices[key] = Price(self.card.version, rule, resource,
                                     resource_unit(resource), basis, rate,
                                     self.card.currency)
        return key

    # ------------------------------------------------------------------ per batch

    def _expressions(self) -> _Exprs:
        c = pl.col
        card = self.card
        tz = self.tzname
        assert tz is not None
        as_of_s = int(bprice._whole_seconds(self.as_of).timestamp())
        gpu_n = c("gpus").str.extract_all(r"=([0-9]+)").list.eval(
            pl.element().str.slice(1).cast(pl.Int64)).list.sum()
        prepare = (c("start").dt.epoch("s").alias("t_start"),
                   c("end").dt.epoch("s").alias("t_end0"),
                   gpu_n.fill_null(0).alias("gpu_total"),
                   c("end").is_null().alias("no_end"))
        # Outcome, in billing.price._price's order (module docstring).
        has_alloc = ((c("cpus") != 0) | (c("mem_bytes") != 0) | (c("nodes") != 0)
                     | (c("gpu_total") != 0) | (c("billing").fill_null(0) != 0))
        exempt = c("state").is_in(sorted(card.exempt_states))
        not_started = c("start").is_null() | ~has_alloc
        running = ~c("p_final") & pl.lit(not card.accrue_running)
        final_end = pl.when(c("t_end0").is_not_null()).then(c("t_end0")).otherwise(
            c("t_start") + pl.max_horizontal(c("elapsed_s"), pl.lit(0)))
        accr_end_is_job = c("t_end0").is_not_null() & (c("t_end0") <= as_of_s)
        end = (pl.when(c("p_final")).then(final_end).when(accr_end_is_job).then(c("t_end0"))
               .otherwise(pl.lit(as_of_s)))
        elapsed = (pl.when(c("p_final")).then(c("elapsed_s")).when(accr_end_is_job)
                   .then(c("elapsed_s")).otherwise(pl.lit(as_of_s) - c("t_start")))
        classify = (
            pl.when(exempt).then(pl.lit(bprice.EXEMPT))
            .when(not_started).then(pl.lit(bprice.NOT_STARTED))
            .when(running).then(pl.lit(bprice.RUNNING))
            .when(elapsed <= 0).then(pl.lit(bprice.ZERO_ELAPSED)).alias("outcome"),
            elapsed.alias("p_elapsed"), pl.max_horizontal(end, c("t_start")).alias("p_end"))

        def local(epoch_s: pl.Expr) -> pl.Expr:
            return ((epoch_s * 1_000_000).cast(pl.Datetime("us"))
                    .dt.replace_time_zone("UTC").dt.convert_time_zone(tz))

        def midx(epoch_s: pl.Expr) -> pl.Expr:
            loc = local(epoch_s)
            return ((loc.dt.year() - 2000) * 12 + loc.dt.month() - 1).cast(pl.Int32)

        months = (midx(c("t_start")).alias("m0"),
                  pl.when(c("p_end") > c("t_start")).then(midx(c("p_end") - 1))
                  .otherwise(midx(c("t_start"))).alias("m1"),
                  local(c("t_start")).dt.date().alias("day0"))
        # Integer guards: inputs whose products could leave Int128 go per record, as do
        # jobs spanning periods.
        small = ((c("mem_bytes") < 2 ** 50) & (c("p_elapsed") < 2 ** 40)
                 & (c("energy_j").fill_null(0) < 2 ** 60)
                 & (c("cpu_used_ms").fill_null(0) < 2 ** 60)
                 & (c("mem_used_byte_s").fill_null(0).cast(I128) < _lit(2 ** 90))
                 & (c("cpus") < 2 ** 31) & (c("nodes") < 2 ** 31)
                 & (c("gpu_total") < 2 ** 31)
                 & (c("billing").fill_null(0) < 2 ** 40))
        one = (c("m1") == c("m0")) & small

        # Quantity (exact ratio, rounded once to millionths) and amount.
        e = c("p_elapsed").cast(I128)
        hour = _lit(3600)
        gib_hour = _lit((1 << 30) * 3600)
        res, basis = c("resource"), c("basis")

        def pick(alloc: tuple[pl.Expr, pl.Expr], used: tuple[pl.Expr, pl.Expr],
                 used_null: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
            a_num, a_den = alloc
            u_num, u_den = used
            use_used = pl.when(basis == "used").then(True).when(basis == "max").then(
                pl.when(used_null).then(False).otherwise(u_num * a_den > a_num * u_den)
            ).otherwise(False)
            num = (pl.when(use_used).then(pl.when(used_null).then(_lit(0)).otherwise(u_num))
                   .otherwise(a_num))
            den = (pl.when(use_used).then(pl.when(used_null).then(_lit(1)).otherwise(u_den))
                   .otherwise(a_den))
            return num, den

        cpu_num, cpu_den = pick((c("cpus").cast(I128) * e, hour),
                                (c("cpu_used_ms").cast(I128), _lit(3_600_000)),
                                c("cpu_used_ms").is_null())
        mem_num, mem_den = pick((c("mem_bytes").cast(I128) * e, gib_hour),
                                (c("mem_used_byte_s").cast(I128), gib_hour),
                                c("mem_used_byte_s").is_null())
        num = (pl.when(res == "cpu").then(cpu_num).when(res == "mem").then(mem_num)
               .when(res.str.starts_with("gpu")).then(c("gpu_n").cast(I128) * e)
               .when(res == "node").then(c("nodes").cast(I128) * e)
               .when(res == "billing").then(c("billing").fill_null(0).cast(I128) * e)
               .when(res == "energy").then(c("energy_j").fill_null(0).cast(I128)))
        den = (pl.when(res == "cpu").then(cpu_den).when(res == "mem").then(mem_den)
               .when(res == "energy").then(_lit(3_600_000)).otherwise(hour))
        scale = card.scale
        amount_scaled = _half_even(c("rate_int") * c("q") * _lit(10 ** scale),
                                   _lit(10).pow(c("rate_exp") + 6).cast(I128))
        return _Exprs(
            prepare=prepare, classify=classify, months=months, one=one,
            quantity=_half_even(num * _lit(MICRO), den).alias("q"),
            amount=(amount_scaled * _lit(10 ** (6 - scale))).alias("a"),
            # A quantity or amount past bigint millionths, or a rate so long that the
            # product could leave Int128: that job goes per record.
            too_big=((c("q") >= _lit(2 ** 62)) | (c("a") >= _lit(2 ** 62))
                     | (c("rate_int") * _lit(10 ** scale) > _lit(10 ** 20))),
            line=(*map(c, KEY), c("m0").alias("usage_month"), c("price_key"),
                  c("q").cast(pl.Int64).alias("quantity_micro"),
                  c("a").cast(pl.Int64).alias("amount_micro")))

    def price(self, jobs: pl.DataFrame) -> Priced:
        """The lines and outcomes of ``jobs`` (every row is priced; duplicates too)."""
        c = pl.col
        if not jobs.height:
            return Priced(pl.DataFrame(schema=LINE_SCHEMA), pl.DataFrame(schema=OUTCOME_SCHEMA))
        x = self._x
        if x is None:
            return self._python(jobs)
        fin = jobs.select("state", c("end").is_null().alias("no_end")).unique()
        fin = fin.with_columns(pl.Series("p_final", [
            is_final_record(s, None if ne else self.as_of) for s, ne in fin.iter_rows()],
            dtype=pl.Boolean()))
        df = jobs.with_columns(*x.prepare).join(fin, on=["state", "no_end"], how="left",
                                                nulls_equal=True)
        df = df.with_columns(*x.classify)
        outcomes = [df.filter(c("outcome").is_not_null()).select(*KEY, "outcome")]
        df = df.filter(c("outcome").is_null())
        lines: list[pl.DataFrame] = [pl.DataFrame(schema=LINE_SCHEMA)]
        if df.height:
            df = df.with_columns(*x.months)
            multi = df.filter(~x.one)
            single = df.filter(x.one)
            if single.height:
                got = self._single(single)
                lines.append(got.lines)
                outcomes.append(got.outcomes)
            if multi.height:
                got = self._python(multi)
                lines.append(got.lines)
                outcomes.append(got.outcomes)
        out = pl.concat([o.cast(OUTCOME_SCHEMA) for o in outcomes], how="vertical")
        self.outcomes.update(dict(out.group_by("outcome").len().iter_rows()))
        return Priced(pl.concat(lines, how="vertical"), out)

    # ------------------------------------------------------------------ rules and specs

    def _rule_index(self, single: pl.DataFrame) -> pl.DataFrame:
        """``single`` with ``rule_idx`` (the card's rule, -1 for none): ``select_rule`` once
        per distinct (match keys, span of days between the card's ``from``/``until``
        dates) of the poll, joined back."""
        match = ["cluster", "partition", "account", "qos", "user", "span"]
        single = single.with_columns(
            self._bounds.search_sorted(single["day0"], side="right").cast(pl.Int32)
            .alias("span"))
        keys = single.select(*match, "day0").unique(subset=match, keep="any")
        rows = []
        card = self.card
        rules = card.rules
        for cl, part, acct, qos, user, span, day in keys.iter_rows():
            k = (cl, part, acct, qos, user, span)
            idx = self._rules.get(k)
            if idx is None:
                if len(self._rules) >= 20_000:    # bounded, like RateCard's memo
                    self._rules.clear()
                assert isinstance(day, date)
                # noon of a local day in the span: select_rule looks at the local date only
                at = datetime(day.year, day.month, day.day, 12, tzinfo=card.tz)
                rule = card.select_rule(cast(JobRecord, _Match(cl, part, acct, qos, user)), at)
                idx = -1 if rule is None else rules.index(rule)
                self._rules[k] = idx
            rows.append((*k, idx))
        rdf = pl.DataFrame(rows, schema={"cluster": pl.String(), "partition": pl.String(),
                                         "account": pl.String(), "qos": pl.String(),
                                         "user": pl.String(), "span": pl.Int32(),
                                         "rule_idx": pl.Int32()}, orient="row")
        return single.join(rdf, on=match, how="left", nulls_equal=True).drop("span")

    def _spec_rows(self, rule_idx: int, gpus: str, has_billing: bool,
                   has_energy: bool) -> list[tuple[Any, ...]]:
        key = (rule_idx, gpus, has_billing, has_energy)
        hit = self._specs.get(key)
        if hit is not None:
            return hit
        rule = self.card.rules[rule_idx]
        mix = gpus_tuple(gpus)
        by_type = dict(mix)
        fake = _MixJob(mix, 1 if has_billing else None, 1 if has_energy else None)
        out: list[tuple[Any, ...]] = []
        for n, spec in enumerate(bprice._specs(rule, cast(JobRecord, fake))):
            r_int, k = _rate_parts(spec.rate)
            gpu_n = sum(by_type.get(t, 0) for t in spec.gpu_types)
            out.append((n, spec.resource, spec.basis, gpu_n, r_int, k,
                        self.price_key(rule.name, spec.resource, spec.basis, spec.rate)))
        if len(self._specs) >= 20_000:
            self._specs.clear()
        self._specs[key] = out
        return out

    # ------------------------------------------------------------------ one period

    def _single(self, single: pl.DataFrame) -> Priced:
        c = pl.col
        df = self._rule_index(single)
        outcomes = [df.filter(c("rule_idx") == -1).select(
            *KEY, pl.lit(bprice.NO_RULE).alias("outcome"))]
        df = df.filter(c("rule_idx") != -1).with_columns(
            c("billing").is_not_null().alias("has_billing"),
            c("energy_j").is_not_null().alias("has_energy"))
        combos = df.select("rule_idx", "gpus", "has_billing", "has_energy").unique()
        srows = []
        for ri, gpus, hb, he in combos.iter_rows():
            for row in self._spec_rows(ri, gpus, hb, he):
                srows.append((ri, gpus, hb, he, *row))
        sdf = pl.DataFrame(srows, schema={
            "rule_idx": pl.Int32(), "gpus": pl.String(), "has_billing": pl.Boolean(),
            "has_energy": pl.Boolean(), "spec_no": pl.Int32(), "resource": pl.String(),
            "basis": pl.String(), "gpu_n": pl.Int64(), "rate_int": I128,
            "rate_exp": pl.Int32(), "price_key": pl.String()}, orient="row")
        xs = self._x
        assert xs is not None
        x = df.join(sdf, on=["rule_idx", "gpus", "has_billing", "has_energy"], how="inner",
                    nulls_equal=True)
        x = x.with_columns(xs.quantity).filter(c("q") != 0).with_columns(xs.amount)
        too_big = x.filter(xs.too_big)
        extra: Priced | None = None
        if too_big.height:
            bad = too_big.select(KEY).unique()
            x = x.join(bad, on=KEY, how="anti")
            again = df.join(bad, on=KEY, how="semi")
            df = df.join(bad, on=KEY, how="anti")
            extra = self._python(again)
        lines = x.sort("spec_no", maintain_order=True).select(*xs.line)
        # A job row (duplicates included) is priced when any line of it is left.
        x_rows = x.select(*KEY).unique().with_columns(pl.lit(True).alias("_has"))
        oc = df.join(x_rows, on=KEY, how="left", nulls_equal=True).select(
            *KEY, pl.when(c("_has").fill_null(False)).then(pl.lit(bprice.PRICED))
            .otherwise(pl.lit(bprice.NO_CHARGE)).alias("outcome"))
        outcomes.append(oc)
        got = Priced(lines.cast(LINE_SCHEMA),
                     pl.concat([o.cast(OUTCOME_SCHEMA) for o in outcomes], how="vertical"))
        if extra is not None:
            got = Priced(pl.concat([got.lines, extra.lines]),
                         pl.concat([got.outcomes, extra.outcomes]))
        return got

    # ------------------------------------------------------------------ per record

    def _python(self, jobs: pl.DataFrame) -> Priced:
        """Jobs spanning periods (and the guards): billing.price on the record."""
        rows = []
        outs = []
        card = self.card
        self.python_jobs += jobs.height
        for rec in frame_records(jobs.select(list(JOB_SCHEMA))):
            result = bprice._price(card, rec, self.as_of)
            outs.append((rec.cluster, rec.job_id_raw, rec.submit, result.outcome))
            for line in result.lines:
                rows.append((rec.cluster, rec.job_id_raw, rec.submit,
                             month_index(line.usage_period),
                             self.price_key(line.rule, line.resource, line.basis, line.rate),
                             int(line.quantity.scaleb(6)), int(line.amount.scaleb(6))))
        return Priced(pl.DataFrame(rows, schema=LINE_SCHEMA, orient="row"),
                      pl.DataFrame(outs, schema=OUTCOME_SCHEMA, orient="row"))

    # ------------------------------------------------------------------ as records

    def charge_lines(self, lines: pl.DataFrame) -> list[ChargeLine]:
        """LINE_SCHEMA rows as ChargeLines (kind "charge", posted in their usage period:
        closed periods are planned later, ``billing.price.plan_lines``)."""
        out = []
        prices = self.prices
        scale = self.card.scale
        for cluster, raw, submit, month, key, q, a in lines.iter_rows():
            p = prices[key]
            period = month_name(month)
            amount = bprice.round_amount(Decimal(a).scaleb(-6), scale)
            out.append(ChargeLine(cluster, raw, submit.replace(tzinfo=UTC), period, period,
                                  p.resource, bprice._from_micro(q), p.unit, p.rate, amount,
                                  p.currency, p.rule, p.card, p.basis, "charge"))
        return out
