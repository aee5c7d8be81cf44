#!/usr/bin/env bash
# Stops hpc-billing's Slurm lab, every release: the daemons that deploy/lab/up.sh, or a test
# through deploy/lab/daemon.sh, started (restarted ones included), whose PIDs are recorded in
# $LAB_RUN/pids/<release>/, each only after `ps` shows the expected command name (a PID reused
# by another program is left alone). A munge or MariaDB that was already running before up.sh
# (a machine service) is never touched. Then it unmounts what up.sh mounted in the roots
# (/proc, /sys, /dev) and removes job output files (slurm-*.out) from the jobs' scratch dirs.
#
#   bash deploy/lab/down.sh            # stop; state, accounting DBs, configs and roots are kept
#   bash deploy/lab/down.sh --purge    # also drop the lab's accounting databases and remove the
#                                      # lab's own directories (a fresh lab next time); the
#                                      # cached roots and wheels stay (root.sh --rebuild)
#
# Besides the records, a daemon named by a pid file in a release's own run directory that is
# provably the lab's (for a root: its /proc/PID/root is the root; on the host: its environment
# has the lab's SLURM_CONF) is stopped too, and so is any process still running inside a
# root once its daemons are gone (job steps, slurmstepd).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=deploy/lab/lib.sh
source "$HERE/lib.sh"
PURGE=0
for arg in "$@"; do
    case "$arg" in
        --purge) PURGE=1 ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "down.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "down.sh: must run as root" >&2; exit 2; }
lab_lock

# lab_owned PID: the process belongs to the current release of the lab.
lab_owned() {
    if [ -n "$ROOT" ]; then
        [ "$(readlink "/proc/$1/root" 2>/dev/null)" = "$(readlink -f "$ROOT")" ]
    else
        tr '\0' '\n' < "/proc/$1/environ" 2>/dev/null | grep -qx "SLURM_CONF=$IN_ETC/slurm.conf"
    fi
}

# kill_wait PID NAME: SIGTERM, wait (SIGKILL after 20 s).
kill_wait() {
    local pid=$1 name=$2
    kill -TERM "$pid" 2>/dev/null || return 0
    if ! wait_gone "$name" "$pid" 20; then
        echo "lab: [$REL] $name ($pid) ignored SIGTERM for 20 s; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$name" "$pid" 5 || true
    fi
    echo "lab: [$REL] stopped $name ($pid)"
}

# stop LABEL [PIDFILE]: the recorded PID ($PIDS/LABEL.pid: "PID COMM"), and the one in the
# daemon's own pid file when it is provably the lab's.
stop() {
    local label=$1 file=$PIDS/$1.pid pidfile=${2:-} pid="" name=${3:-$1} own
    if [ -f "$file" ]; then
        read -r pid name < "$file" || true
        pid=$(printf '%s' "${pid:-}" | tr -dc '0-9')
        name=${name:-$label}
        if [ -n "$pid" ] && alive "$name" "$pid"; then
            kill_wait "$pid" "$name"
        fi
        rm -f "$file"
    fi
    if [ -n "$pidfile" ]; then
        own=$(pid_from "$pidfile")
        if [ -n "$own" ] && [ "$own" != "$pid" ] && alive "$name" "$own" && lab_owned "$own"; then
            echo "lab: [$REL] $label ($own) was not on the books (a restart nobody recorded); stopping it"
            kill_wait "$own" "$name"
        fi
    fi
}

down_release() {
    release_vars "$1"
    # Jobs first: a job's processes outlive slurmd otherwise.
    if alive slurmctld "$(pid_from "$H_RUN/slurmctld.pid")" && [ -x "$REL_DIR/bin/squeue" ]; then
        local jobs
        jobs=$(timeout 20 "$REL_DIR/bin/squeue" -h -o %A 2>/dev/null | paste -sd' ' || true)
        if [ -n "$jobs" ]; then
            # shellcheck disable=SC2086
            timeout 20 "$REL_DIR/bin/scancel" $jobs 2>/dev/null || true
            for _ in $(seq 100); do
                [ -z "$(timeout 10 "$REL_DIR/bin/squeue" -h -o %A 2>/dev/null)" ] && break
                sleep 0.2
            done
            echo "lab: [$REL] cancelled jobs $jobs"
        fi
    fi
    stop slurmrestd "$H_RUN/slurmrestd.pid" slurmrestd
    stop slurmrestd-local "$H_RUN/slurmrestd-local.pid" slurmrestd
    stop slurmd "$H_RUN/slurmd.pid"
    stop slurmctld "$H_RUN/slurmctld.pid"
    stop slurmdbd "$H_RUN/slurmdbd.pid"
    if [ -n "$ROOT" ]; then
        stop munged "$ROOT/run/munge/munged.pid"
        # Anything still running in the root (a job step, a slurmstepd) is the lab's.
        local pid left=""
        for pid in $(ls /proc | grep -E '^[0-9]+$'); do
            [ "$pid" != $$ ] && lab_owned "$pid" && left="$left $pid"
        done
        if [ -n "$left" ]; then
            echo "lab: [$REL] stopping what still runs in the root:$left"
            # shellcheck disable=SC2086
            kill -TERM $left 2>/dev/null || true
            sleep 1
            for pid in $left; do kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true; done
        fi
        unmount_under "$ROOT"
    else
        stop munged
    fi
    # Job output never belongs anywhere: the lab's jobs write to /dev/null or their scratch dir.
    if [ -d "$H_STATE/jobs" ]; then
        find "$H_STATE/jobs" -maxdepth 2 -name 'slurm-*.out' -print -delete | sed "s/^/lab: [$REL] removed /"
    fi
    if [ "$PURGE" = 1 ]; then
        if mysqladmin ping >/dev/null 2>&1; then
            mysql -e "DROP DATABASE IF EXISTS $DB_NAME; DROP USER IF EXISTS '$DB_USER'@'localhost'; DROP USER IF EXISTS '$DB_USER'@'127.0.0.1';"
            echo "lab: [$REL] dropped database $DB_NAME"
        fi
        if [ -n "$ROOT" ]; then
            rm -rf "$H_ETC" "$H_STATE" "$H_LOG" "$H_RUN"
        fi
        rm -rf "$REL_DIR" "$REL_DIR.env"
    fi
}

for rel in 26.05 24.11 22.05; do
    down_release "$rel"
done
# MariaDB last (recorded under 22.05 only when up.sh started it).
release_vars 22.05
stop mariadbd
rm -f "$LAB_ETC/env"

if [ "$PURGE" = 1 ]; then
    rm -rf "$LAB_ETC" "$IN_STATE" "$IN_LOG" "$LAB_RUN"
    echo "lab: removed $LAB_ETC $IN_STATE $IN_LOG $LAB_RUN (the roots and wheels in $LAB_CACHE stay)"
fi
