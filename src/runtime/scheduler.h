// Feedback scheduler of hybrid attention: Algorithm 1 of the paper (§4.3), as written there.
//
//   Algorithm 1 Feedback Scheduler Policy
//    1: GPU stage latency T_gpu
//    2: CPU stage latency T_cpu
//    3: Transfer latency T_tx
//    4: Offline accuracy threshold K_min
//    5: Token count K, selection strategy
//    6: Initialize K <- K_min
//    7: Initialize strategy <- Post-QKT
//    8: if T_cpu + T_tx <= T_gpu then
//    9:   Increase K to improve accuracy
//   10: else
//   11:   if K > K_min then
//   12:     Decrease K while ensuring K >= K_min
//   13:   else
//   14:     strategy <- Pre-QKT
//   15:   end if
//   16: end if
//   17: return (K, strategy)
//
// Plan/run split: the scheduler only decides. The decode loop asks plan() for (K, mode), runs
// the CPU stage and the device stage with it, measures the three latencies, and reports them
// with update(), which applies lines 8-16 once and returns the decision.
//
// What the paper leaves open, and the choices made here (each a config field):
// - How much "increase" and "decrease" are: additive increase by `increase_step` tokens,
//   multiplicative decrease by `decrease_factor` (AIMD, as in TCP congestion control: probing
//   up is gentle, backing off from a stalled pipeline is fast, and the pair converges instead of
//   oscillating with a fixed step).
// - The bounds: K is also never above the number of offloaded tokens (there is nothing more to
//   select); `update` takes that count. K_min must not exceed it (a clear error otherwise:
//   until more than K_min tokens are offloaded, the caller uses every offloaded token, i.e.
//   selection off, and need not call the scheduler).
// - Pre-QKT -> Post-QKT: Algorithm 1 has no line that switches back, so by default the mode
//   stays Pre-QKT once chosen (lines 8-9 still raise K while the pipeline has slack). The only
//   way back is an explicit reset() (e.g. a new request), which re-runs lines 6-7.
// - A recall guard (not in the paper; issue 13): update() may be given the step's recall (the
//   softmax mass the kept tokens carry among every offloaded token's CPU-stage logits, lowest
//   layer mean). While it is below `recall_guard`, lines 11-14 are not taken: K is held (neither
//   decreased nor switched to Pre-QKT, whose predictor has no such signal). Lines 8-9 still raise
//   K. recall_guard 0: off (Algorithm 1 exactly).
// - A single K for all layers (§4.3.1: "A single K value is used across layers"). Decisions may
//   be made per step or per layer; the layer is recorded in the trace (-1: per step).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace hybridgen::runtime {

enum class SelectionMode : uint8_t { kPostQkt = 0, kPreQkt = 1 };
const char* selection_mode_name(SelectionMode m);

struct SchedulerConfig {
  int k_min = 0;                 // line 4: offline accuracy threshold, >= 1
  int increase_step = 64;        // line 9: K += increase_step (then clamped to the offloaded count)
  double decrease_factor = 0.5;  // line 12: K <- max(K_min, min(K - 1, floor(K * factor)))
  // Guard: lines 11-14 are skipped (K held) while the step's recall is below this; 0: off.
  // 0.9: the kept tokens must carry 90% of the (speculated) attention mass before K may shrink.
  double recall_guard = 0.9;
  // Decisions kept in the trace: the most recent ones, at most this many (bounded memory for
  // long runs); all are counted.
  size_t trace_capacity = 4096;
};

// Measured latencies of one pipeline step (or layer), in any one unit (e.g. seconds).
struct StageLatencies {
  double t_gpu = 0;  // device stage (layer i: attention over the window + FFN)
  double t_cpu = 0;  // CPU stage (layer i+1: logits, selection, V gather)
  double t_tx = 0;   // host -> device transfer of the selected V rows and logits
};

// Which lines of Algorithm 1 a decision took.
enum class SchedulerBranch : uint8_t {
  kIncrease = 0,       // lines 8-9: the CPU stage fits under the GPU stage
  kDecrease = 1,       // lines 11-12: CPU-bound and K > K_min
  kSwitchToPre = 2,    // lines 13-14: CPU-bound at K = K_min (a no-op if already Pre-QKT)
  kHoldLowRecall = 3,  // CPU-bound, but recall < recall_guard: K and the mode kept
};
const char* scheduler_branch_name(SchedulerBranch b);

// One trace record: everything needed to replay the decision.
struct SchedulerDecision {
  int64_t step = 0;
  int layer = -1;  // -1: a per-step decision
  StageLatencies in;
  int n_offloaded = 0;
  double recall = 1;
  SchedulerBranch branch = SchedulerBranch::kIncrease;
  int k_before = 0;
  SelectionMode mode_before = SelectionMode::kPostQkt;
  int k = 0;  // new K
  SelectionMode mode = SelectionMode::kPostQkt;
  std::string to_string() const;
};

// What callers execute next.
struct SchedulerPlan {
  int k = 0;
  SelectionMode mode = SelectionMode::kPostQkt;
};

class FeedbackScheduler {
 public:
  // Throws hybridgen::Error for k_min < 1, increase_step < 1, decrease_factor outside [0, 1).
  explicit FeedbackScheduler(const SchedulerConfig& config);

  SchedulerPlan plan() const { return {k_, mode_}; }
  int k() const { return k_; }
  SelectionMode mode() const { return mode_; }

  // Applies lines 8-16 to measured latencies. n_offloaded: tokens currently offloaded (the upper
  // bound of K). Throws hybridgen::Error if n_offloaded < K_min or a latency is negative or NaN.
  // recall: the step's selection recall in [0, 1] (1: unknown, no guard).
  SchedulerDecision update(int64_t step, int layer, const StageLatencies& lat, int n_offloaded,
                           double recall = 1);

  // Lines 6-7 again: K <- K_min, Post-QKT. The trace and counters are kept.
  void reset();

  const std::vector<SchedulerDecision>& trace() const { return trace_; }
  int64_t decisions() const { return decisions_; }  // including those past trace_capacity
  int64_t count(SchedulerBranch b) const { return branch_counts_[static_cast<int>(b)]; }
  const SchedulerConfig& config() const { return config_; }

 private:
  SchedulerConfig config_;
  int k_;
  SelectionMode mode_;
  std::vector<SchedulerDecision> trace_;
  int64_t decisions_ = 0;
  int64_t branch_counts_[4] = {0, 0, 0, 0};
};

}  // namespace hybridgen::runtime
