"""The ``slurm`` test group: hpc-billing against the REAL Slurm lab (deploy/lab).

Finding the lab: the env file written by ``deploy/lab/up.sh`` (``/etc/hpc-billing-lab/env``,
or ``HPC_BILLING_LAB_ENV``) gives SLURM_CONF and the lab's addresses; the lab is up when
``sinfo`` and ``sacctmgr`` answer with it. When it is not up the slurm tests are skipped
with the reason, unless ``CI=true`` or ``HPC_BILLING_REQUIRE_LAB=1``: then the session stops
at collection with an error (a green CI run that tested no Slurm would hide the gap).

Everything talks to Slurm through its own commands (sbatch, scancel, squeue, sacct,
scontrol) with ``SLURM_CONF`` and ``TZ=UTC``; PostgreSQL is the real test database of
tests/conftest.py (``db_url``). Nothing of ours is mocked.
"""

from __future__ import annotations

import pytest

from tests.slurm.labkit import RATES, JobMix, Lab, find_lab, lab_required, start_mix

_LAB: tuple[dict[str, str] | None, str | None] | None = None


def lab_status() -> tuple[dict[str, str] | None, str | None]:
    global _LAB
    if _LAB is None:
        _LAB = find_lab()
    return _LAB


def pytest_collection_modifyitems(config, items):
    slurm_items = [item for item in items if item.get_closest_marker("slurm")]
    if not slurm_items:
        return
    env, problem = lab_status()
    if env is not None:
        return
    if lab_required():
        raise pytest.UsageError(
            f"the Slurm lab is required (CI=true or HPC_BILLING_REQUIRE_LAB=1) but is not "
            f"up: {problem}")
    skip = pytest.mark.skip(reason=f"Slurm lab not up: {problem}")
    for item in slurm_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def lab() -> Lab:
    env, problem = lab_status()
    if env is None:                      # (collection has already skipped or stopped us)
        if lab_required():
            pytest.fail(f"the Slurm lab is required but not up: {problem}")
        pytest.skip(f"Slurm lab not up: {problem}")
    return Lab(env)


@pytest.fixture(scope="session")
def job_mix(lab: Lab) -> JobMix:
    """The session's real jobs (labkit.MIX), all final in sacct."""
    return start_mix(lab)


@pytest.fixture(scope="session")
def rate_card(tmp_path_factory):
    path = tmp_path_factory.mktemp("rates") / "lab-rates.toml"
    path.write_text(RATES, encoding="utf-8")
    return path
