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

step "CUDA op and model tests"
for t in cuda_ops_test cuda_model_test; do
  OMP_NUM_THREADS=8 timeout 240 build-gpu/tests/$t 2>&1 | tee "$out/$t.log" | \
    grep -E "^\[  (FAILED|PASSED|SKIPPED) |Failure|tolerance|max|error" | head -60
done

step "whole suite (ctest)"
timeout 240 ctest --test-dir build-gpu -j 8 --output-on-failure -E "cuda_" > "$out/ctest.log" 2>&1
tail -15 "$out/ctest.log"

step "benchmarks"
run=build-gpu/tools/hybridgen-run
build-gpu/bench/hybridgen-gpubw 2048 20 | tee "$out/gpubw.log"
OMP_NUM_THREADS=16 build-gpu/bench/hybridgen-membw 2048 9 | tee "$out/membw.log"
for ctx in 4096 32768; do
  echo "--- llama-3.1-8b shapes, random bf16 weights, batch 1, prompt $ctx, full GPU"
  timeout 200 $run -m models/presets/llama-3.1-8b --random-weights --device cuda \
    --n-prompt "$ctx" -c $((ctx + 64)) -n 32 --ignore-eos --temp 0 -t 16 -v 2>&1 | \
    tee "$out/decode_$ctx.log" | grep -E "weights|prefill|decode|error" 
done
