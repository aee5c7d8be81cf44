"""PostgreSQL storage: the only package that imports SQLAlchemy (DESIGN.md §2).

One module per concern: ``db`` (engines, sessions, migrations), ``models`` (the schema),
``jobs`` and ``job_writer`` (the jobs table), ``charges`` (charge-line writes),
``reports`` (what finance reads), ``rollups``, ``periods``, ``budgets``, ``rate_cards``,
``runs`` (run log, watermarks, quarantine), ``nodes``, ``leader``, ``scrape`` (the
metrics' reads), ``errors`` and ``copytext``. Every function takes a session and never
commits; ORM rows never leave the package. Rules and design: docs/design/store.md.
"""
