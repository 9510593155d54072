#!/usr/bin/env bash
# Builds the libFuzzer harnesses of tests/fuzz (clang, ASan + UBSan) in build-fuzz and runs
# each for a bounded time on a copy of its seed corpus. Prints per target: executions,
# executions/s, coverage (cov: edges, ft: features), corpus size, peak RSS. Exits non-zero if
# any target crashes, leaks, times out, runs out of memory or fails a check; the input that did
# it is saved under $FUZZ_ARTIFACTS/<target>/.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET=30]
#
# Environment:
#   FUZZ_TARGETS    space-separated subset (e.g. "gguf safetensors"); default: all
#   FUZZ_BUILD_DIR  build directory (default build-fuzz)
#   FUZZ_JOBS       build parallelism (default 2)
#   FUZZ_ARTIFACTS  where crashing inputs go (default $FUZZ_BUILD_DIR/fuzz-artifacts)
#   FUZZ_KEEP_CORPUS=1  keep the grown corpora (printed), else they are deleted
#   FUZZ_EXTRA_ARGS extra libFuzzer flags for every target
# Installs nothing: needs clang, libclang-rt-14-dev (libFuzzer, sanitizer runtimes) and
# libomp-dev besides the usual dependencies (scripts/install-deps.sh).
set -euo pipefail

SECONDS_PER_TARGET=${1:-30}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${FUZZ_BUILD_DIR:-$ROOT/build-fuzz}
JOBS=${FUZZ_JOBS:-2}
ARTIFACTS=${FUZZ_ARTIFACTS:-$BUILD/fuzz-artifacts}
FUZZ_DIR=$ROOT/tests/fuzz
ALL_TARGETS="safetensors safetensors_index gguf model_config tokenizer_json tokenizer_encode chat_template"
TARGETS=${FUZZ_TARGETS:-$ALL_TARGETS}

if ! command -v clang++ >/dev/null 2>&1; then
  echo "fuzz.sh: clang++ not found (apt-get install clang libclang-rt-14-dev libomp-dev)" >&2
  exit 2
fi

# ---- build -------------------------------------------------------------------------------------
t0=$(date +%s)
mkdir -p "$BUILD"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHYBRIDGEN_CUDA=OFF -DHYBRIDGEN_SANITIZE="address;undefined" \
  -DHYBRIDGEN_BUILD_FUZZERS=ON -DHYBRIDGEN_BUILD_TESTS=OFF -DHYBRIDGEN_BUILD_TOOLS=OFF \
  -DHYBRIDGEN_BUILD_EXAMPLES=OFF -DHYBRIDGEN_BUILD_BENCH=OFF >"$BUILD/fuzz-configure.log" 2>&1 || {
  cat "$BUILD/fuzz-configure.log" >&2
  echo "fuzz.sh: configure failed (log above)" >&2
  exit 2
}
build_targets=()
for t in $TARGETS; do build_targets+=("fuzz_$t"); done
ninja -C "$BUILD" -j"$JOBS" "${build_targets[@]}"
t1=$(date +%s)
echo "fuzz.sh: built ${#build_targets[@]} fuzzers in $((t1 - t0)) s"

# ---- run ---------------------------------------------------------------------------------------
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:abort_on_error=1}
export HYBRIDGEN_FUZZ_DATA_DIR=${HYBRIDGEN_FUZZ_DATA_DIR:-$ROOT/tests/data}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hybridgen-fuzz.XXXXXX")
if [ "${FUZZ_KEEP_CORPUS:-0}" != 1 ]; then trap 'rm -rf "$WORK"' EXIT; fi

declare -a rows
failed=()
for t in $TARGETS; do
  exe=$BUILD/tests/fuzz/fuzz_$t
  corpus=$WORK/corpus/$t
  mkdir -p "$corpus" "$ARTIFACTS/$t"
  if [ -d "$FUZZ_DIR/corpus/$t" ]; then cp -r "$FUZZ_DIR/corpus/$t/." "$corpus/"; fi
  # One dictionary per target; JSON targets also get the JSON syntax entries.
  dict=$WORK/$t.dict
  : >"$dict"
  case $t in
    safetensors|safetensors_index|model_config|tokenizer_json) cat "$FUZZ_DIR/dict/json.dict" >>"$dict" ;;
  esac
  if [ -f "$FUZZ_DIR/dict/$t.dict" ]; then cat "$FUZZ_DIR/dict/$t.dict" >>"$dict"; fi
  dict_arg=()
  if [ -s "$dict" ]; then dict_arg=(-dict="$dict"); fi
  log=$WORK/$t.log
  echo "fuzz.sh: fuzz_$t for ${SECONDS_PER_TARGET} s"
  set +e
  # shellcheck disable=SC2086
  "$exe" -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="$ARTIFACTS/$t/" "${dict_arg[@]}" \
    ${FUZZ_EXTRA_ARGS:-} "$corpus" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$last")
  status=ok
  if [ $rc -ne 0 ]; then
    status="FAILED (exit $rc)"
    failed+=("$t")
    echo "---- fuzz_$t: last 60 lines of its log ($log) ----"
    tail -60 "$log"
    echo "---- inputs saved in $ARTIFACTS/$t/:"
    ls -l "$ARTIFACTS/$t/" || true
  fi
  rows+=("$(printf '%-18s %10s %8s %6s %7s %14s %7s  %s' "$t" "${execs:-?}" "${speed:-?}" \
    "${cov:-?}" "${ft:-?}" "${corp:-?}" "${rss:-?}" "$status")")
done

echo
printf '%-18s %10s %8s %6s %7s %14s %7s  %s\n' target execs exec/s cov ft corpus rss_mb result
for r in "${rows[@]}"; do echo "$r"; done
echo "fuzz.sh: total $(( $(date +%s) - t0 )) s (build $((t1 - t0)) s)"
if [ "${FUZZ_KEEP_CORPUS:-0}" = 1 ]; then echo "fuzz.sh: grown corpora and logs in $WORK"; fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: FAILED: ${failed[*]} (reproduce: $BUILD/tests/fuzz/fuzz_<target> <saved input>)" >&2
  exit 1
fi
