#!/usr/bin/env bash
# Every GPU check of issue 14 in one call on the lent GPU machine (Ubuntu 24.04, CUDA 13, no -dev
# packages, no network), well under 10 minutes on an H200 including the build:
#   1. unpack the carried Debian packages (.debs/, from scripts/fetch-gpu-debs.sh) into a prefix;
#   2. build for sm_90 only the targets used below;
#   3. the CUDA tests (each binary run directly, so that their printed figures reach the log):
#      ops, model, tensor callback, device stage (host_io), and the CUDA backend on the hybrid
#      runtime (tests/unit/cuda_backend_hybrid_test.cpp: 4 tiny architectures x windows
#      0/1/33/whole x batch 1/2 layer by layer, the selections, every policy 40 decode steps),
#      and the device sampler against the CPU sampler (issue 15);
#   4. the ceilings (HBM copy and pinned H2D: hybridgen-gpubw; host read: hybridgen-membw);
#   5. Llama-3.1-8B shapes (random bf16 weights), batch 1, 32K prompt, 10% window: full, hybrid
#      and aog decode with hybridgen-bench, one JSON each, then one side-by-side table (ms/token,
#      the stage times, the overlap).
# Everything goes to $OUT as it happens (gpu-check.log, build.log, tests.log, bench_*.json: six
# files, under the tool's eight); each part has its own time cap so that a slow part cannot take
# the others' time. Without $OUT: /tmp/gpu-out.
#   device run: bash scripts/gpu-check.sh            (carry: .debs)
#   HYBRIDGEN_GPU_QUICK=1: tests only (no 8B bench).  HYBRIDGEN_GPU_CONTEXT=N: the bench's prompt.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${OUT:-/tmp/gpu-out}"; mkdir -p "$out"
exec > >(tee -a "$out/gpu-check.log") 2>&1
prefix=/tmp/hybridgen-prefix
jobs="$(nproc)"
t_start=$(date +%s)
step() { echo; echo "=== $* ($(date +%T), +$(( $(date +%s) - t_start )) s)"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm --format=csv
nproc; free -g | head -2

step "dependencies from .debs/"
mkdir -p "$prefix"
for f in .debs/*.deb; do dpkg -x "$f" "$prefix"; done
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"

step "build (sm_90)"
cuda_tests="cuda_ops_test cuda_model_test cuda_tensor_callback_test cuda_device_stage_test cuda_backend_hybrid_test cuda_sampler_test"
extra_tests="${HYBRIDGEN_GPU_EXTRA_TESTS:-}"  # more test binaries to build and run
timeout 300 cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix/usr" -DHYBRIDGEN_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DHYBRIDGEN_BUILD_EXAMPLES=OFF > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
# shellcheck disable=SC2086
timeout 300 cmake --build build-gpu -j "$jobs" --target $cuda_tests $extra_tests hybridgen-run \
  hybridgen-bench hybridgen-gpubw hybridgen-membw >> "$out/build.log" 2>&1 ||
  { grep -E "error" -A3 "$out/build.log" | head -60; exit 1; }
echo "built in $(( $(date +%s) - t_start )) s"

step "CUDA tests"
failed=0
for t in $cuda_tests $extra_tests; do
  echo "--- $t" >> "$out/tests.log"
  OMP_NUM_THREADS=4 timeout 180 "build-gpu/tests/$t" >> "$out/tests.log" 2>&1
  rc=$?
  printf '%-28s rc %d  %s\n' "$t" "$rc" "$(awk -v t="--- $t" '$0==t{f=1;next} /^--- /{f=0} f' \
    "$out/tests.log" | grep -E "^\[  (PASSED|FAILED) +\]|tests? ran" | tr '\n' ' ')"
  [ "$rc" = 0 ] || failed=$((failed + 1))
done
echo "test binaries failed: $failed"
echo "figures printed by the tests:"
grep -E "^\[ .* \] " "$out/tests.log" | grep -vE "^\[ +(RUN|OK|PASSED|FAILED|SKIPPED) +\]" | head -80
grep -E "^\[  FAILED  \]" "$out/tests.log" | head -40

[ "${HYBRIDGEN_GPU_QUICK:-0}" = 1 ] && { step "done (quick)"; exit 0; }

step "ceilings"
timeout 60 build-gpu/bench/hybridgen-gpubw 2048 20
OMP_NUM_THREADS=16 timeout 60 build-gpu/bench/hybridgen-membw 1024 5

ctx="${HYBRIDGEN_GPU_CONTEXT:-32768}"
step "Llama-3.1-8B shapes, random bf16 weights, batch 1, prompt $ctx, window 10%: full, hybrid, aog"
for p in full hybrid aog; do
  echo "--- $p"
  timeout 170 build-gpu/tools/hybridgen-bench -m models/presets/llama-3.1-8b --random-weights \
    --device cuda --policy "$p" -p "$ctx" -n 17 -r 1 --warmup 0 --window-frac 0.1 -t 16 \
    --bw-mib 256 --bw-reps 2 --log-level info --json "$out/bench_$p.json" 2>&1 |
    grep -vE "^\s*$" | tail -14
  echo "(+$(( $(date +%s) - t_start )) s)"
done

step "side by side"
python3 - "$out" <<'EOF'
import json, os, sys
out = sys.argv[1]
print("| policy | window | ms/token | device ms | CPU ms | tx ms | wait ms | overlap | mean K | prefill tok/s |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for p in ("full", "hybrid", "aog"):
    f = os.path.join(out, f"bench_{p}.json")
    if not os.path.exists(f):
        print(f"| {p} | (no result: cut off or failed, see gpu-check.log) |"); continue
    for r in json.load(open(f)).get("results", []):
        st = r.get("stages_ms_per_step") or {}
        g = lambda k: (st.get(k) or {}).get("median")
        fmt = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"
        ms = (r.get("ms_per_step") or {}).get("median")
        pf = (r.get("prefill_tps") or {}).get("median")
        print(f"| {p} | {r.get('window')} | {fmt(ms)} | {fmt(g('device'))} | {fmt(g('cpu'))} | "
              f"{fmt(g('tx'))} | {fmt(g('wait'))} | {fmt(r.get('overlap'))} | "
              f"{fmt(r.get('mean_k'), 1)} | {fmt(pf, 0)} |")
EOF
step "done"
