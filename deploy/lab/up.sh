#!/usr/bin/env bash
# Brings up hpc-billing's Slurm lab: a real one-node Slurm 22.05 cluster "lab" with
# accounting (munge, MariaDB, slurmdbd, slurmctld, slurmd; slurmrestd with --rest) on
# this Debian 12 machine, without systemd or Docker. Everything listens on 127.0.0.1.
#
#   bash deploy/lab/up.sh [--rest]      # idempotent: when the lab is up it only checks (~2 s)
#   source /etc/hpc-billing-lab/env     # SLURM_CONF=... for sinfo, sbatch, sacct ...
#   bash deploy/lab/down.sh [--purge]
#
# Its configuration lives in its OWN directories (never a site's /etc/slurm), so every
# Slurm command needs SLURM_CONF=$LAB_ETC/slurm.conf (the env file sets it):
#   $LAB_ETC   (/etc/hpc-billing-lab)      slurm.conf, gres.conf, slurmdbd.conf, env, rest-token
#   $LAB_STATE (/var/lib/hpc-billing-lab)  slurmctld/slurmd state, fake GPUs, JWT key, DB password
#   $LAB_LOG   (/var/log/hpc-billing-lab)  daemon logs
#   $LAB_RUN   (/run/hpc-billing-lab)      daemon pid files, slurmrestd socket; pids/ holds
#                                          the PIDs of what THIS script started (down.sh
#                                          stops only those)
# Facts it relies on: /work/shared/slurm/RECIPE.md (sections and gotchas cited inline).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
LAB_ETC=${HPC_BILLING_LAB_ETC:-/etc/hpc-billing-lab}
LAB_STATE=${HPC_BILLING_LAB_STATE:-/var/lib/hpc-billing-lab}
LAB_LOG=${HPC_BILLING_LAB_LOG:-/var/log/hpc-billing-lab}
LAB_RUN=${HPC_BILLING_LAB_RUN:-/run/hpc-billing-lab}
PIDS=$LAB_RUN/pids
CTLD_PORT=16817
SLURMD_PORT=16818
DBD_PORT=16819
REST_PORT=16820
DB_NAME=hpcb_lab_acct
DB_USER=hpcb_lab
CLUSTER=lab
REST=0
WAIT_S=${HPC_BILLING_LAB_WAIT_S:-60}

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
for arg in "$@"; do
    case "$arg" in
        --rest) REST=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "up.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done
if [ "$(id -u)" != 0 ]; then
    echo "up.sh: must run as root (it installs packages and starts daemons)" >&2
    exit 2
fi

T0=$(date +%s%N)
since_start() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '%d.%01d' $((ms / 1000)) $((ms % 1000 / 100)); }
log() { printf 'lab [%5ss] %s\n' "$(since_start)" "$*"; }
die() { echo "up.sh: $*" >&2; exit 1; }

# Wait until "$@" succeeds (quietly), at most WAIT_S seconds.
wait_for() {
    local what=$1; shift
    local deadline=$(( $(date +%s) + WAIT_S ))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || die "timed out after ${WAIT_S}s waiting for $what"
        sleep 0.2
    done
}

# ------------------------------------------------------------------ 1. packages (RECIPE §1)
PACKAGES="munge slurm-wlm slurmctld slurmd slurm-client slurmdbd slurm-wlm-basic-plugins
slurm-wlm-mysql-plugin slurm-wlm-jwt-plugin slurmrestd mariadb-server mariadb-client curl"
missing=""
for pkg in $PACKAGES; do
    if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
        missing="$missing $pkg"
    fi
done
if [ -n "$missing" ]; then
    echo "lab: installing$missing"
    # Gotcha 9: without /usr/sbin/policy-rc.d, the packages' postinst would start munge,
    # MariaDB and Slurm through their init scripts. Create a temporary one only if none
    # exists, and remove it afterwards (even when apt fails).
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# temporary, from hpc-billing deploy/lab/up.sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    if [ "$made_policy" = 1 ]; then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
fi
T_PKG=$(since_start)
log "packages present"

# ------------------------------------------------------------------ 2. users, dirs, configs
HOST=$(hostname -s)
mkdir -p "$LAB_ETC" "$LAB_STATE/ctld" "$LAB_STATE/d" "$LAB_STATE/fakegpu" "$LAB_LOG" "$LAB_RUN/rest" "$PIDS"
chmod 755 "$LAB_ETC" "$LAB_RUN"
# slurmrestd refuses to run as root (gotcha 7) and SlurmUser is root, so it runs as "slurm".
id slurm >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin slurm
chown slurm:slurm "$LAB_RUN/rest"
for user in alice bob carol; do
    id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
done

# The fake GPUs: character devices (gotcha 1), symlinks to /dev/null where mknod is refused.
for i in 0 1 2 3; do
    dev=$LAB_STATE/fakegpu/nvidia$i
    if [ ! -c "$dev" ] && [ ! -L "$dev" ]; then
        rm -f "$dev"
        mknod "$dev" c 195 "$i" 2>/dev/null || ln -s /dev/null "$dev"
    fi
done
# The JWT key (only slurmrestd's tokens use it) and the database password.
if [ ! -s "$LAB_STATE/jwt_hs256.key" ]; then
    (umask 077; dd if=/dev/urandom of="$LAB_STATE/jwt_hs256.key" bs=32 count=1 status=none)
fi
if [ ! -s "$LAB_STATE/db.pass" ]; then
    (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$LAB_STATE/db.pass")
fi
DB_PASS=$(cat "$LAB_STATE/db.pass")

render() {   # render TEMPLATE DEST MODE: fill in @NAME@; rewrite DEST only when it changes
    local tmp
    tmp=$(mktemp "$2.XXXXXX")
    sed -e "s|@HOST@|$HOST|g" -e "s|@ETC@|$LAB_ETC|g" -e "s|@STATE@|$LAB_STATE|g" \
        -e "s|@LOG@|$LAB_LOG|g" -e "s|@RUN@|$LAB_RUN|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" \
        -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" -e "s|@DBD_PORT@|$DBD_PORT|g" \
        -e "s|@DB_NAME@|$DB_NAME|g" -e "s|@DB_USER@|$DB_USER|g" -e "s|@DB_PASS@|$DB_PASS|g" \
        "$HERE/$1" > "$tmp"
    chmod "$3" "$tmp"
    if cmp -s "$tmp" "$2"; then rm -f "$tmp"; else mv -f "$tmp" "$2"; CHANGED=1; fi
}
CHANGED=0
render slurm.conf.in "$LAB_ETC/slurm.conf" 644
render gres.conf.in "$LAB_ETC/gres.conf" 644
render slurmdbd.conf.in "$LAB_ETC/slurmdbd.conf" 600   # slurmdbd refuses other modes
render mariadb.cnf.in "$LAB_ETC/mariadb.cnf" 644
CONFIG_CHANGED=$CHANGED
export SLURM_CONF=$LAB_ETC/slurm.conf

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
record() { echo "$2 ${3:-$1}" > "$PIDS/$1.pid"; }   # record LABEL PID [COMM]: we started it

# ------------------------------------------------------------------ 3. munge (RECIPE §3)
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munge answers (reused)"
else
    [ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; mungekey --create --keyfile=/etc/munge/munge.key; }
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged            # daemonizes; pid in /run/munge/munged.pid
    wait_for munge sh -c 'munge -n | unmunge'
    record munged "$(pid_from /run/munge/munged.pid)"
    log "munged started"
fi

# ------------------------------------------------------------------ 4. MariaDB
# A MariaDB that answers (a machine service) is used as it is; otherwise we start one.
if mysqladmin ping >/dev/null 2>&1; then
    log "MariaDB answers (reused)"
else
    if [ ! -d /var/lib/mysql/mysql ]; then
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    fi
    mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
    # --defaults-extra-file must come first; setsid: not killed with this shell's group.
    setsid /usr/sbin/mariadbd --defaults-extra-file="$LAB_ETC/mariadb.cnf" --user=mysql \
        >>"$LAB_LOG/mariadbd.out" 2>&1 </dev/null &
    record mariadbd $!
    wait_for MariaDB mysqladmin ping
    log "mariadbd started"
fi

# The accounting database and slurmdbd's DB user. Gotcha 10: slurmctld's state and the
# accounting DB must be wiped together, or job ids restart at 1 and collide with old
# records. A lab without slurmctld state (first start, or after down.sh --purge) therefore
# starts with an empty accounting database.
if [ -z "$(ls -A "$LAB_STATE/ctld")" ]; then
    mysql -e "DROP DATABASE IF EXISTS $DB_NAME"
fi
mysql <<SQL
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL

# ------------------------------------------------------------------ 5. daemons
# start_daemon NAME PIDFILE CHECK...: start NAME (it daemonizes and writes PIDFILE)
# unless its pid file names a live NAME, or restart it when the config changed.
start_daemon() {
    local name=$1 pidfile=$2 pid
    pid=$(pid_from "$pidfile")
    if alive "$name" "$pid"; then
        if [ "$CONFIG_CHANGED" = 1 ] && [ -s "$PIDS/$name.pid" ]; then
            log "$name: configuration changed, restarting"
            kill "$pid"
            wait_gone "$name" "$pid"
        else
            return 0
        fi
    fi
    "/usr/sbin/$name"
    wait_for "$name pid file" sh -c "[ -s '$pidfile' ] && ps -o comm= -p \$(cat '$pidfile') | grep -qx '$name'"
    record "$name" "$(pid_from "$pidfile")"
    log "$name started"
}
wait_gone() {
    local deadline=$(( $(date +%s) + 15 ))
    while alive "$1" "$2"; do
        [ "$(date +%s)" -lt "$deadline" ] || die "$1 ($2) did not stop"
        sleep 0.1
    done
}

start_daemon slurmdbd "$LAB_RUN/slurmdbd.pid"
wait_for slurmdbd sacctmgr -n show cluster

# Cluster, QOS, accounts and users (RECIPE §4); skipped when the last association exists.
if [ -z "$(sacctmgr -nP show assoc where cluster=$CLUSTER user=carol account=biology format=user 2>/dev/null)" ]; then
    sm() { sacctmgr -i "$@" >/dev/null 2>&1 || true; }   # "Nothing new added" is not an error
    [ -n "$(sacctmgr -nP show cluster where name=$CLUSTER format=cluster)" ] || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    sm add qos high Priority=100 Description=lab-high
    sm add account physics,chemistry,biology Cluster=$CLUSTER Description=lab Organization=lab
    sm add user root Account=physics,chemistry,biology Cluster=$CLUSTER
    sm add user alice Account=chemistry,biology DefaultAccount=chemistry Cluster=$CLUSTER
    sm add user bob Account=physics,chemistry DefaultAccount=physics Cluster=$CLUSTER
    sm add user carol Account=biology DefaultAccount=biology Cluster=$CLUSTER
    # "add user root DefaultAccount=" does not change root's default (RECIPE §4).
    sacctmgr -i modify user where name=root cluster=$CLUSTER set DefaultAccount=physics >/dev/null 2>&1 || true
    sacctmgr -i modify account where cluster=$CLUSTER name=physics,chemistry,biology \
        set QOS=normal,high DefaultQOS=normal >/dev/null 2>&1 || true
    sacctmgr -i modify user where cluster=$CLUSTER name=root,alice,bob,carol \
        set QOS=normal,high DefaultQOS=normal >/dev/null 2>&1 || true
    [ -n "$(sacctmgr -nP show assoc where cluster=$CLUSTER user=carol account=biology format=user)" ] \
        || die "sacctmgr could not create the lab's accounts and users"
    log "accounts physics, chemistry, biology; users root, alice, bob, carol; QOS normal, high"
fi

start_daemon slurmctld "$LAB_RUN/slurmctld.pid"
wait_for "slurmctld to answer" scontrol ping
start_daemon slurmd "$LAB_RUN/slurmd.pid"

# The node must register and be idle (or busy with jobs); a drained, invalid or down node
# stays so after its cause is gone, even with ReturnToService=2 (gotcha 2): resume it.
deadline=$(( $(date +%s) + WAIT_S ))
while :; do
    state=$(sinfo -h -n "$HOST" -o '%T' 2>/dev/null | head -1 || true)
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        *drain*|*inval*|down*|fail*)
            scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
    esac
    [ "$(date +%s)" -lt "$deadline" ] || die "node $HOST is '$state', not idle (see $LAB_LOG/slurmd.log)"
    sleep 0.2
done
# slurmctld registers itself with slurmdbd (ControlHost set) shortly after it starts.
wait_for "cluster $CLUSTER to register with slurmdbd" \
    sh -c "sacctmgr -nP show cluster where name=$CLUSTER format=controlhost | grep -q ."
log "cluster $CLUSTER registered; node $HOST $state"

# ------------------------------------------------------------------ 6. slurmrestd (--rest)
REST_URL=http://127.0.0.1:$REST_PORT
REST_SOCKET=$LAB_RUN/rest/slurmrestd.sock
# start_rest LABEL AUTH LISTEN [ENV...]: one slurmrestd, as the slurm user (gotcha 7) via
# setpriv, which execs, so $! is slurmrestd's own PID (runuser forks and leaves a zombie).
start_rest() {
    local label=$1 auth=$2 listen=$3 pid; shift 3
    pid=$(pid_from "$LAB_RUN/$label.pid")
    if alive slurmrestd "$pid" && [ "$CONFIG_CHANGED" = 1 ] && [ -s "$PIDS/$label.pid" ]; then
        kill "$pid"; wait_gone slurmrestd "$pid"
    fi
    alive slurmrestd "$pid" && return 0
    case "$listen" in unix:*) rm -f "${listen#unix:}" ;; esac
    setsid env SLURM_CONF="$SLURM_CONF" TZ=UTC "$@" \
        setpriv --reuid=slurm --regid=slurm --init-groups \
        /usr/sbin/slurmrestd -a "$auth" "$listen" \
        >>"$LAB_LOG/$label.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" > "$LAB_RUN/$label.pid"
    record "$label" "$pid" slurmrestd
    case "$listen" in
        unix:*) wait_for "$label" test -S "${listen#unix:}" ;;
        *) wait_for "$label" curl -s -o /dev/null "http://$listen/openapi/v3" ;;
    esac
    alive slurmrestd "$pid" || die "$label exited (see $LAB_LOG/$label.log)"
    log "$label started ($auth on $listen)"
}
if [ "$REST" = 1 ]; then
    # Two instances, because one process cannot serve both: JWT needs SLURM_JWT=daemon in
    # slurmrestd's environment (gotcha 8), and with it rest_auth/local requests fail with
    # "Protocol authentication error" (tried: -a rest_auth/jwt,rest_auth/local).
    start_rest slurmrestd rest_auth/jwt "127.0.0.1:$REST_PORT" SLURM_JWT=daemon
    start_rest slurmrestd-local rest_auth/local "unix:$REST_SOCKET"
    # A fresh token at every run (a day's lifespan), as SLURM_JWT=..., for the collector.
    (umask 077; scontrol token username=root lifespan=86400 > "$LAB_ETC/rest-token.tmp")
    grep -q '^SLURM_JWT=' "$LAB_ETC/rest-token.tmp" || die "scontrol token failed"
    mv -f "$LAB_ETC/rest-token.tmp" "$LAB_ETC/rest-token"
fi

# ------------------------------------------------------------------ 7. the env file
{
    echo "# hpc-billing lab (deploy/lab/up.sh): source this file to use the lab"
    echo "export SLURM_CONF=$LAB_ETC/slurm.conf"
    echo "export HPC_BILLING_LAB_CLUSTER=$CLUSTER"
    echo "export HPC_BILLING_LAB_NODE=$HOST"
    echo "export HPC_BILLING_LAB_ETC=$LAB_ETC"
    echo "export HPC_BILLING_LAB_STATE=$LAB_STATE"
    echo "export HPC_BILLING_LAB_LOG=$LAB_LOG"
    echo "export HPC_BILLING_LAB_RUN=$LAB_RUN"
    echo "export HPC_BILLING_LAB_MARIADB_DB=$DB_NAME"
    if [ "$REST" = 1 ] || alive slurmrestd "$(pid_from "$LAB_RUN/slurmrestd.pid")"; then
        echo "export HPC_BILLING_LAB_REST_URL=$REST_URL"
        echo "export HPC_BILLING_LAB_REST_SOCKET_URL=unix:$REST_SOCKET"
        echo "export HPC_BILLING_LAB_REST_USER=root"
        echo "export HPC_BILLING_LAB_REST_TOKEN_FILE=$LAB_ETC/rest-token"
    fi
} > "$LAB_ETC/env.tmp"
mv -f "$LAB_ETC/env.tmp" "$LAB_ETC/env"

log "lab is up (packages ${T_PKG}s of it)"
echo "export SLURM_CONF=$LAB_ETC/slurm.conf     # or: source $LAB_ETC/env"
