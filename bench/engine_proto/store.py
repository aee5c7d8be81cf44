"""Store prototype: the compact, partitioned schema and the binary-COPY writer.

Not imported by production code. See docs/design/engine.md, "Storage".

Tables (prefix ``e_`` so they can sit beside today's in one database):
  e_clusters, e_assocs, e_outcomes, e_gpu_mixes, e_prices      small dimensions
  e_jobs     PARTITION BY RANGE (submit_time), one partition per month
  e_charges  PARTITION BY RANGE (usage_month), one partition per month
  e_rollup_resource, e_rollup_jobs                             per posted month x assoc
Hot tables have no foreign key and no trigger; rollups are kept by the writer, set-based,
once per batch, from the rows it inserted and deleted.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

PG_EPOCH_US = 946_684_800 * 1_000_000
PG_EPOCH_DAYS = 10_957
NULL_CELL = pa.scalar(b"\xff\xff\xff\xff", pa.binary())
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_TRAILER = b"\xff\xff"

DDL = """
CREATE TABLE IF NOT EXISTS e_clusters (
    id smallint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS e_assocs (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, cluster_id smallint NOT NULL,
    account text, user_name text, uid bigint, group_name text, partition text, qos text,
    wckey text, reservation text,
    UNIQUE NULLS NOT DISTINCT (cluster_id, account, user_name, uid, group_name, partition,
                               qos, wckey, reservation));
CREATE TABLE IF NOT EXISTS e_outcomes (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, state text NOT NULL,
    state_raw text NOT NULL, exit_code text, derived_exit_code text,
    UNIQUE NULLS NOT DISTINCT (state_raw, state, exit_code, derived_exit_code));
CREATE TABLE IF NOT EXISTS e_gpu_mixes (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, gpus text NOT NULL UNIQUE,
    gpu_count integer NOT NULL);
CREATE TABLE IF NOT EXISTS e_prices (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, card_version text NOT NULL,
    rule text NOT NULL, resource text NOT NULL, unit text NOT NULL, basis text NOT NULL,
    kind text NOT NULL DEFAULT 'charge', rate numeric(20, 9) NOT NULL, rate_text text NOT NULL,
    currency text NOT NULL, scale smallint NOT NULL,
    UNIQUE (card_version, rule, resource, basis, kind, rate_text));
CREATE TABLE IF NOT EXISTS e_jobs (
    job_id_raw bigint NOT NULL, submit_time timestamptz NOT NULL,
    eligible_time timestamptz, start_time timestamptz, end_time timestamptz,
    elapsed_s bigint NOT NULL, timelimit_min bigint, mem_bytes bigint NOT NULL,
    billing_units bigint, cpu_time_alloc_s bigint, cpu_used_ms bigint, max_rss_bytes bigint,
    energy_j bigint, db_index bigint, array_job_id bigint, het_job_id bigint,
    assoc_id integer NOT NULL, outcome_id integer NOT NULL, gpu_mix_id integer NOT NULL,
    nodes integer NOT NULL, cpus integer NOT NULL, array_task_id integer,
    het_job_offset integer, first_run_id integer, last_run_id integer,
    cluster_id smallint NOT NULL, final boolean NOT NULL,
    mem_used_byte_s numeric(38, 0), job_id text, name text, node_list text, raw_digest bytea,
    PRIMARY KEY (cluster_id, job_id_raw, submit_time)
) PARTITION BY RANGE (submit_time);
CREATE INDEX IF NOT EXISTS e_jobs_open ON e_jobs (cluster_id) WHERE NOT final;
CREATE INDEX IF NOT EXISTS e_jobs_end_brin ON e_jobs USING brin (end_time);
CREATE TABLE IF NOT EXISTS e_charges (
    job_id_raw bigint NOT NULL, submit_time timestamptz NOT NULL,
    quantity_micro bigint NOT NULL, amount_micro bigint NOT NULL,
    usage_month date NOT NULL, posted_month date NOT NULL, price_id integer NOT NULL,
    cluster_id smallint NOT NULL
) PARTITION BY RANGE (usage_month);
CREATE INDEX IF NOT EXISTS e_charges_job ON e_charges (cluster_id, job_id_raw, submit_time);
CREATE TABLE IF NOT EXISTS e_rollup_resource (
    posted_month date NOT NULL, cluster_id smallint NOT NULL, assoc_id integer NOT NULL,
    currency text NOT NULL, resource text NOT NULL, unit text NOT NULL,
    quantity_micro bigint NOT NULL, amount_micro bigint NOT NULL, lines bigint NOT NULL,
    jobs bigint NOT NULL,
    PRIMARY KEY (posted_month, cluster_id, assoc_id, currency, resource, unit));
CREATE TABLE IF NOT EXISTS e_rollup_jobs (
    posted_month date NOT NULL, cluster_id smallint NOT NULL, assoc_id integer NOT NULL,
    currency text NOT NULL, amount_micro bigint NOT NULL, jobs bigint NOT NULL,
    PRIMARY KEY (posted_month, cluster_id, assoc_id, currency));
"""

# e_jobs columns in COPY order with their binary encodings.
JOB_COLUMNS = [
    ("job_id_raw", "int8"), ("submit_time", "ts"), ("eligible_time", "ts"),
    ("start_time", "ts"), ("end_time", "ts"), ("elapsed_s", "int8"),
    ("timelimit_min", "int8"), ("mem_bytes", "int8"), ("billing_units", "int8"),
    ("cpu_time_alloc_s", "int8"), ("cpu_used_ms", "int8"), ("max_rss_bytes", "int8"),
    ("energy_j", "int8"), ("db_index", "int8"), ("array_job_id", "int8"),
    ("het_job_id", "int8"), ("assoc_id", "int4"), ("outcome_id", "int4"),
    ("gpu_mix_id", "int4"), ("nodes", "int4"), ("cpus", "int4"), ("array_task_id", "int4"),
    ("het_job_offset", "int4"), ("first_run_id", "int4"), ("last_run_id", "int4"),
    ("cluster_id", "int2"), ("final", "bool"), ("mem_used_byte_s", "numeric"),
    ("job_id", "text"), ("name", "text"), ("node_list", "text"), ("raw_digest", "bytea"),
]
CHARGE_COLUMNS = [
    ("job_id_raw", "int8"), ("submit_time", "ts"), ("quantity_micro", "int8"),
    ("amount_micro", "int8"), ("usage_month", "date"), ("posted_month", "date"),
    ("price_id", "int4"), ("cluster_id", "int2"),
]
_NP = {"int8": ">i8", "int4": ">i4", "int2": ">i2", "bool": "u1", "ts": ">i8", "date": ">i4"}
_ROW_COLS = [c for c, _ in JOB_COLUMNS if c not in ("first_run_id",)]


# ----------------------------------------------------------------------- binary COPY

def _fixed_cells(values: np.ndarray, fmt: str, valid: np.ndarray | None) -> pa.Array:
    width = np.dtype(fmt).itemsize
    rec = np.empty(len(values), dtype=[("l", ">i4"), ("v", fmt)])
    rec["l"] = width
    rec["v"] = values
    arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 + width), len(values),
                                               [None, pa.py_buffer(rec.tobytes())])
    arr = arr.cast(pa.binary())
    if valid is not None and not valid.all():
        arr = pc.if_else(pa.array(valid), arr, NULL_CELL)
    return arr


def _var_cells(col: pa.Array) -> pa.Array:
    col = col.cast(pa.binary())
    lens = pc.binary_length(col).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
    prefix = np.empty(len(col), dtype=[("l", ">i4")])
    prefix["l"] = lens
    pre = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4), len(col),
                                               [None, pa.py_buffer(prefix.tobytes())]
                                               ).cast(pa.binary())
    return pc.binary_join_element_wise(pre, col.fill_null(b""), pa.scalar(b"", pa.binary()))


def _numeric_cells(s: pl.Series) -> pa.Array:
    """Non-negative Int128 -> numeric binary (10 base-10000 digits, weight 9)."""
    n = len(s)
    valid = s.is_not_null().to_numpy()
    v = s.fill_null(0)
    rec = np.empty(n, dtype=[("l", ">i4"), ("nd", ">i2"), ("w", ">i2"), ("sign", ">i2"),
                             ("dscale", ">i2")] + [(f"d{i}", ">i2") for i in range(10)])
    rec["l"] = 28
    rec["nd"] = 10
    rec["w"] = 9
    rec["sign"] = 0
    rec["dscale"] = 0
    frame = pl.DataFrame({"v": v}).select(
        [((pl.col("v") // pl.lit(10000 ** (9 - i), pl.Int128)) % pl.lit(10000, pl.Int128))
         .cast(pl.Int16).alias(f"d{i}") for i in range(10)])
    for i in range(10):
        rec[f"d{i}"] = frame[f"d{i}"].to_numpy()
    arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), n,
                                               [None, pa.py_buffer(rec.tobytes())]
                                               ).cast(pa.binary())
    if not valid.all():
        arr = pc.if_else(pa.array(valid), arr, NULL_CELL)
    return arr


def encode_binary(df: pl.DataFrame, columns: list[tuple[str, str]]) -> memoryview:
    """The frame's rows in PostgreSQL's binary COPY format (rows only, no header)."""
    n = df.height
    count = np.empty(n, dtype=[("n", ">i2")])
    count["n"] = len(columns)
    cells = [pa.FixedSizeBinaryArray.from_buffers(pa.binary(2), n,
                                                  [None, pa.py_buffer(count.tobytes())]
                                                  ).cast(pa.binary())]
    for name, kind in columns:
        s = df[name]
        if kind in ("text", "bytea"):
            cells.append(_var_cells(s.to_arrow()))
            continue
        if kind == "numeric":
            cells.append(_numeric_cells(s))
            continue
        valid = s.is_not_null().to_numpy() if s.null_count() else None
        if kind == "ts":
            vals = s.dt.epoch("us").fill_null(0).to_numpy() - PG_EPOCH_US
        elif kind == "date":
            vals = s.cast(pl.Int32).fill_null(0).to_numpy() - PG_EPOCH_DAYS
        elif kind == "bool":
            vals = s.fill_null(False).cast(pl.UInt8).to_numpy()
        else:
            vals = s.fill_null(0).to_numpy()
        cells.append(_fixed_cells(vals, _NP[kind], valid))
    rows = pc.binary_join_element_wise(*cells, pa.scalar(b"", pa.binary()))
    if isinstance(rows, pa.ChunkedArray):
        rows = rows.combine_chunks()
    rows = rows.cast(pa.large_binary())
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int64)[rows.offset:rows.offset + n + 1]
    return memoryview(rows.buffers()[2])[int(offsets[0]):int(offsets[-1])]


def copy_binary(cur: psycopg.Cursor, table: str, columns: list[tuple[str, str]],
                df: pl.DataFrame, table_columns: list[str] | None = None) -> None:
    if not df.height:
        return
    data = encode_binary(df, columns)
    cols = ", ".join(table_columns or [c for c, _ in columns])
    with cur.copy(f"COPY {table} ({cols}) FROM STDIN (FORMAT BINARY)") as cp:
        cp.write(COPY_HEADER)
        cp.write(data)
        cp.write(COPY_TRAILER)


# ----------------------------------------------------------------------- the writer

def month_date(idx: int) -> date:
    return date(2000 + idx // 12, idx % 12 + 1, 1)


class Store:
    """The writing path of one poll: one psycopg 3 connection, one transaction."""

    def __init__(self, conn: psycopg.Connection, run_id: int) -> None:
        self.conn = conn
        self.run_id = run_id
        self._dims: dict[str, dict[tuple, int]] = {k: {} for k in (
            "clusters", "assocs", "outcomes", "gpus", "prices")}
        self._job_parts: set[int] = set()
        self._charge_parts: set[int] = set()
        self._bloom = np.zeros(1 << 22, dtype=np.uint8)   # 2^25 bits
        self._fine: list[pl.DataFrame] = []
        self._coarse: list[pl.DataFrame] = []
        self.counts = {"inserted": 0, "staged": 0, "charge_lines": 0, "changed": 0}
        self._load_parts()

    def _load_parts(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                        " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname IN"
                        " ('e_jobs', 'e_charges')")
            for (name,) in cur.fetchall():
                y, m = int(name[-7:-3]), int(name[-2:])
                idx = (y - 2000) * 12 + m - 1
                (self._job_parts if name.startswith("e_jobs") else self._charge_parts).add(idx)

    # ---- dimensions: get-or-create the batch's distinct values, in this transaction
    def _dim(self, kind: str, table: str, cols: list[str], keys: pl.DataFrame,
             types: list[str]) -> pl.DataFrame:
        known = self._dims[kind]
        uniq = keys.unique()
        missing = [row for row in uniq.iter_rows() if row not in known]
        if missing:
            arrays = [list(col) for col in zip(*missing, strict=True)]
            casts = ", ".join(f"%s::{t}[]" for t in types)
            names = ", ".join(cols)
            cond = " AND ".join(f"d.{c} IS NOT DISTINCT FROM k.{c}" for c in cols)
            with self.conn.cursor() as cur:
                cur.execute(f"INSERT INTO {table} ({names}) SELECT * FROM unnest({casts})"
                            f" ON CONFLICT DO NOTHING", arrays)
                cur.execute(f"SELECT d.id, k.ord FROM unnest({casts}) WITH ORDINALITY"
                            f" AS k({names}, ord) JOIN {table} d ON {cond}", arrays)
                for dim_id, ord_ in cur.fetchall():
                    known[missing[ord_ - 1]] = dim_id
        ids = [known[row] for row in uniq.iter_rows()]
        return uniq.with_columns(pl.Series(f"{kind}_id", ids, dtype=pl.Int32))

    def ensure_partitions(self, look: psycopg.Connection, jobs: pl.DataFrame,
                          lines: pl.DataFrame) -> None:
        """Create the months' partitions, in the READING thread on its autocommit
        connection, before the batch goes to the writer: partition DDL locks the parent,
        so it must not sit in the poll's long transaction (the skip lookups would wait
        for it). Partitions are schema, like dimension rows: harmless if the poll fails."""
        sub = jobs.select(((pl.col("submit").dt.year().cast(pl.Int32) - 2000) * 12
                           + pl.col("submit").dt.month() - 1).unique())
        with look.cursor() as cur:
            self._partitions(cur, set(sub.to_series().to_list()), True)
            self._partitions(cur, set(lines["usage_month"].unique().to_list()), False)

    def _partitions(self, cur, months: set[int], jobs: bool) -> None:
        have = self._job_parts if jobs else self._charge_parts
        for idx in sorted(months - have):
            lo, hi = month_date(idx), month_date(idx + 1)
            # CREATE ... PARTITION OF would take an ACCESS EXCLUSIVE lock on the parent
            # (waiting for the poll's open transaction); ATTACH takes SHARE UPDATE
            # EXCLUSIVE, which a running COPY or lookup does not conflict with.
            parent, col, lo_v, hi_v = (("e_jobs", "submit_time", f"{lo}T00:00:00Z",
                                        f"{hi}T00:00:00Z") if jobs else
                                       ("e_charges", "usage_month", f"{lo}", f"{hi}"))
            name = f"{parent}_{lo:%Y_%m}"
            cur.execute(f"CREATE TABLE IF NOT EXISTS {name} (LIKE {parent} INCLUDING DEFAULTS"
                        f" INCLUDING CONSTRAINTS, CHECK ({col} >= '{lo_v}' AND {col} <"
                        f" '{hi_v}'))")
            cur.execute(f"ALTER TABLE {parent} ATTACH PARTITION {name} FOR VALUES FROM"
                        f" ('{lo_v}') TO ('{hi_v}')")
            have.add(idx)

    def write(self, jobs: pl.DataFrame, lines: pl.DataFrame, card) -> None:  # noqa: ANN001
        """One batch: jobs (reader frame, with ``stored`` from the skip lookup) and
        their charge lines (pricer frame)."""
        c = pl.col
        if not jobs.height:
            return
        cl = self._dim("clusters", "e_clusters", ["name"],
                       jobs.select(c("cluster").alias("name")), ["text"])
        jobs = jobs.join(cl.rename({"name": "cluster"}), on="cluster")
        acols = ["cluster_id", "account", "user_name", "uid", "group_name", "partition", "qos",
                 "wckey", "reservation"]
        jobs = jobs.with_columns(c("clusters_id").cast(pl.Int16).alias("cluster_id"),
                                 c("user").alias("user_name"), c("group").alias("group_name"))
        ad = self._dim("assocs", "e_assocs", acols, jobs.select(acols),
                       ["int2", "text", "text", "int8", "text", "text", "text", "text", "text"])
        jobs = jobs.join(ad, on=acols, how="left", nulls_equal=True)
        ocols = ["state", "state_raw", "exit_code", "derived_exit_code"]
        od = self._dim("outcomes", "e_outcomes", ocols, jobs.select(ocols), ["text"] * 4)
        jobs = jobs.join(od, on=ocols, how="left", nulls_equal=True)
        gd = self._dim("gpus", "e_gpu_mixes", ["gpus", "gpu_count"], jobs.select(
            "gpus", c("gpus").str.extract_all(r"=([0-9]+)").list.eval(
                pl.element().str.slice(1).cast(pl.Int64)).list.sum().fill_null(0)
            .alias("gpu_count")), ["text", "int4"])
        jobs = jobs.join(gd.drop("gpu_count"), on="gpus", how="left")
        derived = (pl.when(c("array_task_id").is_not_null())
                   .then(pl.format("{}_{}", c("array_job_id"), c("array_task_id")))
                   .when(c("het_job_id").is_not_null())
                   .then(pl.format("{}+{}", c("het_job_id"), c("het_job_offset")))
                   .when(c("array_job_id").is_null()).then(c("job_id_raw").cast(pl.String)))
        run = pl.lit(self.run_id, pl.Int32)
        jobs = jobs.with_columns(
            c("submit").alias("submit_time"), c("eligible").alias("eligible_time"),
            c("start").alias("start_time"), c("end").alias("end_time"),
            c("billing").alias("billing_units"),
            c("assocs_id").alias("assoc_id"), c("outcomes_id").alias("outcome_id"),
            c("gpus_id").alias("gpu_mix_id"),
            pl.when(derived == c("job_id")).then(None).otherwise(c("job_id")).alias("job_id"),
            run.alias("first_run_id"), run.alias("last_run_id"),
            (c("submit").dt.year().cast(pl.Int32) * 12 + c("submit").dt.month() - 24001)
            .alias("submit_month"),
            pl.struct("cluster_id", "job_id_raw", "submit").hash(7).alias("key_hash"),
        )
        # prices
        pk = lines.select("price_key").unique()
        prow = []
        for (key,) in pk.iter_rows():
            version, rule, resource, basis, rate = key.split("\x1f")
            prow.append((version, rule, resource, _unit(resource), basis, "charge", rate, rate,
                         card.currency, card.scale, key))
        pdf = pl.DataFrame(prow, schema={k: (pl.Int64 if k == "scale" else pl.String) for k in (
            "card_version", "rule", "resource", "unit", "basis", "kind", "rate", "rate_text",
            "currency", "scale", "price_key")}, orient="row")
        pcols = ["card_version", "rule", "resource", "unit", "basis", "kind", "rate",
                 "rate_text", "currency", "scale"]
        pd_ = self._dim("prices", "e_prices", pcols, pdf.select(pcols),
                        ["text", "text", "text", "text", "text", "text", "numeric", "text",
                         "text", "int2"])
        pdf = pdf.join(pd_, on=pcols)
        lines = lines.join(pdf.select("price_key", c("prices_id").alias("price_id"), "resource",
                                      "unit", "currency"), on="price_key")
        lines = lines.join(jobs.select("cluster", "job_id_raw", "submit", "cluster_id",
                                       "assoc_id"), on=["cluster", "job_id_raw", "submit"])
        lines = lines.with_columns(
            c("submit").alias("submit_time"),
            (pl.date(2000 + c("usage_month") // 12, c("usage_month") % 12 + 1, 1))
            .alias("usage_date"))
        lines = lines.with_columns(c("usage_date").alias("posted_date"))

        # route: new (not stored, not seen in this poll) straight into the tables
        # "Seen earlier in this poll": a one-hash Bloom filter of the poll's keys (4 MiB
        # whatever the poll's size). A false positive only sends a new job through the
        # stage + MERGE path (about 1 % of a 1M-line import), never the other way.
        slot = (jobs["key_hash"] % (1 << 25)).to_numpy()
        seen = pl.Series(((self._bloom[slot >> 3] >> (slot & 7).astype(np.uint8)) & 1)
                         .astype(bool))
        np.bitwise_or.at(self._bloom, slot >> 3, (1 << (slot & 7)).astype(np.uint8))
        stored = c("stored").fill_null(True) if "stored" in jobs.columns else pl.lit(True)
        jobs = jobs.with_columns(seen.alias("maybe_seen"))
        suspects = jobs.filter(~stored & c("maybe_seen"))
        if suspects.height:
            # The filter says "maybe": ask this transaction (it sees its own rows).
            with self.conn.cursor() as cur:
                cur.execute(
                    "SELECT k.i FROM unnest(%s::int2[], %s::int8[], %s::timestamptz[])"
                    " WITH ORDINALITY AS k(c, r, s, i) WHERE EXISTS (SELECT 1 FROM e_jobs j"
                    " WHERE j.cluster_id = k.c AND j.job_id_raw = k.r AND j.submit_time = k.s)",
                    [suspects["cluster_id"].to_list(), suspects["job_id_raw"].to_list(),
                     suspects["submit"].to_list()])
                really = {row[0] - 1 for row in cur.fetchall()}
            fp = suspects.with_row_index("i").filter(
                ~pl.col("i").is_in(list(really))).select("key_hash")
            jobs = jobs.with_columns(
                pl.when(c("key_hash").is_in(fp["key_hash"].implode())).then(False)
                .otherwise(c("maybe_seen")).alias("maybe_seen"))
        jobs = jobs.with_columns((~stored & ~c("maybe_seen")).alias("direct"))
        direct = jobs.filter(c("direct"))
        staged = jobs.filter(~c("direct"))
        with self.conn.cursor() as cur:
            if direct.height:
                copy_binary(cur, "e_jobs", JOB_COLUMNS, direct)
                dl = lines.join(direct.select("cluster_id", "job_id_raw", "submit"),
                                on=["cluster_id", "job_id_raw", "submit"], how="semi")
                copy_binary(cur, "e_charges", _charge_frame(dl), dl, CHARGE_NAMES)
                self._rollup_from_frame(cur, dl)
                self.counts["inserted"] += direct.height
                self.counts["charge_lines"] += dl.height
            if staged.height:
                sl = lines.join(staged.select("cluster_id", "job_id_raw", "submit"),
                                on=["cluster_id", "job_id_raw", "submit"], how="semi")
                self._staged(cur, staged, sl)

    def _rollup_from_frame(self, cur, dl: pl.DataFrame) -> None:  # noqa: ANN001
        c = pl.col
        key = ["posted_date", "cluster_id", "assoc_id", "currency"]
        fine = dl.group_by(key + ["resource", "unit"]).agg(
            c("quantity_micro").sum(), c("amount_micro").sum(), pl.len().alias("lines"),
            pl.struct("job_id_raw", "submit").n_unique().alias("jobs"))
        coarse = dl.group_by(key).agg(
            c("amount_micro").sum(), pl.struct("job_id_raw", "submit").n_unique().alias("jobs"))
        # Deltas of new jobs are summed in memory and applied once, at ``finish``: one
        # row version per rollup row and poll, not one per batch (a job's lines all come
        # in one batch, so the distinct-job counts add up).
        self._fine.append(fine)
        self._coarse.append(coarse)

    def finish(self) -> None:
        """Apply the summed rollup deltas (before the poll commits)."""
        if not self._fine:
            return
        c = pl.col
        key = ["posted_date", "cluster_id", "assoc_id", "currency"]
        fine = pl.concat(self._fine).group_by(key + ["resource", "unit"]).agg(
            c("quantity_micro").sum(), c("amount_micro").sum(), c("lines").sum(),
            c("jobs").sum())
        coarse = pl.concat(self._coarse).group_by(key).agg(
            c("amount_micro").sum(), c("jobs").sum())
        with self.conn.cursor() as cur:
            self._upsert_rollups(cur, fine, coarse)
        self._fine, self._coarse = [], []

    def _upsert_rollups(self, cur, fine: pl.DataFrame, coarse: pl.DataFrame) -> None:  # noqa: ANN001
        f = fine
        cur.execute(
            "INSERT INTO e_rollup_resource AS r SELECT * FROM unnest(%s::date[], %s::int2[],"
            " %s::int4[], %s::text[], %s::text[], %s::text[], %s::int8[], %s::int8[],"
            " %s::int8[], %s::int8[]) ON CONFLICT (posted_month, cluster_id, assoc_id,"
            " currency, resource, unit) DO UPDATE SET quantity_micro = r.quantity_micro +"
            " excluded.quantity_micro, amount_micro = r.amount_micro + excluded.amount_micro,"
            " lines = r.lines + excluded.lines, jobs = r.jobs + excluded.jobs",
            [f[x].to_list() for x in ("posted_date", "cluster_id", "assoc_id", "currency",
                                      "resource", "unit", "quantity_micro", "amount_micro",
                                      "lines", "jobs")])
        g = coarse
        cur.execute(
            "INSERT INTO e_rollup_jobs AS r SELECT * FROM unnest(%s::date[], %s::int2[],"
            " %s::int4[], %s::text[], %s::int8[], %s::int8[]) ON CONFLICT (posted_month,"
            " cluster_id, assoc_id, currency) DO UPDATE SET amount_micro = r.amount_micro +"
            " excluded.amount_micro, jobs = r.jobs + excluded.jobs",
            [g[x].to_list() for x in ("posted_date", "cluster_id", "assoc_id", "currency",
                                      "amount_micro", "jobs")])

    def _staged(self, cur, jobs: pl.DataFrame, lines: pl.DataFrame) -> None:  # noqa: ANN001
        """Jobs that may exist: stage, find the changed ones, MERGE them, replace their
        open-period lines and apply the rollup deltas, all set-based."""
        cols = ", ".join(c for c, _ in JOB_COLUMNS)
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS s_jobs (LIKE e_jobs) ON COMMIT DROP")
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS s_lines (LIKE e_charges) ON COMMIT DROP")
        cur.execute("TRUNCATE s_jobs, s_lines")
        copy_binary(cur, "s_jobs", JOB_COLUMNS, jobs)
        copy_binary(cur, "s_lines", _charge_frame(lines), lines, CHARGE_NAMES)
        cmp = [c for c in _ROW_COLS if c != "last_run_id"]
        a = ", ".join(f"j.{c}" for c in cmp)
        b = ", ".join(f"s.{c}" for c in cmp)
        key = ("j.cluster_id = s.cluster_id AND j.job_id_raw = s.job_id_raw"
               " AND j.submit_time = s.submit_time")
        cur.execute("DROP TABLE IF EXISTS s_changed")
        cur.execute(
            "CREATE TEMP TABLE s_changed ON COMMIT DROP AS SELECT s.cluster_id, s.job_id_raw,"
            " s.submit_time, s.assoc_id AS new_assoc, j.assoc_id AS old_assoc,"
            f" j.job_id_raw IS NULL AS is_new FROM s_jobs s LEFT JOIN e_jobs j ON {key}"
            f" WHERE j.job_id_raw IS NULL OR ({a}) IS DISTINCT FROM ({b})")
        changed = cur.rowcount
        self.counts["staged"] += jobs.height
        self.counts["changed"] += changed
        if not changed:
            return
        values = ", ".join("s." + c for c, _ in JOB_COLUMNS)
        upd = ", ".join(f"{c} = s.{c}" for c, _ in JOB_COLUMNS
                        if c not in ("cluster_id", "job_id_raw", "submit_time", "first_run_id"))
        cur.execute(
            f"MERGE INTO e_jobs j USING (SELECT s.* FROM s_jobs s JOIN s_changed x USING"
            f" (cluster_id, job_id_raw, submit_time)) s ON {key}"
            f" WHEN MATCHED THEN UPDATE SET {upd}"
            f" WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({values})")
        # lines and rollup deltas (closed periods: see the design; the prototype has none)
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS s_delta (posted_month date, cluster_id smallint,"
            " assoc_id int, price_id int, job_id_raw bigint, submit_time timestamptz,"
            " quantity_micro bigint, amount_micro bigint, sign int) ON COMMIT DROP")
        cur.execute(
            "WITH del AS (DELETE FROM e_charges c USING s_changed x WHERE NOT x.is_new"
            " AND c.cluster_id = x.cluster_id AND c.job_id_raw = x.job_id_raw"
            " AND c.submit_time = x.submit_time RETURNING c.*, x.old_assoc)"
            " INSERT INTO s_delta SELECT posted_month, cluster_id, old_assoc, price_id,"
            " job_id_raw, submit_time, -quantity_micro, -amount_micro, -1 FROM del")
        cur.execute(
            "WITH ins AS (INSERT INTO e_charges SELECT l.* FROM s_lines l JOIN s_changed x"
            " USING (cluster_id, job_id_raw, submit_time) RETURNING *)"
            " INSERT INTO s_delta SELECT i.posted_month, i.cluster_id, x.new_assoc, i.price_id,"
            " i.job_id_raw, i.submit_time, i.quantity_micro, i.amount_micro, 1 FROM ins i"
            " JOIN s_changed x USING (cluster_id, job_id_raw, submit_time)")
        for table, extra, sets in (
                ("e_rollup_resource", ", p.resource, p.unit",
                 "quantity_micro = r.quantity_micro + excluded.quantity_micro, lines = r.lines"
                 " + excluded.lines, "),
                ("e_rollup_jobs", "", "")):
            qsum = ", sum(d.quantity_micro)" if extra else ""
            nlines = ", sum(d.sign)" if extra else ""
            cur.execute(
                f"INSERT INTO {table} AS r SELECT d.posted_month, d.cluster_id, d.assoc_id,"
                f" p.currency{extra}{qsum}, sum(d.amount_micro){nlines},"
                " count(DISTINCT (d.job_id_raw, d.submit_time)) FILTER (WHERE d.sign > 0)"
                " - count(DISTINCT (d.job_id_raw, d.submit_time)) FILTER (WHERE d.sign < 0)"
                " FROM s_delta d JOIN e_prices p ON p.id = d.price_id"
                f" GROUP BY d.posted_month, d.cluster_id, d.assoc_id, p.currency{extra}"
                f" ON CONFLICT ON CONSTRAINT {table}_pkey DO UPDATE SET {sets}"
                " amount_micro = r.amount_micro + excluded.amount_micro,"
                " jobs = r.jobs + excluded.jobs")
        # buckets a change emptied (an account moved, a job no longer charged)
        cur.execute("DELETE FROM e_rollup_resource WHERE lines = 0 AND jobs = 0")
        cur.execute("DELETE FROM e_rollup_jobs WHERE jobs = 0 AND amount_micro = 0")
        cur.execute("TRUNCATE s_delta")


CHARGE_NAMES = [c for c, _ in CHARGE_COLUMNS]


def _unit(resource: str) -> str:
    from billing.records import resource_unit
    return resource_unit(resource)


def _charge_frame(lines: pl.DataFrame) -> list[tuple[str, str]]:
    return [("job_id_raw", "int8"), ("submit", "ts"), ("quantity_micro", "int8"),
            ("amount_micro", "int8"), ("usage_date", "date"), ("posted_date", "date"),
            ("price_id", "int4"), ("cluster_id", "int2")]


LOOKUP_COLUMNS = [("cluster", "text"), ("job_id_raw", "int8"), ("submit", "ts"),
                  ("raw_digest", "bytea"), ("i", "int4")]


def lookup_factory(conn: psycopg.Connection):  # noqa: ANN201
    """The skip path's lookup (reading thread, its own connection, read-only but for a
    temp table): for the batch's job keys, whether a row exists and whether its raw
    digest equals. The keys go in by binary COPY (no per-key Python objects), the
    answer is one probe of the primary key per key (LATERAL ... OFFSET 0 keeps the
    planner from a merge join over a whole partition)."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS s_lookup (cluster text, job_id_raw bigint,"
                 " submit_time timestamptz, raw_digest bytea, i int) ON COMMIT DELETE ROWS")

    def lookup(keys: pl.DataFrame) -> pl.DataFrame:
        n = keys.height
        frame = keys.with_columns(pl.int_range(n, dtype=pl.Int32).alias("i"))
        with conn.transaction(), conn.cursor() as cur:
            copy_binary(cur, "s_lookup", LOOKUP_COLUMNS, frame,
                        ["cluster", "job_id_raw", "submit_time", "raw_digest", "i"])
            cur.execute(
                "SELECT k.i, j.raw_digest = k.raw_digest FROM s_lookup k"
                " JOIN e_clusters cl ON cl.name = k.cluster"
                " CROSS JOIN LATERAL (SELECT j.raw_digest FROM e_jobs j WHERE"
                " j.cluster_id = cl.id AND j.job_id_raw = k.job_id_raw"
                " AND j.submit_time = k.submit_time OFFSET 0) j")
            rows = cur.fetchall()
        exists = np.zeros(n, dtype=bool)
        skip = np.zeros(n, dtype=bool)
        if rows:
            idx = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            same = np.fromiter((bool(r[1]) for r in rows), dtype=bool, count=len(rows))
            exists[idx] = True
            skip[idx] = same
        return pl.DataFrame({"skip": skip, "exists": exists})
    return lookup
