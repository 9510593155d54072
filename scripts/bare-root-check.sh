#!/usr/bin/env bash
# Proves the README's two set-up commands on a bare Debian 12 root, as a new user's machine is:
# builds a minimal root with mmdebstrap (--variant=apt: apt and essential packages only, no
# compiler, no python), copies a clean export of this repository's HEAD into it, and runs
#   scripts/run-default.sh   (install, build, fetch the default model, the chat question)
#   scripts/test.sh          (install, build, the whole test suite)
# inside it with chroot. Nothing of the host's toolchain or packages is visible inside; the
# root has no CUDA toolkit, so this is the CPU-only build. Fails on any error.
#
# This machine reaches the registries through a TLS-intercepting proxy: its CA certificates
# (/usr/local/share/ca-certificates) and /etc/pip.conf are copied in, as a user behind such a
# proxy would have them; they are not needed where the registries are reached directly.
#
# Usage: scripts/bare-root-check.sh [ROOT_DIR]     (default /tmp/hybridgen-bare-root)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="${1:-/tmp/hybridgen-bare-root}"
mirror="${HYBRIDGEN_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
[ "$(id -u)" = 0 ] || { echo "bare-root-check: needs root (mmdebstrap + chroot)" >&2; exit 1; }
command -v mmdebstrap >/dev/null || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
}

cleanup() {
  for m in dev/pts dev proc sys; do
    mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m" || true
  done
}
trap cleanup EXIT
cleanup
rm -rf "$root"

t0=$(date +%s)
echo "=== bare root: mmdebstrap --variant=apt bookworm $root"
mmdebstrap --quiet --variant=apt bookworm "$root" "$mirror"
echo "=== bare root: made in $(( $(date +%s) - t0 )) s; $(du -sh "$root" | cut -f1)"

# The proxy's CA certificates and pip's configuration (see above).
if [ -d /usr/local/share/ca-certificates ]; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true

# A clean export of HEAD: what a user clones (no build outputs, no model cache).
mkdir -p "$root/src/hybridgen"
git -C "$repo" archive --format=tar HEAD | tar -x -C "$root/src/hybridgen"

mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"

run_in_root() {  # the README's command, as root in the bare root, with a clean environment
  chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 TERM=dumb /bin/bash -c "cd /src/hybridgen && $1"
}

t1=$(date +%s)
echo "=== bare root: scripts/run-default.sh (the README's first command)"
# (tee to a file, not /dev/stderr: reopening a redirected stderr would truncate its log.)
run_in_root "scripts/run-default.sh" 2>&1 | tee "$root/run-default.log"
tail -n 5 "$root/run-default.log" | grep -q "Paris" || { echo "bare-root-check: the chat answer has no 'Paris'" >&2; exit 1; }
t2=$(date +%s)
echo "=== bare root: run-default.sh passed in $(( t2 - t1 )) s"

echo "=== bare root: scripts/test.sh (the README's second command)"
run_in_root "scripts/test.sh"
t3=$(date +%s)
echo "=== bare root: test.sh passed in $(( t3 - t2 )) s; whole check $(( t3 - t0 )) s"
