"""Fixtures of the fault suite: the fake sacct, the inputs, and the clean-ingest yardsticks
(one per input, computed once per session).

The collector holds up to 4,096 jobs in its step roll-up before they reach a COPY batch,
so a gate that must fall after some COPYs sits near the end of the bench input
(GATE_AFTER lines of BENCH_LINES)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bench.gen_sacct import generate
from tests.daemonkit import FAKE_SACCT
from tests.faults.kit import FIXTURE, Snapshot, reference
from tests.helpers import executable_wrapper

# Large enough that a poll writes several COPY batches (--batch-rows 500) before the gate
# in the middle of sacct's output; small enough for a few seconds per poll on 2 cores.
BENCH_LINES = 24_000
GATE_AFTER = 22_000


@pytest.fixture()
def fake_sacct(tmp_path) -> Path:
    return executable_wrapper(tmp_path / "bin", "sacct", FAKE_SACCT)


@pytest.fixture(scope="session")
def bench_data(tmp_path_factory) -> Path:
    """bench/gen_sacct.py output (cluster "bench", seeded): ~6,000 jobs with steps."""
    path = tmp_path_factory.mktemp("bench") / "sacct-bench.psv"
    with open(path, "w", encoding="utf-8") as out:
        generate(BENCH_LINES, out, seed=7)
    return path


@pytest.fixture(scope="session")
def yardstick(pg_admin_url, tmp_path_factory) -> Callable[..., Snapshot]:
    """yardstick(data, cluster) -> the snapshot of a clean ingest of that input."""
    cache: dict[tuple, Snapshot] = {}
    sacct = executable_wrapper(tmp_path_factory.mktemp("refbin"), "sacct", FAKE_SACCT)

    def get(data: Path = FIXTURE, cluster: str = "lab", **env: str) -> Snapshot:
        key = (str(data), cluster, tuple(sorted(env.items())))
        if key not in cache:
            cache[key] = reference(pg_admin_url, data, cluster, sacct, extra_env=env)
        return cache[key]

    return get
