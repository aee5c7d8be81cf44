#!/usr/bin/env bash
# CI: bring the Slurm lab up for the slurm test group (tests/slurm), with slurmrestd, and
# say so in the log. .ci/run calls it before the tests (as root) and deploy/lab/down.sh after.
# Exit status is up.sh's: a lab that does not come up fails CI before any test runs.
set -euo pipefail
cd "$(dirname "$0")"
started=$(date +%s)
bash ./up.sh --rest
# shellcheck source=/dev/null
source "${HPC_BILLING_LAB_ETC:-/etc/hpc-billing-lab}/env"
sinfo
echo "lab: up in $(( $(date +%s) - started ))s; SLURM_CONF=$SLURM_CONF; slurmrestd at ${HPC_BILLING_LAB_REST_URL:-none}"
