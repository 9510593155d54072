#include "report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

namespace hybridgen::bench {

namespace {

MeanSd mean_sd(const std::vector<double>& v) {
  MeanSd m;
  m.n = static_cast<int>(v.size());
  if (v.empty()) return m;
  for (double x : v) m.mean += x;
  m.mean /= v.size();
  std::vector<double> sorted = v;
  std::sort(sorted.begin(), sorted.end());
  m.min = sorted.front();
  m.median = sorted.size() % 2 ? sorted[sorted.size() / 2]
                               : (sorted[sorted.size() / 2 - 1] + sorted[sorted.size() / 2]) / 2;
  if (v.size() > 1) {
    double ss = 0;
    for (double x : v) ss += (x - m.mean) * (x - m.mean);
    m.sd = std::sqrt(ss / (v.size() - 1));
  }
  return m;
}

// Decode steps (forward passes) of one generate call: the first generated token comes from the
// prefill's logits.
int decode_steps(int n_gen) { return std::max(0, n_gen - 1); }

bool policy_pipelined(const std::string& policy, bool speculative) {
  // aog and aoc run attention synchronously (no CPU stage beside the device); --exact-query
  // makes the CPU stage wait for the true query.
  return speculative && policy != "full" && policy != "aog" && policy != "aoc";
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string fmt_msd(const MeanSd& m, int precision) {
  if (m.n == 0) return "-";
  char buf[96];
  std::snprintf(buf, sizeof buf, "%.*f ± %.*f", precision, m.mean, precision, m.sd);
  return buf;
}

std::string fmt_bytes(double b) {
  char buf[32];
  if (b >= 1e9)
    std::snprintf(buf, sizeof buf, "%.2f GB", b / 1e9);
  else if (b >= 1e6)
    std::snprintf(buf, sizeof buf, "%.2f MB", b / 1e6);
  else if (b >= 1e3)
    std::snprintf(buf, sizeof buf, "%.1f KB", b / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.0f B", b);
  return buf;
}

// CSV and JSON leave "not applicable" empty / null rather than inventing a number.
std::string csv_num(double v, bool valid) { return valid ? fmt("%.6g", v) : ""; }

nlohmann::ordered_json json_msd(const MeanSd& m) {
  if (m.n == 0) return nullptr;
  return {{"mean", m.mean}, {"sd", m.sd}, {"min", m.min}, {"median", m.median}, {"n", m.n}};
}

}  // namespace

std::string floor_formula() {
  return "floor per decode step = (W + b * KV) / host read bandwidth, where W = weight bytes "
         "held by the backend minus the token-embedding table (a step reads b rows of it), b = "
         "batch, L = p + n/2 (mean tokens attended per step) and KV per sequence = full: L * "
         "KV/token (f32); aog, aoc: L * KV/token / 2 (bf16 host stores, all offloaded); the "
         "others: min(window, L) * KV/token (f32 window) + key bytes read by the CPU stage + V "
         "bytes gathered, per step (the runtime's counters). x floor = measured ms/step / floor.";
}

Summary summarize(const ConfigResult& r, const RunContext& ctx) {
  const BenchConfig& c = r.config;
  Summary s;
  const int steps = decode_steps(ctx.n_gen);
  std::vector<double> pp, tg, ms, dev, cpu, tx, wait;
  double k_sum = 0, cpu_tx_sum = 0, wait_sum = 0, bytes_step_sum = 0;
  double key_tok = 0, v_tok = 0;
  int64_t passes = 0, post = 0, pre = 0, all = 0;
  int with_stats = 0;
  for (const RepResult& rep : r.reps) {
    if (rep.prefill_s > 0) pp.push_back(double(c.batch) * c.n_prompt / rep.prefill_s);
    if (steps > 0 && rep.decode_s > 0) {
      tg.push_back(double(c.batch) * steps / rep.decode_s);
      ms.push_back(1e3 * rep.decode_s / steps);
    }
    const AttentionStats& a = rep.stats;
    if (c.policy == "full" || a.decode_steps == 0) continue;
    ++with_stats;
    const double n = double(a.decode_steps);
    dev.push_back(1e3 * a.t_device / n);
    cpu.push_back(1e3 * a.t_cpu / n);
    tx.push_back(1e3 * a.t_tx / n);
    wait.push_back(1e3 * a.t_wait / n);
    cpu_tx_sum += a.t_cpu + a.t_tx;
    wait_sum += a.t_wait;
    k_sum += a.mean_k;
    passes += a.layer_passes;
    post += a.passes_post_qkt;
    pre += a.passes_pre_qkt;
    all += a.passes_all;
    key_tok += a.key_bytes_read / (n * c.batch);
    // moved: the staged V rows, and the K rows beside them when the device scores the kept
    // tokens (--cpu-logits exact-selected)
    v_tok += (a.value_bytes_moved + a.key_bytes_moved) / (n * c.batch);
    bytes_step_sum += (a.key_bytes_read + a.value_bytes_moved + a.key_bytes_moved) / n;
  }
  s.prefill_tps = mean_sd(pp);
  s.decode_tps = mean_sd(tg);
  s.ms_per_step = mean_sd(ms);
  if (c.policy != "full" && !r.reps.empty()) s.window = r.reps.front().stats.window;
  if (with_stats > 0) {
    s.has_stages = true;
    s.device_ms = mean_sd(dev);
    s.cpu_ms = mean_sd(cpu);
    s.tx_ms = mean_sd(tx);
    s.wait_ms = mean_sd(wait);
    s.overlap = 0;
    if (policy_pipelined(c.policy, ctx.speculative) && cpu_tx_sum > 0)
      s.overlap = std::clamp(1.0 - wait_sum / cpu_tx_sum, 0.0, 1.0);
    s.mean_k = k_sum / with_stats;
    if (passes > 0) {
      s.frac_post = double(post) / passes;
      s.frac_pre = double(pre) / passes;
      s.frac_all = double(all) / passes;
    }
    s.cpu_bytes_per_token = key_tok / with_stats;
    s.h2d_bytes_per_token = v_tok / with_stats;
  }

  // The floor (floor_formula()).
  const ModelInfo& m = ctx.model;
  const double row = double(m.d_model) * sizeof(float);
  const double w = double(m.weight_bytes) - double(m.vocab_size) * row + c.batch * row;
  const double kvb = double(m.kv_bytes_per_token);
  const double L = c.n_prompt + ctx.n_gen / 2.0;
  s.mean_context = L;
  double kv = 0;
  if (c.policy == "full")
    kv = L * kvb;
  else if (c.policy == "aog" || c.policy == "aoc")
    kv = L * kvb / 2;
  else
    kv = std::min<double>(std::max(s.window, 0), L) * kvb +
         (with_stats > 0 ? bytes_step_sum / with_stats / c.batch : 0);
  s.floor_bytes = w + c.batch * kv;
  if (ctx.device == "cpu" && ctx.host.median_gbs > 0 && steps > 0) {
    s.floor_ms = 1e3 * s.floor_bytes / (ctx.host.median_gbs * 1e9);
    if (s.ms_per_step.n > 0) s.floor_ratio = s.ms_per_step.mean / s.floor_ms;
  }
  return s;
}

std::string markdown_header() {
  return "| policy | p | b | window | K | sel | prefill t/s | decode t/s | ms/step | floor ms | "
         "x floor | device ms | CPU ms | tx ms | wait ms | overlap | mean K | post/pre/all % | "
         "CPU read/tok | moved/tok |\n"
         "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | "
         "---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |\n";
}

std::string markdown_row(const ConfigResult& r, const Summary& s) {
  const BenchConfig& c = r.config;
  const bool st = s.has_stages;
  std::string row = "| " + c.policy + " | " + std::to_string(c.n_prompt) + " | " +
                    std::to_string(c.batch) + " | " +
                    (s.window >= 0 ? std::to_string(s.window) : "-") + " | " +
                    (c.k >= 0 ? std::to_string(c.k) : "-") + " | " +
                    (c.selection.empty() ? "-" : c.selection) + " | ";
  row += (r.shared_prefill >= 0 ? "shared #" + std::to_string(r.shared_prefill)
                                : fmt_msd(s.prefill_tps, 1)) +
         " | " + fmt_msd(s.decode_tps, 2) + " | " + fmt_msd(s.ms_per_step, 2) + " | ";
  row += (s.floor_ms >= 0 ? fmt("%.2f", s.floor_ms) : "-") + " | ";
  row += (s.floor_ratio >= 0 ? fmt("%.2f", s.floor_ratio) : "-") + " | ";
  row += (st ? fmt_msd(s.device_ms, 2) : "-") + " | " + (st ? fmt_msd(s.cpu_ms, 2) : "-") + " | " +
         (st ? fmt_msd(s.tx_ms, 2) : "-") + " | " + (st ? fmt_msd(s.wait_ms, 2) : "-") + " | ";
  row += (s.overlap >= 0 ? fmt("%.0f%%", 100 * s.overlap) : "-") + " | ";
  row += (st ? fmt("%.1f", s.mean_k) : "-") + " | ";
  row += (st ? fmt("%.0f", 100 * s.frac_post) + "/" + fmt("%.0f", 100 * s.frac_pre) + "/" +
                   fmt("%.0f", 100 * s.frac_all)
             : "-") +
         " | ";
  row += (st ? fmt_bytes(s.cpu_bytes_per_token) : "-") + " | " +
         (st ? fmt_bytes(s.h2d_bytes_per_token) : "-") + " |\n";
  return row;
}

std::string csv_header() {
  return "policy,n_prompt,batch,n_ctx,window,k,selection,reps,prefill_tps,prefill_tps_sd,"
         "decode_tps,decode_tps_sd,ms_per_step,ms_per_step_sd,floor_ms,floor_ratio,device_ms,"
         "cpu_ms,tx_ms,wait_ms,overlap,mean_k,frac_post,frac_pre,frac_all,cpu_bytes_per_token,"
         "h2d_bytes_per_token,floor_bytes_per_step,load_s\n";
}

std::string csv_row(const ConfigResult& r, const Summary& s) {
  const BenchConfig& c = r.config;
  const bool st = s.has_stages;
  std::string row = c.policy + "," + std::to_string(c.n_prompt) + "," + std::to_string(c.batch) +
                    "," + std::to_string(c.n_ctx) + "," +
                    (s.window >= 0 ? std::to_string(s.window) : "") + "," +
                    (c.k >= 0 ? std::to_string(c.k) : "") + "," + c.selection + "," +
                    std::to_string(r.reps.size()) + ",";
  auto msd = [](const MeanSd& m) {
    return csv_num(m.mean, m.n > 0) + "," + csv_num(m.sd, m.n > 0);
  };
  row += msd(s.prefill_tps) + "," + msd(s.decode_tps) + "," + msd(s.ms_per_step) + ",";
  row +=
      csv_num(s.floor_ms, s.floor_ms >= 0) + "," + csv_num(s.floor_ratio, s.floor_ratio >= 0) + ",";
  row += csv_num(s.device_ms.mean, st) + "," + csv_num(s.cpu_ms.mean, st) + "," +
         csv_num(s.tx_ms.mean, st) + "," + csv_num(s.wait_ms.mean, st) + "," +
         csv_num(s.overlap, s.overlap >= 0) + "," + csv_num(s.mean_k, st) + "," +
         csv_num(s.frac_post, st) + "," + csv_num(s.frac_pre, st) + "," + csv_num(s.frac_all, st) +
         "," + csv_num(s.cpu_bytes_per_token, st) + "," + csv_num(s.h2d_bytes_per_token, st) + "," +
         csv_num(s.floor_bytes, true) + "," + csv_num(r.load_s, true) + "\n";
  return row;
}

std::string to_json(const RunContext& ctx, const std::string& command,
                    const std::vector<ConfigResult>& results) {
  using nlohmann::ordered_json;
  const ModelInfo& m = ctx.model;
  ordered_json j;
  j["tool"] = "hybridgen-bench";
  j["command"] = command;
  j["device"] = ctx.device;
  j["cpu"] = ctx.cpu;
  j["cores"] = ctx.cores;
  j["loadavg_start"] = ctx.loadavg_start;
  j["loadavg_end"] = ctx.loadavg_end;
  j["host_read_bandwidth"] = {{"median_gbs", ctx.host.median_gbs},
                              {"min_gbs", ctx.host.min_gbs},
                              {"max_gbs", ctx.host.max_gbs},
                              {"mib", ctx.host.mib},
                              {"reps", ctx.host.reps},
                              {"threads", ctx.host.threads}};
  j["greedy_sample_us"] = ctx.sample_us;
  j["floor_formula"] = floor_formula();
  j["model"] = {{"source", m.source},
                {"architecture", m.architecture},
                {"n_layers", m.n_layers},
                {"d_model", m.d_model},
                {"n_heads", m.n_heads},
                {"n_kv_heads", m.n_kv_heads},
                {"head_dim", m.head_dim},
                {"vocab_size", m.vocab_size},
                {"n_params", m.n_params},
                {"weight_bytes", m.weight_bytes},
                {"weight_format", m.weight_format},
                {"cpu_isa", m.cpu_isa},
                {"kv_bytes_per_token", m.kv_bytes_per_token}};
  j["n_gen"] = ctx.n_gen;
  ordered_json shared = ordered_json::array();
  for (const SharedPrefill& sp : ctx.shared)
    shared.push_back({{"n_prompt", sp.n_prompt},
                      {"batch", sp.batch},
                      {"n_ctx", sp.n_ctx},
                      {"source_policy", sp.source_policy},
                      {"kv_precision", sp.kv_precision},
                      {"prefill_s", sp.prefill_s},
                      {"prefill_tps", sp.prefill_s > 0 ? sp.batch * sp.n_prompt / sp.prefill_s : 0},
                      {"stats_s", sp.stats_s},
                      {"capture_s", sp.capture_s},
                      {"bytes", sp.bytes},
                      {"configs", sp.configs},
                      {"runs", sp.runs},
                      {"restore_s", sp.restore_s},
                      {"saved_s", sp.saved_s()}});
  j["shared_prefill"] = std::move(shared);
  ordered_json rows = ordered_json::array();
  for (const ConfigResult& r : results) {
    const Summary s = summarize(r, ctx);
    const BenchConfig& c = r.config;
    ordered_json o;
    o["policy"] = c.policy;
    o["n_prompt"] = c.n_prompt;
    o["batch"] = c.batch;
    o["n_ctx"] = c.n_ctx;
    o["window"] = s.window >= 0 ? ordered_json(s.window) : ordered_json(nullptr);
    o["window_frac"] = c.window_frac >= 0 ? ordered_json(c.window_frac) : ordered_json(nullptr);
    o["k"] = c.k >= 0 ? ordered_json(c.k) : ordered_json(nullptr);
    o["selection"] = c.selection.empty() ? ordered_json(nullptr) : ordered_json(c.selection);
    o["label"] = c.label();
    o["load_s"] = r.load_s;
    o["shared_prefill"] =
        r.shared_prefill >= 0 ? ordered_json(r.shared_prefill) : ordered_json(nullptr);
    o["prefill_tps"] = json_msd(s.prefill_tps);
    o["decode_tps"] = json_msd(s.decode_tps);
    o["ms_per_step"] = json_msd(s.ms_per_step);
    o["floor_bytes_per_step"] = s.floor_bytes;
    o["floor_ms"] = s.floor_ms >= 0 ? ordered_json(s.floor_ms) : ordered_json(nullptr);
    o["floor_ratio"] = s.floor_ratio >= 0 ? ordered_json(s.floor_ratio) : ordered_json(nullptr);
    if (s.has_stages) {
      o["stages_ms_per_step"] = {{"device", json_msd(s.device_ms)},
                                 {"cpu", json_msd(s.cpu_ms)},
                                 {"tx", json_msd(s.tx_ms)},
                                 {"wait", json_msd(s.wait_ms)}};
      o["overlap"] = s.overlap;
      o["mean_k"] = s.mean_k;
      o["split"] = {{"post_qkt", s.frac_post}, {"pre_qkt", s.frac_pre}, {"all", s.frac_all}};
      o["cpu_bytes_per_token"] = s.cpu_bytes_per_token;
      o["h2d_bytes_per_token"] = s.h2d_bytes_per_token;
    }
    ordered_json reps = ordered_json::array();
    for (const RepResult& rep : r.reps) {
      const AttentionStats& a = rep.stats;
      ordered_json x = {{"prefill_s", rep.prefill_s}, {"decode_s", rep.decode_s}};
      if (r.shared_prefill >= 0) x["restore_s"] = rep.restore_s;
      if (c.policy != "full")
        x["attention"] = {{"decode_steps", a.decode_steps},
                          {"layer_passes", a.layer_passes},
                          {"passes_all", a.passes_all},
                          {"passes_post_qkt", a.passes_post_qkt},
                          {"passes_pre_qkt", a.passes_pre_qkt},
                          {"mean_k", a.mean_k},
                          {"k_now", a.k_now},
                          {"mode_now", a.mode_now},
                          {"t_device", a.t_device},
                          {"t_cpu", a.t_cpu},
                          {"t_tx", a.t_tx},
                          {"t_wait", a.t_wait},
                          {"key_bytes_read", a.key_bytes_read},
                          {"value_bytes_moved", a.value_bytes_moved},
                          {"key_bytes_moved", a.key_bytes_moved},
                          {"recall", a.recall},
                          {"window_reserved", a.window_reserved},
                          {"key_store_reserved", a.key_store_reserved},
                          {"value_store_reserved", a.value_store_reserved},
                          {"staging_bytes", a.staging_bytes}};
      reps.push_back(std::move(x));
    }
    o["reps"] = std::move(reps);
    rows.push_back(std::move(o));
  }
  j["results"] = std::move(rows);
  return j.dump(1) + "\n";
}

std::string to_chrome_trace(const std::vector<ConfigResult>& results) {
  using nlohmann::ordered_json;
  // One thread per stage: the device stage and its waits run on the engine's thread, the CPU
  // stage and the V gather on the worker; apart they read better.
  static const char* const kStages[] = {"device", "wait", "cpu", "tx"};
  ordered_json events = ordered_json::array();
  for (size_t i = 0; i < results.size(); ++i) {
    const int pid = static_cast<int>(i) + 1;
    events.push_back({{"ph", "M"},
                      {"name", "process_name"},
                      {"pid", pid},
                      {"args", {{"name", results[i].config.label()}}}});
    events.push_back({{"ph", "M"},
                      {"name", "process_sort_index"},
                      {"pid", pid},
                      {"args", {{"sort_index", pid}}}});
    for (int t = 0; t < 4; ++t)
      events.push_back({{"ph", "M"},
                        {"name", "thread_name"},
                        {"pid", pid},
                        {"tid", t + 1},
                        {"args", {{"name", kStages[t]}}}});
    for (const StageEvent& e : results[i].trace) {
      int tid = 0;
      for (int t = 0; t < 4; ++t)
        if (e.stage == kStages[t]) tid = t + 1;
      events.push_back({{"name", e.stage + " L" + std::to_string(e.layer)},
                        {"cat", e.stage},
                        {"ph", "X"},
                        {"ts", e.begin * 1e6},
                        {"dur", std::max(0.0, e.end - e.begin) * 1e6},
                        {"pid", pid},
                        {"tid", tid},
                        {"args", {{"step", e.step}, {"layer", e.layer}}}});
    }
  }
  ordered_json j;
  j["traceEvents"] = std::move(events);
  j["displayTimeUnit"] = "ms";
  return j.dump() + "\n";
}

}  // namespace hybridgen::bench
