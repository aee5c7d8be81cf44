#!/usr/bin/env bash
# A newcomer's first minutes, checked: `bash deploy/quickstart.sh` run twice, as root, in a
# fresh Debian 12 root (debootstrap minbase + python3, python3-venv, ca-certificates, git) on a
# clone of a branch of this repository. Usage (as root, needs debootstrap):
#   bash deploy/dev/fresh-root-check.sh /path/to/repo [branch]
# The pristine root is cached in /var/cache/hpc-billing-dev/bookworm (never in the repo); each
# check works on a copy, mounts /proc, /sys, /dev, /dev/pts and /dev/shm, and unmounts them at
# the end. The runs' output and /etc/passwd before and after go to /var/tmp/hpcb-fresh-last.
set -euo pipefail
REPO=${1:?repository path}
BRANCH=${2:-HEAD}
CACHE=/var/cache/hpc-billing-dev/bookworm
if [ ! -x "$CACHE/usr/bin/python3" ]; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    mkdir -p "$(dirname "$CACHE")"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,git \
        bookworm "$CACHE" "$mirror"
fi
WORK=$(mktemp -d /var/tmp/hpcb-fresh-XXXXXX)
ROOT="$WORK/root"
cleanup() {
    for m in dev/shm dev/pts dev sys proc; do
        mountpoint -q "$ROOT/$m" && umount -l "$ROOT/$m" || true
    done
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
cp -a "$CACHE" "$ROOT"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# The network of this workplace passes through a TLS proxy: its CA certificates (public
# trust anchors, as every machine here has them) go into the root's trust store.
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
    chroot "$ROOT" update-ca-certificates >/dev/null
fi
mount -t proc proc "$ROOT/proc"
mount -t sysfs sys "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
mount -t devpts devpts "$ROOT/dev/pts" -o newinstance,ptmxmode=0666 || true
mount -t tmpfs shm "$ROOT/dev/shm"
git clone --quiet --branch "$BRANCH" "$REPO" "$ROOT/root/hpc-billing" 2>/dev/null \
    || git clone --quiet "$REPO" "$ROOT/root/hpc-billing"
cp "$ROOT/etc/passwd" "$WORK/passwd.before"
run() {
    chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        TERM=dumb bash -c 'cd /root/hpc-billing && bash deploy/quickstart.sh'
}
OUT=/var/tmp/hpcb-fresh-last
rm -rf "$OUT"; mkdir -p "$OUT"
echo "=== first run"; rc=0; run > "$OUT/run1.out" 2>&1 || rc=$?; echo "exit $rc" | tee -a "$OUT/run1.out"
echo "=== second run"; rc=0; run > "$OUT/run2.out" 2>&1 || rc=$?; echo "exit $rc" | tee -a "$OUT/run2.out"
cp "$ROOT/etc/passwd" "$OUT/passwd.after"; cp "$WORK/passwd.before" "$OUT/"
echo "=== accounts added:"; diff "$OUT/passwd.before" "$OUT/passwd.after" || true
echo "=== warnings:"; grep -in "warn" "$OUT"/run1.out "$OUT"/run2.out || echo "(none)"
