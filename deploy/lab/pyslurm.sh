#!/usr/bin/env bash
# pyslurm for the lab's releases, built from the unmodified source tarballs in
# shared/vendor/pyslurm/ (their sha256 checked) and cached as wheels:
#
#   bash deploy/lab/pyslurm.sh wheel 22.05|24.11          # prints the wheel's path (host path)
#   bash deploy/lab/pyslurm.sh venv 22.05|24.11 PROJECT   # a venv with that pyslurm and PROJECT's
#                                                         # hpc-billing; prints its python
#
# pyslurm's major.minor must equal Slurm's, and the package registry has neither 22.5 nor
# 24.11 (only 25.11.x): 22.5.3 is built on the host against Debian 12's libslurm-dev (22.05),
# 24.11.0 inside the trixie root against its libslurm-dev (24.11) with the root's Python 3.13
# and Cython<3.1 (Cython 3.1+ fails on a real bug in that tag; 3.0.12 builds). Both need
# SLURM_LIB_DIR=/usr/lib/x86_64-linux-gnu SLURM_INCLUDE_DIR=/usr/include. A build takes 6 to 8
# minutes on 2 cores, so the wheel is cached in $LAB_CACHE/wheels (default
# /var/cache/hpc-billing-lab/wheels), keyed by the tarball's sha256, the Slurm version it was
# built against and the Python tag; a changed tarball or Slurm builds a new one. A failed
# build leaves its log there (build-<key>.log) and exits non-zero.
#
# The venvs: 22.05's on the host ($LAB_CACHE/venvs/22.05), 24.11's inside the trixie root
# (/opt/hpc-billing-venv there; the collector must run in the root to use a pyslurm built for
# the root's Python and libslurm). Their dependencies are installed once (keyed by setup.cfg);
# the project itself is reinstalled from PROJECT at every call (a copy for the root).
# The vendor directory is $HPC_BILLING_PYSLURM_SRC, else ../shared/vendor/pyslurm beside the
# project, else /work/shared/vendor/pyslurm.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=deploy/lab/lib.sh
source "$HERE/lib.sh"
PROJECT_DIR=$(cd "$HERE/../.." && pwd)
[ "$(id -u)" = 0 ] || { echo "pyslurm.sh: must run as root" >&2; exit 2; }
action=${1:-}
release_vars "${2:-}" || exit 2

case "$REL" in
    22.05) TARBALL=pyslurm-22.5.3.tar.gz; SHA=713b34f974cfb095c7295f806d87f35ece4559cab3b8c52ab7f3f789e4f155cd ;;
    24.11) TARBALL=pyslurm-24.11.0.tar.gz; SHA=d73656b234ac02981e95bb467c069d2f9a3fe32e86a26398dc3a41ef36b6ae50 ;;
    *) echo "pyslurm.sh: no pyslurm for Slurm $REL (none is released for 26.05)" >&2; exit 2 ;;
esac
VENDOR=${HPC_BILLING_PYSLURM_SRC:-}
for candidate in "$PROJECT_DIR/../shared/vendor/pyslurm" /work/shared/vendor/pyslurm; do
    [ -n "$VENDOR" ] || { [ -f "$candidate/$TARBALL" ] && VENDOR=$candidate; }
done
[ -n "$VENDOR" ] && [ -f "$VENDOR/$TARBALL" ] || { echo "pyslurm.sh: $TARBALL not found (set HPC_BILLING_PYSLURM_SRC)" >&2; exit 1; }
echo "$SHA  $VENDOR/$TARBALL" | sha256sum --check --quiet - \
    || { echo "pyslurm.sh: $VENDOR/$TARBALL is not the vendored tarball (sha256 differs)" >&2; exit 1; }
WHEELS=$LAB_CACHE/wheels
mkdir -p "$WHEELS"
PY_HOST=${PYTHON:-python3}
# Build environments never see the host's pip settings inside the root (PIP_FIND_LINKS and
# the like name host paths). pip in the root trusts what the host's pip trusts: the host's CA
# bundle is copied in (a machine may reach the package registry through a TLS proxy whose CA
# only the host's bundle has).
HOST_CA=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
ROOT_CA=/etc/ssl/certs/hpc-billing-lab-host-ca.crt
ROOT_ENV=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
          PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 PIP_CERT=$ROOT_CA
          SSL_CERT_FILE=$ROOT_CA)

in_build() {   # run in the release's build environment (the host's python, or the root's)
    if [ -z "$ROOT" ]; then "$@"; else chroot "$ROOT" "${ROOT_ENV[@]}" "$@"; fi
}
# The root needs /proc, /sys and /dev while building; what this script mounted it unmounts.
MOUNTED_HERE=0
root_mounts() {
    [ -n "$ROOT" ] || return 0
    if ! mountpoint -q "$ROOT/proc"; then
        MOUNTED_HERE=1
        trap 'unmount_under "$ROOT" >&2' EXIT
    fi
    mount_root
    if [ -f "$HOST_CA" ]; then cp "$HOST_CA" "$ROOT$ROOT_CA"; else cp "$ROOT/etc/ssl/certs/ca-certificates.crt" "$ROOT$ROOT_CA"; fi
}

slurm_version() {
    if [ -z "$ROOT" ]; then
        dpkg-query -W -f '${Version}' libslurm-dev 2>/dev/null || true
    else
        chroot "$ROOT" dpkg-query -W -f '${Version}' libslurm-dev 2>/dev/null || true
    fi
}

build_wheel() {
    if [ -z "$ROOT" ]; then
        if [ "$(dpkg-query -W -f='${Status}' libslurm-dev 2>/dev/null)" != "install ok installed" ]; then
            echo "lab: installing libslurm-dev (to build pyslurm against Slurm 22.05)" >&2
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libslurm-dev >/dev/null
        fi
        PYTAG=$("$PY_HOST" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    else
        bash "$HERE/root.sh" "$REL" >/dev/null
        root_mounts
        PYTAG=$(chroot "$ROOT" python3 -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    fi
    local sv key dir log
    sv=$(slurm_version)
    [ -n "$sv" ] || { echo "pyslurm.sh: libslurm-dev is not installed for $REL" >&2; exit 1; }
    key=${TARBALL%.tar.gz}-slurm${sv//[^0-9A-Za-z.]/_}-$PYTAG-${SHA:0:12}
    dir=$WHEELS/$key
    if ls "$dir"/pyslurm-*.whl >/dev/null 2>&1; then
        WHEEL=$(ls "$dir"/pyslurm-*.whl | head -1)
        return 0
    fi
    log=$WHEELS/build-$key.log
    echo "lab: building $TARBALL against Slurm $sv ($PYTAG); 6-8 minutes on 2 cores, log: $log" >&2
    local t0 work
    t0=$(date +%s)
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp"
    if [ -z "$ROOT" ]; then
        work=$(mktemp -d /var/tmp/hpcb-pyslurm-XXXXXX)
        # 22.5.3's pyproject pins its build requirements (setuptools 59.2, wheel 0.37,
        # Cython<3): pip's isolated build environment gets exactly those.
        if ! (cd "$work" && env SLURM_LIB_DIR=/usr/lib/x86_64-linux-gnu SLURM_INCLUDE_DIR=/usr/include \
                "$PY_HOST" -m pip wheel --no-deps --wheel-dir "$dir.tmp" "$VENDOR/$TARBALL") > "$log" 2>&1; then
            rm -rf "$work" "$dir.tmp"
            echo "pyslurm.sh: building $TARBALL failed; the end of $log:" >&2; tail -25 "$log" >&2; exit 1
        fi
        rm -rf "$work"
    else
        # In the root: a build venv with Cython<3.1 and the tag's other build requirements,
        # then a build without isolation (so that Cython is the one we chose).
        work=/var/tmp/hpcb-pyslurm-build
        rm -rf "$ROOT$work"; mkdir -p "$ROOT$work/out"
        cp "$VENDOR/$TARBALL" "$ROOT$work/"
        if ! { in_build python3 -m venv "$work/venv" \
               && in_build "$work/venv/bin/pip" install --quiet 'Cython>=0.29.37,<3.1' \
                    'setuptools>=59.2.0' 'wheel>=0.37.0' 'packaging>=21.3' \
               && in_build /usr/bin/env SLURM_LIB_DIR=/usr/lib/x86_64-linux-gnu \
                    SLURM_INCLUDE_DIR=/usr/include PYSLURM_BUILD_JOBS="$(nproc)" \
                    "$work/venv/bin/pip" wheel --no-deps --no-build-isolation \
                    --wheel-dir "$work/out" "$work/$TARBALL"; } > "$log" 2>&1; then
            rm -rf "$ROOT$work" "$dir.tmp"
            echo "pyslurm.sh: building $TARBALL failed; the end of $log:" >&2; tail -25 "$log" >&2; exit 1
        fi
        cp "$ROOT$work"/out/pyslurm-*.whl "$dir.tmp/"
        rm -rf "$ROOT$work"
    fi
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
    WHEEL=$(ls "$dir"/pyslurm-*.whl | head -1)
    echo "lab: built $(basename "$WHEEL") in $(( $(date +%s) - t0 ))s" | tee -a "$log" >&2
}

make_venv() {
    local project=$1 deps_key venv py src
    [ -f "$project/setup.cfg" ] || { echo "pyslurm.sh: $project is not the hpc-billing project" >&2; exit 2; }
    deps_key=$(cat "$project/setup.cfg" "$WHEEL" | sha256sum | cut -c1-16)
    if [ -z "$ROOT" ]; then
        venv=$LAB_CACHE/venvs/$REL
        py=$venv/bin/python
        if [ "$(cat "$venv/.deps" 2>/dev/null)" != "$deps_key" ]; then
            rm -rf "$venv"
            "$PY_HOST" -m venv "$venv"
            "$py" -m pip install --quiet --upgrade pip setuptools wheel
            "$py" -m pip install --quiet "$WHEEL"
            "$py" -m pip install --quiet "$project"     # its dependencies, then replaced below
            echo "$deps_key" > "$venv/.deps"
        fi
        "$py" -m pip install --quiet --no-deps --no-build-isolation --force-reinstall "$project"
        write_runner "SLURM_CONF=$IN_ETC/slurm.conf exec $venv/bin/hpc-billing \"\$@\""
        echo "$py"
    else
        venv=/opt/hpc-billing-venv
        py=$venv/bin/python
        src=/var/tmp/hpc-billing-src
        rm -rf "$ROOT$src"; mkdir -p "$ROOT$src"
        tar -C "$project" --exclude=./.venv --exclude=./.git --exclude='*.pyc' \
            --exclude=__pycache__ --exclude=./build --exclude='*.egg-info' -cf - . | tar -C "$ROOT$src" -xf -
        cp "$WHEEL" "$ROOT/var/tmp/"
        if [ "$(cat "$ROOT$venv/.deps" 2>/dev/null)" != "$deps_key" ]; then
            rm -rf "${ROOT:?}$venv"
            in_build python3 -m venv "$venv"
            in_build "$py" -m pip install --quiet --upgrade pip setuptools wheel
            in_build "$py" -m pip install --quiet "/var/tmp/$(basename "$WHEEL")"
            in_build "$py" -m pip install --quiet "$src"
            echo "$deps_key" > "$ROOT$venv/.deps"
        fi
        in_build "$py" -m pip install --quiet --no-deps --no-build-isolation --force-reinstall "$src"
        rm -rf "$ROOT$src" "$ROOT/var/tmp/$(basename "$WHEEL")"
        # A chroot passes the host's environment on: keep only the collector's settings and TZ.
        write_runner "keep=()
for name in \$(compgen -e); do
    case \$name in
        HPC_BILLING_LAB_*) ;;
        HPC_BILLING_*|TZ|LANG|LC_*) keep+=(\"\$name=\${!name}\") ;;
    esac
done
exec /usr/sbin/chroot $ROOT /usr/bin/env -i PATH=$venv/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \\
    \"\${keep[@]}\" SLURM_CONF=$IN_ETC/slurm.conf $venv/bin/hpc-billing \"\$@\""
        echo "$py"
    fi
}

# write_runner BODY: $REL_DIR/bin/hpc-billing-pyslurm, the venv's hpc-billing for this release
# (what tests/slurm runs for the pyslurm source).
write_runner() {
    mkdir -p "$REL_DIR/bin"
    printf '#!/bin/bash\n# hpc-billing with %s for Slurm %s (deploy/lab/pyslurm.sh)\n%s\n' \
        "${TARBALL%.tar.gz}" "$REL" "$1" > "$REL_DIR/bin/.hpc-billing-pyslurm.tmp"
    chmod 755 "$REL_DIR/bin/.hpc-billing-pyslurm.tmp"
    mv -f "$REL_DIR/bin/.hpc-billing-pyslurm.tmp" "$REL_DIR/bin/hpc-billing-pyslurm"
}

case "$action" in
    wheel) build_wheel; echo "$WHEEL" ;;
    venv) build_wheel; make_venv "$(cd "${3:?venv needs the project directory}" && pwd)" ;;
    *) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
