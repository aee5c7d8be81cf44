#!/usr/bin/env bash
# Stops hpc-billing's Slurm lab: only the daemons deploy/lab/up.sh started itself, whose
# PIDs it recorded in $LAB_RUN/pids, and only after `ps -o comm= -p PID` shows the
# expected name (a PID reused by another program is left alone). A munge or MariaDB
# that was already running before up.sh (a machine service) is never touched.
#
#   bash deploy/lab/down.sh            # stop; state, accounting DB and configs are kept
#   bash deploy/lab/down.sh --purge    # also drop the lab's accounting database and
#                                      # remove the lab's own directories (a fresh lab next time)
set -euo pipefail

LAB_ETC=${HPC_BILLING_LAB_ETC:-/etc/hpc-billing-lab}
LAB_STATE=${HPC_BILLING_LAB_STATE:-/var/lib/hpc-billing-lab}
LAB_LOG=${HPC_BILLING_LAB_LOG:-/var/log/hpc-billing-lab}
LAB_RUN=${HPC_BILLING_LAB_RUN:-/run/hpc-billing-lab}
PIDS=$LAB_RUN/pids
DB_NAME=hpcb_lab_acct
DB_USER=hpcb_lab
PURGE=0
for arg in "$@"; do
    case "$arg" in
        --purge) PURGE=1 ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "down.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

# running PID NAME: PID is a live (not zombie) process whose command name is NAME. A
# daemon's parent is PID 1, which may reap it late; a zombie has already stopped.
running() {
    local state
    state=$(ps -o stat=,comm= -p "$1" 2>/dev/null || true)
    [ -n "$state" ] && [[ $state != Z* ]] && [ "${state##* }" = "$2" ]
}

# stop LABEL: $PIDS/LABEL.pid holds "PID COMM" (COMM defaults to LABEL). SIGTERM the PID
# if its command name is still COMM, and wait for it (SIGKILL after 20 s).
stop() {
    local label=$1 file=$PIDS/$1.pid pid name comm
    [ -f "$file" ] || return 0
    read -r pid name < "$file" || true
    pid=$(printf '%s' "${pid:-}" | tr -dc '0-9')
    name=${name:-$label}
    comm=$(ps -o comm= -p "${pid:-0}" 2>/dev/null || true)
    if [ -z "$pid" ] || ! running "$pid" "$name"; then
        echo "lab: $label: recorded PID ${pid:-?} is ${comm:-gone}${comm:+ (not a running $name)}; nothing to stop"
        rm -f "$file"
        return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 200); do
        running "$pid" "$name" || break
        sleep 0.1
    done
    if running "$pid" "$name"; then
        echo "lab: $name ($pid) ignored SIGTERM for 20 s; SIGKILL"
        kill -KILL "$pid"
    fi
    echo "lab: stopped $name ($pid)"
    rm -f "$file"
}

# Reverse start order; MariaDB stays up until the purge has dropped the database.
for label in slurmrestd slurmrestd-local slurmd slurmctld slurmdbd; do
    stop "$label"
done
if [ "$PURGE" = 1 ] && mysqladmin ping >/dev/null 2>&1; then
    mysql -e "DROP DATABASE IF EXISTS $DB_NAME; DROP USER IF EXISTS '$DB_USER'@'localhost';"
    echo "lab: dropped database $DB_NAME"
fi
stop mariadbd
stop munged

if [ "$PURGE" = 1 ]; then
    rm -rf "$LAB_ETC" "$LAB_STATE" "$LAB_LOG" "$LAB_RUN"
    echo "lab: removed $LAB_ETC $LAB_STATE $LAB_LOG $LAB_RUN"
fi
