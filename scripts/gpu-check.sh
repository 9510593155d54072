#!/usr/bin/env bash
# Every GPU check in one call on the lent GPU machine (Ubuntu 24.04, CUDA 13, no -dev packages,
# no network): unpacks the carried Debian packages (.debs/, from scripts/fetch-gpu-debs.sh) into
# a prefix, builds for sm_90, runs the whole test suite (the CUDA op and model tests run there
# instead of skipping), then prints the benchmark table last. Logs go to $OUT (or /tmp/gpu-out).
#   device run: bash scripts/gpu-check.sh      (carry: .debs)
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${OUT:-/tmp/gpu-out}"; mkdir -p "$out"
prefix=/tmp/hybridgen-prefix
jobs="$(nproc)"
step() { echo; echo "=== $* ($(date +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm --format=csv
nproc; free -g | head -2

step "dependencies from .debs/"
mkdir -p "$prefix"
for f in .debs/*.deb; do dpkg -x "$f" "$prefix"; done
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"

step "build (sm_90)"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix/usr" \
  -DHYBRIDGEN_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DHYBRIDGEN_BUILD_EXAMPLES=OFF \
  > "$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
cmake --build build-gpu -j "$jobs" > "$out/build.log" 2>&1 || { grep -E "error" -A3 "$out/build.log" | head -60; exit 1; }
echo "built"

# HYBRIDGEN_GPU_QUICK=1: only the CUDA tests and hybridgen's own timings (a short lease).
quick="${HYBRIDGEN_GPU_QUICK:-0}"
step "whole suite (ctest), CUDA op and model tests included"
filter=(); [ "$quick" = 1 ] && filter=(-R Cuda)
OMP_NUM_THREADS=4 timeout 150 ctest --test-dir build-gpu -j 4 --output-on-failure "${filter[@]}" > "$out/ctest.log" 2>&1
grep -E "tests passed|Failed|Skipped" "$out/ctest.log" | grep -v "Cuda" | tail -8
echo "CUDA tests passed: $(grep -E 'Test +#.*Cuda.* Passed' "$out/ctest.log" | wc -l), failed: $(grep -E 'Test +#.*Cuda.*Failed' "$out/ctest.log" | wc -l), skipped: $(grep -E 'Test +#.*Cuda.*Skipped' "$out/ctest.log" | wc -l)"

step "benchmarks"
run=build-gpu/tools/hybridgen-run
build-gpu/bench/hybridgen-gpubw 2048 20 | tee "$out/gpubw.log"
[ "$quick" = 1 ] || OMP_NUM_THREADS=16 build-gpu/bench/hybridgen-membw 2048 9 | tee "$out/membw.log"
for ctx in ${HYBRIDGEN_GPU_CONTEXTS:-4096 32768}; do
  echo "--- llama-3.1-8b shapes, random bf16 weights, batch 1, prompt $ctx, full GPU"
  timeout 130 $run -m models/presets/llama-3.1-8b --random-weights --device cuda \
    --n-prompt "$ctx" -c $((ctx + 64)) -n 32 --ignore-eos --temp 0 -t 16 -v 2>&1 | \
    tee "$out/decode_$ctx.log" | grep -E "weights|prefill|decode|error" 
done
[ "$quick" = 1 ] || timeout 150 python3 bench/hf_decode.py models/presets/llama-3.1-8b ${HYBRIDGEN_GPU_CONTEXTS:-4096 32768} 2>&1 | \
  grep -E "HF transformers|Error" | tee "$out/hf.log"
