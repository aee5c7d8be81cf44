#!/usr/bin/env bash
# Brings up hpc-billing's Slurm lab: three one-node Slurm clusters with accounting, side by
# side on this Debian 12 machine, without systemd or Docker, all on 127.0.0.1:
#
#   22.05  on the host (Debian 12's packages)     cluster lab      ports 16817-16820
#   24.11  in a debootstrap trixie root (chroot)  cluster lab2411  ports 17817-17820
#   26.05  in a debootstrap sid root (chroot)     cluster lab2605  ports 18817-18820
#
# Each has its own munged, slurmdbd (its own database on the machine's one MariaDB),
# slurmctld, slurmd with fake GPUs (2 a100, 2 h100, 2 untyped) and, with --rest, slurmrestd
# with JWT (and local auth on a socket) as an unprivileged user.
#
#   bash deploy/lab/up.sh [--rest] [--release 24.11 ...]   # idempotent: an up lab is only checked
#   source /etc/hpc-billing-lab/releases/24.11.env         # HPC_BILLING_LAB_BIN=... (sacct, sbatch ...)
#   bash deploy/lab/down.sh [--purge]
#
# The roots are built once and cached (deploy/lab/root.sh; /var/cache/hpc-billing-lab/roots).
# Configuration lives in the lab's OWN directories (never a site's /etc/slurm): on the host
# for 22.05, and at the same paths inside each root:
#   /etc/hpc-billing-lab      slurm.conf, gres.conf, slurmdbd.conf; on the host also
#                             releases/<rel>.env and releases/<rel>/bin/ (command wrappers)
#   /var/lib/hpc-billing-lab  slurmctld/slurmd state, fake GPUs, JWT key, DB password, jobs/
#   /var/log/hpc-billing-lab  daemon logs
#   /run/hpc-billing-lab      daemon pid files, slurmrestd socket; on the host pids/<rel>/
#                             holds the PIDs of what the lab started (down.sh stops those)
# A lock (/run/lock/hpc-billing-lab.lock, flock) keeps two users of the lab apart.
# Facts it relies on: /work/shared/slurm/RECIPE.md and RELEASES.md (cited inline).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=deploy/lab/lib.sh
source "$HERE/lib.sh"
REST=0
WANT_RELEASES=""
WAIT_S=${HPC_BILLING_LAB_WAIT_S:-90}

usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --rest) REST=1 ;;
        --release) shift; WANT_RELEASES="$WANT_RELEASES ${1:?--release needs a value}" ;;
        --release=*) WANT_RELEASES="$WANT_RELEASES ${1#--release=}" ;;
        -h|--help) usage; exit 0 ;;
        *) echo "up.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
WANT_RELEASES=${WANT_RELEASES:-$LAB_RELEASES}
for rel in $WANT_RELEASES; do release_vars "$rel" >/dev/null; done
if [ "$(id -u)" != 0 ]; then
    echo "up.sh: must run as root (it installs packages, builds roots and starts daemons)" >&2
    exit 2
fi
lab_lock

T0=$(date +%s%N)
since_start() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '%d.%01d' $((ms / 1000)) $((ms % 1000 / 100)); }
log() { printf 'lab [%5ss] %s\n' "$(since_start)" "$*"; }
die() { echo "up.sh: ${REL:+[$REL] }$*" >&2; exit 1; }

# Wait until "$@" succeeds (quietly), at most WAIT_S seconds.
wait_for() {
    local what=$1; shift
    local deadline=$(( $(date +%s) + WAIT_S ))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || die "timed out after ${WAIT_S}s waiting for $what"
        sleep 0.2
    done
}

# ------------------------------------------------------------------ 1. host packages (RECIPE §1)
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
log "host packages present"

# ------------------------------------------------------------------ 2. host users, MariaDB
HOST=$(hostname -s)
mkdir -p "$LAB_ETC/releases" "$LAB_RUN/pids"
chmod 755 "$LAB_ETC" "$LAB_RUN"
# slurmrestd refuses to run as root (gotcha 7) and SlurmUser is root: on the host it runs as
# "slurm". Job users alice, bob, carol exist on the host and, with the same ids, in each root.
id slurm >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin slurm
for user in alice bob carol; do
    id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
done

# A MariaDB that answers (a machine service) is used as it is; otherwise we start one. Its
# PID is recorded under the 22.05 release (the host's), stopped last by down.sh.
if mysqladmin ping >/dev/null 2>&1; then
    log "MariaDB answers (reused)"
else
    release_vars 22.05
    mkdir -p "$H_LOG" "$H_ETC"
    sed -e "s|@[A-Z_]*@||g" "$HERE/mariadb.cnf.in" > "$LAB_ETC/mariadb.cnf"
    if [ ! -d /var/lib/mysql/mysql ]; then
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    fi
    mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
    # --defaults-extra-file must come first; setsid: not killed with this shell's group.
    (unlocked_exec setsid /usr/sbin/mariadbd --defaults-extra-file="$LAB_ETC/mariadb.cnf" --user=mysql \
        >>"$H_LOG/mariadbd.out" 2>&1 </dev/null) &
    record mariadbd $!
    wait_for MariaDB mysqladmin ping
    log "mariadbd started"
fi

# ------------------------------------------------------------------ per release
# render TEMPLATE DEST MODE: fill in @NAME@; rewrite DEST only when it changes (CHANGED=1).
render() {
    local tmp
    tmp=$(mktemp "$2.XXXXXX")
    sed -e "s|@HOST@|$HOST|g" -e "s|@ETC@|$IN_ETC|g" -e "s|@STATE@|$IN_STATE|g" \
        -e "s|@LOG@|$IN_LOG|g" -e "s|@RUN@|$IN_RUN|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" \
        -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" -e "s|@DBD_PORT@|$DBD_PORT|g" \
        -e "s|@DB_NAME@|$DB_NAME|g" -e "s|@DB_USER@|$DB_USER|g" -e "s|@DB_PASS@|$DB_PASS|g" \
        -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@RELEASE@|$REL|g" -e "s|@STORAGE_HOST@|$STORAGE_HOST|g" \
        "$HERE/$1" > "$tmp"
    chmod "$3" "$tmp"
    if cmp -s "$tmp" "$2"; then rm -f "$tmp"; else mv -f "$tmp" "$2"; CHANGED=1; fi
}

# start_daemon NAME PIDFILE(inside) ARGS...: start NAME in the release (it daemonizes and
# writes PIDFILE) unless its pid file names a live NAME; restart it when the configuration
# changed and the lab started it. Every start is recorded.
start_daemon() {
    local name=$1 pidfile=$ROOT$2 pid; shift 2
    pid=$(pid_from "$pidfile")
    if alive "$name" "$pid"; then
        if [ "$CONFIG_CHANGED" = 1 ]; then
            log "$name: configuration changed, restarting"
            kill "$pid"
            wait_gone "$name" "$pid" || die "$name ($pid) did not stop"
        else
            # Running from an earlier up.sh (or restarted by a test): make sure it is on the
            # books, so down.sh stops it.
            [ -s "$PIDS/$name.pid" ] || record "$name" "$pid"
            return 0
        fi
    fi
    rm -f "$pidfile"
    in_rel "/usr/sbin/$name" "$@"
    wait_for "$name pid file" sh -c "[ -s '$pidfile' ] && ps -o comm= -p \$(cat '$pidfile') | grep -qx '$name'"
    record "$name" "$(pid_from "$pidfile")"
    log "$name started (pid $(pid_from "$pidfile"))"
}

# start_rest LABEL AUTH LISTEN [ENV...]: one slurmrestd as REST_USER. setpriv and chroot
# --userspec exec, so $! is slurmrestd's own PID (runuser forks and leaves a zombie).
start_rest() {
    local label=$1 auth=$2 listen=$3 pid ids; shift 3
    pid=$(pid_from "$H_RUN/$label.pid")
    if alive slurmrestd "$pid" && [ "$CONFIG_CHANGED" = 1 ]; then
        kill "$pid"; wait_gone slurmrestd "$pid" || die "$label ($pid) did not stop"
    fi
    if alive slurmrestd "$pid"; then
        [ -s "$PIDS/$label.pid" ] || record "$label" "$pid" slurmrestd
        return 0
    fi
    case "$listen" in unix:*) rm -f "$ROOT${listen#unix:}" ;; esac
    if [ -z "$ROOT" ]; then
        (unlocked_exec setsid env SLURM_CONF="$IN_ETC/slurm.conf" TZ=UTC "$@" \
            setpriv --reuid="$REST_USER" --regid="$REST_USER" --init-groups \
            /usr/sbin/slurmrestd -a "$auth" "$listen" \
            >>"$H_LOG/$label.log" 2>&1 </dev/null) &
    else
        ids=$(awk -F: -v u="$REST_USER" '$1 == u {print $3 ":" $4}' "$ROOT/etc/passwd")
        (unlocked_exec setsid chroot --userspec="$ids" "$ROOT" /usr/bin/env -i \
            PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SLURM_CONF="$IN_ETC/slurm.conf" TZ=UTC "$@" \
            /usr/sbin/slurmrestd -a "$auth" "$listen" \
            >>"$H_LOG/$label.log" 2>&1 </dev/null) &
    fi
    pid=$!
    echo "$pid" > "$H_RUN/$label.pid"
    record "$label" "$pid" slurmrestd
    case "$listen" in
        unix:*) wait_for "$label" test -S "$ROOT${listen#unix:}" ;;
        *) wait_for "$label" curl -s -o /dev/null "http://$listen/openapi/v3" ;;
    esac
    alive slurmrestd "$pid" || die "$label exited (see $H_LOG/$label.log)"
    log "$label started ($auth on $listen)"
}

# root_user NAME UID GID: a user (and its group) with the host's ids in the root.
root_user() {
    grep -q "^$1:" "$ROOT/etc/group" || chroot "$ROOT" groupadd --gid "$3" "$1"
    grep -q "^$1:" "$ROOT/etc/passwd" || chroot "$ROOT" useradd --uid "$2" --gid "$3" \
        --create-home --shell /bin/bash "$1"
}

# write_wrappers: $REL_DIR/bin/<command> runs the release's command with its SLURM_CONF: on
# the host directly, for a root through chroot with a clean environment that keeps only the
# variables Slurm's commands read (SLURM_*, SBATCH_* ..., TZ, LANG).
write_wrappers() {
    local cmd tmp
    mkdir -p "$REL_DIR/bin"
    for cmd in sacct sacctmgr sbatch scancel scontrol sinfo squeue srun sreport sstat sshare; do
        tmp=$(mktemp "$REL_DIR/bin/.$cmd.XXXXXX")
        if [ -z "$ROOT" ]; then
            cat > "$tmp" <<EOF
#!/bin/bash
# hpc-billing lab: $cmd of Slurm $REL (cluster $CLUSTER, written by deploy/lab/up.sh)
SLURM_CONF=$IN_ETC/slurm.conf exec /usr/bin/$cmd "\$@"
EOF
        else
            cat > "$tmp" <<EOF
#!/bin/bash
# hpc-billing lab: $cmd of Slurm $REL in $ROOT (cluster $CLUSTER, written by deploy/lab/up.sh).
# A chroot passes the host's environment on: keep only what Slurm's commands read.
keep=()
for name in \$(compgen -e); do
    case \$name in
        SLURM_CONF) ;;
        SLURM_*|SBATCH_*|SALLOC_*|SRUN_*|SQUEUE_*|SACCT_*|SINFO_*|SCONTROL_*|SREPORT_*|TZ|LANG|LC_*) keep+=("\$name=\${!name}") ;;
    esac
done
exec /usr/sbin/chroot $ROOT /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \\
    "\${keep[@]}" SLURM_CONF=$IN_ETC/slurm.conf /usr/bin/$cmd "\$@"
EOF
        fi
        chmod 755 "$tmp"
        mv -f "$tmp" "$REL_DIR/bin/$cmd"
    done
}

up_release() {
    release_vars "$1"
    log "---- Slurm $REL (cluster $CLUSTER${ROOT:+, root $ROOT})"
    if [ -n "$ROOT" ]; then
        bash "$HERE/root.sh" "$REL" >/dev/null || die "could not build the $SUITE root"
        mount_root
        STORAGE_HOST=127.0.0.1        # the host's MariaDB over TCP (its socket is not in the root)
    else
        STORAGE_HOST=localhost
    fi
    mkdir -p "$H_ETC" "$H_STATE/ctld" "$H_STATE/d" "$H_STATE/fakegpu" "$H_STATE/jobs" "$H_LOG" \
        "$H_RUN/rest" "$PIDS" "$REL_DIR"
    chmod 755 "$H_ETC" "$H_RUN"
    chmod 1777 "$H_STATE/jobs"         # the jobs' scratch dir (--chdir): no output lands elsewhere
    if [ -n "$ROOT" ]; then
        local user
        for user in alice bob carol; do root_user "$user" "$(id -u "$user")" "$(id -g "$user")"; done
        grep -q "^$REST_USER:" "$ROOT/etc/passwd" || chroot "$ROOT" useradd --system \
            --no-create-home --shell /usr/sbin/nologin "$REST_USER"
    fi
    chown "$(awk -F: -v u="$REST_USER" '$1 == u {print $3 ":" $4}' "$ROOT/etc/passwd")" "$H_RUN/rest"

    # The fake GPUs: character devices (gotcha 1), symlinks to /dev/null where mknod is refused.
    local i dev
    for i in 0 1 2 3 4 5; do
        dev=$H_STATE/fakegpu/nvidia$i
        if [ ! -c "$dev" ] && [ ! -L "$dev" ]; then
            rm -f "$dev"
            mknod "$dev" c 195 "$i" 2>/dev/null || ln -s /dev/null "$dev"
        fi
    done
    if [ ! -s "$H_STATE/jwt_hs256.key" ]; then
        (umask 077; dd if=/dev/urandom of="$H_STATE/jwt_hs256.key" bs=32 count=1 status=none)
    fi
    if [ ! -s "$H_STATE/db.pass" ]; then
        (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$H_STATE/db.pass")
    fi
    DB_PASS=$(cat "$H_STATE/db.pass")
    CHANGED=0
    render slurm.conf.in "$H_ETC/slurm.conf" 644
    render gres.conf.in "$H_ETC/gres.conf" 644
    render slurmdbd.conf.in "$H_ETC/slurmdbd.conf" 600   # slurmdbd refuses other modes
    [ -z "$ROOT" ] || render cgroup.conf.in "$H_ETC/cgroup.conf" 644
    CONFIG_CHANGED=$CHANGED
    write_wrappers

    # munge: the host's munged for 22.05 (a machine's running munged is reused as it is);
    # each root runs its own with its own key and socket under ROOT/run/munge.
    if in_rel sh -c 'munge -n | unmunge' >/dev/null 2>&1; then
        [ -z "$ROOT" ] || { [ -s "$PIDS/munged.pid" ] || record munged "$(pid_from "$ROOT/run/munge/munged.pid")"; }
        log "munge answers"
    else
        local key=$ROOT/etc/munge/munge.key ids
        ids=$(awk -F: '$1 == "munge" {print $3 ":" $4}' "$ROOT/etc/passwd")
        if [ ! -s "$key" ]; then
            mkdir -p "$(dirname "$key")"
            (umask 077; dd if=/dev/urandom of="$key" bs=1024 count=1 status=none)
        fi
        chown "$ids" "$key"; chmod 400 "$key"
        mkdir -p "$ROOT/run/munge" "$ROOT/var/log/munge" "$ROOT/var/lib/munge"
        chown "$ids" "$ROOT/run/munge" "$ROOT/var/log/munge" "$ROOT/var/lib/munge"
        rm -f "$ROOT/run/munge/munged.pid"
        if [ -z "$ROOT" ]; then
            unlocked runuser -u munge -- /usr/sbin/munged          # daemonizes; pid in /run/munge/munged.pid
        else
            unlocked chroot --userspec="$ids" "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin /usr/sbin/munged
        fi
        wait_for munge sh -c "[ -s '$ROOT/run/munge/munged.pid' ]"
        record munged "$(pid_from "$ROOT/run/munge/munged.pid")"
        wait_for munge in_rel sh -c 'munge -n | unmunge'
        log "munged started"
    fi

    # The accounting database and slurmdbd's DB user. Gotcha 10: slurmctld's state and the
    # accounting DB must be wiped together, or job ids restart at 1 and collide with old
    # records. A cluster without slurmctld state (first start, or after down.sh --purge)
    # therefore starts with an empty accounting database.
    if [ -z "$(ls -A "$H_STATE/ctld")" ]; then
        mysql -e "DROP DATABASE IF EXISTS $DB_NAME"
    fi
    mysql <<SQL
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL

    start_daemon slurmdbd "$IN_RUN/slurmdbd.pid"
    wait_for slurmdbd in_rel sacctmgr -n show cluster

    # Cluster, QOS, accounts and users (RECIPE §4); skipped when the last association exists.
    if [ -z "$(in_rel sacctmgr -nP show assoc where cluster="$CLUSTER" user=carol account=biology format=user 2>/dev/null)" ]; then
        sm() { in_rel sacctmgr -i "$@" >/dev/null 2>&1 || true; }   # "Nothing new added" is no error
        [ -n "$(in_rel sacctmgr -nP show cluster where name="$CLUSTER" format=cluster)" ] \
            || in_rel sacctmgr -i add cluster "$CLUSTER" >/dev/null
        sm add qos high Priority=100 Description=lab-high
        sm add account physics,chemistry,biology Cluster="$CLUSTER" Description=lab Organization=lab
        sm add user root Account=physics,chemistry,biology Cluster="$CLUSTER"
        sm add user alice Account=chemistry,biology DefaultAccount=chemistry Cluster="$CLUSTER"
        sm add user bob Account=physics,chemistry DefaultAccount=physics Cluster="$CLUSTER"
        sm add user carol Account=biology DefaultAccount=biology Cluster="$CLUSTER"
        # "add user root DefaultAccount=" does not change root's default (RECIPE §4).
        sm modify user where name=root cluster="$CLUSTER" set DefaultAccount=physics
        sm modify account where cluster="$CLUSTER" name=physics,chemistry,biology \
            set QOS=normal,high DefaultQOS=normal
        sm modify user where cluster="$CLUSTER" name=root,alice,bob,carol \
            set QOS=normal,high DefaultQOS=normal
        [ -n "$(in_rel sacctmgr -nP show assoc where cluster="$CLUSTER" user=carol account=biology format=user)" ] \
            || die "sacctmgr could not create the lab's accounts and users"
        log "accounts physics, chemistry, biology; users root, alice, bob, carol; QOS normal, high"
    fi

    start_daemon slurmctld "$IN_RUN/slurmctld.pid"
    wait_for "slurmctld to answer" in_rel scontrol ping
    start_daemon slurmd "$IN_RUN/slurmd.pid"

    # The node must register and be idle (or busy with jobs); a drained, invalid or down node
    # stays so after its cause is gone, even with ReturnToService=2 (gotcha 2): resume it.
    local deadline state
    deadline=$(( $(date +%s) + WAIT_S ))
    while :; do
        state=$(in_rel sinfo -h -n "$HOST" -o '%T' 2>/dev/null | head -1 || true)
        case "$state" in
            idle|mixed|allocated|completing) break ;;
            *drain*|*inval*|down*|fail*)
                in_rel scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
        esac
        [ "$(date +%s)" -lt "$deadline" ] || die "node $HOST is '$state', not idle (see $H_LOG/slurmd.log)"
        sleep 0.2
    done
    # slurmctld registers itself with slurmdbd (ControlHost set) shortly after it starts; a
    # cluster added while slurmctld ran registers only after a restart (RELEASES.md).
    registered() { in_rel sacctmgr -nP show cluster where name="$CLUSTER" format=controlhost | grep -q .; }
    wait_for "cluster $CLUSTER to register with slurmdbd" registered
    log "cluster $CLUSTER registered; node $HOST $state"

    local rest_url="" socket=$IN_RUN/rest/slurmrestd.sock
    if [ "$REST" = 1 ]; then
        # Two instances, because one process cannot serve both: JWT needs SLURM_JWT=daemon in
        # slurmrestd's environment (gotcha 8), and with it rest_auth/local requests fail with
        # "Protocol authentication error" (tried: -a rest_auth/jwt,rest_auth/local).
        start_rest slurmrestd rest_auth/jwt "127.0.0.1:$REST_PORT" SLURM_JWT=daemon
        start_rest slurmrestd-local rest_auth/local "unix:$socket"
        # A fresh token at every run (a day's lifespan), as SLURM_JWT=..., for the collector.
        (umask 077; in_rel scontrol token username=root lifespan=86400 > "$REL_DIR/rest-token.tmp")
        grep -q '^SLURM_JWT=' "$REL_DIR/rest-token.tmp" || die "scontrol token failed"
        mv -f "$REL_DIR/rest-token.tmp" "$REL_DIR/rest-token"
    fi
    if alive slurmrestd "$(pid_from "$H_RUN/slurmrestd.pid")"; then
        rest_url=http://127.0.0.1:$REST_PORT
    fi

    local version
    version=$(in_rel sacct --version | awk '{print $2}')
    {
        echo "# hpc-billing lab, Slurm $REL (deploy/lab/up.sh): source this file to use it"
        echo "export HPC_BILLING_LAB_RELEASE=$REL"
        echo "export HPC_BILLING_LAB_SLURM_VERSION=$version"
        echo "export HPC_BILLING_LAB_CLUSTER=$CLUSTER"
        echo "export HPC_BILLING_LAB_NODE=$HOST"
        echo "export HPC_BILLING_LAB_ROOT=$ROOT"
        echo "export HPC_BILLING_LAB_BIN=$REL_DIR/bin"
        echo "export PATH=$REL_DIR/bin:\$PATH"
        echo "export HPC_BILLING_LAB_SLURM_CONF=$H_ETC/slurm.conf"
        [ -n "$ROOT" ] || echo "export SLURM_CONF=$IN_ETC/slurm.conf"
        echo "export HPC_BILLING_LAB_ETC=$H_ETC"
        echo "export HPC_BILLING_LAB_STATE=$H_STATE"
        echo "export HPC_BILLING_LAB_LOG=$H_LOG"
        echo "export HPC_BILLING_LAB_RUN=$H_RUN"
        echo "export HPC_BILLING_LAB_JOBS_DIR=$IN_STATE/jobs"
        echo "export HPC_BILLING_LAB_MARIADB_DB=$DB_NAME"
        if [ -n "$rest_url" ]; then
            echo "export HPC_BILLING_LAB_REST_URL=$rest_url"
            echo "export HPC_BILLING_LAB_REST_SOCKET_URL=unix:$ROOT$socket"
            echo "export HPC_BILLING_LAB_REST_USER=root"
            echo "export HPC_BILLING_LAB_REST_TOKEN_FILE=$REL_DIR/rest-token"
        fi
    } > "$REL_DIR.env.tmp"
    mv -f "$REL_DIR.env.tmp" "$REL_DIR.env"
    log "Slurm $version up: cluster $CLUSTER"
}

for rel in $WANT_RELEASES; do
    up_release "$rel"
done

# The index: /etc/hpc-billing-lab/env is 22.05's env file plus the list of releases that are
# up (what tests/slurm reads).
up=""
for rel in $LAB_RELEASES; do
    release_vars "$rel"
    if [ -f "$REL_DIR.env" ] && alive slurmctld "$(pid_from "$H_RUN/slurmctld.pid")"; then
        up="$up $rel"
    fi
done
{
    if [ -f "$LAB_ETC/releases/22.05.env" ]; then cat "$LAB_ETC/releases/22.05.env"; fi
    echo "export HPC_BILLING_LAB_RELEASES=\"${up# }\""
    echo "export HPC_BILLING_LAB_RELEASES_DIR=$LAB_ETC/releases"
} > "$LAB_ETC/env.tmp"
mv -f "$LAB_ETC/env.tmp" "$LAB_ETC/env"

log "lab is up: Slurm ${up# }"
echo "source $LAB_ETC/releases/<release>.env   # or: source $LAB_ETC/env (22.05)"
