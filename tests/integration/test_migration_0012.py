"""Migration 0012 fills the entry counts of the rollups (``jobs_entered``,
``rollup_reentries``, docs/design/engine.md §13) from the lines of an existing database:
exactly what the writers keep; its downgrade drops them."""

from __future__ import annotations

from sqlalchemy import inspect, text

from collector.store import db as store_db
from collector.store import rollups as store_rollups
from collector.store.db import Session
from tests import spanning_jobs
from tests.helpers import DEMO_CARD, close_periods, demo_card_with, reprice_2026, run_cli

DUMPS = ("SELECT * FROM rollup_resource ORDER BY posted_month, cluster_id, assoc_id, currency,"
         " resource, unit",
         "SELECT * FROM rollup_jobs ORDER BY posted_month, cluster_id, assoc_id, currency",
         "SELECT * FROM rollup_reentries ORDER BY posted_month, prev_month, cluster_id,"
         " assoc_id, currency, resource, unit")


def dump(engine) -> list[list[tuple[object, ...]]]:
    with engine.connect() as conn:
        return [[tuple(r) for r in conn.execute(text(sql))] for sql in DUMPS]


def test_0012_fills_the_entries_from_the_lines_and_its_downgrade_drops_them(
        fresh_database_url, tmp_path):
    url = fresh_database_url
    engine = store_db.make_engine(url)
    try:
        store_db.migrate(engine)
        export = spanning_jobs.write(tmp_path / "span.psv", spanning_jobs.jobs(600, seed=7))
        assert run_cli("collect", "--once", "--source", "file", "--input", str(export),
                       "--rates", str(DEMO_CARD), "--database-url", url) == 0
        close_periods(url, tmp_path, "2026-02", "2026-03", "2026-04")
        reprice_2026(url, demo_card_with(tmp_path, "doubled.toml",
                                         'cpu_hour = "36"', 'cpu_hour = "72"'))
        kept = dump(engine)
        assert kept[2] and any(row[-1] for row in kept[0])     # re-entries, entered jobs

        store_db.downgrade(engine, "0011")
        schema = inspect(engine)
        assert "rollup_reentries" not in schema.get_table_names()
        for table in ("rollup_resource", "rollup_jobs"):
            assert "jobs_entered" not in {c["name"] for c in schema.get_columns(table)}

        store_db.migrate(engine)
        assert dump(engine) == kept
        with Session(engine) as session:
            assert store_rollups.verify(session).ok
    finally:
        engine.dispose()
