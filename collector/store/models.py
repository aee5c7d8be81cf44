"""The database schema of hpc-billing, as SQLAlchemy 2 declarative models.

Design notes: docs/design/store.md.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
    CHAR,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# One naming convention for every constraint, so migrations can name (and later drop)
# constraints deterministically.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

RUN_KINDS = ("poll", "file", "backfill", "reprice")
DB_INDEX_MAX = 2**64 - 1         # jobs.db_index: slurmdbd's unsigned 64-bit DBIndex
RUN_OUTCOMES = ("running", "ok", "partial", "failed")
CHARGE_KINDS = ("charge", "correction")
CHARGE_BASES = ("allocated", "used", "max")
# A billing period is a calendar month, 'YYYY-MM' (DESIGN.md §5).
PERIOD_PATTERN = "^[0-9]{4}-(0[1-9]|1[0-2])$"

TZ = DateTime(timezone=True)
NOW = text("now()")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ViewBase(DeclarativeBase):
    """Views (migration 0011: ``jobs`` and ``charge_lines`` over the compact tables): read
    like tables, never created from these models and not compared with the schema."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def table_of(model: type[Base] | type[ViewBase]) -> Table:
    """A model's ``Table`` (SQLAlchemy types ``__table__`` as a FromClause)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


class Cluster(Base):
    """One Slurm cluster (the ``Cluster`` field of sacct). Every row below names one."""

    __tablename__ = "clusters"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=NOW)
    # The compact tables' key (0011): 2 bytes per row instead of the name.
    id: Mapped[int] = mapped_column(SmallInteger, Identity(), unique=True)


class Job(ViewBase):
    """One job allocation, one row per (cluster, job_id_raw, submit_time): the view over
    ``job_rows`` and its dimensions (0011).

    One column per ``billing.records.JobRecord`` field; the record's ``submit``,
    ``eligible``, ``start``, ``end``, ``user``, ``group`` and ``billing`` are stored as
    ``submit_time``, ``eligible_time``, ``start_time``, ``end_time``, ``user_name``,
    ``group_name`` and ``billing_units``.
    """

    __tablename__ = "jobs"

    cluster: Mapped[str] = mapped_column(Text, primary_key=True)
    job_id_raw: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    submit_time: Mapped[datetime] = mapped_column(TZ, primary_key=True)
    job_id: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(Text)
    state_raw: Mapped[str] = mapped_column(Text)
    array_job_id: Mapped[int | None] = mapped_column(BigInteger)
    array_task_id: Mapped[int | None] = mapped_column(Integer)
    het_job_id: Mapped[int | None] = mapped_column(BigInteger)
    het_job_offset: Mapped[int | None] = mapped_column(Integer)
    name: Mapped[str | None] = mapped_column(Text)
    user_name: Mapped[str | None] = mapped_column(Text)
    uid: Mapped[int | None] = mapped_column(BigInteger)
    group_name: Mapped[str | None] = mapped_column(Text)
    account: Mapped[str | None] = mapped_column(Text)
    partition: Mapped[str | None] = mapped_column(Text)
    qos: Mapped[str | None] = mapped_column(Text)
    wckey: Mapped[str | None] = mapped_column(Text)
    reservation: Mapped[str | None] = mapped_column(Text)
    exit_code: Mapped[str | None] = mapped_column(Text)
    derived_exit_code: Mapped[str | None] = mapped_column(Text)
    eligible_time: Mapped[datetime | None] = mapped_column(TZ)
    start_time: Mapped[datetime | None] = mapped_column(TZ)
    end_time: Mapped[datetime | None] = mapped_column(TZ)
    elapsed_s: Mapped[int] = mapped_column(BigInteger)
    timelimit_min: Mapped[int | None] = mapped_column(BigInteger)
    nodes: Mapped[int] = mapped_column(Integer)
    cpus: Mapped[int] = mapped_column(Integer)
    mem_bytes: Mapped[int] = mapped_column(BigInteger)
    billing_units: Mapped[int | None] = mapped_column(BigInteger)
    gpus: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    gpu_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    node_list: Mapped[str | None] = mapped_column(Text)
    cpu_time_alloc_s: Mapped[int | None] = mapped_column(BigInteger)
    cpu_used_s: Mapped[Decimal | None] = mapped_column(Numeric(18, 3))
    max_rss_bytes: Mapped[int | None] = mapped_column(BigInteger)
    mem_used_byte_s: Mapped[Decimal | None] = mapped_column(Numeric(38, 0))
    energy_j: Mapped[int | None] = mapped_column(BigInteger)
    # slurmdbd's DBIndex: unsigned 64-bit (24.11+ prints values above 2^63), so not bigint.
    db_index: Mapped[Decimal | None] = mapped_column(Numeric(20, 0))
    final: Mapped[bool] = mapped_column(Boolean)
    # Always NULL since 0011 (the writer compares the stored row itself).
    content_hash: Mapped[str | None] = mapped_column(Text)
    # blake2b-128 hex of the raw sacct lines the row was parsed from (0006), NULL when
    # it came from elsewhere or not all its lines parsed: a re-read of the same lines
    # skips the job before parsing (collector.slurm.parse.ParsableParser).
    raw_digest: Mapped[str | None] = mapped_column(Text)
    # The collector run that inserted / last changed the row. Deliberately not foreign
    # keys: the run log may be pruned on its own schedule, and an RI trigger per row would
    # tax the bulk MERGE path for a reference nobody joins on hot paths.
    first_run_id: Mapped[int | None] = mapped_column(BigInteger)
    last_run_id: Mapped[int | None] = mapped_column(BigInteger)
    # When the run that last wrote the row started (0011: the run log says when).
    updated_at: Mapped[datetime | None] = mapped_column(TZ)
    # The compact key (0011): join and filter on it, not on the name.
    cluster_id: Mapped[int] = mapped_column(SmallInteger)


class CollectorRun(Base):
    """One collector run: a poll window, a file import, one backfill chunk or a reprice."""

    __tablename__ = "collector_runs"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # Nullable: a file import without a configured cluster takes each record's own
    # cluster, so the run as a whole may have none.
    cluster: Mapped[str | None] = mapped_column(Text, ForeignKey("clusters.name"))
    source: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    window_since: Mapped[datetime | None] = mapped_column(TZ)
    window_until: Mapped[datetime | None] = mapped_column(TZ)
    started_at: Mapped[datetime] = mapped_column(TZ, server_default=text("clock_timestamp()"))
    finished_at: Mapped[datetime | None] = mapped_column(TZ)
    duration_s: Mapped[float | None] = mapped_column(Double)
    outcome: Mapped[str] = mapped_column(Text, server_default=text("'running'"))
    records_read: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    jobs_inserted: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    jobs_updated: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    jobs_unchanged: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    quarantined: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    lines_read: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    error: Mapped[str | None] = mapped_column(Text)
    # Pricing done in the same transaction (0003): jobs priced, charge lines written.
    jobs_priced: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    charge_lines_written: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    rate_card_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("rate_cards.id"))

    __table_args__ = (
        CheckConstraint("kind IN ('poll', 'file', 'backfill', 'reprice')", name="kind"),
        CheckConstraint("outcome IN ('running', 'ok', 'partial', 'failed')", name="outcome"),
        Index("ix_collector_runs_cluster_id", "cluster", "id"),
    )


class Watermark(Base):
    """How far a stream of a cluster has been collected.

    ``stream`` is ``'sacct'`` for the polling watermark and ``'backfill:<since-iso>'``
    for a backfill's resume cursor.
    """

    __tablename__ = "watermarks"

    cluster: Mapped[str] = mapped_column(Text, ForeignKey("clusters.name"), primary_key=True)
    stream: Mapped[str] = mapped_column(Text, primary_key=True)
    position: Mapped[datetime] = mapped_column(TZ)
    run_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("collector_runs.id", ondelete="SET NULL"))
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=NOW)


class Quarantine(Base):
    """Input that did not become a record, kept verbatim with the reason."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    run_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("collector_runs.id", ondelete="CASCADE"))
    # Nullable: a file import may hold lines of several clusters, or none parseable.
    cluster: Mapped[str | None] = mapped_column(Text, ForeignKey("clusters.name"))
    source: Mapped[str] = mapped_column(Text)
    line_no: Mapped[int | None] = mapped_column(BigInteger)
    job_id: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    raw: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=NOW)
    # When an operator accepted losing this record (0009): later runs skip the same raw text.
    accepted_at: Mapped[datetime | None] = mapped_column(TZ)

    __table_args__ = (
        Index("ix_quarantine_run_id", "run_id"),
        Index("ix_quarantine_accepted", "accepted_at",
              postgresql_where=text("accepted_at IS NOT NULL")),
    )


# ----------------------------------------------------------------- charges (rev. 0002)

class RateCard(Base):
    """One immutable rate-card version: the TOML text as loaded, named by its content hash.

    A card is never updated or deleted while lines reference it (the foreign key from
    ``charge_lines`` has no ON DELETE action).
    """

    __tablename__ = "rate_cards"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    version: Mapped[str] = mapped_column(Text, unique=True)
    currency: Mapped[str] = mapped_column(Text)
    loaded_at: Mapped[datetime] = mapped_column(TZ, server_default=NOW)
    source: Mapped[str] = mapped_column(Text)   # the file path the card was loaded from
    text: Mapped[str] = mapped_column(Text)


class Charge(ViewBase):
    """One ``billing.records.ChargeLine`` as stored: the view over ``charge_rows`` and
    ``prices`` (0011).

    ``rate_card`` (the version string) is stored as ``rate_card_id``. Column scales:
    ``quantity`` numeric(24, 6) (a micro-unit, 3.6 ms of one core), ``rate``
    numeric(20, 9), ``amount`` numeric(20, 6) (money: up to 10**14 with six decimals).
    """

    __tablename__ = "charge_lines"

    cluster: Mapped[str] = mapped_column(Text, primary_key=True)
    job_id_raw: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    submit_time: Mapped[datetime] = mapped_column(TZ, primary_key=True)
    usage_period: Mapped[str] = mapped_column(Text, primary_key=True)
    posted_period: Mapped[str] = mapped_column(Text, primary_key=True)
    resource: Mapped[str] = mapped_column(Text, primary_key=True)
    quantity: Mapped[Decimal] = mapped_column(Numeric(24, 6))
    unit: Mapped[str] = mapped_column(Text)
    rate: Mapped[Decimal] = mapped_column(Numeric(20, 9))
    amount: Mapped[Decimal] = mapped_column(Numeric(20, 6))
    currency: Mapped[str] = mapped_column(Text)
    rule: Mapped[str] = mapped_column(Text)
    rate_card_id: Mapped[int] = mapped_column(BigInteger)
    basis: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    # Since 0011: the run that last wrote the line's job (jobs.last_run_id), and when it
    # started.
    run_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime | None] = mapped_column(TZ)
    # The compact columns (0011): join and filter on these (they reach the indexes).
    cluster_id: Mapped[int] = mapped_column(SmallInteger)
    usage_month: Mapped[date] = mapped_column(Date)
    posted_month: Mapped[date] = mapped_column(Date)


# ------------------------------------------------- the compact store (rev. 0011, issue 19)
# docs/design/engine.md §4-§6. No foreign keys and no triggers on job_rows/charge_rows;
# dimension ids are resolved by the writers (collector.store.dims).

class Assoc(Base):
    """An association: the rate-card match key of a job plus the rest of its identity."""

    __tablename__ = "assocs"

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    cluster_id: Mapped[int] = mapped_column(SmallInteger)
    account: Mapped[str | None] = mapped_column(Text)
    user_name: Mapped[str | None] = mapped_column(Text)
    uid: Mapped[int | None] = mapped_column(BigInteger)
    group_name: Mapped[str | None] = mapped_column(Text)
    partition: Mapped[str | None] = mapped_column(Text)
    qos: Mapped[str | None] = mapped_column(Text)
    wckey: Mapped[str | None] = mapped_column(Text)
    reservation: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("cluster_id", "account", "user_name", "uid", "group_name", "partition",
                         "qos", "wckey", "reservation", name="uq_assocs",
                         postgresql_nulls_not_distinct=True),
    )


class Outcome(Base):
    """A job's state and exit codes."""

    __tablename__ = "outcomes"

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    state: Mapped[str] = mapped_column(Text)
    state_raw: Mapped[str] = mapped_column(Text)
    exit_code: Mapped[str | None] = mapped_column(Text)
    derived_exit_code: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("state", "state_raw", "exit_code", "derived_exit_code",
                         name="uq_outcomes", postgresql_nulls_not_distinct=True),
    )


class GpuMix(Base):
    """A job's GPUs by type (the JSON object of ``JobRecord.gpus``) and their count."""

    __tablename__ = "gpu_mixes"

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    gpus: Mapped[dict[str, Any]] = mapped_column(JSONB)
    gpu_count: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        UniqueConstraint("gpus", name="uq_gpu_mixes"),
        CheckConstraint("jsonb_typeof(gpus) = 'object'", name="gpus_is_object"),
    )


class Price(Base):
    """What a charge line was priced at: card, rule, resource, unit, basis, kind, rate."""

    __tablename__ = "prices"

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    rate_card_id: Mapped[int] = mapped_column(BigInteger)
    rule: Mapped[str] = mapped_column(Text)
    resource: Mapped[str] = mapped_column(Text)
    unit: Mapped[str] = mapped_column(Text)
    basis: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    rate: Mapped[Decimal] = mapped_column(Numeric(20, 9))
    currency: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("rate_card_id", "rule", "resource", "unit", "basis", "kind", "rate",
                         "currency", name="uq_prices"),
        CheckConstraint("kind IN ('charge', 'correction')", name="kind"),
        CheckConstraint("basis IN ('allocated', 'used', 'max')", name="basis"),
    )


class JobRow(Base):
    """A job, compact (the view ``jobs`` gives today's columns). Partitioned by the
    month (UTC) of submit_time; columns ordered by alignment."""

    __tablename__ = "job_rows"

    job_id_raw: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    submit_time: Mapped[datetime] = mapped_column(TZ, primary_key=True)
    eligible_time: Mapped[datetime | None] = mapped_column(TZ)
    start_time: Mapped[datetime | None] = mapped_column(TZ)
    end_time: Mapped[datetime | None] = mapped_column(TZ)
    elapsed_s: Mapped[int] = mapped_column(BigInteger)
    timelimit_min: Mapped[int | None] = mapped_column(BigInteger)
    mem_bytes: Mapped[int] = mapped_column(BigInteger)
    billing_units: Mapped[int | None] = mapped_column(BigInteger)
    cpu_time_alloc_s: Mapped[int | None] = mapped_column(BigInteger)
    cpu_used_ms: Mapped[int | None] = mapped_column(BigInteger)
    max_rss_bytes: Mapped[int | None] = mapped_column(BigInteger)
    energy_j: Mapped[int | None] = mapped_column(BigInteger)
    array_job_id: Mapped[int | None] = mapped_column(BigInteger)
    het_job_id: Mapped[int | None] = mapped_column(BigInteger)
    first_run_id: Mapped[int | None] = mapped_column(BigInteger)
    last_run_id: Mapped[int | None] = mapped_column(BigInteger)
    assoc_id: Mapped[int] = mapped_column(Integer)
    outcome_id: Mapped[int] = mapped_column(Integer)
    gpu_mix_id: Mapped[int] = mapped_column(Integer)
    nodes: Mapped[int] = mapped_column(Integer)
    cpus: Mapped[int] = mapped_column(Integer)
    array_task_id: Mapped[int | None] = mapped_column(Integer)
    het_job_offset: Mapped[int | None] = mapped_column(Integer)
    cluster_id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    final: Mapped[bool] = mapped_column(Boolean)
    db_index: Mapped[Decimal | None] = mapped_column(Numeric(20, 0))
    mem_used_byte_s: Mapped[Decimal | None] = mapped_column(Numeric(38, 0))
    # NULL when the array/het ids give it (6_3, 14+1, 42).
    job_id: Mapped[str | None] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(Text)
    node_list: Mapped[str | None] = mapped_column(Text)
    raw_digest: Mapped[bytes | None] = mapped_column(LargeBinary)

    __table_args__ = (
        PrimaryKeyConstraint("cluster_id", "job_id_raw", "submit_time"),
        CheckConstraint(f"db_index >= 0 AND db_index <= {DB_INDEX_MAX}", name="db_index_u64"),
        Index("ix_job_rows_open", "cluster_id", postgresql_where=text("NOT final")),
        Index("ix_job_rows_end_time", "end_time", postgresql_using="brin"),
        {"postgresql_partition_by": "RANGE (submit_time)"},
    )


class ChargeRow(Base):
    """A charge line, compact (the view ``charge_lines`` gives today's columns): integer
    millionths, the price by id. Partitioned by usage month."""

    __tablename__ = "charge_rows"

    job_id_raw: Mapped[int] = mapped_column(BigInteger)
    submit_time: Mapped[datetime] = mapped_column(TZ)
    quantity_micro: Mapped[int] = mapped_column(BigInteger)
    amount_micro: Mapped[int] = mapped_column(BigInteger)
    usage_month: Mapped[date] = mapped_column(Date)
    posted_month: Mapped[date] = mapped_column(Date)
    price_id: Mapped[int] = mapped_column(Integer)
    cluster_id: Mapped[int] = mapped_column(SmallInteger)

    # No primary key in the table (nothing looks a line up alone); the mapper needs one.
    __mapper_args__ = {  # noqa: RUF012 - SQLAlchemy's declarative attribute
        "primary_key": ["job_id_raw", "submit_time", "usage_month", "price_id", "cluster_id"]}

    __table_args__ = (
        Index("ix_charge_rows_job", "cluster_id", "job_id_raw", "submit_time"),
        Index("ix_charge_rows_posted_month", "posted_month", postgresql_using="brin"),
        {"postgresql_partition_by": "RANGE (usage_month)"},
    )


class RollupResource(Base):
    """Charge lines summed per posted month, cluster, assoc, currency, resource and unit
    (``jobs``: distinct jobs; ``jobs_entered``: those without lines in the bucket the month
    before, 0012). Kept by the writers (collector.store.rollups)."""

    __tablename__ = "rollup_resource"

    posted_month: Mapped[date] = mapped_column(Date, primary_key=True)
    cluster_id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    assoc_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    currency: Mapped[str] = mapped_column(Text, primary_key=True)
    resource: Mapped[str] = mapped_column(Text, primary_key=True)
    unit: Mapped[str] = mapped_column(Text, primary_key=True)
    quantity_micro: Mapped[Decimal] = mapped_column(Numeric(38, 0))
    amount_micro: Mapped[Decimal] = mapped_column(Numeric(38, 0))
    lines: Mapped[int] = mapped_column(BigInteger)
    jobs: Mapped[int] = mapped_column(BigInteger)
    jobs_entered: Mapped[int] = mapped_column(BigInteger)


class RollupJobs(Base):
    """Distinct jobs and amount per posted month, cluster, assoc and currency
    (``jobs_entered``: those without lines in the bucket the month before, 0012)."""

    __tablename__ = "rollup_jobs"

    posted_month: Mapped[date] = mapped_column(Date, primary_key=True)
    cluster_id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    assoc_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    currency: Mapped[str] = mapped_column(Text, primary_key=True)
    amount_micro: Mapped[Decimal] = mapped_column(Numeric(38, 0))
    jobs: Mapped[int] = mapped_column(BigInteger)
    jobs_entered: Mapped[int] = mapped_column(BigInteger)


class RollupReentry(Base):
    """Jobs with lines in a bucket in ``posted_month``, none the month before, and lines
    in ``prev_month`` (at least two months before; none in between): what a range of
    months holding both must not count twice (0012). ``resource`` and ``unit`` are ''
    on the rollup_jobs level."""

    __tablename__ = "rollup_reentries"

    posted_month: Mapped[date] = mapped_column(Date, primary_key=True)
    prev_month: Mapped[date] = mapped_column(Date, primary_key=True)
    cluster_id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    assoc_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    currency: Mapped[str] = mapped_column(Text, primary_key=True)
    resource: Mapped[str] = mapped_column(Text, primary_key=True)
    unit: Mapped[str] = mapped_column(Text, primary_key=True)
    jobs: Mapped[int] = mapped_column(BigInteger)


class BillingPeriod(Base):
    """A closed billing period: its lines are never deleted or changed again.

    Only closed periods have a row; every other period is open.
    """

    __tablename__ = "billing_periods"

    period: Mapped[str] = mapped_column(Text, primary_key=True)
    closed_at: Mapped[datetime] = mapped_column(TZ, server_default=NOW)
    closed_by: Mapped[str] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(f"period ~ '{PERIOD_PATTERN}'", name="period"),
    )


class Budget(Base):
    """What an account may spend in one billing period, in one currency."""

    __tablename__ = "budgets"

    account: Mapped[str] = mapped_column(Text, primary_key=True)
    period: Mapped[str] = mapped_column(Text, primary_key=True)
    amount: Mapped[Decimal] = mapped_column(Numeric(20, 6))
    currency: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=NOW)

    __table_args__ = (
        CheckConstraint(f"period ~ '{PERIOD_PATTERN}'", name="period"),
        CheckConstraint("amount >= 0", name="amount_not_negative"),
    )


# ------------------------------------------------------------ node inventory (rev. 0004)

# Open (non-final) jobs per cluster, for the ``hpcb_open_jobs`` gauge: a partial index
# holds only the few open rows, so counting them never scans the jobs table.
Index("ix_jobs_cluster_open", Job.cluster, postgresql_where=text("NOT final"))


class NodeSnapshot(Base):
    """One node of one inventory snapshot (``scontrol show node``) of a cluster.

    A snapshot is every row of a cluster with one ``taken_at``. ``gpus_total`` and
    ``gpus_alloc`` are objects of GPU type -> count (untyped under ``"untyped"``), as
    ``jobs.gpus``. Memory is in bytes (Slurm's RealMemory/AllocMem MB x 2**20).

    The unique key (cluster, taken_at, node) makes storing a snapshot twice a no-op and is
    also the index that finds a cluster's snapshots by time (newest first, or a range).
    """

    __tablename__ = "node_snapshots"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    taken_at: Mapped[datetime] = mapped_column(TZ)
    cluster: Mapped[str] = mapped_column(Text, ForeignKey("clusters.name"))
    node: Mapped[str] = mapped_column(Text)
    partitions: Mapped[list[str]] = mapped_column(ARRAY(Text))
    state: Mapped[str] = mapped_column(Text)
    state_raw: Mapped[str] = mapped_column(Text)
    cpus_total: Mapped[int] = mapped_column(Integer)
    cpus_alloc: Mapped[int] = mapped_column(Integer)
    mem_total_bytes: Mapped[int] = mapped_column(BigInteger)
    mem_alloc_bytes: Mapped[int] = mapped_column(BigInteger)
    gpus_total: Mapped[dict[str, Any]] = mapped_column(JSONB)
    gpus_alloc: Mapped[dict[str, Any]] = mapped_column(JSONB)

    __table_args__ = (
        UniqueConstraint("cluster", "taken_at", "node"),
        CheckConstraint("jsonb_typeof(gpus_total) = 'object'", name="gpus_total_is_object"),
        CheckConstraint("jsonb_typeof(gpus_alloc) = 'object'", name="gpus_alloc_is_object"),
    )


# ------------------------------------------------------------- audit trail (rev. 0010)

class AuditLog(Base):
    """One entry of the audit trail (``billing.audit``): an HMAC-SHA256 hash chain.

    Append-only (``collector.store.audit``): the writer locks the table, reads the tail
    and inserts seq + 1; triggers refuse UPDATE and DELETE, and the migration revokes
    UPDATE, DELETE and TRUNCATE from the role that runs it (see migration 0010).
    """

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(TZ)
    actor: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB)
    prev: Mapped[str] = mapped_column(CHAR(64))
    hash: Mapped[str] = mapped_column(CHAR(64))

    __table_args__ = (
        CheckConstraint("seq >= 1", name="seq_positive"),
        CheckConstraint("prev ~ '^[0-9a-f]{64}$'", name="prev_hex"),
        CheckConstraint("hash ~ '^[0-9a-f]{64}$'", name="hash_hex"),
        CheckConstraint("jsonb_typeof(details) = 'object'", name="details_is_object"),
    )
