#!/usr/bin/env bash
# Sets hpc-billing up in ./.venv and runs the main job on the bundled default: imports a
# real sacct export (Slurm 22.05 lab cluster) into PostgreSQL and prints what it collected.
# PostgreSQL: DATABASE_URL when set, otherwise an embedded server started by the program
# (data in ~/.local/share/hpc-billing, or /var/lib/hpc-billing as root). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "quickstart: hpc-billing needs Python >= 3.11 (found: $("$PY" --version 2>&1))" >&2
    exit 2
fi
if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    else
        echo "quickstart: Python's venv module is missing: sudo apt-get install python3-venv" >&2
        exit 2
    fi
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[embedded]'
exec .venv/bin/hpc-billing demo "$@"
