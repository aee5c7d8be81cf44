# shellcheck shell=bash
# Shared by the lab's scripts (up.sh, down.sh, root.sh, daemon.sh, pyslurm.sh): the release
# table, the lock, pid bookkeeping and running a command in a release's root. Sourced, never run.
#
# Three clusters run side by side (shared/slurm/RELEASES.md):
#   release  where                      cluster  ports        accounting DB (host MariaDB)
#   22.05    the Debian 12 host         lab      16817-16820  hpcb_lab_acct
#   24.11    a debootstrap trixie root  lab2411  17817-17820  hpcb_lab2411_acct
#   26.05    a debootstrap sid root     lab2605  18817-18820  hpcb_lab2605_acct
# Inside a root the daemons see the same paths as on the host (/etc/hpc-billing-lab,
# /var/lib/hpc-billing-lab, /var/log/hpc-billing-lab, /run/hpc-billing-lab); from the host
# they are under the root. What the host keeps for every release:
#   $LAB_ETC/releases/<rel>.env        the release's env file (tests and scripts source it)
#   $LAB_ETC/releases/<rel>/bin/       wrappers: sacct, sbatch ... running in the root
#   $LAB_RUN/pids/<rel>/<label>.pid    "PID COMM" of every daemon the lab (or a test) started

LAB_ETC=${HPC_BILLING_LAB_ETC:-/etc/hpc-billing-lab}
LAB_RUN=${HPC_BILLING_LAB_RUN:-/run/hpc-billing-lab}
LAB_CACHE=${HPC_BILLING_LAB_CACHE:-/var/cache/hpc-billing-lab}
LAB_LOCK=${HPC_BILLING_LAB_LOCK:-/run/lock/hpc-billing-lab.lock}
LAB_RELEASES="22.05 24.11 26.05"
# Inside every root (and on the host for 22.05).
IN_ETC=/etc/hpc-billing-lab
IN_STATE=/var/lib/hpc-billing-lab
IN_LOG=/var/log/hpc-billing-lab
IN_RUN=/run/hpc-billing-lab

# release_vars REL: set SUITE ROOT CLUSTER ports DB names for one release ("" ROOT = host).
release_vars() {
    REL=$1
    case "$REL" in
        22.05) SUITE=bookworm; ROOT=""; CLUSTER=lab; PORT_BASE=16817; DB_NAME=hpcb_lab_acct
               DB_USER=hpcb_lab; REST_USER=slurm ;;
        24.11) SUITE=trixie; ROOT=$LAB_CACHE/roots/trixie; CLUSTER=lab2411; PORT_BASE=17817
               DB_NAME=hpcb_lab2411_acct; DB_USER=hpcb_lab2411; REST_USER=slurmrest ;;
        26.05) SUITE=sid; ROOT=$LAB_CACHE/roots/sid; CLUSTER=lab2605; PORT_BASE=18817
               DB_NAME=hpcb_lab2605_acct; DB_USER=hpcb_lab2605; REST_USER=slurmrest ;;
        *) echo "lab: unknown release '$REL' (one of: $LAB_RELEASES)" >&2; return 2 ;;
    esac
    CTLD_PORT=$PORT_BASE
    SLURMD_PORT=$((PORT_BASE + 1))
    DBD_PORT=$((PORT_BASE + 2))
    REST_PORT=$((PORT_BASE + 3))
    PIDS=$LAB_RUN/pids/$REL
    REL_DIR=$LAB_ETC/releases/$REL          # host side: env file's dir, wrappers
    # The release's own directories as seen from the host.
    H_ETC=$ROOT$IN_ETC
    H_STATE=$ROOT$IN_STATE
    H_LOG=$ROOT$IN_LOG
    H_RUN=$ROOT$IN_RUN
}

# ------------------------------------------------------------------ the lock
# One user of the lab at a time on a machine: up.sh, down.sh and daemon.sh take the lock
# for their run, the slurm test group for its session. A caller that already holds it
# passes the open descriptor down as HPC_BILLING_LAB_LOCK_FD (flock on the same open file
# description succeeds at once), so a test can restart a daemon through daemon.sh.
lab_lock() {
    local wait_s=${HPC_BILLING_LAB_LOCK_WAIT_S:-900}
    local fd=${HPC_BILLING_LAB_LOCK_FD:-}
    if [ -n "$fd" ] && [ "$(readlink "/proc/$$/fd/$fd" 2>/dev/null)" = "$(readlink -f "$LAB_LOCK")" ]; then
        flock -n "$fd" && return 0
        echo "lab: the lock passed as HPC_BILLING_LAB_LOCK_FD=$fd is held by someone else" >&2
        return 1
    fi
    mkdir -p "$(dirname "$LAB_LOCK")"
    exec 9>>"$LAB_LOCK"
    if ! flock -n 9; then
        echo "lab: waiting for the lab's lock ($LAB_LOCK; another user of the lab runs)" >&2
        flock -w "$wait_s" 9 || { echo "lab: lock not free after ${wait_s}s" >&2; return 1; }
    fi
    export HPC_BILLING_LAB_LOCK_FD=9      # the scripts this one runs share the lock
}

# ------------------------------------------------------------------ pid bookkeeping
# alive NAME PID: the process exists, is not a zombie (a daemon's parent is PID 1, which
# may reap it late) and its command name is NAME.
alive() {
    local state
    [ -n "${2:-}" ] || return 1
    state=$(ps -o stat=,comm= -p "$2" 2>/dev/null || true)
    [ -n "$state" ] && [[ $state != Z* ]] && [ "${state##* }" = "$1" ]
}
pid_from() { [ -s "$1" ] && awk '{print $1; exit}' "$1" | tr -dc '0-9' || true; }
# record LABEL PID [COMM]: the lab started PID; down.sh stops it.
record() { mkdir -p "$PIDS"; echo "$2 ${3:-$1}" > "$PIDS/$1.pid"; }

wait_gone() {   # wait_gone NAME PID [SECONDS]
    local deadline=$(( $(date +%s) + ${3:-15} ))
    while alive "$1" "$2"; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# unlocked CMD...: run CMD without the lock's descriptor. Every daemon must be started so: a
# daemon keeps the descriptors it inherits, and would hold the lab's lock for ever.
unlocked() {
    if [ -n "${HPC_BILLING_LAB_LOCK_FD:-}" ]; then "$@" {HPC_BILLING_LAB_LOCK_FD}>&-; else "$@"; fi
}
# For a daemon started in the background: `(unlocked_exec CMD...) &` makes $! CMD's own PID.
unlocked_exec() {
    if [ -n "${HPC_BILLING_LAB_LOCK_FD:-}" ]; then exec {HPC_BILLING_LAB_LOCK_FD}>&-; fi
    exec "$@"
}

# ------------------------------------------------------------------ running in a release
# in_rel CMD ARGS...: run CMD for the current release: on the host with SLURM_CONF, or in
# the root through chroot with a clean environment (a chroot passes the host's environment
# on, and variables such as PIP_FIND_LINKS or a pyenv PATH mean nothing there).
in_rel() {
    if [ -z "$ROOT" ]; then
        SLURM_CONF=$IN_ETC/slurm.conf unlocked "$@"
    else
        unlocked chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
            LANG=C.UTF-8 TZ="${TZ:-UTC}" SLURM_CONF=$IN_ETC/slurm.conf "$@"
    fi
}

# mount_root: bind /proc, /sys and /dev into the root (once); unmount_root undoes it.
mount_root() {
    local d
    [ -n "$ROOT" ] || return 0
    for d in proc sys dev; do
        mountpoint -q "$ROOT/$d" || mount --bind "/$d" "$ROOT/$d"
    done
}
# unmount_root DIR: unmount everything mounted at or under DIR, deepest first.
unmount_under() {
    local dir=$1 target
    [ -d "$dir" ] || return 0
    dir=$(cd "$dir" && pwd -P)
    findmnt -rn -o TARGET | awk -v d="$dir" 'index($0, d "/") == 1 || $0 == d' \
        | sort -r | while read -r target; do
            umount "$target" 2>/dev/null || umount -l "$target"
            echo "lab: unmounted $target"
        done
}
