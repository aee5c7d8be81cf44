#!/usr/bin/env bash
# Runs hpc-billing's checks: installs the test dependencies into ./.venv, then ruff (lint)
# and mypy --strict (types; both configured in pyproject.toml), then pytest with the 25
# slowest tests listed. Tests use the PostgreSQL on 127.0.0.1:5432 when it answers, and otherwise start a
# private server from the machine's PostgreSQL binaries (installed here when missing and
# running as root). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

have_pg_binaries() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }
pg_answers() { "$PY" - <<'PYEOF' 2>/dev/null
import socket, sys
s = socket.socket(); s.settimeout(1)
sys.exit(s.connect_ex(("127.0.0.1", 5432)))
PYEOF
}

if ! pg_answers && ! have_pg_binaries; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "tests: installing PostgreSQL binaries for a private test server" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    else
        echo "tests: no PostgreSQL on 127.0.0.1:5432 and no PostgreSQL binaries; install 'postgresql'" >&2
        exit 2
    fi
fi
if ! command -v promtool >/dev/null; then
    # promtool checks the /metrics output (Debian's prometheus package ships it).
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "tests: installing promtool (Debian package prometheus)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    else
        echo "tests: promtool is missing (apt-get install prometheus); its test will be skipped" >&2
    fi
fi
if ! command -v docker-compose >/dev/null || ! command -v systemd-analyze >/dev/null; then
    # tests/deploy: `docker-compose config` validates compose.yaml (no Docker engine needed),
    # `systemd-analyze security --offline` rates the systemd unit.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "tests: installing docker-compose and systemd-analyze (Debian packages docker-compose, systemd)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose systemd >/dev/null
    else
        echo "tests: docker-compose or systemd-analyze is missing; their tests will be skipped" >&2
    fi
fi
if ! command -v pdftoppm >/dev/null || ! command -v pdftotext >/dev/null || ! command -v tesseract >/dev/null; then
    # The PDF invoice tests render pages to PNG and read the text back, from the PDF
    # (Debian poppler-utils) and from the picture by OCR (tesseract-ocr, English data).
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "tests: installing poppler-utils and tesseract-ocr for the PDF invoice tests" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends poppler-utils tesseract-ocr tesseract-ocr-eng >/dev/null
    else
        echo "tests: pdftoppm/pdftotext/tesseract missing (apt-get install poppler-utils tesseract-ocr); the PDF tests will be skipped" >&2
    fi
fi
if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
echo "tests: ruff check" >&2
.venv/bin/python -m ruff check --quiet .
echo "tests: mypy (strict: collector, billing)" >&2
.venv/bin/python -m mypy
exec .venv/bin/python -m pytest --durations=25 "$@"
