"""Bytes per stored job of TODAY's schema, for the same export (for docs/design/engine.md).

    python -m bench.engine_proto.today_size FILE

Imports FILE with today's pipeline (bench.run.phase_ingest: priced, rollups refreshed,
committed) into a scratch database and prints pg_total_relation_size of every table of
``public`` (indexes and TOAST included) per stored job.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from bench.run import Scratch, phase_ingest  # noqa: E402
from collector.store import db  # noqa: E402

ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def main() -> int:
    scratch = Scratch(ADMIN, name="hpcb_engine_today")
    try:
        ingest = phase_ingest(sys.argv[1], scratch.url)
        engine = db.make_engine(scratch.url)
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'"
                " WHERE c.relkind = 'r' ORDER BY 2 DESC")).all()
            jobs = conn.execute(text("SELECT count(*) FROM jobs")).scalar()
        engine.dispose()
    finally:
        scratch.drop()
        scratch.admin.dispose()
    total = sum(size for _, size in rows)
    out = {"jobs": jobs, "bytes_total": total, "bytes_per_job": total / jobs,
           "by_table": {name: size for name, size in rows if size > 100_000},
           "ingest_seconds": ingest["seconds"]}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
