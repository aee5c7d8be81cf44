"""Columnar reader prototype: ``sacct --parsable2`` text -> one polars frame of rolled-up
jobs per chunk, with the per-record Python path (``ParsableParser`` + ``rollup_steps``,
today's production code) for every job group the vectorized path cannot take.

Not imported by production code. See docs/design/engine.md.

A chunk is cut at a job-line boundary (the trailing job group is carried into the next
chunk), split into lines and fields in polars, and every value is parsed by a strict
vectorized form (digits, ``YYYY-MM-DDTHH:MM:SS``, ``[D-]HH:MM:SS[.mmm]``, ``NNN[KMGTPE]``)
or, for low-cardinality columns (State, AllocTRES), by today's Python functions applied
to the chunk's distinct values. A job group (its job line and the step lines after it)
with a ragged line, a value outside those forms, or a step that does not belong to the
job line before it is handed, as raw lines, to the Python path; so both paths run the
same code on anything unusual, and the vectorized path only ever sees values whose
meaning is unambiguous.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timezone, tzinfo

import polars as pl

from billing.records import NON_FINAL_STATES, REQUEUE_STATES, JobRecord, QuarantinedRecord
from billing.rollup import rollup_steps
from collector.slurm.fields import SENTINELS, normalise_state, parse_alloc_tres
from collector.slurm.parse import RAW_DIGEST_VERSION, ParsableParser

UTC = timezone.utc
SENT = sorted(SENTINELS)

# The columns the vectorized path needs (it refuses other layouts: the Python path then
# reads the whole input). Production's sacct call and bench/gen_sacct.py print all of them.
NEEDED = ("JobID", "JobIDRaw", "Cluster", "Partition", "Account", "User", "UID", "Group",
          "QOS", "WCKey", "Reservation", "State", "ExitCode", "DerivedExitCode", "Submit",
          "Eligible", "Start", "End", "ElapsedRaw", "TimelimitRaw", "NNodes", "NCPUS",
          "AllocTRES", "TRESUsageInTot", "CPUTimeRAW", "TotalCPU", "MaxRSS",
          "ConsumedEnergyRaw", "NodeList", "DBIndex", "JobName")

# The frame every job ends up in (vectorized or fallback), in this order.
JOB_SCHEMA: dict[str, pl.DataType] = {
    "cluster": pl.String, "job_id": pl.String, "job_id_raw": pl.Int64,
    "submit": pl.Datetime("us", "UTC"), "state": pl.String, "state_raw": pl.String,
    "array_job_id": pl.Int64, "array_task_id": pl.Int64, "het_job_id": pl.Int64,
    "het_job_offset": pl.Int64, "name": pl.String, "user": pl.String, "uid": pl.Int64,
    "group": pl.String, "account": pl.String, "partition": pl.String, "qos": pl.String,
    "wckey": pl.String, "reservation": pl.String, "exit_code": pl.String,
    "derived_exit_code": pl.String, "eligible": pl.Datetime("us", "UTC"),
    "start": pl.Datetime("us", "UTC"), "end": pl.Datetime("us", "UTC"),
    "elapsed_s": pl.Int64, "timelimit_min": pl.Int64, "nodes": pl.Int64, "cpus": pl.Int64,
    "mem_bytes": pl.Int64, "billing": pl.Int64, "gpus": pl.String, "node_list": pl.String,
    "cpu_time_alloc_s": pl.Int64, "cpu_used_ms": pl.Int64, "max_rss_bytes": pl.Int64,
    "mem_used_byte_s": pl.Int128, "energy_j": pl.Int64, "db_index": pl.Int64,
    "final": pl.Boolean, "raw_digest": pl.Binary,
}

_UNIT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50,
         "E": 1 << 60}


def gpus_key(gpus: tuple[tuple[str, int], ...]) -> str:
    """JobRecord.gpus as one string (a dictionary key): ``a100=2,untyped=1``."""
    return ",".join(f"{t}={n}" for t, n in gpus)


def gpus_tuple(key: str) -> tuple[tuple[str, int], ...]:
    if not key:
        return ()
    return tuple((t, int(n)) for t, _, n in (item.rpartition("=") for item in key.split(",")))


@dataclass
class Chunk:
    """One chunk's output."""

    jobs: pl.DataFrame                     # JOB_SCHEMA, deduplicated by key (last wins)
    quarantined: list[QuarantinedRecord] = field(default_factory=list)
    lines: int = 0
    vector_jobs: int = 0
    fallback_jobs: int = 0
    skipped: int = 0
    fallback_groups: int = 0


class NoLookup:
    """An ``UnchangedLookup`` that knows nothing stored (every job is parsed)."""

    def stored(self, keys):  # noqa: ANN001
        return set()

    def skipped(self, cluster):  # noqa: ANN001
        pass


# Lookup: (frame of cluster, job_id_raw, submit, raw_digest) -> boolean Series "stored
# with this digest" (skip). None: no skip path.
SkipLookup = Callable[[pl.DataFrame], pl.Series]


def _opt_int(c: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """(value, bad): sentinel -> null; digits -> int; anything else is bad."""
    num = c.str.contains(r"^[0-9]{1,18}$")
    return (pl.when(num).then(c.cast(pl.Int64, strict=False)),
            ~num & ~c.is_in(SENT))


def _opt_str(c: pl.Expr) -> pl.Expr:
    return pl.when(c.is_in(SENT)).then(None).otherwise(c)


def _dur_ms(c: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """[D-]HH:MM:SS[.f], [D-]MM:SS[.f], SS[.f] (f: 1-3 digits) -> ms; (value, matched)."""
    g3 = c.str.extract_groups(
        r"^(?:([0-9]{1,6})-)?([0-9]{1,6}):([0-9]{1,6}):([0-9]{1,6})(?:\.([0-9]{1,3}))?$")
    g2 = c.str.extract_groups(r"^(?:([0-9]{1,6})-)?([0-9]{1,6}):([0-9]{1,6})(?:\.([0-9]{1,3}))?$")
    g1 = c.str.extract_groups(r"^([0-9]{1,12})(?:\.([0-9]{1,3}))?$")

    def i(e: pl.Expr) -> pl.Expr:
        return e.cast(pl.Int64, strict=False).fill_null(0)

    def frac(e: pl.Expr) -> pl.Expr:
        return i(e.str.pad_end(3, "0"))

    v3 = ((((i(g3.struct.field("1")) * 24 + i(g3.struct.field("2"))) * 60
            + i(g3.struct.field("3"))) * 60 + i(g3.struct.field("4"))) * 1000
          + frac(g3.struct.field("5")))
    v2 = (((i(g2.struct.field("1")) * 24 * 60 + i(g2.struct.field("2"))) * 60
           + i(g2.struct.field("3"))) * 1000 + frac(g2.struct.field("4")))
    v1 = i(g1.struct.field("1")) * 1000 + frac(g1.struct.field("2"))
    m3 = g3.struct.field("4").is_not_null()
    m2 = g2.struct.field("3").is_not_null()
    m1 = g1.struct.field("1").is_not_null()
    return (pl.when(m3).then(v3).when(m2).then(v2).when(m1).then(v1),
            m3 | m2 | m1)


def _size(c: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """``NNN[KMGTPE]`` (bare number = bytes) -> bytes; (value, matched)."""
    g = c.str.extract_groups(r"^([0-9]{1,12})([KMGTPEkmgtpe]?)$")
    num = g.struct.field("1").cast(pl.Int64, strict=False)
    unit = g.struct.field("2").str.to_uppercase().replace_strict(
        _UNIT, default=None, return_dtype=pl.Int64)
    return num * unit, num.is_not_null()


class ColumnarReader:
    """Chunks of sacct --parsable2 text -> Chunk frames (see the module docstring)."""

    def __init__(self, columns: list[str], *, delimiter: str, tz: tzinfo, source: str,
                 default_cluster: str | None = None) -> None:
        self.columns = list(columns)
        self.delimiter = delimiter
        self.tz = tz
        self.source = source
        self.default_cluster = default_cluster
        self.ncols = len(columns)
        index = {c.strip().lower(): i for i, c in enumerate(columns)}
        self.vectorizable = all(n.lower() in index for n in NEEDED)
        # Names given to the split fields: canonical for the columns we read.
        canon = {n.lower(): n for n in NEEDED}
        self.field_names = []
        seen = set()
        for i, c in enumerate(columns):
            name = canon.get(c.strip().lower())
            if name is None or name in seen:
                name = f"_ignored{i}"
            seen.add(name)
            self.field_names.append(name)
        self.parser = ParsableParser(columns, delimiter=delimiter, source=source, tz=tz,
                                     default_cluster=default_cluster)
        self.salt_nl = self.parser._digest_salt() + b"\n"
        self._peek: str | None = None
        tzname = getattr(tz, "key", None) or ("UTC" if tz in (UTC,) else None)
        if tzname is None:
            self.vectorizable = False
        self.tzname = tzname
        assert RAW_DIGEST_VERSION == "1"

    # ------------------------------------------------------------------ chunking

    def chunks(self, fh, *, chunk_bytes: int = 2 << 20, first_line_no: int = 2,
               lookup: SkipLookup | None = None,
               py_lookup=None) -> Iterator[Chunk]:  # noqa: ANN001
        """Read the binary file object ``fh`` (after its header) in chunks."""
        carry = ""
        line_no = first_line_no
        while True:
            data = fh.read(chunk_bytes)
            eof = not data
            text = carry + data.decode("utf-8", "replace") if data else carry
            if not text:
                break
            if not eof:
                cut = text.rfind("\n")
                if cut < 0:
                    carry = text
                    continue
                body, carry = text[:cut + 1], text[cut + 1:]
            else:
                body, carry = text, ""
            chunk, consumed_text, consumed_lines = self._chunk(body, line_no, eof, lookup,
                                                               py_lookup)
            carry = body[len(consumed_text):] + carry
            line_no += consumed_lines
            if chunk is not None:
                yield chunk
            if eof:
                if carry:
                    # whatever is left (cannot happen: at eof everything is consumed)
                    raise RuntimeError("unconsumed text at end of input")
                break

    def _chunk(self, body: str, first_line_no: int, eof: bool, lookup, py_lookup):
        lines = pl.Series("line", [body]).str.split("\n").explode()
        if body.endswith("\n"):
            lines = lines.slice(0, len(lines) - 1)
        n = len(lines)
        df = pl.DataFrame({"line": lines}).with_columns(
            (pl.int_range(pl.len(), dtype=pl.Int64) + first_line_no).alias("line_no"))
        if not self.vectorizable:
            return self._python_all(df, body, n, py_lookup)
        d = self.delimiter
        c = pl.col
        pos = {n: self.field_names.index(n) for n in ("JobID", "JobIDRaw", "Cluster", "Submit")}
        head3 = max(pos["JobID"], pos["JobIDRaw"], pos["Cluster"])
        names3 = [f"_p{i}" for i in range(head3 + 1)]
        df = df.with_columns(
            (c("line").str.count_matches(d, literal=True) == self.ncols - 1).alias("ok"),
            (c("line").str.len_bytes() == 0).alias("blank"),
            c("line").str.split_exact(d, head3).struct.rename_fields(names3).alias("p"),
        ).with_columns(
            c("p").struct.field(f"_p{pos['JobID']}").alias("p_jobid"),
            c("p").struct.field(f"_p{pos['JobIDRaw']}").alias("p_raw"),
            c("p").struct.field(f"_p{pos['Cluster']}").alias("p_cluster"),
        ).drop("p")
        df = df.with_columns(
            (c("ok") & (c("p_raw").str.contains(".", literal=True)
                        | c("p_jobid").str.contains(".", literal=True))).alias("is_step"))
        df = df.with_columns((c("ok") & ~c("is_step")).alias("is_job"))
        df = df.with_columns(c("is_job").cast(pl.Int64).cum_sum().alias("grp"))
        if not eof:
            # Hold back the last group (its steps may continue in the next chunk).
            last = df["grp"].max()
            if last is None or last <= 1:
                return None, "", 0          # fewer than two job lines: read more first
            self._peek = df.filter(c("grp") == last)["line"][0]
            df = df.filter(c("grp") < last)
            consumed = df.height
        else:
            consumed = n
            self._peek = None
        consumed_text_len = int(df["line"].str.len_chars().sum()) + consumed
        nlines = int((~df["blank"]).sum())
        pre = None
        skipped = 0
        if lookup is not None:
            df, pre, skipped = self._preskip(df, lookup, pos["Submit"])
        if not df.height or bool(df["blank"].all()):
            return Chunk(jobs=records_frame([]).with_columns(
                pl.lit(None, pl.Boolean).alias("stored")), lines=nlines, skipped=skipped
            ), body[:consumed_text_len], consumed
        df = df.drop("p_jobid", "p_raw", "p_cluster").with_columns(
            c("line").str.split_exact(d, self.ncols - 1)
            .struct.rename_fields(self.field_names).alias("f")).unnest("f")
        chunk = self._vector(df, py_lookup, pre)
        chunk.lines = nlines
        chunk.skipped = skipped
        return chunk, body[:consumed_text_len], consumed

    def _preskip(self, df: pl.DataFrame, lookup, submit_pos: int):
        """The skip path before any value is parsed: group digests (production's
        blake2b over the parser's settings and the group's raw lines), one lookup of
        the job keys, and the lines of stored groups dropped."""
        c = pl.col
        head = c("p_raw").str.split_exact(".", 1).struct.field("field_0")
        jl = df.filter(c("is_job")).select("grp", c("p_raw").alias("g_rawtxt"))
        x = df.join(jl, on="grp", how="left")
        cand = x.group_by("grp").agg(
            (c("blank") | (c("ok") & (~c("is_step") | (head == c("g_rawtxt"))))).all()
            .alias("cand"),
            c("g_rawtxt").first().str.contains(r"^[0-9]{1,18}$").alias("digits"))
        cand = cand.filter(c("cand") & c("digits") & (c("grp") > 0)).select("grp")
        good = df.join(cand, on="grp", how="semi").filter(~c("blank"))
        grp_lines = good.group_by("grp", maintain_order=True).agg(
            c("line").str.join("\n").alias("text"))
        salt = self.salt_nl
        b2 = hashlib.blake2b
        digests = [b2(salt + t.encode("utf-8", "surrogatepass"), digest_size=16,
                      person=b"hpcb-raw").digest() for t in grp_lines["text"].to_list()]
        dig = pl.DataFrame({"grp": grp_lines["grp"],
                            "raw_digest": pl.Series(digests, dtype=pl.Binary)})
        jobs = good.filter(c("is_job")).join(dig, on="grp")
        submit = jobs.select(c("line").str.split_exact(self.delimiter, submit_pos)
                             .struct.field(f"field_{submit_pos}").alias("s"))["s"]
        value, _bad = self._time(pl.col("s"), self.tzname)
        keys = pl.DataFrame({"s": submit}).select(value.alias("submit"))
        keys = keys.with_columns(
            pl.when(jobs["p_cluster"] == "").then(pl.lit(self.default_cluster, pl.String))
            .otherwise(jobs["p_cluster"]).alias("cluster"),
            jobs["p_raw"].cast(pl.Int64, strict=False).alias("job_id_raw"),
            jobs["raw_digest"].alias("raw_digest"), jobs["grp"].alias("grp"))
        ask = keys.filter(c("submit").is_not_null() & c("cluster").is_not_null())
        if not ask.height:
            return df, dig.with_columns(pl.lit(None, pl.Boolean).alias("stored")), 0
        found = lookup(ask.select("cluster", "job_id_raw", "submit", "raw_digest"))
        res = ask.select("grp", "raw_digest").with_columns(
            found["skip"].alias("skip"), found["exists"].alias("stored"))
        skip_grps = res.filter(c("skip")).select("grp")
        if skip_grps.height:
            df = df.join(skip_grps, on="grp", how="anti")
        pre = dig.join(res.select("grp", "stored"), on="grp", how="left")
        return df, pre, skip_grps.height

    # ------------------------------------------------------------------ python path

    def _python_records(self, lines: list[str], first_line_no: int, py_lookup,
                        peek: str | None = None
                        ) -> tuple[list[JobRecord], list[QuarantinedRecord]]:
        """Today's path over ``lines``. ``peek``: the (well-formed job) line that follows
        them in the input, given to the parser so that it sees what it would see in the
        whole stream (a short last line is "truncated" only at the real end), and its
        record dropped again."""
        jobs: list[JobRecord] = []
        quarantined: list[QuarantinedRecord] = []
        items = list(self.parser.parse_lines(lines + ([peek] if peek is not None else []),
                                             first_line_no=first_line_no,
                                             unchanged=py_lookup or NoLookup()))
        if peek is not None:
            last = items[-1] if items else None
            peek_id = peek.split(self.delimiter, 1)[0]
            if isinstance(last, JobRecord) and last.job_id == peek_id:
                items.pop()
            else:   # cannot happen for a well-formed job line; parse without the peek
                items = list(self.parser.parse_lines(lines, first_line_no=first_line_no,
                                                     unchanged=py_lookup or NoLookup()))
        for item in rollup_steps(items, source=self.source):
            if isinstance(item, JobRecord):
                jobs.append(item)
            else:
                quarantined.append(item)
        return jobs, quarantined

    def _python_all(self, df, body, n, py_lookup):
        jobs, q = self._python_records(df["line"].to_list(), int(df["line_no"][0]), py_lookup)
        frame = records_frame(jobs)
        chunk = Chunk(jobs=dedupe(frame).with_columns(pl.lit(None, pl.Boolean).alias("stored")),
                      quarantined=q, fallback_jobs=len(jobs))
        chunk.lines = int((df["line"].str.len_bytes() > 0).sum())
        return chunk, body, n

    # ------------------------------------------------------------------ vector path

    def _vector(self, df: pl.DataFrame, py_lookup, pre) -> Chunk:
        c = pl.col
        tz = self.tzname
        dc = self.default_cluster

        # ---- values every line has
        elapsed_num = c("ElapsedRaw").str.contains(r"^[0-9]{1,12}$")
        elapsed = (pl.when(elapsed_num).then(c("ElapsedRaw").cast(pl.Int64, strict=False))
                   .when(c("ElapsedRaw").is_in(SENT)).then(0))
        energy, energy_bad = _opt_int(c("ConsumedEnergyRaw"))
        dbi, dbi_bad = _opt_int(c("DBIndex"))
        tot_ms, tot_ok = _dur_ms(c("TotalCPU"))
        tot_sent = c("TotalCPU").is_in(SENT)
        cluster = pl.when(c("Cluster") == "").then(pl.lit(dc, pl.String)).otherwise(c("Cluster"))
        df = df.with_columns(
            elapsed.alias("v_elapsed"), energy.alias("v_energy"), dbi.alias("v_dbi"),
            pl.when(tot_sent).then(None).otherwise(tot_ms).alias("v_cpu_ms"),
            cluster.alias("v_cluster"),
            (elapsed.is_null() | energy_bad | dbi_bad | (~tot_sent & ~tot_ok)
             | cluster.is_null()).alias("bad"),
        )

        # State: today's normalise_state over the distinct values.
        states = df.filter(c("ok"))["State"].unique().to_list()
        srows = []
        for raw in states:
            try:
                st, _ = normalise_state(raw)
                srows.append((raw, st, True))
            except Exception:  # noqa: BLE001
                srows.append((raw, None, False))
        sdf = pl.DataFrame(srows, schema={"State": pl.String, "v_state": pl.String,
                                          "state_ok": pl.Boolean}, orient="row")
        df = df.join(sdf, on="State", how="left").with_columns(
            (c("bad") | (c("ok") & ~c("state_ok").fill_null(False))).alias("bad"))

        # Job-line and step-line values are parsed on their own rows only.
        jdf = df.filter(c("is_job"))
        df = df.filter(~c("is_job"))

        # ---- step lines
        raw_head = c("JobIDRaw").str.split_exact(".", 1).struct.field("field_0")
        step_name = pl.when(c("JobIDRaw").str.contains(".", literal=True)).then(
            c("JobIDRaw").str.split_exact(".", 1).struct.field("field_1")).otherwise(
            c("JobID").str.split_exact(".", 1).struct.field("field_1"))
        rss, rss_ok = _size(c("MaxRSS"))
        tres_mem_txt = c("TRESUsageInTot").str.extract(r"(?:^|,)mem=([^,]*)", 1)
        tmem, tmem_ok = _size(tres_mem_txt)
        # TRESUsageInTot cpu= counts only for a step without TotalCPU (rare): parsed
        # only when the chunk has such a step.
        need_tres_cpu = df.select((c("is_step") & c("v_cpu_ms").is_null()
                                   & (c("TRESUsageInTot") != "")).any()).item()
        if need_tres_cpu:
            tres_cpu_txt = c("TRESUsageInTot").str.extract(r"(?:^|,)cpu=([^,]*)", 1)
            tcpu, tcpu_ok = _dur_ms(tres_cpu_txt)
        else:
            tres_cpu_txt, tcpu, tcpu_ok = (pl.lit(None, pl.String), pl.lit(None, pl.Int64),
                                           pl.lit(True))
        use_tres_cpu = (c("v_cpu_ms").is_null() & (c("TRESUsageInTot") != "")
                        & tres_cpu_txt.is_not_null())
        df = df.with_columns(
            pl.when(c("is_step")).then(raw_head.cast(pl.Int64, strict=False)).alias("s_head"),
            pl.when(c("MaxRSS").is_in(SENT)).then(None).otherwise(rss).alias("s_rss"),
            pl.when((c("TRESUsageInTot") != "") & tres_mem_txt.is_not_null()).then(tmem)
            .alias("s_mem"),
            pl.when(use_tres_cpu).then(tcpu).otherwise(c("v_cpu_ms")).alias("s_cpu"),
            (c("is_step") & (
                ~raw_head.str.contains(r"^[0-9]{1,18}$").fill_null(False)
                | (step_name.fill_null("") == "")
                | (~c("MaxRSS").is_in(SENT) & ~rss_ok)
                | ((c("TRESUsageInTot") != "") & tres_mem_txt.is_not_null() & ~tmem_ok)
                | (use_tres_cpu & ~tcpu_ok))).alias("s_bad"),
        ).with_columns((c("bad") | c("s_bad")).alias("bad"))

        # ---- job lines
        tl, tl_bad = _opt_int(c("TimelimitRaw"))
        uid, uid_bad = _opt_int(c("UID"))
        cta_num = c("CPUTimeRAW").str.contains(r"^[0-9]{1,18}$")
        cta = pl.when(cta_num).then(c("CPUTimeRAW").cast(pl.Int64, strict=False))
        cta_bad = ~cta_num & ~c("CPUTimeRAW").is_in(SENT)
        jid = c("JobID")
        plain = jid.str.contains(r"^[0-9]{1,18}$")
        arr = jid.str.extract_groups(r"^([0-9]{1,18})_([0-9]{1,9})$")
        arr_pending = jid.str.extract(r"^([0-9]{1,18})_\[.*\]$", 1)
        het = jid.str.extract_groups(r"^([0-9]{1,18})\+([0-9]{1,9})$")
        jid_ok = (plain | arr.struct.field("1").is_not_null() | arr_pending.is_not_null()
                  | het.struct.field("1").is_not_null())
        raw_ok = c("JobIDRaw").str.contains(r"^[0-9]{1,18}$")
        times = {}
        tbad = pl.lit(False)
        for col in ("Submit", "Eligible", "Start", "End"):
            v, b = self._time(c(col), tz)
            times[col] = v
            tbad = tbad | b
        jdf = jdf.with_columns(
            times["Submit"].alias("v_submit"), times["Eligible"].alias("v_eligible"),
            times["Start"].alias("v_start"), times["End"].alias("v_end"),
            tl.alias("v_tl"), uid.alias("v_uid"), cta.alias("v_cta"),
            pl.when(plain).then(None).otherwise(
                pl.coalesce(arr.struct.field("1"), arr_pending)).cast(pl.Int64).alias("v_arr"),
            arr.struct.field("2").cast(pl.Int64).alias("v_task"),
            het.struct.field("1").cast(pl.Int64).alias("v_het"),
            het.struct.field("2").cast(pl.Int64).alias("v_hoff"),
            (c("is_job") & (tl_bad | uid_bad | cta_bad | ~jid_ok | ~raw_ok | tbad))
            .alias("j_bad"),
        )
        jdf = jdf.with_columns(
            (c("bad") | c("j_bad") | (c("is_job") & c("v_submit").is_null())).alias("bad"))

        # AllocTRES: today's parse_alloc_tres over the distinct values.
        allocs = jdf["AllocTRES"].unique().to_list()
        arows = []
        for text in allocs:
            try:
                cpus, nodes, mem, billing, gpus = parse_alloc_tres(text)
                arows.append((text, cpus, nodes, mem, billing, gpus_key(gpus), True))
            except Exception:  # noqa: BLE001
                arows.append((text, None, None, None, None, None, False))
        adf = pl.DataFrame(arows, schema={
            "AllocTRES": pl.String, "a_cpus": pl.Int64, "a_nodes": pl.Int64,
            "a_mem": pl.Int64, "a_billing": pl.Int64, "a_gpus": pl.String,
            "a_ok": pl.Boolean}, orient="row")
        jdf = jdf.join(adf, on="AllocTRES", how="left").with_columns(
            (c("bad") | (c("is_job") & ~c("a_ok").fill_null(False))).alias("bad"))

        df = pl.concat([jdf, df], how="diagonal_relaxed").sort("line_no")

        # ---- groups: clean = every line ok and parseable, steps belong to the job line
        job_cols = df.filter(c("is_job")).select(
            "grp", c("JobIDRaw").cast(pl.Int64, strict=False).alias("g_raw"),
            c("v_cluster").alias("g_cluster"), c("v_dbi").alias("g_dbi"))
        df = df.join(job_cols, on="grp", how="left")
        step_fit = (c("s_head") == c("g_raw")) & (c("v_cluster") == c("g_cluster")) & (
            c("v_dbi").is_null() | (c("g_dbi").is_not_null() & (c("v_dbi") == c("g_dbi"))))
        df = df.with_columns(
            (~c("blank") & (
                ~c("ok") | c("bad") | (c("grp") == 0)
                | (c("is_step") & ~step_fit.fill_null(False)))).alias("line_bad"))
        # A step that does not fit its job line may belong to a job further back: the
        # Python path must then see the whole chunk (rare; sacct prints steps in place).
        # A step whose JobIDRaw differs from the job line before it belongs to a job
        # further back (today's roll-up looks up to 4,096 jobs back): the groups from
        # the latest job line of this chunk with that id down to the step go to the
        # per-record path as ONE unit, so it attaches the step as today. (A job line in
        # an earlier chunk is not seen: see docs/design/engine.md, Risks.)
        misplaced = df.filter(c("is_step") & ~(c("s_head") == c("g_raw")).fill_null(False)
                              & c("ok") & ~c("bad")).select("grp", "line_no", "s_head")
        grp_bad = df.group_by("grp").agg(c("line_bad").any().alias("grp_bad"))
        units: dict[int, int] = {}
        if misplaced.height:
            heads = df.filter(c("is_job")).select(
                "grp", "line_no", c("JobIDRaw").cast(pl.Int64, strict=False).alias("s_head"))
            spans = []
            for g_step, ln, head in misplaced.iter_rows():
                cands = heads.filter((c("s_head") == head) & (c("line_no") < ln))
                g0 = int(cands["grp"].max()) if cands.height else g_step
                spans.append((g0, g_step))
            spans.sort()
            merged: list[list[int]] = []
            for g0, g1 in spans:
                if merged and g0 <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], g1)
                else:
                    merged.append([g0, g1])
            for g0, g1 in merged:
                for g in range(g0, g1 + 1):
                    units[g] = g0
            grp_bad = grp_bad.with_columns(
                (c("grp_bad") | c("grp").is_in(list(units))).alias("grp_bad"))
        df = df.join(grp_bad, on="grp", how="left")

        quarantined: list[QuarantinedRecord] = []
        fb_jobs: list[JobRecord] = []
        fb = df.filter(c("grp_bad"))
        nfb_groups = 0
        if fb.height:
            unit = c("grp").replace_strict(units, default=c("grp"), return_dtype=pl.Int64) \
                if units else c("grp")
            fb = fb.with_columns(unit.alias("unit"))
            nxt = df.filter(c("is_job")).select("line_no", "line")
            for (_u,), part in fb.group_by(["unit"], maintain_order=True):
                nfb_groups += 1
                after = nxt.filter(c("line_no") > part["line_no"].max()).head(1)
                peek = after["line"][0] if after.height else self._peek
                jobs, q = self._python_records(part["line"].to_list(),
                                               int(part["line_no"][0]), py_lookup, peek)
                fb_jobs.extend(jobs)
                quarantined.extend(q)
        good = df.filter(~c("grp_bad") & ~c("blank"))

        # ---- digests: from the skip stage, else (no lookup, or a group it did not
        # take) computed here the same way
        jobs = good.filter(c("is_job"))
        if pre is not None:
            jobs = jobs.join(pre, on="grp", how="left")
        else:
            jobs = jobs.with_columns(pl.lit(None, pl.Binary).alias("raw_digest"),
                                     pl.lit(None, pl.Boolean).alias("stored"))
        missing = jobs.filter(c("raw_digest").is_null())["grp"]
        if missing.len():
            grp_lines = good.filter(c("grp").is_in(missing.implode())).group_by(
                "grp", maintain_order=True).agg(c("line").str.join("\n").alias("text"))
            salt = self.salt_nl
            b2 = hashlib.blake2b
            digests = [b2(salt + t.encode("utf-8", "surrogatepass"), digest_size=16,
                          person=b"hpcb-raw").digest() for t in grp_lines["text"].to_list()]
            dig = pl.DataFrame({"grp": grp_lines["grp"],
                                "d2": pl.Series(digests, dtype=pl.Binary)})
            jobs = jobs.join(dig, on="grp", how="left").with_columns(
                pl.coalesce("raw_digest", "d2").alias("raw_digest")).drop("d2")
        skipped = 0

        # ---- roll the steps up (vectorized: steps sit right after their job line)
        steps = good.filter(c("is_step")).group_by("grp").agg(
            c("s_rss").max().alias("r_rss"),
            pl.when(c("s_mem").is_not_null()).then(
                c("s_mem").cast(pl.Int128) * c("v_elapsed").cast(pl.Int128)).sum()
            .alias("r_mem_sum"),
            c("s_mem").is_not_null().any().alias("r_mem_any"),
            c("s_cpu").sum().alias("r_cpu"), c("s_cpu").is_not_null().any().alias("r_cpu_any"),
            c("v_energy").sum().alias("r_energy"),
            c("v_energy").is_not_null().any().alias("r_energy_any"),
        )
        jobs = jobs.join(steps, on="grp", how="left")
        state = c("v_state")
        requeue = state.is_in(sorted(REQUEUE_STATES))
        nonfinal = state.is_in(sorted(NON_FINAL_STATES))
        frame = jobs.select(
            c("v_cluster").alias("cluster"), c("JobID").alias("job_id"),
            c("g_raw").alias("job_id_raw"), c("v_submit").alias("submit"),
            state.alias("state"), c("State").alias("state_raw"),
            c("v_arr").alias("array_job_id"), c("v_task").alias("array_task_id"),
            c("v_het").alias("het_job_id"), c("v_hoff").alias("het_job_offset"),
            pl.when(c("JobName") == "").then(None).otherwise(c("JobName")).alias("name"),
            _opt_str(c("User")).alias("user"), c("v_uid").alias("uid"),
            _opt_str(c("Group")).alias("group"), _opt_str(c("Account")).alias("account"),
            _opt_str(c("Partition")).alias("partition"), _opt_str(c("QOS")).alias("qos"),
            _opt_str(c("WCKey")).alias("wckey"), _opt_str(c("Reservation")).alias("reservation"),
            pl.when(c("ExitCode") == "").then(None).otherwise(c("ExitCode")).alias("exit_code"),
            pl.when(c("DerivedExitCode") == "").then(None).otherwise(c("DerivedExitCode"))
            .alias("derived_exit_code"),
            c("v_eligible").alias("eligible"), c("v_start").alias("start"),
            c("v_end").alias("end"), c("v_elapsed").alias("elapsed_s"),
            c("v_tl").alias("timelimit_min"), c("a_nodes").alias("nodes"),
            c("a_cpus").alias("cpus"), c("a_mem").alias("mem_bytes"),
            c("a_billing").alias("billing"), c("a_gpus").alias("gpus"),
            _opt_str(c("NodeList")).alias("node_list"), c("v_cta").alias("cpu_time_alloc_s"),
            pl.when(c("v_cpu_ms").is_not_null()).then(c("v_cpu_ms"))
            .when(c("r_cpu_any").fill_null(False)).then(c("r_cpu")).alias("cpu_used_ms"),
            c("r_rss").alias("max_rss_bytes"),
            pl.when(c("r_mem_any").fill_null(False)).then(c("r_mem_sum")).cast(pl.Int128)
            .alias("mem_used_byte_s"),
            pl.when(c("v_energy").is_not_null()).then(c("v_energy"))
            .when(c("r_energy_any").fill_null(False)).then(c("r_energy")).alias("energy_j"),
            c("v_dbi").alias("db_index"),
            pl.when(requeue).then(c("v_end").is_not_null()).otherwise(~nonfinal).alias("final"),
            "raw_digest",
            (c("stored") if "stored" in jobs.columns else pl.lit(None, pl.Boolean)).alias("stored"),
        )
        fbf = records_frame(fb_jobs).with_columns(pl.lit(None, pl.Boolean).alias("stored"))
        out = pl.concat([frame.cast({**JOB_SCHEMA, "stored": pl.Boolean}), fbf],
                        how="vertical")
        return Chunk(jobs=dedupe(out), quarantined=quarantined, vector_jobs=frame.height,
                     fallback_jobs=len(fb_jobs), skipped=skipped,
                     fallback_groups=nfb_groups)

    def _time(self, col: pl.Expr, tz: str) -> tuple[pl.Expr, pl.Expr]:
        """(aware UTC value, bad) for a time column: epoch digits, sentinels,
        ``YYYY-MM-DD[T ]HH:MM:SS`` in the reader's zone."""
        epoch = col.str.contains(r"^[0-9]{1,11}$")
        iso = col.str.contains(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}$")
        parsed = col.str.replace(" ", "T", literal=True).str.strptime(
            pl.Datetime("us"), "%Y-%m-%dT%H:%M:%S", strict=False)
        if tz == "UTC":
            local = parsed.dt.replace_time_zone("UTC")
        else:
            local = parsed.dt.replace_time_zone(tz, ambiguous="earliest",
                                                non_existent="null").dt.convert_time_zone("UTC")
        secs = col.cast(pl.Int64, strict=False)
        from_epoch = pl.when(secs != 0).then(
            (secs * 1_000_000).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"))
        value = pl.when(epoch).then(from_epoch).when(iso).then(local)
        bad = ~col.is_in(SENT) & ~epoch & (~iso | local.is_null())
        return value, bad


# ------------------------------------------------------------------ frames <-> records

_CPU_MS = 1000


def records_frame(records: list[JobRecord]) -> pl.DataFrame:
    """JobRecords (the Python path) as a JOB_SCHEMA frame."""
    from decimal import ROUND_HALF_UP, Decimal
    rows = []
    q = Decimal("0.001")
    for r in records:
        cpu_ms = None
        if r.cpu_used_s is not None:
            cpu_ms = int(Decimal(r.cpu_used_s).quantize(q, rounding=ROUND_HALF_UP) * 1000)
        digest = bytes.fromhex(r.raw_digest) if r.raw_digest else None
        rows.append((r.cluster, r.job_id, r.job_id_raw, r.submit, r.state, r.state_raw,
                     r.array_job_id, r.array_task_id, r.het_job_id, r.het_job_offset, r.name,
                     r.user, r.uid, r.group, r.account, r.partition, r.qos, r.wckey,
                     r.reservation, r.exit_code, r.derived_exit_code, r.eligible, r.start,
                     r.end, r.elapsed_s, r.timelimit_min, r.nodes, r.cpus, r.mem_bytes,
                     r.billing, gpus_key(r.gpus), r.node_list, r.cpu_time_alloc_s, cpu_ms,
                     r.max_rss_bytes, r.mem_used_byte_s, r.energy_j, r.db_index, r.final,
                     digest))
    return pl.DataFrame(rows, schema=JOB_SCHEMA, orient="row")


def frame_records(df: pl.DataFrame) -> list[JobRecord]:
    """A JOB_SCHEMA frame as JobRecords (cpu_used_s as stored: 3 decimals)."""
    from decimal import Decimal
    out = []
    names = list(JOB_SCHEMA)
    for row in df.select(names).iter_rows():
        d = dict(zip(names, row, strict=True))
        cpu = d.pop("cpu_used_ms")
        digest = d.pop("raw_digest")
        mem = d.pop("mem_used_byte_s")
        out.append(JobRecord(
            cluster=d["cluster"], job_id=d["job_id"], job_id_raw=d["job_id_raw"],
            submit=d["submit"], state=d["state"], state_raw=d["state_raw"],
            array_job_id=d["array_job_id"], array_task_id=d["array_task_id"],
            het_job_id=d["het_job_id"], het_job_offset=d["het_job_offset"], name=d["name"],
            user=d["user"], uid=d["uid"], group=d["group"], account=d["account"],
            partition=d["partition"], qos=d["qos"], wckey=d["wckey"],
            reservation=d["reservation"], exit_code=d["exit_code"],
            derived_exit_code=d["derived_exit_code"], eligible=d["eligible"],
            start=d["start"], end=d["end"], elapsed_s=d["elapsed_s"],
            timelimit_min=d["timelimit_min"], nodes=d["nodes"], cpus=d["cpus"],
            mem_bytes=d["mem_bytes"], billing=d["billing"], gpus=gpus_tuple(d["gpus"]),
            node_list=d["node_list"], cpu_time_alloc_s=d["cpu_time_alloc_s"],
            cpu_used_s=None if cpu is None else Decimal(cpu).scaleb(-3),
            max_rss_bytes=d["max_rss_bytes"], mem_used_byte_s=None if mem is None else int(mem),
            energy_j=d["energy_j"], db_index=d["db_index"], final=d["final"],
            raw_digest=None if digest is None else digest.hex()))
    return out


def dedupe(df: pl.DataFrame) -> pl.DataFrame:
    """One row per (cluster, job_id_raw, submit): the last (JobWriter's rule)."""
    if df.height < 2:
        return df
    return df.unique(subset=["cluster", "job_id_raw", "submit"], keep="last",
                     maintain_order=True)
