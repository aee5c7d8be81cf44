"""Helpers shared by the integration tests (not fixtures: plain functions)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from collector import cli


def run_cli(*argv: str, env: dict[str, str] | None = None) -> int:
    """Run ``hpc-billing ARGV`` in this process (the console script's own code) with extra
    environment variables, restoring the environment afterwards."""
    saved = dict(os.environ)
    try:
        if env:
            os.environ.update(env)
        return cli.main(list(argv))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def executable_wrapper(directory: Path, name: str, script: Path) -> Path:
    """An executable ``directory/name`` that runs ``script`` with this interpreter (so the
    fakes never depend on git keeping an exec bit or on which python is on PATH)."""
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / name
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return wrapper


TEST_AUDIT_KEY = b"test-audit-key-0123456789abcdef-0123456789"


def audit_key_env(directory: Path, key: bytes = TEST_AUDIT_KEY) -> dict[str, str]:
    """The environment of a command with the audit trail on: a key file (mode 0600) in
    ``directory``."""
    path = directory / "audit.key"
    path.write_bytes(key + b"\n")
    path.chmod(0o600)
    return {"HPC_BILLING_AUDIT_KEY_FILE": str(path)}


DEMO_CARD = Path(__file__).resolve().parents[1] / "collector" / "data" / "demo-rates.toml"


def close_periods(db_url: str, tmp_path: Path, *periods: str) -> None:
    """``period close`` each of ``periods`` (the audit trail on, its key in ``tmp_path``)."""
    for period in periods:
        assert run_cli("period", "close", period, "--database-url", db_url,
                       env=audit_key_env(tmp_path)) == 0


def reprice_2026(db_url: str, card: Path) -> None:
    """``reprice`` the whole of 2026 with ``card``."""
    assert run_cli("reprice", "--since", "2026-01-01", "--until", "2027-01-01", "--rates",
                   str(card), "--database-url", db_url) == 0


def demo_card_with(tmp_path: Path, name: str, old: str, new: str) -> Path:
    """The demo rate card with ``old`` replaced by ``new`` (which must be there), written
    to ``tmp_path/name``; e.g. the CPU rate doubled for a reprice."""
    text = DEMO_CARD.read_text()
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new))
    return path
