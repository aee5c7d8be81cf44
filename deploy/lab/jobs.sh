#!/usr/bin/env bash
# An example job mix for the hpc-billing lab: something of everything the collector must
# handle, to try hpc-billing by hand. Run it as root after deploy/lab/up.sh:
#
#   bash deploy/lab/jobs.sh [--release 24.11] [--no-wait]   # default 22.05; waits until sacct
#                                                           # shows all final (~1 min)
#   source /etc/hpc-billing-lab/releases/24.11.env           # its wrappers first on PATH
#   hpc-billing collect --once --cluster lab2411 --sacct "$HPC_BILLING_LAB_BIN/sacct" \
#       --rates collector/data/demo-rates.toml
#
# The mix: a job with srun steps, an array, typed GPU jobs (a100 and h100, both partitions), an
# untyped GPU (an l4: accounting does not track its type),
# a job that fails (exit 3), one whose step fails (exit 7), one cancelled while running, one
# cancelled while pending, jobs of alice (chemistry) and bob (physics), a QOS "high" job, a
# name with "|" and one with odd characters, and a job that keeps running for 10 minutes.
# The requeue case is left out (slurmctld holds a requeued job for 120 s); try it with
#   scontrol requeue <jobid>
set -euo pipefail

LAB_ETC=${HPC_BILLING_LAB_ETC:-/etc/hpc-billing-lab}
WAIT=1
RELEASE=22.05
while [ $# -gt 0 ]; do
    case "$1" in
        --no-wait) WAIT=0 ;;
        --release) shift; RELEASE=${1:?--release needs a value} ;;
        *) echo "jobs.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
ENV_FILE=$LAB_ETC/releases/$RELEASE.env
[ -f "$ENV_FILE" ] || { echo "jobs.sh: no $ENV_FILE: run deploy/lab/up.sh first" >&2; exit 2; }
# shellcheck source=/dev/null
source "$ENV_FILE"      # puts the release's sbatch, sacct ... first on PATH
cd /tmp

ids=()
sub() {   # sub NAME SBATCH-ARGS...: submit, print, remember the id
    local name=$1 id; shift
    id=$(sbatch --parsable --chdir="$HPC_BILLING_LAB_JOBS_DIR" --output=/dev/null "$@")
    id=${id%%;*}
    printf '  %-16s %s\n' "$name" "$id"
    ids+=("$id")
    LAST=$id
}

echo "submitting:"
sub steps          -J steps -c2 --mem=1G -t 5 --wrap 'srun -n1 sleep 2; srun -n1 hostname; srun -n1 true'
sub array          -J array --array=1-3 -c1 --mem=100M --wrap 'sleep 2'
sub gpu-a100x2     -J a100x2 -p gpu --gres=gpu:a100:2 -c2 --mem=1G --wrap 'sleep 5'
sub gpu-h100       -J h100x1 -p gpu --gres=gpu:h100:1 -c1 --mem=512M --wrap 'sleep 5'
sub batch-h100x2   -J batch_h100x2 --gres=gpu:h100:2 -c3 --mem=3G --wrap 'sleep 3'
sub untyped-gpu    -J untyped_gpu --gres=gpu:l4:1 -c1 --mem=256M --wrap 'sleep 3'
sub fail3          -J fail3 -c1 --mem=100M --wrap 'sleep 1; exit 3'
sub failstep       -J failstep -c1 --mem=100M --wrap "srun sh -c 'sleep 1; exit 7'; true"
sub cancel-running -J cancel_running -c1 --mem=100M --wrap 'sleep 300'
RUNNING_ONE=$LAST
# gpu's MaxTime is 2 h: this one stays PENDING (PartitionTimeLimit) until cancelled.
sub cancel-pending -J cancel_pending -p gpu -t 3:00:00 -c1 --mem=100M --wrap 'sleep 1'
PENDING_ONE=$LAST
sub alice          --uid=alice --gid=alice -A chemistry -J alice_chem -c1 --mem=200M --wrap 'sleep 2'
sub bob            --uid=bob --gid=bob -A physics -J bob_phys -p gpu --gres=gpu:a100:1 -c1 --mem=200M --wrap 'sleep 2'
sub high-qos       -J high_qos -A biology --qos=high -c2 --mem=256M --wrap 'sleep 2'
sub pipe-name      -J 'odd|name|with|pipes' -c1 --mem=100M --wrap 'sleep 1'
sub odd-name       -J $'tab\there \'sq\' $HOME \\back ünï;&*?' -c1 --mem=100M --wrap 'sleep 1'
sub long-running   -J long_running -c1 --mem=100M -t 15 --wrap 'sleep 600'
LONG=$LAST

# Cancel one job once it runs, and one while it waits.
for _ in $(seq 100); do
    [ "$(squeue -h -j "$RUNNING_ONE" -o %T)" = RUNNING ] && break
    sleep 0.3
done
sleep 2
scancel "$RUNNING_ONE" "$PENDING_ONE"
echo "cancelled $RUNNING_ONE (running) and $PENDING_ONE (pending)"

if [ "$WAIT" = 1 ]; then
    echo "waiting until sacct has every job but $LONG final ..."
    others=$(printf '%s\n' "${ids[@]}" | grep -vx "$LONG" | paste -sd,)
    for _ in $(seq 240); do
        open=$(sacct -n -X -P -j "$others" -o State | grep -cE 'PENDING|RUNNING|REQUEUED' || true)
        [ "$open" = 0 ] && break
        sleep 0.5
    done
fi
sacct -X -o JobID,JobName%20,Partition,Account,User,State,AllocTRES%60 -j "$(IFS=,; echo "${ids[*]}")"
