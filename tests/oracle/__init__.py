"""The oracle: today's per-record ingest path, kept in the tests (docs/design/engine.md §8).

``ingest(path, ...)`` reads a sacct export (``--parsable2`` text or ``--json``) the way the
per-record path always has: ``ParsableParser`` / ``parse_sacct_json`` -> ``rollup_steps`` ->
last record of a key wins -> the record as the ``jobs`` row would hold it ->
``billing.price.price_job_outcome`` -> the lines as ``charge_lines`` would hold them; and
the quarantined records as ``quarantine`` would hold them (raw, reason, line, job id).

Nothing here imports the production engine (collector/pipeline, pricing, store writers,
columnar reader): only the per-record parsers (``collector.slurm.parse``, ``fields``,
``jsonparse``, which the engine keeps as its fallback units) and ``billing``. The file
reading and the row building are copied here from the per-record path as it stood before
issue 19, so a change in the production writers cannot change the oracle with them.
"""

from tests.oracle.path import (
    CHARGE_COLUMNS,
    JOB_COLUMNS,
    OracleError,
    OracleResult,
    ingest,
)

__all__ = ["CHARGE_COLUMNS", "JOB_COLUMNS", "OracleError", "OracleResult", "ingest"]
