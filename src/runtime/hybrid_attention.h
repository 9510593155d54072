// The hybrid attention runtime (paper §4.2-4.6, Algorithm 1; ../shared/DESIGN.md "The split
// runtime"): backend-independent. The backend's attention goes through this runner when the
// policy is not `full`; what it needs from the backend goes through runtime/device_stage.h (a
// QueryProvider for the speculative query, a DeviceStage for the window, the merge and exact
// attention). What each policy does is one row of runtime/policy.h's table.
//
// Per sequence and layer the KV lives in tiers (kv/tiered_kv.h): a device window of the W most
// recent tokens (in the backend's memory) and host stores (keys and values apart, bf16) for the
// older, offloaded tokens. A decode step of layer i:
//
//   CPU stage (worker thread, its own OpenMP team; one layer AHEAD of the device stage):
//     query  - speculative: QueryProvider::query(i, host copy of layer i-1's input) (for layer
//              0: the embedding, i.e. the true query); or exact: a host copy of the device
//              stage's q (synchronous mode)
//     select - what the policy row says (plan_row): Post-QKT: logits of every offloaded key
//              (cpu::attention_logits), then top-K per KV head; Pre-QKT: K tokens predicted
//              first (heavy hitters / sinks+recent / partial dimensions), logits of those only;
//              all: every offloaded token
//     gather - the selected V rows into staging (kv::VStaging; pinned memory on a GPU)
//   device stage (DeviceStage::decode, on the calling thread):
//     logits over the window and the new token; the CPU part's logits and the window's in
//     original order (the token mapper's ranges); softmax; values from staging, window and the
//     new token; then the new token enters the window and the least recently generated token
//     leaves it (K -> key store, V -> value store)
//
// The stages talk through two bounded SPSC queues (runtime/spsc_queue.h): jobs (layer, a
// snapshot of the layer input) one way, results the other; a result's buffers alternate between
// two slots by layer parity, so the worker fills layer i+1's while the device stage reads
// layer i's. Waiting sleeps on a futex, it does not spin a core.
//
// The feedback scheduler (runtime/scheduler.h) sees each decode step's summed T_gpu (the device
// stage's clock: CUDA events, or the calling thread's wall time minus its waits for the CPU
// stage), T_cpu (query + logits + selection) and T_tx (gather; + H2D on a GPU) and sets K and
// the mode for the next step.
//
// Prefill chunks (several tokens of a sequence in one step) run DeviceStage::exact: attention
// as full attention does it over both tiers, after a bulk append. The all-offloaded baselines
// decode with exact attention too: aoc on the CPU (host loops over the stores), aog on the
// device after shipping every offloaded K/V to it.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cpu/logits.h"
#include "hybridgen/config.h"
#include "hybridgen/engine.h"  // AttentionStats
#include "hybridgen/prefill_snapshot.h"
#include "kv/tiered_kv.h"
#include "kv/token_selector.h"
#include "memory/allocator.h"
#include "runtime/attention_runner.h"
#include "runtime/device_stage.h"
#include "runtime/policy.h"
#include "runtime/scheduler.h"
#include "runtime/spsc_queue.h"

namespace hybridgen {
class Transformer;
}

namespace hybridgen::runtime {

class HybridRuntime : public AttentionRunner {
 public:
  // The runtime over a backend: `query` gives the speculative query, `device` runs the window
  // and the merge. Both are owned. max_sequences: the engine's sequence ids index slots
  // [0, max_sequences).
  HybridRuntime(const HybridConfig& config, const ModelDims& dims,
                std::unique_ptr<QueryProvider> query, std::unique_ptr<DeviceStage> device,
                int n_ctx, int max_sequences, memory::HostAllocator& alloc);
  ~HybridRuntime() override;  // stops the CPU stage's worker
  HybridRuntime(const HybridRuntime&) = delete;
  HybridRuntime& operator=(const HybridRuntime&) = delete;

  // q, k, v, out and x are in the device stage's memory (host memory on the CPU backend).
  void begin_step(const Batch& batch, const int32_t* pos) override;
  void layer_input(int il, const float* x) override;
  void attend(int il, const float* q, const float* k, const float* v, float* out) override;
  void end_step() override;

  // A new request: the scheduler starts again from K_min and Post-QKT (Algorithm 1, lines 6-7).
  void new_request();
  AttentionStats stats() const;
  // Recorded stage intervals (config.trace), sorted by begin. Not during a forward step.
  std::vector<StageEvent> trace() const;
  void reset_stats();  // and the trace
  const HybridConfig& config() const { return cfg_; }
  const PolicyPlan& policy_plan() const { return pp_; }
  // The tiers. On a GPU the last decode step's evictions reach the host stores' rows at the next
  // step's begin: call sync_host_stores() before reading the rows' bytes outside a step.
  const kv::TieredKvCache& cache() const { return *cache_; }
  void sync_host_stores() { device_->sync_host_stores(); }
  const FeedbackScheduler* scheduler() const { return scheduler_.get(); }
  const DeviceStage& device_stage() const { return *device_; }

  // The shared prefill (hybridgen/prefill_snapshot.h); between steps only.
  // Sequence slot `seq`'s tiers into `out` (k, v per layer; its heavy-hitter scores when this
  // policy accumulates them): window rows as the window holds them (float32 on the CPU, bf16 on
  // a CUDA window), offloaded rows widened from the host stores' bf16.
  void capture_prefill(int seq, PrefillSnapshot::Sequence& out);
  // Empty when restore_prefill can take sequence `index` of `s`, else why not.
  std::string restore_problem(const PrefillSnapshot& s, int index) const;
  // Places sequence `index` of `s` into slot `seq` (its previous tokens dropped): every layer's
  // K/V through DeviceStage::restore, and the heavy-hitter scores this policy keeps (H2O mass or
  // Keyformer's) with their accumulation count.
  void restore_prefill(int seq, const PrefillSnapshot& s, int index);
  // Sequence slot `seq`'s keys at layer il as exact attention reads them (offloaded rows widened
  // from bf16, window rows float32), K: [n_kv_heads, length, head_dim]; returns the length. A
  // window in host memory only (the CPU device stage).
  int attended_keys(int seq, int il, std::vector<float>& K) const;
  // What this runtime's heavy-hitter scores are: "" (none), "h2o" or "keyformer".
  const char* heavy_kind() const;

 private:
  struct RowResult;
  struct Slot;
  struct Job {
    int layer = -1;  // -1: stop
    int slot = 0;
    SchedulerPlan plan;
    int64_t step = 0;
  };
  struct Done {
    int layer = -1;
    double t_cpu = 0, t_tx = 0;
    uint64_t key_bytes = 0, v_bytes = 0;
    uint64_t k_staged_bytes = 0;  // exact-selected: the kept K rows staged beside the V rows
    double recall_sum = 0;        // Post-QKT rows: sum of their recall (mean over query heads)
    int recall_n = 0;             // Post-QKT rows
    std::string error;            // non-empty: the CPU stage failed (rethrown on the device stage)
  };

  // CPU stage of layer il for every batch row into slot `slot`; q: host [n, n_heads, head_dim].
  Done cpu_stage(int il, const float* q, int slot, const SchedulerPlan& plan);
  void worker_main();
  static constexpr size_t kMaxTraceEvents = size_t{1} << 20;  // per thread
  void record(std::vector<StageEvent>& events, const char* stage, int64_t step, int layer,
              double begin, double end);
  void split_attention(int il, const float* q, const float* k, const float* v, float* out);
  void device_exact(int il, const float* q, const float* k, const float* v, float* out,
                    bool stream_offloaded);
  void host_exact(int il, const float* q, const float* k, const float* v, float* out);
  kv::HeavyHitterAccumulator* heavy(int seq, int il) {
    return pp_.uses_heavy ? heavy_[size_t(seq) * n_layers_ + il].get() : nullptr;
  }

  HybridConfig cfg_;
  PolicyPlan pp_;
  ModelDims dims_;
  std::unique_ptr<QueryProvider> query_;
  std::unique_ptr<DeviceStage> device_;
  int n_ctx_;
  int n_layers_, n_heads_, n_kv_heads_, head_dim_, d_model_, group_, sliding_window_;
  float scale_;
  memory::HostAllocator& alloc_;
  std::unique_ptr<kv::TieredKvCache> cache_;
  std::unique_ptr<FeedbackScheduler> scheduler_;
  // Heavy-hitter scores per (sequence, layer), indexed by position (FIFO eviction keeps
  // host-local index == position).
  std::vector<std::unique_ptr<kv::HeavyHitterAccumulator>> heavy_;  // [max_sequences * n_layers]

  // Step state (written before the first job of a step is pushed; read-only in the worker).
  std::vector<int32_t> seqs_, pos_;  // [n] per batch row
  int n_rows_ = 0;
  bool decode_step_ = false;              // one token per sequence
  DecodePath path_ = DecodePath::kSplit;  // this step's: prefill chunks take exact attention
  SchedulerPlan plan_;                    // K and mode of this step
  int64_t step_ = 0;

  std::vector<std::unique_ptr<Slot>> slots_;  // [2]: pipeline slots by layer parity
  std::vector<float> host_x_, host_q_;        // device-to-host scratch (layer input, query)
  std::vector<DecodeRow> rows_;               // [n] the device stage's decode rows
  std::vector<kv::TieredLayerKv*> exact_kv_;  // [n] exact attention's per-token tiers
  std::vector<kv::HeavyHitterAccumulator*> exact_heavy_;  // [n]

  // Pipelining.
  std::unique_ptr<SpscQueue<Job>> jobs_;
  std::unique_ptr<SpscQueue<Done>> done_;
  std::thread worker_;
  int outstanding_ = 0;  // jobs pushed and not yet popped in this step
  bool broken_ = false;  // the CPU stage stalled: no further steps

  // Step timing and counters.
  double step_t0_ = 0, step_wait_ = 0, step_cpu_ = 0, step_tx_ = 0, step_sync_cpu_ = 0;
  int step_min_off_ = 0;
  double step_recall_min_ = 1;  // lowest layer-mean recall of this step (1: no Post-QKT pass)
  bool step_recall_seen_ = false;
  std::vector<double> recall_sum_;     // [n_layers] summed Post-QKT row recalls
  std::vector<int64_t> recall_count_;  // [n_layers]
  double recall_min_step_ = 1;
  bool recall_any_ = false;
  AttentionStats stats_;
  double k_sum_ = 0;
  std::vector<double> cos_sum_;       // [n_layers] speculated vs true query, summed over heads
  std::vector<int64_t> cos_count_;    // [n_layers]
  std::vector<uint8_t> exact_layer_;  // [n_layers] 1: the true query (measured speculation poor)
  int64_t spec_steps_ = 0;
  // Trace: the device stage's events and the worker's, kept apart (no locking on the hot path).
  double epoch_ = 0, layer_t0_ = 0;
  std::vector<StageEvent> main_events_, worker_events_;
};

// The runtime on the CPU backend: the speculative query from the Transformer's weights
// (CpuQueryProvider) and the reference device stage (CpuDeviceStage: window in host memory).
class HybridAttention final : public HybridRuntime {
 public:
  HybridAttention(const HybridConfig& config, const Transformer& model, int n_ctx,
                  int max_sequences, memory::HostAllocator& alloc);
};

}  // namespace hybridgen::runtime
