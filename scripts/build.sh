#!/usr/bin/env bash
# Configures and builds HybridGen in build/ (Release, Ninja). Extra arguments go to cmake.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${HYBRIDGEN_BUILD_DIR:-$root/build}"
# ccache when installed (scripts/install-deps.sh installs it; HYBRIDGEN_CCACHE=0 turns it off):
# compiler outputs cached by content, so a rebuild after a branch switch or in a second checkout
# recompiles only what changed. CCACHE_BASEDIR makes paths under the checkout relative, so
# checkouts at different paths share the cache.
launchers=()
if [ "${HYBRIDGEN_CCACHE:-1}" != 0 ] && command -v ccache >/dev/null 2>&1; then
  export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$root}"
  launchers=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
    launchers+=(-DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
  fi
fi
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "${launchers[@]}" "$@"
cmake --build "$build" -j "$(nproc)"
