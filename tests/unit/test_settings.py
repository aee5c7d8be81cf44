"""Settings: typed, frozen, every error listed; deploy/env.example documents every variable."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from collector.settings import SPECS, Settings, SettingsError, parse_duration_s

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("text,seconds", [
    ("300", 300), ("90s", 90), ("10m", 600), ("1h30m", 5400), ("2d", 172800), ("1.5h", 5400),
    ("1w", 604800), (" 10M ", 600), ("0.5", 0.5),
])
def test_durations(text, seconds):
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10x", "-5", "0", "5m garbage", "m"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration_s(text)


def test_defaults_and_frozen():
    s = Settings.load({"HOME": "/home/x"})
    assert s.source == "sacct" and s.sacct == "sacct" and s.database_url is None
    assert s.poll_interval_s == 300 and s.overlap_s == 600 and s.lookback_s == 86400
    assert s.bind == ("127.0.0.1", 8000) and s.timezone == "UTC"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.source = "file"  # type: ignore[misc]


def test_flags_override_environment():
    env = {"HPC_BILLING_SOURCE": "sacct", "HPC_BILLING_CLUSTER": "env-cluster",
           "HPC_BILLING_OVERLAP": "5m"}
    s = Settings.load(env, {"source": "file", "cluster": "flag-cluster", "overlap_s": None})
    assert (s.source, s.cluster, s.overlap_s) == ("file", "flag-cluster", 300)


def test_every_error_is_listed_at_once():
    env = {"DATABASE_URL": "mysql://x", "HPC_BILLING_SOURCE": "slurmdb", "HPC_BILLING_POLL_INTERVAL": "soon",
           "HPC_BILLING_BIND": "8000", "HPC_BILLING_TIMEZONE": "Mars/Olympus", "HPC_BILLING_BATCH_ROWS": "-1"}
    with pytest.raises(SettingsError) as info:
        Settings.load(env)
    text = "\n".join(info.value.errors)
    for name in ("DATABASE_URL", "HPC_BILLING_SOURCE", "HPC_BILLING_POLL_INTERVAL", "HPC_BILLING_BIND",
                 "HPC_BILLING_TIMEZONE", "HPC_BILLING_BATCH_ROWS"):
        assert name in text
    assert len(info.value.errors) == 6


def test_collect_checks_list_every_error(tmp_path):
    s = Settings.load({"HPC_BILLING_SOURCE": "sacct", "HPC_BILLING_SACCT": str(tmp_path / "nope"),
                       "HPC_BILLING_RATES": str(tmp_path / "rates.toml")})
    with pytest.raises(SettingsError) as info:
        s.check_for_collect()
    text = "\n".join(info.value.errors)
    assert "HPC_BILLING_CLUSTER" in text and "HPC_BILLING_SACCT" in text and "HPC_BILLING_RATES" in text
    f = Settings.load({"HPC_BILLING_SOURCE": "file"})
    with pytest.raises(SettingsError, match="required with the file source"):
        f.check_for_collect()


def test_database_password_is_redacted_in_describe():
    s = Settings.load({"DATABASE_URL": "postgresql+psycopg2://hpc:s3cret@db:5432/hpc"})
    assert "s3cret" not in repr(s.describe())
    assert "***" in s.describe()["database_url"]


def test_env_example_documents_every_variable_and_nothing_else():
    text = (ROOT / "deploy" / "env.example").read_text()
    documented = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", text, flags=re.M))
    known = {spec.env for spec in SPECS}
    assert documented == known, (f"missing from env.example: {sorted(known - documented)}; "
                                 f"unknown in env.example: {sorted(documented - known)}")
    for spec in SPECS:
        assert spec.flag in text, f"{spec.env}'s flag {spec.flag} is not documented"


def test_settings_fields_match_specs():
    assert [f.name for f in dataclasses.fields(Settings)] == [s.field for s in SPECS]


def test_slurmrestd_settings_reach_the_source(tmp_path):
    from zoneinfo import ZoneInfo

    from collector.sources import make_source

    token = tmp_path / "jwt"
    token.write_text("SLURM_JWT=abc\n", encoding="utf-8")
    s = Settings.load({"HPC_BILLING_SOURCE": "slurmrestd", "HPC_BILLING_CLUSTER": "lab",
                       "HPC_BILLING_SLURMRESTD_URL": "http://127.0.0.1:6820",
                       "HPC_BILLING_SLURMRESTD_USER": "hpcbilling",
                       "HPC_BILLING_SLURMRESTD_TOKEN_FILE": str(token),
                       "HPC_BILLING_SLURMRESTD_TIMEZONE": "America/New_York",
                       "HPC_BILLING_SLURMRESTD_TIMEOUT": "30s"})
    source = make_source(s)
    assert source.server_tz == ZoneInfo("America/New_York")
    assert (source.url, source.user, source.token_file, source.timeout_s, source.cluster) == (
        "http://127.0.0.1:6820", "hpcbilling", str(token), 30.0, "lab")
    with pytest.raises(SettingsError, match="HPC_BILLING_SLURMRESTD_TIMEZONE"):
        Settings.load({"HPC_BILLING_SLURMRESTD_TIMEZONE": "Moon/Base"})
