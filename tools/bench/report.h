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
  double prefill_s = 0, decode_s = 0;
  AttentionStats stats;  // reset before the call: this repetition only
};

struct ConfigResult {
  BenchConfig config;
  double load_s = 0;  // Engine::load (weights included), outside every timing below
  std::vector<RepResult> reps;
  std::vector<StageEvent> trace;  // of the last repetition (--trace)
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
