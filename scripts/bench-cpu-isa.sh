#!/usr/bin/env bash
# CPU decode of the default model on each ISA path, with its floor and llama.cpp beside it, in one
# run (docs/benchmarks.md, "CPU paths"). Everything runs with the same threads on a quiet machine.
#   scripts/bench-cpu-isa.sh [threads=2] [reps=3] [isas="avx512bf16 avx2"] [formats="native bf16"]
# (native: the GGUF's quantized blocks as stored; its floor is the quantized bytes a step reads.)
# Each (isa, format) also prefills a seeded random prompt of PREFILL_TOKENS (557) tokens once.
# llama.cpp comes from llama-cpp-python (LLAMA_PY: a python with it installed; see
# bench/llama_cpp_decode.py for the AVX2-only build). The floor of a decode step is the weight
# bytes a step reads (the linears and the LM head; the embedding table is read one row per token)
# over the host read bandwidth measured here with the same threads (hybridgen-membw).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${HYBRIDGEN_BUILD_DIR:-$root/build}"
threads="${1:-2}" reps="${2:-3}" isas="${3:-avx512bf16 avx2}" formats="${4:-native bf16}"
prefill_tokens="${PREFILL_TOKENS:-557}"
model="$("$root/models/fetch-default-model.sh")"
prompt="Once upon a time" n=128
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; threads $threads"
# This machine's bandwidth moves with its neighbours' load (seen: 16 to 29 GB/s a minute apart),
# so every decode run gets its own bandwidth measurement just before it, and its own ratio.
bandwidth() { OMP_NUM_THREADS=$threads "$build/bench/hybridgen-membw" 1024 3 | grep -oE '[0-9.]+ GB/s median' | awk '{print $1}'; }

for isa in $isas; do
  for wf in $formats; do
    info="$(HYBRIDGEN_CPU_ISA=$isa "$build/tools/hybridgen-run" -m "$model" -p "$prompt" -n 2 \
      --temp 0 -t "$threads" --weight-format "$wf" -v 2>&1)"
    # bytes a decode step reads: every linear, the LM head and the norms (hybridgen-run -v)
    read_mb="$(echo "$info" | grep -oE 'step reads [0-9.]+ MB' | awk '{print $3}')"
    ms=() bws=() ratios=()
    for r in $(seq "$reps"); do
      bw="$(bandwidth)"
      out="$(HYBRIDGEN_CPU_ISA=$isa "$build/tools/hybridgen-run" -m "$model" -p "$prompt" -n $n \
        --temp 0 -t "$threads" --ignore-eos --weight-format "$wf" 2>&1 >/dev/null)"
      m="$(echo "$out" | grep -oE '[0-9.]+ ms/step' | awk '{print $1}')"
      ms+=("$m") bws+=("$bw")
      ratios+=("$(awk -v m="$m" -v b="$read_mb" -v w="$bw" 'BEGIN {printf "%.2f", m / (b / w)}')")
    done
    echo "hybridgen $isa $wf: decode median $(printf '%s\n' "${ms[@]}" | median) ms/token" \
      "(runs: ${ms[*]}); reads $read_mb MB/step; bandwidth before each run: ${bws[*]} GB/s;" \
      "x floor per run: ${ratios[*]}; median $(printf '%s\n' "${ratios[@]}" | median)x"
    pf="$(HYBRIDGEN_CPU_ISA=$isa "$build/tools/hybridgen-run" -m "$model" --n-prompt "$prefill_tokens" \
      -n 1 --temp 0 -t "$threads" --weight-format "$wf" 2>&1 >/dev/null | grep -oE 'prefill: .*')"
    echo "hybridgen $isa $wf: $pf"
  done
done
if [ -n "${LLAMA_PY:-}" ]; then
  echo "host read bandwidth before llama.cpp: $(bandwidth) GB/s"
  "$LLAMA_PY" "$root/bench/llama_cpp_decode.py" "$model" "$prompt" $n "$threads" "$reps" "$prefill_tokens"
  echo "host read bandwidth after llama.cpp: $(bandwidth) GB/s"
fi
