#!/usr/bin/env bash
# Captures real accounting output of one lab release, for fixtures and for parser work:
#
#   bash deploy/lab/capture.sh 24.11 DIR     # the lab must be up with --rest
#
# It submits a small job mix (CPU only; typed a100 and h100 GPUs; an untyped GPU; an array
# of 3; a job that fails; a job of alice's; a job cancelled while pending; a heterogeneous
# job; a job left RUNNING), waits until sacct has every job but the running one final, and
# writes into DIR (all times UTC):
#   sacct-all.psv            sacct --allusers --duplicates --noconvert --parsable2 --format=ALL -j IDS
#                            (with its header line)
#   sacct-json[-v0.0.NN].json  sacct --json[=v0.0.NN] --allusers --duplicates -j IDS (the default
#                            data_parser, then every version the release serves; 22.05: no versions)
#   slurmrestd-v0.0.NN-jobs.json  GET /slurmdb/v0.0.NN/jobs?start_time=..&end_time=.. for every
#                            v0.0.NN that the release's slurmrestd serves (JWT, user root)
#   openapi-v3.json          GET /openapi/v3 of the release's slurmrestd
#   sacctmgr-show-tres.psv   sacctmgr show tres -P (the TRES ids in pyslurm's tres_alloc_str)
#   jobs.txt                 the job ids and what each is
# The running job is cancelled at the end; job output goes to /dev/null.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=deploy/lab/lib.sh
source "$HERE/lib.sh"
[ $# = 2 ] || { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
release_vars "$1"
OUT=$2
mkdir -p "$OUT"
# shellcheck source=/dev/null
source "$REL_DIR.env"
B=$HPC_BILLING_LAB_BIN
export TZ=UTC
JOBS=$IN_STATE/jobs

sub() {   # sub NAME SBATCH-ARGS...: submit, remember "id name"
    local name=$1 id; shift
    id=$("$B/sbatch" --parsable --chdir="$JOBS" --output=/dev/null "$@")
    id=${id%%;*}
    echo "$id $name" >> "$OUT/jobs.txt"
    printf '%s' "$id"
}
: > "$OUT/jobs.txt"
START=$(date -u +%s)
ids=()
ids+=("$(sub cpu_only -J cpu_only -c2 --mem=1G --wrap 'srun -n1 sleep 2; srun -n1 true')")
ids+=("$(sub a100 -J a100x2 -p gpu --gres=gpu:a100:2 -c2 --mem=1G --wrap 'sleep 2')")
ids+=("$(sub h100 -J h100x1 -p gpu --gres=gpu:h100:1 -c1 --mem=512M --wrap 'sleep 2')")
ids+=("$(sub untyped_gpu -J untyped_gpu --gres=gpu:l4:1 -c1 --mem=256M --wrap 'sleep 2')")
ids+=("$(sub array -J array --array=1-3 -c1 --mem=100M --wrap 'sleep 1')")
ids+=("$(sub failed -J fail3 -c1 --mem=100M --wrap 'sleep 1; exit 3')")
ids+=("$(sub alice -J alice_chem --uid=alice --gid=alice -A chemistry -c1 --mem=200M --wrap 'sleep 1')")
running=$(sub running -J running -c1 --mem=100M -t 15 --wrap 'sleep 600')
ids+=("$running")
for _ in $(seq 100); do
    [ "$("$B/squeue" -h -j "$running" -o %T)" = RUNNING ] && break
    sleep 0.3
done
pending=$(sub cancelled_pending -J cancel_pending -p gpu -t 3:00:00 -c1 --mem=100M --wrap 'sleep 1')
ids+=("$pending")
# A heterogeneous job (two components). On one node it never starts (RECIPE gotcha 5) and
# holds the node for itself ("planned"): it is cancelled while pending, after the others ran.
printf '#!/bin/sh\nsleep 1\n' > "$H_STATE/jobs/het.sh"
others=$(printf '%s\n' "${ids[@]}" | grep -vx "$running" | grep -vx "$pending" | paste -sd,)
for _ in $(seq 120); do
    open=$("$B/sacct" -n -X -P -j "$others" -o State | grep -cE 'PENDING|RUNNING|REQUEUED' || true)
    [ "$open" = 0 ] && break
    sleep 0.5
done
het=$(sub het -J het -c1 --mem=100M : -c1 --mem=100M "$JOBS/het.sh")
ids+=("$het")
IDS=$(IFS=,; echo "${ids[*]}")
sleep 3
"$B/scancel" "$pending" "$het"
# Wait until every job but the running one is final in sacct.
others=$(printf '%s\n' "${ids[@]}" | grep -vx "$running" | paste -sd,)
for _ in $(seq 120); do
    open=$("$B/sacct" -n -X -P -j "$others" -o State | grep -cE 'PENDING|RUNNING|REQUEUED' || true)
    [ "$open" = 0 ] && break
    sleep 0.5
done
sleep 5     # slurmdbd writes short jobs in two goes (deploy/lab/README.md)

"$B/sacct" --allusers --duplicates --noconvert --parsable2 --format=ALL -j "$IDS" > "$OUT/sacct-all.psv"
"$B/sacct" --json --allusers --duplicates -j "$IDS" > "$OUT/sacct-json.json"
"$B/sacctmgr" show tres -P > "$OUT/sacctmgr-show-tres.psv"
END=$(( $(date -u +%s) + 1 ))

versions=""
if [ -n "${HPC_BILLING_LAB_REST_URL:-}" ]; then
    token=$(sed -n 's/^SLURM_JWT=//p' "$HPC_BILLING_LAB_REST_TOKEN_FILE")
    get() {
        curl -sS --fail-with-body -H "X-SLURM-USER-NAME: root" -H "X-SLURM-USER-TOKEN: $token" \
            "$HPC_BILLING_LAB_REST_URL$1"
    }
    get /openapi/v3 > "$OUT/openapi-v3.json"
    # (the document escapes "/" as "\/")
    versions=$(grep -oE 'slurmdb\\?/v0\.0\.[0-9]+\\?/jobs' "$OUT/openapi-v3.json" | grep -oE 'v0\.0\.[0-9]+' | sort -uV)
    for v in $versions; do
        # Every version refuses an epoch start_time ("Parsing of N for timestamp failed" on
        # 24.11); ISO with percent-encoded colons works (RECIPE §8), read in slurmrestd's TZ (UTC).
        q="start_time=$(date -u -d "@$START" +%Y-%m-%dT%H%%3A%M%%3A%S)&end_time=$(date -u -d "@$END" +%Y-%m-%dT%H%%3A%M%%3A%S)"
        get "/slurmdb/$v/jobs?$q" > "$OUT/slurmrestd-$v-jobs.json"
        if [ "$REL" != 22.05 ]; then
            "$B/sacct" --json="$v" --allusers --duplicates -j "$IDS" > "$OUT/sacct-json-$v.json" 2>/dev/null \
                || rm -f "$OUT/sacct-json-$v.json"
        fi
    done
fi
"$B/scancel" "$running" 2>/dev/null || true
{
    echo "# Slurm $HPC_BILLING_LAB_SLURM_VERSION, cluster $CLUSTER, captured $(date -u +%FT%TZ)"
    echo "# window for slurmrestd: start_time=$START end_time=$END; data_parser versions served: $(echo $versions)"
} >> "$OUT/jobs.txt"
rm -f "$H_STATE/jobs/het.sh"
echo "lab: captured Slurm $REL into $OUT: $(ls "$OUT" | paste -sd' ')"
