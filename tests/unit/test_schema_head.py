"""The schema head the code expects without importing Alembic is the migrations' head."""

import subprocess
import sys

from collector.store import db as store_db


def test_head_revision_is_the_newest_migration():
    assert store_db.head_revision() == store_db.alembic_head_revision()


def test_a_poll_does_not_import_alembic():
    """Alembic and every migration script are loaded only to migrate (RSS: ~12 MiB)."""
    code = ("import sys, collector.polling, collector.runtime, collector.store.db as d;"
            "assert d.head_revision();"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
