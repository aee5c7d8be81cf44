#!/usr/bin/env bash
# CI: bring the Slurm lab up for the slurm test group (tests/slurm): all three releases
# (22.05 on the host, 24.11 and 26.05 in their cached debootstrap roots, built here when
# absent), each with slurmrestd, and say so in the log. .ci/run calls it before the tests
# (as root) and deploy/lab/down.sh after. Exit status is up.sh's: a lab that does not come
# up fails CI before any test runs.
set -euo pipefail
cd "$(dirname "$0")"
started=$(date +%s)
bash ./up.sh --rest
etc=${HPC_BILLING_LAB_ETC:-/etc/hpc-billing-lab}
for env_file in "$etc"/releases/*.env; do
    (
        # shellcheck source=/dev/null
        source "$env_file"
        echo "lab: Slurm $HPC_BILLING_LAB_SLURM_VERSION, cluster $HPC_BILLING_LAB_CLUSTER," \
             "slurmrestd at ${HPC_BILLING_LAB_REST_URL:-none}"
        "$HPC_BILLING_LAB_BIN/sinfo"
    )
done
echo "lab: up in $(( $(date +%s) - started ))s"
