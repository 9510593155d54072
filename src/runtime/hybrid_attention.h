// The hybrid attention runtime (paper §4.2-4.6, Algorithm 1; ../shared/DESIGN.md) on the CPU
// backend: the Transformer's attention goes through this runner when the policy is not `full`.
//
// Per sequence and layer the KV lives in tiers (kv/tiered_kv.h): a device window of the W most
// recent tokens and host stores (keys and values apart, bf16) for the older, offloaded tokens.
// A decode step of layer i:
//
//   CPU stage (worker thread, its own OpenMP team; one layer AHEAD of the device stage):
//     query  - speculative: layer i-1's input, normed with layer i's norm, projected with layer
//              i's W_q (+ bias), rotated at the current position (for layer 0: the embedding,
//              i.e. the true query); or exact: the device stage's q (synchronous mode)
//     select - Post-QKT: logits of every offloaded key (cpu::attention_logits), then top-K per
//              KV head; Pre-QKT: K tokens predicted first (heavy hitters / sinks+recent /
//              partial dimensions), logits of those only; all: every offloaded token
//     gather - the selected V rows into staging (kv::VStaging; pinned memory on a GPU)
//   device stage (the calling thread: the backend running the layer):
//     q, k, v of the new token; logits over the window and the new token; the token
//     concatenator puts CPU and device logits in original order (kv::concat_tiers);
//     softmax; values from staging, window and the new token; then the new token enters the
//     window and the least recently generated token leaves it (K -> key store, V -> value store)
//
// The stages talk through two bounded SPSC queues (runtime/spsc_queue.h): jobs (layer, a
// snapshot of the layer input) one way, results the other; a result's buffers alternate between
// two slots by layer parity, so the worker fills layer i+1's while the device stage reads
// layer i's. Waiting sleeps on a futex, it does not spin a core.
//
// The feedback scheduler (runtime/scheduler.h) sees each decode step's summed T_gpu (device
// stage time minus its waits for the CPU stage), T_cpu (query + logits + selection) and T_tx
// (gather; + H2D on a GPU) and sets K and the mode for the next step.
//
// Prefill chunks (several tokens of a sequence in one step) and the all-offloaded baselines
// (aoc: attention on the CPU; aog: every offloaded K/V copied to the device each layer) use
// exact attention over both tiers: keys and values of offloaded tokens read back as bf16.
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
#include "kv/tiered_kv.h"
#include "kv/token_selector.h"
#include "memory/allocator.h"
#include "runtime/attention_runner.h"
#include "runtime/scheduler.h"
#include "runtime/spsc_queue.h"

namespace hybridgen {
class Transformer;
}

namespace hybridgen::runtime {

enum class Policy : uint8_t {
  kFull,
  kHybrid,
  kAog,
  kAoc,
  kH2o,
  kStreamingLlm,
  kKeyformer,
  kInfinigen,
};
// Throws hybridgen::Error naming the flag and the valid names for an unknown policy.
Policy parse_policy(const std::string& name);
const char* policy_name(Policy p);

enum class Predictor : uint8_t { kHeavy, kSinksRecent, kPartial };
enum class SelectionControl : uint8_t { kAdaptive, kPost, kPre, kOff };

// AttentionOptions resolved against a model and a context (what the runtime executes).
struct HybridConfig {
  Policy policy = Policy::kHybrid;
  int window = 0;   // effective device window (tokens per sequence and layer)
  int k_min = 128;  // the scheduler's floor
  int k_fixed = 0;  // > 0: this K always (no K adaptation)
  SelectionControl selection = SelectionControl::kAdaptive;
  Predictor predictor = Predictor::kHeavy;
  bool speculative = true;
  int cpu_threads = 1;
  int n_sinks = 4;       // streamingllm and the sinks+recent predictor
  int partial_dims = 0;  // InfiniGen-style predictor: query dimensions used (0: head_dim / 4)
  cpu::LogitsPath logits_path = cpu::LogitsPath::kAuto;
  bool trace = false;  // record StageEvents
  // The device stage waits at most this long for a CPU-stage result; then the step fails with
  // an error naming the layer (a stalled CPU stage is an error, not a hang) and the runtime
  // refuses further steps (the engine must be reloaded).
  double stall_timeout_s = 60;
  // Speculation where it is measured to work: after this many decode steps, layers whose
  // speculated query's mean cosine similarity to the true query is below speculation_min_cosine
  // switch to the true query (their CPU stage runs synchronously). 0 steps: never switch.
  int speculation_warmup_steps = 4;
  double speculation_min_cosine = 0.9;
  uint64_t device_memory_bytes = 0;  // window budget over all sequences and layers; 0: none
  // Fault injection and tests: called by the CPU stage before each layer's work (may sleep or
  // throw). Unset in normal runs.
  std::function<void(int layer)> cpu_stage_hook;
};

// Validates the public options (errors name the flag) and resolves defaults:
// window -1 -> n_ctx / 10; a window above the context is clamped to it (everything stays on the
// device) with a warning; aog and aoc use window 0; k 0 -> k_min; cpu_threads 0 -> half of
// n_threads (at least 1).
HybridConfig resolve_attention_options(const AttentionOptions& o, int n_ctx, int head_dim,
                                       int n_threads);

class HybridAttention final : public AttentionRunner {
 public:
  // model: its weights give the speculative query (norms, the Q rows of Q|K|V, RoPE).
  HybridAttention(const HybridConfig& config, const Transformer& model, int n_ctx,
                  int max_sequences, memory::HostAllocator& alloc);
  ~HybridAttention() override;  // stops the CPU stage's worker
  HybridAttention(const HybridAttention&) = delete;
  HybridAttention& operator=(const HybridAttention&) = delete;

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
  const kv::TieredKvCache& cache() const { return *cache_; }
  const FeedbackScheduler* scheduler() const { return scheduler_.get(); }

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
    std::string error;  // non-empty: the CPU stage failed (rethrown on the device stage)
  };

  // CPU stage of layer il for every batch row into slot `slot`; q: [n, n_heads, head_dim].
  Done cpu_stage(int il, const float* q, int slot, const SchedulerPlan& plan);
  // Speculative query of layer il from x ([n, d_model]) into q ([n, n_heads, head_dim]).
  void speculative_query(int il, const float* x, float* q) const;
  void worker_main();
  static constexpr size_t kMaxTraceEvents = size_t{1} << 20;  // per thread
  void record(std::vector<StageEvent>& events, const char* stage, int64_t step, int layer,
              double begin, double end);
  void merge_row(int il, int b, const float* q, const float* k, const float* v, const RowResult& r,
                 float* out);
  void exact_attention(int il, const float* q, const float* k, const float* v, float* out,
                       bool stream_to_device);
  SchedulerPlan current_plan() const;

  HybridConfig cfg_;
  const Transformer& model_;
  int n_ctx_;
  int n_layers_, n_heads_, n_kv_heads_, head_dim_, d_model_, group_, sliding_window_;
  float scale_;
  memory::HostAllocator& alloc_;
  std::unique_ptr<kv::TieredKvCache> cache_;
  std::unique_ptr<FeedbackScheduler> scheduler_;
  // Heavy-hitter scores per (sequence, layer), indexed by position (FIFO eviction keeps
  // host-local index == position).
  std::vector<std::unique_ptr<kv::HeavyHitterAccumulator>> heavy_;  // [max_sequences * n_layers]
  bool uses_heavy_ = false;

  // Step state (written before the first job of a step is pushed; read-only in the worker).
  std::vector<int32_t> seqs_, pos_;  // [n] per batch row
  int n_rows_ = 0;
  bool decode_step_ = false;  // one token per sequence
  bool split_path_ = false;   // decode step of a policy with a CPU stage + device merge
  SchedulerPlan plan_;        // K and mode of this step
  int64_t step_ = 0;

  std::vector<std::unique_ptr<Slot>> slots_;  // [2]: pipeline slots by layer parity
  std::vector<float> q_exact_;                // [n, n_heads, head_dim] synchronous mode

  // Pipelining.
  std::unique_ptr<SpscQueue<Job>> jobs_;
  std::unique_ptr<SpscQueue<Done>> done_;
  std::thread worker_;
  int outstanding_ = 0;  // jobs pushed and not yet popped in this step
  bool broken_ = false;  // the CPU stage stalled: no further steps

  // Step timing and counters.
  double step_t0_ = 0, step_wait_ = 0, step_cpu_ = 0, step_tx_ = 0, step_sync_cpu_ = 0;
  int step_min_off_ = 0;
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

}  // namespace hybridgen::runtime
