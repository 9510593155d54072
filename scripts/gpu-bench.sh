#!/usr/bin/env bash
# Issue 15's budget: one script that builds once, runs the CUDA backend's correctness tests
# first (scripts/gpu-check.sh with HYBRIDGEN_GPU_QUICK=1: the device sampler test among them),
# then the paper's comparison tables, each table one hybridgen-bench run with its own time cap,
# each table's JSON appended to $OUT/gpu-bench.jsonl (one line per table) as soon as it ends, so
# a run cut off by the lease still returns what it measured.
#   device run: bash scripts/gpu-bench.sh                     (carry: .debs)
# Tables: HYBRIDGEN_BENCH_TABLES, space-separated MODEL:CONTEXT:BATCH, in priority order. Each
# configuration loads the engine and prefills again (about 40 s at 32K: one prefill serving
# every policy is not done yet), so the default fits one 15-minute lease with the build:
#   llama-3.1-8b:32768:1 llama-3.1-8b:8192:1
# and later leases take the rest (qwen2.5-7b:32768:1 llama-3.1-8b:32768:8 llama-3.1-8b:8192:8 ...).
# Policies per table: HYBRIDGEN_BENCH_POLICIES (default full,hybrid,aog,infinigen; hybrid both
# adaptive and with selection off; the full list adds aoc,keyformer,h2o,streamingllm). The windowed policies keep a
# 10% window (offloading forced while full would fit). HYBRIDGEN_BENCH_CAP: seconds per table.
# Files in $OUT: gpu-check.log, build.log, tests.log (from gpu-check.sh), gpu-bench.log,
# gpu-bench.jsonl.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${OUT:-/tmp/gpu-out}"; mkdir -p "$out"
t_start=$(date +%s)

HYBRIDGEN_GPU_QUICK=1 bash scripts/gpu-check.sh ||
  { echo "build or tests failed: no tables"; exit 1; }
export LD_LIBRARY_PATH="/tmp/hybridgen-prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"

exec > >(tee -a "$out/gpu-bench.log") 2>&1
echo "=== ceilings ($(date +%T))"
timeout 60 build-gpu/bench/hybridgen-gpubw 2048 20
OMP_NUM_THREADS=16 timeout 60 build-gpu/bench/hybridgen-membw 1024 5

tables="${HYBRIDGEN_BENCH_TABLES:-llama-3.1-8b:32768:1 llama-3.1-8b:8192:1}"
policies="${HYBRIDGEN_BENCH_POLICIES:-full,hybrid,aog,infinigen}"
cap="${HYBRIDGEN_BENCH_CAP:-270}"
for t in $tables; do
  IFS=: read -r model ctx batch <<< "$t"
  echo
  echo "=== $model shapes, random bf16 weights, context $ctx, batch $batch ($(date +%T), +$(( $(date +%s) - t_start )) s)"
  tmp="/tmp/gpu-bench-$model-$ctx-$batch.json"
  rm -f "$tmp"
  timeout "$cap" build-gpu/tools/hybridgen-bench -m "models/presets/$model" --random-weights \
    --device cuda --policy "$policies" --selection adaptive,off -p "$ctx" -b "$batch" -n 9 \
    -r 1 --warmup 0 --window-frac 0.1 -t 16 --bw-mib 256 --bw-reps 2 --json "$tmp" 2>&1 |
    grep -vE "^\s*$"
  echo "rc ${PIPESTATUS[0]} (124: cut at ${cap} s)"
  if [ -s "$tmp" ]; then
    python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$tmp" \
      >> "$out/gpu-bench.jsonl"
  else
    echo "{\"table\": \"$t\", \"error\": \"no JSON (cut off or failed; see gpu-bench.log)\"}" \
      >> "$out/gpu-bench.jsonl"
  fi
done
echo "=== done (+$(( $(date +%s) - t_start )) s)"
