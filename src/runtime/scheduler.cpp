#include "runtime/scheduler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "util/check.h"

namespace hybridgen::runtime {

const char* selection_mode_name(SelectionMode m) {
  return m == SelectionMode::kPostQkt ? "post-qkt" : "pre-qkt";
}

const char* scheduler_branch_name(SchedulerBranch b) {
  switch (b) {
    case SchedulerBranch::kIncrease:
      return "increase";
    case SchedulerBranch::kDecrease:
      return "decrease";
    case SchedulerBranch::kSwitchToPre:
      return "switch-to-pre";
    case SchedulerBranch::kHoldLowRecall:
      return "hold-low-recall";
  }
  return "?";
}

std::string SchedulerDecision::to_string() const {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "step %lld layer %d: T_gpu %.6g T_cpu %.6g T_tx %.6g offloaded %d recall %.4f "
                "-> %s: K %d -> %d, %s -> %s",
                static_cast<long long>(step), layer, in.t_gpu, in.t_cpu, in.t_tx, n_offloaded,
                recall, scheduler_branch_name(branch), k_before, k,
                selection_mode_name(mode_before), selection_mode_name(mode));
  return buf;
}

FeedbackScheduler::FeedbackScheduler(const SchedulerConfig& config) : config_(config) {
  HG_CHECK(config.k_min >= 1, "feedback scheduler: K_min must be >= 1, got " +
                                  std::to_string(config.k_min) +
                                  " (K_min: the fewest offloaded tokens each KV head keeps)");
  HG_CHECK(config.increase_step >= 1, "feedback scheduler: increase_step must be >= 1, got " +
                                          std::to_string(config.increase_step));
  HG_CHECK(config.decrease_factor >= 0 && config.decrease_factor < 1,
           "feedback scheduler: decrease_factor must be in [0, 1), got " +
               std::to_string(config.decrease_factor));
  HG_CHECK(config.recall_guard >= 0 && config.recall_guard <= 1,
           "feedback scheduler: recall_guard must be in [0, 1], got " +
               std::to_string(config.recall_guard));
  reset();
}

void FeedbackScheduler::reset() {
  k_ = config_.k_min;               // line 6: Initialize K <- K_min
  mode_ = SelectionMode::kPostQkt;  // line 7: Initialize strategy <- Post-QKT
}

SchedulerDecision FeedbackScheduler::update(int64_t step, int layer, const StageLatencies& lat,
                                            int n_offloaded, double recall) {
  HG_CHECK(recall >= 0 && recall <= 1.000001,
           "feedback scheduler: recall must be in [0, 1], got " + std::to_string(recall));
  HG_CHECK(n_offloaded >= config_.k_min,
           "feedback scheduler: K_min = " + std::to_string(config_.k_min) + " is above the " +
               std::to_string(n_offloaded) +
               " offloaded tokens; use every offloaded token (selection off) until more than "
               "K_min are offloaded, or lower K_min");
  // !(x >= 0) also rejects NaN, which would otherwise silently take the "else" branch.
  HG_CHECK(lat.t_gpu >= 0 && lat.t_cpu >= 0 && lat.t_tx >= 0,
           "feedback scheduler: latencies must be >= 0 (got T_gpu " + std::to_string(lat.t_gpu) +
               ", T_cpu " + std::to_string(lat.t_cpu) + ", T_tx " + std::to_string(lat.t_tx) + ")");
  SchedulerDecision d;
  d.step = step;
  d.layer = layer;
  d.in = lat;
  d.n_offloaded = n_offloaded;
  d.recall = recall;
  // The offloaded count bounds K (it could have shrunk, e.g. a shorter sequence in the batch).
  k_ = std::min(k_, n_offloaded);
  d.k_before = k_;
  d.mode_before = mode_;

  if (lat.t_cpu + lat.t_tx <= lat.t_gpu) {  // line 8: if T_cpu + T_tx <= T_gpu then
    // line 9: Increase K to improve accuracy (never past the offloaded tokens)
    d.branch = SchedulerBranch::kIncrease;
    k_ = static_cast<int>(std::min<int64_t>(int64_t{k_} + config_.increase_step, n_offloaded));
  } else if (recall < config_.recall_guard) {  // the guard: the selection misses mass
    d.branch = SchedulerBranch::kHoldLowRecall;
  } else if (k_ > config_.k_min) {  // line 10: else; line 11: if K > K_min then
    // line 12: Decrease K while ensuring K >= K_min (at least by one token, so that K reaches
    // K_min and line 14 can fire)
    d.branch = SchedulerBranch::kDecrease;
    const int scaled = static_cast<int>(std::floor(k_ * config_.decrease_factor));
    k_ = std::max(config_.k_min, std::min(k_ - 1, scaled));
  } else {  // line 13: else
    // line 14: strategy <- Pre-QKT
    d.branch = SchedulerBranch::kSwitchToPre;
    mode_ = SelectionMode::kPreQkt;
  }
  d.k = k_;
  d.mode = mode_;

  ++decisions_;
  ++branch_counts_[static_cast<int>(d.branch)];
  // Keep the most recent decisions: when full, drop the older half (amortised O(1)).
  if (config_.trace_capacity > 0) {
    if (trace_.size() >= config_.trace_capacity)
      trace_.erase(trace_.begin(),
                   trace_.begin() + static_cast<std::ptrdiff_t>((config_.trace_capacity + 1) / 2));
    trace_.push_back(d);
  }
  return d;  // line 17: return (K, strategy)
}

}  // namespace hybridgen::runtime
