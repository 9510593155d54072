#!/usr/bin/env bash
# Downloads the Debian packages the lent GPU machine lacks into .debs/ (git-ignored), to be
# carried with the device call and unpacked there by scripts/gpu-check.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$root/.debs" && cd "$root/.debs"
apt-get download libdnnl2 libdnnl-dev libnuma1 libnuma-dev libspdlog1.10 libspdlog-dev libfmt9 \
  libfmt-dev libcli11-dev nlohmann-json3-dev googletest libgtest-dev libpcre2-8-0 libpcre2-16-0 \
  libpcre2-32-0 libpcre2-posix3 libpcre2-dev ocl-icd-libopencl1 ocl-icd-opencl-dev \
  opencl-c-headers opencl-clhpp-headers
ls -la
