"""PostgreSQL storage for hpc-billing: the only package that imports SQLAlchemy.

The store owns the database schema (``models``: clusters, jobs, collector runs,
watermarks, quarantined input) and its Alembic migrations (``migrations/``), the engine
and migration helpers (``db``), the bulk idempotent job writer and job listings
(``jobs``), and the run log, watermarks and quarantine (``runs``).

Rules that hold for every function here (DESIGN.md §2, §4, §7):

- Functions take a ``Session`` (or ``Connection``) and never commit: the caller owns the
  transaction, so one poll window is stored atomically or not at all.
- ORM rows never leave this package: reads return ``billing.records.JobRecord`` or the
  frozen dataclasses defined next to the reading function.
- Times are ``timestamptz`` in the database and aware UTC datetimes in Python; every
  connection made by ``db.make_engine`` runs with ``TimeZone=UTC``.
- The bulk path is COPY into a temporary stage table and one ``MERGE`` per batch that
  does not touch unchanged rows (see ``jobs.JobWriter`` and shared/perf-baselines.md).
  PostgreSQL 15's MERGE is safe for a single writer only: the collector takes the
  leader lock before it writes.
"""
