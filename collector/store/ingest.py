"""The poll's writer for frames (docs/design/engine.md §2, §9): the columnar path into the
compact store of migration 0011.

``Store`` takes what the columnar reader and the vector pricer produce per chunk (a jobs
frame in the reader's columns, a charge-lines frame in the pricer's) and writes it in
the poll's ONE transaction (the session that also holds the run bookkeeping and the
watermark):

- dimensions (clusters, assocs, outcomes, GPU mixes, prices) get-or-created for the
  chunk's distinct values, cached for the poll;
- NEW jobs (the skip lookup said they are not stored, and this poll has not written their
  key before): binary COPY straight into ``job_rows`` and ``charge_rows``; their rollup
  deltas are summed in memory;
- every other job: binary COPY into the stage ``hpcb_stage_job_rows``, then the
  JobWriter's statements (changed rows, assoc moves, MERGE) and a line replacement on the
  compact tables (open periods only; deltas from what was deleted and inserted);
- ``finish`` applies the summed deltas once (collector.store.rollups) and returns the
  counts the run reports.

``ensure_partitions`` creates missing months on a separate AUTOCOMMIT connection (ATTACH
does not block the poll's transaction or readers). ``lookup_factory`` is the skip
path's lookup. ``frames_from_records`` turns today's JobRecords/ChargeLines into these
frames (JSON and pyslurm sources, the per-record fallback).

Frames (CONTRACT.md): jobs: cluster, job_id, job_id_raw, submit (Datetime us UTC), state,
state_raw, array_job_id, array_task_id, het_job_id, het_job_offset, name, user, uid,
group, account, partition, qos, wckey, reservation, exit_code, derived_exit_code,
eligible, start, end, elapsed_s, timelimit_min, nodes, cpus, mem_bytes, billing, gpus
(``a100=2,untyped=1``), node_list, cpu_time_alloc_s, cpu_used_ms, max_rss_bytes,
mem_used_byte_s, energy_j, db_index, final, raw_digest (16 bytes or null), and optionally
``exists`` (from the lookup). Lines: cluster, job_id_raw, submit, usage_month (months
since 2000-01), price_key (card version \\x1f rule \\x1f resource \\x1f basis \\x1f rate),
quantity_micro, amount_micro, optionally posted_month (default usage_month) and kind
(default 'charge').
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import numpy as np
import polars as pl
import psycopg
from sqlalchemy.orm import Session

from billing.records import ChargeLine, JobRecord, resource_unit
from collector.store.bulk import Column, Kind, copy_frame, copy_statement
from collector.store.db import raw_connection
from collector.store.errors import ChargeValueError, ClosedPeriodError
from collector.store.job_writer import (
    _ROW_COLUMNS,
    _SQL_ASSOC_MOVES,
    _SQL_CHANGED,
    _SQL_CREATE_ROWS,
    _SQL_MERGE,
    _SQL_TRUNCATE_ROWS,
)
from collector.store.periods import closed_periods
from collector.store.rollups import SQL_CREATE_DELTA, fold_new_lines, mark_written, record_deltas

MICRO = 1_000_000
_BLOOM_BITS = 1 << 25

JOB_KINDS: dict[str, Kind] = {
    "job_id_raw": "int8", "submit_time": "ts", "eligible_time": "ts", "start_time": "ts",
    "end_time": "ts", "elapsed_s": "int8", "timelimit_min": "int8", "mem_bytes": "int8",
    "billing_units": "int8", "cpu_time_alloc_s": "int8", "cpu_used_ms": "int8",
    "max_rss_bytes": "int8", "energy_j": "int8", "array_job_id": "int8", "het_job_id": "int8",
    "first_run_id": "int8", "last_run_id": "int8", "assoc_id": "int4", "outcome_id": "int4",
    "gpu_mix_id": "int4", "nodes": "int4", "cpus": "int4", "array_task_id": "int4",
    "het_job_offset": "int4", "cluster_id": "int2", "final": "bool", "db_index": "numeric",
    "mem_used_byte_s": "numeric", "job_id": "text", "name": "text", "node_list": "text",
    "raw_digest": "bytea"}
JOB_COLUMNS: list[Column] = [(c, JOB_KINDS[c]) for c in _ROW_COLUMNS]
LINE_COLUMNS: list[Column] = [
    ("job_id_raw", "int8"), ("submit_time", "ts"), ("quantity_micro", "int8"),
    ("amount_micro", "int8"), ("usage_month", "date"), ("posted_month", "date"),
    ("price_id", "int4"), ("cluster_id", "int2")]
_LINE_NAMES = [c for c, _ in LINE_COLUMNS]
_COPY_JOBS = copy_statement("job_rows", _ROW_COLUMNS)
_COPY_STAGE_JOBS = copy_statement("hpcb_stage_job_rows", _ROW_COLUMNS)
_COPY_LINES = copy_statement("charge_rows", _LINE_NAMES)
_COPY_STAGE_LINES = copy_statement("hpcb_stage_charge_rows", _LINE_NAMES)
_SQL_CREATE_STAGE_LINES = ("CREATE TEMP TABLE IF NOT EXISTS hpcb_stage_charge_rows"
                           " (LIKE charge_rows) ON COMMIT DELETE ROWS")
_SQL_TRUNCATE_STAGE_LINES = "TRUNCATE hpcb_stage_charge_rows"
_OPEN = ("NOT EXISTS (SELECT 1 FROM billing_periods p"
         " WHERE p.period = to_char({a}.posted_month, 'YYYY-MM'))")
_CANON = ("ROW({a}.usage_month, {a}.posted_month, {a}.price_id, {a}.quantity_micro,"
          " {a}.amount_micro)::text COLLATE \"C\"")
_KEY = ("{a}.cluster_id = {b}.cluster_id AND {a}.job_id_raw = {b}.job_id_raw"
        " AND {a}.submit_time = {b}.submit_time")
# The staged jobs' lines: per job, the digest of its stored open-period lines and of its
# staged lines; jobs whose digests differ get theirs replaced. Deltas with the job's
# (already merged) assoc.
_SQL_REPLACE_LINES = (
    "WITH keys AS (SELECT cluster_id, job_id_raw, submit_time FROM hpcb_stage_job_rows),"
    " old AS (SELECT c.cluster_id, c.job_id_raw, c.submit_time,"
    f" md5(string_agg({_CANON.format(a='c')}, ',' ORDER BY {_CANON.format(a='c')})) AS d"
    f" FROM keys k JOIN charge_rows c ON {_KEY.format(a='c', b='k')}"
    f" WHERE {_OPEN.format(a='c')} GROUP BY 1, 2, 3),"
    " new AS (SELECT s.cluster_id, s.job_id_raw, s.submit_time,"
    f" md5(string_agg({_CANON.format(a='s')}, ',' ORDER BY {_CANON.format(a='s')})) AS d"
    " FROM hpcb_stage_charge_rows s GROUP BY 1, 2, 3),"
    " changed AS MATERIALIZED (SELECT k.* FROM keys k"
    f" LEFT JOIN old o ON {_KEY.format(a='o', b='k')}"
    f" LEFT JOIN new n ON {_KEY.format(a='n', b='k')} WHERE o.d IS DISTINCT FROM n.d),"
    f" deleted AS (DELETE FROM charge_rows c USING changed x WHERE {_KEY.format(a='c', b='x')}"
    f" AND {_OPEN.format(a='c')} RETURNING c.*),"
    " inserted AS (INSERT INTO charge_rows SELECT s.* FROM hpcb_stage_charge_rows s"
    f" JOIN changed x ON {_KEY.format(a='s', b='x')} RETURNING *),"
    " moved AS (SELECT d.*, -1 AS sign FROM deleted d UNION ALL SELECT i.*, 1 FROM inserted i),"
    " delta AS (INSERT INTO hpcb_rollup_delta SELECT m.posted_month, m.cluster_id, j.assoc_id,"
    " m.price_id, m.job_id_raw, m.submit_time, m.quantity_micro, m.amount_micro, m.sign"
    f" FROM moved m JOIN job_rows j ON {_KEY.format(a='j', b='m')} RETURNING 1)"
    " SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM delta)")
_SQL_PARTITION = "SELECT hpcb_month_partition(%s, %s)"
_SQL_CLUSTERS = ("INSERT INTO clusters (name) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING")
_SQL_CLUSTER_IDS = "SELECT name, id FROM clusters WHERE name = ANY(%s::text[])"
_SQL_ASSOCS = (
    "INSERT INTO assocs (cluster_id, account, user_name, uid, group_name, partition, qos,"
    " wckey, reservation) SELECT * FROM unnest(%s::int2[], %s::text[], %s::text[],"
    " %s::int8[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[])"
    " ON CONFLICT DO NOTHING")
_SQL_ASSOC_IDS = (
    "SELECT a.id, k.ord FROM unnest(%s::int2[], %s::text[], %s::text[], %s::int8[],"
    " %s::text[], %s::text[], %s::text[], %s::text[], %s::text[]) WITH ORDINALITY AS k(c, ac,"
    " u, uid, g, p, q, w, r, ord) JOIN assocs a ON a.cluster_id = k.c"
    " AND a.account IS NOT DISTINCT FROM k.ac AND a.user_name IS NOT DISTINCT FROM k.u"
    " AND a.uid IS NOT DISTINCT FROM k.uid AND a.group_name IS NOT DISTINCT FROM k.g"
    " AND a.partition IS NOT DISTINCT FROM k.p AND a.qos IS NOT DISTINCT FROM k.q"
    " AND a.wckey IS NOT DISTINCT FROM k.w AND a.reservation IS NOT DISTINCT FROM k.r")
_SQL_OUTCOMES = (
    "INSERT INTO outcomes (state, state_raw, exit_code, derived_exit_code)"
    " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])"
    " ON CONFLICT DO NOTHING")
_SQL_OUTCOME_IDS = (
    "SELECT o.id, k.ord FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])"
    " WITH ORDINALITY AS k(s, r, e, d, ord) JOIN outcomes o ON o.state = k.s"
    " AND o.state_raw = k.r AND o.exit_code IS NOT DISTINCT FROM k.e"
    " AND o.derived_exit_code IS NOT DISTINCT FROM k.d")
_SQL_GPUS = ("INSERT INTO gpu_mixes (gpus, gpu_count) SELECT * FROM unnest(%s::jsonb[],"
             " %s::int4[]) ON CONFLICT DO NOTHING")
_SQL_GPU_IDS = ("SELECT g.id, k.ord FROM unnest(%s::jsonb[]) WITH ORDINALITY AS k(j, ord)"
                " JOIN gpu_mixes g ON g.gpus = k.j")
_SQL_PRICES = (
    "INSERT INTO prices (rate_card_id, rule, resource, unit, basis, kind, rate, currency)"
    " SELECT * FROM unnest(%s::int8[], %s::text[], %s::text[], %s::text[], %s::text[],"
    " %s::text[], %s::numeric[], %s::text[]) ON CONFLICT DO NOTHING")
_SQL_PRICE_IDS = (
    "SELECT p.id, k.ord FROM unnest(%s::int8[], %s::text[], %s::text[], %s::text[],"
    " %s::text[], %s::text[], %s::numeric[], %s::text[]) WITH ORDINALITY AS k(c, ru, re, u,"
    " b, ki, ra, cu, ord) JOIN prices p ON p.rate_card_id = k.c AND p.rule = k.ru"
    " AND p.resource = k.re AND p.unit = k.u AND p.basis = k.b AND p.kind = k.ki"
    " AND p.rate = k.ra AND p.currency = k.cu")

_ASSOC_KEY = ["cluster_id", "account", "user", "uid", "group", "partition", "qos", "wckey",
              "reservation"]
_OUTCOME_KEY = ["state", "state_raw", "exit_code", "derived_exit_code"]
_KEY3 = ["cluster_id", "job_id_raw", "submit_time"]


@dataclass(frozen=True, slots=True)
class WriteCounts:
    """What a poll's writes did (``Store.finish``)."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    lines_written: int = 0


def _month_date(index: pl.Expr) -> pl.Expr:
    return pl.date(2000 + index // 12, index % 12 + 1, 1)


def _gpus_json(key: str) -> tuple[str, int]:
    """A gpus key (``a100=2,untyped=1``) as the jsonb the JobWriter stores (a type given
    twice is summed, like collector.store.jobs) and its count."""
    gpus: dict[str, int] = {}
    for item in key.split(",") if key else ():
        gpu_type, _, count = item.rpartition("=")
        gpus[gpu_type] = gpus.get(gpu_type, 0) + int(count)
    return (json.dumps(gpus, separators=(",", ":"), sort_keys=True, ensure_ascii=False),
            sum(gpus.values()))


class Store:
    """The writing path of one poll: the session's psycopg 3 connection, its transaction.

    ``rate_card_ids`` maps card versions to ids (``ensure_rate_card``); ``currency`` is
    the cards' currency by version.
    """

    def __init__(self, session: Session, run_id: int, rate_card_ids: Mapping[str, int],
                 currencies: Mapping[str, str]) -> None:
        self._session = session
        self._conn = raw_connection(session, "the ingest writer")
        self._run_id = int(run_id)
        self._cards = dict(rate_card_ids)
        self._currencies = dict(currencies)
        self._dims: dict[str, dict[tuple[Any, ...], int]] = {
            k: {} for k in ("clusters", "assocs", "outcomes", "gpus", "prices")}
        # "Written earlier in this poll": a one-hash Bloom filter of the keys (2^25 bits,
        # 4 MiB whatever the poll's size, engine.md §9). A false positive only sends a new
        # job through the stage + MERGE path, never the other way round.
        self._bloom = np.zeros(_BLOOM_BITS >> 3, dtype=np.uint8)
        self._inserted = self._updated = self._unchanged = self._lines = 0
        self._closed = closed_periods(session, lock=True)

    @property
    def closed(self) -> frozenset[str]:
        """The closed billing periods (``YYYY-MM``) read when the writer was made."""
        return frozenset(self._closed)

    # ------------------------------------------------------------- dimensions
    def _ids(self, kind: str, keys: list[tuple[Any, ...]], insert: str, select: str,
             columns: Callable[[list[tuple[Any, ...]]], list[list[Any]]]) -> list[int]:
        known = self._dims[kind]
        missing = sorted({k for k in keys if k not in known}, key=repr)
        if missing:
            arrays = columns(missing)
            with self._conn.cursor() as cur:
                cur.execute(insert, arrays)
                cur.execute(select, arrays)
                for dim_id, ordinal in cur.fetchall():
                    known[missing[ordinal - 1]] = int(dim_id)
        return [known[k] for k in keys]

    def _gpu_ids(self, keys: list[str]) -> list[int]:
        known = self._dims["gpus"]
        docs = {k: _gpus_json(k) for k in keys}
        missing = sorted({docs[k] for k in keys if (docs[k][0],) not in known})
        if missing:
            with self._conn.cursor() as cur:
                cur.execute(_SQL_GPUS, ([d for d, _ in missing], [n for _, n in missing]))
                cur.execute(_SQL_GPU_IDS, ([d for d, _ in missing],))
                for dim_id, ordinal in cur.fetchall():
                    known[(missing[ordinal - 1][0],)] = int(dim_id)
        return [known[(docs[k][0],)] for k in keys]

    def _cluster_ids(self, names: list[str]) -> dict[str, int]:
        known = self._dims["clusters"]
        missing = sorted({n for n in names if (n,) not in known})
        if missing:
            with self._conn.cursor() as cur:
                cur.execute(_SQL_CLUSTERS, (missing,))
                cur.execute(_SQL_CLUSTER_IDS, (missing,))
                for name, cid in cur.fetchall():
                    known[(name,)] = int(cid)
        return {n: known[(n,)] for n in set(names)}

    def _job_rows(self, jobs: pl.DataFrame) -> pl.DataFrame:
        c = pl.col
        clusters = self._cluster_ids(jobs["cluster"].unique().to_list())
        jobs = jobs.with_columns(c("cluster").replace_strict(clusters, return_dtype=pl.Int16)
                                 .alias("cluster_id"))
        akeys = jobs.select(*_ASSOC_KEY).unique()
        aids = self._ids("assocs", list(akeys.iter_rows()), _SQL_ASSOCS, _SQL_ASSOC_IDS,
                         lambda rows: [list(col) for col in zip(*rows, strict=True)])
        jobs = jobs.join(akeys.with_columns(pl.Series("assoc_id", aids, pl.Int32)),
                         on=_ASSOC_KEY, how="left", nulls_equal=True)
        okeys = jobs.select(*_OUTCOME_KEY).unique()
        oids = self._ids("outcomes", list(okeys.iter_rows()), _SQL_OUTCOMES, _SQL_OUTCOME_IDS,
                         lambda rows: [list(col) for col in zip(*rows, strict=True)])
        jobs = jobs.join(okeys.with_columns(pl.Series("outcome_id", oids, pl.Int32)),
                         on=_OUTCOME_KEY, how="left", nulls_equal=True)
        gkeys = jobs.select(c("gpus").fill_null("")).unique()
        gids = self._gpu_ids([k for (k,) in gkeys.iter_rows()])
        jobs = jobs.with_columns(c("gpus").fill_null("")).join(
            gkeys.with_columns(pl.Series("gpu_mix_id", gids, pl.Int32)), on="gpus", how="left")
        derived = (pl.when(c("array_task_id").is_not_null())
                   .then(pl.format("{}_{}", c("array_job_id"), c("array_task_id")))
                   .when(c("het_job_id").is_not_null())
                   .then(pl.format("{}+{}", c("het_job_id"), c("het_job_offset")))
                   .when(c("array_job_id").is_null()).then(c("job_id_raw").cast(pl.String)))
        return jobs.with_columns(
            c("submit").alias("submit_time"), c("eligible").alias("eligible_time"),
            c("start").alias("start_time"), c("end").alias("end_time"),
            c("billing").alias("billing_units"),
            pl.when(derived == c("job_id")).then(None).otherwise(c("job_id")).alias("job_id"),
            pl.lit(self._run_id, pl.Int64).alias("first_run_id"),
            pl.lit(self._run_id, pl.Int64).alias("last_run_id"))

    def _line_rows(self, lines: pl.DataFrame, cluster_ids: pl.DataFrame) -> pl.DataFrame:
        c = pl.col
        if "posted_month" not in lines.columns:
            lines = lines.with_columns(c("usage_month").alias("posted_month"))
        if "kind" not in lines.columns:
            lines = lines.with_columns(pl.lit("charge").alias("kind"))
        pkeys = lines.select("price_key", "kind").unique()
        rows = []
        for key, kind in pkeys.iter_rows():
            version, rule, resource, basis, rate = key.split("\x1f")
            if version not in self._cards:
                raise ChargeValueError(f"rate card {version!r} is not stored")
            rows.append((self._cards[version], rule, resource, resource_unit(resource), basis,
                         kind, Decimal(rate), self._currencies[version]))
        pids = self._ids("prices", rows, _SQL_PRICES, _SQL_PRICE_IDS,
                         lambda rs: [list(col) for col in zip(*rs, strict=True)])
        lines = lines.join(pkeys.with_columns(
            pl.Series("price_id", pids, pl.Int32),
            pl.Series("currency", [r[7] for r in rows], pl.String),
            pl.Series("resource", [r[2] for r in rows], pl.String),
            pl.Series("unit", [r[3] for r in rows], pl.String)), on=["price_key", "kind"])
        lines = lines.join(cluster_ids, on="cluster").with_columns(
            c("submit").alias("submit_time"), _month_date(c("usage_month")).alias("usage_month"),
            _month_date(c("posted_month")).alias("posted_month"))
        closed = {f"{d:%Y-%m}" for d in lines["posted_month"].unique().to_list()} & self._closed
        if closed:
            raise ClosedPeriodError(set(closed), "the ingest writer would post lines in a"
                                                 " closed period")
        return lines

    # ------------------------------------------------------------- partitions
    @staticmethod
    def ensure_partitions(look: psycopg.Connection[Any], jobs: pl.DataFrame,
                          lines: pl.DataFrame) -> None:
        """Create the months' partitions on ``look`` (AUTOCOMMIT, not the poll's
        connection). Idempotent; an empty partition left by a failed poll is harmless."""
        months = jobs.select(pl.col("submit").dt.truncate("1mo").dt.date().unique())
        usage = lines.select(_month_date(pl.col("usage_month")).unique())
        with look.cursor() as cur:
            for (month,) in months.iter_rows():
                cur.execute(_SQL_PARTITION, ("job_rows", month))
            for (month,) in usage.iter_rows():
                cur.execute(_SQL_PARTITION, ("charge_rows", month))

    # ------------------------------------------------------------- writing
    def write(self, jobs: pl.DataFrame, lines: pl.DataFrame) -> None:
        """One chunk: ``jobs`` (deduplicated by key, last wins) and their lines."""
        if not jobs.height:
            return
        # The last record of a key wins (the contract asks callers to dedupe; this keeps a
        # caller that did not from failing the COPY on the primary key).
        jobs = jobs.unique(subset=["cluster", "job_id_raw", "submit"], keep="last",
                           maintain_order=True)
        rows = self._job_rows(jobs)
        cluster_ids = rows.select("cluster", "cluster_id").unique()
        lrows = self._line_rows(lines, cluster_ids)
        slot = (rows.select(pl.struct(*_KEY3).hash(7) % _BLOOM_BITS).to_series()
                .to_numpy().astype(np.int64))
        byte, bit = slot >> 3, (slot & 7).astype(np.uint8)
        seen = pl.Series(((self._bloom[byte] >> bit) & 1).astype(bool))
        np.bitwise_or.at(self._bloom, byte, (np.uint8(1) << bit).astype(np.uint8))
        stored = (rows["exists"].fill_null(True) if "exists" in rows.columns
                  else pl.Series([True] * rows.height))
        direct_mask = ~stored & ~seen
        direct = rows.filter(direct_mask)
        staged = rows.filter(~direct_mask)
        with self._conn.cursor() as cur:
            if direct.height:
                copy_frame(cur, _COPY_JOBS, direct, JOB_COLUMNS)
                dl = lrows.join(direct.select(*_KEY3, "assoc_id"), on=_KEY3)
                copy_frame(cur, _COPY_LINES, dl, LINE_COLUMNS)
                # The chunk's rollup deltas are folded now (into the transaction's pending
                # sums, applied once at the end): memory stays a chunk's, not the poll's.
                # These jobs are new, so their sums and entries come from these lines.
                fold_new_lines(self._session, cur, dl)
                self._inserted += direct.height
                self._lines += dl.height
            if staged.height:
                self._staged(cur, staged, lrows.join(staged.select(*_KEY3), on=_KEY3))

    def _staged(self, cur: psycopg.Cursor[Any], jobs: pl.DataFrame, lines: pl.DataFrame) -> None:
        cur.execute(_SQL_CREATE_ROWS)
        cur.execute(_SQL_TRUNCATE_ROWS)
        cur.execute(_SQL_CREATE_STAGE_LINES)
        cur.execute(_SQL_TRUNCATE_STAGE_LINES)
        copy_frame(cur, _COPY_STAGE_JOBS, jobs, JOB_COLUMNS)
        copy_frame(cur, _COPY_STAGE_LINES, lines, LINE_COLUMNS)
        cur.execute(_SQL_CHANGED)
        changed = cur.fetchall()
        cur.execute(SQL_CREATE_DELTA)
        cur.execute(_SQL_ASSOC_MOVES)
        # Folded on its own: distinct-job deltas are right per statement only (a job
        # moved and repriced would otherwise count -1 +1 in its new bucket, not +1).
        record_deltas(self._session)
        cur.execute(_SQL_MERGE, {"run_id": self._run_id})
        cur.execute(_SQL_REPLACE_LINES)
        row = cur.fetchone()
        assert row is not None
        inserted_lines, _ = row
        new = sum(1 for r in changed if r[3])
        self._inserted += new
        self._updated += len(changed) - new
        self._unchanged += jobs.height - len(changed)
        self._lines += int(inserted_lines)
        record_deltas(self._session)

    def finish(self) -> WriteCounts:
        """Note the writes (the pending rollup deltas are applied once, before the
        commit: collector.store.rollups) and return the counts; the caller then commits."""
        mark_written(self._session)
        return WriteCounts(self._inserted, self._updated, self._unchanged, self._lines)


# ------------------------------------------------------------------- skip lookup

_SQL_CREATE_LOOKUP = ("CREATE TEMP TABLE IF NOT EXISTS hpcb_lookup (cluster text,"
                      " job_id_raw bigint, submit_time timestamptz, raw_digest bytea, i int)"
                      " ON COMMIT DELETE ROWS")
_COPY_LOOKUP = copy_statement("hpcb_lookup", ["cluster", "job_id_raw", "submit_time",
                                              "raw_digest", "i"])
_LOOKUP_COLUMNS: list[Column] = [("cluster", "text"), ("job_id_raw", "int8"), ("submit", "ts"),
                                 ("raw_digest", "bytea"), ("i", "int4")]
_SQL_LOOKUP = (
    "SELECT k.i, j.raw_digest = k.raw_digest FROM hpcb_lookup k"
    " JOIN clusters cl ON cl.name = k.cluster"
    " CROSS JOIN LATERAL (SELECT j.raw_digest FROM job_rows j WHERE j.cluster_id = cl.id"
    " AND j.job_id_raw = k.job_id_raw AND j.submit_time = k.submit_time OFFSET 0) j")


def lookup_factory(conn: psycopg.Connection[Any]) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """The skip path's lookup on ``conn`` (the reading thread's own connection): for a
    frame of (cluster, job_id_raw, submit, raw_digest), whether each key is stored
    (``exists``) and stored with the same digest (``skip``). Keys go in by binary COPY;
    one primary-key probe each."""

    def lookup(keys: pl.DataFrame) -> pl.DataFrame:
        n = keys.height
        frame = keys.with_columns(pl.int_range(n, dtype=pl.Int32).alias("i"))
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_SQL_CREATE_LOOKUP)
            copy_frame(cur, _COPY_LOOKUP, frame, _LOOKUP_COLUMNS)
            cur.execute(_SQL_LOOKUP)
            found = cur.fetchall()
        exists = [False] * n
        skip = [False] * n
        for i, same in found:
            exists[i] = True
            skip[i] = bool(same)
        return pl.DataFrame({"skip": skip, "exists": exists})
    return lookup


# ----------------------------------------------------------- records -> frames

_JOB_SCHEMA: dict[str, Any] = {
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
    "mem_used_byte_s": pl.Int128, "energy_j": pl.Int64, "db_index": pl.Int128,
    "final": pl.Boolean, "raw_digest": pl.Binary,
}
_LINE_SCHEMA: dict[str, Any] = {
    "cluster": pl.String, "job_id_raw": pl.Int64, "submit": pl.Datetime("us", "UTC"),
    "usage_month": pl.Int32, "posted_month": pl.Int32, "kind": pl.String,
    "price_key": pl.String, "quantity_micro": pl.Int64, "amount_micro": pl.Int64,
}
_MS = Decimal(1000)


def _micro(value: Decimal, what: str) -> int:
    scaled = value * MICRO
    if scaled != scaled.to_integral_value():
        raise ChargeValueError(f"{what} {value} has more than 6 decimals")
    return int(scaled)


def _month_index(period: str) -> int:
    return (int(period[:4]) - 2000) * 12 + int(period[5:7]) - 1


def frames_from_records(records: Iterable[JobRecord], lines: Iterable[ChargeLine]
                        ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Today's records as the writer's frames (per-record sources and fallbacks). CPU
    seconds are stored as milliseconds, rounded half away from zero like numeric(18, 3)."""
    jobs = [{
        "cluster": r.cluster, "job_id": r.job_id, "job_id_raw": r.job_id_raw,
        "submit": r.submit.astimezone(UTC), "state": r.state, "state_raw": r.state_raw,
        "array_job_id": r.array_job_id, "array_task_id": r.array_task_id,
        "het_job_id": r.het_job_id, "het_job_offset": r.het_job_offset, "name": r.name,
        "user": r.user, "uid": r.uid, "group": r.group, "account": r.account,
        "partition": r.partition, "qos": r.qos, "wckey": r.wckey, "reservation": r.reservation,
        "exit_code": r.exit_code, "derived_exit_code": r.derived_exit_code,
        "eligible": r.eligible, "start": r.start, "end": r.end, "elapsed_s": r.elapsed_s,
        "timelimit_min": r.timelimit_min, "nodes": r.nodes, "cpus": r.cpus,
        "mem_bytes": r.mem_bytes, "billing": r.billing,
        "gpus": ",".join(f"{t}={n}" for t, n in r.gpus), "node_list": r.node_list,
        "cpu_time_alloc_s": r.cpu_time_alloc_s,
        "cpu_used_ms": (None if r.cpu_used_s is None else
                        int((r.cpu_used_s * _MS).quantize(Decimal(1), ROUND_HALF_UP))),
        "max_rss_bytes": r.max_rss_bytes, "mem_used_byte_s": r.mem_used_byte_s,
        "energy_j": r.energy_j, "db_index": r.db_index, "final": r.final,
        "raw_digest": None if r.raw_digest is None else bytes.fromhex(r.raw_digest),
    } for r in records]
    rows = [{
        "cluster": x.cluster, "job_id_raw": x.job_id_raw, "submit": x.submit.astimezone(UTC),
        "usage_month": _month_index(x.usage_period),
        "posted_month": _month_index(x.posted_period), "kind": x.kind,
        "price_key": "\x1f".join((x.rate_card, x.rule, x.resource, x.basis, str(x.rate))),
        "quantity_micro": _micro(x.quantity, "quantity"),
        "amount_micro": _micro(x.amount, "amount"),
    } for x in lines]
    return (pl.DataFrame(jobs, schema=_JOB_SCHEMA, orient="row") if jobs else
            pl.DataFrame(schema=_JOB_SCHEMA),
            pl.DataFrame(rows, schema=_LINE_SCHEMA, orient="row") if rows else
            pl.DataFrame(schema=_LINE_SCHEMA))


def month_of(value: date) -> int:
    """A date's month as the frames' month index (months since 2000-01)."""
    return (value.year - 2000) * 12 + value.month - 1


# ------------------------------------------------------------ existing keys

_SQL_CREATE_KEYS = ("CREATE TEMP TABLE IF NOT EXISTS hpcb_keys (cluster text, job_id_raw bigint,"
                    " submit_time timestamptz, i int) ON COMMIT DELETE ROWS")
_SQL_TRUNCATE_KEYS = "TRUNCATE hpcb_keys"
_COPY_KEYS = copy_statement("hpcb_keys", ["cluster", "job_id_raw", "submit_time", "i"])
_KEYS_COLUMNS: list[Column] = [("cluster", "text"), ("job_id_raw", "int8"), ("submit", "ts"),
                               ("i", "int4")]
# One primary-key probe per key, in the one partition of its submit month (run-time
# pruning of the LATERAL subquery; OFFSET 0 keeps it from being flattened into a join).
_SQL_EXISTING = (
    "SELECT k.i FROM hpcb_keys k JOIN clusters cl ON cl.name = k.cluster"
    " CROSS JOIN LATERAL (SELECT 1 FROM job_rows j WHERE j.cluster_id = cl.id"
    " AND j.job_id_raw = k.job_id_raw AND j.submit_time = k.submit_time OFFSET 0) j")


def existing(conn: psycopg.Connection[Any], jobs: pl.DataFrame) -> pl.Series:
    """Whether each row's key (cluster, job_id_raw, submit) is stored, as seen by
    ``conn``'s transaction: on the poll's connection that includes what this poll wrote.
    Keys go in by binary COPY into a temporary table (emptied first)."""
    n = jobs.height
    mask = np.zeros(n, dtype=bool)
    if n:
        frame = jobs.select("cluster", "job_id_raw", "submit").with_columns(
            pl.int_range(n, dtype=pl.Int32).alias("i"))
        with conn.cursor() as cur:
            cur.execute(_SQL_CREATE_KEYS)
            cur.execute(_SQL_TRUNCATE_KEYS)
            copy_frame(cur, _COPY_KEYS, frame, _KEYS_COLUMNS)
            cur.execute(_SQL_EXISTING)
            found = [int(i) for (i,) in cur.fetchall()]
        if found:
            mask[np.asarray(found, dtype=np.int64)] = True
    return pl.Series("exists", mask, dtype=pl.Boolean)


def ensure_partitions_in(conn: psycopg.Connection[Any], jobs: pl.DataFrame,
                         lines: pl.DataFrame, done: set[tuple[str, date]]) -> None:
    """The months' partitions, in ``conn``'s transaction (as the JobWriter creates
    them); ``done``: those already ensured in this poll (updated)."""
    months = jobs.select(pl.col("submit").dt.truncate("1mo").dt.date().unique())
    usage = lines.select(_month_date(pl.col("usage_month")).unique())
    wanted = ([("job_rows", m) for (m,) in months.iter_rows()]
              + [("charge_rows", m) for (m,) in usage.iter_rows()])
    missing = [w for w in wanted if w not in done]
    if missing:
        with conn.cursor() as cur:
            for parent, month in missing:
                cur.execute(_SQL_PARTITION, (parent, month))
        done.update(missing)
