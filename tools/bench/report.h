// hybridgen-bench results: per-configuration summaries (mean ± stddev over repetitions, floors)
// and their renderings: markdown on stdout, JSON, CSV, Chrome/Perfetto traces.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ceilings.h"
#include "hybridgen/engine.h"
#include "sweep.h"

namespace hybridgen::bench {

// One timed generate_batch call.
struct RepResult {
  double prefill_s = 0, decode_s = 0;  // prefill_s 0: restored from the shared prefill
  double restore_s = 0;                // the shared prefill's restore into this engine
  AttentionStats stats;                // reset before the call: this repetition only
};

struct ConfigResult {
  BenchConfig config;
  double load_s = 0;  // Engine::load (weights included), outside every timing below
  std::vector<RepResult> reps;
  std::vector<StageEvent> trace;  // of the last repetition (--trace)
  int shared_prefill = -1;        // index into RunContext::shared; -1: its own prefill
};

// One prefill that served several configurations of the same (model, context, batch[, window]):
// taken once, restored into each configuration's engine before its warm-up and timed runs.
struct SharedPrefill {
  int n_prompt = 0, batch = 1, n_ctx = 0;
  std::string source_policy, kv_precision;
  double prefill_s = 0;  // the snapshot's prefill (forward passes), once
  double stats_s = 0;    // of which the prompt statistics' extra pass
  double capture_s = 0;  // copying the K/V and statistics out
  uint64_t bytes = 0;    // the snapshot's K/V and statistics
  int configs = 0;       // configurations restored from it
  int runs = 0;          // warm-up and timed runs restored from it
  double restore_s = 0;  // summed over those runs
  // The prefill time those runs did not spend, estimated: each would have prefilled for about
  // prefill_s - stats_s (the same prefill without the statistics' pass), against the one
  // snapshot (prefill, capture) and the restores.
  double saved_s() const {
    return runs * (prefill_s - stats_s) - prefill_s - capture_s - restore_s;
  }
};

// What every row is measured against: the run's ceilings and the model.
struct RunContext {
  ModelInfo model;
  HostBandwidth host;
  int n_gen = 0;
  bool speculative = true;  // false: --exact-query (the CPU stage never overlaps)
  std::string device = "cpu";
  double sample_us = 0;  // greedy sampling of one token, measured apart
  std::string cpu;       // /proc/cpuinfo model name
  int cores = 0;         // online CPUs
  // /proc/loadavg before and after the runs: on a shared machine, other work shows up here.
  std::string loadavg_start, loadavg_end;
  std::vector<SharedPrefill> shared;  // empty: --no-shared-prefill, or nothing to share
};

struct MeanSd {
  double mean = 0, sd = 0;     // sd: sample standard deviation (0 for one repetition)
  double min = 0, median = 0;  // in the JSON: robust to another process's burst on a shared box
  int n = 0;                   // values (repetitions that had them)
};

struct Summary {
  int window = -1;  // effective device window (tokens), -1: n/a
  MeanSd prefill_tps, decode_tps, ms_per_step;
  bool has_stages = false;                   // the hybrid runtime ran (every policy but full)
  MeanSd device_ms, cpu_ms, tx_ms, wait_ms;  // per decode step
  double overlap = -1;  // share of CPU stage + transfer hidden behind the device; -1: n/a
  double mean_k = 0;
  double frac_post = 0, frac_pre = 0, frac_all = 0;  // of layer passes
  double cpu_bytes_per_token = 0, h2d_bytes_per_token = 0;
  double mean_context = 0;  // tokens attended per decode step, mean (p + n/2)
  double floor_bytes = 0;   // per decode step, all sequences
  double floor_ms = -1;     // -1: no ceiling for this device
  double floor_ratio = -1;
};

Summary summarize(const ConfigResult& r, const RunContext& ctx);

// The floor's definition, printed with every table and stored in the JSON.
std::string floor_formula();

std::string markdown_header();
std::string markdown_row(const ConfigResult& r, const Summary& s);
std::string csv_header();
std::string csv_row(const ConfigResult& r, const Summary& s);
// The whole run: machine, ceilings, model, command and every configuration with its
// repetitions.
std::string to_json(const RunContext& ctx, const std::string& command,
                    const std::vector<ConfigResult>& results);
// Chrome trace event format (chrome://tracing, ui.perfetto.dev): one process per configuration,
// one thread per stage, complete ("X") events in microseconds.
std::string to_chrome_trace(const std::vector<ConfigResult>& results);

}  // namespace hybridgen::bench
