#!/usr/bin/env bash
# Builds (once) and caches a Debian root for a newer Slurm release than the host's:
#
#   bash deploy/lab/root.sh 24.11|26.05 [--rebuild]     # prints the root's path
#
# 24.11 is Debian trixie (Slurm 24.11.x), 26.05 is sid (Slurm 26.05.x): their binaries need a
# newer glibc than Debian 12 has, so they run in a debootstrap root (a chroot), not on the host
# (shared/slurm/RELEASES.md). Roots live in $LAB_CACHE/roots/<suite> (default
# /var/cache/hpc-billing-lab/roots), outside /tmp, and are reused across runs. Next to each,
# <suite>.stamp holds the hash of what went into it (suite, package list, this script's
# preparation steps): a root whose stamp is missing or differs (a changed package list, a build
# that was interrupted) or whose Slurm does not run is built again from scratch. --rebuild
# forces that. The mirror is the one apt already uses (/etc/apt/sources.list.d/debian.sources),
# never an address written here. Takes the lab's lock unless the caller holds it.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=deploy/lab/lib.sh
source "$HERE/lib.sh"

REBUILD=0
REQ=""
for arg in "$@"; do
    case "$arg" in
        --rebuild) REBUILD=1 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) REQ=$arg ;;
    esac
done
[ -n "$REQ" ] || { echo "root.sh: which release? (24.11 or 26.05)" >&2; exit 2; }
release_vars "$REQ"
[ -n "$ROOT" ] || { echo "root.sh: $REL runs on the host, it has no root" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "root.sh: must run as root (debootstrap, chroot)" >&2; exit 2; }
lab_lock

# What goes into the root. slurm-wlm-mysql-plugin gives slurmdbd its MariaDB storage; the
# python3/gcc/libslurm-dev set is for building pyslurm against this Slurm (deploy/lab/pyslurm.sh)
# and for running hpc-billing inside the root with it.
PACKAGES="slurmctld,slurmd,slurmdbd,slurm-client,munge,slurmrestd,slurm-wlm-jwt-plugin"
PACKAGES="$PACKAGES,slurm-wlm-mysql-plugin,procps,ca-certificates"
if [ "$SUITE" = trixie ]; then
    PACKAGES="$PACKAGES,python3,python3-venv,python3-dev,gcc,libc6-dev,libslurm-dev"
fi
# Bump when the preparation below changes (the stamp then differs and the root is rebuilt).
PREP_VERSION=1
STAMP=$ROOT.stamp
WANT=$(printf 'suite=%s\npackages=%s\nprep=%s\n' "$SUITE" "$PACKAGES" "$PREP_VERSION" | sha256sum | cut -c1-16)

root_ok() {
    [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$ROOT/usr/sbin/slurmctld" ] \
        && chroot "$ROOT" /usr/sbin/slurmctld -V >/dev/null 2>&1 \
        && [ ! -L "$ROOT/etc/mysql/my.cnf" ] && [ -f "$ROOT/etc/slurm/cgroup.conf" ]
}

if [ "$REBUILD" = 0 ] && root_ok; then
    echo "$ROOT"
    exit 0
fi

T0=$(date +%s)
MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
if [ -z "$MIRROR" ]; then
    MIRROR=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$MIRROR" ] || { echo "root.sh: no mirror found in apt's sources" >&2; exit 1; }
if ! command -v debootstrap >/dev/null; then
    echo "lab: installing debootstrap" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

# A root in use must not be removed: stop the lab's daemons of this release first.
if [ -d "$ROOT" ] && [ -n "$(findmnt -rn -o TARGET | awk -v d="$ROOT" 'index($0, d "/") == 1')" ]; then
    echo "root.sh: $ROOT is mounted (its cluster is up?): run deploy/lab/down.sh first" >&2
    exit 1
fi
echo "lab: building the $SUITE root for Slurm $REL in $ROOT (mirror from apt's sources)" >&2
mkdir -p "$(dirname "$ROOT")"
rm -f "$STAMP"
NEW=$ROOT.new
unmount_under "$NEW" >&2
rm -rf "$NEW" "$ROOT"
trap 'unmount_under "$NEW" >&2 || true; rm -rf "$NEW"' EXIT
# The host's environment must not leak into the packages' maintainer scripts.
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$NEW" "$MIRROR" \
    > "$ROOT.build.log" 2>&1 || {
        echo "root.sh: debootstrap failed; the end of $ROOT.build.log:" >&2
        tail -20 "$ROOT.build.log" >&2
        exit 1
    }
unmount_under "$NEW" >&2

# Preparation (PREP_VERSION):
# * /etc/mysql/my.cnf is a symlink to the absolute /etc/alternatives/my.cnf: writing through
#   it from the host would write the HOST's file. Replace it by a real file whose [client]
#   skip-ssl lets the root's MariaDB client (11.x, TLS by default) talk to the host's 10.11.
# * slurmd initialises a cgroup plugin even with proctrack/linuxproc and dies without a
#   mounted cgroup fs: CgroupPlugin=disabled.
# * No daemon from the packages runs: policy-rc.d refuses service starts in the root.
mkdir -p "$NEW/etc/mysql" "$NEW/etc/slurm" "$NEW/usr/sbin"
rm -f "$NEW/etc/mysql/my.cnf"
printf '# hpc-billing lab (deploy/lab/root.sh)\n[client]\nskip-ssl\n' > "$NEW/etc/mysql/my.cnf"
printf '# hpc-billing lab (deploy/lab/root.sh): no cgroup fs in the root\nCgroupPlugin=disabled\n' \
    > "$NEW/etc/slurm/cgroup.conf"
printf '#!/bin/sh\nexit 101\n' > "$NEW/usr/sbin/policy-rc.d"
chmod 755 "$NEW/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$NEW/etc/resolv.conf" 2>/dev/null || true
rm -rf "$NEW/var/cache/apt/archives/"*.deb
version=$(chroot "$NEW" /usr/sbin/slurmctld -V) || { echo "root.sh: slurmctld -V fails in the new root" >&2; exit 1; }
mv "$NEW" "$ROOT"
trap - EXIT
echo "$WANT" > "$STAMP"
echo "lab: $SUITE root built in $(( $(date +%s) - T0 ))s: $version ($(du -sh "$ROOT" | cut -f1))" >&2
echo "$ROOT"
