"""The ``slurm`` test group: hpc-billing against the REAL Slurm lab (deploy/lab), on every
release it runs (labkit.RELEASES: 22.05 on the host, 24.11 and 26.05 in debootstrap roots).

Finding the lab: ``/etc/hpc-billing-lab/env`` (or ``HPC_BILLING_LAB_ENV``) names the
directory of the releases' env files (``releases/<release>.env``, written by
``deploy/lab/up.sh``); a release is up when its ``sinfo`` and ``sacctmgr`` answer. The
``lab`` fixture is parametrized over every release, so each test runs once per release. A
release that is not up is skipped with the reason, unless ``CI=true`` or
``HPC_BILLING_REQUIRE_LAB=1``: then the session stops at collection with an error (a green
CI run that tested no Slurm would hide the gap).

The session holds the lab's lock (deploy/lab/lib.sh) from the first slurm test on, so no
up.sh, down.sh or other test session changes the lab under it; daemons that a test stops
and starts go through deploy/lab/daemon.sh, which records every start for down.sh.

Everything talks to Slurm through its own commands (sbatch, scancel, squeue, sacct,
scontrol) with ``TZ=UTC``; PostgreSQL is the real test database of tests/conftest.py
(``db_url``). Nothing of ours is mocked. Each test looks only at the jobs it submitted
(the session's job mix, or its own), because the clusters are shared by all tests.
"""

from __future__ import annotations

import pytest

from tests.slurm.labkit import (RATES, RELEASES, JobMix, Lab, LabLock, find_labs, lab_required,
                                start_mixes)

_LABS: dict[str, tuple[dict[str, str] | None, str | None]] | None = None


def lab_status() -> dict[str, tuple[dict[str, str] | None, str | None]]:
    global _LABS
    if _LABS is None:
        _LABS = find_labs()
    return _LABS


def pytest_collection_modifyitems(config, items):
    slurm_items = [item for item in items if item.get_closest_marker("slurm")]
    if not slurm_items:
        return
    down = {release: problem for release, (env, problem) in lab_status().items() if env is None}
    if not down:
        return
    if lab_required():
        raise pytest.UsageError(
            "the Slurm lab is required (CI=true or HPC_BILLING_REQUIRE_LAB=1) but is not up: "
            + "; ".join(f"{release}: {problem}" for release, problem in down.items()))
    for item in slurm_items:
        callspec = getattr(item, "callspec", None)
        release = callspec.params.get("lab") if callspec else None
        if release in down or release is None and down:
            item.add_marker(pytest.mark.skip(reason=f"Slurm lab {release or ''} not up: "
                                                    f"{down.get(release) or down}"))


@pytest.fixture(scope="session")
def lab_lock():
    """The lab's lock, for the whole session."""
    lock = LabLock()
    yield lock
    lock.release()


@pytest.fixture(scope="session", params=RELEASES)
def lab(request, lab_lock) -> Lab:
    """One release's cluster; every test that uses it runs once per release."""
    env, problem = lab_status()[request.param]
    if env is None:                      # (collection has already skipped or stopped us)
        if lab_required():
            pytest.fail(f"the Slurm {request.param} lab is required but not up: {problem}")
        pytest.skip(f"Slurm {request.param} lab not up: {problem}")
    return Lab(env, lab_lock)


@pytest.fixture(scope="session")
def job_mixes(lab_lock) -> dict[str, JobMix]:
    """The session's real jobs (labkit.MIX) on every release that is up, submitted at once
    and all final in sacct."""
    labs = [Lab(env, lab_lock) for env, _ in lab_status().values() if env is not None]
    return start_mixes(labs)


@pytest.fixture(scope="session")
def job_mix(lab: Lab, job_mixes) -> JobMix:
    """This release's job mix."""
    return job_mixes[lab.release]


@pytest.fixture(scope="session")
def rate_card(tmp_path_factory):
    path = tmp_path_factory.mktemp("rates") / "lab-rates.toml"
    path.write_text(RATES, encoding="utf-8")
    return path
