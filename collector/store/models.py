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
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
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


def table_of(model: type[Base]) -> Table:
    """A model's ``Table`` (SQLAlchemy types ``__table__`` as a FromClause)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


class Cluster(Base):
    """One Slurm cluster (the ``Cluster`` field of sacct). Every row below names one."""

    __tablename__ = "clusters"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=NOW)


class Job(Base):
    """One job allocation, one row per (cluster, job_id_raw, submit_time).

    One column per ``billing.records.JobRecord`` field; the record's ``submit``,
    ``eligible``, ``start``, ``end``, ``user``, ``group`` and ``billing`` are stored as
    ``submit_time``, ``eligible_time``, ``start_time``, ``end_time``, ``user_name``,
    ``group_name`` and ``billing_units``.
    """

    __tablename__ = "jobs"

    cluster: Mapped[str] = mapped_column(Text, ForeignKey("clusters.name"), primary_key=True)
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
    content_hash: Mapped[str] = mapped_column(Text)
    # blake2b-128 hex of the raw sacct lines the row was parsed from (0006), NULL when
    # it came from elsewhere or not all its lines parsed: a re-read of the same lines
    # skips the job before parsing (collector.slurm.parse.ParsableParser).
    raw_digest: Mapped[str | None] = mapped_column(Text)
    # The collector run that inserted / last changed the row. Deliberately not foreign
    # keys: the run log may be pruned on its own schedule, and an RI trigger per row would
    # tax the bulk MERGE path for a reference nobody joins on hot paths.
    first_run_id: Mapped[int | None] = mapped_column(BigInteger)
    last_run_id: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=NOW)

    __table_args__ = (
        CheckConstraint("jsonb_typeof(gpus) = 'object'", name="gpus_is_object"),
        CheckConstraint(f"db_index >= 0 AND db_index <= {DB_INDEX_MAX}", name="db_index_u64"),
        # The job listing: one cluster, ordered by submit time, bounded by
        # submit_time < until. A later issue tunes indexes with EXPLAIN.
        Index("ix_jobs_cluster_submit_time", "cluster", "submit_time", "job_id_raw"),
        # "ended since" (end_time >= since) and open jobs (end_time IS NULL).
        Index("ix_jobs_cluster_end_time", "cluster", "end_time"),
    )


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


class Charge(Base):
    """One ``billing.records.ChargeLine`` as stored.

    ``rate_card`` (the version string) is stored as ``rate_card_id``; the key of the job
    is a foreign key to ``jobs`` with ON DELETE CASCADE, so lines never outlive their job.
    Column scales: ``quantity`` numeric(24, 6) (a micro-unit, 3.6 ms of one core), ``rate``
    numeric(20, 9), ``amount`` numeric(20, 6) (money: up to 10**14 with six decimals).
    """

    __tablename__ = "charge_lines"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    cluster: Mapped[str] = mapped_column(Text)
    job_id_raw: Mapped[int] = mapped_column(BigInteger)
    submit_time: Mapped[datetime] = mapped_column(TZ)
    usage_period: Mapped[str] = mapped_column(Text)
    posted_period: Mapped[str] = mapped_column(Text)
    resource: Mapped[str] = mapped_column(Text)
    quantity: Mapped[Decimal] = mapped_column(Numeric(24, 6))
    unit: Mapped[str] = mapped_column(Text)
    rate: Mapped[Decimal] = mapped_column(Numeric(20, 9))
    amount: Mapped[Decimal] = mapped_column(Numeric(20, 6))
    currency: Mapped[str] = mapped_column(Text)
    rule: Mapped[str] = mapped_column(Text)
    rate_card_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("rate_cards.id"))
    basis: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    # Like jobs.last_run_id, deliberately not a foreign key (the run log is pruned on its
    # own schedule; no RI trigger per row on the bulk path).
    run_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=NOW)

    __table_args__ = (
        ForeignKeyConstraint(
            ["cluster", "job_id_raw", "submit_time"],
            ["jobs.cluster", "jobs.job_id_raw", "jobs.submit_time"],
            ondelete="CASCADE"),
        CheckConstraint("kind IN ('charge', 'correction')", name="kind"),
        CheckConstraint("basis IN ('allocated', 'used', 'max')", name="basis"),
        CheckConstraint(f"usage_period ~ '{PERIOD_PATTERN}'", name="usage_period"),
        CheckConstraint(f"posted_period ~ '{PERIOD_PATTERN}'", name="posted_period"),
        # A job's lines (replace_charges, frozen_lines, job_charges; the FK cascade).
        Index("ix_charge_lines_cluster_job_id_raw_submit_time",
              "cluster", "job_id_raw", "submit_time"),
        # What finance bills: one posted period, optionally one cluster.
        Index("ix_charge_lines_posted_period_cluster", "posted_period", "cluster"),
    )


# ------------------------------------------------------------ charge rollups (rev. 0007)

_ROLLUP_GROUP = ("posted_period", "cluster", "submit_day", "account", "user_name", "partition",
                 "qos", "currency")


class _RollupGroup:
    """The grain shared by the daily rollups (see migration 0007). NULL names are ''."""

    posted_period: Mapped[str] = mapped_column(Text)
    cluster: Mapped[str] = mapped_column(Text)
    submit_day: Mapped[date] = mapped_column(Date)
    account: Mapped[str] = mapped_column(Text)
    user_name: Mapped[str] = mapped_column(Text)
    partition: Mapped[str] = mapped_column(Text)
    qos: Mapped[str] = mapped_column(Text)
    currency: Mapped[str] = mapped_column(Text)


class ChargeRollupDaily(_RollupGroup, Base):
    """Charge lines summed per posted period, cluster, submit day (UTC), the jobs'
    account/user/partition/QOS, currency, resource and unit; ``jobs`` is distinct jobs."""

    __tablename__ = "charge_rollup_daily"

    resource: Mapped[str] = mapped_column(Text)
    unit: Mapped[str] = mapped_column(Text)
    quantity: Mapped[Decimal] = mapped_column(Numeric(38, 6))
    amount: Mapped[Decimal] = mapped_column(Numeric(38, 6))
    lines: Mapped[int] = mapped_column(BigInteger)
    jobs: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        PrimaryKeyConstraint(*_ROLLUP_GROUP, "resource", "unit"),
        Index("ix_charge_rollup_daily_cluster_submit_day", "cluster", "submit_day"),
    )


class ChargeRollupDailyJobs(_RollupGroup, Base):
    """Distinct jobs and amount per rollup group, without the resource."""

    __tablename__ = "charge_rollup_daily_jobs"

    amount: Mapped[Decimal] = mapped_column(Numeric(38, 6))
    jobs: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        PrimaryKeyConstraint(*_ROLLUP_GROUP),
        Index("ix_charge_rollup_daily_jobs_cluster_submit_day", "cluster", "submit_day"),
    )


class ChargeRollupDirty(Base):
    """(cluster, submit day) buckets whose rollups are stale (set by triggers)."""

    __tablename__ = "charge_rollup_dirty"

    cluster: Mapped[str] = mapped_column(Text, primary_key=True)
    submit_day: Mapped[date] = mapped_column(Date, primary_key=True)


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
