"""One typed, frozen Settings object, built once at start from the environment and flags.

This module owns the list of every setting hpc-billing has (``SPECS``): its environment
variable, its command-line flag, its parser, its default and its help text. The CLI builds
``Settings`` from ``os.environ`` plus the flags it parsed; nothing else reads the environment.
Validation collects every error before failing, so an operator fixes a config in one go.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

SOURCES = ("sacct", "file", "slurmrestd", "pyslurm")

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)", re.IGNORECASE)
_DURATION_HELP = "use seconds or forms like 90s, 10m, 1h30m, 2d"
_UNIT_S = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


class SettingsError(Exception):
    """Every problem found in the configuration, one per line."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(self.errors))


def parse_duration_s(text: str) -> float:
    """Seconds from ``300``, ``10m``, ``1h30m``, ``2d``, ``1.5h``; must be > 0."""
    value = text.strip()
    if not value:
        raise ValueError("empty duration")
    try:
        seconds = float(value)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _DURATION_RE.finditer(value):
            if value[pos:match.start()].strip():
                raise ValueError(f"not a duration: {text!r} ({_DURATION_HELP})") from None
            seconds += float(match.group(1)) * _UNIT_S[match.group(2).lower()]
            pos = match.end()
        if pos == 0 or value[pos:].strip():
            raise ValueError(f"not a duration: {text!r} ({_DURATION_HELP})") from None
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return seconds


def _parse_bind(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"port must be 1-65535, got {port!r}")
    return host, int(port)


def _parse_database_url(text: str) -> str:
    url = text.strip()
    if not re.match(r"^postgresql(\+psycopg2?)?://", url):
        raise ValueError("must be a PostgreSQL URL such as postgresql+psycopg2://user:pw@host:5432/db")
    return url


def _parse_rest_url(text: str) -> str:
    url = text.strip().rstrip("/")
    if not re.match(r"^(https?://[^/\s]+|unix:/\S+)$", url):
        raise ValueError("expected http(s)://host:port or unix:/path/to/slurmrestd.sock, "
                         f"got {text!r}")
    return url


def _parse_source(text: str) -> str:
    value = text.strip().lower()
    if value not in SOURCES:
        raise ValueError(f"must be one of {', '.join(SOURCES)}; got {text!r}")
    return value


def _parse_timezone(text: str) -> str:
    try:
        ZoneInfo(text.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {text!r} (use an IANA name such as Europe/Berlin)") from None
    return text.strip()


def _parse_positive_int(text: str) -> int:
    value = int(text.strip())
    if value <= 0:
        raise ValueError(f"must be a positive integer, got {text!r}")
    return value


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _parse_log_level(text: str) -> str:
    value = text.strip().upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError(f"must be DEBUG, INFO, WARNING or ERROR; got {text!r}")
    return value


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _parse_png_path(text: str) -> str:
    """A readable PNG file (checked at start: a logo that cannot print fails early)."""
    path = text.strip()
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_PNG_SIGNATURE))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head != _PNG_SIGNATURE:
        raise ValueError(f"{path} is not a PNG file")
    return path


def _parse_lines(text: str) -> tuple[str, ...]:
    """Address lines: separated by a newline, a literal backslash-n or '|'."""
    parts = re.split(r"\n|\\n|\|", text)
    lines = tuple(part.strip() for part in parts if part.strip())
    if any(len(line) > 200 or re.search(r"[\x00-\x1f\x7f]", line) for line in lines):
        raise ValueError("address lines must be printable text of at most 200 characters")
    return lines


def _parse_text(text: str) -> str:
    value = text.strip()
    if re.search(r"[\x00-\x1f\x7f]", value) or len(value) > 500:
        raise ValueError("must be printable text of at most 500 characters")
    return value


def _parse_prefix(text: str) -> str:
    value = text.strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,15}", value):
        raise ValueError(f"must be 1-16 letters, digits or '-' (got {text!r})")
    return value


def _parse_tax_rate(text: str) -> Decimal:
    """``0.19`` or ``19%``: a fraction from 0 to 1."""
    value = text.strip()
    percent = value.endswith("%")
    try:
        rate = Decimal(value[:-1].strip() if percent else value)
    except InvalidOperation:
        raise ValueError(f"not a tax rate: {text!r} (use 0.19 or 19%)") from None
    if percent:
        rate = rate / 100
    if not rate.is_finite() or not 0 <= rate <= 1:
        raise ValueError(f"tax rate must be between 0 and 1 (0% and 100%), got {text!r}")
    return rate


def _default_data_dir(env: Mapping[str, str]) -> str:
    if os.geteuid() == 0:
        return "/var/lib/hpc-billing"
    base = env.get("XDG_DATA_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"),
                                                    ".local", "share")
    return os.path.join(base, "hpc-billing")


@dataclass(frozen=True, slots=True)
class Spec:
    field: str
    env: str
    flag: str
    parse: Callable[[str], object]
    default: str | None
    help: str


SPECS: tuple[Spec, ...] = (
    Spec("database_url", "DATABASE_URL", "--database-url", _parse_database_url, None,
         "PostgreSQL URL, postgresql+psycopg2://user:pw@host:port/db. Unset: an embedded "
         "PostgreSQL under HPC_BILLING_DATA_DIR (needs the 'embedded' extra)."),
    Spec("cluster", "HPC_BILLING_CLUSTER", "--cluster", str.strip, None,
         "Slurm cluster name (ClusterName). Passed to sacct --clusters; used for file "
         "exports that have no Cluster column."),
    Spec("source", "HPC_BILLING_SOURCE", "--source", _parse_source, "sacct",
         "Where accounting comes from: sacct, file, slurmrestd or pyslurm."),
    Spec("input", "HPC_BILLING_INPUT", "--input", str.strip, None,
         "File to import with the file source: sacct --parsable2 output with its header "
         "line, or sacct --json output."),
    Spec("timezone", "HPC_BILLING_TIMEZONE", "--timezone", _parse_timezone, "UTC",
         "Zone of times without a zone in imported files (sacct prints local time)."),
    Spec("sacct", "HPC_BILLING_SACCT", "--sacct", str.strip, "sacct",
         "Path of the sacct binary (default: sacct on PATH)."),
    Spec("scontrol", "HPC_BILLING_SCONTROL", "--scontrol", str.strip, "scontrol",
         "Path of the scontrol binary (partition billing weights for reconcile)."),
    Spec("sacct_timeout_s", "HPC_BILLING_SACCT_TIMEOUT", "--sacct-timeout", parse_duration_s, "300",
         "How long one sacct call may run before it and its children are killed."),
    Spec("slurmrestd_url", "HPC_BILLING_SLURMRESTD_URL", "--slurmrestd-url", _parse_rest_url, None,
         "slurmrestd base URL for the slurmrestd source: http(s)://host:port, or "
         "unix:/path/to/slurmrestd.sock (rest_auth/local)."),
    Spec("slurmrestd_user", "HPC_BILLING_SLURMRESTD_USER", "--slurmrestd-user", str.strip, None,
         "X-SLURM-USER-NAME sent with the JWT (the user the token was issued for)."),
    Spec("slurmrestd_token", "HPC_BILLING_SLURMRESTD_TOKEN", "--slurmrestd-token", str.strip, None,
         "JWT for slurmrestd (scontrol token). Prefer the token file: it is re-read at "
         "every poll, so a rotated token needs no restart."),
    Spec("slurmrestd_token_file", "HPC_BILLING_SLURMRESTD_TOKEN_FILE", "--slurmrestd-token-file",
         str.strip, None, "File holding the slurmrestd JWT (alone, or as SLURM_JWT=...)."),
    Spec("slurmrestd_timeout_s", "HPC_BILLING_SLURMRESTD_TIMEOUT", "--slurmrestd-timeout",
         parse_duration_s, "120", "How long one slurmrestd request may take."),
    Spec("slurmrestd_timezone", "HPC_BILLING_SLURMRESTD_TIMEZONE", "--slurmrestd-timezone",
         _parse_timezone, "UTC",
         "The time zone slurmrestd runs in (its TZ): it reads the window's times in it."),
    Spec("poll_interval_s", "HPC_BILLING_POLL_INTERVAL", "--poll-interval", parse_duration_s, "5m",
         "Time between polls of the daemon (collect without --once, run)."),
    Spec("stale_after_s", "HPC_BILLING_STALE_AFTER", "--stale-after", parse_duration_s, "15m",
         "/readyz fails when the last poll that stored its window (outcome ok or partial) "
         "is older than this (and, after a start, when no such poll happened within this "
         "grace period)."),
    Spec("node_interval_s", "HPC_BILLING_NODE_INTERVAL", "--node-interval", parse_duration_s, "5m",
         "Time between node inventory snapshots (scontrol show node)."),
    Spec("node_retention_s", "HPC_BILLING_NODE_RETENTION", "--node-retention", parse_duration_s,
         "400d", "How long node inventory snapshots are kept (pruned daily by the daemon "
         "and by `hpc-billing prune`)."),
    Spec("run_retention_s", "HPC_BILLING_RUN_RETENTION", "--run-retention", parse_duration_s,
         "400d", "How long the collector run log is kept (a run with quarantined input "
         "nobody accepted is kept; pruned daily by the daemon and by `hpc-billing prune`)."),
    Spec("overlap_s", "HPC_BILLING_OVERLAP", "--overlap", parse_duration_s, "10m",
         "How far before the watermark each poll starts again (slurmdbd writes lag)."),
    Spec("lookback_s", "HPC_BILLING_LOOKBACK", "--lookback", parse_duration_s, "1d",
         "How far back the very first poll reads when there is no watermark yet."),
    Spec("backfill_chunk_s", "HPC_BILLING_BACKFILL_CHUNK", "--chunk", parse_duration_s, "1d",
         "Size of one backfill window."),
    Spec("batch_rows", "HPC_BILLING_BATCH_ROWS", "--batch-rows", _parse_positive_int, "5000",
         "Jobs per COPY/MERGE batch (memory is bounded by one batch)."),
    Spec("skip_unchanged", "HPC_BILLING_SKIP_UNCHANGED", "--skip-unchanged", _parse_bool, "true",
         "Skip jobs whose raw sacct lines are exactly those they were stored from, before "
         "parsing them (false: parse and compare every job)."),
    Spec("rates", "HPC_BILLING_RATES", "--rates", str.strip, None,
         "Rate-card TOML file."),
    Spec("bind", "HPC_BILLING_BIND", "--bind", _parse_bind, "127.0.0.1:8000",
         "HOST:PORT the web app (probes, metrics, API) listens on."),
    Spec("api_tokens_file", "HPC_BILLING_API_TOKENS_FILE", "--api-tokens-file", str.strip, None,
         "File of API bearer tokens, stored hashed: one 'sha256:<hex> <scope>' per line, "
         "scope 'all' or 'account:<name>[,<name>...]' ('hpc-billing token new' makes one). "
         "Unset: the API answers no one; probes and /metrics need no token."),
    Spec("web_threads", "HPC_BILLING_WEB_THREADS", "--web-threads", _parse_positive_int, "8",
         "Threads serving the web app."),
    Spec("site_name", "HPC_BILLING_SITE_NAME", "--site-name", _parse_text, None,
         "The site's name on invoices and in FOCUS exports (ProviderName). Invoice numbers "
         "are derived from it: keep it stable. Required by 'statement --format pdf' and "
         "'export focus'."),
    Spec("site_address", "HPC_BILLING_SITE_ADDRESS", "--site-address", _parse_lines, None,
         "The site's postal address on invoices; lines separated by '|' or '\\n'."),
    Spec("site_logo", "HPC_BILLING_SITE_LOGO", "--site-logo", _parse_png_path, None,
         "A PNG logo for invoices (checked at start; scaled into 50 x 20 mm)."),
    Spec("invoice_prefix", "HPC_BILLING_INVOICE_PREFIX", "--invoice-prefix", _parse_prefix,
         "HPC", "Prefix of invoice numbers (<prefix>-<YYYYMM>-<code>) and GL journal names."),
    Spec("tax_rate", "HPC_BILLING_TAX_RATE", "--tax-rate", _parse_tax_rate, None,
         "Tax on invoices, 0.19 or 19%, applied once to the subtotal and rounded to the "
         "card's scale. Unset: no tax line."),
    Spec("tax_label", "HPC_BILLING_TAX_LABEL", "--tax-label", _parse_text, "VAT",
         "The tax line's label on invoices."),
    Spec("invoice_footer", "HPC_BILLING_INVOICE_FOOTER", "--invoice-footer", _parse_text, None,
         "A footer text on invoices (payment terms, bank details)."),
    Spec("gl_mapping", "HPC_BILLING_GL_MAPPING", "--gl-mapping", str.strip, None,
         "A TOML file with a [gl] table of general-ledger codes for 'export gl' (else the "
         "rate card's [gl] table)."),
    Spec("focus_billing_account_id", "HPC_BILLING_FOCUS_BILLING_ACCOUNT_ID",
         "--focus-billing-account-id", _parse_text, None,
         "FOCUS BillingAccountId: the site's id of the account it invoices (default: the "
         "site's name)."),
    Spec("focus_billing_account_name", "HPC_BILLING_FOCUS_BILLING_ACCOUNT_NAME",
         "--focus-billing-account-name", _parse_text, None,
         "FOCUS BillingAccountName (default: the site's name)."),
    Spec("focus_service_name", "HPC_BILLING_FOCUS_SERVICE_NAME", "--focus-service-name",
         _parse_text, "HPC batch computing (Slurm)", "FOCUS ServiceName."),
    Spec("audit_key_file", "HPC_BILLING_AUDIT_KEY_FILE", "--audit-key-file", str.strip, None,
         "File holding the audit trail's HMAC key (at least 32 bytes; readable by the "
         "service only, out of the database's reach). Unset: the trail is off, and "
         "'period close', 'period reopen' and 'audit verify' refuse to run."),
    Spec("data_dir", "HPC_BILLING_DATA_DIR", "--data-dir", str.strip, None,
         "Directory for the embedded PostgreSQL when DATABASE_URL is unset "
         "(default /var/lib/hpc-billing as root, else ~/.local/share/hpc-billing)."),
    Spec("log_level", "HPC_BILLING_LOG_LEVEL", "--log-level", _parse_log_level, "INFO",
         "DEBUG, INFO, WARNING or ERROR."),
)

SPEC_BY_FIELD = {spec.field: spec for spec in SPECS}


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None
    cluster: str | None
    source: str
    input: str | None
    timezone: str
    sacct: str
    scontrol: str
    sacct_timeout_s: float
    slurmrestd_url: str | None
    slurmrestd_user: str | None
    slurmrestd_token: str | None
    slurmrestd_token_file: str | None
    slurmrestd_timeout_s: float
    slurmrestd_timezone: str
    poll_interval_s: float
    stale_after_s: float
    node_interval_s: float
    node_retention_s: float
    run_retention_s: float
    overlap_s: float
    lookback_s: float
    backfill_chunk_s: float
    batch_rows: int
    skip_unchanged: bool
    rates: str | None
    bind: tuple[str, int]
    api_tokens_file: str | None
    web_threads: int
    site_name: str | None
    site_address: tuple[str, ...] | None
    site_logo: str | None
    invoice_prefix: str
    tax_rate: Decimal | None
    tax_label: str
    invoice_footer: str | None
    gl_mapping: str | None
    focus_billing_account_id: str | None
    focus_billing_account_name: str | None
    focus_service_name: str
    audit_key_file: str | None
    data_dir: str
    log_level: str

    @classmethod
    def load(cls, env: Mapping[str, str], overrides: Mapping[str, str | None] | None = None) -> Settings:
        """Build from the environment, then flags (field -> raw text) on top; list every error."""
        overrides = overrides or {}
        values: dict[str, object] = {}
        errors: list[str] = []
        for spec in SPECS:
            raw = overrides.get(spec.field)
            origin = spec.flag
            if raw is None:
                raw = env.get(spec.env)
                origin = spec.env
                if raw is not None and raw.strip() == "":
                    raw = None
            if raw is None:
                raw = spec.default
                origin = f"default of {spec.env}"
            if raw is None:
                values[spec.field] = None
                continue
            try:
                values[spec.field] = spec.parse(raw)
            except ValueError as exc:
                errors.append(f"{origin}: {exc}")
                values[spec.field] = None
        if values.get("data_dir") is None:
            values["data_dir"] = _default_data_dir(env)
        if errors:
            raise SettingsError(errors)
        return cls(**values)  # type: ignore[arg-type]

    def check_for_collect(self) -> None:
        """Cross-field checks for commands that read accounting; raises with every error."""
        errors: list[str] = []
        if self.source == "file":
            if not self.input:
                errors.append("HPC_BILLING_INPUT / --input: required with the file source")
            elif not os.path.isfile(self.input):
                errors.append(f"HPC_BILLING_INPUT / --input: no such file: {self.input}")
            elif not os.access(self.input, os.R_OK):
                errors.append(f"HPC_BILLING_INPUT / --input: not readable: {self.input}")
        elif self.source == "sacct":
            if not self.cluster:
                errors.append("HPC_BILLING_CLUSTER / --cluster: required with the sacct source "
                              "(Slurm's ClusterName: scontrol show config | grep ClusterName)")
            if shutil.which(self.sacct) is None:
                errors.append(f"HPC_BILLING_SACCT / --sacct: {self.sacct!r} is not an executable "
                              "(on PATH or as a path)")
        elif self.source == "slurmrestd":
            if not self.cluster:
                errors.append("HPC_BILLING_CLUSTER / --cluster: required with the slurmrestd source")
            if not self.slurmrestd_url:
                errors.append("HPC_BILLING_SLURMRESTD_URL / --slurmrestd-url: required with the "
                              "slurmrestd source")
            elif not self.slurmrestd_url.startswith("unix:"):
                if not (self.slurmrestd_token or self.slurmrestd_token_file):
                    errors.append("HPC_BILLING_SLURMRESTD_TOKEN_FILE or HPC_BILLING_SLURMRESTD_TOKEN: "
                                  "a JWT is required for slurmrestd over HTTP (scontrol token)")
                if not self.slurmrestd_user:
                    errors.append("HPC_BILLING_SLURMRESTD_USER / --slurmrestd-user: required with a JWT")
            if self.slurmrestd_token_file and not os.path.isfile(self.slurmrestd_token_file):
                errors.append("HPC_BILLING_SLURMRESTD_TOKEN_FILE: no such file: "
                              f"{self.slurmrestd_token_file}")
        elif self.source == "pyslurm":
            if not self.cluster:
                errors.append("HPC_BILLING_CLUSTER / --cluster: required with the pyslurm source")
            if importlib.util.find_spec("pyslurm") is None:
                errors.append("HPC_BILLING_SOURCE=pyslurm: pyslurm is not installed "
                              "(it must be the pyslurm release matching your Slurm's major.minor: "
                              "see the README, 'Installing the pyslurm that matches your Slurm')")
        if self.rates is not None and not os.path.isfile(self.rates):
            errors.append(f"HPC_BILLING_RATES / --rates: no such file: {self.rates}")
        if errors:
            raise SettingsError(errors)

    def describe(self) -> dict[str, object]:
        """The settings as a dict for logs, with the database password redacted."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "database_url" and value:
                value = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(value))
            elif f.name == "slurmrestd_token" and value:
                value = "***"
            out[f.name] = value
        return out

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)
