#!/usr/bin/env bash
# Stops or starts one of the lab's Slurm daemons of one release, keeping the books: every
# start records its PID in $LAB_RUN/pids/<release>/ so that deploy/lab/down.sh stops it.
# For tests that take a daemon away and bring it back (tests/slurm, the slurmdbd outage):
#
#   bash deploy/lab/daemon.sh 24.11 stop slurmdbd
#   bash deploy/lab/daemon.sh 24.11 start slurmdbd      # waits until it answers
#
# DAEMON is slurmdbd, slurmctld or slurmd. Takes the lab's lock, or shares it when the caller
# holds it and passes its descriptor as HPC_BILLING_LAB_LOCK_FD (the test session does).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=deploy/lab/lib.sh
source "$HERE/lib.sh"
[ $# = 3 ] || { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
release_vars "$1"
action=$2 name=$3
case "$name" in slurmdbd|slurmctld|slurmd) ;; *) echo "daemon.sh: not a lab daemon: $name" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "daemon.sh: must run as root" >&2; exit 2; }
lab_lock
pidfile=$H_RUN/$name.pid

case "$action" in
    stop)
        pid=$(pid_from "$pidfile")
        alive "$name" "$pid" || { echo "daemon.sh: [$REL] $name is not running" >&2; exit 1; }
        kill -TERM "$pid"
        wait_gone "$name" "$pid" 30 || { echo "daemon.sh: [$REL] $name ($pid) did not stop" >&2; exit 1; }
        rm -f "$PIDS/$name.pid"
        echo "lab: [$REL] stopped $name ($pid)"
        ;;
    start)
        pid=$(pid_from "$pidfile")
        if alive "$name" "$pid"; then
            echo "lab: [$REL] $name already runs ($pid)"
            [ -s "$PIDS/$name.pid" ] || record "$name" "$pid"
            exit 0
        fi
        rm -f "$pidfile"
        in_rel "/usr/sbin/$name"
        for _ in $(seq 300); do
            pid=$(pid_from "$pidfile")
            alive "$name" "$pid" && break
            sleep 0.1
        done
        alive "$name" "$pid" || { echo "daemon.sh: [$REL] $name did not start (see $H_LOG)" >&2; exit 1; }
        record "$name" "$pid"
        if [ "$name" = slurmdbd ]; then
            for _ in $(seq 300); do
                in_rel sacctmgr -n show cluster >/dev/null 2>&1 && break
                sleep 0.2
            done
        fi
        echo "lab: [$REL] started $name ($pid)"
        ;;
    *) echo "daemon.sh: stop or start, not $action" >&2; exit 2 ;;
esac
